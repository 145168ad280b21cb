"""Rows of the clinical and PM stores as FHIR R4 resources (the read API's renderings).

:data:`SERVED` says which table is served as which type, under which patient element, and
which columns its search parameters read; :func:`render` makes one row a resource (JSON-ready,
valid R4: checked with fhir.resources' R4B models in the tests; R4B's changes are to medication
definitions, evidence and subscriptions, and its new CodeableReference is not used here). The
resource's id is the row's ``fhir_id``, its ``meta.versionId`` the message-store id of the last
message that wrote it (what ``If-Match`` names), ``meta.lastUpdated`` its ``updated_at``.

Nothing here reads a store: what a row refers to (its patient's id, its encounter's, a report's
observations') comes in :class:`Links`, fetched with the page by the caller; store codes become
FHIR codes through :class:`Terms` (tables, ``mappings/tables/fhir_out_*.yaml`` and
``issuer_system.yaml``, handed in). A reference to a patient whose Patient is not in the
clinical store is a logical one (``Reference.identifier``), never an id that would not resolve.

Store codes that are FHIR codes already (observation and report status, encounter status, a
condition's clinical and verification status, procedure status) pass when FHIR defines them
for that element, else become ``unknown`` (or are left out where the element is optional).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SUBSCRIBER_RELATIONSHIP = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
COVERAGE_CLASS = "http://terminology.hl7.org/CodeSystem/coverage-class"
UCUM = "http://unitsofmeasure.org"

OBSERVATION_STATUS = {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error"}
REPORT_STATUS = OBSERVATION_STATUS | {"partial", "appended"}
ENCOUNTER_STATUS = {"planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled"}
PROCEDURE_STATUS = {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error"}
CLINICAL_STATUS = {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
VERIFICATION_STATUS = {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
ALLERGY_CATEGORY = {"drug": "medication", "food": "food", "environmental": "environment", "animal": "environment",
                    "plant": "environment", "pollen": "environment"}  # fmt: skip
CATEGORY_SYSTEM = {"problem-list-item": CONDITION_CATEGORY, "encounter-diagnosis": CONDITION_CATEGORY,
                   "health-concern": "http://hl7.org/fhir/us/core/CodeSystem/condition-category"}  # fmt: skip
REACTION_SEVERITY = {"mild", "moderate", "severe"}
RELATIONSHIP = {"self": "self", "spouse": "spouse", "child": "child", "parent": "parent", "mother": "parent",
                "father": "parent", "life-partner": "common", "injured": "injured", "other": "other"}  # fmt: skip
"""Store relationships (tables/relationship.yaml) -> subscriber-relationship codes."""
NAME_USE = {"L": "official", "M": "maiden", "N": "nickname", "D": "usual", "B": "old"}
COMPARATORS = {"<", "<=", ">=", ">"}
_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*$")
_BOUND = re.compile(r"^\s*(<=|>=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$")


class Lookup(Protocol):
    """A code table (:class:`engine.transforms.tables.Table`): code -> value."""

    def lookup(self, code: Any) -> Any: ...


@dataclass(frozen=True)
class Terms:
    """The tables that turn store codes into FHIR ones (``mappings/tables/``)."""

    code_system: Lookup  # fhir_out_code_system: HL7 coding systems (LN, I10 ...) -> URIs
    issuer_system: Lookup  # issuer_system: assigning authorities -> identifier systems
    interpretation: Lookup  # fhir_out_interpretation: store abnormal flags -> v3 codes
    appointment_status: Lookup  # fhir_out_appointment_status
    encounter_class: Lookup  # fhir_out_encounter_class: store patient classes -> v3 ActCode

    def system(self, stored: Any) -> str | None:
        """The URI of a stored coding system; None for a local one FHIR has no URI for."""
        uri = _term(self.code_system, stored)
        return uri if uri and ":" in uri else None

    def identifier_system(self, issuer: Any) -> str | None:
        return _term(self.issuer_system, issuer) if issuer else None


@dataclass
class Links:
    """What a page's rows refer to, looked up with the page (store ids, never guessed)."""

    patients: dict[tuple[str, str], str] = field(default_factory=dict)  # (issuer, mrn) -> Patient id
    encounters: dict[str, str] = field(default_factory=dict)  # visit number -> Encounter id
    results: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)  # report key -> Observation ids


