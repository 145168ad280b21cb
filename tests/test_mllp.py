"""The engine over a real MLLP socket: ACKs, NACKs, storage before ACK, mapping into both stores."""

from __future__ import annotations

import json
import re
import threading

import pytest
from conftest import MllpConnection, ack_fields, config_file, fixture_bytes


def seg_field(message: bytes, segment: str, n: int, component: int | None = None) -> str:
    """Field ``n`` of the first ``segment`` (HL7 numbering), first repetition, optional component."""
    for seg in re.split(rb"\r\n|\r|\n", message):
        parts = seg.decode("latin-1").split("|")
        if parts[0] == segment:
            if segment == "MSH":
                parts.insert(1, "|")
            value = parts[n].split("~")[0] if n < len(parts) else ""
            return value.split("^")[component - 1] if component else value
    raise KeyError(segment)


def with_control_id(message: bytes, control_id: str) -> bytes:
    lines = re.split(rb"(\r\n|\r|\n)", message)
    parts = lines[0].split(b"|")
    parts[9] = control_id.encode()
    lines[0] = b"|".join(parts)
    return b"".join(lines)


def test_an_adt_a01_is_acked_and_lands_in_both_stores_linked_by_mrn(engine):
    msg = fixture_bytes("adt_a01.hl7")
    conn = MllpConnection(engine.adt_port)
    ack = ack_fields(conn.send(msg))
    conn.close()
    assert ack["MSA"][1] == "AA"
    assert ack["MSA"][2] == seg_field(msg, "MSH", 10)
    mrn = seg_field(msg, "PID", 3, 1)
    visit = seg_field(msg, "PV1", 19, 1)
    patients = engine.wait_for("clinical", "select * from patient where mrn = :m", m=mrn, timeout=2)
    assert patients[0]["family_name"] == seg_field(msg, "PID", 5, 1)
    regs = engine.wait_for("pm", "select * from registration where mrn = :m", m=mrn, timeout=2)
    assert regs[0]["account_number"] == seg_field(msg, "PID", 18, 1)
    assert engine.wait_for("clinical", "select * from encounter where visit_number = :v", v=visit)[0]["mrn"] == mrn
    assert engine.wait_for("pm", "select * from visit where visit_number = :v", v=visit)[0]["mrn"] == mrn
    assert engine.wait_for("pm", "select * from coverage where mrn = :m", m=mrn)
    assert len(engine.wait_for("clinical", "select * from allergy where mrn = :m", m=mrn)) >= 2
    assert len(engine.wait_for("clinical", "select * from diagnosis where mrn = :m", m=mrn)) >= 2


def test_the_ack_swaps_sender_and_receiver_and_names_the_trigger(engine):
    msg = with_control_id(fixture_bytes("adt_a01.hl7"), "ACKSHAPE1")
    conn = MllpConnection(engine.adt_port)
    ack = ack_fields(conn.send(msg))
    conn.close()
    msh = ack["MSH"]
    assert (msh[3], msh[4]) == (seg_field(msg, "MSH", 5), seg_field(msg, "MSH", 6))
    assert (msh[5], msh[6]) == (seg_field(msg, "MSH", 3), seg_field(msg, "MSH", 4))
    assert msh[9] == "ACK^A01^ACK"
    assert msh[12] == seg_field(msg, "MSH", 12)
    assert ack["MSA"][1:3] == ["AA", "ACKSHAPE1"]
    assert "ERR" not in ack


def test_an_oru_puts_reports_and_every_observation_in_the_clinical_store(engine):
    msg = fixture_bytes("oru_r01.hl7")
    conn = MllpConnection(engine.lab_port)
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    obx_count = len(re.findall(rb"(?:^|[\r\n])OBX\|", msg))
    obr_count = len(re.findall(rb"(?:^|[\r\n])OBR\|", msg))
    mrn = seg_field(msg, "PID", 3, 1)
    obs = engine.wait_for("clinical", "select * from observation where mrn = :m", lambda r: len(r) == obx_count, m=mrn)
    assert any(o["value_numeric"] is not None and o["units"] for o in obs)
    reports = engine.wait_for("clinical", "select * from diagnostic_report where mrn = :m", m=mrn)
    assert len(reports) == obr_count


