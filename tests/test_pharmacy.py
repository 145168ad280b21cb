"""Pharmacy, end to end over MLLP: the EHR's encoded orders (RDE^O11, the O25 refill) go out
through channel ``pharmacy-out`` into the clinical store's medication_order and on to the
pharmacy; the pharmacy's dispenses (RDS^O13) and administrations (RAS^O17) come back through
``pharmacy-in`` into medication_dispense and medication_administration.

Run as in production: a real engine on the channels below (the block proposed for
config/channels.yaml), a downstream pharmacy that answers RRE (tests/downstream.py), the
fixtures of tests/fixtures/hl7v2/pharmacy/ (see its README.md), outcomes read from the stores
and with the CLI.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime

import downstream as downstream_module
import pytest
from conftest import FIXTURES, MllpConnection, ack_fields, config_file, sample_channel
from downstream import Downstream
from services import free_port

from engine.formats.hl7 import Message
from engine.stores.records_store import RecordStore

# The channels as proposed for config/channels.yaml (appended under `channels:`), verbatim.
CHANNELS = sample_channel("pharmacy-out", "pharmacy-in")

CONFIG = (
    """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
"""
    + CHANNELS
)

PHARMACY = FIXTURES / "pharmacy"
BOOKKEEPING = ("id", "updated_at", "last_message_id", "last_seq")
PATIENT = {"mrn": "MRN930001", "mrn_issuer": "CEDARCLINIC"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def rre_ack(control_id: str, trigger: str, code: str) -> bytes:
    """What the pharmacy answers an RDE: its application acknowledgement RRE^O12 (RRE^O26 for
    the O25 refill), MSA-2 naming the order message, never a plain ACK."""
    kind = {"O25": "RRE^O26^RRE_O12"}.get(trigger, "RRE^O12^RRE_O12")
    return (
        f"MSH|^~\\&|HARBOR_RX|HARBORPHARM|ENGINE|HUB|20240410090000||{kind}|R{control_id[:19]}|P|2.5.1\r"
        f"MSA|{code}|{control_id}\r"
    ).encode("latin-1")


@pytest.fixture
def pharmacy(monkeypatch):
    """The downstream pharmacy system: records every order forwarded, answers RRE^O12/O26."""
    monkeypatch.setattr(downstream_module, "ack", rre_ack)
    with Downstream() as down:
        yield down


@pytest.fixture
def start(fresh_engine, tmp_path, pharmacy):
    """Start an engine on the pharmacy channels; its order and result ports as attributes."""

    def go():
        ports = {"ENGINE_PHARMACY_ORDERS_PORT": free_port(), "ENGINE_PHARMACY_RESULTS_PORT": free_port()}
        eng = fresh_engine(
            config_file(tmp_path, CONFIG),
            ENGINE_PHARMACY_OUT_PORT=str(pharmacy.port),
            **{k: str(v) for k, v in ports.items()},
        )
        eng.orders_port = ports["ENGINE_PHARMACY_ORDERS_PORT"]
        eng.results_port = ports["ENGINE_PHARMACY_RESULTS_PORT"]
        return eng

    return go


@pytest.fixture
def clinical(tmp_path):
    """The engine's clinical store, read with typed values (datetimes in UTC, dates, floats)."""
    stores = []

    def open_store(eng) -> RecordStore:
        stores.append(RecordStore(f"sqlite:///{eng.data}/clinical.db", "clinical"))
        return stores[-1]

    yield open_store
    for s in stores:
        s.dispose()


def fixture(name: str) -> bytes:
    return (PHARMACY / name).read_bytes()


def send(port: int, message: bytes) -> dict[str, list[str]]:
    conn = MllpConnection(port)
    try:
        return ack_fields(conn.send(message))
    finally:
        conn.close()


def processed(eng, control_id: str, statuses=("SENT", "ERROR")) -> dict:
    """Wait until the newest message with ``control_id`` is done; its ``engine messages --json`` row."""
    eng.wait_for(
        "messages",
        "select status from messages where control_id = :c order by id desc limit 1",
        lambda r: bool(r) and r[0]["status"] in statuses,
        timeout=20,
        c=control_id,
    )
    out = eng.cli("messages", "--config", str(eng.config), "--json", "--limit", "500")
    assert out.returncode == 0, out.stderr
    return next(r for r in json.loads(out.stdout) if r["control_id"] == control_id)