@dataclass(frozen=True)
class Served:
    """One table served as one resource type.

    ``patient``: the element naming the patient (None for Patient itself); ``dates``: the
    columns of the ``date`` search parameter, the first present one counting (a ``*_at``
    datetime, then its ``*_date``); ``code``: the (code, system) columns of ``code``;
    ``identifier``: the (value, system) columns of ``identifier``, the start of a unique key
    (a Patient's MRN and issuer; an Observation sent over FHIR, a Condition, a Procedure or
    an Appointment: its identifier and namespace). A system is rendered through
    ``issuer_system.yaml`` and searched through ``identifier_system.yaml``, as a patient's."""

    rtype: str
    kind: str
    table: str
    patient: str | None
    dates: tuple[str, ...] = ()
    code: tuple[str, str] | None = None
    identifier: tuple[str, str] | None = None


_CODE = ("code", "code_system")

SERVED: tuple[Served, ...] = (
    Served("Patient", "clinical", "patient", None, identifier=("mrn", "mrn_issuer")),
    Served("Encounter", "clinical", "encounter", "subject", ("admit_at", "admit_date")),
    Served("Observation", "clinical", "observation", "subject", ("effective_at", "effective_date"), _CODE,
           ("filler_order_number", "report_code")),
    Served("DiagnosticReport", "clinical", "diagnostic_report", "subject",
           ("observed_at", "observed_date", "issued_at"), _CODE),
    # a Condition sent over FHIR is in condition; a visit's diagnoses (DG1) in diagnosis: both are Conditions
    Served("Condition", "clinical", "condition", "subject", ("onset_at", "onset_date", "recorded_date"), _CODE,
           ("condition_id", "condition_namespace")),
    Served("Condition", "clinical", "diagnosis", "subject", ("diagnosed_at", "diagnosed_date"), _CODE),
    Served("Procedure", "clinical", "procedure", "subject", ("performed_at", "performed_date"), _CODE,
           ("procedure_id", "procedure_namespace")),
    Served("AllergyIntolerance", "clinical", "allergy", "patient", ("identified_at",),
           ("allergen_code", "allergen_system")),
    Served("Appointment", "clinical", "appointment", "patient", ("start_at", "start_date"), None,
           ("filler_appointment_id", "filler_appointment_namespace")),
    Served("Coverage", "pm", "coverage", "beneficiary"),
)  # fmt: skip


def render(served: Served, row: dict[str, Any], terms: Terms, links: Links) -> dict[str, Any]:
    """``row`` (all its columns) as the resource ``served`` says."""
    body = _RENDER[served.table](_Row(row, terms, links))
    meta: dict[str, Any] = {"versionId": str(row.get("last_message_id") or 0)}
    if row.get("updated_at") is not None:
        meta["lastUpdated"] = _iso(row["updated_at"])
    return _clean({"resourceType": served.rtype, "id": row["fhir_id"], "meta": meta, **body})


def patient_of(row: dict[str, Any]) -> tuple[str, str] | None:
    """(issuer, mrn) of the patient a row belongs to; None when it names none."""
    return (row.get("mrn_issuer") or "", row["mrn"]) if row.get("mrn") else None


class _Row:
    """A row with the terms and links its rendering needs."""

    def __init__(self, row: dict[str, Any], terms: Terms, links: Links):
        self.r, self.terms, self.links = row, terms, links

    def __getitem__(self, name: str) -> Any:
        return self.r.get(name)

    def coded(self, prefix: str) -> dict | None:
        """A CodeableConcept from the columns ``<prefix>code``, ``<prefix>text``, ``<prefix>system``."""
        return self.concept(self[f"{prefix}code"], self[f"{prefix}text"], self[f"{prefix}system"])

    def concept(self, code: Any, text: Any, system: Any) -> dict | None:
        """A CodeableConcept: one coding (the stored system as a URI, or none) and the text."""
        if not code and not text:
            return None
        coding = {"system": self.terms.system(system), "code": _str(code), "display": _str(text) if code else None}
        return {"coding": [coding] if code else None, "text": _str(text)}

    def patient(self, issuer_col: str = "mrn_issuer", mrn_col: str = "mrn") -> dict | None:
        """The Reference to the patient of ``(issuer_col, mrn_col)``."""
        mrn = self[mrn_col]
        if not mrn:
            return None
        issuer = self[issuer_col] or ""
        fid = self.links.patients.get((issuer, mrn))
        if fid:
            return {"reference": f"Patient/{fid}"}
        return {"identifier": {"system": self.terms.identifier_system(issuer), "value": mrn}}

    def encounter(self) -> dict | None:
        fid = self.links.encounters.get(self["visit_number"] or "")
        return {"reference": f"Encounter/{fid}"} if fid else None

    def when(self, *cols: str) -> str | None:
        """The first present of ``cols``, as a FHIR dateTime (a date stays a date)."""
        return next((_iso(self[c]) for c in cols if self[c] is not None), None)


