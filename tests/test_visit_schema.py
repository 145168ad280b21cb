"""The rest of a visit in the stores (issue 12): appointments, orders, medications, documents,
immunizations (clinical), appointments and charge lines (PM); their migrations; merges; and
``engine patient``, the audited story of one patient across both stores.

Store tests run on SQLite and on PostgreSQL (a fresh schema of the machine's test database,
through ``pg_url``).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ROOT
from sqlalchemy import bindparam, inspect, text

from engine.errors import DeliveryError
from engine.records import Record
from engine.stores import migrate
from engine.stores.audit import os_user
from engine.stores.db import UTCDateTime, write_transaction
from engine.stores.patient_view import PatientView
from engine.stores.records_store import RecordStore
from engine.stores.schema import columns_of

NORTH, SOUTH = "NORTH", "SOUTH"
T0 = datetime(2026, 3, 2, 16, 0, tzinfo=UTC)

CLINICAL_NEW = (
    "appointment",
    "service_order",
    "medication_order",
    "medication_dispense",
    "medication_administration",
    "document",
    "immunization",
)
PM_NEW = ("appointment", "charge")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def db_url(request, tmp_path):
    """A fresh database: a SQLite file, or a PostgreSQL schema (search_path) dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    yield request.getfixturevalue("pg_url")


@pytest.fixture
def stores(db_url):
    """A clinical and a PM store at head, in one database (as on PostgreSQL in production)."""
    made = {kind: RecordStore(db_url, kind) for kind in ("clinical", "pm")}
    for s in made.values():
        s.upgrade()
    yield made
    for s in made.values():
        s.dispose()


def rec(target: str, mrn: str | None = "M1", issuer: str = NORTH, **values) -> Record:
    """An upsert on the target's natural key; ``mrn`` (with ``issuer``) names the patient."""
    kind, table = target.split(".")
    key = importlib.import_module(f"engine.stores.{kind}").SPEC.keys[table]
    if mrn is not None:
        values = {"mrn": mrn, "mrn_issuer": issuer, **values}
    return Record(target, key, values)


def merge(kind: str, old: str, new: str, issuer: str = NORTH) -> Record:
    identity = "clinical.patient" if kind == "clinical" else "pm.registration"
    values = {"old_mrn_issuer": issuer, "old_mrn": old, "mrn_issuer": issuer, "mrn": new}
    return Record(identity, ("mrn", "mrn_issuer"), values, op="merge")


