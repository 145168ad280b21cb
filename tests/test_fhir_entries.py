"""Each Bundle entry's ``request`` is done as it asks (engine/channels/fhir_entries.py), against a
real `engine run` over HTTP: conditional creates that find the resource leave it as it is,
PUT updates under the URL's id with If-Match, conditional PUT, and refusals located in the
entry. A transaction that cannot be done as asked stores nothing (not even a message); a
batch answers each entry on its own."""

from __future__ import annotations

import httpx
import pytest
from conftest import EngineProcess, config_file, fhir_config

TOKEN = "entries-fhir-test-token-3b7d10a2"
MRN = "https://northclinic.example.org/mrn"
OBS = "https://northclinic.example.org/obs"


class Api:
    def __init__(self, eng: EngineProcess):
        self.eng = eng
        self.base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}

    def post(self, body: dict, path: str = "") -> httpx.Response:
        return httpx.post(self.base + path, json=body, headers=self.headers, timeout=60)

    def put(self, path: str, body: dict) -> httpx.Response:
        return httpx.put(self.base + path, json=body, headers=self.headers, timeout=60)

    def patient(self, mrn: str) -> dict:
        (row,) = self.eng.query("clinical", "SELECT * FROM patient WHERE mrn = :m", m=mrn)
        return row

    def messages(self) -> int:
        return self.eng.query("messages", "SELECT count(*) AS n FROM messages")[0]["n"]

    def observations(self, mrn: str) -> int:
        return self.eng.query("clinical", "SELECT count(*) AS n FROM observation WHERE mrn = :m", m=mrn)[0]["n"]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fhir-entries")
    config = config_file(tmp, fhir_config(TOKEN, source="read_stores: {clinical: clinical}"))
    eng = EngineProcess(tmp, config=config).start()
    yield Api(eng)
    eng.stop()


def patient(mrn: str, family: str, rid: str | None = None) -> dict:
    out = {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}], "name": [{"family": family}]}
    return dict(out, id=rid) if rid else out


