"""Conditional create and update, versions and id conflicts on the sample channel `fhir-inbound`,
over real HTTP: If-None-Exist, PUT ?identifier=, If-Match (412), an id that names another
resource (409); and a FHIR request's ordering key is its patient's, shaped as the HL7 channels'."""

from __future__ import annotations

import httpx
import pytest
from conftest import FIXTURES, send_and_settle
from fhir.resources.R4B import get_fhir_model_class

from engine.formats.fhir_bundle import resource_id

TOKEN = "engine-api-test-token-0b7f3e19c4"
SYSTEM = "https://northclinic.example.org/mrn"  # NORTHCLINIC's MRNs (tables/identifier_system.yaml)


def patient(mrn: str, phone: str, rid: str | None = None) -> dict:
    res = {
        "resourceType": "Patient",
        "identifier": [{"system": SYSTEM, "value": mrn}],
        "name": [{"family": "QUILLFEATHER", "given": ["MAREN"]}],
        "telecom": [{"system": "phone", "use": "home", "value": phone}],
    }
    return dict(res, id=rid) if rid else res


@pytest.fixture
def api(fresh_engine):
    eng = fresh_engine(ENGINE_API_TOKEN=TOKEN)
    base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield eng, client


def phones(eng) -> list[tuple]:
    return [
        (r["mrn"], r["phone_home"], r["fhir_id"])
        for r in eng.query("clinical", "SELECT mrn, phone_home, fhir_id FROM patient ORDER BY mrn")
    ]


def test_if_none_exist_creates_once_and_then_points_at_what_is_stored(api):
    eng, client = api
    condition = {"If-None-Exist": f"identifier={SYSTEM}|MRN700001"}
    first = client.post("/Patient", json=patient("MRN700001", "541-555-0101"), headers=condition)
    assert first.status_code == 201, first.text
    rid = resource_id("Patient", "MRN700001", "NORTHCLINIC")  # the row's id: its natural key's
    assert first.headers["location"] == f"/fhir/Patient/{rid}"

    again = client.post("/Patient", json=patient("MRN700001", "541-555-0999"), headers=condition)
    assert again.status_code == 200, again.text
    assert again.headers["location"] == f"/fhir/Patient/{rid}"
    assert again.headers["etag"].startswith('W/"')
    assert again.json()["issue"][0]["severity"] == "information"
    assert phones(eng) == [("MRN700001", "541-555-0101", rid)]  # nothing of the second was stored
    audit = eng.query("clinical", "SELECT accessed_by, action, patient_mrn, patient_mrn_issuer FROM record_access")
    assert {"accessed_by": "api", "action": "conditional", "patient_mrn": "MRN700001",
            "patient_mrn_issuer": "NORTHCLINIC"} in audit  # fmt: skip


@pytest.mark.parametrize(
    "condition, problem",
    [
        ("identifier=MRN700001", "needs its system"),  # a bare value names no one
        ("name=QUILLFEATHER", "one identifier="),  # a condition the engine would not evaluate
        (f"identifier={SYSTEM}|MRN700001&birthdate=1990-01-01", "one identifier="),
    ],
)
def test_a_condition_the_engine_cannot_evaluate_exactly_is_refused(api, condition, problem):
    eng, client = api
    r = client.post("/Patient", json=patient("MRN700001", "541-555-0101"), headers={"If-None-Exist": condition})
    assert r.status_code == 400, r.text
    assert problem in r.json()["issue"][0]["diagnostics"]
    assert phones(eng) == []


def test_conditional_update_creates_then_updates_the_one_it_finds(api):
    eng, client = api
    url = f"/Patient?identifier={SYSTEM}|MRN700002"
    created = client.put(url, json=patient("MRN700002", "541-555-0102"))
    assert created.status_code == 201, created.text
    rid = created.headers["location"].rsplit("/", 1)[1]
    updated = client.put(url, json=patient("MRN700002", "541-555-0202"))
    assert updated.status_code == 200, updated.text
    assert updated.headers["location"] == f"/fhir/Patient/{rid}"
    assert phones(eng) == [("MRN700002", "541-555-0202", rid)]
    wrong = client.put(url, json=patient("MRN700002", "541-555-0302", rid="someone-else"))
    assert wrong.status_code == 400, wrong.text
    assert wrong.json()["issue"][0]["expression"] == ["Patient.id"]


def test_identity_is_the_identifier_and_an_id_naming_another_patient_is_a_conflict(api):
    eng, client = api
    adt = (FIXTURES / "visit" / "2_adt_a04_arrival.hl7").read_bytes()  # MRN900101 of NORTHCLINIC, over HL7
    send_and_settle(eng, int(eng.env["ENGINE_ADT_PORT"]), adt, "NC-ADT-0001")
    known = resource_id("Patient", "MRN900101", "NORTHCLINIC")
    # the EHR's own id for a patient this engine knows under another: updated there, and told so
    r = client.put("/Patient/ehr-4471", json=patient("MRN900101", "541-555-0103", rid="ehr-4471"))
    assert r.status_code == 200, r.text
    assert r.headers["location"] == f"/fhir/Patient/{known}"
    assert f"stored as Patient/{known}" in r.json()["issue"][0]["diagnostics"]
    assert phones(eng) == [("MRN900101", "541-555-0103", known)]
    # the known id with another patient's identifier: refused too
    r = client.put(f"/Patient/{known}", json=patient("MRN700003", "541-555-0103", rid=known))
    assert r.status_code == 409, r.text
    assert r.json()["issue"][0]["expression"] == ["Patient.identifier"]
    assert [m for m, _p, _i in phones(eng)] == ["MRN900101"]
    # the known id with its own identifier: an update
    r = client.put(f"/Patient/{known}", json=patient("MRN900101", "541-555-0104", rid=known))
    assert r.status_code == 200, r.text
    assert phones(eng) == [("MRN900101", "541-555-0104", known)]