def deliver(eng, port: int, name: str, control_id: str, response: str) -> dict:
    """Send a fixture, check its acknowledgement (``response``: MSH-9 as the engine must write
    it, MSA AA answering this control id), wait until processed; its messages row."""
    ack = send(port, fixture(name))
    assert ack["MSH"][9] == response
    assert ack["MSA"][1:3] == ["AA", control_id]
    return processed(eng, control_id)


def columns(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in BOOKKEEPING}


# -- orders out ---------------------------------------------------------------------------------


def test_an_rde_is_answered_rre_stored_with_every_column_and_forwarded_once_byte_for_byte(start, pharmacy, clinical):
    eng = start()
    store = clinical(eng)
    row = deliver(eng, eng.orders_port, "rde_o11_v23_tq.hl7", "CED-RDE-0001", "RRE^O12")  # v2.3: no structure
    assert row["status"] == "SENT" and row["warnings"] == [] and row["error"] is None
    # the pharmacy's RRE^O12 counts as its acknowledgement: accepted on the first attempt
    deliveries = eng.query(
        "messages",
        "select destination, status, attempts from deliveries where message_id = :m order by destination",
        m=row["id"],
    )
    assert deliveries == [
        {"destination": "clinical", "status": "SENT", "attempts": 1},
        {"destination": "pharmacy", "status": "SENT", "attempts": 1},
    ]
    [order] = store.rows("medication_order", placer_order_number="RX7001")
    assert order["last_message_id"] == row["id"]
    assert columns(order) == {
        "placer_order_number": "RX7001",
        "placer_order_namespace": "CEDAR_EHR",
        "filler_order_number": None,
        "filler_order_namespace": None,
        "placer_group_number": "GRP7001",
        **PATIENT,
        "visit_number": "V930001-01",
        "order_control": "NW",
        "status": "active",
        "status_reason_code": None,
        "status_reason_text": None,
        "status_reason_system": None,
        "ordered_at": utc(2024, 4, 8, 17, 15),  # 10:15 on the clinic's clock (PDT)
        "ordering_provider": "9900112233",
        "ordering_provider_name": "WINTERBOURNE, ASHA",
        "prescription_number": "CED-RX-240408-01",
        "medication_code": "861007",
        "medication_text": "Metformin hydrochloride 500 MG Oral Tablet",
        "medication_system": "RXNORM",
        "give_amount": 1.0,
        "give_amount_max": None,
        "give_units_code": "TAB",
        "give_units_text": "tablet",
        "give_units_system": "L",
        "give_strength": 500.0,
        "give_strength_units_code": "mg",
        "give_strength_units_text": "milligram",
        "give_strength_units_system": "UCUM",
        "dosage_form_code": "C42998",
        "dosage_form_text": "Tablet",
        "dosage_form_system": "NCI",
        "route_code": "PO",
        "route_text": "Oral",
        "route_system": "HL70162",
        "frequency": "BID",
        "instructions": "Take 1 tablet by mouth twice daily with food",
        "start_at": None,  # RXE-1.4 is a date: never an instant at local midnight
        "start_date": date(2024, 4, 8),
        "end_at": None,
        "end_date": date(2024, 5, 8),
        "dispense_amount": 60.0,
        "dispense_units_code": "TAB",
        "dispense_units_text": "tablet",
        "dispense_units_system": "L",
        "refills": 3,
        "substitution": "generic",
        "indication_code": "E11.9",
        "indication_text": "Type 2 diabetes mellitus without complications",
        "indication_system": "I10",
        "notes": "Dispense in original manufacturer bottle",
    }
    [patient] = store.rows("patient", **PATIENT)
    assert (patient["family_name"], patient["given_name"], patient["birth_date"], patient["sex"]) == (
        "QUILLFEATHER",
        "ROSALIND",
        date(1961, 3, 17),
        "female",
    )
    assert pharmacy.wait_for(["CED-RDE-0001"], timeout=10)
    assert [f.raw for f in pharmacy.frames] == [fixture("rde_o11_v23_tq.hl7")]

    # The EHR resends it (no ACK seen, say): AA again, dropped as a duplicate, not forwarded twice.
    ack = send(eng.orders_port, fixture("rde_o11_v23_tq.hl7"))
    assert ack["MSA"][1:3] == ["AA", "CED-RDE-0001"]
    resent = processed(eng, "CED-RDE-0001", statuses=("FILTERED",))
    assert resent["id"] != row["id"]
    time.sleep(0.5)  # a second forward would have arrived by now
    assert pharmacy.counts()["CED-RDE-0001"] == 1
    assert len(store.rows("medication_order", placer_order_number="RX7001")) == 1

    # v2.8, LF-separated: answered in v2.8 form, forwarded with its LFs, provider from its PRT.
    row = deliver(eng, eng.orders_port, "rde_o11_v28_lf.hl7", "CED-RDE-0005", "RRE^O12^RRE_O12")
    assert row["status"] == "SENT"
    [order] = store.rows("medication_order", placer_order_number="RX7005")
    assert {k: order[k] for k in ("mrn", "ordering_provider", "ordering_provider_name", "instructions", "notes")} == {
        "mrn": "MRN930002",
        "ordering_provider": "9900223344",
        "ordering_provider_name": "NAKASHIMA-REYES, ELIO",
        "instructions": "Take 1 tablet by mouth every morning",
        "notes": "Check blood pressure weekly; hold if systolic below 100.",
    }
    assert (order["ordered_at"], order["substitution"]) == (utc(2024, 6, 3, 21, 28), "not-allowed-by-prescriber")
    assert pharmacy.wait_for(["CED-RDE-0005"], timeout=10)
    assert pharmacy.frames[-1].raw == fixture("rde_o11_v28_lf.hl7")


