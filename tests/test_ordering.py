"""Ordering is a guarantee of the store, not of timing: an older message never overwrites what
a newer one of the same key wrote, whether it comes back through reprocess, a late resend or a
channel hop; and an after_processing sender never gets AA for a message that was not applied.

Each test runs a real `engine run` and talks to it over MLLP and the CLI.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from conftest import ROOT, MllpConnection, ack_fields, adt_config, config_file
from downstream import Downstream


def adt(
    control_id: str, mrn: str, given: str, *, trigger: str = "A08", patient_class: str = "O", visit: str = ""
) -> bytes:
    return (
        f"MSH|^~\\&|REG|NORTH|ENGINE|HUB|20260101120000||ADT^{trigger}^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|{trigger}|20260101120000\r"
        f"PID|1||{mrn}^^^NORTH^MR||Tester^{given}||19800101|F|||1 Main St^^Town^OR^97000\r"
        f"PV1|1|{patient_class}|CLINIC||||||||||||||||{visit or control_id}^^^NORTH^VN\r"
    ).encode()


def merge(control_id: str, survivor: str, old: str) -> bytes:
    return (
        f"MSH|^~\\&|REG|NORTH|ENGINE|HUB|20260101120000||ADT^A40^ADT_A39|{control_id}|P|2.5.1\r"
        f"EVN|A40|20260101120000\r"
        f"PID|1||{survivor}^^^NORTH^MR\r"
        f"MRG|{old}^^^NORTH^MR\r"
    ).encode()


def strict_mappings(tmp_path: Path) -> Path:
    """A copy of the sample mappings whose patient-class table fails on an unknown code."""
    target = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", target)
    table = target / "tables" / "patient_class.yaml"
    table.write_text(table.read_text().replace("on_unknown: default\ndefault: unknown", "on_unknown: error"))
    return target


def learn_class_z(mappings: Path) -> None:
    table = mappings / "tables" / "patient_class.yaml"
    table.write_text(table.read_text().replace("  U: unknown\n", "  U: unknown\n  Z: outpatient\n"))


def test_reprocess_never_puts_an_older_update_over_a_newer_one(tmp_path, fresh_engine):
    mappings = strict_mappings(tmp_path)
    eng = fresh_engine(adt_config(tmp_path, mappings))
    conn = MllpConnection(eng.adt_port)
    assert ack_fields(conn.send(adt("M1", "P1", "Old", patient_class="Z")))["MSA"][1] == "AA"
    assert ack_fields(conn.send(adt("M2", "P1", "New")))["MSA"][1] == "AA"
    conn.close()
    rows = eng.wait_for(
        "messages",
        "select id, control_id, status from messages order by id",
        lambda r: [x["status"] for x in r] == ["ERROR", "SENT"],
    )
    m1, m2 = rows[0]["id"], rows[1]["id"]
    learn_class_z(mappings)
    out = eng.cli("reprocess", "--config", str(eng.config), "--status", "ERROR")
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{m1}: SENT" in out.stdout
    patient = eng.query("clinical", "select given_name, last_message_id from patient where mrn = 'P1'")[0]
    assert patient == {"given_name": "New", "last_message_id": m2}  # M2 is newer: it stays
    registration = eng.query("pm", "select given_name, last_message_id from registration where mrn = 'P1'")[0]
    assert registration == {"given_name": "New", "last_message_id": m2}
    # what only M1 wrote (its own visit) is applied: reprocess fills gaps, it does not roll back
    visit = eng.query("clinical", "select patient_class, last_message_id from encounter where visit_number = 'M1'")
    assert visit == [{"patient_class": "outpatient", "last_message_id": m1}]


def test_a_late_update_for_a_merged_away_mrn_does_not_overwrite_the_survivor(tmp_path, fresh_engine):
    mappings = strict_mappings(tmp_path)
    eng = fresh_engine(adt_config(tmp_path, mappings))
    conn = MllpConnection(eng.adt_port)
    for msg in (
        adt("S1", "SURV", "Survivor"),
        adt("O1", "OLD", "Oldname"),
        adt("O2", "OLD", "Latername", patient_class="Z"),  # fails until the table learns Z
        merge("MG", "SURV", "OLD"),
    ):
        assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    eng.wait_for("messages", "select status from messages where control_id = 'MG' and status = 'SENT'")
    learn_class_z(mappings)
    out = eng.cli("reprocess", "--config", str(eng.config), "--status", "ERROR")
    assert out.returncode == 0, out.stdout + out.stderr
    survivor = eng.query("clinical", "select given_name from patient where mrn = 'SURV'")
    assert survivor == [{"given_name": "Survivor"}]
    assert eng.query("pm", "select given_name from registration where mrn = 'SURV'") == [{"given_name": "Survivor"}]
    # O2's visit is not lost: it belongs to the survivor now
    assert eng.query("clinical", "select mrn from encounter where visit_number = 'O2'") == [{"mrn": "SURV"}]


def test_a_channel_hop_keeps_per_patient_order_while_an_earlier_update_is_retried(tmp_path, fresh_engine):
    with Downstream() as down:
        down.answer("AE", ["F1"])  # the downstream is briefly unable to take F1
        cfg = config_file(
            tmp_path,
            f"""