def one_of_each(mrn: str = "M1", issuer: str = NORTH, visit: str = "V1") -> dict[str, list[Record]]:
    """A record for every new table, as the mappings will write them, one visit's worth."""
    at = T0
    clinical = [
        rec("clinical.patient", mrn, issuer, family_name="Poe", given_name="Ann", birth_date=date(1980, 1, 2)),
        rec("clinical.encounter", mrn, issuer, visit_number=visit, patient_class="O", admit_at=at),
        rec(
            "clinical.appointment",
            mrn,
            issuer,
            filler_appointment_id="APT-1",
            filler_appointment_namespace="CADENCE",
            placer_appointment_id="P-1",
            visit_number=visit,
            status="booked",
            event="S12",
            start_at=at,
            duration=30,
            duration_units="min",
            appointment_type_text="Follow-up",
            provider="1234",
            provider_name="Smith, Jane",
            resources=[{"kind": "AIP", "id": "1234"}],
        ),
        rec(
            "clinical.service_order",
            mrn,
            issuer,
            placer_order_number="ORD-1",
            placer_order_namespace="EPIC",
            code="CBC",
            code_text="Complete blood count",
            filler_order_number="LAB-1",
            visit_number=visit,
            order_control="NW",
            status="ordered",
            ordered_at=at,
            diagnoses=[{"code": "E11.9", "system": "I10"}],
        ),
        rec(
            "clinical.diagnostic_report",
            mrn,
            issuer,
            filler_order_number="LAB-1",
            code="CBC",
            occurrence=1,
            placer_order_number="ORD-1",
            placer_order_namespace="EPIC",
            code_text="Complete blood count",
            status="final",
            visit_number=visit,
            observed_at=at,
        ),
        rec(
            "clinical.observation",
            mrn,
            issuer,
            filler_order_number="LAB-1",
            report_code="CBC",
            report_occurrence=1,
            specimen_seq=0,
            seq=1,
            placer_order_number="ORD-1",
            placer_order_namespace="EPIC",
            code="WBC",
            code_text="White cells",
            value_numeric=7.5,
            units="10*3/uL",
        ),
        rec(
            "clinical.medication_order",
            mrn,
            issuer,
            placer_order_number="RX-1",
            visit_number=visit,
            status="active",
            medication_code="197361",
            medication_text="Amlodipine 5 mg tablet",
            medication_system="RXNORM",
            give_amount=1,
            give_units_text="tablet",
            frequency="daily",
            ordered_at=at,
            refills=3,
        ),
        rec(
            "clinical.medication_dispense",
            mrn,
            issuer,
            placer_order_number="RX-1",
            dispense_seq=1,
            dispensed_at=at,
            quantity=30,
            quantity_units_text="tablet",
            prescription_number="PH-77",
        ),
        rec(
            "clinical.medication_administration",
            mrn,
            issuer,
            placer_order_number="RX-1",
            give_seq=1,
            administration_seq=1,
            start_at=at,
            amount=1,
            amount_units_text="tablet",
            status="completed",
        ),
        rec(
            "clinical.document",
            mrn,
            issuer,
            document_number="DOC-1",
            document_namespace="EHR",
            visit_number=visit,
            document_type_code="11488-4",
            document_type_text="Consult note",
            status="final",
            event="T02",
            completion_status="AU",
            activity_at=at,
            content="Seen today.\nDoing well.",
            content_type="text/plain",
        ),
        rec(
            "clinical.immunization",
            mrn,
            issuer,
            vaccine_code="141",
            administered_date=date(2026, 3, 2),
            vaccine_text="Influenza, seasonal",
            vaccine_system="CVX",
            administered_at=at,
            visit_number=visit,
            lot_number="L-9",
            status="completed",
        ),
    ]
    pm = [
        rec("pm.registration", mrn, issuer, family_name="Poe", given_name="Ann", account_number="A-1"),
        rec("pm.coverage", mrn, issuer, payer_id="BCBS", member_id="XJ1", priority=1, payer_name="Blue Cross"),
        rec("pm.visit", mrn, issuer, visit_number=visit, account_number="A-1", admit_at=at),
        rec(
            "pm.appointment",
            mrn,
            issuer,
            filler_appointment_id="APT-1",
            filler_appointment_namespace="CADENCE",
            visit_number=visit,
            account_number="A-1",
            status="booked",
            start_at=at,
        ),
        charge(mrn, issuer, visit, "TX-1", "CG", amount="125.10"),
    ]
    return {"clinical": clinical, "pm": pm}


def charge(mrn: str, issuer: str, visit: str, tid: str, ttype: str, **values) -> Record:
    defaults = dict(
        transaction_source="EHR",
        visit_number=visit,
        origin="FT1",
        service_date=date(2026, 3, 2),
        procedure_code="99213",
        procedure_system="CPT",
        procedure_text="Office visit",
        modifiers=["25"],
        quantity=1,
        amount="125.10",
        diagnoses=["E11.9", "I10"],
        rendering_provider="1234567893",
    )
    return rec("pm.charge", mrn, issuer, transaction_id=tid, transaction_type=ttype, **{**defaults, **values})


def stripped(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "updated_at"} for r in rows]


def snapshot(store: RecordStore, tables) -> dict[str, list[dict]]:
    return {t: stripped(store.rows(t)) for t in tables}


# -- migrations ---------------------------------------------------------------------------------------
def _diff(store: RecordStore) -> list:
    """What Alembic would change to make the database match the model (this store's tables only)."""
    md = importlib.import_module(f"engine.stores.{store.schema}").metadata
    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": migrate.version_table(store.schema),
                "include_name": lambda name, type_, _parent: type_ != "table" or name in md.tables,
            },
        )
        return list(compare_metadata(ctx, md))


def _downgrade(store: RecordStore, revision: str) -> None:
    with write_transaction(store.engine) as conn:
        command.downgrade(migrate.config(store.url, store.schema, conn), revision)


