"""Immunizations (VXU^V04) end to end: a real ``engine run`` with the ``immunizations``
channel, the fixtures of ``tests/fixtures/hl7v2/immunizations/`` sent over MLLP, each dose
read back from the clinical store column by column.

Every RXA is a row keyed by patient, vaccine and day; the ACK is ``ACK^V04^ACK``; an OBX with
no column is a warning (where, never what); a resend is dropped; an update (RXA-21 U) updates
the dose, a delete (D) keeps it as entered-in-error; a reprocess of the first message never
rolls either back; a v2.3.1 feed without ORC keys each dose by its CVX code, not the local one.
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
CHANNEL = sample_channel("immunizations")
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
MANAGED = ("id", "updated_at", "last_message_id", "last_seq")
PATIENT = {"mrn": "MRN830001", "mrn_issuer": "NORTHCOVE_PEDS"}
HEPB = {
    **PATIENT,
    "vaccine_code": "08",  # the CVX triplet, not the CPT alternate 90744
    "administered_date": date(2024, 3, 5),
    "vaccine_text": "Hep B, adolescent or pediatric",
    "vaccine_system": "CVX",
    "administered_at": datetime(2024, 3, 5, 18, 15, tzinfo=UTC),  # 10:15 Pacific (PST), sent without offset
    "filler_order_number": "IZ-77001",
    "filler_order_namespace": "NORTHCOVE_EHR",
    "visit_number": "V240305-0101",
    "status": "completed",
    "completion_status": "CP",
    "action_code": "A",
    "dose_amount": 0.5,
    "dose_units_code": "mL",
    "dose_units_text": "milliliter",
    "dose_units_system": "UCUM",
    "lot_number": "HB41872K",
    "expiration_date": date(2025, 8, 31),
    "manufacturer_code": "MSD",
    "manufacturer_text": "Merck and Co., Inc.",
    "manufacturer_system": "MVX",
    "route_code": "C28161",
    "route_text": "Intramuscular",
    "route_system": "NCIT",
    "site_code": "RT",
    "site_text": "Right Thigh",
    "site_system": "HL70163",
    "administering_provider": "7100000003",
    "administering_provider_name": "OYELOWO, BISI",
    "ordering_provider": "7100000002",
    "ordering_provider_name": "MARAVILLA, TOMAS",
    "location": "NORTHCOVE_PEDS",
    "information_source_code": "00",
    "information_source_text": "New immunization record",
    "information_source_system": "NIP001",
    "refusal_reason_code": None,
    "refusal_reason_text": None,
    "refusal_reason_system": None,
    "notes": "Parent held child & soothed; no reaction in 15 min.",  # the annotation comment OBX, \T\ decoded
}
DTAP = {
    **dict.fromkeys(HEPB),
    **PATIENT,
    "vaccine_code": "20",
    "administered_date": date(2023, 11, 2),  # RXA-3 a date only: no instant
    "vaccine_text": "DTaP",
    "vaccine_system": "CVX",
    "status": "completed",
    "completion_status": "CP",
    "action_code": "A",
    "information_source_code": "01",  # historical: no order number (9999), no amount (999), no visit
    "information_source_text": "Historical information - source unspecified",
    "information_source_system": "NIP001",
}


def fixture(name: str) -> bytes:
    return (FIXTURES / "immunizations" / name).read_bytes()


@pytest.fixture
def iz(tmp_path, fresh_engine):
    """An engine with the immunizations channel only, on a free port (``iz.port``)."""
    port = free_port()
    eng = fresh_engine(config_file(tmp_path, CONFIG), ENGINE_IMMUNIZATION_PORT=str(port))
    eng.port = port
    return eng


def send(eng, name: str, control_id: str, *, final: str = "SENT") -> dict[str, list[str]]:
    """Send one fixture, check its ACK, wait until it is ``final``; the ACK's fields."""
    return send_and_settle(eng, eng.port, fixture(name), control_id, final)


def messages(eng) -> list[dict]:
    return operator_messages(eng)


def doses(eng, **where) -> dict[str, dict]:
    """{vaccine code: row without id and bookkeeping}; fails if a code has two rows."""
    store = RecordStore(f"sqlite:///{eng.data}/clinical.db", "clinical")
    try:
        rows = store.rows("immunization", **where)
    finally:
        store.dispose()
    out = {r["vaccine_code"]: r for r in rows}
    assert len(out) == len(rows)
    return out


def columns(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in MANAGED}


def test_the_channel_and_the_mapping_pass_engine_check_against_the_store_columns(tmp_path):
    text = CONFIG
    for store in ("MESSAGE", "CLINICAL", "PM"):  # engine check runs without the engine's environment
        text = text.replace(f"${{ENGINE_{store}_STORE_URL}}", f"sqlite:///{tmp_path}/{store.lower()}.db")
    out = engine_check(config_file(tmp_path, text))
    assert out.returncode == 0, out.stderr
    mapping = load_mapping(ROOT / "mappings" / "vxu_clinical.yaml", columns={"clinical": columns_of("clinical")})
    assert mapping.name == "vxu_clinical"


