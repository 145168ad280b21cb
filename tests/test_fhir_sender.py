"""The ``fhir`` destination: transaction Bundles POSTed to a real HTTP server on loopback
(:mod:`fhir_downstream`), alone and inside ``engine run``; and an ADT sent over MLLP to one
engine arriving, as FHIR, in a second engine's clinical store."""

from __future__ import annotations

import time
from email.utils import formatdate
from pathlib import Path

import pytest
from conftest import (
    FIXTURES,
    EngineProcess,
    MllpConnection,
    ack_fields,
    adt_update,
    config_file,
    engine_check,
    operator_messages,
    send_and_settle,
)
from fhir_downstream import Answer, FhirDownstream, outcome
from pki import make_pki
from services import free_port

from engine.channels.base import Item
from engine.channels.fhir_sender import FhirSender, FhirSenderConfig
from engine.channels.fhir_source import token_hash
from engine.errors import DeliveryError
from engine.formats.fhir_bundle import resource_id, transaction
from engine.records import Record
from engine.tls import ServerTls

TOKEN = "fhir-out-token-for-tests-only-5b1e77"
PATIENT_MAPPING = """\
description: ADT -> one FHIR Patient (tests of the fhir destination)
applies_when: {path: MSH-9.1, equals: ADT}
define:
  mrn: {identifier: PID-3, types: [MR], default_issuer: MSH-4.1}
  mrn_issuer: {identifier: PID-3, types: [MR], default_issuer: MSH-4.1, part: issuer}
records:
  - target: fhir.Patient
    fields:
      id: {fhir_id: [Patient, {use: mrn_issuer}, {use: mrn}]}
      identifier:
        - object:
            type: {object: {coding: [{object: {system: {literal: "http://terminology.hl7.org/CodeSystem/v2-0203"},
                                               code: {literal: MR}}}]}}
            system: {use: mrn_issuer}
            value: {use: mrn}
      name:
        - object: {family: PID-5.1.1, given: [PID-5.2]}
      birthDate: {date: PID-7}
      address:
        - object: {line: [PID-11.1], city: PID-11.3}
"""


def bundle(seq: int, patient: str = "P0001") -> dict:
    """A transaction Bundle of one Patient whose address line names ``seq`` (no real patient data)."""
    rid = resource_id("Patient", "NORTH", patient)
    values = {"id": rid, "identifier": [{"system": "NORTH", "value": patient}], "address": [{"line": [f"SEQ {seq}"]}]}
    return transaction([Record("fhir.Patient", ("id",), values)])


def sender(url: str, **settings) -> FhirSender:
    settings.setdefault("token", TOKEN)
    return FhirSender(FhirSenderConfig(type="fhir", name="ehr", base_url=url, mapping="unused", **settings), None)


@pytest.fixture
def down():
    with FhirDownstream() as d:
        yield d


def seq_of(b: dict) -> str:
    return b["entry"][0]["resource"]["address"][0]["line"][0]


# -- the destination on its own --------------------------------------------------------------------


def test_a_bundle_is_posted_as_fhir_json_with_the_bearer_token_on_one_kept_alive_connection(down):
    dest = sender(down.url)
    try:
        results = [dest.deliver([Item(n, bundle(n), b"")])[0] for n in range(3)]
    finally:
        dest.close()
    assert results == [None, None, None]
    assert [seq_of(b) for b in down.accepted()] == ["SEQ 0", "SEQ 1", "SEQ 2"]  # each once, in order
    first = down.requests[0]
    assert first.path == "/fhir" and first.body == bundle(0)
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.headers["content-type"] == "application/fhir+json"
    assert len({r.connection for r in down.requests}) == 1