def test_if_match_applies_an_update_only_at_the_version_it_names(api):
    eng, client = api
    condition = {"If-None-Exist": f"identifier={SYSTEM}|MRN700004"}
    assert client.post("/Patient", json=patient("MRN700004", "541-555-0105"), headers=condition).status_code == 201
    seen = client.post("/Patient", json=patient("MRN700004", "541-555-0105"), headers=condition)
    rid, version = seen.headers["location"].rsplit("/", 1)[1], seen.headers["etag"]
    body = patient("MRN700004", "541-555-0205", rid=rid)
    ok = client.put(f"/Patient/{rid}", json=body, headers={"If-Match": version})
    assert ok.status_code == 200, ok.text
    later = patient("MRN700004", "541-555-0305", rid=rid)
    stale = client.put(f"/Patient/{rid}", json=later, headers={"If-Match": version})
    assert stale.status_code == 412, stale.text  # the first update made a new version
    assert phones(eng) == [("MRN700004", "541-555-0205", rid)]
    missing = client.put("/Patient/nobody", json=patient("MRN700005", "1", rid="nobody"), headers={"If-Match": 'W/"1"'})
    assert missing.status_code == 412, missing.text


def test_a_fhir_message_is_ordered_with_its_patients_other_messages(api):
    eng, client = api
    r = client.post("/Patient", json=patient("MRN700006", "541-555-0106"))
    assert r.status_code == 201, r.text
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "identifier": [{"system": "https://northclinic.example.org/obs", "value": "OBS-1"}],
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                    "subject": {"identifier": {"system": SYSTEM, "value": "MRN700006"}},
                    "valueQuantity": {"value": 91, "unit": "mg/dL"},
                },
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    assert client.post("", json=bundle).status_code == 200
    keys = eng.query("messages", "SELECT ordering_key FROM messages WHERE channel = 'fhir-inbound' ORDER BY id")
    assert [k["ordering_key"] for k in keys] == ["NORTHCLINIC|MRN700006", "NORTHCLINIC|MRN700006"]


def test_a_reference_to_a_patient_stored_here_names_that_patient(api):
    eng, client = api
    adt = (FIXTURES / "visit" / "2_adt_a04_arrival.hl7").read_bytes()  # MRN900101 and visit V900101, over HL7
    send_and_settle(eng, int(eng.env["ENGINE_ADT_PORT"]), adt, "NC-ADT-0001")
    pid, eid = resource_id("Patient", "MRN900101", "NORTHCLINIC"), resource_id("Encounter", "V900101")
    condition = {
        "resourceType": "Condition",
        "identifier": [{"system": "https://northclinic.example.org/problem", "value": "PRB-1"}],
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]},
        "subject": {"reference": f"Patient/{pid}"},  # as EHRs write it: the id alone
        "encounter": {"reference": f"Encounter/{eid}"},
    }  # fmt: skip
    r = client.post("/Condition", json=condition)
    assert r.status_code == 201, r.text
    rows = eng.query("clinical", "SELECT mrn, mrn_issuer, visit_number FROM condition")
    assert rows == [{"mrn": "MRN900101", "mrn_issuer": "NORTHCLINIC", "visit_number": "V900101"}]
    diagnosis = eng.query("clinical", "SELECT mrn, visit_number, code FROM diagnosis WHERE code = 'E11.9'")
    assert diagnosis == [{"mrn": "MRN900101", "visit_number": "V900101", "code": "E11.9"}]
    # the stored request names the patient it was resolved to when it arrived
    (stored,) = eng.query("messages", "SELECT content FROM messages WHERE message_type = 'Condition'")
    assert f'"identifier":{{"system":"{SYSTEM}","value":"MRN900101"}}' in bytes(stored["content"]).decode()

    nobody = dict(condition, identifier=[{"system": "https://northclinic.example.org/problem", "value": "PRB-2"}],
                  subject={"reference": "Patient/not-here"})  # fmt: skip
    r = client.post("/Condition", json=nobody)
    assert r.status_code == 422, r.text  # an id this engine does not serve names no one: never a guess
    assert len(eng.query("clinical", "SELECT id FROM condition")) == 1


def test_the_capability_statement_says_which_types_take_conditional_writes_and_versions(api):
    _eng, client = api
    cap = client.get("/metadata").json()
    get_fhir_model_class("CapabilityStatement").model_validate(cap)
    types = {r["type"]: r for r in cap["rest"][0]["resource"]}
    assert types["Patient"]["conditionalCreate"] and types["Patient"]["conditionalUpdate"]
    assert types["Patient"]["versioning"] == "versioned-update"
    assert "conditionalCreate" not in types["Encounter"]  # its identifier is not its key: no conditional writes
    assert "SMART" not in str(cap["rest"][0]["security"])  # a bearer token, not SMART on FHIR


def test_prefer_respond_async_is_answered_once_stored_and_applied_after(api):
    eng, client = api
    r = client.post("/Patient", json=patient("MRN700009", "541-555-0109"), headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    assert r.json()["issue"][0]["severity"] == "information"
    rid = r.headers["location"].rsplit("/", 1)[1]
    stored = "SELECT fhir_id FROM patient WHERE mrn = 'MRN700009'"
    eng.wait_for("clinical", stored, lambda rows: rows == [{"fhir_id": rid}])
