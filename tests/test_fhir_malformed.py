"""Malformed FHIR input against a running `engine run`, over real HTTP, on a `fhir` channel like
the sample's (Patient and Observation into the clinical store by the sample mappings): every file
of tests/fixtures/fhir/malformed/ (its README names each one and the answer it is owed), a 10 MB
transaction Bundle and the body limit. Each refusal is an OperationOutcome with the issue code
and the location (FHIRPath expression) of every element at fault; nothing of a refused request
reaches the clinical store; the engine keeps serving after each; no patient data reaches its log."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import ROOT, EngineProcess, config_file, fhir_config

MALFORMED = ROOT / "tests" / "fixtures" / "fhir" / "malformed"
TOKEN = "malformed-fhir-test-token-7c02e9b1"
SYSTEM = "https://northclinic.example.org/mrn"
CANARY = {
    "resourceType": "Patient",
    "id": "canary",
    "identifier": [{"system": SYSTEM, "value": "MRN-MAL-CANARY"}],
    "name": [{"family": "Canary", "given": ["Still"]}],
}
FHIR_JSON = {"Content-Type": "application/fhir+json"}


class Api:
    """The FHIR endpoint of one engine: a fresh connection per request (an answer that closes
    its connection must not fail the next request), and the rows behind it."""

    def __init__(self, eng: EngineProcess):
        self.eng = eng
        self.base = f"http://127.0.0.1:{eng.env['ENGINE_FHIR_PORT']}/fhir"
        self.headers = {"Authorization": f"Bearer {TOKEN}", **FHIR_JSON}

    def post(self, path: str, body: bytes) -> httpx.Response:
        return httpx.post(self.base + path, content=body, headers=self.headers, timeout=120)

    def counts(self) -> dict[str, int]:
        """Rows now: messages in the message store, patients and observations in the clinical store."""
        q = self.eng.query
        return {
            "messages": q("messages", "SELECT count(*) AS n FROM messages")[0]["n"],
            "patient": q("clinical", "SELECT count(*) AS n FROM patient")[0]["n"],
            "observation": q("clinical", "SELECT count(*) AS n FROM observation")[0]["n"],
        }

    def patients(self, mrn: str) -> list[dict]:
        return self.eng.query("clinical", "SELECT * FROM patient WHERE mrn = :m", m=mrn)

    def observations(self, prefix: str) -> list[dict]:
        sql = "SELECT * FROM observation WHERE filler_order_number LIKE :p ORDER BY filler_order_number"
        return self.eng.query("clinical", sql, p=f"{prefix}%")

    def assert_still_serving(self) -> None:
        """A valid update goes through, and no patient data is in the engine's log."""
        r = httpx.put(self.base + "/Patient/canary", json=CANARY, headers=self.headers, timeout=60)
        assert r.status_code in (200, 201), r.text
        log = (self.eng.workdir / "engine.log").read_text(errors="replace")
        assert "MRN-MAL" not in log and "Marrow" not in log


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fhir-malformed")
    eng = EngineProcess(tmp, config=config_file(tmp, fhir_config(TOKEN))).start()
    yield Api(eng)
    eng.stop()