def test_migrations_go_from_the_previous_head_to_the_new_one_and_back_keeping_rows_and_match_the_model(db_url):
    at = bindparam("at", type_=UTCDateTime())
    earlier = {
        "clinical": "INSERT INTO diagnostic_report (filler_order_number, code, occurrence, placer_order_number, mrn,"
        " mrn_issuer, updated_at) VALUES ('F1', 'CBC', 1, 'ORD-1', 'M1', 'NORTH', :at)",
        "pm": "INSERT INTO visit (visit_number, mrn, mrn_issuer, updated_at) VALUES ('V1', 'M1', 'NORTH', :at)",
    }
    billing = {"claim", "claim_line", "remittance", "claim_payment", "service_payment", "adjustment", "acknowledgment"}
    new = {
        "clinical": {*CLINICAL_NEW, "record_access"},
        "pm": {"pm_appointment", "charge", "pm_record_access", *billing, "provider_adjustment"},
    }
    for kind in ("clinical", "pm"):
        s = RecordStore(db_url, kind)
        try:
            migrate.upgrade(db_url, kind, engine=s.engine, revision=f"{kind}_0004")
            with s.engine.begin() as conn:
                conn.execute(text(earlier[kind]).bindparams(at), {"at": T0})
            s.upgrade()
            s.check_schema()
            assert migrate.current(db_url, kind, engine=s.engine) == migrate.head(kind)  # pm: 0006 (billing) too
            assert _diff(s) == []
            assert new[kind] <= set(inspect(s.engine).get_table_names())
            if kind == "clinical":
                (report,) = s.rows("diagnostic_report")
                assert (report["placer_order_number"], report["placer_order_namespace"]) == ("ORD-1", None)
            else:
                assert [r["visit_number"] for r in s.rows("visit")] == ["V1"]

            _downgrade(s, f"{kind}_0004")
            assert migrate.current(db_url, kind, engine=s.engine) == f"{kind}_0004"
            names = set(inspect(s.engine).get_table_names())
            assert not new[kind] & names
            table = "diagnostic_report" if kind == "clinical" else "visit"
            with s.engine.connect() as conn:
                assert conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar() == 1
            if kind == "clinical":
                cols = {c["name"] for c in inspect(s.engine).get_columns("diagnostic_report")}
                assert "placer_order_namespace" not in cols and "placer_order_number" in cols

            s.upgrade()
            assert _diff(s) == []
        finally:
            s.dispose()


# -- writing: keys, idempotence, order ---------------------------------------------------------------
def test_every_new_table_takes_its_records_and_applying_them_again_leaves_one_row_each(stores):
    records = one_of_each()
    for kind in ("clinical", "pm"):
        s = stores[kind]
        assert s.apply_batch([(1, records[kind])]) == [None]
        tables = CLINICAL_NEW if kind == "clinical" else PM_NEW
        first = snapshot(s, tables)
        assert all(len(rows) == 1 for rows in first.values()), {t: len(r) for t, r in first.items()}
        assert s.apply_batch([(1, records[kind])]) == [None]  # the same message again (a reprocess)
        assert snapshot(s, tables) == first
    (appt,) = stores["clinical"].rows("appointment")
    assert (appt["mrn_issuer"], appt["mrn"], appt["start_at"]) == (NORTH, "M1", T0)
    assert json.loads(appt["resources"]) == [{"id": "1234", "kind": "AIP"}]
    (dispense,) = stores["clinical"].rows("medication_dispense")
    assert dispense["placer_order_namespace"] == ""  # sent without a namespace: ''
    (shot,) = stores["clinical"].rows("immunization")
    assert shot["administered_date"] == date(2026, 3, 2) and shot["administered_at"] == T0
    (line,) = stores["pm"].rows("charge")
    assert line["amount"] == Decimal("125.1000") and isinstance(line["amount"], Decimal)
    assert json.loads(line["modifiers"]) == ["25"] and json.loads(line["diagnoses"]) == ["E11.9", "I10"]


def test_an_older_message_never_overwrites_what_a_newer_one_wrote_in_the_new_tables(stores):
    c, p = stores["clinical"], stores["pm"]
    order = lambda status: rec("clinical.service_order", placer_order_number="O1", code="CBC", status=status)
    doc = lambda status: rec("clinical.document", document_number="D1", status=status)
    appt = lambda status: rec("pm.appointment", filler_appointment_id="A1", status=status)
    assert c.apply_batch([(20, [order("completed"), doc("final")])], seqs=[20]) == [None]
    assert c.apply_batch([(10, [order("ordered"), doc("preliminary")])], seqs=[10]) == [None]  # late, older
    assert [r["status"] for r in c.rows("service_order")] == ["completed"]
    assert [r["status"] for r in c.rows("document")] == ["final"]
    assert p.apply_batch([(20, [appt("cancelled")]), (10, [appt("booked")])], seqs=[20, 10]) == [None, None]
    assert [(r["status"], r["last_seq"]) for r in p.rows("appointment")] == [("cancelled", 20)]