@pytest.mark.parametrize("name", ["oru_r01_lf.hl7", "oru_r01_v28.hl7"])
def test_real_feed_variants_are_accepted_and_mapped(engine, name):
    msg = fixture_bytes(name)
    conn = MllpConnection(engine.lab_port)
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    mrn = seg_field(msg, "PID", 3, 1)
    engine.wait_for("clinical", "select * from observation where mrn = :m", m=mrn)


@pytest.mark.parametrize("name", ["adt_a01_crlf.hl7", "adt_a01_latin1.hl7", "adt_a01_utf8.hl7"])
def test_separators_and_character_sets_are_decoded_as_msh_18_says(engine, name):
    msg = fixture_bytes(name)
    conn = MllpConnection(engine.adt_port)
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    mrn = seg_field(msg, "PID", 3, 1)
    charset = seg_field(msg, "MSH", 18)
    codec = "latin-1" if charset == "8859/1" else "utf-8"
    family = re.search(rb"(?:^|[\r\n])PID\|(?:[^|]*\|){4}([^|^]*)", msg).group(1).decode(codec)
    rows = engine.wait_for("clinical", "select family_name from patient where mrn = :m", m=mrn)
    assert rows[0]["family_name"] == family


@pytest.mark.parametrize(
    "name, code, err_code",
    [
        ("garbage.bin", "AR", "100"),
        ("no_msh.hl7", "AR", "100"),
        ("bad_version.hl7", "AR", "203"),
        ("empty_control_id.hl7", "AR", "101"),
    ],
)
def test_bad_input_gets_a_nack_with_an_err_segment_and_the_connection_stays_usable(engine, name, code, err_code):
    conn = MllpConnection(engine.adt_port)
    ack = ack_fields(conn.send(fixture_bytes(name)))
    assert ack["MSA"][1] == code
    assert ack["ERR"][3].split("^")[0] == err_code
    assert ack["ERR"][3].split("^")[2] == "HL70357"
    # the same connection still works
    good = with_control_id(fixture_bytes("adt_a04.hl7"), f"AFTER-{name}")
    assert ack_fields(conn.send(good))["MSA"][1] == "AA"
    conn.close()


