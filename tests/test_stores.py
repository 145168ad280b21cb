"""The clinical and PM record stores, through RecordStore's public methods on real databases."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine

from engine.errors import DeliveryError
from engine.records import Record
from engine.stores import migrate
from engine.stores.migrate import SchemaOutOfDate
from engine.stores.records_store import RecordStore

ISSUER = "NORTH"  # one authority issues every patient here; two authorities: tests/test_identity.py


def up(target: str, key: tuple[str, ...], **values) -> Record:
    """A record; one naming ``mrn`` names the patient (ISSUER, mrn), in its key too where the key has mrn."""
    if "mrn" in values and "mrn_issuer" not in values:
        values["mrn_issuer"] = ISSUER
        key = (*key, "mrn_issuer") if "mrn" in key else key
    return Record(target, key, values)


def merge(store: str, old: str, new: str) -> Record:
    return Record(
        f"{store}.patient" if store == "clinical" else f"{store}.registration",
        ("mrn", "mrn_issuer"),
        {"mrn": new, "mrn_issuer": ISSUER, "old_mrn": old, "old_mrn_issuer": ISSUER},
        op="merge",
    )


OBSERVATION_KEY = ("filler_order_number", "report_code", "report_occurrence", "specimen_seq", "seq")


def observation_key(filler: str, seq: int = 1) -> dict:
    """An observation's key: the ``seq``-th result of report (``filler``, PANEL, 1)."""
    return dict(filler_order_number=filler, report_code="PANEL", report_occurrence=1, specimen_seq=0, seq=seq)


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "updated_at"} for r in rows]


def snapshot(store: RecordStore) -> dict[str, list[dict]]:
    return {t: strip(store.rows(t)) for t in store.spec.tables}


@pytest.fixture
def clinical(tmp_path):
    s = RecordStore(f"sqlite:///{tmp_path}/clinical.db", "clinical")
    s.upgrade()
    yield s
    s.dispose()


@pytest.fixture
def pm(tmp_path):
    s = RecordStore(f"sqlite:///{tmp_path}/pm.db", "pm")
    s.upgrade()
    yield s
    s.dispose()


def patient(mrn: str, **values) -> Record:
    return up("clinical.patient", ("mrn",), mrn=mrn, **values)


# -- upserts ----------------------------------------------------------------------------------------
def test_upsert_inserts_then_updates_only_present_columns(clinical):
    assert clinical.apply_batch(
        [(1, [patient("M1", family_name="Doe", given_name="Jan", sex="F", birth_date=date(1980, 2, 3))])]
    ) == [None]
    assert clinical.apply_batch([(2, [patient("M1", given_name="Janet")])]) == [None]
    (row,) = clinical.rows("patient", mrn="M1")
    assert (row["family_name"], row["given_name"], row["sex"], row["birth_date"]) == (
        "Doe",
        "Janet",
        "F",
        date(1980, 2, 3),
    )
    assert row["last_message_id"] == 2 and row["updated_at"].tzinfo is not None


def test_none_clears_absent_keeps(clinical):
    clinical.apply_batch([(1, [patient("M1", family_name="Doe", phone_home="555")])])
    clinical.apply_batch([(2, [patient("M1", phone_home=None)])])
    (row,) = clinical.rows("patient", mrn="M1")
    assert row["family_name"] == "Doe" and row["phone_home"] is None


def test_reapplying_a_message_leaves_the_same_state(clinical):
    msg = [
        patient("M1", family_name="Doe"),
        up(
            "clinical.encounter",
            ("visit_number",),
            visit_number="V1",
            mrn="M1",
            admit_at=datetime(2024, 5, 1, 8, 30, tzinfo=UTC),
        ),
        *[
            up(
                "clinical.observation",
                OBSERVATION_KEY,
                **observation_key("F1", i),
                set_id=i,
                mrn="M1",
                code="GLU",
                value_numeric=5.5 + i,
                units="mmol/L",
            )
            for i in range(1, 4)
        ],
    ]
    assert clinical.apply_batch([(7, msg)]) == [None]
    before = snapshot(clinical)
    assert clinical.apply_batch([(7, msg)]) == [None]
    assert snapshot(clinical) == before
    assert [r["set_id"] for r in clinical.rows("observation")] == ["1", "2", "3"]  # int coerced to text


