"""Scheduling (SIU) end to end: a real ``engine run`` with the ``scheduling`` channel, the
fixtures of ``tests/fixtures/hl7v2/scheduling/`` sent over MLLP, the appointment read back
from the clinical and the PM store column by column.

A booking lands once in each store with every column; a reschedule updates the same row; a
cancellation keeps it with status cancelled; a resend or a reprocess of the booking never
brings it back; resources that have no column are warnings (where, never what); v2.3 (SCH-1
only, LF), v2.7 and v2.8 (TQ1, no SCH-11) feeds and a no-show land as the mappings say.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest
from conftest import (
    FIXTURES,
    ROOT,
    config_file,
    engine_check,
    operator_messages,
    sample_channel,
    send_and_settle,
)
from services import free_port

from engine.stores.records_store import RecordStore
from engine.stores.schema import columns_of
from engine.transforms import load_mapping

# The channel(s) as config/channels.yaml has them.
CHANNEL = sample_channel("scheduling")
CONFIG = (
    """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
"""
    + CHANNEL
)
MANAGED = ("id", "updated_at", "last_message_id", "last_seq", "fhir_id")
A = {"filler_appointment_id": "SA-2024-0515-01", "filler_appointment_namespace": "PMSCHED"}
D = {"filler_appointment_id": "SA-2024-0611-03", "filler_appointment_namespace": "2.16.840.1.113883.3.9999.20"}


def fixture(name: str) -> bytes:
    return (FIXTURES / "scheduling" / name).read_bytes()


@pytest.fixture
def sched(tmp_path, fresh_engine):
    """An engine with the scheduling channel only, on a free port (``sched.port``)."""
    port = free_port()
    eng = fresh_engine(config_file(tmp_path, CONFIG), ENGINE_SCHEDULING_PORT=str(port))
    eng.port = port
    return eng


def send(eng, name: str, control_id: str, *, final: str = "SENT") -> dict[str, list[str]]:
    """Send one fixture, check its ACK, wait until it is ``final``; the ACK's fields."""
    return send_and_settle(eng, eng.port, fixture(name), control_id, final)


def messages(eng) -> list[dict]:
    return operator_messages(eng)


def appointments(eng, kind: str, **where) -> list[dict]:
    store = RecordStore(f"sqlite:///{eng.data}/{kind}.db", kind)
    try:
        return store.rows("appointment", **where)
    finally:
        store.dispose()


def columns(row: dict) -> dict:
    """A row without the surrogate id and the writer's bookkeeping."""
    return {k: v for k, v in row.items() if k not in MANAGED}


BOOKED_A = {
    **A,
    "mrn": "MRN820001",
    "mrn_issuer": "LAKESIDE_CL",
    "placer_appointment_id": "EHR-RQ-55012",
    "placer_appointment_namespace": "EHR",
    "visit_number": "V240515-0001",
    "status": "booked",
    "event": "S12",
    "start_at": datetime(2024, 5, 15, 16, 30, tzinfo=UTC),  # 09:30 Pacific (PDT), sent without offset
    "start_date": date(2024, 5, 15),
    "end_at": datetime(2024, 5, 15, 17, 0, tzinfo=UTC),
    "end_date": date(2024, 5, 15),
    "duration": 30.0,
    "duration_units": "MIN",
    "appointment_type_code": "FU30",
    "appointment_type_text": "Follow-up 30 min",
    "appointment_type_system": "LOCAL",
    "reason_code": "FOLLOWUP",
    "reason_text": "A follow up visit from a previous appointment",
    "reason_system": "HL70276",
    "event_reason_code": "PORTAL",
    "event_reason_text": "Booked via patient portal",
    "event_reason_system": "LOCAL",
    "service_code": "99213",
    "service_text": "Office visit, established patient, 20-29 min",
    "service_system": "CPT",
    "provider": "1600000001",
    "provider_name": "HOLLOWAY, PRIYA",
    "location": "LKCL-EXAM4",
    "location_facility": "LAKESIDE_CL",
    "resources": None,  # no mapping can fill it yet: the resources it would list are warnings
    "placer_order_number": "ORD-88120",
    "placer_order_namespace": "EHR",
    "notes": "Patient asks for a Portuguese interpreter.\nBring current medication list.",
}


