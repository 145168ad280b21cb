"""Conditional create and update on the FHIR source, and the checks that keep a resource one id.

- ``POST /fhir/<Type>`` with ``If-None-Exist: identifier=<system>|<value>``: when the store
  already holds that resource, nothing is stored and the answer is 200 with its Location.
- ``PUT /fhir/<Type>?identifier=<system>|<value>``: an update of the resource found, or a
  create when there is none.
- ``PUT /fhir/<Type>/<id>`` with ``If-Match: W/"<version>"``: applied only while the resource is
  at that version (``meta.versionId``: the message-store id of the last message that wrote
  it); else 412.
- 409 when a PUT's id and its identifier name two different resources: ``Patient/<id>`` is
  another patient than the identifier in the body says, or that patient is known here under
  another id (ids never change: :mod:`engine.formats.fhir_bundle`).
- 412 when a condition matches more than one resource.

A condition names a resource by its identifier with a system (``identifier=<system>|<value>``,
or ``_id``). A bare value is refused (400): identity is issuer + identifier, and a value
without its system would be a guess. Other search parameters are refused too: a condition the
engine did not evaluate would create what the client meant to find.

Lookups read the store the FHIR mappings write (``read_stores`` of the source); a lookup that
finds a patient's resource is audited (action ``conditional``) as every read of patient data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import insert, select

from engine.formats.fhir_bundle import row_id
from engine.formats.fhir_outcome import Issue, Refused
from engine.stores.db import write_transaction


@dataclass(frozen=True)
class Lookup:
    """Where a type's resources are and how an identifier finds one: the identifier's value is
    ``value`` and its system ``namespace`` (the HL7 issuer for a patient: ``issuer``)."""

    kind: str
    table: str
    value: str
    namespace: str
    fixed: dict[str, Any] = field(default_factory=dict)
    issuer: bool = False

    def key(self, system: str, value: str, natural: tuple[str, ...]) -> tuple[Any, ...]:
        """The row's natural key (``natural``: its columns, from the store's schema) for this
        identifier: the identifier is all of it, with ``fixed``."""
        parts = {self.value: value, self.namespace: system, **self.fixed}
        return tuple(parts[k] for k in natural)


LOOKUPS = {
    "Patient": Lookup("clinical", "patient", "mrn", "mrn_issuer", issuer=True),
    # an Observation's identifier keys it with report_code = the system (fhir_observation_clinical.yaml)
    "Observation": Lookup(
        "clinical",
        "observation",
        "filler_order_number",
        "report_code",
        {"report_occurrence": 0, "specimen_seq": 0, "seq": 0},
    ),
    "Condition": Lookup("clinical", "condition", "condition_id", "condition_namespace"),
    "Procedure": Lookup("clinical", "procedure", "procedure_id", "procedure_namespace"),
}
"""The types conditional operations work on: those whose identifier is their key in the store."""


@dataclass(frozen=True)
class Found:
    """A resource a lookup found: its id, version, and whose it is (for the audit)."""

    fhir_id: str
    version: str
    patient: tuple[str, str] | None  # (mrn, mrn_issuer)


def criteria(text: str, rtype: str) -> tuple[str, str]:
    """(``identifier`` or ``_id``, ``system|value`` or the id) from a condition's query text;
    Refused 400 for anything the engine cannot evaluate exactly."""
    where = "If-None-Exist / the URL's query"
    pairs = parse_qsl(text.lstrip("?"), keep_blank_values=True)
    if len(pairs) != 1 or pairs[0][0] not in ("identifier", "_id"):
        names = ", ".join(sorted({k for k, _ in pairs})) or "none"
        raise Refused(
            400,
            [Issue("not-supported", f"a condition is one identifier=<system>|<value> (or _id); got {names}", [where])],
        )
    name, value = pairs[0]
    if rtype not in LOOKUPS:
        known = ", ".join(LOOKUPS)
        raise Refused(400, [Issue("not-supported", f"conditional operations work on {known}, not {rtype}", [where])])
    if name == "identifier":
        system, bar, code = value.partition("|")
        if not bar or not system or not code:
            raise Refused(
                400,
                [
                    Issue(
                        "invalid", "identifier needs its system: <system>|<value> (a bare value names no one)", [where]
                    )
                ],
            )
    elif not value:
        raise Refused(400, [Issue("invalid", "_id needs a value", [where])])
    return name, value


class Finder:
    """Lookups of one FHIR source in its read stores (run them off the event loop)."""

    def __init__(self, source, issuer_of):
        self.source = source
        self.issuer_of = issuer_of

    def available(self, rtype: str) -> bool:
        look = LOOKUPS.get(rtype)
        return look is not None and self.source.store(look.kind) is not None

    def _table(self, rtype: str):
        look = LOOKUPS[rtype]
        store = self.source.store(look.kind)
        if store is None:
            raise Refused(
                400, [Issue("not-supported", f"this endpoint reads no {look.kind} store, so it cannot look up {rtype}")]
            )
        return look, store, store.table(look.table)

    def find(self, rtype: str, name: str, value: str) -> list[Found]:
        """The resources of ``rtype`` a condition names (0, 1, or more)."""
        look, store, t = self._table(rtype)
        if name == "_id":
            where = [t.c.fhir_id == value]
        else:
            system, _, code = value.partition("|")
            namespace = self.issuer_of(system) if look.issuer else system
            where = [t.c[look.value] == code, t.c[look.namespace] == namespace]
            where += [t.c[k] == v for k, v in look.fixed.items()]
        return self._rows(store, t, where)

    def by_id(self, rtype: str, rid: str) -> Found | None:
        found = self.find(rtype, "_id", rid)
        return found[0] if found else None

    def id_for(self, rtype: str, identifier: tuple[str, str]) -> tuple[Found | None, str]:
        """The resource this identifier names, if stored, and the id it has or would get."""
        look, store, _t = self._table(rtype)
        system, value = identifier
        namespace = self.issuer_of(system) if look.issuer else system
        found = self.find(rtype, "identifier", f"{system}|{value}")
        if found:
            return found[0], found[0].fhir_id
        key = look.key(namespace, value, store.spec.keys[look.table])
        return None, str(row_id(look.kind, look.table, key))

    def _rows(self, store, t, where: list) -> list[Found]:
        patient = [t.c.mrn, t.c.mrn_issuer] if "mrn" in t.c else []
        stmt = select(t.c.fhir_id, t.c.last_message_id, *patient).where(*where).limit(2)
        with store.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [Found(r[0], str(r[1] or 0), (r[2], r[3]) if patient and r[2] else None) for r in rows]

    def audit(self, rtype: str, found: list[Found], who: str, purpose: str) -> None:
        """One ``conditional`` row per patient a lookup found, in the store it read."""
        patients = {f.patient for f in found if f.patient}
        if not patients:
            return
        _look, store, _t = self._table(rtype)
        audit = store.spec.access_audit
        now = datetime.now(UTC)
        rows = [
            {
                "access_id": uuid.uuid4().hex,
                "accessed_by": who[:200],
                "accessed_at": now,
                "purpose": purpose[:200],
                "action": "conditional",
                "patient_mrn": mrn,
                "patient_mrn_issuer": issuer,
                "updated_at": now,
            }
            for mrn, issuer in sorted(patients)
        ]
        with write_transaction(store.engine) as conn:
            conn.execute(insert(audit), rows)


def etag(version: str) -> str:
    return f'W/"{version}"'


def if_match(header: str) -> str:
    """The version an If-Match header names (``W/"3"`` or ``"3"``)."""
    text = header.strip()
    if text.startswith("W/"):
        text = text[2:]
    return text.strip('"')