def test_an_rde_without_a_placer_number_ends_in_error_with_the_reason_and_still_reaches_the_pharmacy(
    start, pharmacy, clinical
):
    eng = start()
    msg = fixture("rde_o11_v28_lf.hl7").replace(b"RX7005^CEDAR_EHR", b"^CEDAR_EHR").replace(b"CED-RDE-0005", b"NOPL-1")
    ack = send(eng.orders_port, msg)
    assert ack["MSA"][1:3] == ["AA", "NOPL-1"]  # acknowledged on receipt: stored durably
    row = processed(eng, "NOPL-1")
    assert row["status"] == "ERROR"
    assert "medication_order.placer_order_number: required value is missing" in row["error"]
    assert "ORC-2.1" in row["error"] and "RX7005" not in row["error"]  # where, never what
    assert clinical(eng).rows("medication_order") == []
    assert pharmacy.wait_for(["NOPL-1"], timeout=10)  # the pharmacy's copy does not depend on ours


def test_a_refill_then_a_discontinue_update_the_one_order_row(start, pharmacy, clinical):
    eng = start()
    store = clinical(eng)
    first = deliver(eng, eng.orders_port, "rde_o11_v23_tq.hl7", "CED-RDE-0001", "RRE^O12")
    refill = deliver(eng, eng.orders_port, "rde_o25_v26_refill.hl7", "CED-RDE-0003", "RRE^O26^RRE_O12")
    assert refill["status"] == "SENT" and refill["warnings"] == []
    [order] = store.rows("medication_order", placer_order_number="RX7001")
    assert order["last_message_id"] == refill["id"]
    assert {k: order[k] for k in ("order_control", "status", "refills", "filler_order_number", "notes")} == {
        "order_control": "RF",
        "status": "active",
        "refills": 5,
        "filler_order_number": "HRX-552001",
        "notes": "Refill authorized x5 by phone; labs due before next refill.",
    }
    # the refill call's own visit and time do not move the order
    assert (order["visit_number"], order["ordered_at"]) == ("V930001-01", utc(2024, 4, 8, 17, 15))
    assert order["instructions"] == "Take 1 tablet by mouth twice daily with food"  # not sent again: kept

    stop = deliver(eng, eng.orders_port, "rde_o11_v23_dc.hl7", "CED-RDE-0004", "RRE^O12")
    assert stop["status"] == "SENT"
    [order] = store.rows("medication_order", placer_order_number="RX7001")
    assert order["last_message_id"] == stop["id"]
    assert {
        k: order[k]
        for k in (
            "order_control",
            "status",
            "status_reason_code",
            "status_reason_text",
            "end_date",
            "refills",
            "visit_number",
            "ordered_at",
            "instructions",
            "prescription_number",
        )
    } == {
        "order_control": "DC",
        "status": "discontinued",
        "status_reason_code": "GIINTOL",
        "status_reason_text": "Gastrointestinal intolerance",
        "end_date": date(2024, 5, 12),
        "refills": 5,
        "visit_number": "V930001-01",
        "ordered_at": utc(2024, 4, 8, 17, 15),
        "instructions": "Take 1 tablet by mouth twice daily with food",
        "prescription_number": "CED-RX-240408-01",
    }
    assert first["id"] < refill["id"] < stop["id"]
    assert pharmacy.wait_for(["CED-RDE-0004"], timeout=10)
    pharmacy.assert_exactly_once_in_order({"MRN930001": ["CED-RDE-0001", "CED-RDE-0003", "CED-RDE-0004"]})


