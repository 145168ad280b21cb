"""Real feeds leave things out: under ``on_error: skip`` the record that cannot be built is left
out with a warning, the message ends SENT, and everything else it carries is stored.

Run as a user would: messages over MLLP into a real engine, outcomes read with the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import FIXTURES, ROOT, MllpConnection, ack_fields, config_file, engine_check, fixture_bytes


def deliver(eng, port: int, fixture: str, control_id: str) -> dict:
    """Send one fixture, wait until it is processed; its row from ``engine messages --json``."""
    conn = MllpConnection(port)
    try:
        assert ack_fields(conn.send(fixture_bytes(fixture)))["MSA"][1] == "AA"
    finally:
        conn.close()
    eng.wait_for(
        "messages",
        "select status from messages where control_id = :c",
        lambda r: bool(r) and r[0]["status"] in ("SENT", "ERROR"),
        c=control_id,
    )
    out = eng.cli("messages", "--config", str(eng.config), "--json", "--limit", "500")
    assert out.returncode == 0, out.stderr
    [row] = [r for r in json.loads(out.stdout) if r["control_id"] == control_id]
    return row


def test_a_self_pay_coverage_without_a_policy_number_is_skipped_and_registration_visit_and_coverage_stay(engine):
    row = deliver(engine, engine.adt_port, "gaps/adt_a04_selfpay.hl7", "SP-A04-0001")
    assert row["status"] == "SENT" and row["error"] is None
    assert len(row["warnings"]) == 1
    assert row["warnings"][0].startswith("pm: pm.coverage.member_id: required value is missing; record skipped")
    assert "in IN1 1" in row["warnings"][0] and "SELF" not in row["warnings"][0]  # where, never what
    pm = "select {} from {} where mrn = 'MRN500101'"
    assert engine.query("pm", pm.format("account_number", "registration")) == [{"account_number": "ACC500101"}]
    assert engine.query("pm", pm.format("payer_id, member_id", "coverage")) == [
        {"payer_id": "COAST01", "member_id": "MBR-77500101"}
    ]
    assert engine.query("pm", pm.format("visit_number", "visit")) == [{"visit_number": "V240611-0101"}]
    assert engine.query("clinical", "select visit_number from encounter where mrn = 'MRN500101'") == [
        {"visit_number": "V240611-0101"}
    ]


def test_an_a01_sent_before_its_visit_number_keeps_patient_and_allergies_and_skips_each_diagnosis(engine):
    row = deliver(engine, engine.adt_port, "gaps/adt_a01_no_visit.hl7", "NV-A01-0001")
    assert row["status"] == "SENT"
    assert [w.split(" (")[0] for w in row["warnings"]] == [
        "clinical: clinical.diagnosis.visit_number: required value is missing; record skipped"
    ] * 2
    assert "in DG1 1)" in row["warnings"][0] and "in DG1 2)" in row["warnings"][1]
    q = "select count(*) as n from {} where mrn = 'MRN500201'"
    tables = ("patient", "allergy", "diagnosis", "encounter")
    counts = {t: engine.query("clinical", q.format(t))[0]["n"] for t in tables}
    assert counts == {"patient": 1, "allergy": 2, "diagnosis": 0, "encounter": 0}
    assert engine.query("pm", "select family_name from registration where mrn = 'MRN500201'") == [
        {"family_name": "OYELARAN"}
    ]


def test_one_sn_result_written_as_text_costs_that_value_only_not_its_row_nor_the_other_21(engine):
    row = deliver(engine, engine.lab_port, "gaps/oru_r01_sn_text.hl7", "SN-R01-0001")
    assert row["status"] == "SENT"
    [warning] = row["warnings"]
    assert warning.startswith("clinical: clinical.observation.value_numeric: not a number")
    assert "in OBR 1/OBX 9)" in warning and "test" not in warning
    stored = engine.query(
        "clinical", "select set_id from observation where filler_order_number = 'LAB600301' order by set_id + 0"
    )
    assert [r["set_id"] for r in stored] == [str(i) for i in range(1, 23)]
    nine = engine.query(
        "clinical", "select value_numeric from observation where filler_order_number = 'LAB600301' and set_id = '9'"
    )
    assert nine == [{"value_numeric": None}]
    assert engine.query("clinical", "select count(*) as n from diagnostic_report where mrn = 'MRN500301'")[0]["n"] == 1


def test_messages_shows_a_warnings_column_and_status_counts_messages_with_warnings_per_channel(fresh_engine):
    eng = fresh_engine()
    deliver(eng, eng.adt_port, "gaps/adt_a01_no_visit.hl7", "NV-A01-0001")
    deliver(eng, eng.adt_port, "adt_a01.hl7", "SGH-A01-000101")
    deliver(eng, eng.lab_port, "gaps/oru_r01_sn_text.hl7", "SN-R01-0001")
    out = eng.cli("messages", "--config", str(eng.config))
    header, *lines = out.stdout.splitlines()
    at = header.index(" WARN ") + 1
    flags = {line.split()[5]: line[at : at + 4].strip() for line in lines}  # the column under WARN
    assert flags == {"NV-A01-0001": "2", "SGH-A01-000101": "-", "SN-R01-0001": "1"}
    out = eng.cli("status", "--config", str(eng.config))
    header, *rows = out.stdout.splitlines()
    col = header.split().index("WARNINGS")
    per_channel = {r.split()[0]: r.split()[col] for r in rows if r.split() and r.split()[0] in ("adt", "lab-results")}
    assert per_channel == {"adt": "1", "lab-results": "1"}


def test_try_prints_the_warning_of_each_skipped_record():
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "try", "mappings/adt_pm.yaml", str(FIXTURES / "gaps/adt_a04_selfpay.hl7")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "  warning: pm.coverage.member_id: required value is missing; record skipped" in out.stdout
    assert out.stdout.count("pm.coverage upsert") == 1  # the HMO coverage, built


def test_check_rejects_an_unknown_on_error_and_a_skipped_merge_with_file_line_and_key(tmp_path):
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    (mappings / "tables").symlink_to(ROOT / "mappings" / "tables")
    (mappings / "bad.yaml").write_text(
        textwrap.dedent("""\
        records:
          - target: clinical.allergy
            for_each: AL1
            key: [mrn, allergen_code]
            on_error: ignore
            fields: {mrn: PID-3.1, allergen_code: AL1-3.1}
          - target: clinical.patient
            op: merge
            on_error: skip
            fields: {mrn: PID-3.1, old_mrn: MRG-1.1}
        """)
    )
    cfg = config_file(
        tmp_path,
        textwrap.dedent(f"""\
        stores:
          messages: {{url: "sqlite:///{tmp_path}/m.db"}}
          clinical: {{url: "sqlite:///{tmp_path}/c.db"}}
        mappings_dir: {mappings}
        channels:
          - name: adt
            source: {{type: mllp, port: 7011}}
            destinations:
              - {{name: clinical, type: store, store: clinical, mapping: bad}}
        """),
    )
    out = engine_check(cfg)
    assert out.returncode == 2
    bad = mappings / "bad.yaml"
    assert f"{bad}:5: records[0].on_error: on_error must be fail" in out.stderr, out.stderr
    assert f"{bad}:9: records[1].on_error: a merge cannot be skipped" in out.stderr, out.stderr