def test_batch_with_repeated_keys_applies_in_order(clinical):
    batch = [(i, [patient("M1", given_name=f"v{i}")]) for i in range(1, 6)]
    assert clinical.apply_batch(batch) == [None] * 5
    (row,) = clinical.rows("patient")
    assert row["given_name"] == "v5" and row["last_message_id"] == 5


# -- failures ---------------------------------------------------------------------------------------
def test_one_bad_message_rolls_back_alone(clinical, tmp_path):
    # A database-level failure after the message's first rows were written inside its savepoint.
    eng = create_engine(f"sqlite:///{tmp_path}/clinical.db")
    with eng.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER boom BEFORE INSERT ON observation WHEN NEW.code = 'BOOM' "
            "BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
    eng.dispose()
    obs = lambda f, code: up(
        "clinical.observation",
        OBSERVATION_KEY,
        **observation_key(f),
        mrn="M2",
        code=code,
    )
    batch = [
        (1, [patient("M1", family_name="One")]),
        (2, [patient("M2", family_name="Two"), obs("F2", "BOOM")]),
        (3, [patient("M3", family_name="Three"), obs("F3", "OK")]),
        (4, [patient("M4", bogus_column="x")]),
    ]
    res = clinical.apply_batch(batch)
    assert res[0] is None and res[2] is None
    assert isinstance(res[1], DeliveryError) and res[1].retryable is False and "Two" not in str(res[1])
    assert isinstance(res[3], DeliveryError) and res[3].retryable is False
    assert "bogus_column" in str(res[3]) and "patient" in str(res[3])
    assert sorted(r["mrn"] for r in clinical.rows("patient")) == ["M1", "M3"]
    assert [r["filler_order_number"] for r in clinical.rows("observation")] == ["F3"]


@pytest.mark.parametrize(
    "record, words",
    [
        (up("clinical.nope", ("mrn",), mrn="M1"), ["nope"]),
        (patient("M1", deceased_at=datetime(2024, 1, 1)), ["deceased_at", "timezone-aware"]),
        (patient("M1", merged_into="M2"), ["merged_into"]),
        (up("clinical.allergy", ("mrn",), mrn="M1", allergen_code="PEN"), ["natural key"]),
        (up("clinical.allergy", ("mrn", "allergen_code"), mrn="M1"), ["allergen_code"]),
        (up("clinical.patient_merge", ("old_mrn",), old_mrn="M1"), ["merge"]),
        (Record("clinical.patient", ("mrn",), {"mrn": "M1"}, op="delete"), ["delete"]),
    ],
)
def test_records_the_schema_cannot_take_are_refused_by_name(clinical, record, words):
    (err,) = clinical.apply_batch([(1, [record])])
    assert isinstance(err, DeliveryError) and err.retryable is False
    assert all(w in str(err) for w in words), str(err)
    assert clinical.rows("patient") == []


def test_a_record_shaped_like_one_already_taken_is_still_checked_value_by_value(clinical):
    """Column checks are kept per shape (the record's columns); values never are."""
    aware, naive = datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1)
    results = clinical.apply_batch(
        [
            (1, [patient("M1", family_name="One", deceased_at=aware)]),
            (2, [patient("M2", family_name="Two", deceased_at=naive)]),
            (3, [patient("M3", family_name={"not": "text"}, deceased_at=aware)]),
            (4, [patient("M4", family_name=4, deceased_at=aware)]),
            (5, [patient("M5", family_name="Five", deceased_at=aware, merged_into="M1")]),
        ]
    )
    assert results[0] is None and results[3] is None
    assert "deceased_at" in str(results[1]) and "timezone-aware" in str(results[1])
    assert "family_name: expected text, got dict" in str(results[2])
    assert "merged_into" in str(results[4])
    assert {r["mrn"]: r["family_name"] for r in clinical.rows("patient")} == {"M1": "One", "M4": "4"}


# -- merge ------------------------------------------------------------------------------------------
def allergy(mrn: str, code: str, **v) -> Record:
    return up("clinical.allergy", ("mrn", "allergen_code"), mrn=mrn, allergen_code=code, **v)