def test_rejected_input_is_kept_visibly_as_error(engine):
    conn = MllpConnection(engine.adt_port)
    conn.send(fixture_bytes("bad_version.hl7"))
    conn.close()
    out = engine.cli("messages", "--config", str(engine.config), "--status", "ERROR", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert any("version" in (r["error"] or "") for r in rows)


def test_an_oversized_message_is_refused_and_the_next_one_is_accepted(engine):
    big = fixture_bytes("adt_a04.hl7").rstrip(b"\r") + b"\rZXX|" + b"A" * (1024 * 1024 + 10) + b"\r"
    conn = MllpConnection(engine.adt_port)
    ack = ack_fields(conn.send(big))
    assert ack["MSA"][1] == "AR"
    assert ack["MSA"][2] == seg_field(big, "MSH", 10)
    assert ack_fields(conn.send(with_control_id(fixture_bytes("adt_a04.hl7"), "AFTER-BIG")))["MSA"][1] == "AA"
    conn.close()


def test_a_truncated_frame_is_dropped_without_an_ack_and_the_listener_lives_on(engine):
    before = engine.query("messages", "select count(*) as n from messages")[0]["n"]
    conn = MllpConnection(engine.adt_port)
    conn.send_raw(b"\x0b" + fixture_bytes("truncated.hl7"))
    conn.close()
    conn = MllpConnection(engine.adt_port)
    assert ack_fields(conn.send(with_control_id(fixture_bytes("adt_a04.hl7"), "AFTER-TRUNC")))["MSA"][1] == "AA"
    conn.close()
    after = engine.query("messages", "select count(*) as n from messages")[0]["n"]
    assert after == before + 1


def test_junk_between_frames_is_ignored(engine):
    conn = MllpConnection(engine.adt_port)
    conn.send_raw(b"hello\r\n\x00\xff")
    assert ack_fields(conn.send(with_control_id(fixture_bytes("adt_a04.hl7"), "AFTER-JUNK")))["MSA"][1] == "AA"
    conn.close()


def test_many_concurrent_connections_each_get_every_ack(engine):
    base = fixture_bytes("adt_a08.hl7")
    results: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = MllpConnection(engine.adt_port)
        for j in range(10):
            code = ack_fields(conn.send(with_control_id(base, f"CONC-{k}-{j}")))["MSA"][1]
            with lock:
                results.append(code)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results.count("AA") == 200


def test_a_resend_is_acked_but_not_applied_twice_and_a_reused_control_id_is_flagged(engine):
    msg = with_control_id(fixture_bytes("adt_a03.hl7"), "DUP-1")
    conn = MllpConnection(engine.adt_port)
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    changed = msg.replace(b"EVN|A03|", b"EVN|A03|1", 1) if b"EVN|A03|" in msg else msg + b"ZZZ|1\r"
    assert ack_fields(conn.send(changed))["MSA"][1] == "AA"
    conn.close()
    rows = engine.wait_for(
        "messages",
        "select id, status, duplicate_of, flags from messages where control_id = 'DUP-1' order by id",
        lambda r: len(r) == 3 and r[2]["status"] not in ("RECEIVED",),
    )
    assert rows[0]["duplicate_of"] is None and rows[0]["status"] in ("SENT", "QUEUED", "TRANSFORMED")
    assert rows[1]["status"] == "FILTERED" and rows[1]["duplicate_of"] == rows[0]["id"]
    assert rows[2]["duplicate_of"] is None and "control_id_reused" in rows[2]["flags"]


def test_content_is_stored_byte_for_byte_and_reading_it_is_audited(engine):
    msg = with_control_id(fixture_bytes("adt_a01_latin1.hl7"), "AUDIT-1")
    conn = MllpConnection(engine.adt_port)
    conn.send(msg)
    conn.close()
    mid = engine.query("messages", "select id from messages where control_id = 'AUDIT-1'")[0]["id"]
    stored = engine.query("messages", "select content from messages where id = :i", i=mid)[0]["content"]
    assert stored == msg
    out = engine.cli("messages", "--config", str(engine.config), "--content", str(mid), "--purpose", "test")
    assert out.returncode == 0, out.stderr
    assert engine.query("messages", "select * from content_access where message_id = :i", i=mid)


def test_a_message_the_channel_filter_drops_is_acked_and_filtered(engine):
    msg = with_control_id(fixture_bytes("adt_a04.hl7"), "FILTER-1")
    conn = MllpConnection(engine.lab_port)  # the lab channel takes ORU only
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    rows = engine.wait_for(
        "messages",
        "select status, error from messages where control_id = 'FILTER-1'",
        lambda r: r and r[0]["status"] != "RECEIVED",
    )
    assert rows[0]["status"] == "FILTERED" and "filter" in rows[0]["error"]


AFTER_PROCESSING = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: adt-strict
    source: {type: mllp, port: "${ENGINE_ADT_PORT}", ack_mode: after_processing, idle_timeout_seconds: 1}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: adt_clinical}
