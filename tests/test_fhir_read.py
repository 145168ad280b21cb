"""The FHIR read API of `engine run` (source `fhir` with `read_stores`), over real HTTP: data sent
in over MLLP (ADT, ORU, SIU) and over FHIR, read back by id and searched, every resource valid
R4 (fhir.resources' R4B models), every read audited with the token's name."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from conftest import FIXTURES, ROOT, EngineProcess, send_and_settle
from fhir.resources.R4B import get_fhir_model_class

from engine.channels.fhir_source import token_hash
from engine.formats.fhir_bundle import resource_id

TOKEN = "ehr-north-read-token-3b9e61f0c2"
OTHER = "billing-office-token-77d0a4e51b"
NORTH = "https://northclinic.example.org/mrn"  # NORTHCLINIC's MRNs as FHIR names them (tables/issuer_system.yaml)
LOINC = "http://loinc.org"

# A mapping an operator could write: an ADT's DG1 as problem-list Conditions and its PR1 as
# Procedures, so the condition and procedure tables hold rows to serve.
CONDITION_PROCEDURE = """
description: ADT DG1 -> condition, PR1 -> procedure (a test's)
timezone: America/Los_Angeles
applies_when: {path: MSH-9.1, equals: ADT}
define:
  mrn: {identifier: PID-3, types: [MR], untyped: true, default_issuer: MSH-4.1}
  mrn_issuer: {identifier: PID-3, types: [MR], untyped: true, default_issuer: MSH-4.1, part: issuer}
records:
  - target: clinical.condition
    for_each: DG1
    key: [condition_id, condition_namespace]
    fields:
      condition_id: {concat: [PV1-19.1, DG1-3.1], separator: ":"}
      condition_namespace: MSH-4.1
      mrn: {use: mrn}
      mrn_issuer: {use: mrn_issuer}
      visit_number: PV1-19.1
      code: DG1-3.1
      code_text: DG1-3.2
      code_system: DG1-3.3
      category: {literal: problem-list-item}
      clinical_status: {literal: active}
      verification_status: {literal: confirmed}
      onset_at: {datetime: PV1-44}
  - target: clinical.procedure
    for_each: PR1
    key: [procedure_id, procedure_namespace]
    fields:
      procedure_id: {concat: [PV1-19.1, PR1-1], separator: ":"}
      procedure_namespace: MSH-4.1
      mrn: {use: mrn}
      mrn_issuer: {use: mrn_issuer}
      visit_number: PV1-19.1
      code: PR1-3.1
      code_text: PR1-3.2
      code_system: PR1-3.3
      status: {literal: completed}
      performed_at: {datetime: PR1-5}
      performer: PR1-11.1
      performer_name: {concat: [PR1-11.2, PR1-11.3], separator: ", "}
"""


def read_config(tmp_path: Path, record_store_url: str | None = None) -> Path:
    """The test's channels; the clinical and PM stores in SQLite files, or both at
    ``record_store_url`` (their tables do not clash: the PM store's are named apart)."""
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    for f in (ROOT / "mappings").iterdir():
        (mappings / f.name).symlink_to(f)
    (mappings / "test_condition_procedure.yaml").write_text(CONDITION_PROCEDURE)
    data = tmp_path / "data"
    clinical = record_store_url or f"sqlite:///{data}/clinical.db"
    pm = record_store_url or f"sqlite:///{data}/pm.db"
    path = tmp_path / "channels.yaml"
    path.write_text(
        f"""
stores:
  messages: {{url: "sqlite:///{data}/messages.db"}}
  clinical: {{url: "{clinical}"}}
  pm: {{url: "{pm}", kind: pm}}
mappings_dir: {mappings}
channels:
  - name: adt
    source: {{type: mllp, port: "${{ENGINE_ADT_PORT}}"}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
      - {{name: pm, type: store, store: pm, mapping: adt_pm}}
      - {{name: problems, type: store, store: clinical, mapping: test_condition_procedure}}
  - name: lab
    source: {{type: mllp, port: "${{ENGINE_LAB_PORT}}"}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: oru_clinical}}
  - name: scheduling
    source: {{type: mllp, port: "${{ENGINE_SCHEDULING_PORT}}"}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: siu_clinical}}
  - name: fhir
    source:
      type: fhir
      port: "${{ENGINE_FHIR_PORT}}"
      tokens: "ehr-north:{token_hash(TOKEN)},billing:{token_hash(OTHER)}"
      resources: [Patient, Observation]
      read_stores: {{clinical: clinical, pm: pm}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: [fhir_patient_clinical, fhir_observation_clinical]}}
"""
    )
    return path


def fhir_patient(mrn: str) -> dict:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": NORTH, "value": mrn}],
        "name": [{"family": "OKONKWO", "given": ["ADAEZE"]}],
        "birthDate": "1975-04-02",
        "gender": "female",
    }


def glucose(mrn: str, n: int, day: str, code: str = "2345-7") -> dict:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": "https://northclinic.example.org/obs", "value": f"{mrn}-{n}"}],
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"identifier": {"system": NORTH, "value": mrn}},
        "effectiveDateTime": f"{day}T08:00:00Z",
        "valueQuantity": {"value": 90 + n, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
    }


