"""The README's tour step 7 on the sample channels: an ADT sent over MLLP to adt-to-fhir goes on as
one FHIR transaction Bundle into the engine's own FHIR API (fhir-inbound), exactly once, and the
patient comes back out over FHIR, read from the stores with the lab's results."""

from __future__ import annotations

import httpx
from conftest import FIXTURES, send_and_settle
from fhir.resources.R4B import get_fhir_model_class

from engine.formats.fhir_bundle import resource_id

TOKEN = "tour-0f3c9a7d55e14b2c8e6a1d4f7b9c2e0a"
SYSTEM = "https://northclinic.example.org/mrn"
VISIT = FIXTURES / "visit"


def valid(resource: dict) -> dict:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def test_a_patient_in_over_mllp_comes_back_out_over_fhir(fresh_engine):
    eng = fresh_engine(ENGINE_API_TOKEN=TOKEN)
    adt = (VISIT / "2_adt_a04_arrival.hl7").read_bytes()
    send_and_settle(eng, int(eng.env["ENGINE_ADT_FHIR_PORT"]), adt, "NC-ADT-0001")
    hop = eng.wait_for(  # HL7 in, FHIR out, into this engine's own FHIR API
        "messages",
        "select id, channel, status from messages where channel in ('adt-to-fhir', 'fhir-inbound') order by id",
        lambda r: len(r) == 2 and all(m["status"] == "SENT" for m in r),
        timeout=30,
    )
    assert [m["channel"] for m in hop] == ["adt-to-fhir", "fhir-inbound"]
    (row,) = eng.query("clinical", "select last_message_id from patient where mrn = 'MRN900101'")
    assert row["last_message_id"] == hop[1]["id"]  # the patient as the FHIR API took it
    send_and_settle(eng, int(eng.env["ENGINE_LAB_PORT"]), (VISIT / "4_oru_r01_result.hl7").read_bytes(), "NC-ORU-0001")
    base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as fhir:
        cap = valid(fhir.get("/metadata").json())
        served = {r["type"]: {i["code"] for i in r["interaction"]} for r in cap["rest"][0]["resource"]}
        assert {"read", "search-type", "create", "update"} <= served["Patient"]

        found = valid(fhir.get("/Patient", params={"identifier": f"{SYSTEM}|MRN900101"}).json())
        assert (found["type"], found["total"]) == ("searchset", 1)
        patient = valid(found["entry"][0]["resource"])
        pid = resource_id("Patient", "MRN900101", "NORTHCLINIC")  # the README's id
        assert patient["id"] == pid
        assert {"system": SYSTEM, "value": "MRN900101"}.items() <= patient["identifier"][0].items()
        assert valid(fhir.get(f"/Patient/{pid}").json())["name"][0]["family"] == patient["name"][0]["family"]

        results = valid(
            fhir.get(
                "/Observation", params={"patient": pid, "_sort": "-date", "_include": "Observation:patient"}
            ).json()
        )
        modes = [e["search"]["mode"] for e in results["entry"]]
        assert modes.count("include") == 1 and modes.count("match") >= 1
        for e in results["entry"]:
            valid(e["resource"])
        assert all(
            e["resource"]["subject"]["reference"] == f"Patient/{pid}"
            for e in results["entry"]
            if e["search"]["mode"] == "match"
        )

    audit = eng.query("clinical", "select accessed_by, action, patient_mrn from record_access where action = 'view'")
    assert {(a["accessed_by"], a["patient_mrn"]) for a in audit} == {("api", "MRN900101")}