"""


def test_after_processing_acks_reflect_the_mapping_result(fresh_engine, tmp_path):
    eng = fresh_engine(config_file(tmp_path, AFTER_PROCESSING))
    conn = MllpConnection(eng.adt_port)
    good = fixture_bytes("adt_a01.hl7")
    assert ack_fields(conn.send(good))["MSA"][1] == "AA"
    # by the time AA arrives, the patient is already in the store
    assert eng.query("clinical", "select mrn from patient where mrn = :m", m=seg_field(good, "PID", 3, 1))
    lines = fixture_bytes("adt_a04.hl7").split(b"\r")
    lines = [b"PID|1||" + b"|".join(s.split(b"|")[4:]) if s.startswith(b"PID|") else s for s in lines]
    ack = ack_fields(conn.send(b"\r".join(lines)))
    assert ack["MSA"][1] == "AE"
    assert "mrn" in ack["MSA"][3].lower()
    assert ack["ERR"][1].split("^")[3].split("&")[0] == "101"  # v2.3: ERR-1 with table 0357 code
    conn.close()


def test_an_idle_connection_is_closed(fresh_engine, tmp_path):
    eng = fresh_engine(config_file(tmp_path, AFTER_PROCESSING))
    conn = MllpConnection(eng.adt_port, timeout=5)
    assert conn.sock.recv(10) == b""  # closed by the engine after 1 s of silence
    conn.close()


def test_an_a40_merges_the_old_mrn_into_the_survivor_in_both_stores(fresh_engine):
    eng = fresh_engine()
    a01 = fixture_bytes("adt_a01.hl7")
    a40 = fixture_bytes("adt_a40.hl7")
    survivor, old = seg_field(a40, "PID", 3, 1), seg_field(a40, "MRG", 1, 1)
    # the old MRN had its own registration and visit before the merge
    old_a04 = (
        with_control_id(fixture_bytes("adt_a01.hl7"), "OLD-REG")
        .replace(survivor.encode(), old.encode())
        .replace(seg_field(a01, "PV1", 19, 1).encode(), b"V-OLD-1")
    )
    conn = MllpConnection(eng.adt_port)
    for m in (a01, old_a04):
        assert ack_fields(conn.send(m))["MSA"][1] == "AA"
    eng.wait_for("pm", "select * from visit where visit_number = 'V-OLD-1'")
    assert ack_fields(conn.send(a40))["MSA"][1] == "AA"
    conn.close()
    for store, table in (("clinical", "patient"), ("pm", "registration")):
        rows = eng.wait_for(
            store, f"select mrn, merged_into from {table} where mrn = :o", lambda r: r and r[0]["merged_into"], o=old
        )
        assert rows[0]["merged_into"] == survivor
    for store, table in (("clinical", "encounter"), ("pm", "visit")):
        assert eng.query(store, f"select mrn from {table} where visit_number = 'V-OLD-1'")[0]["mrn"] == survivor
    assert eng.query("clinical", "select * from patient_merge where old_mrn = :o", o=old)


STRICT = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: strict-lab
    validation: strict
    source: {type: mllp, port: "${ENGINE_LAB_PORT}"}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: oru_clinical}
  - name: lenient
    source: {type: mllp, port: "${ENGINE_ADT_PORT}"}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: oru_clinical}
"""


def test_strict_validation_uses_hl7apy_structures_and_errors_what_it_rejects(fresh_engine, tmp_path):
    eng = fresh_engine(config_file(tmp_path, STRICT))
    good = fixture_bytes("oru_r01.hl7")
    # an ORU_R01 without its required OBR breaks the structure; the lenient channel takes it anyway
    broken = b"\r".join(s for s in with_control_id(good, "STRICT-BAD").split(b"\r") if not s.startswith(b"OBR|"))
    for port in (eng.lab_port, eng.adt_port):
        conn = MllpConnection(port)
        assert ack_fields(conn.send(good))["MSA"][1] == "AA"
        assert ack_fields(conn.send(broken))["MSA"][1] == "AA"
        conn.close()
    rows = eng.wait_for(
        "messages",
        "select channel, control_id, status, error from messages where control_id = 'STRICT-BAD'",
        lambda r: len(r) == 2 and all(x["status"] != "RECEIVED" for x in r),
    )
    by_channel = {r["channel"]: r for r in rows}
    assert by_channel["strict-lab"]["status"] == "ERROR" and "strict validation" in by_channel["strict-lab"]["error"]
    assert by_channel["lenient"]["status"] != "ERROR"
    ok = eng.wait_for(
        "messages", "select status from messages where channel = 'strict-lab' and control_id != 'STRICT-BAD'"
    )
    assert ok[0]["status"] == "SENT"