# -- Patient ----------------------------------------------------------------------------------------
def _patient(r: _Row) -> dict[str, Any]:
    ids = [
        {
            "use": "usual",
            "type": {"coding": [{"system": V2_0203, "code": "MR"}]},
            "system": r.terms.identifier_system(r["mrn_issuer"]),
            "value": r["mrn"],
        }
    ]
    for other in _json_list(r["other_ids"]):
        if isinstance(other, dict) and other.get("id"):
            kind = other.get("type")
            ids.append(
                {
                    "type": {"coding": [{"system": V2_0203, "code": str(kind)}]} if kind else None,
                    "system": r.terms.identifier_system(other.get("authority")),
                    "value": str(other["id"]),
                }
            )
    names = [
        _name("official", r["family_name"], [r["given_name"], r["middle_name"]], r["name_prefix"], r["name_suffix"])
    ]
    for alias in _json_list(r["aliases"]):
        if isinstance(alias, dict):
            given = [alias.get("given"), alias.get("middle")]
            use = NAME_USE.get(str(alias.get("type") or ""))
            names.append(_name(use, alias.get("family"), given, alias.get("prefix"), alias.get("suffix")))
    telecom = [
        {"system": "phone", "value": r["phone_home"], "use": "home"} if r["phone_home"] else None,
        {"system": "phone", "value": r["phone_work"], "use": "work"} if r["phone_work"] else None,
    ]
    address = {
        "line": [r["address_line1"], r["address_line2"]],
        "city": r["city"],
        "state": r["state"],
        "postalCode": r["postal_code"],
        "country": r["country"],
    }
    out: dict[str, Any] = {
        "identifier": ids,
        "active": not r["merged_into"],
        "name": names,
        "telecom": telecom,
        "gender": r["sex"] if r["sex"] in ("male", "female", "other", "unknown") else None,
        "birthDate": _iso(r["birth_date"]),
        "address": [address],
        "maritalStatus": r.coded("marital_status_"),
    }
    died = r.when("deceased_at", "deceased_date")
    if died:
        out["deceasedDateTime"] = died
    elif r["deceased"] is not None:
        out["deceasedBoolean"] = bool(r["deceased"])
    if r["merged_into"]:  # merged away (ADT A40): the survivor replaces it
        out["link"] = [{"other": r.patient("merged_into_issuer", "merged_into"), "type": "replaced-by"}]
    return out


def _name(use: str | None, family: Any, given: list[Any], prefix: Any, suffix: Any) -> dict[str, Any]:
    return {"use": use, "family": _str(family), "given": [_str(g) for g in given], "prefix": [_str(prefix)],
            "suffix": [_str(suffix)]}  # fmt: skip


# -- Encounter --------------------------------------------------------------------------------------
def _encounter(r: _Row) -> dict[str, Any]:
    act = _term(r.terms.encounter_class, r["patient_class"])
    klass = {"system": ACT_CODE, "code": act} if act else {"system": NULL_FLAVOR, "code": "UNK"}
    people = [
        (r["attending"], r["attending_name"], "ATND"),
        (r["admitting"], r["admitting_name"], "ADM"),
        (r["referring"], r["referring_name"], "REF"),
    ]
    return {
        "identifier": [{"type": {"coding": [{"system": V2_0203, "code": "VN"}]}, "value": r["visit_number"]}],
        "status": r["status"] if r["status"] in ENCOUNTER_STATUS else "unknown",
        "class": klass,
        "serviceType": r.concept(r["hospital_service"], None, None),
        "subject": r.patient(),
        "participant": [
            {
                "type": [{"coding": [{"system": PARTICIPATION, "code": code}]}],
                "individual": {"identifier": {"value": pid} if pid else None, "display": _str(name)},
            }
            for pid, name, code in people
            if pid or name
        ],
        "period": {"start": r.when("admit_at", "admit_date"), "end": r.when("discharge_at", "discharge_date")},
        "location": [{"location": {"display": r["location"]}}] if r["location"] else None,
    }


