"""FHIR R4 Encounter, DiagnosticReport, Condition, AllergyIntolerance, Coverage, Appointment and
Procedure into the clinical and PM stores, over real HTTP into a running ``engine run``.

The channel is written here (a ``type: fhir`` source taking every resource the mappings map,
a clinical and a pm store destination, each with its list of mappings), beside an ADT channel
for the patient registered over HL7. The resources are the shapes EHRs send
(tests/fixtures/fhir/resources/, see its README); the mappings' own cases are in
``mappings/fhir_*_test.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from conftest import FIXTURES, config_file, operator_messages, send_and_settle

from engine.channels.fhir_source import token_hash

RESOURCES = Path(__file__).resolve().parent / "fixtures" / "fhir" / "resources"
TOKEN = "ehr-north-resources-test-9c41d07b"
CLINICAL = [
    "fhir_patient_clinical",
    "fhir_observation_clinical",
    "fhir_encounter_clinical",
    "fhir_diagnosticreport_clinical",
    "fhir_condition_clinical",
    "fhir_allergyintolerance_clinical",
    "fhir_appointment_clinical",
    "fhir_procedure_clinical",
]
THO = "http://terminology.hl7.org/CodeSystem"
PM = ["fhir_encounter_pm", "fhir_coverage_pm", "fhir_appointment_pm", "fhir_procedure_pm"]
TYPES = (
    "Patient, Observation, Encounter, DiagnosticReport, Condition, AllergyIntolerance, Coverage, Appointment, Procedure"
)


def fixture(name: str) -> dict:
    return json.loads((RESOURCES / name).read_text())


@pytest.fixture
def fhir(fresh_engine, tmp_path):
    config = config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "${{ENGINE_MESSAGE_STORE_URL}}"}}
  clinical: {{url: "${{ENGINE_CLINICAL_STORE_URL}}"}}
  pm: {{url: "${{ENGINE_PM_STORE_URL}}"}}
mappings_dir: MAPPINGS
channels:
  - name: adt
    source: {{type: mllp, port: "${{ENGINE_ADT_PORT}}"}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
      - {{name: pm, type: store, store: pm, mapping: adt_pm}}
  - name: fhir-in
    source:
      type: fhir
      port: ${{ENGINE_FHIR_PORT}}
      tokens: "ehr-north:{token_hash(TOKEN)}"
      resources: [{TYPES}]
      read_stores: {{clinical: clinical, pm: pm}}  # the Patient entry's ifNoneExist is looked up
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: [{", ".join(CLINICAL)}]}}
      - {{name: pm, type: store, store: pm, mapping: [{", ".join(PM)}]}}
""",
    )
    eng = fresh_engine(config)
    base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
    with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield eng, client


def rows(eng, store: str, sql: str) -> list[dict]:
    return eng.query(store, sql)


def pick(row: dict, *columns: str) -> tuple:
    return tuple(row[c] for c in columns)


