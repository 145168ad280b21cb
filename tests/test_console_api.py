"""The console's admin API over HTTP, on a running engine with the sample config: sign-in,
roles (a viewer reads neither content nor identifiers), audit, reprocess, pause and resume."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from conftest import ROOT, SAMPLE_ADMIN_PASSWORD, EngineProcess, MllpConnection, ack_fields, send_and_settle

FIXTURES = ROOT / "tests" / "fixtures" / "hl7v2"
MRN = "MRN100001"  # adt_a01.hl7's patient: it must never reach a viewer or an operator
CSRF = {"X-Requested-With": "engine-console"}
PASSWORDS = {"vera": "viewer-password-1", "otto": "operator-password-1", "anna": "analyst-password-1"}


def add_user(eng: EngineProcess, name: str, role: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "users", "add", name, "--role", role, "--config", str(eng.config)],
        cwd=ROOT,
        env=eng.env,
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    eng = EngineProcess(tmp_path_factory.mktemp("console")).start()
    assert eng.console_url and eng.console_url.startswith("http://127.0.0.1:")
    for (name, password), role in zip(PASSWORDS.items(), ("viewer", "operator", "analyst")):
        out = add_user(eng, name, role, password)
        assert out.returncode == 0, out.stderr
    send_and_settle(eng, eng.adt_port, (FIXTURES / "adt_a01.hl7").read_bytes(), "SGH-A01-000101")
    send_and_settle(eng, eng.adt_port, (FIXTURES / "gaps" / "adt_a04_selfpay.hl7").read_bytes(), "SP-A04-0001")
    yield eng
    eng.stop()


def session(eng: EngineProcess, name: str, password: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=eng.console_url, timeout=30, headers=CSRF)
    pw = password or (SAMPLE_ADMIN_PASSWORD if name == "admin" else PASSWORDS[name])
    r = client.post("/api/login", json={"name": name, "password": pw})
    assert r.status_code == 200, r.text
    return client


def message_id(eng: EngineProcess, control_id: str) -> int:
    return eng.query("messages", "select id from messages where control_id = :c", c=control_id)[0]["id"]


def test_nothing_without_signing_in(console):
    with httpx.Client(base_url=console.console_url, timeout=30) as anon:
        assert anon.get("/api/channels").status_code == 401
        assert anon.get("/api/messages").status_code == 401
        # a change without the console's header is refused before anything else
        r = anon.post("/api/login", json={"name": "admin", "password": SAMPLE_ADMIN_PASSWORD})
        assert r.status_code == 403
        assert anon.get("/").status_code == 200  # the dashboard's page itself is public
        assert "openapi" in anon.get("/api/openapi.json").json()
        assert anon.get("/api/docs").status_code == 200


def test_a_wrong_password_is_refused_and_audited(console):
    with httpx.Client(base_url=console.console_url, timeout=30, headers=CSRF) as c:
        r = c.post("/api/login", json={"name": "admin", "password": "not the password"})
        assert r.status_code == 401
    admin = session(console, "admin")
    items = admin.get("/api/audit", params={"action": "login"}).json()["items"]
    failed = [i for i in items if i["outcome"] == "failed"]
    assert failed and failed[0]["actor"] == "admin" and failed[0]["peer"] == "127.0.0.1"


def test_repeated_failures_are_throttled(console):
    with httpx.Client(base_url=console.console_url, timeout=30, headers=CSRF) as c:
        codes = [c.post("/api/login", json={"name": "mallory", "password": f"guess-{i}"}).status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]


def test_a_viewer_sees_statistics_and_no_content_or_identifier(console):
    viewer = session(console, "vera")
    channels = viewer.get("/api/channels").json()
    adt = next(c for c in channels if c["name"] == "adt")
    assert adt["counts"].get("SENT", 0) >= 1 and adt["total"] >= 1 and adt["paused"] is False
    assert viewer.get("/api/stats/series", params={"minutes": 10}).status_code == 200
    mid = message_id(console, "SGH-A01-000101")
    for path in ("/api/messages", f"/api/messages/{mid}", f"/api/messages/{mid}/content?purpose=x", "/api/audit"):
        assert viewer.get(path).status_code == 403, path
    assert viewer.post(f"/api/messages/{mid}/reprocess").status_code == 403
    assert viewer.post("/api/channels/adt/pause").status_code == 403
    seen = "".join(viewer.get(p).text for p in ("/api/channels", "/api/stats/series", "/api/me", "/metrics"))
    assert MRN not in seen and "HARTWELL" not in seen


def test_an_operator_sees_metadata_without_identifiers(console):
    operator = session(console, "otto")
    found = operator.get("/api/messages", params={"channel": "adt", "control_id": "SGH-A01-000101"}).json()
    assert [m["control_id"] for m in found["items"]] == ["SGH-A01-000101"]
    assert "patient" not in found["items"][0]
    mid = found["items"][0]["id"]
    detail = operator.get(f"/api/messages/{mid}").json()
    assert detail["deliveries"] and all(d["status"] == "SENT" for d in detail["deliveries"])
    assert "patient" not in detail and MRN not in str(detail)
    assert operator.get(f"/api/messages/{mid}/content", params={"purpose": "x"}).status_code == 403
    warned = operator.get("/api/messages", params={"control_id": "SP-A04-0001"}).json()["items"][0]
    assert warned["warnings"] == 1
    assert operator.get(f"/api/messages/{warned['id']}").json()["warnings"][0].startswith("pm: pm.coverage.member_id")
    assert operator.get("/api/messages", params={"patient": f"SUNRISE_GH|{MRN}"}).status_code == 403


def test_an_analyst_reads_content_with_a_purpose_and_it_is_audited(console):
    analyst = session(console, "anna")
    mid = message_id(console, "SGH-A01-000101")
    assert analyst.get(f"/api/messages/{mid}/content").status_code == 400  # no purpose, no content
    r = analyst.get(f"/api/messages/{mid}/content", params={"purpose": "ticket 77"})
    assert r.status_code == 200 and "SGH-A01-000101" in r.json()["content"] and MRN in r.json()["content"]
    found = analyst.get("/api/messages", params={"channel": "adt", "limit": 5}).json()["items"]
    assert any(m.get("patient", "").endswith(MRN) for m in found)
    admin = session(console, "admin")
    items = admin.get("/api/audit", params={"actor": "anna"}).json()["items"]
    read = [i for i in items if i["action"] == "message.content"]
    assert read and read[0]["purpose"] == "ticket 77" and read[0]["target"] == f"message {mid}"
    assert read[0]["role"] == "analyst" and read[0]["peer"] == "127.0.0.1"


def test_the_audit_log_is_for_admins_only(console):
    for name in ("vera", "otto", "anna"):
        assert session(console, name).get("/api/audit").status_code == 403
        assert session(console, name).get("/api/users").status_code == 403


def test_reprocess_one_message(console):
    operator = session(console, "otto")
    mid = message_id(console, "SGH-A01-000101")
    assert operator.post(f"/api/messages/{mid}/reprocess", params={"purpose": "resend after fix"}).json() == {
        "count": 1
    }
    console.wait_for("messages", "select status from messages where id = :i", lambda r: r[0]["status"] == "SENT", i=mid)
    items = session(console, "admin").get("/api/audit", params={"action": "message.reprocess"}).json()["items"]
    assert items[0]["actor"] == "otto" and items[0]["purpose"] == "resend after fix"


def test_reprocessing_everything_needs_a_filter(console):
    operator = session(console, "otto")
    assert operator.post("/api/messages/reprocess", json={}).status_code == 400
    r = operator.post("/api/messages/reprocess", json={"channel": "adt", "control_id": "SGH-A01-000101"})
    assert r.json() == {"count": 1}


def test_a_paused_channel_receives_and_holds_until_resumed(console):
    operator = session(console, "otto")
    assert operator.post("/api/channels/adt/pause").json()["paused"] is True
    text = (FIXTURES / "adt_a01.hl7").read_bytes().replace(b"SGH-A01-000101", b"SGH-A01-PAUSED")
    conn = MllpConnection(console.adt_port)
    try:
        ack = ack_fields(conn.send(text))
    finally:
        conn.close()
    assert ack["MSA"][1] == "AA"  # still received, stored and acknowledged
    time.sleep(2.5)  # two sweeps and more: nothing took it
    rows = console.query("messages", "select status from messages where control_id = 'SGH-A01-PAUSED'")
    assert rows == [{"status": "RECEIVED"}]
    adt = next(c for c in operator.get("/api/channels").json() if c["name"] == "adt")
    assert adt["paused"] and adt["queued"] >= 1 and adt["oldest_queued_seconds"] >= 2
    assert operator.post("/api/channels/adt/resume").json()["paused"] is False
    console.wait_for(
        "messages",
        "select status from messages where control_id = 'SGH-A01-PAUSED'",
        lambda r: r[0]["status"] == "SENT",
    )
    actions = [
        i["action"] for i in session(console, "admin").get("/api/audit", params={"actor": "otto"}).json()["items"]
    ]
    assert "channel.pause" in actions and "channel.resume" in actions


def test_users_made_and_disabled_by_an_admin(console):
    admin = session(console, "admin")
    r = admin.post("/api/users", json={"name": "temp.viewer", "role": "viewer", "password": "temporary-pass-1"})
    assert r.status_code == 200, r.text
    assert (
        admin.post("/api/users", json={"name": "temp.viewer", "role": "viewer", "password": "x" * 12}).status_code
        == 409
    )
    assert admin.post("/api/users", json={"name": "bad", "role": "root", "password": "x" * 12}).status_code == 400
    temp = session(console, "temp.viewer", "temporary-pass-1")
    assert temp.get("/api/channels").status_code == 200
    assert admin.post("/api/users/temp.viewer/role", json={"role": "operator"}).json()["role"] == "operator"
    assert temp.get("/api/messages").status_code == 200  # the new role at the next request
    assert admin.post("/api/users/temp.viewer/password", json={"password": "short"}).status_code == 400
    assert admin.post("/api/users/admin/role", json={"role": "viewer"}).status_code == 400  # not on yourself
    assert admin.post("/api/users/temp.viewer/password", json={"password": "another-pass-22"}).status_code == 200
    assert temp.get("/api/channels").status_code == 401  # a new password ends the old sessions
    temp = session(console, "temp.viewer", "another-pass-22")
    assert admin.post("/api/users/temp.viewer/disable").status_code == 200
    assert temp.get("/api/channels").status_code == 401  # its session ends with it
    names = {u["name"]: u for u in admin.get("/api/users").json()}
    assert names["temp.viewer"]["disabled_at"] and "password_hash" not in names["temp.viewer"]


def test_signing_out_ends_the_session(console):
    viewer = session(console, "vera")
    assert viewer.post("/api/logout").status_code == 200
    assert viewer.get("/api/me").status_code == 401


def test_metrics_in_prometheus_format(console):
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(console.console_url + "metrics", timeout=30).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sent = [s for s in families["engine_messages"].samples if s.labels == {"channel": "adt", "status": "SENT"}]
    assert sent and sent[0].value >= 1


def test_mapping_output_for_an_analyst_only(console):
    mid = message_id(console, "SGH-A01-000101")
    assert session(console, "otto").get(f"/api/messages/{mid}/mapped", params={"purpose": "x"}).status_code == 403
    analyst = session(console, "anna")
    assert analyst.get(f"/api/messages/{mid}/mapped").status_code == 400
    out = analyst.get(f"/api/messages/{mid}/mapped", params={"purpose": "why is the room empty"}).json()
    clinical = next(d for d in out["destinations"] if d["destination"] == "clinical")
    patient = next(r for r in clinical["records"] if r["target"] == "clinical.patient")
    assert patient["key"]["mrn"] == MRN and clinical["error"] is None


def test_replay_of_a_changed_mapping_from_the_api(console):
    changed = (ROOT / "mappings" / "adt_clinical.yaml").read_text()
    assert "family_name: PID-5.1.1" in changed
    changed = changed.replace("family_name: PID-5.1.1", "family_name: PID-5.2", 1)  # a mapping mistake
    body = {"channel": "adt", "mapping": changed, "since": "1h", "purpose": "review before deploy"}
    assert session(console, "otto").post("/api/replay", json=body).status_code == 403
    analyst = session(console, "anna")
    result = analyst.post("/api/replay", json=body).json()
    assert result["messages_read"] >= 1 and result["messages_changed"] >= 1
    assert set(result["summary"]) == {"clinical.patient"}
    broken = analyst.post("/api/replay", json={**body, "mapping": "records: [\n  - target: 3\n"})
    assert broken.status_code == 400 and broken.json()["problems"]
    items = session(console, "admin").get("/api/audit", params={"action": "replay"}).json()["items"]
    assert items[0]["actor"] == "anna" and items[0]["purpose"] == "review before deploy"


def test_bad_input_gets_a_clear_answer_without_its_value(console):
    admin = session(console, "admin")
    r = admin.post("/api/login", json={"name": "admin", "password": "p" * 5000})
    assert r.status_code == 422 and "ppppp" not in r.text and r.json()["detail"][0]["loc"] == ["body", "password"]
    assert admin.get(f"/api/messages/{2**63}").status_code == 422  # past what the store holds
    assert admin.get("/api/messages", params={"since": "yesterday-ish"}).status_code == 400
    deep = admin.post("/api/replay", json={"channel": "adt", "mapping": "[" * 50000, "purpose": "t"})
    assert deep.status_code == 400 and "nested too deeply" in deep.text
    assert admin.get("/api/me").status_code == 200


def test_without_a_password_the_first_admin_gets_a_random_one_in_an_owner_only_file(fresh_engine):
    eng = fresh_engine(ENGINE_ADMIN_PASSWORD="")
    secret = eng.data / "console-admin-password"
    assert secret.stat().st_mode & 0o777 == 0o600
    password = secret.read_text().strip()
    assert len(password) >= 20
    assert session(eng, "admin", password).get("/api/me").json()["role"] == "admin"
    log = (eng.workdir / "engine.log").read_text()
    assert str(secret) in log and password not in log
