"""Orders out, and results linked to their orders: through a real ``engine run`` over MLLP.

The EHR sends ORM^O01 / OML^O21 to the ``orders-out`` channel: it is answered with the order's
application acknowledgement (ORR^O02, ORL^O22), each ordered test becomes one
``clinical.service_order`` row, and the order is forwarded once, byte for byte, to the lab (a
:class:`~downstream.Downstream` answering as a lab does, with ORL^O22 / ORR^O02). A cancel
updates its test's row. The lab's ORU^R01 on ``lab-results`` names the order by its placer
number and moves its status from preliminary to completed; a reflex test is a row of its own.
Resends add neither rows nor forwards. Fixtures: tests/fixtures/hl7v2/orders/ (its README).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime

import downstream as downstream_module
import pytest
from conftest import ROOT, MllpConnection, ack_fields, config_file, fixture_bytes, sample_channel
from services import free_port

from engine.stores.records_store import RecordStore
from engine.stores.schema import columns_of
from engine.transforms import load_mapping

# The channel block given for config/channels.yaml, as it is (appended under `channels:`).
ORDERS_CHANNEL = sample_channel("orders-out")

CONFIG = (
    """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
"""
    + ORDERS_CHANNEL
    + """\
  - name: lab-results
    source: {type: mllp, port: "${ENGINE_LAB_PORT}"}
    filter: {path: MSH-9.1, equals: ORU}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: oru_clinical}
"""
)

ORM_V23 = "orders/orm_o01_v23_requisition.hl7"
CANCEL = "orders/orm_o01_v24_cancel.hl7"
OML_V251 = "orders/oml_o21_v251_tsh.hl7"
OML_V28 = "orders/oml_o21_v28_prt.hl7"
PRELIMINARY = "orders/oru_r01_v251_tsh_preliminary.hl7"
FINAL = "orders/oru_r01_v251_tsh_final.hl7"
DONE = ("SENT", "FILTERED", "ERROR")


def lab_answer(control_id: str, trigger: str, code: str) -> bytes:
    """What the lab answers: the order's application acknowledgement, ORL^O22 for an OML^O21 and
    ORR^O02 for an ORM^O01 (MSA first, then the order it accepted), not a generic ACK."""
    kind = {"O21": "ORL^O22^ORL_O22", "O01": "ORR^O02^ORR_O02"}[trigger]
    return (
        f"MSH|^~\\&|QUARRYLIS|QUARRY_LAB|ALDERCHART|ALDER_MC|{time.strftime('%Y%m%d%H%M%S')}||{kind}"
        f"|L{control_id}|P|2.5.1\rMSA|{code}|{control_id}\rORC|OK\r"
    ).encode("ascii")


@pytest.fixture
def lab(monkeypatch):
    """The lab: an MLLP listener that answers each order with its ORL^O22 / ORR^O02."""
    monkeypatch.setattr(downstream_module, "ack", lab_answer)
    with downstream_module.Downstream() as down:
        yield down


@pytest.fixture
def orders_engine(tmp_path, fresh_engine, lab):
    """An engine with the ``orders-out`` channel (forwarding to ``lab``) and ``lab-results``."""
    port = free_port()
    eng = fresh_engine(
        config_file(tmp_path, CONFIG),
        ENGINE_ORDERS_PORT=str(port),
        ENGINE_LAB_OUT_HOST="127.0.0.1",
        ENGINE_LAB_OUT_PORT=str(lab.port),
    )
    eng.orders_port = port
    return eng


def send(port: int, *raws: bytes) -> list[dict[str, list[str]]]:
    """Send each message on one connection; the answers' fields (see conftest.ack_fields)."""
    conn = MllpConnection(port)
    try:
        return [ack_fields(conn.send(raw)) for raw in raws]
    finally:
        conn.close()


