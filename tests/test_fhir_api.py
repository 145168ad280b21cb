"""The FHIR R4 endpoint of `engine run` (source `fhir`), over real HTTP: auth, validation with
located OperationOutcomes, commit before apply, transaction all-or-nothing, 503 under a store
that cannot commit. Resources go to a `file` destination here (what they map into is tested
with the FHIR mappings)."""

from __future__ import annotations

import json
import shutil
import ssl
import time
from pathlib import Path

import httpx
import pytest
from conftest import EngineProcess, config_file
from pki import make_pki
from services import free_port

from engine.channels.fhir_source import token_hash

TOKEN = "s3cr3t-token-for-tests-only-8f1c2d"
PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-F1"}],
    "name": [{"family": "Quill", "given": ["Ada"]}],
    "birthDate": "1980-02-03",
    "gender": "female",
}


def fhir_config(tmp_path: Path, port: int, out: Path) -> Path:
    return config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "sqlite:///{tmp_path}/data/messages.db"}}
  clinical: {{url: "sqlite:///{tmp_path}/data/clinical.db"}}
mappings_dir: MAPPINGS
channels:
  - name: fhir-in
    source:
      type: fhir
      port: {port}
      tokens: "ehr-test:{token_hash(TOKEN)}"
      resources: [Patient, Observation, Bundle]
    destinations:
      - name: archive
        type: file
        folder: {out}
        file_name: "{{id}}.json"