def test_clinical_merge_repoints_and_survivor_wins_collisions(clinical):
    clinical.apply_batch(
        [
            (
                1,
                [
                    patient("OLD", family_name="Smith", given_name="Ann"),
                    allergy("OLD", "PEN", severity="old"),
                    allergy("OLD", "LATEX"),
                    up("clinical.encounter", ("visit_number",), visit_number="V1", mrn="OLD"),
                    up("clinical.diagnosis", ("visit_number", "code"), visit_number="V1", code="I10", mrn="OLD"),
                ],
            ),
            (2, [patient("NEW", family_name="Smith", given_name="Anne"), allergy("NEW", "PEN", severity="new")]),
        ]
    )
    assert clinical.apply_batch([(3, [merge("clinical", "OLD", "NEW")])]) == [None]
    after = snapshot(clinical)
    by = {r["mrn"]: r for r in clinical.rows("patient")}
    assert by["OLD"]["merged_into"] == "NEW" and by["NEW"]["merged_into"] is None
    assert by["NEW"]["given_name"] == "Anne"
    assert sorted((r["mrn"], r["allergen_code"], r["severity"]) for r in clinical.rows("allergy")) == [
        ("NEW", "LATEX", None),
        ("NEW", "PEN", "new"),
    ]
    assert [r["mrn"] for r in clinical.rows("encounter")] == ["NEW"]
    assert [r["mrn"] for r in clinical.rows("diagnosis")] == ["NEW"]
    audit = clinical.rows("patient_merge")
    assert [(a["old_mrn"], a["new_mrn"], a["message_id"]) for a in audit] == [("OLD", "NEW", 3)]

    assert clinical.apply_batch([(3, [merge("clinical", "OLD", "NEW")])]) == [None]  # re-apply: harmless
    assert snapshot(clinical) == after

    # Later records for the old MRN land on the survivor.
    assert clinical.apply_batch([(4, [patient("OLD", phone_home="555-0100"), allergy("OLD", "NUTS")])]) == [None]
    by = {r["mrn"]: r for r in clinical.rows("patient")}
    assert by["NEW"]["phone_home"] == "555-0100" and by["OLD"]["phone_home"] is None
    assert {r["mrn"] for r in clinical.rows("allergy")} == {"NEW"}


def test_merge_then_upsert_in_the_same_batch_and_chains(clinical):
    clinical.apply_batch([(1, [patient("A", family_name="X"), allergy("A", "PEN")])])
    res = clinical.apply_batch(
        [
            (2, [merge("clinical", "A", "B")]),
            (3, [patient("A", given_name="later")]),
            (4, [merge("clinical", "B", "C")]),
            (5, [allergy("A", "LATEX")]),
        ]
    )
    assert res == [None] * 4
    by = {r["mrn"]: r for r in clinical.rows("patient")}
    assert by["A"]["merged_into"] == "C" and by["B"]["merged_into"] == "C" and by["C"]["merged_into"] is None
    assert (by["C"]["family_name"], by["C"]["given_name"]) == ("X", "later")
    assert sorted((r["mrn"], r["allergen_code"]) for r in clinical.rows("allergy")) == [("C", "LATEX"), ("C", "PEN")]
    # A reversal (C into A, A already merged into C) resolves to one patient: nothing moves.
    before = {r["mrn"]: r["merged_into"] for r in clinical.rows("patient")}
    assert clinical.apply_batch([(6, [merge("clinical", "C", "A")])]) == [None]
    assert {r["mrn"]: r["merged_into"] for r in clinical.rows("patient")} == before