# -- Observation and DiagnosticReport ---------------------------------------------------------------
def _observation(r: _Row) -> dict[str, Any]:
    status = r["status"]
    out: dict[str, Any] = {
        "identifier": _observation_identifier(r),
        "status": "preliminary" if status == "partial" else status if status in OBSERVATION_STATUS else "unknown",
        "code": r.concept(r["code"], r["code_text"], r["code_system"]) or {"text": "unknown"},
        "subject": r.patient(),
        "effectiveDateTime": r.when("effective_at", "effective_date"),
        "performer": [{"display": _str(r["performer_name"] or r["performer"])}],  # empty: left out
        "interpretation": [_interpretation(r)] if r["abnormal_flag"] else None,
        "note": [{"text": r["notes"]}],
        "method": r.coded("method_"),
        "referenceRange": [_range(r["reference_range"], r["units"])] if r["reference_range"] else None,
    }
    out.update(_value(r))
    return out


def _observation_identifier(r: _Row) -> list[dict[str, Any]] | None:
    """An Observation sent over FHIR with an identifier is keyed by it (occurrence 0, the
    identifier's system as report code: fhir_observation_clinical.yaml); HL7 results have none."""
    if r["report_occurrence"] == 0 and r["seq"] == 0 and r["report_code"] not in (None, "", "Observation.id"):
        return [{"system": r.terms.identifier_system(r["report_code"]), "value": r["filler_order_number"]}]
    return None


def _value(r: _Row) -> dict[str, Any]:
    """value[x] by the OBX value type (OBX-2) the row keeps."""
    kind = (r["value_type"] or "").upper()
    if kind in ("NM", "SN") and r["value_numeric"] is not None:
        if kind == "SN" and r["value_numeric2"] is not None and r["value_separator"] in ("-", ":", "/"):
            low, high = _quantity(r["value_numeric"], r["units"]), _quantity(r["value_numeric2"], r["units"])
            if r["value_separator"] == "-":
                return {"valueRange": {"low": low, "high": high}}
            return {"valueRatio": {"numerator": low, "denominator": high}}
        q = _quantity(r["value_numeric"], r["units"])
        if r["value_comparator"] in COMPARATORS:
            q["comparator"] = r["value_comparator"]
        return {"valueQuantity": q}
    if kind in ("CWE", "CE", "CNE", "CF", "ID", "IS") and (r["value_code"] or r["value_code_text"]):
        return {"valueCodeableConcept": r.concept(r["value_code"], r["value_code_text"], r["value_code_system"])}
    if kind in ("TS", "DTM", "DT", "DATE") and (r["value_datetime"] or r["value_date"]):
        return {"valueDateTime": r.when("value_datetime", "value_date")}
    text = r["value_string"] or r["value_id"]
    return {"valueString": str(text)} if text else {}


def _quantity(value: Any, units: Any) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value}
    if units:
        q.update(unit=str(units), system=UCUM, code=str(units))
    return q


def _range(text: str, units: Any) -> dict[str, Any]:
    """A reference range: low and high when the text is ``a-b`` (``<b``, ``>a``), always the text."""
    out: dict[str, Any] = {"text": text}
    if m := _RANGE.match(text):
        out.update(low=_quantity(float(m[1]), units), high=_quantity(float(m[2]), units))
    elif m := _BOUND.match(text):
        out["high" if m[1].startswith("<") else "low"] = _quantity(float(m[2]), units)
    return out


def _interpretation(r: _Row) -> dict[str, Any]:
    code = _term(r.terms.interpretation, r["abnormal_flag"])
    known = code is not None and code != r["abnormal_flag"]
    return {"coding": [{"system": INTERPRETATION, "code": code}] if known else None, "text": r["abnormal_flag"]}