def test_the_channel_and_both_mappings_pass_engine_check_against_the_store_columns(tmp_path):
    text = CONFIG
    for store in ("MESSAGE", "CLINICAL", "PM"):  # engine check runs without the engine's environment
        text = text.replace(f"${{ENGINE_{store}_STORE_URL}}", f"sqlite:///{tmp_path}/{store.lower()}.db")
    out = engine_check(config_file(tmp_path, text))
    assert out.returncode == 0, out.stderr
    for name, store in (("siu_clinical", "clinical"), ("siu_pm", "pm")):
        assert load_mapping(ROOT / "mappings" / f"{name}.yaml", columns={store: columns_of(store)}).name == name


def test_a_booking_is_one_row_in_each_store_with_every_column_and_each_unplaced_resource_is_a_warning(sched):
    ack = send(sched, "siu_s12_booking.hl7", "LK-S12-0001")
    assert ack["MSH"][9] == "ACK^S12^ACK"
    [clinical] = appointments(sched, "clinical")
    assert columns(clinical) == BOOKED_A
    [pm] = appointments(sched, "pm")
    assert columns(pm) == {**BOOKED_A, "account_number": "ACC820001"}
    [row] = messages(sched)
    assert row["status"] == "SENT" and row["channel"] == "scheduling" and row["error"] is None
    # AIS 2, AIL 2, AIP 2 and the AIG have no column: one warning each, per store, naming the segment
    places = [w.split(" in ")[-1] for w in row["warnings"]]
    assert places == ["AIS 2)", "AIL 2)", "AIP 2)", "AIG 1)"] * 2
    assert [w.split(":")[0] for w in row["warnings"]] == ["clinical"] * 4 + ["pm"] * 4
    assert all("record skipped" in w and "appointment_resource_column" in w for w in row["warnings"])
    text = json.dumps(row["warnings"])
    for value in ("96127", "ECG01", "LAB1", "ABERNATHY", "1600000003"):  # positions, never values
        assert value not in text

    # the same message again (a resend, same MSH-10): acknowledged, dropped, still one row each
    send(sched, "siu_s12_booking.hl7", "LK-S12-0001", final="FILTERED")
    assert len(appointments(sched, "clinical")) == len(appointments(sched, "pm")) == 1
    assert appointments(sched, "clinical")[0]["last_message_id"] == clinical["last_message_id"]


def test_a_reschedule_updates_the_row_a_cancel_keeps_it_cancelled_and_the_booking_never_comes_back(sched):
    send(sched, "siu_s12_booking.hl7", "LK-S12-0001")
    send(sched, "siu_s13_reschedule.hl7", "LK-S13-0002")
    moved = {
        **BOOKED_A,
        "event": "S13",
        "start_at": datetime(2024, 5, 22, 21, 0, tzinfo=UTC),
        "start_date": date(2024, 5, 22),
        "end_at": datetime(2024, 5, 22, 21, 30, tzinfo=UTC),
        "end_date": date(2024, 5, 22),
        "event_reason_code": "PATRESCH",
        "event_reason_text": "Rescheduled at patient request",
        "location": "LKCL-EXAM2",
    }
    for kind, extra in (("clinical", {}), ("pm", {"account_number": "ACC820001"})):
        [row] = appointments(sched, kind)  # the same row: SCH-2 is the key
        assert columns(row) == {**moved, **extra}, kind

    ack = send(sched, "siu_s15_cancel.hl7", "LK-S15-0003")
    assert ack["MSH"][9] == "ACK^S15^ACK"
    cancelled = {
        **moved,
        "status": "cancelled",  # SCH-25 empty: the trigger says so
        "event": "S15",
        "event_reason_code": "PATCAN",
        "event_reason_text": "Patient cancelled - feeling better",
    }
    for kind, extra in (("clinical", {}), ("pm", {"account_number": "ACC820001"})):
        [row] = appointments(sched, kind)  # kept, never deleted
        assert columns(row) == {**cancelled, **extra}, kind  # what S15 does not send stays
    cancel_id = appointments(sched, "clinical")[0]["last_message_id"]
    # the patient's schedule, as `engine patient` tells it from both stores
    out = sched.cli(
        "patient", "MRN820001", "--issuer", "LAKESIDE_CL", "--purpose", "test", "--config", str(sched.config)
    )
    assert out.returncode == 0, out.stderr
    assert (
        "appointment SA-2024-0515-01: cancelled Follow-up 30 min with HOLLOWAY, PRIYA at LKCL-EXAM2 "
        "reason Patient cancelled - feeling better [clinical+pm]"
    ) in out.stdout, out.stdout

    # the booking resent after the cancel: a duplicate, dropped; the appointment stays cancelled
    send(sched, "siu_s12_booking.hl7", "LK-S12-0001", final="FILTERED")
    # reprocessing the booking applies it in its own place in receive order: older than the cancel
    booking_id = min(m["id"] for m in messages(sched) if m["control_id"] == "LK-S12-0001")
    out = sched.cli("reprocess", "--config", str(sched.config), str(booking_id))
    assert out.returncode == 0 and f"{booking_id}: SENT" in out.stdout, out.stdout + out.stderr
    for kind in ("clinical", "pm"):
        [row] = appointments(sched, kind)
        assert (row["status"], row["event"], row["start_at"]) == ("cancelled", "S15", moved["start_at"]), kind
        assert (row["location"], row["last_message_id"]) == ("LKCL-EXAM2", cancel_id), kind