""",
    )


@pytest.fixture
def api(tmp_path):
    port = free_port()
    out = tmp_path / "out"
    eng = EngineProcess(tmp_path, config=fhir_config(tmp_path, port, out)).start()
    base = f"http://127.0.0.1:{port}/fhir"
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield eng, client, out
    eng.stop()


def test_the_start_up_line_names_the_url_and_metadata_tells_what_is_supported(api):
    eng, client, _ = api
    assert any(line.startswith("channel fhir-in: fhir http://127.0.0.1:") for line in eng.lines)
    r = client.get("/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    cap = r.json()
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    types = {res["type"]: [i["code"] for i in res["interaction"]] for res in cap["rest"][0]["resource"]}
    assert types["Patient"] == ["create", "update"] and "read" not in types["Patient"]  # no reads claimed


def test_a_request_without_a_valid_token_gets_401_and_nothing_is_stored(api):
    eng, client, _ = api
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(str(client.base_url).rstrip("/") + "/Patient", json=PATIENT, headers=headers, timeout=10)
        assert r.status_code == 401, headers
        assert r.json()["issue"][0]["code"] == "security" and "WWW-Authenticate" in r.headers
    assert eng.query("messages", "SELECT count(*) AS n FROM messages")[0]["n"] == 0
    assert TOKEN not in (eng.workdir / "engine.log").read_text()


def test_a_resource_is_committed_then_applied_and_the_sender_is_the_token_name(api):
    eng, client, out = api
    r = client.post("/Patient", json=PATIENT)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == "/fhir/Patient/p1" and r.json()["id"] == "p1"
    (m,) = eng.query("messages", "SELECT * FROM messages")
    assert (m["status"], m["message_type"], m["trigger"], m["sending_app"]) == ("SENT", "Patient", "create", "ehr-test")
    assert json.loads((out / f"{m['id']}.json").read_text()) == PATIENT  # what was stored is what was sent
    r = client.put("/Patient/p1", json=dict(PATIENT, gender="other"))
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("body", "status", "code", "expression"),
    [
        (b"{not json", 400, "structure", None),
        (json.dumps(dict(PATIENT, birthDate="1980-13-45")).encode(), 400, "value", "Patient.birthDate"),
        (json.dumps(dict(PATIENT, name=[{"family": 7}])).encode(), 400, "value", "Patient.name[0].family"),
        (json.dumps(dict(PATIENT, colour="blue")).encode(), 400, "structure", "Patient.colour"),
        (json.dumps(dict(PATIENT, resourceType="Observation")).encode(), 400, "invalid", None),
    ],
)
def test_invalid_input_gets_an_operation_outcome_locating_each_problem(api, body, status, code, expression):
    eng, client, _ = api
    r = client.post("/Patient", content=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == status, r.text
    oo = r.json()
    assert oo["resourceType"] == "OperationOutcome"
    issue = oo["issue"][0]
    assert issue["code"] == code and issue["severity"] == "error"
    if expression:
        assert expression in [e for i in oo["issue"] for e in i.get("expression", [])]
    assert "1980-13-45" not in r.text  # the value is not echoed
    assert eng.query("messages", "SELECT count(*) AS n FROM messages")[0]["n"] == 0  # refused before the commit


def test_a_type_this_endpoint_does_not_take_gets_404(api):
    _, client, _ = api
    r = client.post("/Medication", json={"resourceType": "Medication"})
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-supported"
    r = client.post("/Banana", json={"resourceType": "Banana"})
    assert r.status_code == 404


def test_a_transaction_bundle_is_one_message_and_a_batch_is_one_per_entry(api):
    eng, client, _ = api
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"identifier": PATIENT["identifier"][0]},
    }
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": PATIENT}, {"resource": obs}]}
    r = client.post("", json=tx)
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "201 Created"]
    batch = dict(tx, type="batch", entry=[{"resource": PATIENT}, {"resource": dict(obs, effectiveDateTime="2024-13")}])
    r = client.post("", json=batch)
    assert r.status_code == 200 and r.json()["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201", "400"]  # each entry answered on its own
    bad = dict(tx, entry=[{"resource": PATIENT}, {"resource": dict(obs, effectiveDateTime="2024-13")}])
    r = client.post("", json=bad)  # a transaction with one bad resource: refused whole, nothing stored
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.effectiveDateTime"]
    rows = eng.query("messages", "SELECT message_type, trigger FROM messages ORDER BY id")
    assert rows == [
        {"message_type": "Bundle", "trigger": "transaction"},
        {"message_type": "Patient", "trigger": "create"},
    ]


@pytest.mark.services
def test_while_the_store_cannot_commit_the_answer_is_503_with_retry_after(tmp_path, private_postgres):
    port = free_port()
    cfg = fhir_config(tmp_path, port, tmp_path / "out").read_text()
    cfg = cfg.replace(f'url: "sqlite:///{tmp_path}/data/messages.db"', f'url: "{private_postgres.url}"')
    path = config_file(tmp_path, cfg)
    eng = EngineProcess(tmp_path, config=path)
    out = eng.cli("db", "upgrade", "--config", str(path))
    assert out.returncode == 0, out.stderr
    eng.start()
    url = f"http://127.0.0.1:{port}/fhir/Patient"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert httpx.post(url, json=PATIENT, headers=headers, timeout=30).status_code == 201
        private_postgres.stop("fast")  # the message store is gone
        r = httpx.post(url, json=PATIENT, headers=headers, timeout=60)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["issue"][0]["code"] == "transient"
        private_postgres.start()
        deadline = time.monotonic() + 30
        while (r := httpx.post(url, json=PATIENT, headers=headers, timeout=60)).status_code == 503:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        assert r.status_code == 201  # and it recovers
    finally:
        eng.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for a throwaway CA")
def test_the_endpoint_serves_https_with_its_certificate_and_refuses_plain_http(tmp_path):
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    text = fhir_config(tmp_path, port, tmp_path / "out").read_text()
    tls = f"      tls: {{cert_file: {pki}/server.pem, key_file: {pki}/server.key}}\n"
    config = config_file(tmp_path, text.replace("      resources:", tls + "      resources:"), "tls.yaml")
    eng = EngineProcess(tmp_path, config=config).start()
    try:
        assert any(line.startswith(f"channel fhir-in: fhir https://127.0.0.1:{port}/fhir") for line in eng.lines)
        headers, trust = {"Authorization": f"Bearer {TOKEN}"}, ssl.create_default_context(cafile=pki / "ca.pem")
        r = httpx.post(f"https://127.0.0.1:{port}/fhir/Patient", json=PATIENT, headers=headers, verify=trust)
        assert r.status_code in (200, 201), r.text
        with pytest.raises(httpx.HTTPError):  # a client that does not trust the certificate
            httpx.get(f"https://127.0.0.1:{port}/fhir/metadata", timeout=10)
        with pytest.raises(httpx.HTTPError):  # plain HTTP to a TLS port gets no HTTP answer
            httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=10)
        assert httpx.get(f"https://127.0.0.1:{port}/fhir/metadata", verify=trust).status_code == 200
    finally:
        eng.stop()