# -- dispenses and administrations back ---------------------------------------------------------


def test_an_rds_order_group_holds_its_own_rxd():
    """RDS_O13: ORC, [RXO ...], [RXE ...], RXD, [NTE], RXR ... per order. The dispense mapping
    reads each RXD in its ORC group (for_each [ORC, RXD]); an ORC group that ended before its RXD
    would give the mapping no dispense at all, and a path read from the second ORC would reach
    the first order's RXD. Needs "RXD" in engine.formats.hl7.GROUP_CHILDREN["ORC"]."""
    msg = Message(fixture("rds_o13_v25_two_orders.hl7").decode("ascii"))
    per_order = [
        (msg.value("ORC-2.1", (orc,)), [msg.value("RXD-2.2", (orc, rxd)) for rxd in msg.groups("RXD", orc)])
        for orc in msg.groups("ORC")
    ]
    assert per_order == [
        ("RX7001", ["Metformin hydrochloride 500 MG Oral Tablet"]),
        ("RX7002", ["Amoxicillin & clavulanate 875 MG / 125 MG Oral Tablet"]),
    ]


def test_each_fill_is_a_dispense_row_a_corrected_fill_updates_its_row_and_an_unlinked_one_is_a_warning(start, clinical):
    eng = start()
    store = clinical(eng)
    first = deliver(eng, eng.results_port, "rds_o13_v25_two_orders.hl7", "HRX-RDS-0001", "RRD^O14^RRD_O14")
    assert first["status"] == "SENT" and first["warnings"] == []
    fills = store.rows("medication_dispense", **PATIENT)
    assert [(d["placer_order_number"], d["dispense_seq"]) for d in fills] == [("RX7001", 1), ("RX7002", 1)]
    assert columns(fills[0]) == {
        "placer_order_number": "RX7001",
        "placer_order_namespace": "CEDAR_EHR",
        "dispense_seq": 1,
        "filler_order_number": "HRX-552001",
        "filler_order_namespace": "HARBOR_RX",
        "prescription_number": "HRX-RX-0088123",
        **PATIENT,
        "visit_number": None,
        "status": "completed",
        "medication_code": "861007",
        "medication_text": "Metformin hydrochloride 500 MG Oral Tablet",
        "medication_system": "RXNORM",
        "dispensed_at": utc(2024, 4, 10, 21, 30),
        "dispensed_date": date(2024, 4, 10),
        "quantity": 60.0,
        "quantity_units_code": "TAB",
        "quantity_units_text": "tablet",
        "quantity_units_system": "L",
        "dosage_form_code": "C42998",
        "dosage_form_text": "Tablet",
        "dosage_form_system": "NCI",
        "refills_remaining": 3,
        "dispensing_provider": "PH4471",
        "dispensing_provider_name": "MARSH-TEAGUE, COLIN",
        "substitution": "generic",
        "lot_number": "MTF24A117",
        "expiration_date": date(2026, 1, 31),
        "manufacturer_code": "AMN",
        "manufacturer_text": "Amneal Pharmaceuticals",
        "manufacturer_system": "L",
        "notes": "Generic equivalent dispensed\nPatient counseled on taking with meals.",
    }
    second_order = fills[1]
    assert (second_order["medication_text"], second_order["lot_number"], second_order["notes"]) == (
        "Amoxicillin & clavulanate 875 MG / 125 MG Oral Tablet",
        "AC23B117",
        None,  # the first order's NTE is not the second's
    )
    # the dispenses do not write the order (the EHR owns it): no medication_order row appeared
    assert store.rows("medication_order") == []

    fill2 = deliver(eng, eng.results_port, "rds_o13_v25_fill2.hl7", "HRX-RDS-0002", "RRD^O14^RRD_O14")
    rx7001 = store.rows("medication_dispense", placer_order_number="RX7001")
    assert [(d["dispense_seq"], d["quantity"], d["last_message_id"]) for d in rx7001] == [
        (1, 60.0, first["id"]),
        (2, 60.0, fill2["id"]),
    ]
    fixed = deliver(eng, eng.results_port, "rds_o13_v25_fill2_corrected.hl7", "HRX-RDS-0003", "RRD^O14^RRD_O14")
    rx7001 = store.rows("medication_dispense", placer_order_number="RX7001")
    assert [(d["dispense_seq"], d["quantity"], d["notes"], d["last_message_id"]) for d in rx7001] == [
        (1, 60.0, "Generic equivalent dispensed\nPatient counseled on taking with meals.", first["id"]),
        (2, 56.0, "Quantity corrected", fixed["id"]),
    ]
    send(eng.results_port, fixture("rds_o13_v25_fill2_corrected.hl7"))  # the same bytes again
    processed(eng, "HRX-RDS-0003", statuses=("FILTERED",))
    assert len(store.rows("medication_dispense", placer_order_number="RX7001")) == 2

    unlinked = deliver(eng, eng.results_port, "rds_o13_v24_no_placer.hl7", "HRX-RDS-0004", "RRD^O14^RRD_O14")
    assert unlinked["status"] == "SENT" and unlinked["error"] is None
    [warning] = unlinked["warnings"]
    assert warning.startswith(
        "clinical-dispenses: clinical.medication_dispense.placer_order_number: required value is missing; "
        "record skipped"
    )
    assert "from ORC-2.1 in ORC 2/RXD 1" in warning and "HRX-552090" not in warning  # where, never what
    [fill] = store.rows("medication_dispense", placer_order_number="RX7003")
    assert (fill["dispensed_at"], fill["quantity"], fill["refills_remaining"]) == (utc(2024, 4, 11, 16, 0), 30.0, 1)
    assert store.rows("medication_dispense", filler_order_number="HRX-552090") == []