def test_each_rxa_is_a_row_with_every_column_the_ack_is_v04_and_each_unplaced_obx_is_a_warning(iz):
    ack = send(iz, "vxu_v04_cdc_251.hl7", "NC-V04-0001")
    assert ack["MSH"][9] == "ACK^V04^ACK"
    stored = doses(iz)
    assert sorted(stored) == ["08", "20"]
    assert columns(stored["08"]) == HEPB
    assert columns(stored["20"]) == DTAP
    [row] = messages(iz)
    assert row["status"] == "SENT" and row["channel"] == "immunizations" and row["error"] is None
    # funding eligibility and the three VIS observations have no column: one warning each
    assert [w.split(" in ")[-1] for w in row["warnings"]] == [f"ORC 1/RXA 1/OBX {n})" for n in (1, 2, 3, 4)]
    assert all(w.startswith("clinical: clinical.immunization.notes: code not in table") for w in row["warnings"])
    assert all("record skipped" in w for w in row["warnings"])
    text = json.dumps(row["warnings"])
    for value in ("V02", "VFC", "64994-7", "20230512", "Hep B"):  # positions, never values
        assert value not in text

    # a resend (same MSH-10): acknowledged, dropped; still two rows, untouched
    send(iz, "vxu_v04_cdc_251.hl7", "NC-V04-0001", final="FILTERED")
    again = doses(iz)
    assert sorted(again) == ["08", "20"]
    assert again["08"]["last_message_id"] == stored["08"]["last_message_id"]


def test_an_update_changes_the_dose_a_delete_keeps_it_in_error_and_a_reprocess_rolls_neither_back(iz):
    send(iz, "vxu_v04_cdc_251.hl7", "NC-V04-0001")
    send(iz, "vxu_v04_update.hl7", "NC-V04-0002")
    stored = doses(iz)
    assert sorted(stored) == ["08", "20"]  # the same dose: patient, vaccine and day
    updated = {**HEPB, "action_code": "U", "lot_number": "HB41872R", "site_code": "LT", "site_text": "Left Thigh"}
    assert columns(stored["08"]) == updated  # the notes of the first message stay: the update sends none

    send(iz, "vxu_v04_delete.hl7", "NC-V04-0003")
    stored = doses(iz)
    assert sorted(stored) == ["08", "20"]  # kept, not deleted
    assert columns(stored["20"]) == {**DTAP, "status": "entered-in-error", "action_code": "D"}
    assert columns(stored["08"]) == updated

    out = iz.cli("patient", "MRN830001", "--issuer", "NORTHCOVE_PEDS", "--purpose", "test", "--config", str(iz.config))
    assert out.returncode == 0, out.stderr
    assert "immunization Hep B, adolescent or pediatric (CVX) 0.5 milliliter lot HB41872R completed" in out.stdout
    assert "immunization DTaP (CVX) entered-in-error" in out.stdout, out.stdout

    first = min(m["id"] for m in messages(iz) if m["control_id"] == "NC-V04-0001")
    out = iz.cli("reprocess", "--config", str(iz.config), str(first))
    assert out.returncode == 0 and f"{first}: SENT" in out.stdout, out.stdout + out.stderr
    after = doses(iz)
    assert columns(after["08"]) == updated  # older than the update: the lot stays corrected
    assert after["20"]["status"] == "entered-in-error"  # older than the delete
    assert after["20"]["last_message_id"] == stored["20"]["last_message_id"]


def test_a_v231_feed_without_orc_keys_each_dose_by_its_cvx_code_not_the_local_one(iz):
    send(iz, "vxu_v04_v231.hl7", "PC-V04-0311")
    stored = doses(iz, mrn="830011")
    assert sorted(stored) == ["03", "21"]
    common = {
        **dict.fromkeys(HEPB),
        "mrn": "830011",
        "mrn_issuer": "PINECREST_PEDS",  # no type, no authority: the sending facility
        "administered_date": date(2024, 2, 20),
        "vaccine_system": "CVX",
        "status": "completed",  # no RXA-20
        "dose_amount": 0.5,
        "dose_units_code": "ML",
        "manufacturer_code": "MSD",
        "manufacturer_text": "MERCK",
        "manufacturer_system": "MVX",
        "route_code": "SC",
        "route_text": "SUBCUTANEOUS",
        "route_system": "HL70162",
        "site_text": None,
        "site_system": "HL70163",
        "administering_provider": "D2201",
        "administering_provider_name": "PRESCOTT, HANNAH",
        "location": "PINECREST_PEDS",
        "information_source_code": "00",
        "information_source_text": "NEW IMMUNIZATION RECORD",
    }
    assert columns(stored["03"]) == {
        **common,
        "vaccine_code": "03",
        "vaccine_text": "measles, mumps and rubella virus vaccine",
        "administered_at": datetime(2024, 2, 20, 17, 15, tzinfo=UTC),
        "lot_number": "M7321QQ",
        "expiration_date": date(2025, 6, 30),
        "site_code": "LA",
        "site_text": "LEFT ARM",
    }
    assert columns(stored["21"]) == {
        **common,
        "vaccine_code": "21",
        "vaccine_text": "varicella",
        "administered_at": datetime(2024, 2, 20, 17, 18, tzinfo=UTC),
        "lot_number": "V0088AA",
        "expiration_date": date(2025, 4, 15),
        "site_code": "RA",
        "site_text": "RIGHT ARM",
    }
    [row] = messages(iz)
    assert row["status"] == "SENT" and row["warnings"] == []