def test_a_visit_bundle_lands_in_both_stores_each_resource_under_its_key_and_the_clients_id(fhir):
    eng, client = fhir
    r = client.post("", json=fixture("visit_transaction_bundle.json"))
    assert r.status_code == 200, r.text
    assert len(r.json()["entry"]) == 8

    patient = ("MRN770412", "NORTHCLINIC")  # the MR identifier, its system translated to the HL7 issuer
    (enc,) = rows(eng, "clinical", "SELECT * FROM encounter")
    assert pick(enc, "visit_number", "fhir_id", "mrn", "mrn_issuer") == (
        "V770412-0610",
        "enc-770412-1",
        *patient,
    )
    assert pick(enc, "status", "patient_class", "attending") == ("finished", "outpatient", "1750000055")
    (cond,) = rows(eng, "clinical", "SELECT * FROM condition")
    assert pick(cond, "code", "visit_number", "mrn", "clinical_status") == (
        "J20.9",
        "V770412-0610",
        "MRN770412",
        "active",
    )
    (dx,) = rows(eng, "clinical", "SELECT * FROM diagnosis")
    assert pick(dx, "visit_number", "code", "mrn_issuer") == ("V770412-0610", "J20.9", "NORTHCLINIC")
    (proc,) = rows(eng, "clinical", "SELECT * FROM procedure")
    assert pick(proc, "procedure_id", "fhir_id", "code", "status") == (
        "PRC-0610-01",
        "proc-770412-1",
        "99213",
        "completed",
    )
    (alg,) = rows(eng, "clinical", "SELECT * FROM allergy")
    assert pick(alg, "allergen_code", "allergen_type", "severity", "reaction", "fhir_id") == (
        "7980",
        "drug",
        "moderate",
        "Hives; Itching",
        "alg-770412-1",
    )
    (rep,) = rows(eng, "clinical", "SELECT * FROM diagnostic_report")
    assert pick(rep, "filler_order_number", "code", "occurrence", "specimen_id", "fhir_id") == (
        "F24-0610-77",
        "58410-2",
        1,
        "ACC-24-0610-77",
        "dr-770412-1",
    )
    (appt,) = rows(eng, "clinical", "SELECT * FROM appointment")
    assert pick(appt, "filler_appointment_id", "status", "mrn", "fhir_id") == (
        "APT-5521",
        "booked",
        "MRN770412",
        "appt-770412-2",
    )
    (pat,) = rows(eng, "clinical", "SELECT mrn, mrn_issuer, family_name, fhir_id FROM patient")
    assert pick(pat, "mrn", "mrn_issuer", "family_name") == (*patient, "Quennell")
    assert pat["fhir_id"] == "3f6b2a90-41c7-4f0e-9d0a-5e7a1c2b9001"  # the client's id

    (visit,) = rows(eng, "pm", "SELECT * FROM visit")
    assert pick(visit, "visit_number", "mrn", "mrn_issuer", "patient_class") == (
        "V770412-0610",
        *patient,
        "outpatient",
    )
    (charge,) = rows(eng, "pm", "SELECT * FROM charge")
    assert pick(charge, "transaction_id", "transaction_type", "procedure_code", "visit_number") == (
        "PRC-0610-01",
        "CG",
        "99213",
        "V770412-0610",
    )
    assert json.loads(charge["diagnoses"]) == ["J20.9"] and str(charge["service_date"]) == "2024-06-10"
    (cov,) = rows(eng, "pm", "SELECT * FROM coverage")
    assert pick(cov, "payer_id", "member_id", "payer_name", "fhir_id", "mrn") == (
        "CHM01",
        "CHM770412",
        "CASCADE HEALTH MUTUAL",
        "cov-770412-1",
        "MRN770412",
    )
    (pm_appt,) = rows(eng, "pm", "SELECT * FROM pm_appointment")
    assert pick(pm_appt, "filler_appointment_id", "status") == ("APT-5521", "booked")

    # what no mapping placed is reported, by position, never by value
    (msg,) = [m for m in operator_messages(eng) if m["channel"] == "fhir-in"]
    assert msg["status"] == "SENT"
    assert (
        "Encounter.reasonCode.coding.code" in msg["unmapped"] and "DiagnosticReport.result.reference" in msg["unmapped"]
    )
    assert not any("Quennell" in u or "MRN770412" in u for u in msg["unmapped"])


def test_the_same_bundle_sent_again_updates_the_same_rows(fhir):
    eng, client = fhir
    bundle = fixture("visit_transaction_bundle.json")
    assert client.post("", json=bundle).status_code == 200
    assert client.post("", json=bundle).status_code == 200
    for store, table in [("clinical", "encounter"), ("clinical", "condition"), ("clinical", "diagnosis"),
                         ("clinical", "procedure"), ("pm", "charge"), ("pm", "visit"), ("pm", "coverage")]:  # fmt: skip
        assert len(rows(eng, store, f"SELECT id FROM {table}")) == 1, table


@pytest.mark.parametrize(
    ("name", "path", "table", "key"),
    [
        ("encounter_epic_inpatient.json", "Encounter/eWLhfjXHp4RUczv8BXZ10203", "encounter", "visit_number"),
        ("coverage_contained_payor.json", "Coverage/cov-900101-1", "coverage", "member_id"),
        ("appointment_epic_cancelled.json", "Appointment/eAppt.3102", "appointment", "filler_appointment_id"),
    ],
)
def test_a_single_resource_put_under_its_id_is_stored_with_that_id(fhir, name, path, table, key):
    eng, client = fhir
    r = client.put(f"/{path}", json=fixture(name))
    assert r.status_code in (200, 201), r.text
    store = "pm" if table == "coverage" else "clinical"
    (row,) = rows(eng, store, f"SELECT * FROM {table}")
    assert row["fhir_id"] == path.split("/", 1)[1]
    assert pick(row, "mrn", "mrn_issuer") == ("MRN900101", "NORTHCLINIC")
    expected = {"visit_number": "V900101-07", "member_id": "POL-900101", "filler_appointment_id": "3102"}[key]
    assert row[key] == expected