def test_a_resend_pipelined_in_the_same_write_is_still_a_duplicate(engine):
    msg = with_control_id(fixture_bytes("adt_a04.hl7"), "PIPE-DUP")
    conn = MllpConnection(engine.adt_port)
    conn.send_raw((b"\x0b" + msg + b"\x1c\r") * 2)
    acks = [ack_fields(conn.read_frame()), ack_fields(conn.read_frame())]
    conn.close()
    assert [a["MSA"][1] for a in acks] == ["AA", "AA"]
    rows = engine.wait_for(
        "messages",
        "select id, status, duplicate_of from messages where control_id = 'PIPE-DUP' order by id",
        lambda r: len(r) == 2,
    )
    assert rows[1]["status"] == "FILTERED" and rows[1]["duplicate_of"] == rows[0]["id"]


def test_bytes_that_do_not_match_the_declared_charset_are_stored_errored_and_answered_ae(engine):
    latin1 = fixture_bytes("adt_a01_latin1.hl7").replace(b"|8859/1", b"|UNICODE UTF-8")
    msg = with_control_id(latin1, "WRONG-CHARSET")
    conn = MllpConnection(engine.adt_port)
    assert ack_fields(conn.send(msg))["MSA"][1] == "AE"  # stored first, and the sender is told
    conn.close()
    rows = engine.wait_for(
        "messages",
        "select status, error, content from messages where control_id = 'WRONG-CHARSET'",
        lambda r: r and r[0]["status"] != "RECEIVED",
    )
    assert rows[0]["status"] == "ERROR" and "utf-8" in rows[0]["error"]
    assert rows[0]["content"] == msg


def test_a_hostile_sender_gets_an_answer_for_every_frame_and_the_listener_survives(engine):
    import random

    rnd = random.Random(20261127)
    seeds = [fixture_bytes(n) for n in ("adt_a01.hl7", "oru_r01.hl7", "adt_a08.hl7", "garbage.bin", "no_msh.hl7")]
    conn = MllpConnection(engine.adt_port, timeout=20)
    codes = []
    for _k in range(300):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 12)):
            op = rnd.random()
            pos = rnd.randrange(len(data)) if data else 0
            if op < 0.4 and data:
                data[pos] = rnd.randrange(256)
            elif op < 0.7:
                data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 20)))
            elif data:
                del data[pos : pos + rnd.randint(1, 40)]
        payload = bytes(data).replace(b"\x0b", b"").replace(b"\x1c", b"")  # keep the framing intact
        ack = ack_fields(conn.send(payload))
        codes.append(ack["MSA"][1])
    conn.close()
    assert len(codes) == 300 and set(codes) <= {"AA", "AE", "AR"}
    # still alive and correct afterwards
    conn = MllpConnection(engine.adt_port)
    assert ack_fields(conn.send(with_control_id(fixture_bytes("adt_a04.hl7"), "AFTER-FUZZ")))["MSA"][1] == "AA"
    conn.close()


CHANNEL_CHARSET = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: latin1-feed
    source: {type: mllp, port: "${ENGINE_ADT_PORT}", charset: latin-1}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: adt_clinical}
  - name: other
    source: {type: mllp, port: "${ENGINE_LAB_PORT}"}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: oru_clinical}
"""


def test_a_channel_charset_decodes_messages_without_msh_18(fresh_engine, tmp_path):
    eng = fresh_engine(config_file(tmp_path, CHANNEL_CHARSET))
    msg = fixture_bytes("adt_a01_latin1.hl7").replace(b"|8859/1", b"")  # no MSH-18: the channel says latin-1
    conn = MllpConnection(eng.adt_port)
    assert ack_fields(conn.send(msg))["MSA"][1] == "AA"
    conn.close()
    mrn = seg_field(msg, "PID", 3, 1)
    rows = eng.wait_for("clinical", "select family_name from patient where mrn = :m", m=mrn)
    assert rows[0]["family_name"] == seg_field(msg, "PID", 5, 1).encode("latin-1").decode("latin-1")
    assert "Ñ" in rows[0]["family_name"]