def test_a_cancelled_appointment_keeps_its_row_with_status_cancelled_and_a_reschedule_moves_it(stores):
    p = stores["pm"]
    book = rec("pm.appointment", filler_appointment_id="A1", status="booked", event="S12", start_at=T0)
    later = datetime(2026, 3, 9, 16, 0, tzinfo=UTC)
    moved = rec("pm.appointment", filler_appointment_id="A1", status="booked", event="S13", start_at=later)
    cancel = rec(
        "pm.appointment",
        filler_appointment_id="A1",
        status="cancelled",
        event="S15",
        event_reason_code="PATCAN",
    )
    assert p.apply_batch([(1, [book]), (2, [moved]), (3, [cancel])]) == [None] * 3
    (row,) = p.rows("appointment")
    assert (row["status"], row["event"], row["start_at"], row["event_reason_code"]) == (
        "cancelled",
        "S15",
        later,
        "PATCAN",
    )


def test_a_reversal_is_a_new_charge_line_and_a_resent_dft_duplicates_nothing(stores):
    p = stores["pm"]
    post = [charge("M1", NORTH, "V1", "TX-1", "CG"), charge("M1", NORTH, "V1", "MSG-9:2", "CG", amount="40")]
    assert p.apply_batch([(1, post)]) == [None]
    assert p.apply_batch([(2, post)]) == [None]  # resent (same MSH-10): the same lines
    credit = charge("M1", NORTH, "V1", "TX-1", "CD", amount="-125.10", reversal_of="TX-1")
    assert p.apply_batch([(3, [credit])]) == [None]
    lines = sorted((r["transaction_id"], r["transaction_type"], r["amount"]) for r in p.rows("charge"))
    assert lines == [
        ("MSG-9:2", "CG", Decimal("40.0000")),
        ("TX-1", "CD", Decimal("-125.1000")),
        ("TX-1", "CG", Decimal("125.1000")),
    ]
    assert sum(r["amount"] for r in p.rows("charge")) == Decimal("40")  # exact: never binary floats
    # the same transaction id from another sending system is another line
    assert p.apply_batch([(4, [charge("M1", NORTH, "V1", "TX-1", "CG", transaction_source="OTHER")])]) == [None]
    assert len(p.rows("charge", transaction_id="TX-1")) == 3


@pytest.mark.parametrize(
    "record, words",
    [
        (rec("pm.charge", transaction_id="T1", transaction_type="CG", amount="12.3.4"), ["amount", "an amount"]),
        (rec("pm.charge", transaction_id="T1", transaction_type="CG", amount="NaN"), ["amount"]),
        (rec("pm.charge", transaction_id="T1", transaction_type="CG", amount=True), ["amount"]),
        (rec("pm.charge", transaction_id="T1"), ["transaction_type", "no value"]),
        (rec("clinical.service_order", placer_order_number="", code="CBC"), ["placer_order_number", "no value"]),
        (rec("clinical.service_order", placer_order_number="O1"), ["code", "no value"]),
        (Record("clinical.record_access", ("access_id",), {"access_id": "x"}), ["no table"]),
    ],
)
def test_records_the_new_tables_cannot_take_are_refused_by_name(stores, record, words):
    kind = record.target.split(".")[0]
    (err,) = stores[kind].apply_batch([(1, [record])])
    assert isinstance(err, DeliveryError) and not err.retryable
    assert all(w in str(err) for w in words), str(err)


def test_a_namespace_in_a_key_is_part_of_the_identifier(stores):
    c = stores["clinical"]
    a = rec("clinical.service_order", placer_order_number="O1", code="CBC", status="a")
    b = rec("clinical.service_order", placer_order_number="O1", placer_order_namespace="EPIC", code="CBC", status="b")
    blank = rec("clinical.service_order", placer_order_number="O1", placer_order_namespace=None, code="CBC", status="c")
    assert c.apply_batch([(1, [a, b]), (2, [blank])]) == [None, None]
    got = sorted((r["placer_order_namespace"], r["status"]) for r in c.rows("service_order"))
    assert got == [("", "c"), ("EPIC", "b")]


