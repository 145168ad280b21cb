"""Intake that tells the sender the truth: byte order marks, bytes that are not the declared
character set, and paths naming segments that do not exist, through `engine send`, MLLP
sockets and `engine check`, as users and feeds meet them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import ROOT, MllpConnection, ack_fields, config_file

INTAKE = ROOT / "tests" / "fixtures" / "hl7v2" / "intake"


def intake(name: str) -> bytes:
    return (INTAKE / name).read_bytes()


def message_row(engine, control_id: str) -> dict:
    rows = engine.query("messages", "select * from messages where control_id = :c", c=control_id)
    assert len(rows) == 1, rows
    return rows[0]


# -- byte order marks -----------------------------------------------------------------------------
def test_engine_send_delivers_files_that_each_start_with_a_utf8_byte_order_mark(engine):
    out = engine.cli("send", "--port", str(engine.adt_port), str(INTAKE / "two_files_with_bom_concatenated.hl7"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert [line.split()[1:3] for line in out.stdout.splitlines()] == [["SGH-BOM-0001", "AA"], ["SGH-BOM-0002", "AA"]]
    rows = engine.wait_for(
        "clinical",
        "select mrn, family_name, given_name from patient where mrn in ('MRN700001', 'MRN700002') order by mrn",
        lambda r: len(r) == 2,
    )
    assert [(r["family_name"], r["given_name"]) for r in rows] == [("NØRGAARD", "SØREN"), ("ŻUREK", "ZOË")]
    assert not message_row(engine, "SGH-BOM-0002")["content"].startswith(b"\xef\xbb\xbf")  # the file's, not sent


def test_engine_send_refuses_a_utf16_file_and_says_how_to_convert_it(engine):
    out = engine.cli("send", "--port", str(engine.adt_port), str(INTAKE / "adt_a01_utf16.hl7"))
    assert out.returncode == 1
    assert out.stdout == ""  # nothing sent
    assert "UTF-16 text (byte order mark FF FE)" in out.stderr and "iconv -f UTF-16 -t UTF-8" in out.stderr


def test_a_frame_starting_with_a_byte_order_mark_is_stored_as_received_and_processed(engine):
    raw = intake("adt_a01_bom_ascii.hl7")  # MSH-18 ASCII: the mark is not ASCII, and must not matter
    conn = MllpConnection(engine.adt_port)
    try:
        assert ack_fields(conn.send(raw))["MSA"][1:3] == ["AA", "SGH-BOM-0003"]
    finally:
        conn.close()
    engine.wait_for("messages", "select 1 from messages where control_id = 'SGH-BOM-0003' and status = 'SENT'")
    row = message_row(engine, "SGH-BOM-0003")
    assert row["content"] == raw  # kept byte for byte, mark included
    assert row["ordering_key"] == "SUNRISE_GH|MRN700003"
    patient = engine.query("clinical", "select family_name, city from patient where mrn = 'MRN700003'")
    assert patient == [{"family_name": "HALVORSEN", "city": "MAPLETON"}]


# -- bytes that are not the declared character set -------------------------------------------------
def test_bytes_invalid_for_the_channel_charset_are_stored_as_error_and_answered_ae_with_the_byte_offset(engine):
    raw = intake("adt_a01_cp1252_undeclared.hl7")  # MSH-18 empty: the channel's utf-8 applies
    offset = raw.index(b"\x92")
    conn = MllpConnection(engine.adt_port)
    try:
        answer = conn.send(raw)
    finally:
        conn.close()
    row = message_row(engine, "SGH-CP-0001")  # committed before the answer: there without waiting
    assert row["status"] == "ERROR" and row["content"] == raw
    assert row["error"] == f"byte {offset} (PID-5) is not valid utf-8, the channel's charset (MSH-18 is empty)"
    ack = ack_fields(answer)
    assert ack["MSA"][1:3] == ["AE", "SGH-CP-0001"]  # table 0008: an error in the message, for the sender to fix
    assert ack["ERR"][2] == "MSH^1^18" and ack["ERR"][3] == "102^Data type error^HL70357"
    assert ack["ERR"][8] == row["error"]
    assert b"SULLIVAN" not in answer and "SULLIVAN" not in (engine.workdir / "engine.log").read_text("latin-1")


def test_engine_send_shows_ae_for_bytes_that_are_not_the_charset_msh_18_declares(engine):
    file = INTAKE / "adt_a01_declared_utf8_sent_latin1.hl7"
    offset = file.read_bytes().index("Ü".encode("latin-1"))
    out = engine.cli("send", "--port", str(engine.adt_port), str(file))
    assert out.returncode == 1
    line = out.stdout.strip()
    assert line.startswith(f"{file}#1 SGH-L1-0001 AE byte {offset} (PID-5) is not valid utf-8"), line
    assert "MSH-18 declares" in line and "LLER" not in line
    assert message_row(engine, "SGH-L1-0001")["status"] == "ERROR"


# -- segment names in paths -----------------------------------------------------------------------
MAPPING = """\
description: ADT -> patient, with a slip of the keyboard in one path
applies_when: {path: MSH-9.1, equals: ADT}
records:
  - target: clinical.patient
    key: [mrn, mrn_issuer]
    fields:
      mrn: PID-3.1
      family_name: PID-5.1.1
      city: PDI-11.3
      middle_name: ZPI-2
      mrn_issuer: PID-3.4.1