def settle(eng, count: int) -> list[dict]:
    """Wait until ``count`` messages are done (SENT, FILTERED or ERROR); every message, by id."""
    eng.wait_for(
        "messages",
        "select count(*) as n from messages where status in ('SENT', 'FILTERED', 'ERROR')",
        lambda r: r[0]["n"] >= count,
        timeout=30,
    )
    return eng.query("messages", "select id, control_id, channel, status, error, warnings from messages order by id")


def clinical(eng) -> RecordStore:
    return RecordStore(f"sqlite:///{eng.data}/clinical.db", "clinical")


def orders(eng) -> dict[str, dict]:
    """Every service_order row as {code: row}, without the store's own columns."""
    out = {}
    for r in clinical(eng).rows("service_order"):
        for k in ("id", "updated_at", "last_message_id", "last_seq"):
            r.pop(k)
        assert r["code"] not in out, "one code under two placer numbers: the test expects otherwise"
        out[r["code"]] = r
    return out


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def order_row(**values) -> dict:
    """A service_order row: every column null unless given ('' for the namespace key column)."""
    row = dict.fromkeys(columns_of("clinical")["service_order"] - {"id"}, None)
    row.update(values)
    return row


CBC = order_row(
    placer_order_number="REQ-664001",
    placer_order_namespace="ALDERCHART",
    code="CBC",
    code_text="Complete blood count",
    code_system="L",
    mrn="MRN664001",
    mrn_issuer="ALDER_MC",
    visit_number="V664001",
    order_control="NW",
    status="new",
    ordered_at=at("2024-04-15T15:14:00"),
    ordering_provider="3300112233",
    ordering_provider_name="WEBER, LOTTE",
    priority="routine",
    requested_at=at("2024-04-15T16:00:00"),
    requested_date=date(2024, 4, 15),
    service_section="HEM",
    specimen_type_code="BLD",
    specimen_type_text="Whole blood",
    specimen_type_system="HL70070",
    diagnoses='["D64.9"]',  # each test its own DG1 (the DG1 after an OBR belongs to it)
    notes="Draw with the lipid panel if fasting",
)
LIPID = {
    **CBC,
    "code": "LIPID",
    "code_text": "Lipid panel",
    "priority": "asap",
    "requested_at": at("2024-04-16T14:00:00"),
    "requested_date": date(2024, 4, 16),
    "service_section": "CHEM",
    "specimen_type_code": "SER",
    "specimen_type_text": "Serum",
    "diagnoses": '["E78.5"]',
    "notes": "Fasting 12 h",
}
TSH = order_row(
    placer_order_number="PLC-664002",
    placer_order_namespace="ALDERCHART",
    code="3016-3",
    code_text="Thyrotropin [Units/volume] in Serum or Plasma",
    code_system="LN",
    placer_group_number="GRP-664002",
    mrn="MRN664002",
    mrn_issuer="ALDER_MC",
    visit_number="V664002",
    order_control="NW",
    status="scheduled",
    ordered_at=at("2024-04-16T16:08:00"),
    ordering_provider="3300445566",
    ordering_provider_name="IBARRA, SOLENNE",
    priority="routine",
    requested_at=at("2024-04-16T17:00:00"),
    requested_date=date(2024, 4, 16),
    service_section="CH",
    specimen_type_code="119364003",
    specimen_type_text="Serum specimen",
    specimen_type_system="SCT",
    diagnoses='["R53.83","E03.9"]',
    notes="On levothyroxine 50 mcg; draw before the morning dose",
)
URINE_CULTURE = order_row(
    placer_order_number="PLC-664003",
    placer_order_namespace="2.16.840.1.113883.3.9999.12",
    code="630-4",
    code_text="Bacteria identified in Urine by Culture",
    code_system="LN",
    mrn="MRN664003",
    mrn_issuer="ALDER_MC",
    visit_number="V664003",
    order_control="NW",
    status="new",
    ordered_at=at("2024-04-17T21:03:00"),
    ordering_provider="3300990011",  # the PRT whose role is OP, not the copy-to listed first
    ordering_provider_name="ABERNATHY, CORDELIA",
    priority="stat",
    service_section="MB",
    specimen_type_code="122575003",
    specimen_type_text="Urine specimen",
    specimen_type_system="SCT",
)