def test_pm_merge_creates_survivor_from_old_row_and_resolves_coverage(pm):
    cov = lambda mrn, payer, member, **v: up(
        "pm.coverage",
        ("mrn", "payer_id", "member_id"),
        mrn=mrn,
        payer_id=payer,
        member_id=member,
        **v,
    )
    pm.apply_batch(
        [
            (
                1,
                [
                    up(
                        "pm.registration",
                        ("mrn",),
                        mrn="P1",
                        family_name="Roe",
                        account_number="AC1",
                        guarantor_name="Self",
                    ),
                    cov("P1", "AETNA", "M-1", priority=1),
                    cov("P1", "BCBS", "M-2", priority="2"),
                    up(
                        "pm.visit",
                        ("visit_number",),
                        visit_number="V9",
                        mrn="P1",
                        admit_at=datetime(2024, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-5))),
                    ),
                ],
            ),
            (2, [cov("P2", "AETNA", "M-1", priority=2)]),  # survivor's coverage, no registration yet
        ]
    )
    assert pm.apply_batch([(3, [merge("pm", "P1", "P2")])]) == [None]
    by = {r["mrn"]: r for r in pm.rows("registration")}
    assert by["P1"]["merged_into"] == "P2"
    assert (by["P2"]["family_name"], by["P2"]["account_number"], by["P2"]["guarantor_name"]) == ("Roe", "AC1", "Self")
    assert sorted((r["mrn"], r["payer_id"], r["priority"]) for r in pm.rows("coverage")) == [
        ("P2", "AETNA", 2),
        ("P2", "BCBS", 2),
    ]
    assert pm.rows("visit")[0]["mrn"] == "P2"
    state = snapshot(pm)
    assert pm.apply_batch([(3, [merge("pm", "P1", "P2")])]) == [None]
    assert snapshot(pm) == state
    assert len(pm.rows("patient_merge")) == 1


def test_merge_of_unknown_mrns_leaves_a_resolvable_stub(pm):
    assert pm.apply_batch([(1, [merge("pm", "GONE", "KEEP")])]) == [None]
    assert pm.apply_batch([(2, [up("pm.registration", ("mrn",), mrn="GONE", family_name="Late")])]) == [None]
    by = {r["mrn"]: r for r in pm.rows("registration")}
    assert by["GONE"]["merged_into"] == "KEEP" and by["KEEP"]["family_name"] == "Late"


def test_merge_record_may_carry_survivor_values(pm):
    survivor = {"mrn": "S", "mrn_issuer": ISSUER, "old_mrn": "O", "old_mrn_issuer": ISSUER}
    rec = Record("pm.registration", ("mrn", "mrn_issuer"), {**survivor, "given_name": "Bo", "city": None}, op="merge")
    assert pm.apply_batch(
        [(1, [up("pm.registration", ("mrn",), mrn="O", city="Oslo", given_name="B")]), (2, [rec])]
    ) == [None, None]
    by = {r["mrn"]: r for r in pm.rows("registration")}
    assert (by["S"]["given_name"], by["S"]["city"], by["S"]["last_message_id"]) == ("Bo", None, 2)
    assert by["O"]["merged_into"] == "S"
    itself = {**survivor, "old_mrn": "S"}
    (err,) = pm.apply_batch([(3, [Record("pm.registration", ("mrn", "mrn_issuer"), itself, op="merge")])])
    assert isinstance(err, DeliveryError) and not err.retryable


# -- schema, types, SQLite settings ------------------------------------------------------------------
def test_schema_check_and_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path}/pm.db"
    store = RecordStore(url, "pm")
    with pytest.raises(SchemaOutOfDate, match="engine db upgrade"):
        store.check_schema()
    assert not migrate.is_current(url, "pm") and migrate.current(url, "pm") is None
    store.upgrade()
    store.check_schema()
    assert migrate.current(url, "pm") == migrate.head("pm") and migrate.is_current(url, "pm")
    store.upgrade()  # already at head: a no-op
    store.dispose()
    eng = create_engine(url)
    with eng.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'")}
    eng.dispose()
    assert {"registration", "coverage", "visit", "pm_patient_merge", "alembic_version_pm"} <= names


def test_columns_and_key_columns():
    store = RecordStore("sqlite://", "clinical")
    cols = store.columns()
    assert "patient_merge" not in cols and "merged_into" not in cols["patient"]
    assert {"mrn", "family_name", "other_ids"} <= cols["patient"] and "updated_at" not in cols["observation"]
    assert store.key_columns("observation") == OBSERVATION_KEY
    assert RecordStore("sqlite://", "pm").key_columns("coverage") == ("mrn", "mrn_issuer", "payer_id", "member_id")
    with pytest.raises(DeliveryError, match="nope"):
        store.key_columns("nope")