def test_a_token_file_is_read_and_no_token_means_no_authorization_header(down, tmp_path):
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    for settings in ({"token_file": str(tmp_path / "token"), "token": None}, {"token": None}):
        dest = sender(down.url, **settings)
        try:
            assert dest.deliver([Item(1, bundle(1), b"")]) == [None]
        finally:
            dest.close()
    assert [r.headers.get("authorization") for r in down.requests] == [f"Bearer {TOKEN}", None]


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (Answer(503, outcome("transient", "down for maintenance")), None),
        (Answer(500), None),
        (Answer(429, headers={"Retry-After": "7"}), 7.0),
        (Answer(429, headers={"Retry-After": "in 600 s"}), 600.0),  # an HTTP date, written when the test runs
        (Answer(408), None),
    ],
)
def test_server_errors_and_throttling_are_retried_and_retry_after_is_kept(down, answer, retry_after):
    if answer.headers.get("Retry-After") == "in 600 s":
        answer = Answer(429, headers={"Retry-After": formatdate(time.time() + 600, usegmt=True)})
    down.script = lambda n, _b: answer if n == 1 else None
    dest = sender(down.url)
    try:
        first = dest.deliver([Item(1, bundle(1), b"")])[0]
        second = dest.deliver([Item(1, bundle(1), b"")])[0]
    finally:
        dest.close()
    assert isinstance(first, DeliveryError) and first.retryable
    assert str(first).startswith(f"http://127.0.0.1:{down.port} answered {answer.status}")
    if retry_after is None:
        assert first.retry_after is None
    else:
        assert first.retry_after == pytest.approx(retry_after, abs=5)
    assert second is None and len(down.accepted()) == 1


def test_a_4xx_is_final_and_its_operation_outcome_is_in_the_error_without_the_token(down):
    refusal = outcome("value", "birthDate is not a valid date", "Patient.birthDate")
    down.script = lambda n, _b: Answer(400, refusal)
    dest = sender(down.url)
    try:
        (res,) = dest.deliver([Item(1, bundle(1), b"")])
    finally:
        dest.close()
    assert isinstance(res, DeliveryError) and not res.retryable
    assert '"code":"value","expression":["Patient.birthDate"]' in str(res)
    assert "birthDate is not a valid date" not in str(res)  # another server's words may quote values
    assert TOKEN not in str(res)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            {"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "409"}}]},
            "failed entries: entry[0] 409",
        ),
        ({"resourceType": "Bundle", "type": "batch-response", "entry": []}, "not transaction-response"),
        ({"resourceType": "Patient"}, "without a transaction-response"),
    ],
)
def test_a_2xx_that_is_not_a_successful_transaction_response_is_final(down, body, why):
    down.script = lambda n, _b: Answer(200, body)
    dest = sender(down.url)
    try:
        (res,) = dest.deliver([Item(1, bundle(1), b"")])
    finally:
        dest.close()
    assert isinstance(res, DeliveryError) and not res.retryable and why in str(res), res


def test_a_server_that_hangs_times_out_retryably_and_the_next_attempt_goes_through(down):
    down.script = lambda n, _b: Answer(delay=2.0) if n == 1 else None
    dest = sender(down.url, timeout_seconds=0.5)
    try:
        started = time.monotonic()
        (hung,) = dest.deliver([Item(1, bundle(1), b"")])
        assert time.monotonic() - started < 1.9  # cut short: the server holds its answer 2 s
        assert isinstance(hung, DeliveryError) and hung.retryable and "ReadTimeout" in str(hung)
        assert dest.deliver([Item(1, bundle(1), b"")]) == [None]
    finally:
        dest.close()
    # the hung attempt and the retry carried the same Bundle: PUTs by id, applied once or twice alike
    assert down.requests[0].body == down.requests[1].body


def test_a_server_that_is_not_there_is_a_retryable_connection_error():
    port = free_port()
    dest = sender(f"http://127.0.0.1:{port}/fhir")
    try:
        (res,) = dest.deliver([Item(1, bundle(1), b"")])
    finally:
        dest.close()
    assert isinstance(res, DeliveryError) and res.retryable and "ConnectError" in str(res)


