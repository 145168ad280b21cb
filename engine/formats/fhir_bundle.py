"""FHIR resources the engine builds: deterministic ids, and records made into a transaction Bundle.

Two parts of the engine give out FHIR resources: the mappings that convert HL7 v2 into FHIR
(records whose target is ``fhir.<ResourceType>``, sent by the ``fhir`` destination) and the
FHIR read API over the stores. Both name a resource by :func:`resource_id`: a UUID (version 5)
of the resource type and the natural key of what it stands for (a patient's issuer and
identifier, an encounter's visit number, an observation's position in its report). So:

- the same message converted twice gives the same ids, and a resend updates (PUT) instead of
  creating a second resource;
- a resource converted from HL7 and the one the read API serves from the row the same HL7
  message wrote carry the same id (``Patient/<id>`` in a Bundle sent downstream is
  ``GET /fhir/Patient/<id>`` on this engine).

A UUID, not the key itself: a key holds patient identifiers, which must not appear in a URL
(URLs are logged by proxies), and FHIR ids are limited to 64 characters of ``[A-Za-z0-9.-]``.

A record for FHIR (:class:`~engine.records.Record`) has the target ``fhir.<ResourceType>``
and, as ``values``, the resource's elements (JSON-ready: str, int, float, bool, dict, list)
including ``id``. :func:`transaction` makes them one transaction Bundle of PUTs, so the
receiver creates or updates each by its id, all or nothing.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Collection, Iterable
from typing import Any

from engine.records import Record

NAMESPACE = uuid.UUID("6f1c3a52-3d1e-5b7e-9a57-0e2b8c4d1f60")
"""The engine's namespace for resource ids (fixed: changing it changes every id ever given)."""
_NAMESPACE_BYTES = NAMESPACE.bytes


def resource_id(resource_type: str, *key: Any) -> str:
    """The id of the ``resource_type`` resource whose natural key is ``key``.

    Key parts are taken as text (None as ''), in order, joined by a separator no key holds
    (U+001F), so ("a|b", "c") and ("a", "b|c") never meet."""
    text = "\x1f".join([resource_type, *("" if k is None else str(k) for k in key)])
    # str(uuid.uuid5(NAMESPACE, text)), the same bytes by RFC 9562 5.5 (the SHA-1 of namespace
    # and name, version 5, variant 10) without the UUID object the standard library builds and
    # checks on each call: every stored row of a served table and every converted resource
    # gets one, and uuid5 took about an eighth of the stores' write time (tests/test_v2_to_fhir.py
    # compares the two).
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + text.encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


ROW_RESOURCES: dict[tuple[str, str], tuple[str, ...]] = {
    ("clinical", "patient"): ("Patient",),
    ("clinical", "encounter"): ("Encounter",),
    ("clinical", "observation"): ("Observation",),
    ("clinical", "diagnostic_report"): ("DiagnosticReport",),
    ("clinical", "allergy"): ("AllergyIntolerance",),
    ("clinical", "diagnosis"): ("Condition", "diagnosis"),  # beside the condition table's own Conditions
    ("clinical", "condition"): ("Condition",),
    ("clinical", "procedure"): ("Procedure",),
    ("clinical", "appointment"): ("Appointment",),
    ("pm", "coverage"): ("Coverage",),
}
"""(store kind, table) -> the resource type its rows are served as, then any fixed key parts
before the row's natural key (a visit's DG1 row, ``diagnosis``, is a Condition too: its id
is ``resource_id("Condition", "diagnosis", visit_number, code)``). These tables carry a
``fhir_id`` column, set when a row is first written and never changed after."""


def row_id(kind: str, table: str, key: tuple[Any, ...]) -> str | None:
    """The id a row of ``table`` (natural ``key`` values, in the table's key order) is served
    under; None for a table the FHIR API does not serve."""
    prefix = ROW_RESOURCES.get((kind, table))
    return None if prefix is None else resource_id(prefix[0], *prefix[1:], *key)


def is_fhir_target(target: str) -> bool:
    return target.startswith("fhir.")


def resource(record: Record) -> dict[str, Any]:
    """The resource a ``fhir.<Type>`` record stands for: resourceType first, then its elements."""
    rtype = record.target.split(".", 1)[1]
    return {"resourceType": rtype, **record.values}


def transaction(
    records: Iterable[Record], left_out: Collection[str] = (), warnings: list[str] | None = None
) -> dict[str, Any]:
    """One transaction Bundle: each record a ``PUT <Type>/<id>`` entry, in order.

    Two records of the same resource (same type and id) are one entry: the later one's elements
    over the earlier one's (a message that names its patient in PID and again in a later
    segment gives one Patient). ``left_out``: resources the mapping skipped (``RunReport.left_out``);
    a reference to one (a DiagnosticReport's result naming an OBX that could not be built) would
    name nothing a receiver has, so it is taken out, and ``warnings`` gets one line per element
    it was taken from (no value)."""
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        res = resource(record)
        rid = res.get("id")
        if not isinstance(rid, str) or not rid:
            raise ValueError(f"{record.target} has no id: a resource sent by PUT needs one")
        at = (res["resourceType"], rid)
        entries[at] = {**entries[at], **res} if at in entries else res
    gone = set(left_out) - {f"{t}/{i}" for t, i in entries}
    if gone:
        dropped: dict[str, None] = {}
        for (rtype, _rid), res in entries.items():
            _drop_references(res, gone, rtype, dropped)
        if warnings is not None:
            warnings.extend(f"{where}: a reference to a resource the mapping skipped is left out" for where in dropped)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{rid}" if _is_uuid(rid) else f"{rtype}/{rid}",
                "resource": res,
                "request": {"method": "PUT", "url": f"{rtype}/{rid}"},
            }
            for (rtype, rid), res in entries.items()
        ],
    }


def _drop_references(data: Any, gone: set[str], at: str, dropped: dict[str, None]) -> None:
    """Take every Reference to one of ``gone`` out of ``data`` (in place); each element it was
    in (``DiagnosticReport.result``) goes to ``dropped``."""
    for key, value in list(data.items()):
        where = f"{at}.{key}"
        if isinstance(value, list):
            kept = [v for v in value if not (isinstance(v, dict) and v.get("reference") in gone)]
            if len(kept) != len(value):
                dropped[where] = None
            for v in kept:
                if isinstance(v, dict):
                    _drop_references(v, gone, where, dropped)
            if kept:
                data[key] = kept
            else:
                del data[key]
        elif isinstance(value, dict):
            if value.get("reference") in gone:
                dropped[where] = None
                del data[key]
            else:
                _drop_references(value, gone, where, dropped)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