def test_datetimes_round_trip_timezone_aware_in_utc(clinical):
    eastern = timezone(timedelta(hours=-5))
    at = datetime(2024, 3, 10, 23, 15, 30, 123000, tzinfo=eastern)
    clinical.apply_batch([(1, [patient("M1", deceased=True, deceased_at=at, other_ids=[{"id": "X1"}])])])
    (row,) = clinical.rows("patient")
    assert row["deceased_at"] == at and row["deceased_at"].utcoffset() == timedelta(0)
    assert row["deceased_at"].hour == 4 and row["deceased"] is True
    assert row["other_ids"] == '[{"id":"X1"}]'


def test_sqlite_relative_url_creates_dir_and_uses_wal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = RecordStore("sqlite:///./data/clinical.db", "clinical")
    store.upgrade()
    assert (tmp_path / "data" / "clinical.db").exists()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: records are durable  # NORMAL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    store.dispose()


# -- PostgreSQL -------------------------------------------------------------------------------------
def test_postgresql_upsert_merge_and_savepoints(pg_url):
    clinical, pm = RecordStore(pg_url, "clinical"), RecordStore(pg_url, "pm")  # both in one database
    with pytest.raises(SchemaOutOfDate):
        clinical.check_schema()
    clinical.upgrade()
    pm.upgrade()
    clinical.check_schema()
    pm.check_schema()
    with clinical.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE observation ADD CONSTRAINT ck_boom CHECK (code <> 'BOOM')")
    at = datetime(2024, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    obs = lambda f, code: up(
        "clinical.observation",
        OBSERVATION_KEY,
        **observation_key(f),
        mrn="OLD",
        code=code,
        effective_at=at,
    )
    res = clinical.apply_batch(
        [
            (1, [patient("OLD", family_name="Poe"), allergy("OLD", "PEN"), obs("F1", "GLU")]),
            (2, [patient("X", family_name="Bad"), obs("F2", "BOOM")]),
            (3, [patient("NEW", given_name="Al"), allergy("NEW", "PEN", severity="high")]),
        ]
    )
    assert res[0] is None and res[2] is None and isinstance(res[1], DeliveryError) and not res[1].retryable
    assert "Bad" not in str(res[1])
    assert clinical.apply_batch([(4, [merge("clinical", "OLD", "NEW")]), (5, [patient("OLD", sex="F")])]) == [
        None,
        None,
    ]
    assert clinical.apply_batch([(4, [merge("clinical", "OLD", "NEW")])]) == [None]
    by = {r["mrn"]: r for r in clinical.rows("patient")}
    assert set(by) == {"OLD", "NEW"} and by["OLD"]["merged_into"] == "NEW" and by["NEW"]["sex"] == "F"
    assert [(r["mrn"], r["severity"]) for r in clinical.rows("allergy")] == [("NEW", "high")]
    (o,) = clinical.rows("observation")
    assert o["mrn"] == "NEW" and o["effective_at"] == at and o["effective_at"].utcoffset() == timedelta(0)
    assert len(clinical.rows("patient_merge")) == 1
    assert pm.apply_batch(
        [(6, [up("pm.registration", ("mrn",), mrn="OLD", family_name="Poe")]), (7, [merge("pm", "OLD", "NEW")])]
    ) == [None, None]
    assert {r["mrn"]: r["merged_into"] for r in pm.rows("registration")} == {"OLD": "NEW", "NEW": None}
    clinical.dispose()
    pm.dispose()


def test_a_message_after_a_failed_one_of_its_ordering_key_is_deferred_not_applied(clinical):
    from engine.errors import Deferred

    bad = up("clinical.patient", ("mrn",), mrn="M1", no_such_column="x")
    results = clinical.apply_batch(
        [(1, [bad]), (2, [patient("M1", family_name="LATER")]), (3, [patient("M2", family_name="OTHER")])],
        keys=["M1", "M1", "M2"],
    )
    assert isinstance(results[0], DeliveryError)
    assert isinstance(results[1], Deferred) and results[1].blocker == 1
    assert results[2] is None
    assert [r["mrn"] for r in clinical.rows("patient")] == ["M2"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_header_field_the_store_refuses_costs_only_its_own_message(kind, tmp_path, request):
    """The receive insert runs on the driver's cursor (engine/stores/prepared.py); the driver's
    refusal must still reach the retry as SQLAlchemy's error class: the refused message is kept
    raw as ERROR (no header fields), the others of its batch are committed as received."""
    from engine.stores.message_store import ERROR, RECEIVED, Inbound, MessageStore

    url = f"sqlite:///{tmp_path}/m.db" if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = MessageStore(url)
    store.upgrade()
    # PostgreSQL refuses a NUL in text; SQLite takes any text, so there a trigger refuses it as
    # a server would (a CHECK the operator added, say)
    if kind == "sqlite":
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_nul BEFORE INSERT ON messages WHEN instr(NEW.control_id, char(0)) > 0 "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
    items = [
        Inbound("adt", b"MSH|^~\\&|A|F|||||ADT^A01|C1|P|2.5", control_id="C1", sending_facility="F"),
        Inbound("adt", b"MSH|^~\\&|A|F|||||ADT^A01|C\x002|P|2.5", control_id="C\x002", sending_facility="F"),
        Inbound("adt", b"MSH|^~\\&|A|F|||||ADT^A01|C3|P|2.5", control_id="C3", sending_facility="F"),
    ]
    try:
        stored = store.insert_received(items)
        assert [s.status for s in stored] == [RECEIVED, ERROR, RECEIVED]
        assert stored[1].error and "refused" in stored[1].error
        assert store.status_of(stored[1].id)[0] == ERROR
        assert [store.status_of(s.id)[0] for s in (stored[0], stored[2])] == [RECEIVED, RECEIVED]
    finally:
        store.engine.dispose()
        store.status_engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_delivery_is_recorded_only_while_its_claim_holds(kind, tmp_path, request):
    """A worker records each downstream ACK as it comes (record_deliveries), fenced by its
    claim's token in the same statement that writes the row. Once the claim passed to another
    worker, the first one writes nothing; on PostgreSQL a takeover that commits while the
    write waits for the message row is seen (the row is locked, then the token read again)."""
    import threading
    import time

    from engine.stores.message_store import RECEIVED, SENT, Inbound, MessageStore, Outcome

    url = f"sqlite:///{tmp_path}/m.db" if kind == "sqlite" else request.getfixturevalue("pg_url")
    store = MessageStore(url)
    store.upgrade()
    try:
        items = [Inbound("adt", f"MSH|^~\\&|A|F|||||ADT^A01|C{i}|P|2.5".encode(), control_id=f"C{i}") for i in range(3)]
        ids = [s.id for s in store.insert_received(items)]
        sent = {"destination": "lab", "status": SENT, "attempts": 1, "result": "delivered"}
        first, _rows = store.claim(ids, lease_seconds=0.2)
        assert store.record_deliveries(first, [(ids[0], sent)]) == {ids[0]}
        time.sleep(0.3)  # the lease ran out: another worker takes the messages over
        second, _rows = store.claim(ids, lease_seconds=60)
        assert second.ids == ids
        late = {**sent, "attempts": 2, "result": "late"}
        assert store.record_deliveries(first, [(ids[0], late), (ids[1], late)]) == set()
        assert store.record_deliveries(second, [(ids[1], sent)]) == {ids[1]}
        rows = {r.id: r.deliveries for r in store.load(ids)}
        assert rows[ids[0]]["lab"].result == "delivered" and rows[ids[0]]["lab"].attempts == 1
        assert rows[ids[1]]["lab"].result == "delivered" and rows[ids[2]] == {}
        # the status write is fenced the same way: the stale worker's outcome is not written
        done = [Outcome(ids[0], SENT, deliveries=[late])]
        assert store.record(done, first) == ([], [])
        assert store.status_of(ids[0])[0] == RECEIVED and store.load([ids[0]])[0].deliveries["lab"].attempts == 1
        if kind == "postgresql":  # a third worker's takeover, uncommitted while the second writes
            with store.engine.connect() as other:
                other.exec_driver_sql(f"UPDATE messages SET claim_token = 'third' WHERE id = {int(ids[2])}")
                got: list = []
                writer = threading.Thread(target=lambda: got.append(store.record_deliveries(second, [(ids[2], sent)])))
                writer.start()
                writer.join(0.5)
                assert writer.is_alive()  # waiting for the message row
                other.commit()
                writer.join(10)
            assert got == [set()]
            assert {r.id: r.deliveries for r in store.load(ids)}[ids[2]] == {}
    finally:
        store.engine.dispose()
        store.status_engine.dispose()