def _report(r: _Row) -> dict[str, Any]:
    key = (r["filler_order_number"], r["code"], r["occurrence"])
    return {
        "identifier": [{"type": {"coding": [{"system": V2_0203, "code": "FILL"}]}, "value": r["filler_order_number"]}],
        "status": r["status"] if r["status"] in REPORT_STATUS else "unknown",
        "code": r.concept(r["code"], r["code_text"], r["code_system"]) or {"text": "unknown"},
        "subject": r.patient(),
        "encounter": r.encounter(),
        "effectiveDateTime": r.when("observed_at", "observed_date"),
        "issued": _iso(r["issued_at"]),
        "result": [{"reference": f"Observation/{fid}"} for fid in r.links.results.get(key, [])],
    }


# -- Condition, Procedure, AllergyIntolerance -------------------------------------------------------
def _diagnosis(r: _Row) -> dict[str, Any]:
    """A visit's diagnosis (DG1): an encounter-diagnosis; its type (admitting, working, final)
    is the role it plays in the encounter, which FHIR keeps on Encounter.diagnosis, not here."""
    return {
        "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis"}]}],
        "code": r.concept(r["code"], r["description"], r["code_system"]),
        "subject": r.patient(),
        "encounter": r.encounter(),
        "onsetDateTime": r.when("diagnosed_at", "diagnosed_date"),
    }


def _condition(r: _Row) -> dict[str, Any]:
    category = r["category"]
    system = CATEGORY_SYSTEM.get(category)  # another code (a local one the client sent): its text only
    clinical, verification = r["clinical_status"], r["verification_status"]
    return {
        "identifier": _identifier(r, "condition_id", "condition_namespace", "Condition.id"),
        "clinicalStatus": _status(CONDITION_CLINICAL, clinical) if clinical in CLINICAL_STATUS else None,
        "verificationStatus": _status(CONDITION_VERIFICATION, verification)
        if verification in VERIFICATION_STATUS
        else None,
        "category": [{"coding": [{"system": system, "code": category}]} if system else {"text": category}],
        "severity": r.coded("severity_"),
        "code": r.concept(r["code"], r["code_text"], r["code_system"]),
        "subject": r.patient(),
        "encounter": r.encounter(),
        "onsetDateTime": r.when("onset_at", "onset_date"),
        "abatementDateTime": r.when("abatement_at", "abatement_date"),
        "recordedDate": _iso(r["recorded_date"]),
        "recorder": {"display": _str(r["recorder_name"] or r["recorder"])},
        "note": [{"text": r["notes"]}],
    }


def _procedure(r: _Row) -> dict[str, Any]:
    start, end = r.when("performed_at", "performed_date"), _iso(r["performed_end_at"])
    return {
        "identifier": _identifier(r, "procedure_id", "procedure_namespace", "Procedure.id"),
        "status": r["status"] if r["status"] in PROCEDURE_STATUS else "unknown",
        "category": r.coded("category_"),
        "code": r.concept(r["code"], r["code_text"], r["code_system"]),
        "subject": r.patient(),
        "encounter": r.encounter(),
        "performedDateTime": start if not end else None,
        "performedPeriod": {"start": start, "end": end} if end else None,
        "performer": [{"actor": {"display": _str(r["performer_name"] or r["performer"])}}],
        "bodySite": [r.coded("body_site_")],
        "reasonCode": [r.coded("reason_")],
        "note": [{"text": r["notes"]}],
    }


def _allergy(r: _Row) -> dict[str, Any]:
    category = ALLERGY_CATEGORY.get(r["allergen_type"] or "")
    reactions = [t.strip() for t in (r["reaction"] or "").split(";") if t.strip()]
    severity = r["severity"] if r["severity"] in REACTION_SEVERITY else None
    return {
        "clinicalStatus": _status(ALLERGY_CLINICAL, "active"),  # an AL1 the feed sends is a current allergy
        "type": "intolerance" if r["allergen_type"] == "contraindication" else None,
        "category": [category] if category else None,
        "code": r.concept(r["allergen_code"], r["allergen_text"], r["allergen_system"]),
        "patient": r.patient(),
        "recordedDate": _iso(r["identified_at"]),
        "reaction": [{"manifestation": [{"text": t} for t in reactions], "severity": severity}] if reactions else None,
    }