def test_a_billable_encounter_is_a_pm_visit_and_a_cancelled_appointment_is_cancelled_in_both_stores(fhir):
    eng, client = fhir
    assert client.put(
        "/Encounter/eWLhfjXHp4RUczv8BXZ10203", json=fixture("encounter_epic_inpatient.json")
    ).status_code in (200, 201)
    (visit,) = rows(eng, "pm", "SELECT visit_number, patient_class, admit_type, location_room FROM visit")
    assert visit == {
        "visit_number": "V900101-07",
        "patient_class": "inpatient",
        "admit_type": "urgent",
        "location_room": "NC 3W 318",
    }
    assert client.put("/Appointment/eAppt.3102", json=fixture("appointment_epic_cancelled.json")).status_code in (
        200,
        201,
    )
    for store, table in (("clinical", "appointment"), ("pm", "pm_appointment")):
        (a,) = rows(eng, store, f"SELECT status, event_reason_code, provider FROM {table}")
        assert a == {"status": "cancelled", "event_reason_code": "pat", "provider": "1750000055"}


def test_a_transaction_with_one_bad_entry_stores_nothing_in_either_store(fhir):
    eng, client = fhir
    r = client.post("", json=fixture("visit_transaction_bad_entry.json"))
    assert r.status_code == 422, r.text
    assert "the subject names no patient" in r.json()["issue"][0]["diagnostics"]
    assert "MRN770555" not in r.text and "Okonkwo" not in r.text  # the reason names paths, never values
    for store, table in [("clinical", "patient"), ("clinical", "encounter"), ("clinical", "procedure"),
                         ("pm", "visit"), ("pm", "charge")]:  # fmt: skip
        assert rows(eng, store, f"SELECT id FROM {table}") == [], table


def test_a_patient_registered_over_hl7_and_a_condition_over_fhir_are_one_patient(fhir):
    eng, client = fhir
    adt = (FIXTURES / "visit" / "2_adt_a04_arrival.hl7").read_bytes()
    send_and_settle(eng, eng.adt_port, adt, "NC-ADT-0001")
    r = client.post("/Condition", json=fixture("condition_problem_list_cerner.json"))
    assert r.status_code in (200, 201), r.text
    (cond,) = rows(eng, "clinical", "SELECT * FROM condition")
    assert pick(cond, "mrn", "mrn_issuer", "code", "category") == (
        "MRN900101",
        "NORTHCLINIC",
        "I10",
        "problem-list-item",
    )
    assert pick(cond, "condition_id", "condition_namespace") == ("12742488", "https://fhir-ehr.example.org/problem")
    (p,) = rows(eng, "clinical", "SELECT mrn, mrn_issuer FROM patient")  # one patient, whichever format named it
    assert pick(p, "mrn", "mrn_issuer") == ("MRN900101", "NORTHCLINIC")
    assert (
        rows(eng, "clinical", "SELECT id FROM diagnosis WHERE code = 'I10'") == []
    )  # a problem-list entry names no visit


def test_a_transaction_whose_bad_entry_only_the_clinical_store_maps_stores_nothing_in_the_pm_store_either(fhir):
    eng, client = fhir
    bundle = fixture("visit_transaction_bad_entry.json")
    bad = bundle["entry"][2]["resource"]
    bundle["entry"][2]["resource"] = {  # a Condition (clinical only) naming no patient, beside a billable visit (pm)
        "resourceType": "Condition",
        "identifier": bad["identifier"],
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "R05.9"}]},
        "subject": bad["subject"],
    }
    bundle["entry"][2]["request"] = {"method": "POST", "url": "Condition"}
    r = client.post("", json=bundle)
    assert r.status_code == 422, r.text
    assert rows(eng, "clinical", "SELECT id FROM encounter") == []
    assert rows(eng, "pm", "SELECT id FROM visit") == []


def test_an_observations_id_names_its_own_row_and_its_components_get_ids_of_their_own(fhir):
    eng, client = fhir
    bp = {
        "resourceType": "Observation",
        "id": "bp-900101-1",
        "status": "final",
        "category": [{"coding": [{"system": f"{THO}/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "subject": {"identifier": {"system": "https://northclinic.example.org/mrn", "value": "MRN900101"}},
        "effectiveDateTime": "2024-06-12T07:20:00Z",
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 148, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 92, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        ],
    }  # fmt: skip
    assert client.put("/Observation/bp-900101-1", json=bp).status_code in (200, 201)
    got = rows(eng, "clinical", "SELECT seq, fhir_id FROM observation ORDER BY seq")
    assert [g["seq"] for g in got] == [0, 1, 2] and got[0]["fhir_id"] == "bp-900101-1"
    assert len({g["fhir_id"] for g in got}) == 3 and all(g["fhir_id"] for g in got)
    (p,) = rows(eng, "clinical", "SELECT 1 AS n FROM observation WHERE fhir_id = 'bp-900101-1'")
    assert p == {"n": 1}