def observation(mrn: str, n: int) -> dict:
    return {
        "resourceType": "Observation",
        "identifier": [{"system": OBS, "value": f"{mrn}-{n}"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "subject": {"identifier": {"system": MRN, "value": mrn}},
        "effectiveDateTime": "2026-11-30T08:00:00Z",
        "valueQuantity": {"value": 5.1, "unit": "mmol/L"},
    }


def entry(resource: dict, method: str = "POST", url: str | None = None, **extra: str) -> dict:
    return {"resource": resource, "request": {"method": method, "url": url or resource["resourceType"], **extra}}


def bundle(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def stored(api: Api, mrn: str, family: str) -> str:
    """A patient stored under an id of its own; that id."""
    rid = f"p-{mrn.lower()}"
    assert api.put(f"/Patient/{rid}", patient(mrn, family, rid)).status_code == 201
    return rid


def statuses(r: httpx.Response) -> list[tuple[str, str]]:
    assert r.status_code == 200, r.text
    return [(e["response"]["status"], e["response"].get("location", "")) for e in r.json()["entry"]]


def test_a_conditional_create_that_finds_the_patient_leaves_it_as_it_is(api):
    rid = stored(api, "ENT-1", "Original")
    r = api.post(
        bundle(
            entry(patient("ENT-1", "Overwritten"), ifNoneExist=f"identifier={MRN}|ENT-1"),
            entry(observation("ENT-1", 1)),
        )
    )
    assert statuses(r) == [("200 OK", f"Patient/{rid}"), ("201 Created", "Observation")]
    assert api.patient("ENT-1")["family_name"] == "Original"
    assert api.observations("ENT-1") == 1


def test_references_to_a_found_conditional_create_name_the_patient_found(api):
    rid = stored(api, "ENT-10", "Ten")
    found = dict(entry(patient("ENT-10", "Other"), ifNoneExist=f"identifier={MRN}|ENT-10"), fullUrl="urn:uuid:a1")
    obs = dict(observation("ENT-10", 1), subject={"reference": "urn:uuid:a1"})  # no identifier: the reference alone
    r = api.post(bundle(found, entry(obs)))
    assert statuses(r) == [("200 OK", f"Patient/{rid}"), ("201 Created", "Observation")]
    assert api.observations("ENT-10") == 1 and api.patient("ENT-10")["family_name"] == "Ten"


def test_a_conditional_create_that_finds_nothing_creates(api):
    r = api.post(bundle(entry(patient("ENT-2", "New"), ifNoneExist=f"identifier={MRN}|ENT-2")))
    assert statuses(r) == [("201 Created", "Patient")]
    assert api.patient("ENT-2")["family_name"] == "New"


def test_a_transaction_of_only_found_conditional_creates_stores_no_message(api):
    rid = stored(api, "ENT-3", "Kept")
    before = api.messages()
    r = api.post(bundle(entry(patient("ENT-3", "Other"), ifNoneExist=f"identifier={MRN}|ENT-3")))
    assert statuses(r) == [("200 OK", f"Patient/{rid}")]
    assert api.messages() == before and api.patient("ENT-3")["family_name"] == "Kept"


def test_put_entries_update_under_the_url_id_and_say_whether_they_created(api):
    rid = stored(api, "ENT-4", "Before")
    r = api.post(
        bundle(
            entry(patient("ENT-4", "After", rid), "PUT", f"Patient/{rid}"),
            entry(patient("ENT-5", "Fresh", "p-ent-5"), "PUT", "Patient/p-ent-5"),
        )
    )
    assert statuses(r) == [("200 OK", f"Patient/{rid}"), ("201 Created", "Patient/p-ent-5")]
    assert api.patient("ENT-4")["family_name"] == "After" and api.patient("ENT-5")["fhir_id"] == "p-ent-5"


def test_a_conditional_put_entry_updates_the_resource_it_finds(api):
    rid = stored(api, "ENT-6", "Before")
    r = api.post(bundle(entry(patient("ENT-6", "After"), "PUT", f"Patient?identifier={MRN}|ENT-6")))
    assert statuses(r) == [("200 OK", f"Patient/{rid}")]
    assert api.patient("ENT-6")["family_name"] == "After"


# the entry at fault, what it asks, the status and issue code owed, the location
REFUSED = [
    ("delete", lambda: entry(patient("ENT-X1", "X"), "DELETE", "Patient/p-x"), 400, "not-supported",
     "Bundle.entry[1].request.method"),
    ("url-id-not-resource-id", lambda: entry(patient("ENT-X2", "X", "p-a"), "PUT", "Patient/p-b"), 400, "invalid",
     "Bundle.entry[1].resource.id"),
    ("url-other-type", lambda: entry(patient("ENT-X3", "X"), "POST", "Observation"), 400, "invalid",
     "Bundle.entry[1].request.url"),
    ("bare-identifier-condition", lambda: entry(patient("ENT-X4", "X"), ifNoneExist="identifier=ENT-X4"), 400,
     "invalid", "Bundle.entry[1].request"),
    ("stale-if-match", lambda: entry(patient("ENT-7", "X", "p-ent-7"), "PUT", "Patient/p-ent-7", ifMatch='W/"99"'),
     412, "conflict", None),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "status", "code", "where"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_transaction_entry_that_cannot_be_done_as_asked_stores_nothing(api, name, make, status, code, where):
    if name == "stale-if-match":
        stored(api, "ENT-7", "Seven")
    before = api.messages()
    r = api.post(bundle(entry(observation("ENT-8", 1)), make()))
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == code, issue
    if where is not None:
        assert issue["expression"] == [where], issue
    assert api.messages() == before and api.observations("ENT-8") == 0


def test_a_batch_answers_each_entry_as_its_request_asks(api):
    rid = stored(api, "ENT-9", "Nine")
    r = api.post(
        bundle(
            entry(observation("ENT-9", 1)),
            entry(patient("ENT-9", "Changed"), ifNoneExist=f"identifier={MRN}|ENT-9"),
            entry(patient("ENT-9", "Deleted"), "DELETE", f"Patient/{rid}"),
            entry(patient("ENT-9", "Renamed", rid), "PUT", f"Patient/{rid}"),
            kind="batch",
        )
    )
    assert r.status_code == 200, r.text
    answers = [e["response"] for e in r.json()["entry"]]
    assert [a["status"] for a in answers] == ["201", "200", "400", "200"]
    assert answers[1]["location"] == answers[3]["location"] == f"/fhir/Patient/{rid}"
    assert answers[2]["outcome"]["issue"][0]["expression"] == ["Bundle.entry[2].request.method"]
    assert api.patient("ENT-9")["family_name"] == "Renamed" and api.observations("ENT-9") == 1