"""


def test_engine_check_names_each_unknown_segment_in_filters_ordering_keys_and_mappings(tmp_path):
    (tmp_path / "adt_patient.yaml").write_text(MAPPING)
    cfg = config_file(
        tmp_path,
        textwrap.dedent(
            f"""\
            stores:
              messages: {{url: "sqlite:///{tmp_path}/m.db"}}
              clinical: {{url: "sqlite:///{tmp_path}/c.db"}}
            mappings_dir: {tmp_path}
            channels:
              - name: adt
                source: {{type: mllp, port: 7011}}
                filter:
                  all:
                    - {{path: MHS-9.1, equals: ADT}}
                    - {{path: ZPI-2, not_equals: TEST}}
                ordering_key: PDI-3.1
                destinations:
                  - {{name: clinical, type: store, store: clinical, mapping: adt_patient}}
            """
        ),
    )
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "check", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stdout + out.stderr
    problems = [line.strip() for line in out.stderr.splitlines()]
    assert problems == [  # ZPI, a local Z-segment, is fine
        "configuration invalid (3 problem(s)):",
        f"{cfg}:10: channels[0].filter.all[0].path: unknown segment 'MHS' (did you mean MSH?)",
        f"{cfg}:12: channels[0].ordering_key: unknown segment 'PDI' (did you mean PID?)",
        f"{tmp_path / 'adt_patient.yaml'}:9: records[0].fields.city: unknown segment 'PDI' (did you mean PID?)",
    ]


def test_a_segment_without_a_valid_id_is_answered_ar_with_its_sequence_not_aa_then_error(engine):
    msg = (
        b"MSH|^~\\&|REG|NORTH|ENGINE|HUB|20260101120000||ADT^A08^ADT_A01|BADSEG-1|P|2.5.1\r"
        b"EVN|A08|20260101120000\r"
        b"PID|1||P1^^^NORTH^MR||Tester^Pat\r"
        b"pv1|1|O|CLINIC\r"
    )
    conn = MllpConnection(engine.adt_port)
    ack = ack_fields(conn.send(msg))
    conn.close()
    assert ack["MSA"][1] == "AR"
    assert ack["ERR"][3].startswith("100")  # HL7 table 0357: segment sequence error
    rows = engine.query("messages", "select status, error from messages where control_id = 'BADSEG-1'")
    assert rows[0]["status"] == "ERROR" and "segment 4" in rows[0]["error"]  # stored before the answer