DAYS = [f"2024-06-0{d}" for d in range(1, 8)]  # MRN-F700's seven observations, one a day


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fhir_read")
    eng = EngineProcess(tmp, config=read_config(tmp)).start()
    client = load(eng)
    yield eng, client
    client.close()
    eng.stop()


def load(eng: EngineProcess) -> httpx.Client:
    """Send the test's data in (MLLP and FHIR); a client of the FHIR API with the EHR's token."""
    base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
    client = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
    adt, lab, sched = (int(eng.env[f"ENGINE_{n}_PORT"]) for n in ("ADT", "LAB", "SCHEDULING"))
    send_and_settle(eng, adt, (FIXTURES / "adt_a01.hl7").read_bytes(), "SGH-A01-000101")
    # MRN100099, registered on her own, then merged into MRN100001 (adt_a40.hl7)
    other = (FIXTURES / "adt_a01_crlf.hl7").read_bytes()
    for a, b in (
        (b"MRN100011", b"MRN100099"),
        (b"SGH-A01-000111", b"SGH-A01-000199"),
        (b"V240320-0011", b"V240320-0099"),
    ):
        other = other.replace(a, b)
    send_and_settle(eng, adt, other, "SGH-A01-000199")
    send_and_settle(eng, adt, (FIXTURES / "adt_a40.hl7").read_bytes(), "SGH-A40-000019")
    send_and_settle(eng, lab, (FIXTURES / "oru_r01.hl7").read_bytes(), "SLAB-R01-500001")
    send_and_settle(eng, sched, (FIXTURES / "visit" / "1_siu_s12_booking.hl7").read_bytes(), "NC-SIU-0001")
    send_and_settle(eng, adt, (FIXTURES / "visit" / "2_adt_a04_arrival.hl7").read_bytes(), "NC-ADT-0001")
    send_and_settle(eng, lab, (FIXTURES / "visit" / "4_oru_r01_result.hl7").read_bytes(), "NC-ORU-0001")
    procedures = (FIXTURES / "charges" / "adt_a08_v24_procedures.hl7").read_bytes()
    send_and_settle(eng, adt, procedures, "T-A08-PR-0001")
    r = client.post("/Patient", json=fhir_patient("MRN-F700"))
    assert r.status_code == 201, r.text
    for n, day in enumerate(DAYS, 1):
        r = client.post("/Observation", json=glucose("MRN-F700", n, day, "2345-7" if n <= 4 else "2823-3"))
        assert r.status_code == 201, r.text
    return client