# -- Appointment and Coverage -----------------------------------------------------------------------
def _appointment(r: _Row) -> dict[str, Any]:
    status = _term(r.terms.appointment_status, r["status"]) or "booked"
    people: list[dict[str, Any]] = [{"actor": r.patient(), "status": "accepted"}]
    if r["provider"] or r["provider_name"]:
        people.append({"actor": {"display": _str(r["provider_name"] or r["provider"])}, "status": "accepted"})
    if r["location"]:
        people.append({"actor": {"display": r["location"]}, "status": "accepted"})
    minutes = r["duration"] if (r["duration_units"] or "").lower() in ("min", "minutes", "m") else None
    return {
        "identifier": _identifier(r, "filler_appointment_id", "filler_appointment_namespace", None),
        "status": status,
        "cancelationReason": r.coded("event_reason_") if status in ("cancelled", "noshow") else None,
        "serviceType": [r.coded("service_")],
        "appointmentType": r.coded("appointment_type_"),
        "reasonCode": [r.coded("reason_")],
        "start": _iso(r["start_at"]),
        "end": _iso(r["end_at"]),
        "minutesDuration": int(minutes) if minutes and minutes >= 1 else None,
        "requestedPeriod": [{"start": _iso(r["start_date"]), "end": _iso(r["end_date"])}]
        if r["start_at"] is None and r["start_date"]
        else None,
        "comment": r["notes"],
        "participant": [p for p in people if p["actor"]],
    }


def _coverage(r: _Row) -> dict[str, Any]:
    rel = RELATIONSHIP.get(r["subscriber_relationship"] or "")
    classes = [
        {"type": _status(COVERAGE_CLASS, "group"), "value": r["group_number"], "name": r["group_name"]}
        if r["group_number"]
        else None,
        {"type": _status(COVERAGE_CLASS, "plan"), "value": r["plan_id"]} if r["plan_id"] else None,
    ]
    return {
        "status": "active",
        "type": r.concept(r["plan_type"], r["plan_type_text"], None),
        "subscriber": {"display": r["subscriber_name"]} if r["subscriber_name"] else None,
        "subscriberId": r["member_id"],
        "beneficiary": r.patient(),
        "relationship": _status(SUBSCRIBER_RELATIONSHIP, rel) if rel else None,
        "period": {"start": _iso(r["effective_date"]), "end": _iso(r["expiration_date"])},
        "payor": [{"identifier": {"value": r["payer_id"]}, "display": r["payer_name"]}],
        "class": classes,
        "order": r["priority"] if isinstance(r["priority"], int) and r["priority"] >= 1 else None,
    }


_RENDER = {
    "patient": _patient,
    "encounter": _encounter,
    "observation": _observation,
    "diagnostic_report": _report,
    "diagnosis": _diagnosis,
    "condition": _condition,
    "procedure": _procedure,
    "allergy": _allergy,
    "appointment": _appointment,
    "coverage": _coverage,
}


# -- helpers ------------------------------------------------------------------------------------------
def _identifier(r: _Row, value: str, namespace: str, client_id: str | None) -> list[dict[str, Any]] | None:
    """The row's own identifier (value and its namespace); none when the key is the client's id."""
    if not r[value] or (client_id and r[namespace] == client_id):
        return None
    return [{"system": r.terms.identifier_system(r[namespace]), "value": r[value]}]


def _status(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def _term(table: Lookup, code: Any) -> str | None:
    """``code`` through ``table``; None for no code, or a table that leaves it out."""
    if code in (None, ""):
        return None
    value = table.lookup(code)
    return value if isinstance(value, str) and value else None


def _iso(v: Any) -> str | None:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    return None if v is None else str(v)


def _str(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def _json_list(v: Any) -> list[Any]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return []
    return v if isinstance(v, list) else []


def _clean(v: Any) -> Any:
    """Without empty elements (None, '', [], {}), inside out: FHIR allows no empty element, so a
    rendering writes every element it may have and an absent value leaves it out whole."""
    if isinstance(v, dict):
        out = {k: c for k, c in ((k, _clean(c)) for k, c in v.items()) if c not in (None, "", [], {})}
        return out
    if isinstance(v, list):
        return [c for c in (_clean(c) for c in v) if c not in (None, "", [], {})]
    return v