def test_the_order_mapping_writes_only_columns_the_store_has():
    for name in ("orm_clinical", "oru_clinical"):
        assert load_mapping(ROOT / "mappings" / f"{name}.yaml", columns={"clinical": columns_of("clinical")})


def test_orders_are_acknowledged_stored_one_row_per_test_and_forwarded_once_byte_for_byte(orders_engine, lab):
    eng = orders_engine
    sent = [fixture_bytes(f) for f in (ORM_V23, OML_V251, OML_V28)]
    acks = send(eng.orders_port, *sent)
    # the EHR gets the order's application acknowledgement, answering its control id
    assert acks[0]["MSH"][9] == "ORR^O02"  # v2.3: no message structure component
    assert [a["MSH"][9] for a in acks[1:]] == ["ORL^O22^ORL_O22"] * 2
    assert [a["MSA"][1:3] for a in acks] == [["AA", "ALD-ORM-0001"], ["AA", "ALD-OML-0001"], ["AA", "ALD-OML-0002"]]

    messages = settle(eng, 3)
    assert [(m["control_id"], m["status"], m["error"], m["warnings"]) for m in messages] == [
        ("ALD-ORM-0001", "SENT", None, None),
        ("ALD-OML-0001", "SENT", None, None),
        ("ALD-OML-0002", "SENT", None, None),
    ]
    assert orders(eng) == {"CBC": CBC, "LIPID": LIPID, "3016-3": TSH, "630-4": URINE_CULTURE}
    patients = {(p["mrn_issuer"], p["mrn"]): p["family_name"] for p in clinical(eng).rows("patient")}
    assert patients == {  # the SSN listed first in the v2.3 order is never the patient
        ("ALDER_MC", "MRN664001"): "HALVORSEN",
        ("ALDER_MC", "MRN664002"): "OKAFOR-LINDQVIST",
        ("ALDER_MC", "MRN664003"): "NAKAGAWA-BRANDT",
    }

    # the lab received each order once, as the EHR sent it (the v2.3 one LF-separated), and its
    # ORL^O22 / ORR^O02 counted as the acknowledgement: one attempt each, nothing retried
    ids = ("ALD-ORM-0001", "ALD-OML-0001", "ALD-OML-0002")  # three patients: in any order
    assert lab.wait_for(ids, timeout=20)
    assert {f.control_id: f.raw for f in lab.frames} == dict(zip(ids, sent)) and len(lab.frames) == 3
    assert b"\r" not in sent[0] and sent[0].count(b"\n") == 11
    deliveries = eng.query(
        "messages", "select destination, status, attempts, error from deliveries where destination = 'lab'"
    )
    assert deliveries == [{"destination": "lab", "status": "SENT", "attempts": 1, "error": None}] * 3

    # the same messages again: duplicates (same control ids), dropped; no row, no forward more
    again = send(eng.orders_port, *sent)
    assert [a["MSA"][1] for a in again] == ["AA"] * 3
    messages = settle(eng, 6)
    assert [m["status"] for m in messages[3:]] == ["FILTERED"] * 3
    # and an order the EHR sends again under a new control id: mapped again, still one row per test
    restamped = sent[1].replace(b"ALD-OML-0001", b"ALD-OML-0001R")
    send(eng.orders_port, restamped)
    settle(eng, 7)
    assert lab.wait_for(["ALD-OML-0001R"], timeout=20)
    time.sleep(0.5)  # what else would come does so now
    assert lab.counts() == {"ALD-ORM-0001": 1, "ALD-OML-0001": 1, "ALD-OML-0002": 1, "ALD-OML-0001R": 1}
    assert orders(eng) == {"CBC": CBC, "LIPID": LIPID, "3016-3": TSH, "630-4": URINE_CULTURE}
    assert len(clinical(eng).rows("patient")) == 3