def test_an_order_or_charge_never_moves_to_another_patient(stores):
    c, p = stores["clinical"], stores["pm"]
    order = lambda mrn: rec("clinical.service_order", mrn, placer_order_number="O1", code="CBC")
    assert c.apply_batch([(1, [order("M1")])]) == [None]
    (err,) = c.apply_batch([(2, [order("M2")])])
    assert isinstance(err, DeliveryError) and "already belongs to another patient" in str(err)
    assert [r["mrn"] for r in c.rows("service_order")] == ["M1"]
    assert p.apply_batch([(1, [charge("M1", NORTH, "V1", "T1", "CG")])]) == [None]
    (err,) = p.apply_batch([(2, [charge("M1", SOUTH, "V1", "T1", "CG")])])  # same value, another authority
    assert isinstance(err, DeliveryError) and "already belongs to another patient" in str(err)
    # immunizations are keyed by the patient: the same vaccine and day is a row per patient
    shot = lambda mrn: rec("clinical.immunization", mrn, vaccine_code="141", administered_date=date(2026, 3, 2))
    assert c.apply_batch([(3, [shot("M1"), shot("M2")])]) == [None]
    assert sorted(r["mrn"] for r in c.rows("immunization")) == ["M1", "M2"]


def test_a_merge_moves_every_new_tables_rows_to_the_survivor(stores):
    old, new = one_of_each("OLD", NORTH, "V1"), one_of_each("NEW", NORTH, "V2")
    survivor_shot = [r for r in new["clinical"] if r.target == "clinical.immunization"]  # same vaccine, same day
    for kind in ("clinical", "pm"):
        s = stores[kind]
        keep = [] if kind == "pm" else survivor_shot
        assert s.apply_batch([(1, old[kind]), (2, [new[kind][0], *keep])]) == [None, None]
        assert s.apply_batch([(3, [merge(kind, "OLD", "NEW")])]) == [None]
        tables = CLINICAL_NEW + ("observation", "diagnostic_report") if kind == "clinical" else PM_NEW + ("coverage",)
        for t in tables:
            owners = {(r["mrn_issuer"], r["mrn"]) for r in s.rows(t)}
            assert owners == {(NORTH, "NEW")}, t
            if t != "immunization":  # moved rows count as written by the merge
                assert all(r["last_seq"] == 3 for r in s.rows(t)), t
        if kind == "clinical":  # the survivor's own dose of the same vaccine that day wins, untouched
            (shot,) = s.rows("immunization")
            assert (shot["visit_number"], shot["last_seq"]) == ("V2", 2)


# -- what mappings may write -------------------------------------------------------------------------------
def test_the_new_tables_are_mappable_and_the_read_audit_is_not():
    clinical, pm = columns_of("clinical"), columns_of("pm")
    assert set(CLINICAL_NEW) <= set(clinical) and set(PM_NEW) <= set(pm)
    assert "record_access" not in clinical and "record_access" not in pm
    assert {"placer_order_number", "placer_order_namespace"} <= clinical["observation"]
    assert "placer_order_namespace" in clinical["diagnostic_report"]
    assert {"transaction_id", "transaction_source", "transaction_type", "amount", "modifiers"} <= pm["charge"]
    assert not {"id", "updated_at", "last_message_id", "last_seq"} & pm["charge"]
    assert RecordStore("sqlite://", "pm").key_columns("charge") == (
        "transaction_id",
        "transaction_source",
        "transaction_type",
    )


# -- engine patient --------------------------------------------------------------------------------------
def _populate(clinical_url: str, pm_url: str) -> None:
    """M1 at NORTH with a whole visit; M1 at SOUTH, another patient with the same value."""
    made = {"clinical": RecordStore(clinical_url, "clinical"), "pm": RecordStore(pm_url, "pm")}
    try:
        north, south = one_of_each("M1", NORTH, "V1"), one_of_each("M1", SOUTH, "V9")
        credit = charge("M1", NORTH, "V1", "TX-1", "CD", amount="-125.10", reversal_of="TX-1")
        for kind, s in made.items():
            s.upgrade()
            extra = [credit] if kind == "pm" else []
            south_rows = [r for r in south[kind] if r.target.split(".")[1] in ("patient", "registration")]
            assert s.apply_batch([(1, north[kind] + extra), (2, south_rows)]) == [None, None]
    finally:
        for s in made.values():
            s.dispose()


