"""The command line: check, send, messages, reprocess, db — run as a user would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import FIXTURES, ROOT, MllpConnection, ack_fields, config_file, fixture_bytes

ENGINE = [sys.executable, "-m", "engine.cli"]


def run(*args, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*ENGINE, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def write_config(tmp_path: Path, body: str) -> Path:
    return config_file(tmp_path, textwrap.dedent(body))


def test_the_sample_config_checks_clean():
    out = run("check", "--config", "config/channels.yaml")
    assert out.returncode == 0, out.stderr
    assert "lab-results" in out.stdout and "adt" in out.stdout


def test_check_reports_every_problem_with_file_line_and_key(tmp_path):
    cfg = write_config(
        tmp_path,
        """\
        stores:
          messages: {url: "sqlite:///${ENGINE_TEST_DIR:-/tmp}/m.db"}
          clinical: {url: "sqlite:///x.db"}
        mappings_dir: MAPPINGS
        channels:
          - name: one
            source: {type: mllp, port: 7001}
            destinations:
              - {name: c, type: store, store: clinical, mapping: adt_clinical, retries: 3}
          - name: one
            source: {type: mllp, port: 7001}
            destinations:
              - {name: c, type: store, store: nowhere, mapping: adt_clinical}
              - {name: d, type: pigeon}
              - {name: e, type: store, store: clinical, mapping: no_such_mapping}
              - {name: f, type: channel, channel: ghost}
            ordering_key: PID-x
          - name: three
            source: {type: mllp, port: "${ENGINE_UNSET_PORT_VAR}", ack_mode: sometimes}
            destinations:
              - {name: c, type: store, store: clinical, mapping: adt_clinical}
        """,
    )
    out = run("check", "--config", str(cfg))
    assert out.returncode == 2
    err = out.stderr
    f = str(cfg)
    expected = [
        (9, "channels[0].destinations[0].retries"),
        (10, "channels[1].name"),
        (11, "channels[1].source.port"),
        (13, "channels[1].destinations[0].store"),
        (14, "channels[1].destinations[1].type"),
        (15, "channels[1].destinations[2].mapping"),
        (16, "channels[1].destinations[3].channel"),
        (17, "channels[1].ordering_key"),
        (19, "channels[2].source.port"),
        (19, "channels[2].source.ack_mode"),
    ]
    for line, key in expected:
        assert f"{f}:{line}: {key}:" in err, (line, key, err)


def test_run_refuses_to_start_on_an_invalid_config(tmp_path):
    cfg = write_config(
        tmp_path,
        """\
        stores: {messages: {url: "sqlite:///m.db"}}
        channels:
          - name: x
            source: {type: mllp, port: 7002, colour: blue}
            destinations: [{name: a, type: channel, channel: x}]
        """,
    )
    out = run("run", "--config", str(cfg))
    assert out.returncode == 2
    assert f"{cfg}:4: channels[0].source.colour: unknown key" in out.stderr


def test_send_prints_one_line_per_message_and_fails_on_a_nack(engine):
    out = engine.cli("send", "--port", str(engine.adt_port), str(FIXTURES / "batch_adt.hl7"))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.split()[2] == "AA" for line in lines)
    out = engine.cli(
        "send", "--port", str(engine.adt_port), str(FIXTURES / "adt_a04.hl7"), str(FIXTURES / "bad_version.hl7")
    )
    assert out.returncode == 1
    codes = [line.split()[2] for line in out.stdout.strip().splitlines()]
    assert codes == ["AA", "AR"]


def test_send_shows_progress_on_a_large_file(engine, tmp_path):
    base = fixture_bytes("adt_a08.hl7").decode("latin-1")
    big = tmp_path / "big.hl7"
    big.write_text("".join(base.replace(base.split("|")[9], f"BIG{i:05d}", 1) for i in range(250)), encoding="latin-1")
    out = engine.cli("send", "--port", str(engine.adt_port), str(big))
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 250
    assert "250/250 sent" in out.stderr


def test_messages_lists_metadata_as_json_without_content(engine):
    conn = MllpConnection(engine.lab_port)
    conn.send(fixture_bytes("oru_r01.hl7"))
    conn.close()
    out = engine.cli("messages", "--config", str(engine.config), "--channel", "lab-results", "--json")
    rows = json.loads(out.stdout)
    assert rows and rows[0]["channel"] == "lab-results"
    assert "content" not in rows[0]
    assert {"id", "status", "control_id", "message_type", "deliveries"} <= set(rows[0])


def test_a_message_that_fails_mapping_is_error_with_its_reason_and_reprocess_retries_it(fresh_engine):
    eng = fresh_engine()
    msg = fixture_bytes("adt_a04.hl7")
    # no MRN at all: PID-3 emptied -> the required key is missing
    lines = msg.split(b"\r")
    for i, line in enumerate(lines):
        if line.startswith(b"PID|"):
            parts = line.split(b"|")
            parts[3] = b""
            lines[i] = b"|".join(parts)
    bad = b"\r".join(lines)
    conn = MllpConnection(eng.adt_port)
    assert ack_fields(conn.send(bad))["MSA"][1] == "AA"  # on_receive: stored is enough
    conn.close()
    rows = eng.wait_for("messages", "select id, status, error from messages where status = 'ERROR'")
    assert "mrn" in rows[0]["error"]
    out = eng.cli("reprocess", "--config", str(eng.config), str(rows[0]["id"]))
    assert out.returncode == 1 and "ERROR" in out.stdout  # still failing: said so, not hidden
    out = eng.cli("reprocess", "--config", str(eng.config), "--status", "ERROR")
    assert str(rows[0]["id"]) in out.stdout


def test_acked_messages_survive_a_kill_mid_processing_and_are_applied_once_after_restart(fresh_engine):
    from conftest import adt_update

    eng = fresh_engine()
    conn = MllpConnection(eng.adt_port)
    sent = [adt_update(seq, seq % 7) for seq in range(1, 301)]
    for msg in sent:
        assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    eng.stop(signal.SIGKILL)  # right after the last ACK: the worker is still mapping
    assert eng.query("messages", "select count(*) as n from messages")[0]["n"] == 300
    eng2 = fresh_engine()  # same tmp dir, so the same store files
    eng2.wait_for(
        "messages", "select count(*) as n from messages where status = 'SENT'", lambda r: r[0]["n"] == 300, timeout=30
    )
    assert eng2.query("clinical", "select count(*) as n from encounter")[0]["n"] == 300
    for patient in range(7):
        last = max(seq for seq in range(1, 301) if seq % 7 == patient)
        row = eng2.query("clinical", "select address_line1 from patient where mrn = :m", m=f"P{patient:04d}")
        assert row[0]["address_line1"] == f"SEQ {last:06d}"


def test_db_upgrade_reports_each_store_at_head(tmp_path):
    env = {
        "ENGINE_MESSAGE_STORE_URL": f"sqlite:///{tmp_path}/m.db",
        "ENGINE_CLINICAL_STORE_URL": f"sqlite:///{tmp_path}/c.db",
        "ENGINE_PM_STORE_URL": f"sqlite:///{tmp_path}/p.db",
    }
    import os

    out = run("db", "upgrade", "--config", "config/channels.yaml", env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(head") == 3


def test_try_prints_each_record_and_where_every_field_came_from():
    out = run("try", "mappings/adt_clinical.yaml", str(FIXTURES / "adt_a01.hl7"))
    assert out.returncode == 0, out.stderr
    assert "clinical.patient upsert key=[mrn, mrn_issuer]" in out.stdout
    assert "<- PID-5.1.1" in out.stdout and "<- table sex(PID-8)" in out.stdout


def test_engine_test_passes_the_shipped_mapping_tests_and_fails_with_a_diff(tmp_path):
    out = run("test", "mappings")
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip().splitlines()[-1].endswith(" 0 failed")
    # copy one mapping and break its expectation: exit 1 and a readable diff
    import shutil

    work = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", work)
    test_file = work / "adt_pm_test.yaml"
    text = test_file.read_text()
    assert "account_number: ACC" in text
    test_file.write_text(text.replace("account_number: ACC", "account_number: XYZ", 1))
    out = run("test", str(work))
    assert out.returncode == 1
    assert "FAIL" in out.stdout and "XYZ" in out.stdout and "-" in out.stdout


def test_the_running_engine_names_its_threads_for_the_operating_system(engine):
    """``top -H`` and ``ps -L`` show which part of the engine uses the CPU (engine/threads.py);
    bench/mllp_ingest.py reports CPU per thread by these names."""
    names = {(task / "comm").read_text().strip() for task in Path(f"/proc/{engine.proc.pid}/task").iterdir()}
    assert {"committer", "worker", "sweeper", "fhir", "console"} <= names, names