def test_administrations_are_rows_and_a_deleted_one_stays_entered_in_error(start, clinical):
    eng = start()
    store = clinical(eng)
    given = deliver(eng, eng.results_port, "ras_o17_v251_two_rxa.hl7", "HRX-RAS-0001", "RRA^O18^RRA_O18")
    assert given["status"] == "SENT" and given["warnings"] == []
    doses = store.rows("medication_administration", placer_order_number="RX7010")
    assert [(a["give_seq"], a["administration_seq"]) for a in doses] == [(0, 1), (0, 2)]
    assert columns(doses[0]) == {
        "placer_order_number": "RX7010",
        "placer_order_namespace": "CEDAR_EHR",
        "give_seq": 0,
        "administration_seq": 1,
        "filler_order_number": "HRX-552010",
        "filler_order_namespace": "HARBOR_RX",
        **PATIENT,
        "visit_number": "V930001-02",
        "status": "completed",
        "completion_status": "CP",
        "action_code": "A",
        "start_at": utc(2024, 4, 10, 16, 15),
        "start_date": date(2024, 4, 10),
        "end_at": utc(2024, 4, 10, 16, 16),
        "medication_code": "1665461",
        "medication_text": "Ketorolac tromethamine 30 MG/ML Injectable Solution",
        "medication_system": "RXNORM",
        "amount": 30.0,
        "amount_units_code": "mg",
        "amount_units_text": "milligram",
        "amount_units_system": "UCUM",
        "dosage_form_code": "C42946",
        "dosage_form_text": "Injection, solution",
        "dosage_form_system": "NCI",
        "route_code": "IM",
        "route_text": "Intramuscular",
        "route_system": "HL70162",
        "site_code": "LG",  # its own RXR, not the echoed RXE's
        "site_text": "Left Gluteus Medius",
        "site_system": "HL70163",
        "administering_provider": "NRS31",
        "administering_provider_name": "HOLLOWAY, PIPPA",
        "location": "CEDFP-INJ1",
        "lot_number": "KT2406A",
        "expiration_date": date(2025, 11, 30),
        "manufacturer_code": "HSP",
        "manufacturer_text": "Hospira",
        "manufacturer_system": "L",
        "refusal_reason_code": None,
        "refusal_reason_text": None,
        "refusal_reason_system": None,
        "indication_code": "M54.50",
        "indication_text": "Low back pain, unspecified",
        "indication_system": "I10",
        "notes": "Tolerated well, no reaction",
    }
    first, second = columns(doses[0]), columns(doses[1])
    assert (second["site_code"], second["start_at"], second["notes"]) == (
        "RG",
        utc(2024, 4, 10, 22, 20),
        "Second dose per protocol ^ pain 6/10 before dose",
    )

    withdrawn = deliver(eng, eng.results_port, "ras_o17_v251_delete.hl7", "HRX-RAS-0002", "RRA^O18^RRA_O18")
    doses = store.rows("medication_administration", placer_order_number="RX7010")
    assert len(doses) == 2  # nothing is deleted by a message
    assert columns(doses[0]) == first and doses[0]["last_message_id"] == given["id"]
    assert doses[1]["last_message_id"] == withdrawn["id"]
    assert columns(doses[1]) == second | {"status": "entered-in-error", "action_code": "D"}  # the rest as it was

    refused = deliver(eng, eng.results_port, "ras_o17_v27_refused.hl7", "HRX-RAS-0003", "RRA^O18^RRA_O18")
    assert refused["status"] == "SENT"
    [dose] = store.rows("medication_administration", placer_order_number="RX7011")
    assert {
        k: dose[k]
        for k in ("mrn", "status", "completion_status", "amount", "refusal_reason_text", "administering_provider")
    } == {
        "mrn": "MRN930002",
        "status": "not-done",
        "completion_status": "RE",
        "amount": 0.0,
        "refusal_reason_text": "Patient decision",
        "administering_provider": "NRS31",
    }