def test_https_with_the_configured_ca_is_delivered_and_an_untrusted_server_is_retried(tmp_path):
    pki = make_pki(tmp_path / "pki")
    server = ServerTls(cert_file=str(pki / "server.pem"), key_file=str(pki / "server.key"))
    with FhirDownstream(tls=server.context()) as secure:
        trusting = sender(secure.url, tls={"ca_file": str(pki / "ca.pem")})
        default = sender(secure.url)  # the system's CAs do not know the test CA
        try:
            assert trusting.deliver([Item(1, bundle(1), b"")]) == [None]
            (untrusted,) = default.deliver([Item(2, bundle(2), b"")])
        finally:
            trusting.close()
            default.close()
        assert isinstance(untrusted, DeliveryError) and untrusted.retryable and "ConnectError" in str(untrusted)
        assert [seq_of(b) for b in secure.accepted()] == ["SEQ 1"]


def test_config_problems_are_reported_with_file_line_and_key(tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "adt_patient_fhir.yaml").write_text(PATIENT_MAPPING)
    (mappings / "to_store.yaml").write_text(
        "applies_when: {path: MSH-9.1, equals: ADT}\n"
        "records:\n  - {target: clinical.patient, key: [mrn], fields: {mrn: PID-3.1}}\n"
    )
    path = config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "sqlite:///{tmp_path}/messages.db"}}
mappings_dir: {mappings}
channels:
  - name: out
    source: {{type: mllp, port: {free_port()}}}
    destinations:
      - name: a
        type: fhir
        base_url: ftp://example.org/fhir
        mapping: adt_patient_fhir
      - name: b
        type: fhir
        base_url: http://127.0.0.1:1/fhir
        token: abc
        token_file: {tmp_path}/no-such-token
        mapping: [adt_patient_fhir, to_store, missing]
      - name: c
        type: fhir
        base_url: http://127.0.0.1:1/fhir
        mapping: to_store
        tmeout_seconds: 3
""",
    )
    out = engine_check(path)
    assert out.returncode != 0
    lines = out.stderr.splitlines()

    def reported(line: int, key: str, text: str) -> bool:
        return any(f"channels.yaml:{line}: {key}: " in x and text in x for x in lines)

    assert reported(11, "channels[0].destinations[0].base_url", "should match pattern"), out.stderr
    assert reported(17, "channels[0].destinations[1].token_file", "give token or token_file, not both"), out.stderr
    assert reported(17, "channels[0].destinations[1].token_file", "cannot read"), out.stderr
    assert reported(18, "channels[0].destinations[1].mapping", "mapping file not found"), out.stderr
    assert reported(23, "channels[0].destinations[2].tmeout_seconds", "unknown key"), out.stderr
    assert "abc" not in out.stderr


def test_a_mapping_whose_records_are_not_fhir_resources_is_refused(tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "to_store.yaml").write_text(
        "applies_when: {path: MSH-9.1, equals: ADT}\n"
        "records:\n  - {target: clinical.patient, key: [mrn], fields: {mrn: PID-3.1}}\n"
    )
    path = config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "sqlite:///{tmp_path}/messages.db"}}
mappings_dir: {mappings}
channels:
  - name: out
    source: {{type: mllp, port: {free_port()}}}
    destinations:
      - {{name: ehr, type: fhir, base_url: "http://127.0.0.1:1/fhir", mapping: to_store}}
""",
    )
    out = engine_check(path)
    assert out.returncode != 0
    assert (
        "channels.yaml:9: channels[0].destinations[0].mapping: mapping to_store: records[0] targets clinical.patient"
        in out.stderr
    ), out.stderr


# -- inside engine run -----------------------------------------------------------------------------


def engine_config(tmp_path: Path, url: str, in_port: int) -> Path:
    """One MLLP channel into a ``fhir`` destination at ``url``, with the test mapping above."""
    mappings = tmp_path / "mappings"
    mappings.mkdir(exist_ok=True)
    (mappings / "adt_patient_fhir.yaml").write_text(PATIENT_MAPPING)
    return config_file(
        tmp_path,
        f"""
stores:
  messages: {{url: "sqlite:///{tmp_path}/data/messages.db"}}
mappings_dir: {mappings}
channels:
  - name: adt-to-fhir
    source: {{type: mllp, port: {in_port}}}
    destinations:
      - name: ehr
        type: fhir
        base_url: {url}
        token: "${{FHIR_OUT_TOKEN:-}}"
        mapping: adt_patient_fhir
        timeout_seconds: 5
        retry: {{max_attempts: 20, backoff_seconds: 0.2, max_backoff_seconds: 0.5}}
""",
    )


