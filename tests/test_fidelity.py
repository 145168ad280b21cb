"""Clinical data fidelity: what reaches the stores is what the sender meant, or a visible error."""

from __future__ import annotations

from conftest import MllpConnection, ack_fields, adt_config


def adt(control_id: str, mrn: str, visit: str, given: str) -> bytes:
    return (
        f"MSH|^~\\&|REG|NORTH|ENGINE|HUB|20260101120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r"
        f"EVN|A08|20260101120000\r"
        f"PID|1||{mrn}^^^NORTH^MR||Tester^{given}||19800101|F\r"
        f"PV1|1|O|CLINIC||||||||||||||||{visit}^^^NORTH^VN|||||||||||||||||||||||||20260101080000|20260101090000\r"
    ).encode()


def test_a_visit_number_reused_for_another_patient_is_an_error_and_never_moves_the_visit(tmp_path, fresh_engine):
    cfg = adt_config(tmp_path)
    eng = fresh_engine(cfg)
    conn = MllpConnection(eng.adt_port)
    assert ack_fields(conn.send(adt("V-1", "P1", "V100", "First")))["MSA"][1] == "AA"
    assert ack_fields(conn.send(adt("V-2", "P2", "V100", "Second")))["MSA"][1] == "AA"
    assert ack_fields(conn.send(adt("V-3", "P1", "V100", "Again")))["MSA"][1] == "AA"  # the owner still updates it
    conn.close()
    rows = eng.wait_for(
        "messages",
        "select control_id, status, error from messages order by id",
        lambda r: len(r) == 3 and all(x["status"] in ("SENT", "ERROR") for x in r),
    )
    by = {r["control_id"]: r for r in rows}
    assert by["V-1"]["status"] == by["V-3"]["status"] == "SENT"
    assert by["V-2"]["status"] == "ERROR"
    assert "encounter" in by["V-2"]["error"] and "another patient" in by["V-2"]["error"]
    assert "P2" not in by["V-2"]["error"]  # the reason names the table, never a value
    assert eng.query("clinical", "select mrn from encounter where visit_number = 'V100'") == [{"mrn": "P1"}]
    assert eng.query("pm", "select mrn from visit where visit_number = 'V100'") == [{"mrn": "P1"}]