def test_a_cancel_keeps_the_row_says_cancelled_and_leaves_the_other_test(orders_engine, lab):
    eng = orders_engine
    acks = send(eng.orders_port, fixture_bytes(ORM_V23), fixture_bytes(CANCEL))
    assert [(a["MSH"][9], a["MSA"][1]) for a in acks] == [("ORR^O02", "AA"), ("ORR^O02^ORR_O02", "AA")]
    assert [m["status"] for m in settle(eng, 2)] == ["SENT", "SENT"]
    cancelled = {
        **CBC,
        "order_control": "CA",
        "status": "cancelled",
        "status_reason_code": "PTREQ",
        "status_reason_text": "Patient request",
        "status_reason_system": "L",
        # the escape sequences decoded: \T\ &, \.br\ a line break, \E\ \, \F\ |, \S\ ^
        "notes": "Pt request & home draw next wk\nRef ALD\\44 | tray 3 ^ B",
    }  # ordered_at stays the new order's; what the cancel does not send (specimen, DG1) stays
    assert orders(eng) == {"CBC": cancelled, "LIPID": LIPID}
    assert lab.wait_for(["ALD-ORM-0001", "ALD-ORM-0002"], timeout=20)
    assert [f.control_id for f in lab.frames] == ["ALD-ORM-0001", "ALD-ORM-0002"]
    assert lab.frames[1].raw == fixture_bytes(CANCEL)


def test_results_link_to_their_order_and_move_its_status_from_preliminary_to_completed(orders_engine):
    eng = orders_engine
    send(eng.orders_port, fixture_bytes(OML_V251))
    settle(eng, 1)
    assert orders(eng)["3016-3"]["status"] == "scheduled"

    [ack] = send(eng.lab_port, fixture_bytes(PRELIMINARY))
    assert (ack["MSH"][9], ack["MSA"][1]) == ("ACK^R01^ACK", "AA")
    assert [m["status"] for m in settle(eng, 2)] == ["SENT", "SENT"]
    preliminary = {
        **TSH,
        "status": "preliminary",
        "resulted_at": at("2024-04-16T18:29:00"),
        "resulted_date": date(2024, 4, 16),
        "filler_order_number": "QL-88001",
        "filler_order_namespace": "QUARRY_LAB",
    }  # the rest of the order stays as the EHR sent it
    assert orders(eng) == {"3016-3": preliminary}
    link = ("placer_order_number", "placer_order_namespace", "filler_order_number", "status")
    store = clinical(eng)
    assert [tuple(r[c] for c in link) for r in store.rows("diagnostic_report")] == [
        ("PLC-664002", "ALDERCHART", "QL-88001", "preliminary")
    ]
    assert [tuple(r[c] for c in link) for r in store.rows("observation")] == [
        ("PLC-664002", "ALDERCHART", "QL-88001", "preliminary")
    ]

    send(eng.lab_port, fixture_bytes(FINAL))
    assert [m["status"] for m in settle(eng, 3)] == ["SENT"] * 3
    completed = {
        **preliminary,
        "status": "completed",
        "resulted_at": at("2024-04-16T21:55:00"),
        "resulted_date": date(2024, 4, 16),
    }
    reflex = order_row(  # the free T4 the lab added: a row of its own, ordered by nobody
        placer_order_number="PLC-664002",
        placer_order_namespace="ALDERCHART",
        code="3024-7",
        mrn="MRN664002",
        mrn_issuer="ALDER_MC",
        filler_order_number="QL-88002",
        filler_order_namespace="QUARRY_LAB",
        status="completed",
        resulted_at=at("2024-04-16T21:55:00"),
        resulted_date=date(2024, 4, 16),
    )
    assert orders(eng) == {"3016-3": completed, "3024-7": reflex}
    assert sorted(tuple(r[c] for c in link) for r in store.rows("diagnostic_report")) == [
        ("PLC-664002", "ALDERCHART", "QL-88001", "final"),
        ("PLC-664002", "ALDERCHART", "QL-88002", "final"),
    ]
    assert len(store.rows("observation")) == 2
    # as a reader sees it (`engine patient`): each order with its own result, none left without
    # its order; the text view renders a reflex row (no ordered_at, no visit) too
    out = eng.cli("patient", "MRN664002", "--issuer", "ALDER_MC", "--purpose", "test", "--config", str(eng.config))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("order PLC-664002") == 2, out.stdout
    out = eng.cli(
        "patient", "MRN664002", "--issuer", "ALDER_MC", "--purpose", "test", "--json", "--config", str(eng.config)
    )
    entries = [e for v in json.loads(out.stdout)["visits"] for e in v["orders"]]
    assert sorted((e["order"]["code"], [r["code"] for r in e["reports"]]) for e in entries) == [
        ("3016-3", ["3016-3"]),
        ("3024-7", ["3024-7"]),
    ]

    # the preliminary result resent late: a duplicate, dropped; the order stays completed
    send(eng.lab_port, fixture_bytes(PRELIMINARY))
    assert settle(eng, 4)[-1]["status"] == "FILTERED"
    assert orders(eng) == {"3016-3": completed, "3024-7": reflex}


