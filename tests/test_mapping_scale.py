"""Mapping cost grows linearly with the message: a 16,000-OBX ORU maps completely and holds no one up.

Work is counted, never timed (the machine is shared; figures are in bench/mapping_scale.py):
the count is the number of Python lines run in the tokenizer and the mapping interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import ROOT, MllpConnection, ack_fields

import engine.formats.hl7 as hl7_module
import engine.transforms as transforms_package
from engine.channels.pipeline import ordering_key
from engine.formats import hl7
from engine.transforms import load_mapping

ORU = ROOT / "mappings" / "oru_clinical.yaml"
WATCHED = (hl7_module.__file__, str(Path(transforms_package.__file__).parent))


def oru(n: int, mrn: str = "MRN9000001", control_id: str = "SCALE-1") -> bytes:
    """One ORU^R01 (MSH, PID, PV1, ORC, one OBR, then ``n`` OBX with set ids and values 1..n)."""
    head = (
        f"MSH|^~\\&|SUNLAB|SUNRISE_GH|HIE_ENGINE|SUNRISE_GH|20240314093512||ORU^R01^ORU_R01|{control_id}|P|2.5.1\r"
        f"PID|1||{mrn}^^^SUNRISE_GH^MR||TESTPATIENT^SCALE||19660115|F\r"
        f"PV1|1|E|ED^07^^SUNRISE_GH||||||||MED|||||||||V{control_id}^^^SUNRISE_GH^VN\r"
        f"ORC|RE|ORD{control_id}^EHR|LAB{control_id}^SUNLAB||CM\r"
        f"OBR|1|ORD{control_id}^EHR|LAB{control_id}^SUNLAB|ADMLAB^Admission panel^L|||20240314071500"
        "|||||||||||||||20240314093000|||F\r"
    )
    obx = "".join(f"OBX|{i}|NM|2345-7^Glucose^LN||{i}.5|mg/dL|70-99|N|||F\r" for i in range(1, n + 1))
    return (head + obx).encode("ascii")


def lines_run(fn) -> int:
    """How many Python lines ``fn()`` runs in engine/formats/hl7.py and engine/transforms/ (loops count each turn)."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame, event, arg):
        name = frame.f_code.co_filename
        return local if name == WATCHED[0] or name.startswith(WATCHED[1]) else None

    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


def test_receiving_parsing_and_mapping_twice_the_obx_take_about_twice_the_work():
    mapping = load_mapping(ORU)

    def receive_parse_and_map(raw: bytes) -> None:  # what the engine does with one message
        hl7.read_header(raw)
        ordering_key(raw, "PID-3.1")
        mapping.run(hl7.Message(hl7.decode(raw)))

    small_message, large_message = oru(1000), oru(2000)
    small = lines_run(lambda: receive_parse_and_map(small_message))
    large = lines_run(lambda: receive_parse_and_map(large_message))
    assert large <= 2.2 * small, f"doubling the OBX multiplied the work by {large / small:.2f}"


def test_a_16000_obx_result_maps_to_16000_observations_each_with_its_own_set_id_and_value():
    records = load_mapping(ORU).run(hl7.Message(hl7.decode(oru(16000))))
    observations = [r.values for r in records if r.target == "clinical.observation"]
    assert len(observations) == 16000
    assert [o["set_id"] for o in observations] == [str(i) for i in range(1, 16001)]
    assert [o["value_numeric"] for o in observations] == [i + 0.5 for i in range(1, 16001)]
    assert {(o["filler_order_number"], o["mrn"]) for o in observations} == {("LABSCALE-1", "MRN9000001")}
    assert [r.values["filler_order_number"] for r in records if r.target == "clinical.diagnostic_report"] == [
        "LABSCALE-1"
    ]


def test_a_16000_obx_result_and_a_small_one_behind_it_both_land_in_the_clinical_store(fresh_engine):
    eng = fresh_engine()
    conn = MllpConnection(eng.lab_port, timeout=60)
    try:
        big = oru(16000, mrn="MRN9000002", control_id="SCALE-BIG")
        assert len(big) < 1024 * 1024
        assert ack_fields(conn.send(big))["MSA"][1:3] == ["AA", "SCALE-BIG"]
        assert ack_fields(conn.send(oru(1, mrn="MRN9000003", control_id="SCALE-SMALL")))["MSA"][1] == "AA"
    finally:
        conn.close()
    # a deadline against hanging, not a speed requirement: the old quadratic code also passes, slowly
    rows = eng.wait_for(
        "messages",
        "select control_id, status from messages where control_id like 'SCALE-%' order by control_id",
        lambda r: len(r) == 2 and all(x["status"] in ("SENT", "ERROR") for x in r),
        timeout=300,
    )
    assert rows == [{"control_id": "SCALE-BIG", "status": "SENT"}, {"control_id": "SCALE-SMALL", "status": "SENT"}]
    counts = eng.query(
        "clinical",
        "select mrn, count(*) as n, count(distinct set_id) as ids from observation group by mrn order by mrn",
    )
    assert counts == [{"mrn": "MRN9000002", "n": 16000, "ids": 16000}, {"mrn": "MRN9000003", "n": 1, "ids": 1}]


IDENTIFIERS = str(Path(transforms_package.__file__).parent / "identifiers.py")


def test_the_patient_identifier_is_chosen_once_per_result_however_many_observations_use_it():
    """``{use: mrn}`` in every observation reads PID-3, which lies outside the OBR groups: its
    value is the same for each OBX, so the identifier is chosen once per mapping run, not
    once per OBX (engine.transforms.expressions.Compiler.define)."""
    mapping = load_mapping(ORU)
    counted: list[int] = []
    for n in (1, 200):
        message = hl7.Message(hl7.decode(oru(n)))
        count = 0

        def local(frame, event, arg):
            nonlocal count
            count += event == "line"
            return local

        sys.settrace(lambda frame, event, arg: local if frame.f_code.co_filename == IDENTIFIERS else None)
        try:
            records = mapping.run(message)
        finally:
            sys.settrace(None)
        assert {r.values["mrn"] for r in records if "mrn" in r.values} == {"MRN9000001"}
        counted.append(count)
    assert counted[1] == counted[0], f"1 OBX: {counted[0]} lines choosing identifiers, 200 OBX: {counted[1]}"