def test_v23_placer_only_v28_tq1_v27_modification_and_a_no_show(sched):
    send(sched, "siu_s12_v23_placer_only.hl7", "BV-0000912")  # LF between segments
    [v23] = appointments(sched, "clinical", filler_appointment_id="77120")
    assert columns(v23) == {
        **dict.fromkeys(BOOKED_A),
        "filler_appointment_id": "77120",
        "filler_appointment_namespace": "",  # the number was sent alone
        "mrn": "820003",
        "mrn_issuer": "BAYVIEW",  # no type, no authority: the sending facility
        "status": "booked",  # BOOKED
        "event": "S12",
        "start_at": datetime(2024, 6, 10, 18, 0, tzinfo=UTC),
        "start_date": date(2024, 6, 10),
        "end_at": datetime(2024, 6, 10, 18, 45, tzinfo=UTC),
        "end_date": date(2024, 6, 10),
        "duration": 45.0,
        "duration_units": "MIN",
        "appointment_type_code": "PHYS",
        "appointment_type_text": "Physical",
        "appointment_type_system": "LOCAL",
        "reason_code": "CHECKUP",
        "reason_text": "Annual physical",
        "reason_system": "HL70276",
        "service_code": "PHYS",
        "service_text": "Physical exam",
        "service_system": "LOCAL",
        "provider": "D1042",
        "provider_name": "OKAFOR, GRACE",
        "location": "BAYVIEW-RM2",
    }
    assert appointments(sched, "pm", filler_appointment_id="77120")[0]["placer_appointment_id"] is None

    send(sched, "siu_s12_v28_tq1.hl7", "LK-S12-0004")
    [d] = appointments(sched, "pm", **D)
    assert (d["start_at"], d["end_at"], d["duration"], d["duration_units"]) == (
        datetime(2024, 6, 11, 20, 0, tzinfo=UTC),  # TQ1-7 13:00-0700
        datetime(2024, 6, 11, 21, 0, tzinfo=UTC),
        60.0,
        "min",
    )
    assert (d["visit_number"], d["account_number"], d["notes"]) == ("V240611-0003", "ACC820004", None)

    send(sched, "siu_s14_v27_note.hl7", "LK-S14-0006")
    for kind in ("clinical", "pm"):
        [d] = appointments(sched, kind, **D)  # the same row: SCH-2 with its EI.3 namespace
        assert (d["event"], d["status"], d["start_at"], d["end_at"], d["duration"]) == (
            "S14",
            "booked",
            datetime(2024, 6, 11, 20, 30, tzinfo=UTC),  # AIS-4: moved half an hour
            None,  # no end sent with the new start: the old one no longer holds
            60.0,
        )
        assert d["notes"] == "Wheelchair & companion; door code 4^2 | call ahead.\nParking: lot \\B\\."
        assert (d["location"], d["service_code"]) == ("LKCL-EXAM1", "99204")  # not resent: kept

    send(sched, "siu_s26_noshow.hl7", "LK-S26-0005")
    send(sched, "siu_s26_noshow.hl7", "LK-S26-0005", final="FILTERED")
    for kind in ("clinical", "pm"):
        [b] = appointments(sched, kind, filler_appointment_id="SA-2024-0520-07")
        assert (b["status"], b["event"], b["mrn"], b["provider"]) == ("noshow", "S26", "MRN820002", "1600000002")
        assert b["start_at"] == datetime(2024, 5, 20, 18, 0, tzinfo=UTC)  # SCH-11, read before TQ1
    assert len(appointments(sched, "clinical")) == len(appointments(sched, "pm")) == 3
    assert {m["status"] for m in messages(sched)} == {"SENT", "FILTERED"}
    assert all(not m["warnings"] for m in messages(sched))