def test_engine_patient_shows_each_medication_order_with_its_dispenses_and_administrations(start, clinical):
    eng = start()
    for name, control_id, port, response in (
        ("rde_o11_v23_tq.hl7", "CED-RDE-0001", eng.orders_port, "RRE^O12"),
        ("rde_o11_v251_tq1.hl7", "CED-RDE-0002", eng.orders_port, "RRE^O12^RRE_O12"),
        ("rds_o13_v25_two_orders.hl7", "HRX-RDS-0001", eng.results_port, "RRD^O14^RRD_O14"),
        ("rds_o13_v25_fill2.hl7", "HRX-RDS-0002", eng.results_port, "RRD^O14^RRD_O14"),
        ("ras_o17_v251_two_rxa.hl7", "HRX-RAS-0001", eng.results_port, "RRA^O18^RRA_O18"),
    ):
        assert deliver(eng, port, name, control_id, response)["status"] == "SENT"
    out = eng.cli("patient", "MRN930001", "--config", str(eng.config), "--purpose", "test", "--json")
    assert out.returncode == 0, out.stderr
    story = json.loads(out.stdout)
    meds = {
        m["order"]["placer_order_number"]: m
        for visit in story["visits"]
        for m in visit["medications"]
        if m["order"] is not None
    }
    assert sorted(meds) == ["RX7001", "RX7002", "RX7003", "RX7010"]
    assert [d["dispense_seq"] for d in meds["RX7001"]["dispenses"]] == [1, 2]
    assert [d["dispense_seq"] for d in meds["RX7002"]["dispenses"]] == [1]
    assert [(a["give_seq"], a["administration_seq"]) for a in meds["RX7010"]["administrations"]] == [(0, 1), (0, 2)]
    assert meds["RX7003"]["dispenses"] == [] and meds["RX7003"]["administrations"] == []
    visits = {m["order"]["placer_order_number"]: v["visit_number"] for v in story["visits"] for m in v["medications"]}
    assert visits == {"RX7001": "V930001-01", "RX7002": "V930001-02", "RX7003": "V930001-02", "RX7010": "V930001-02"}

    text = eng.cli("patient", "MRN930001", "--config", str(eng.config), "--purpose", "test")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if "medication order RX7001:" in line)
    assert "Metformin hydrochloride 500 MG Oral Tablet" in lines[head] and "BID" in lines[head]
    assert "dispensed #1" in lines[head + 1] and "dispensed #2" in lines[head + 2]
    given = next(i for i, line in enumerate(lines) if "medication order RX7010:" in line)
    assert "given #0.1" in lines[given + 1] and "given #0.2" in lines[given + 2]
    # the read is audited in the clinical store
    audit = eng.query("clinical", "select purpose, action, patient_mrn from record_access")
    assert {"purpose": "test", "action": "view", "patient_mrn": "MRN930001"} in audit