def assert_outcome(r: httpx.Response, status: int, code: str, expressions: list[str] | None) -> dict:
    """``r`` is an OperationOutcome answer with ``status``, its first issue ``code``, and exactly
    ``expressions`` located over all its issues (``None``: not checked; ``[]``: none)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+json"), r.headers["content-type"]
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    assert oo["issue"][0]["code"] == code and oo["issue"][0]["severity"] == "error", oo
    if expressions is not None:
        assert sorted(e for i in oo["issue"] for e in i.get("expression", [])) == sorted(expressions), oo
    assert "MRN-MAL" not in r.text and "Marrow" not in r.text  # what was sent is never echoed
    return oo


# file, path, status, issue code, every expression owed (the location), a fragment of the diagnostics
REFUSED = [
    ("truncated.json", "/Patient", 400, "structure", [], "at line 5 column 17"),
    ("trailing_comma.json", "/Patient", 400, "structure", [], "at line 20 column 1"),
    ("latin1.json", "/Patient", 400, "structure", [], "not UTF-8"),
    ("not_an_object.json", "/Patient", 400, "structure", [], "JSON object"),
    ("observation.json", "/Patient", 400, "invalid", [], "Observation"),
    ("unknown_type.json", "/Patient", 400, "invalid", [], "Widget"),
    ("unknown_type.json", "/Widget", 404, "not-supported", [], "Widget"),
    ("birthdate_feb30.json", "/Patient", 400, "value", ["Patient.birthDate"], ""),
    ("birthdate_month13.json", "/Patient", 400, "value", ["Patient.birthDate"], ""),
    ("datetime_no_timezone.json", "/Observation", 400, "value", ["Observation.effectiveDateTime"], ""),
    ("unknown_element_top.json", "/Patient", 400, "structure", ["Patient.favouriteColour"], ""),
    ("unknown_element_nested.json", "/Patient", 400, "structure",
     ["Patient.name[0].nickname", "Patient.address[0].geo"], ""),
    ("contained_bad.json", "/Patient", 400, "value", ["Patient.contained[0].active"], ""),
    ("tx_entry3_invalid.json", "", 400, "value", ["Bundle.entry[2].resource.effectiveDateTime"], ""),
    ("tx_contained_bad.json", "", 400, "value", ["Bundle.entry[1].resource.contained[0].active"], ""),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "path", "status", "code", "expressions", "diagnostics"),
    REFUSED,
    ids=[f"{c[0]}->POST /fhir{c[1]}" for c in REFUSED],
)
def test_a_malformed_request_is_refused_with_its_location_and_nothing_is_stored(
    api, name, path, status, code, expressions, diagnostics
):
    before = api.counts()
    r = api.post(path, (MALFORMED / name).read_bytes())
    oo = assert_outcome(r, status, code, expressions)
    assert diagnostics in oo["issue"][0]["diagnostics"]
    assert api.counts() == before  # refused before the commit: not even a message
    api.assert_still_serving()


def test_every_fixture_has_a_test_and_a_line_in_the_readme():
    named = {c[0] for c in REFUSED} | {c[0] for c in ACCEPTED} | set(FORBIDDEN) | {"tx_entry3_unmappable.json"}
    files = {p.name for p in MALFORMED.glob("*.json")}
    assert files == named
    readme = (MALFORMED / "README.md").read_text()
    assert all(f"`{f}`" in readme for f in files)


# file, path, status, the clinical rows it must leave (table, filler_order_number or mrn)
ACCEPTED = [
    ("bom.json", "/Patient", 201, ("patient", "MRN-MAL-BOM")),  # RFC 8259 §8.1: a parser MAY ignore a BOM
    ("contained_ok.json", "/Patient", 201, ("patient", "MRN-MAL-CONT")),
    ("datetime_date_only.json", "/Observation", 201, ("observation", "OBS-MRN-MAL-DATE-1")),  # no time, no zone
]


@pytest.mark.parametrize(("name", "path", "status", "row"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_valid_input_that_looks_odd_is_accepted_and_stored(api, name, path, status, row):
    r = api.post(path, (MALFORMED / name).read_bytes())
    assert r.status_code == status, r.text
    table, key = row
    rows = api.patients(key) if table == "patient" else api.observations(key)
    assert len(rows) == 1
    if name == "datetime_date_only.json":
        assert str(rows[0]["effective_date"]) == "2024-06-10" and rows[0]["effective_at"] is None
    api.assert_still_serving()


def test_a_contained_resource_is_kept_with_its_patient_in_the_message_store(api):
    data = json.loads((MALFORMED / "contained_ok.json").read_bytes())
    r = api.post("/Patient", json.dumps(data).encode())
    assert r.status_code == 201, r.text
    (m,) = api.eng.query("messages", "SELECT id, content FROM messages ORDER BY id DESC LIMIT 1")
    content = json.loads(m["content"])
    assert content["contained"] == data["contained"] and content["managingOrganization"] == {"reference": "#org1"}


def test_a_transaction_whose_third_entry_cannot_be_mapped_applies_none_of_its_entries(api):
    before = api.counts()
    r = api.post("", (MALFORMED / "tx_entry3_unmappable.json").read_bytes())
    oo = assert_outcome(r, 422, "processing", None)
    assert "subject names no patient" in oo["issue"][0]["diagnostics"]
    assert api.patients("MRN-MAL-TX2") == [] and api.observations("OBS-MRN-MAL-TX2") == []
    after = api.counts()
    assert (after["patient"], after["observation"]) == (before["patient"], before["observation"])
    (m,) = api.eng.query("messages", "SELECT status, trigger FROM messages ORDER BY id DESC LIMIT 1")
    assert m == {"status": "ERROR", "trigger": "transaction"}  # committed as one message, then failed whole
    api.assert_still_serving()


# engine defects: file or body, path, what R4 asks (status, code, expressions), what the engine does
FORBIDDEN = {  # what R4 forbids and a lenient JSON reader would take
    "utf16.json": ("/Patient", 400, "structure", []),  # R4 and RFC 8259 §8.1 ask UTF-8
    "null_value.json": ("/Patient", 400, "structure", ["Patient.birthDate"]),  # R4 JSON has no null values
}


DEEP = b"[" * 100_000 + b"]" * 100_000  # nested arrays, deeper than Python's recursion limit


@pytest.mark.parametrize("name", list(FORBIDDEN))
def test_a_request_r4_forbids_is_refused(api, name):
    path, status, code, expressions = FORBIDDEN[name]
    before = api.counts()
    r = api.post(path, (MALFORMED / name).read_bytes())
    assert_outcome(r, status, code, expressions)
    assert api.counts() == before


def test_a_deeply_nested_body_gets_400_not_a_crash(api):
    assert_outcome(api.post("/Patient", DEEP), 400, "structure", [])


def test_the_422_of_an_unmappable_transaction_locates_the_entry(api):
    r = api.post("", (MALFORMED / "tx_entry3_unmappable.json").read_bytes())
    oo = assert_outcome(r, 422, "processing", None)
    assert any(e.startswith("Bundle.entry[2]") for i in oo["issue"] for e in i.get("expression", [])), oo


def test_the_engine_keeps_serving_after_the_requests_it_mishandles(api):
    for path, body in [("/Patient", DEEP), *((FORBIDDEN[n][0], (MALFORMED / n).read_bytes()) for n in FORBIDDEN)]:
        r = api.post(path, body)  # an answer, whatever it is: not a dropped connection
        assert r.status_code in (201, 400, 500), r.status_code
        api.assert_still_serving()


# -- size ------------------------------------------------------------------------------------------

MIB = 1024 * 1024
LIMIT = 16 * MIB  # the fhir source's default max_body_bytes


def big_bundle(mrn: str, at_least: int) -> tuple[bytes, int]:
    """A transaction Bundle of one Patient and as many Observations as it takes to reach
    ``at_least`` bytes, each with a 4 kB note as lab comments carry; (body, observations)."""
    template = json.loads((MALFORMED / "tx_entry3_invalid.json").read_bytes())
    patient = json.loads(json.dumps(template["entry"][0]["resource"]).replace("MRN-MAL-TX1", mrn))
    observation = template["entry"][1]["resource"]
    note = ("Specimen received at 09:42, processed within the stability window; " * 60)[:4000]
    one = len(json.dumps({"resource": observation}).encode()) + 4000 + 60
    n = at_least // one + 1
    entries = [{"resource": patient, "request": {"method": "POST", "url": "Patient"}}]
    for k in range(n):
        obs = json.loads(json.dumps(observation).replace("MRN-MAL-TX1", mrn))
        obs["identifier"][0]["value"] = f"OBS-{mrn}-{k:05d}"
        obs["note"] = [{"text": note}]
        entries.append({"resource": obs, "request": {"method": "POST", "url": "Observation"}})
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode()
    assert at_least <= len(body) < LIMIT
    return body, n


def test_a_10_mb_transaction_is_accepted_and_stored_whole(api):
    body, n = big_bundle("MRN-MAL-BIG", 10 * MIB)
    r = api.post("", body)
    assert r.status_code == 200, r.text[:2000]
    answer = r.json()
    assert answer["type"] == "transaction-response" and len(answer["entry"]) == n + 1
    assert len(api.patients("MRN-MAL-BIG")) == 1
    rows = api.observations("OBS-MRN-MAL-BIG-")
    assert len(rows) == n and rows[-1]["notes"].startswith("Specimen received")
    api.assert_still_serving()


def test_a_body_of_exactly_the_limit_is_taken_and_one_byte_more_gets_413(api):
    small = (MALFORMED / "tx_entry3_invalid.json").read_text().replace('T09:30:00"', 'T09:30:00Z"')
    small = small.replace("MRN-MAL-TX1", "MRN-MAL-EDGE")
    at_limit = small.encode() + b" " * (LIMIT - len(small.encode()))  # JSON allows trailing whitespace
    assert len(at_limit) == LIMIT
    r = api.post("", at_limit)
    assert r.status_code == 200, r.text[:2000]
    assert len(api.observations("OBS-MRN-MAL-EDGE-")) == 4

    before = api.counts()
    body, _ = big_bundle("MRN-MAL-HUGE", 10 * MIB)
    over = body + b" " * (LIMIT + 1 - len(body))
    r = api.post("", over)
    oo = assert_outcome(r, 413, "too-costly", [])
    assert str(LIMIT) in oo["issue"][0]["diagnostics"]
    assert api.counts() == before and api.patients("MRN-MAL-HUGE") == []
    api.assert_still_serving()