def valid(resource: dict) -> dict:
    """``resource`` after checking it against R4 (fhir.resources' R4B models: R4B keeps R4's
    JSON for every type served here)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def search(client: httpx.Client, path: str, **params) -> dict:
    r = client.get(path, params=params) if params else client.get(path)  # a link: its own query
    assert r.status_code == 200, r.text
    bundle = valid(r.json())
    assert bundle["type"] == "searchset"
    for e in bundle.get("entry", []):
        valid(e["resource"])
        assert e["fullUrl"].endswith(f"/{e['resource']['resourceType']}/{e['resource']['id']}")
    return bundle


def matches(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def link(bundle: dict, relation: str) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == relation), None)


def pid(mrn: str, issuer: str) -> str:
    return resource_id("Patient", mrn, issuer)  # the id of a patient that came over HL7 (fhir_bundle.py)


def audit(eng: EngineProcess, store: str = "clinical") -> list[dict]:
    table = "record_access" if store == "clinical" else "pm_record_access"
    return eng.query(store, f"SELECT * FROM {table} ORDER BY id")


# -- reads ---------------------------------------------------------------------------------------------
def test_a_patient_registered_over_hl7_is_read_by_its_id_as_valid_r4(api):
    _, client = api
    r = client.get(f"/Patient/{pid('MRN100001', 'SUNRISE_GH')}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    p = valid(r.json())
    assert r.headers["etag"] == f'W/"{p["meta"]["versionId"]}"'
    mr = p["identifier"][0]
    assert (mr["system"], mr["value"], mr["type"]["coding"][0]["code"]) == ("SUNRISE_GH", "MRN100001", "MR")
    assert {k: v for k, v in p["identifier"][1].items() if k != "type"} == {"system": "ORHCN", "value": "HCN5550001"}
    assert p["name"][0] == {"use": "official", "family": "HARTWELL", "given": ["MARGARET", "ELLEN"], "prefix": ["MRS"]}
    assert (p["gender"], p["birthDate"], p["active"]) == ("female", "1958-07-22", True)
    assert p["address"][0]["city"] == "MAPLETON" and p["address"][0]["line"] == ["418 JUNIPER HOLLOW RD", "APT 2B"]
    assert {"system": "phone", "value": "5415550142", "use": "home"} in p["telecom"]
    assert p["maritalStatus"]["coding"][0]["code"] == "M"


def test_a_merged_away_patient_is_inactive_and_replaced_by_the_survivor(api):
    _, client = api
    gone = valid(client.get(f"/Patient/{pid('MRN100099', 'SUNRISE_GH')}").json())
    assert gone["active"] is False
    assert gone["link"] == [
        {"other": {"reference": f"Patient/{pid('MRN100001', 'SUNRISE_GH')}"}, "type": "replaced-by"}
    ]
    assert matches(search(client, "/AllergyIntolerance", patient=gone["id"])) == []  # her record moved
    survivor = matches(search(client, "/AllergyIntolerance", patient=pid("MRN100001", "SUNRISE_GH")))
    assert "2670" in {a["code"]["coding"][0]["code"] for a in survivor}


def test_an_unknown_id_or_type_gets_404_and_the_miss_is_audited(api):
    eng, client = api
    before = len(audit(eng))
    r = client.get("/Patient/no-such-patient")
    assert r.status_code == 404
    oo = valid(r.json())
    assert oo["issue"][0]["code"] == "not-found" and "no-such-patient" not in r.text
    rows = audit(eng)[before:]
    assert [(a["action"], a["accessed_by"], a["patient_mrn"]) for a in rows] == [("not-found", "ehr-north", None)]
    assert client.get("/Medication/x").status_code == 404


def test_without_a_valid_token_nothing_is_read(api):
    _, client = api
    base = str(client.base_url).rstrip("/")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        for u in (f"{base}/Patient/{pid('MRN100001', 'SUNRISE_GH')}", f"{base}/Patient?identifier=MRN100001"):
            r = httpx.get(u, headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["issue"][0]["code"] == "security"
            assert "HARTWELL" not in r.text


def test_every_served_type_renders_as_valid_r4_with_resolvable_references(api):
    _, client = api
    hartwell = pid("MRN100001", "SUNRISE_GH")
    seen = {}
    for rtype in ("Encounter", "AllergyIntolerance", "Condition", "Coverage"):
        found = matches(search(client, f"/{rtype}", patient=hartwell))
        assert found, rtype
        seen[rtype] = found
        for res in found:
            ref = res.get("subject") or res.get("patient") or res.get("beneficiary")
            assert ref == {"reference": f"Patient/{hartwell}"}
    (enc,) = [e for e in seen["Encounter"] if e["identifier"][0]["value"] == "V240314-0042"]
    assert (enc["status"], enc["class"]["code"], enc["period"]["start"]) == (
        "in-progress",
        "IMP",
        "2024-03-14T15:05:00+00:00",
    )
    allergies = {a["code"]["coding"][0]["code"]: a for a in seen["AllergyIntolerance"]}
    pen = allergies["7980"]
    assert pen["category"] == ["medication"] and pen["reaction"][0]["severity"] == "severe"
    assert [m["text"] for m in pen["reaction"][0]["manifestation"]] == ["Hives", "Wheezing"]
    conditions = seen["Condition"]
    diagnoses = [c for c in conditions if c["category"][0]["coding"][0]["code"] == "encounter-diagnosis"]
    problems = [c for c in conditions if c["category"][0]["coding"][0]["code"] == "problem-list-item"]
    assert len(diagnoses) == 3 and len(problems) == 3  # DG1 as diagnosis rows, and as condition rows (one merged in)
    (angina,) = [c for c in diagnoses if c["code"]["coding"][0]["code"] == "I20.9"]
    assert angina["code"]["coding"][0]["system"] == "http://hl7.org/fhir/sid/icd-10-cm"
    assert client.get(f"/{angina['encounter']['reference']}").json()["id"] == enc["id"]
    (cov,) = seen["Coverage"]
    assert cov["subscriberId"] == "POL-88231007" and cov["payor"][0]["display"] == "CASCADE HEALTH MUTUAL"

    (proc, _removal) = matches(search(client, "/Procedure", patient=pid("MRN870004", "SUNRISE_GH"), _sort="date"))
    assert (proc["status"], proc["code"]["coding"][0]["code"], proc["performedDateTime"][:10]) == (
        "completed",
        "27236",
        "2024-05-04",
    )
    assert proc["performer"][0]["actor"]["display"] == "VOSS, HELENE"

    teagarden = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN900101"))[0]["id"]
    (appt,) = matches(search(client, "/Appointment", patient=teagarden))
    assert (appt["status"], appt["start"]) == ("booked", "2024-06-10T16:30:00+00:00")
    assert appt["participant"][0]["actor"] == {"reference": f"Patient/{teagarden}"}
    (report,) = matches(search(client, "/DiagnosticReport", subject=f"Patient/{teagarden}"))
    assert report["status"] == "final" and report["encounter"]["reference"].startswith("Encounter/")
    (result,) = report["result"]
    obs = valid(client.get(f"/{result['reference']}").json())  # the report's result resolves
    assert obs["valueQuantity"] == {"value": 7.2, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}
    assert obs["interpretation"][0]["coding"][0]["code"] == "H"
    assert obs["referenceRange"][0]["low"]["value"] == 4.0 and obs["referenceRange"][0]["high"]["value"] == 5.6


def test_observation_values_follow_their_hl7_type(api):
    _, client = api
    brannigan = pid("MRN200001", "SUNRISE_GH")
    found = {o["code"]["coding"][0]["code"]: o for o in matches(search(client, "/Observation", patient=brannigan))}
    assert found["2345-7"]["valueQuantity"]["value"] == 182 and found["2345-7"]["status"] == "final"
    assert found["33882-2"]["valueString"] == "Slightly hemolyzed"
    assert found["882-1"]["valueCodeableConcept"] == {"coding": [{"code": "OPOS", "display": "O Rh(D) positive"}],
                                                       "text": "O Rh(D) positive"}  # fmt: skip
    assert found["2823-3"]["note"][0]["text"].startswith("Specimen slightly hemolyzed.")


# -- searches -------------------------------------------------------------------------------------------
def test_a_patient_is_found_by_issuer_and_identifier_and_its_system_round_trips(api):
    eng, client = api
    (p,) = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN900101"))
    assert p["identifier"][0]["system"] == NORTH and p["identifier"][0]["value"] == "MRN900101"
    assert matches(search(client, "/Patient", identifier="SUNRISE_GH|MRN100001"))[0]["id"] == pid(
        "MRN100001", "SUNRISE_GH"
    )
    assert len(matches(search(client, "/Patient", identifier="MRN100001"))) == 1  # any issuer
    assert matches(search(client, "/Patient", identifier="OTHERHOSP|MRN100001")) == []  # another issuer's
    (f,) = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN-F700"))  # came in over FHIR
    assert f["name"][0]["family"] == "OKONKWO"
    before = len(audit(eng))
    assert search(client, "/Patient", identifier=f"{NORTH}|MRN-NOBODY")["total"] == 0
    assert [(a["action"], a["patient_mrn"], a["patient_mrn_issuer"]) for a in audit(eng)[before:]] == [
        ("not-found", "MRN-NOBODY", "NORTHCLINIC")
    ]


def test_other_resources_are_found_by_their_own_identifiers(api):
    _, client = api
    (obs,) = matches(search(client, "/Observation", identifier="https://northclinic.example.org/obs|MRN-F700-3"))
    assert obs["effectiveDateTime"][:10] == DAYS[2]
    assert obs["identifier"] == [{"system": "https://northclinic.example.org/obs", "value": "MRN-F700-3"}]
    (appt,) = matches(search(client, "/Appointment", identifier="PMSCHED|APPT-900101"))
    assert appt["identifier"] == [{"system": "PMSCHED", "value": "APPT-900101"}]
    (proc,) = matches(search(client, "/Procedure", identifier="SUNRISE_GH|V240504-0004:1"))
    assert proc["code"]["coding"][0]["code"] == "27236"
    (problem,) = matches(search(client, "/Condition", identifier="SUNRISE_GH|V240314-0042:I20.9"))
    assert problem["category"][0]["coding"][0]["code"] == "problem-list-item"
    assert matches(search(client, "/Condition", identifier="OTHERHOSP|V240314-0042:I20.9")) == []


def test_observations_are_searched_by_patient_code_and_date_range(api):
    _, client = api
    f700 = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN-F700"))[0]["id"]

    def days(**params) -> list[str]:
        found = matches(search(client, "/Observation", patient=f"Patient/{f700}", _sort="date", **params))
        return [o["effectiveDateTime"][:10] for o in found]

    assert days() == DAYS
    assert days(code=f"{LOINC}|2345-7") == DAYS[:4]
    assert days(code="2823-3") == DAYS[4:]
    assert days(code="http://snomed.info/sct|2345-7") == []
    assert days(date="ge2024-06-03") == DAYS[2:]
    assert days(date=["ge2024-06-03", "lt2024-06-05"]) == DAYS[2:4]
    assert days(date="2024-06-04") == ["2024-06-04"]
    assert days(date="gt2024-06-04") == DAYS[4:]
    assert days(date="le2024-06-02T08:00:00Z") == DAYS[:2]
    assert days(date="lt2024-06-02T08:00:00Z") == DAYS[:1]
    assert days(date="2024-06") == DAYS and days(date="2023") == []
    assert days(code=f"{LOINC}|2345-7", date="ge2024-06-02") == DAYS[1:4]
    brannigan = pid("MRN200001", "SUNRISE_GH")
    hl7 = matches(search(client, "/Observation", subject=brannigan, code=f"{LOINC}|2345-7"))
    assert [o["valueQuantity"]["value"] for o in hl7] == [182]  # LN as the feed sent it is LOINC


def test_sort_by_date_both_ways_with_id_as_tiebreak(api):
    _, client = api
    f700 = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN-F700"))[0]["id"]
    up = matches(search(client, "/Observation", patient=f700, _sort="date"))
    down = matches(search(client, "/Observation", patient=f700, _sort="-date"))
    assert [o["id"] for o in down] == [o["id"] for o in reversed(up)]
    brannigan = pid("MRN200001", "SUNRISE_GH")
    cbc = matches(search(client, "/Observation", patient=brannigan, _sort="date"))
    stamps = [o.get("effectiveDateTime") for o in cbc]
    assert stamps == sorted(stamps)  # the CBC's results share one time: ordered by id among themselves
    same = [o["id"] for o in cbc if o["effectiveDateTime"] == stamps[-1]]
    assert same == sorted(same)


def test_paging_through_three_pages_gives_every_match_once(api):
    _, client = api
    brannigan = pid("MRN200001", "SUNRISE_GH")
    page = search(client, "/Observation", patient=brannigan, _count=3)
    assert page["total"] == 8 and link(page, "previous") is None
    pages = [page]
    while (url := link(pages[-1], "next")) is not None:
        pages.append(search(client, url))
    assert [len(matches(p)) for p in pages] == [3, 3, 2]
    ids = [o["id"] for p in pages for o in matches(p)]
    assert len(set(ids)) == 8 and ids == sorted(ids)  # _id order, no duplicate, no gap
    assert {p["total"] for p in pages} == {8}
    back = search(client, link(pages[2], "previous"))
    assert [o["id"] for o in matches(back)] == [o["id"] for o in matches(pages[1])]
    back = search(client, link(back, "previous"))
    assert [o["id"] for o in matches(back)] == [o["id"] for o in matches(pages[0])]
    assert link(back, "previous") is None
    assert search(client, "/Observation", patient=brannigan, _count=0)["total"] == 8


def test_a_resource_written_between_pages_shifts_no_page(api):
    _, client = api
    assert matches(search(client, "/Patient", identifier=f"{NORTH}|MRN-F702")) == []  # nobody yet
    assert client.post("/Patient", json=fhir_patient("MRN-F702")).status_code == 201
    for n, day in enumerate(DAYS, 1):
        assert client.post("/Observation", json=glucose("MRN-F702", n, day)).status_code == 201
    who = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN-F702"))[0]["id"]
    first = search(client, "/Observation", patient=who, _sort="date", _count=3)
    # an earlier observation arrives: an offset would now repeat the first page's last one
    assert client.post("/Observation", json=glucose("MRN-F702", 0, "2024-05-31")).status_code == 201
    second = search(client, link(first, "next"))
    third = search(client, link(second, "next"))
    seen = [o["effectiveDateTime"][:10] for p in (first, second, third) for o in matches(p)]
    assert seen == DAYS and link(third, "next") is None


def test_include_adds_the_patients_of_the_matches(api):
    _, client = api
    teagarden = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN900101"))[0]["id"]
    bundle = search(client, "/Observation", patient=teagarden, _include="Observation:patient")
    modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]]
    assert modes == [("Observation", "match"), ("Patient", "include")]
    assert bundle["entry"][1]["resource"]["id"] == teagarden and bundle["total"] == 1
    assert "_include=Observation%3Apatient" in link(bundle, "self")


def test_unknown_parameters_are_ignored_unless_the_client_asks_for_strict_handling(api):
    _, client = api
    teagarden = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN900101"))[0]["id"]
    lenient = search(client, "/Observation", patient=teagarden, colour="blue")
    assert lenient["total"] == 1 and "colour" not in link(lenient, "self")
    r = client.get(
        "/Observation", params={"patient": teagarden, "colour": "blue"}, headers={"Prefer": "handling=strict"}
    )
    assert r.status_code == 400
    issue = valid(r.json())["issue"][0]
    assert "colour" in issue["diagnostics"] and issue["expression"] == ["Observation?colour"]
    r = client.get("/Observation", params={"patient": teagarden, "code:text": "glucose"})
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "not-supported"  # a modifier is never ignored
    for params in ({"_count": "many"}, {"patient": teagarden, "date": "sometime"}, {"_sort": "colour"}):
        r = client.get("/Observation", params=params)
        assert r.status_code == 400 and valid(r.json())["issue"][0]["code"] == "invalid", params


def test_a_search_no_index_can_narrow_is_refused(api):
    _, client = api
    r = client.get("/Observation", params={"code": f"{LOINC}|2345-7"})
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "too-costly"
    everyone = search(client, "/Patient", _count=2)  # without criteria: all, by the id index
    assert everyone["total"] >= 5 and len(matches(everyone)) == 2 and link(everyone, "next")


def test_every_read_is_audited_with_the_token_name_and_purpose(api):
    eng, client = api
    brannigan = pid("MRN200001", "SUNRISE_GH")
    before, before_pm = len(audit(eng)), len(audit(eng, "pm"))
    search(client, "/Observation", patient=brannigan, _count=2)
    rows = audit(eng)[before:]
    assert [(a["accessed_by"], a["purpose"], a["action"], a["patient_mrn"], a["patient_mrn_issuer"]) for a in rows] == [
        ("ehr-north", "FHIR API read", "view", "MRN200001", "SUNRISE_GH")
    ]
    billing = httpx.Client(base_url=client.base_url, headers={"Authorization": f"Bearer {OTHER}"}, timeout=30)
    r = billing.get(
        "/Coverage", params={"patient": pid("MRN100001", "SUNRISE_GH")}, headers={"X-Purpose-Of-Use": "claim"}
    )
    assert r.status_code == 200 and r.json()["total"] == 1
    (row,) = audit(eng, "pm")[before_pm:]
    assert (row["accessed_by"], row["purpose"], row["patient_mrn"]) == ("billing", "claim", "MRN100001")
    assert len(audit(eng)) == before + 1  # the Coverage read wrote to the PM store's audit only
    assert "HARTWELL" not in (eng.workdir / "engine.log").read_text()


def test_the_capability_statement_lists_reads_searches_and_their_parameters(api):
    _, client = api
    cap = valid(client.get("/metadata").json())
    res = {r["type"]: r for r in cap["rest"][0]["resource"]}
    assert [i["code"] for i in res["Patient"]["interaction"]] == ["read", "search-type", "create", "update"]
    assert [i["code"] for i in res["Coverage"]["interaction"]] == ["read", "search-type"]
    params = {p["name"]: p["type"] for p in res["Observation"]["searchParam"]}
    assert params == {
        "_id": "token",
        "identifier": "token",
        "patient": "reference",
        "subject": "reference",
        "code": "token",
        "date": "date",
    }
    assert res["Observation"]["searchInclude"] == ["Observation:patient", "Observation:subject"]


def test_a_smart_on_fhir_client_reads_a_patient_and_pages_through_a_search(api):
    from fhirclient import server as fhir_server
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    _, client = api
    srv = fhir_server.FHIRServer(None, base_uri=str(client.base_url))
    srv.session.headers["Authorization"] = f"Bearer {TOKEN}"
    patient = Patient.read(pid("MRN100001", "SUNRISE_GH"), srv)
    assert patient.name[0].family == "HARTWELL" and patient.birthDate.isostring == "1958-07-22"
    found = list(
        Observation.where(struct={"patient": pid("MRN200001", "SUNRISE_GH"), "_count": "3"}).perform_resources_iter(srv)
    )
    assert len(found) == 8 and len({o.id for o in found}) == 8  # three pages, followed by the client
    assert {o.valueQuantity.value for o in found if o.valueQuantity} >= {182, 3.1}


@pytest.mark.parametrize("sort", ["_id", "-_id", "date", "-date"])
def test_conditions_of_both_tables_page_forward_and_back_as_one_list(api, sort):
    _, client = api
    hartwell = pid("MRN100001", "SUNRISE_GH")
    everything = [c["id"] for c in matches(search(client, "/Condition", patient=hartwell, _sort=sort))]
    assert len(everything) == len(set(everything)) == 6
    pages = [search(client, "/Condition", patient=hartwell, _sort=sort, _count=2)]
    while (url := link(pages[-1], "next")) is not None:
        pages.append(search(client, url))
    assert [c["id"] for p in pages for c in matches(p)] == everything
    back = [pages[-1]]
    while (url := link(back[-1], "previous")) is not None:
        back.append(search(client, url))
    assert [[c["id"] for c in matches(p)] for p in reversed(back)] == [[c["id"] for c in matches(p)] for p in pages]


def test_searches_page_alike_with_the_stores_on_postgresql(tmp_path, pg_url):
    from sqlalchemy import create_engine, text

    eng = EngineProcess(tmp_path, config=read_config(tmp_path, pg_url))
    out = eng.cli("db", "upgrade", "--config", str(eng.config))
    assert out.returncode == 0, out.stderr
    eng.start()
    try:
        client = load(eng)
        brannigan = pid("MRN200001", "SUNRISE_GH")
        for sort in ("_id", "-_id", "date", "-date"):
            for rtype, who, n in (("Observation", brannigan, 8), ("Condition", pid("MRN100001", "SUNRISE_GH"), 6)):
                whole = [r["id"] for r in matches(search(client, f"/{rtype}", patient=who, _sort=sort))]
                pages = [search(client, f"/{rtype}", patient=who, _sort=sort, _count=3)]
                while (url := link(pages[-1], "next")) is not None:
                    pages.append(search(client, url))
                assert [r["id"] for p in pages for r in matches(p)] == whole and len(set(whole)) == n, (rtype, sort)
        f700 = matches(search(client, "/Patient", identifier=f"{NORTH}|MRN-F700"))[0]["id"]
        found = matches(
            search(client, "/Observation", patient=f700, code=f"{LOINC}|2345-7", date="ge2024-06-02", _sort="-date")
        )
        assert [o["effectiveDateTime"][:10] for o in found] == DAYS[1:4][::-1]
        db = create_engine(pg_url)
        with db.connect() as conn:
            who = {r[0] for r in conn.execute(text("SELECT DISTINCT accessed_by FROM record_access"))}
        db.dispose()
        assert who == {"ehr-north"}
    finally:
        eng.stop()