@pytest.fixture
def patient_env(tmp_path):
    data = tmp_path / "data"
    urls = {k: f"sqlite:///{data}/{k}.db" for k in ("messages", "clinical", "pm")}
    cfg = tmp_path / "channels.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            stores:
              messages: {{url: "{urls["messages"]}"}}
              clinical: {{url: "{urls["clinical"]}"}}
              pm: {{url: "{urls["pm"]}"}}
            mappings_dir: {ROOT / "mappings"}
            channels:
              - name: adt
                source: {{type: mllp, port: 7001}}
                destinations:
                  - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
            """
        )
    )
    _populate(urls["clinical"], urls["pm"])
    env = {**os.environ, "ENGINE_USER": "dr.audit"}  # ignored: the audit names the OS account (os_user)
    return cfg, urls, env


def engine_patient(cfg: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "patient", "--config", str(cfg), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def access_log(urls: dict) -> dict[str, list[dict]]:
    clinical, pm = RecordStore(urls["clinical"], "clinical"), RecordStore(urls["pm"], "pm")
    try:
        view = PatientView(clinical, pm)
        return {kind: view.access_log(kind) for kind in ("clinical", "pm")}
    finally:
        clinical.dispose()
        pm.dispose()


def test_engine_patient_refuses_without_a_purpose_and_reads_nothing(patient_env):
    cfg, urls, env = patient_env
    for extra in ([], ["--purpose", "   "]):
        out = engine_patient(cfg, env, "M1", "--issuer", NORTH, *extra)
        assert out.returncode == 2 and "--purpose" in out.stderr and out.stdout == ""
    assert access_log(urls) == {"clinical": [], "pm": []}


def test_engine_patient_lists_the_issuers_of_an_ambiguous_identifier_and_never_guesses(patient_env):
    cfg, urls, env = patient_env
    out = engine_patient(cfg, env, "M1", "--purpose", "ticket 77")
    assert out.returncode == 2 and out.stdout == ""
    assert "2 issuers" in out.stderr and "'NORTH'" in out.stderr and "'SOUTH'" in out.stderr
    assert "Poe" not in out.stderr
    out = engine_patient(cfg, env, "M1", "--purpose", "ticket 77", "--json")
    assert out.returncode == 2 and json.loads(out.stdout) == {"candidates": [NORTH, SOUTH]}
    log = access_log(urls)
    assert [(a["action"], a["patient_mrn"], a["patient_mrn_issuer"]) for a in log["clinical"]] == [
        ("candidates", "M1", None)
    ] * 2
    out = engine_patient(cfg, env, "NOPE", "--purpose", "ticket 77")
    assert out.returncode == 1 and "no patient" in out.stderr and "NOPE" not in out.stderr
    assert access_log(urls)["pm"][-1]["action"] == "not-found"


def test_engine_patient_prints_the_visit_story_across_both_stores_and_records_the_access(patient_env):
    cfg, urls, env = patient_env
    out = engine_patient(cfg, env, "M1", "--issuer", NORTH, "--purpose", "billing query 12")
    assert out.returncode == 0, out.stderr
    text_out = out.stdout
    for expected in (
        "PATIENT NORTH M1",
        "Poe, Ann",
        "coverage: 1. Blue Cross member XJ1",
        "VISIT V1 O admitted 2026-03-02 16:00Z",
        "appointment APT-1: booked Follow-up with Smith, Jane [clinical+pm]",
        "order ORD-1: Complete blood count ordered",
        "result Complete blood count: final filler LAB-1",
        "White cells 7.5 10*3/uL",
        "document DOC-1: Consult note final 23 characters",
        "medication order RX-1: Amlodipine 5 mg tablet 1 tablet daily active",
        "dispensed #1 2026-03-02 16:00Z",
        "given #1.1 2026-03-02 16:00Z 1 tablet completed",
        "immunization Influenza, seasonal (CVX) lot L-9 completed",
        "charge CG TX-1: 99213-25 Office visit x 1 125.10",
        "charge CD TX-1: 99213-25 Office visit x 1 -125.10",
    ):
        assert expected in text_out, (expected, text_out)
    assert "SOUTH" not in text_out and "V9" not in text_out
    # in time order: a charge's date of service (no time of day) counts as that day's start
    order = [text_out.index(s) for s in ("charge CG TX-1", "appointment APT-1", "order ORD-1", "immunization")]
    assert order == sorted(order)
    log = access_log(urls)
    for kind in ("clinical", "pm"):
        (entry,) = log[kind]
        assert (entry["accessed_by"], entry["purpose"], entry["action"]) == (os_user(), "billing query 12", "view")
        assert (entry["patient_mrn_issuer"], entry["patient_mrn"]) == (NORTH, "M1")
        assert entry["accessed_at"].tzinfo is not None
    assert log["clinical"][0]["access_id"] == log["pm"][0]["access_id"]


def test_engine_patient_json_groups_the_story_by_visit(patient_env):
    cfg, _urls, env = patient_env
    out = engine_patient(cfg, env, "M1", "--issuer", SOUTH, "--purpose", "check")
    assert out.returncode == 0 and "PATIENT SOUTH M1" in out.stdout and "V1" not in out.stdout
    out = engine_patient(cfg, env, "M1", "--issuer", NORTH, "--purpose", "check", "--json")
    assert out.returncode == 0, out.stderr
    story = json.loads(out.stdout)
    assert story["patient"] == {"mrn_issuer": NORTH, "mrn": "M1"} and story["merged_into"] == {}
    assert story["registration"]["account_number"] == "A-1" and len(story["coverage"]) == 1
    (visit,) = story["visits"]
    assert visit["visit_number"] == "V1" and visit["encounter"]["patient_class"] == "O"
    (appt,) = visit["appointments"]
    assert appt["clinical"]["status"] == appt["pm"]["status"] == "booked"
    (order,) = visit["orders"]
    assert order["order"]["placer_order_number"] == "ORD-1" and order["order"]["diagnoses"] == [
        {"code": "E11.9", "system": "I10"}
    ]
    (report,) = order["reports"]
    assert [o["code"] for o in report["observations"]] == ["WBC"]
    (med,) = visit["medications"]
    assert len(med["dispenses"]) == 1 and len(med["administrations"]) == 1
    assert [d["document_number"] for d in visit["documents"]] == ["DOC-1"]
    assert [i["vaccine_code"] for i in visit["immunizations"]] == ["141"]
    assert [(c["transaction_type"], c["amount"]) for c in visit["charges"]] == [("CG", "125.1000"), ("CD", "-125.1000")]


def test_the_story_follows_a_merge_to_the_survivor_and_links_results_without_an_exact_order_match(stores):
    c, p = stores["clinical"], stores["pm"]
    records = one_of_each("OLD", NORTH, "V1")
    for kind, s in stores.items():
        assert s.apply_batch([(1, records[kind]), (2, [merge(kind, "OLD", "NEW")])]) == [None, None]
    # a reflex result the lab added under the same requisition, and one for an order never received
    extra = [
        rec(
            "clinical.diagnostic_report",
            "NEW",
            filler_order_number="LAB-1",
            code="DIFF",
            occurrence=1,
            placer_order_number="ORD-1",
        ),
        rec("clinical.diagnostic_report", "NEW", filler_order_number="LAB-8", code="TSH", occurrence=1),
    ]
    assert c.apply_batch([(3, extra)]) == [None]
    view = PatientView(c, p)
    reading = view.read("OLD", NORTH, who="t", purpose="merge check")
    story = reading.story
    assert story is not None
    assert story["merged_into"] == {k: {"mrn_issuer": NORTH, "mrn": "NEW"} for k in ("clinical", "pm")}
    groups = {g["visit_number"]: g for g in story["visits"]}
    (linked,) = [e for e in groups["V1"]["orders"] if e["order"]]
    assert sorted(r["code"] for r in linked["reports"]) == ["CBC", "DIFF"]
    (orphan,) = groups[None]["orders"]
    assert orphan["order"] is None and orphan["reports"][0]["code"] == "TSH"
    assert [a["action"] for a in view.access_log("clinical")] == ["view"]
