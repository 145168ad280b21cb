"""Whose record a FHIR resource is about, and what identifies a resource, read from its JSON.

The rules are the FHIR mappings' (``mappings/fhir_*_clinical.yaml``), written once more here
because they are needed before a request is stored, not after it is mapped:

- a patient is the identifier whose type is MR (v2 table 0203), else the first one with a
  system; a Patient's own, or the one a resource's patient reference carries
  (``subject.identifier``), or that of the Patient of the same Bundle the reference names
  (``fullUrl``, or ``Patient/<id>``);
- a resource other than a Patient is its first identifier with a system and a value.

The FHIR source uses them for the ordering key (a patient's messages are applied in the order
they came, whatever the format: the key has the shape of the HL7 channels', ``issuer|value``)
and for conditional create and update. Values are never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

PATIENT_REFERENCE = {  # the element of each type that names its patient
    "Observation": "subject",
    "DiagnosticReport": "subject",
    "Encounter": "subject",
    "Condition": "subject",
    "Procedure": "subject",
    "AllergyIntolerance": "patient",
    "Coverage": "beneficiary",
    "Immunization": "patient",
}


def patient_identifier(patient: dict[str, Any]) -> tuple[str, str] | None:
    """(system, value) of a Patient: its MR identifier, else its first one with a system;
    None when neither has both a system and a value (such a Patient names nobody)."""
    ids = [i for i in patient.get("identifier") or [] if isinstance(i, dict)]
    mr = [i for i in ids if any(c.get("code") == "MR" for c in _codings(i.get("type")))]
    chosen = mr or [i for i in ids if i.get("system")]
    return _pair(chosen[0]) if chosen else None


def resource_identifier(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(system, value) of a resource: a Patient by :func:`patient_identifier`, another by its
    first identifier with a system and a value."""
    if resource.get("resourceType") == "Patient":
        return patient_identifier(resource)
    ids = resource.get("identifier")
    ids = ids if isinstance(ids, list) else [ids]  # Coverage.identifier repeats; some types' is single
    for i in ids:
        pair = _pair(i)
        if pair is not None:
            return pair
    return None


def subject(resource: dict[str, Any], entries: Sequence[dict[str, Any]] = ()) -> tuple[str, str] | None:
    """(system, value) of the patient ``resource`` is about; ``entries`` are its Bundle's."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return patient_identifier(resource)
    refs: list[Any]
    if rtype == "Appointment":
        refs = [p.get("actor") for p in resource.get("participant") or [] if isinstance(p, dict)]
    else:
        refs = [resource.get(PATIENT_REFERENCE.get(str(rtype), "subject"))]
    for ref in refs:
        if not isinstance(ref, dict):
            continue
        pair = _pair(ref.get("identifier"))
        if pair is not None:
            return pair
        target = ref.get("reference")
        for e in entries:
            res = e.get("resource") if isinstance(e, dict) else None
            if not isinstance(res, dict) or res.get("resourceType") != "Patient":
                continue
            if target and (e.get("fullUrl") == target or f"Patient/{res.get('id')}" == target):
                return patient_identifier(res)
    return None


def ordering_key(data: dict[str, Any], issuer_of: Callable[[str], str]) -> str | None:
    """The ordering key of a request: ``issuer|value`` of the first patient it is about (a
    Bundle's first Patient, else its first resource's patient); None when it names none.
    ``issuer_of`` maps a system to the HL7 issuer (``mappings/tables/identifier_system.yaml``),
    so a patient's FHIR and HL7 messages share a key."""
    if data.get("resourceType") == "Bundle":
        entries = [e for e in data.get("entry") or [] if isinstance(e, dict)]
        resources: list[dict[str, Any]] = [e["resource"] for e in entries if isinstance(e.get("resource"), dict)]
        patients = [r for r in resources if r.get("resourceType") == "Patient"]
        found = next((p for p in (patient_identifier(r) for r in patients) if p), None)
        if found is None:
            found = next((p for p in (subject(r, entries) for r in resources) if p), None)
    else:
        found = subject(data)
    if found is None:
        return None
    system, value = found
    return f"{issuer_of(system)}|{value}"[:200]


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def _pair(identifier: Any) -> tuple[str, str] | None:
    if not isinstance(identifier, dict):
        return None
    system, value = identifier.get("system"), identifier.get("value")
    if isinstance(system, str) and system and isinstance(value, str) and value:
        return system, value
    return None