@pytest.fixture
def adt_to_fhir(tmp_path, down):
    port = free_port()
    eng = EngineProcess(tmp_path, config=engine_config(tmp_path, down.url, port), env={"FHIR_OUT_TOKEN": TOKEN})
    eng.start()
    eng.port = port
    yield eng, down
    eng.stop()
    log = (tmp_path / "engine.log").read_text()
    assert TOKEN not in log and "OperationOutcome" not in log and "diagnostics" not in log


def test_retries_deliver_each_message_exactly_once_in_each_patients_order(adt_to_fhir):
    eng, down = adt_to_fhir
    throttled: dict[str, float] = {}

    def script(n: int, b: dict) -> Answer | None:
        seq = seq_of(b)
        if seq == "SEQ 000002" and seq not in throttled:  # patient 2's first update: throttled for 1 s
            throttled[seq] = time.monotonic()
            return Answer(429, outcome("throttled", "slow down"), {"Retry-After": "1"})
        if seq in ("SEQ 000004", "SEQ 000007") and sum(seq_of(r.body) == seq for r in down.requests) < 2:
            return Answer(503, outcome("transient", "busy"))  # twice unavailable, then fine
        return None

    down.script = script
    sent = [(f"F{s:06d}", adt_update(s, s % 3)) for s in range(1, 13)]  # 12 updates of 3 patients
    conn = MllpConnection(eng.port)
    try:
        for control_id, data in sent:  # one feed, in order: each ACKed once stored
            assert ack_fields(conn.send(data))["MSA"][1:3] == ["AA", control_id]
    finally:
        conn.close()
    eng.wait_for(
        "messages",
        "SELECT count(*) AS n FROM messages WHERE status = 'SENT'",
        lambda r: r[0]["n"] == 12,
        timeout=60,
    )
    accepted = [seq_of(b) for b in down.accepted()]
    assert sorted(accepted) == sorted(f"SEQ {s:06d}" for s in range(1, 13))  # each exactly once
    for patient in range(3):
        mine = [f"SEQ {s:06d}" for s in range(1, 13) if s % 3 == patient]
        assert [a for a in accepted if a in mine] == mine, f"patient {patient}: {accepted}"
    retried = [r.at for r in down.requests if seq_of(r.body) == "SEQ 000002"]
    assert len(retried) == 2 and retried[1] - retried[0] >= 0.95  # Retry-After: 1 honoured over 0.2 s backoff
    assert [r.status for r in down.requests if seq_of(r.body) == "SEQ 000004"] == [503, 503, 200]


def test_a_refused_message_ends_in_error_with_the_operation_outcome_in_the_operators_view(adt_to_fhir):
    eng, down = adt_to_fhir
    down.script = lambda n, b: Answer(422, outcome("business-rule", "patient is merged")) if n == 1 else None
    send_and_settle(eng, eng.port, adt_update(1, 1), "F000001", final="ERROR")
    send_and_settle(eng, eng.port, adt_update(2, 2), "F000002", final="SENT")
    assert len(down.requests) == 2  # the refused one was not retried
    (m,) = [m for m in operator_messages(eng) if m["control_id"] == "F000001"]
    (d,) = m["deliveries"]
    assert (d["destination"], d["status"], d["attempts"]) == ("ehr", "ERROR", 1)
    assert d["error"].startswith(f"http://127.0.0.1:{down.port} answered 422: OperationOutcome {{")
    assert '"code":"business-rule"' in d["error"] and '"code":"business-rule"' in m["error"]
    assert "patient is merged" not in d["error"] + m["error"]  # its free text is left out


def test_a_message_no_mapping_applies_to_is_not_sent(adt_to_fhir):
    eng, down = adt_to_fhir
    oru = (FIXTURES / "oru_r01.hl7").read_bytes()
    control_id = oru.split(b"\r")[0].split(b"|")[9].decode()
    send_and_settle(eng, eng.port, oru, control_id, final="FILTERED")
    assert down.requests == []