stores:
  messages: {{url: "${{ENGINE_MESSAGE_STORE_URL}}"}}
mappings_dir: {ROOT / "mappings"}
channels:
  - name: inbound
    source: {{type: mllp, port: "${{ENGINE_ADT_PORT}}"}}
    destinations:
      - {{name: hop, type: channel, channel: outbound}}
  - name: outbound
    source: {{type: mllp, port: "${{ENGINE_LAB_PORT}}"}}
    destinations:
      - name: down
        type: mllp
        host: 127.0.0.1
        port: {down.port}
        retry: {{max_attempts: 20, backoff_seconds: 0.3, max_backoff_seconds: 0.3}}
""",
        )
        eng = fresh_engine(cfg)
        conn = MllpConnection(eng.adt_port)
        for cid in ("F1", "F2", "F3"):
            assert ack_fields(conn.send(adt(cid, "P7", cid)))["MSA"][1] == "AA"
        conn.close()
        assert down.wait_for(["F1"], timeout=10)
        time.sleep(1.0)  # F1 is being retried; F2 and F3 must wait for it
        assert down.sequence("P7") == ["F1"] * len(down.sequence("P7"))
        down.answer("AA", ["F1"])
        assert down.wait_for(["F1", "F2", "F3"], timeout=20)
        got = down.sequence("P7")
        collapsed = [c for i, c in enumerate(got) if i == 0 or got[i - 1] != c]
        assert collapsed == ["F1", "F2", "F3"], got
    copies = eng.query(
        "messages", "select ordering_key, seq, source_message_id from messages where channel = 'outbound'"
    )
    assert {c["ordering_key"] for c in copies} == {"NORTH|P7"}  # issuer|value of the patient identifier
    assert all(c["seq"] == c["source_message_id"] for c in copies)


def test_after_processing_never_answers_aa_to_the_resend_of_a_message_that_was_not_applied(tmp_path, fresh_engine):
    mappings = strict_mappings(tmp_path)
    eng = fresh_engine(adt_config(tmp_path, mappings, ack_mode="after_processing"))
    conn = MllpConnection(eng.adt_port)
    bad = adt("R1", "P9", "Resent", patient_class="Z")
    first = ack_fields(conn.send(bad))
    assert first["MSA"][1] == "AE"
    again = ack_fields(conn.send(bad))  # the sender resends, as AE asks it to
    assert again["MSA"][1] == "AE"  # still not applied: never AA
    assert eng.query("clinical", "select count(*) as n from patient where mrn = 'P9'")[0]["n"] == 0
    learn_class_z(mappings)  # the analyst fixes the table; the next resend goes through
    eng.stop()
    eng = fresh_engine(eng.config)  # same data directory, the fixed table loaded
    conn = MllpConnection(eng.adt_port)
    assert ack_fields(conn.send(bad))["MSA"][1] == "AA"
    conn.close()
    assert eng.query("clinical", "select given_name from patient where mrn = 'P9'") == [{"given_name": "Resent"}]
    rows = eng.query("messages", "select status, flags, seq, id from messages where control_id = 'R1' order by id")
    assert [r["status"] for r in rows] == ["ERROR", "ERROR", "SENT"]
    assert all(r["flags"] == "resend_of_failed" and r["seq"] == rows[0]["id"] for r in rows[1:])


def test_a_resend_of_a_message_still_in_processing_waits_for_its_result(tmp_path, fresh_engine):
    with Downstream(ack_delay_seconds=1.5) as down:
        cfg = config_file(
            tmp_path,
            f"""
stores:
  messages: {{url: "${{ENGINE_MESSAGE_STORE_URL}}"}}
mappings_dir: {ROOT / "mappings"}
channels:
  - name: adt
    source: {{type: mllp, port: "${{ENGINE_ADT_PORT}}", ack_mode: after_processing, result_timeout_seconds: 0.5}}
    destinations:
      - {{name: down, type: mllp, host: 127.0.0.1, port: {down.port}}}
""",
        )
        eng = fresh_engine(cfg)
        conn = MllpConnection(eng.adt_port)
        msg = adt("W1", "P3", "Waits")
        assert ack_fields(conn.send(msg))["MSA"][1] == "AE"  # not done within 0.5 s: AE, it continues
        for _ in range(20):  # the sender resends at once, as AE asks: each resend waits for the original
            if ack_fields(conn.send(msg))["MSA"][1] == "AA":
                break
        conn.close()
        status = eng.query("messages", "select status from messages where control_id = 'W1' order by id")
        assert status[0]["status"] == "SENT"  # AA only once the original was delivered
        assert all(s["status"] == "FILTERED" for s in status[1:])
        assert down.counts()["W1"] == 1
