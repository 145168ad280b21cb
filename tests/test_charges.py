"""Charges end to end: a real ``engine run`` with the ``charges`` channel (DFT -> pm.charge) and
the sample ``adt`` channel (an ADT's PR1 -> pm.charge), the fixtures of
``tests/fixtures/hl7v2/charges/`` sent over MLLP, each line read back from the PM store column by
column.

A charge line is keyed by transaction id (FT1-2, else <MSH-10>:<line>; an ADT's PR1-19, else
PR1:<visit>:<code>:<date>), sending application and type: a resent DFT updates its own lines and
never duplicates them, a credit (CD) is a line of its own, amounts are exact decimals, the
diagnoses and modifiers are JSON lists in order; payments and adjustments are warnings, not lines.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

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

from engine.stores.pm import charge as CHARGE
from engine.stores.records_store import RecordStore
from engine.stores.schema import columns_of
from engine.transforms import load_mapping

# The channel(s) as config/channels.yaml has them.
CHANNEL = sample_channel("charges")
ADT_CHANNEL = sample_channel("adt")
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
    + ADT_CHANNEL
)
MANAGED = ("id", "updated_at", "last_message_id", "last_seq")
EMPTY = {c.name: None for c in CHARGE.columns if c.name not in MANAGED}  # every column, none set

LINDQVIST = {"id": "1740000044", "name": "LINDQVIST, ANNA"}
VISIT_LINE = {
    **EMPTY,
    "transaction_id": "TXN-880101",
    "transaction_source": "CHARGECAP",
    "transaction_type": "CG",
    "origin": "FT1",
    "mrn": "NP870001",
    "mrn_issuer": "NORTHPARK",
    "visit_number": "V240502-0001",
    "account_number": "ACC870001",
    "set_id": 1,
    "batch_id": "B20240502-01",
    "service_at": datetime(2024, 5, 2, 16, 30, tzinfo=UTC),  # 09:30 Pacific (PDT)
    "service_date": date(2024, 5, 2),
    "posted_at": datetime(2024, 5, 3, 0, 0, tzinfo=UTC),
    "posted_date": date(2024, 5, 2),
    "charge_code": "CDM-99214",
    "charge_text": "Office visit, established, moderate",
    "charge_system": "CDM",
    "description": "Office visit est. pt, moderate MDM",
    "procedure_code": "99214",
    "procedure_text": "Office or other outpatient visit, established patient, 30-39 minutes",
    "procedure_system": "C4",
    "modifiers": '["25"]',
    "quantity": 1.0,
    "amount": Decimal("185.0000"),
    "unit_amount": Decimal("185.0000"),
    "currency": "USD",
    "diagnoses": '["E11.9","I10"]',
    "rendering_provider": LINDQVIST["id"],
    "rendering_provider_name": LINDQVIST["name"],
    "ordering_provider": LINDQVIST["id"],
    "ordering_provider_name": LINDQVIST["name"],
    "entered_by": "CLERK12",
    "department_code": "FAM",
    "department_text": "Family medicine",
    "department_system": "L",
    "location": "FAMMED-7",
    "patient_type": "O",
    "fee_schedule": "STD",
    "insurance_plan_id": "CASC01",
    "filler_order_number": "ORD-880101",
    "filler_order_namespace": "EHR",
}
VENIPUNCTURE_LINE = {
    **VISIT_LINE,
    "transaction_id": "TXN-880102",
    "set_id": 2,
    "service_at": datetime(2024, 5, 2, 16, 45, tzinfo=UTC),
    "charge_code": "CDM-36415",
    "charge_text": "Venipuncture",
    "description": "Venipuncture & specimen handling",  # \T\ decoded
    "procedure_code": "36415",
    "procedure_text": "Collection of venous blood by venipuncture & handling",
    "modifiers": '["59","XU"]',
    "amount": Decimal("18.5000"),
    "unit_amount": Decimal("18.5000"),
    "diagnoses": '["E11.9"]',
    "department_code": "LAB",
    "department_text": "Laboratory",
    "filler_order_number": "ORD-880102",
}
CREDIT_LINE = {
    **VISIT_LINE,
    "transaction_type": "CD",
    "reversal_of": "TXN-880101",
    "set_id": 3,
    "batch_id": "B20240502-02",
    "posted_at": datetime(2024, 5, 3, 0, 10, tzinfo=UTC),
    "description": "Reversal: level",
    "amount": Decimal("-185.0000"),
}


@pytest.fixture
def billing(tmp_path, fresh_engine):
    """An engine with the charges channel and the sample adt channel (``billing.port`` for DFT)."""
    port = free_port()
    eng = fresh_engine(config_file(tmp_path, CONFIG), ENGINE_CHARGES_PORT=str(port))
    eng.port = port
    return eng


def fixture(name: str) -> bytes:
    return (FIXTURES / "charges" / name).read_bytes()


def send(eng, data: bytes, control_id: str, *, port: int | None = None, final: str = "SENT", code: str = "AA") -> None:
    """Send raw bytes, check the ACK (``code`` for this control id), wait until it is ``final``."""
    send_and_settle(eng, port or eng.port, data, control_id, final, code)


def messages(eng) -> dict[str, dict]:
    """``engine messages --json`` as an operator reads it: {control id: newest row}."""
    rows: dict[str, dict] = {}
    for r in operator_messages(eng):  # newest first
        rows.setdefault(r["control_id"], r)
    return rows


def rows(eng, table: str = "charge", kind: str = "pm", **where) -> list[dict]:
    store = RecordStore(f"sqlite:///{eng.data}/{kind}.db", kind)
    try:
        return store.rows(table, **where)
    finally:
        store.dispose()


def lines(eng, **where) -> dict[tuple[str, str], dict]:
    """{(transaction id, type): row}; fails if a key has two rows."""
    found = rows(eng, **where)
    out = {(r["transaction_id"], r["transaction_type"]): r for r in found}
    assert len(out) == len(found)
    return out


def columns(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in MANAGED}


def test_the_channels_and_mappings_pass_engine_check_against_the_store_columns(tmp_path):
    text = CONFIG
    for store in ("MESSAGE", "CLINICAL", "PM"):  # engine check runs without the engine's environment
        text = text.replace(f"${{ENGINE_{store}_STORE_URL}}", f"sqlite:///{tmp_path}/{store.lower()}.db")
    out = engine_check(config_file(tmp_path, text))
    assert out.returncode == 0, out.stderr
    for name in ("dft_pm", "adt_pm"):
        mapping = load_mapping(ROOT / "mappings" / f"{name}.yaml", columns={"pm": columns_of("pm")})
        assert mapping.name == name


def test_a_dft_posts_one_line_per_charge_and_credit_with_every_column_and_a_resend_duplicates_nothing(billing):
    send(billing, fixture("dft_p03_v251_charges.hl7"), "CC-P03-0001")
    stored = lines(billing)
    assert sorted(stored) == [("TXN-880101", "CD"), ("TXN-880101", "CG"), ("TXN-880102", "CG")]
    assert columns(stored["TXN-880101", "CG"]) == VISIT_LINE
    assert columns(stored["TXN-880102", "CG"]) == VENIPUNCTURE_LINE
    assert columns(stored["TXN-880101", "CD"]) == CREDIT_LINE  # the reversal: its own row
    assert json.loads(stored["TXN-880101", "CG"]["diagnoses"]) == ["E11.9", "I10"]  # FT1-19 in order
    assert sum(r["amount"] for r in stored.values()) == Decimal("18.50")  # exact: the credit cancels the visit
    info = messages(billing)["CC-P03-0001"]
    assert (info["status"], info["channel"], info["warnings"], info["error"]) == ("SENT", "charges", [], None)

    # the same bytes again: acknowledged, dropped as a duplicate
    send(billing, fixture("dft_p03_v251_charges.hl7"), "CC-P03-0001", final="FILTERED")
    assert lines(billing) == stored

    # the posting retransmitted under a new control id: each line (FT1-2) updates its own row
    send(billing, fixture("dft_p03_v251_resent.hl7"), "CC-P03-0001-R1")
    resent = lines(billing)
    resent_id = messages(billing)["CC-P03-0001-R1"]["id"]
    assert sorted(resent) == sorted(stored)
    for key, row in resent.items():
        assert row["id"] == stored[key]["id"] and columns(row) == columns(stored[key])
        assert row["last_message_id"] == resent_id

    # the original reprocessed now: applied again, it never rolls the newer resend back
    out = billing.cli("reprocess", "--config", str(billing.config), str(info["id"]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines(billing) == resent


def test_a_v23_dft_without_transaction_ids_takes_its_procedure_from_pr1_and_its_diagnoses_from_dg1(billing):
    send(billing, fixture("dft_p03_v23_pr1.hl7"), "SB-0503-0042")  # CRLF, 8859/1, a bare PID-3
    [row] = rows(billing)
    assert columns(row) == {
        **EMPTY,
        "transaction_id": "SB-0503-0042:1",  # <MSH-10>:<line>
        "transaction_source": "SURGBILL",
        "transaction_type": "CG",
        "origin": "FT1",
        "mrn": "CC870002",
        "mrn_issuer": "CEDAR_CLINIC",
        "visit_number": "CV240503-0042",
        "account_number": "CC-ACCT-870002",
        "set_id": 1,
        "batch_id": "SB-0503",
        "service_at": datetime(2024, 5, 3, 15, 15, tzinfo=UTC),  # FT1-4 a date: the PR1's time
        "service_date": date(2024, 5, 3),
        "posted_at": datetime(2024, 5, 4, 1, 0, tzinfo=UTC),
        "posted_date": date(2024, 5, 3),
        "charge_code": "SURG-47563",
        "charge_text": "Lap chole w cholangiogram",
        "charge_system": "CDM",
        "description": "LAP CHOLE W/ CHOLANGIOGRAM",
        "procedure_code": "47563",  # FT1-25 empty: the PR1 under the FT1
        "procedure_text": "Laparoscopy, surgical; cholecystectomy with cholangiography",
        "procedure_system": "C4",
        "modifiers": '["80"]',
        "quantity": 1.0,
        "amount": Decimal("2450.0000"),
        "unit_amount": Decimal("2450.0000"),
        "diagnoses": '["K80.20","574.20"]',  # FT1-19 empty: the DG1, DG1-15 rank 1 first
        "rendering_provider": "1750000055",
        "rendering_provider_name": "NAKAMURA, KENJI",
        "department_code": "SUR",
        "location": "ASC-2",
    }
    # applied again (reprocess, same MSH-10): the same line, never a second one
    info = messages(billing)["SB-0503-0042"]
    out = billing.cli("reprocess", "--config", str(billing.config), str(info["id"]))
    assert out.returncode == 0, out.stdout + out.stderr
    [again] = rows(billing)
    assert again["id"] == row["id"] and columns(again) == columns(row)


def test_payments_and_adjustments_are_warnings_not_lines_and_the_charge_beside_them_is_posted(billing):
    send(billing, fixture("dft_p03_v27_payment.hl7"), "CC-P03-0107")  # v2.7, LF-separated
    [row] = rows(billing)
    assert (row["transaction_id"], row["transaction_type"], row["amount"], row["unit_amount"]) == (
        "TXN-880301",
        "CG",
        Decimal("12.6000"),
        Decimal("3.1500"),
    )
    assert row["currency"] is None  # 12.60^UP: UP is a price type, not a currency
    assert (row["ndc_code"], row["ndc_quantity"], row["ndc_units"]) == ("00641-0367-21", 4.0, "mg")
    assert (row["revenue_code"], row["authorization_number"], row["abn_code"]) == ("0636", "AUTH-5521", "GA")
    info = messages(billing)["CC-P03-0107"]
    assert info["status"] == "SENT" and info["error"] is None
    assert [w.split(" (mapping ")[0] for w in info["warnings"]] == [
        "pm: pm.charge.transaction_type: code not in table 'charge_type' (its on_unknown is error); record skipped"
    ] * 2
    assert info["warnings"][0].endswith("in FT1 2)") and info["warnings"][1].endswith("in FT1 3)")
    text = json.dumps(info["warnings"])
    for value in ("PAY-55120", "ADJ-55121", "25.00", "0.40", "COPAY", "PY", "AJ"):  # where, never what
        assert value not in text


def test_procedures_of_an_adt_become_charge_lines_that_a_resent_a08_updates_in_place(billing):
    a08 = fixture("adt_a08_v24_procedures.hl7")
    send(billing, a08, "T-A08-PR-0001", port=billing.adt_port)
    stored = lines(billing)
    common = {
        **EMPTY,
        "transaction_source": "REGADT",
        "transaction_type": "CG",
        "origin": "PR1",
        "mrn": "MRN870004",
        "mrn_issuer": "SUNRISE_GH",
        "visit_number": "V240504-0004",
        "account_number": "ACC870004",
        "procedure_system": "C4",
        "rendering_provider": "1770000077",  # the surgeon (PR1-11), not the anesthesiologist (PR1-8)
        "rendering_provider_name": "VOSS, HELENE",
    }
    assert columns(stored["PR1:V240504-0004:27236:2024-05-04", "CG"]) == {
        **common,
        "transaction_id": "PR1:V240504-0004:27236:2024-05-04",
        "set_id": 1,
        "service_at": datetime(2024, 5, 4, 21, 30, tzinfo=UTC),
        "service_date": date(2024, 5, 4),
        "procedure_code": "27236",
        "procedure_text": "Open treatment of femoral fracture, proximal end, neck; prosthetic replacement",
        "description": "HEMIARTHROPLASTY RT HIP",
        "modifiers": '["RT"]',
        "diagnoses": '["S72.001A"]',  # its own, PR1-15
    }
    assert columns(stored["PR1:V240504-0004:20680:2024-05-05", "CG"]) == {
        **common,
        "transaction_id": "PR1:V240504-0004:20680:2024-05-05",
        "set_id": 2,
        "service_at": datetime(2024, 5, 5, 16, 15, tzinfo=UTC),
        "service_date": date(2024, 5, 5),
        "procedure_code": "20680",
        "procedure_text": "Removal of implant; deep",
        "diagnoses": '["S72.001A","W19.XXXA"]',  # none of its own: the DG1 by rank
    }
    assert all(r["amount"] is None and r["quantity"] is None for r in stored.values())  # no price in an ADT
    assert [r["visit_number"] for r in rows(billing, "visit")] == ["V240504-0004"]
    assert len(rows(billing, "diagnosis", kind="clinical")) == 2  # the ADT's other destination, unchanged

    # the next A08 of the visit resends its procedures: the same two lines, updated in place
    send(billing, a08.replace(b"T-A08-PR-0001", b"T-A08-PR-0002"), "T-A08-PR-0002", port=billing.adt_port)
    again = lines(billing)
    assert sorted(again) == sorted(stored)
    assert all(again[k]["id"] == stored[k]["id"] and columns(again[k]) == columns(stored[k]) for k in stored)
    assert {r["last_message_id"] for r in again.values()} == {messages(billing)["T-A08-PR-0002"]["id"]}


def test_a_transaction_type_no_table_lists_fails_the_dft_whole_with_its_reason(billing):
    dft = (
        "MSH|^~\\&|CHARGECAP|NORTHPARK|HIE_ENGINE|SUNRISE_GH|20240507080000||DFT^P03|CC-P03-0201|P|2.5\r"
        "PID|1||NP870001^^^NORTHPARK^MR\r"
        "FT1|1|TXN-880401||20240507||CG|CDM-99213^Office visit^CDM|||1|120.00\r"
        "FT1|2|TXN-880402||20240507||XX|CDM-99000^Handling^CDM|||1|10.00\r"
    )
    # the sample's charges channel answers after processing: a DFT it cannot post gets AE
    send(billing, dft.encode(), "CC-P03-0201", final="ERROR", code="AE")
    info = messages(billing)["CC-P03-0201"]
    assert "pm.charge.transaction_type: code not in table 'charge_type'" in info["error"]
    assert "in FT1 2" in info["error"]
    assert rows(billing) == []  # nothing half-posted: the first line waits with the second