def test_a_result_naming_another_patients_order_fails_with_the_reason_and_moves_nothing(orders_engine):
    eng = orders_engine
    send(eng.orders_port, fixture_bytes(OML_V251))
    settle(eng, 1)
    other = (
        fixture_bytes(PRELIMINARY)
        .replace(b"QL-ORU-0001", b"QL-ORU-0901")
        .replace(b"MRN664002^^^ALDER_MC^MR||OKAFOR-LINDQVIST^TOMAS^E||19790302|M", b"MRN664099^^^ALDER_MC^MR||ROE^JAN")
    )
    assert b"MRN664099" in other
    send(eng.lab_port, other)
    [_order, result] = settle(eng, 2)
    assert result["status"] == "ERROR"
    reason = "clinical.service_order: this placer_order_number/placer_order_namespace/code already belongs to another"
    assert reason in result["error"]
    assert "MRN664099" not in result["error"] and "ROE" not in result["error"]  # the reason, never the values
    assert orders(eng) == {"3016-3": TSH}  # neither moved nor re-parented
    assert clinical(eng).rows("diagnostic_report") == []  # the result's message was not applied


def test_an_order_that_names_no_test_is_kept_as_a_warning_never_dropped_silently(orders_engine, lab):
    eng = orders_engine
    cancel_by_requisition = (
        "MSH|^~\\&|ALDERCHART|ALDER_MC|QUARRYLIS|QUARRY_LAB|20240415110000||ORM^O01|ALD-ORM-0101|P|2.3\r"
        "PID|1||MRN664011^^^ALDER_MC^MR||LINDGARD^PAAVO||19500101|M\r"
        "ORC|CA|REQ-664011^ALDERCHART|||||||20240415105900\r"
    ).encode("ascii")
    [ack] = send(eng.orders_port, cancel_by_requisition)
    assert ack["MSA"][1] == "AA"
    settle(eng, 1)
    out = eng.cli("messages", "--config", str(eng.config), "--json")
    assert out.returncode == 0, out.stderr
    [row] = json.loads(out.stdout)
    assert row["status"] == "SENT"
    [warning] = row["warnings"]
    assert warning.startswith("clinical: clinical.service_order.code: required value is missing; record skipped")
    assert "in ORC 1)" in warning and "REQ-664011" not in warning
    assert clinical(eng).rows("service_order") == []
    assert lab.wait_for(["ALD-ORM-0101"], timeout=20)  # the lab still gets the cancel