def test_an_adt_over_mllp_reaches_a_second_engines_clinical_store_through_its_fhir_api(tmp_path):
    """Engine A: MLLP in -> ``fhir`` destination with mappings/adt_fhir.yaml; engine B: its
    ``fhir`` source -> clinical store. The patient and visit A was sent are B's, under A's ids."""
    b_dir, a_dir = tmp_path / "b", tmp_path / "a"
    b_dir.mkdir()
    a_dir.mkdir()
    fhir_port, mllp_port = free_port(), free_port()
    b_cfg = config_file(
        b_dir,
        f"""
stores:
  messages: {{url: "sqlite:///{b_dir}/data/messages.db"}}
  clinical: {{url: "sqlite:///{b_dir}/data/clinical.db"}}
mappings_dir: MAPPINGS
channels:
  - name: fhir-in
    source:
      type: fhir
      port: {fhir_port}
      tokens: "engine-a:{token_hash(TOKEN)}"
      resources: [MessageHeader, Patient, Encounter]
    destinations:
      - name: clinical
        type: store
        store: clinical
        mapping: [fhir_patient_clinical, fhir_encounter_clinical]
""",
    )
    a_cfg = config_file(
        a_dir,
        f"""
stores:
  messages: {{url: "sqlite:///{a_dir}/data/messages.db"}}
mappings_dir: MAPPINGS
channels:
  - name: adt-to-fhir
    source: {{type: mllp, port: {mllp_port}}}
    destinations:
      - name: engine-b
        type: fhir
        base_url: http://127.0.0.1:{fhir_port}/fhir
        token: "${{FHIR_OUT_TOKEN}}"
        mapping: adt_fhir
        retry: {{max_attempts: 20, backoff_seconds: 0.2, max_backoff_seconds: 1}}
""",
    )
    b = EngineProcess(b_dir, config=b_cfg).start()
    a = EngineProcess(a_dir, config=a_cfg, env={"FHIR_OUT_TOKEN": TOKEN}).start()
    try:
        send_and_settle(a, mllp_port, adt_update(1, 42), "F000001", final="SENT")
        (row,) = b.wait_for("clinical", "SELECT * FROM patient WHERE mrn = 'P0042'", timeout=10)
        assert (row["mrn_issuer"], row["family_name"], row["given_name"]) == ("NORTH", "Tester", "Pat42")
        assert row["fhir_id"] == resource_id("Patient", "P0042", "NORTH")  # the id engine A gave it
        (visit,) = b.wait_for("clinical", "SELECT * FROM encounter WHERE visit_number = 'V000001'", timeout=10)
        assert visit["mrn"] == "P0042"
        (m,) = b.query("messages", "SELECT * FROM messages")
        assert (m["status"], m["sending_app"], m["message_type"]) == ("SENT", "engine-a", "Bundle")
        send_and_settle(a, mllp_port, adt_update(2, 42), "F000002", final="SENT")  # an update: the same patient
        b.wait_for("clinical", "SELECT address_line1 FROM patient", lambda r: r == [{"address_line1": "SEQ 000002"}])
        assert b.query("messages", "SELECT count(*) AS n FROM messages")[0]["n"] == 2  # one POST per message
    finally:
        a.stop()
        b.stop()
    assert TOKEN not in (a_dir / "engine.log").read_text()


def test_respond_async_asks_the_server_to_answer_once_stored(down):
    down.script = lambda n, _b: Answer(202, outcome("informational", "stored"))
    dest = sender(down.url, respond_async=True)
    try:
        (res,) = dest.deliver([Item(1, bundle(1), b"")])
    finally:
        dest.close()
    assert res is None  # 202: stored by the receiver, delivered for this destination
    assert [r.headers.get("prefer") for r in down.requests] == ["respond-async"]
    plain = sender(down.url)
    try:
        plain.deliver([Item(2, bundle(2), b"")])
    finally:
        plain.close()
    assert down.requests[-1].headers.get("prefer") is None  # only when asked: a 202 hides the receiver's errors
