"""References to what this engine stores, resolved when a FHIR request is received.

EHRs write ``"subject": {"reference": "Patient/123"}`` for a patient they created here
earlier, with no identifier beside it. The mappings take a patient by its identifier (issuer +
value), never by an id alone, so before a request is committed each such reference to a
Patient or an Encounter this engine serves (by its ``fhir_id``) gets the identifier of the
row it names, next to the reference (FHIR's Reference carries both):

    {"reference": "Patient/123"}
    -> {"reference": "Patient/123", "identifier": {"system": "https://...mrn", "value": "MRN9"}}

The message stored is the request so resolved: whose record it is was decided when it arrived,
and reprocessing it later names the same patient whatever happened to ids since. A reference
the request resolves itself (a Bundle entry's ``fullUrl`` or ``<Type>/<id>``), one that already
has an identifier, and one to an id this engine does not serve are left as sent (the mapping
then says why it names no one). Nothing is logged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import select

from engine.formats.fhir_patient import PATIENT_REFERENCE

ENCOUNTER_REFERENCE = ("Observation", "DiagnosticReport", "Condition", "Procedure")
"""Types whose ``encounter`` element names the visit (a Condition's names its diagnosis's visit)."""


def references(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(the Reference, ``Patient`` or ``Encounter``, the id) of each reference to resolve in a
    resource or in each resource of a Bundle."""
    resources = [data]
    inside: set[str] = set()
    if data.get("resourceType") == "Bundle":
        entries = [e for e in data.get("entry") or [] if isinstance(e, dict)]
        resources = [e["resource"] for e in entries if isinstance(e.get("resource"), dict)]
        inside = {e["fullUrl"] for e in entries if isinstance(e.get("fullUrl"), str)}
        inside |= {f"{r.get('resourceType')}/{r.get('id')}" for r in resources if r.get("id")}
    for res in resources:
        rtype = res.get("resourceType")
        refs: list[Any] = []
        if rtype == "Appointment":
            refs = [p.get("actor") for p in res.get("participant") or [] if isinstance(p, dict)]
        elif rtype in PATIENT_REFERENCE:
            refs = [res.get(PATIENT_REFERENCE[str(rtype)])]
        if rtype in ENCOUNTER_REFERENCE:
            refs.append(res.get("encounter"))
        for ref in refs:
            if not isinstance(ref, dict) or "identifier" in ref or not isinstance(ref.get("reference"), str):
                continue
            text = ref["reference"]
            if text in inside:
                continue
            kind, rid = _split(text)
            if kind in ("Patient", "Encounter") and rid:
                yield ref, kind, rid


def resolve(data: dict[str, Any], store: Any, system_of: Callable[[str], str]) -> int:
    """Add the identifier of the stored row to each reference :func:`references` finds in
    ``data`` (in place); how many were resolved. ``store``: the clinical RecordStore;
    ``system_of``: an HL7 issuer -> its FHIR system (``mappings/tables/issuer_system.yaml``)."""
    found = list(references(data))
    if not found or store is None:
        return 0
    wanted: dict[str, set[str]] = {}
    for _ref, kind, rid in found:
        wanted.setdefault(kind, set()).add(rid)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    with store.engine.connect() as conn:
        if "Patient" in wanted:
            t = store.table("patient")
            stmt = select(t.c.fhir_id, t.c.mrn, t.c.mrn_issuer).where(t.c.fhir_id.in_(sorted(wanted["Patient"])))
            for fid, mrn, issuer in conn.execute(stmt):
                rows[("Patient", fid)] = {"system": system_of(issuer), "value": mrn}
        if "Encounter" in wanted:
            t = store.table("encounter")
            stmt = select(t.c.fhir_id, t.c.visit_number).where(t.c.fhir_id.in_(sorted(wanted["Encounter"])))
            for fid, visit in conn.execute(stmt):
                rows[("Encounter", fid)] = {"value": visit}  # the encounter table keys by visit number alone
    done = 0
    for ref, kind, rid in found:
        identifier = rows.get((kind, rid))
        if identifier is not None and identifier.get("value"):
            ref["identifier"] = dict(identifier)
            done += 1
    return done


def _split(text: str) -> tuple[str, str]:
    """(type, id) of ``Patient/123`` or ``https://host/fhir/Patient/123``; ('', '') otherwise
    (a ``urn:uuid:`` or ``#contained`` reference, a versioned one is taken without its version)."""
    if text.startswith(("urn:", "#")):
        return "", ""
    parts = text.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":  # Patient/123/_history/2
        parts = parts[:-2]
    return (parts[-2], parts[-1]) if len(parts) >= 2 else ("", "")
