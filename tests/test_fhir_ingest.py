"""FHIR R4 into the clinical store on the sample channel `fhir-inbound` (config/channels.yaml), over
real HTTP: one patient whether registered over HL7 or FHIR, a transaction Bundle all or nothing."""

from __future__ import annotations

import httpx
import pytest
from conftest import FIXTURES, send_and_settle

from engine.channels.fhir_source import token_hash

TOKEN = "ehr-north-test-token-5d1e0c77a2"
SYSTEM = "https://northclinic.example.org/mrn"  # NORTHCLINIC's MRNs as FHIR names them (tables/identifier_system.yaml)


def patient(phone: str) -> dict:
    return {
        "resourceType": "Patient",
        "id": "p900101",
        "identifier": [
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
             "system": SYSTEM, "value": "MRN900101"}
        ],
        "name": [{"use": "official", "family": "TEAGARDEN", "given": ["ROWAN", "J"]}],
        "birthDate": "1981-09-23",
        "gender": "male",
        "telecom": [{"system": "phone", "use": "home", "value": phone}],
    }  # fmt: skip


GLUCOSE = {
    "resourceType": "Observation",
    "identifier": [{"system": "https://northclinic.example.org/obs", "value": "OBS-77"}],
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
    "subject": {"identifier": {"system": SYSTEM, "value": "MRN900101"}},
    "effectiveDateTime": "2024-06-10T09:30:00-07:00",
    "valueQuantity": {"value": 98, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
}


@pytest.fixture
def sample(fresh_engine):
    eng = fresh_engine(ENGINE_FHIR_TOKENS=f"ehr-north:{token_hash(TOKEN)}")
    base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield eng, client


def test_a_patient_registered_over_hl7_and_updated_over_fhir_is_one_patient(sample):
    eng, client = sample
    adt = (FIXTURES / "visit" / "2_adt_a04_arrival.hl7").read_bytes()
    send_and_settle(eng, int(eng.env["ENGINE_ADT_PORT"]), adt, "NC-ADT-0001")
    r = client.put("/Patient/p900101", json=patient("541-555-0199"))
    assert r.status_code == 200, r.text
    rows = eng.query("clinical", "SELECT mrn, mrn_issuer, phone_home, family_name FROM patient WHERE mrn = 'MRN900101'")
    assert rows == [
        {"mrn": "MRN900101", "mrn_issuer": "NORTHCLINIC", "phone_home": "541-555-0199", "family_name": "TEAGARDEN"}
    ]


def test_a_transaction_bundle_lands_whole_or_not_at_all(sample):
    eng, client = sample
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:8c1f",
                "resource": patient("541-555-0100"),
                "request": {"method": "PUT", "url": "Patient/p900101"},
            },
            {"resource": GLUCOSE, "request": {"method": "POST", "url": "Observation"}},
        ],
    }  # fmt: skip
    r = client.post("", json=bundle)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "201 Created"]
    (obs,) = eng.query("clinical", "SELECT * FROM observation")
    assert (obs["mrn"], obs["mrn_issuer"], obs["code"], float(obs["value_numeric"])) == (
        "MRN900101",
        "NORTHCLINIC",
        "2345-7",
        98.0,
    )
    assert str(obs["effective_at"]).startswith("2024-06-10 16:30")  # the offset kept: 09:30 -07:00 is 16:30 UTC

    # the same Bundle with an Observation that names no patient: nothing of it is written
    orphan = dict(GLUCOSE, identifier=[{"system": "https://northclinic.example.org/obs", "value": "OBS-78"}])
    orphan.pop("subject")
    bad = dict(bundle, entry=[{"resource": patient("541-555-0111")}, {"resource": orphan}])
    r = client.post("", json=bad)
    assert r.status_code == 422, r.text
    assert "subject" in r.json()["issue"][0]["diagnostics"]
    (p,) = eng.query("clinical", "SELECT phone_home FROM patient")
    assert p["phone_home"] == "541-555-0100"  # the Patient of the failed Bundle was not applied either
    assert len(eng.query("clinical", "SELECT id FROM observation")) == 1
