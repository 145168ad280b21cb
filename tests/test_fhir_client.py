"""A real FHIR client against `engine run`: fhirpy (SyncFHIRClient, the bearer token through its
``authorization`` argument) creates a Patient, updates it, posts a transaction Bundle through
its request API, and meets the engine's refusals as its own exceptions (an OperationOutcome
with the element at fault, AuthorizationError, ResourceNotFound). The channel is like the
sample's: Patient and Observation into the clinical store by the sample mappings."""

from __future__ import annotations

import pytest
from conftest import EngineProcess, config_file, fhir_config
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import AuthorizationError, OperationOutcome, ResourceNotFound

TOKEN = "fhirpy-client-test-token-41d8a0c3"
SYSTEM = "https://northclinic.example.org/mrn"  # NORTHCLINIC (mappings/tables/identifier_system.yaml)


def patient_fields(mrn: str) -> dict:
    return {
        "identifier": [{"system": SYSTEM, "value": mrn}],
        "name": [{"use": "official", "family": "Lindqvist", "given": ["Oona", "May"]}],
        "birthDate": "1990-07-14",
        "gender": "female",
    }


@pytest.fixture(scope="module")
def fhir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fhir-client")
    eng = EngineProcess(tmp, config=config_file(tmp, fhir_config(TOKEN, name="ehr-client"))).start()
    base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
    client = SyncFHIRClient(base, authorization=f"Bearer {TOKEN}", requests_config={"timeout": 60})
    yield eng, client, base
    eng.stop()


def patient_rows(eng: EngineProcess, mrn: str) -> list[dict]:
    sql = "SELECT mrn, mrn_issuer, family_name, given_name, middle_name, phone_home FROM patient WHERE mrn = :m"
    return eng.query("clinical", sql, m=mrn)


def test_a_patient_created_then_saved_again_with_its_id_is_one_patient_updated(fhir):
    eng, client, _ = fhir
    last = eng.query("messages", "SELECT coalesce(max(id), 0) AS n FROM messages")[0]["n"]
    p = client.resource("Patient", **patient_fields("MRN-CL-1"))
    p.save()  # no id: POST /Patient
    assert p.id  # the engine's answer gave it one
    assert patient_rows(eng, "MRN-CL-1") == [
        {
            "mrn": "MRN-CL-1",
            "mrn_issuer": "NORTHCLINIC",
            "family_name": "Lindqvist",
            "given_name": "Oona",
            "middle_name": "May",
            "phone_home": None,
        }
    ]
    p["telecom"] = [{"system": "phone", "use": "home", "value": "541-555-0142"}]
    p.save()  # with its id: PUT /Patient/<id>
    (row,) = patient_rows(eng, "MRN-CL-1")
    assert row["phone_home"] == "541-555-0142"
    methods = eng.query("messages", "SELECT trigger, sending_app FROM messages WHERE id > :n ORDER BY id", n=last)
    assert methods == [
        {"trigger": "create", "sending_app": "ehr-client"},
        {"trigger": "update", "sending_app": "ehr-client"},
    ]


def test_a_resource_the_client_names_is_put_under_that_id(fhir):
    eng, client, _ = fhir
    p = client.resource("Patient", id="cl-2", **patient_fields("MRN-CL-2"))
    p.save()
    assert p.id == "cl-2"
    assert len(patient_rows(eng, "MRN-CL-2")) == 1


def test_a_transaction_bundle_through_the_request_api_lands_whole(fhir):
    eng, client, _ = fhir
    observations = [
        {
            "resourceType": "Observation",
            "identifier": [{"system": "https://northclinic.example.org/obs", "value": f"OBS-CL-{n}"}],
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "urn:uuid:7f0b5a1e-cl3"},  # the Patient of this Bundle
            "effectiveDateTime": "2025-03-02T08:15:00+01:00",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        }
        for n, (code, value, unit) in enumerate([("2345-7", 101, "mg/dL"), ("2951-2", 139, "mmol/L")], 1)
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7f0b5a1e-cl3",
                "resource": {"resourceType": "Patient", **patient_fields("MRN-CL-3")},
                "request": {"method": "POST", "url": "Patient"},
            },
            *({"resource": o, "request": {"method": "POST", "url": "Observation"}} for o in observations),
        ],
    }
    answer = client.execute("", method="post", data=bundle)  # POST [base]
    assert answer["resourceType"] == "Bundle" and answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 3
    assert len(patient_rows(eng, "MRN-CL-3")) == 1
    rows = eng.query(
        "clinical",
        "SELECT filler_order_number, mrn, code, value_numeric FROM observation WHERE mrn = 'MRN-CL-3' "
        "ORDER BY filler_order_number",
    )
    assert [(r["filler_order_number"], r["code"], float(r["value_numeric"])) for r in rows] == [
        ("OBS-CL-1", "2345-7", 101.0),
        ("OBS-CL-2", "2951-2", 139.0),
    ]


def test_an_invalid_resource_surfaces_as_the_clients_operation_outcome_with_the_element_at_fault(fhir):
    eng, client, _ = fhir
    before = eng.query("messages", "SELECT count(*) AS n FROM messages")[0]["n"]
    p = client.resource("Patient", **dict(patient_fields("MRN-CL-4"), birthDate="1990-02-30"))
    with pytest.raises(OperationOutcome) as caught:
        p.save()
    (issue,) = caught.value.resource["issue"]
    assert (issue["severity"], issue["code"], issue["expression"]) == ("error", "value", ["Patient.birthDate"])
    assert eng.query("messages", "SELECT count(*) AS n FROM messages")[0]["n"] == before
    assert patient_rows(eng, "MRN-CL-4") == []


def test_a_transaction_the_mappings_cannot_apply_surfaces_as_an_operation_outcome(fhir):
    eng, client, _ = fhir
    orphan = {
        "resourceType": "Observation",
        "identifier": [{"system": "https://northclinic.example.org/obs", "value": "OBS-CL-5"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
    }  # no subject: it names no patient
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Patient", **patient_fields("MRN-CL-5")}},
            {"resource": orphan},
        ],
    }
    with pytest.raises(OperationOutcome) as caught:
        client.execute("", method="post", data=bundle)
    assert caught.value.resource["issue"][0]["code"] == "processing"
    assert patient_rows(eng, "MRN-CL-5") == []  # nothing of the Bundle applied


def test_a_wrong_token_and_an_unknown_type_surface_as_the_clients_own_errors(fhir):
    eng, client, base = fhir
    stranger = SyncFHIRClient(base, authorization="Bearer not-a-token", requests_config={"timeout": 60})
    with pytest.raises(AuthorizationError):
        stranger.resource("Patient", **patient_fields("MRN-CL-6")).save()
    with pytest.raises(ResourceNotFound):
        client.resource("Widget", colour="teal").save()
    assert patient_rows(eng, "MRN-CL-6") == []
