"""The console's message search, counts and series (engine/stores/message_search.py) on a real
SQLite store, and the Prometheus metrics (engine/metrics.py) after messages go through a real
engine's MLLP listener, read from its console's GET /metrics."""

from __future__ import annotations

import itertools
import json
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import EngineProcess, MllpConnection, ack_fields, config_file, fixture_bytes
from prometheus_client.parser import text_string_to_metric_families
from services import free_port

from engine.metrics import MAX_PARTNERS, Metrics, ack_partner
from engine.stores import message_search, migrate
from engine.stores.message_search import Filters
from engine.stores.message_store import MessageStore
from engine.stores.message_tables import messages, metadata

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
CHANNELS = ("adt", "lab", "sched")
STATUSES = ("SENT", "SENT", "SENT", "ERROR", "FILTERED", "QUEUED")
TYPES = (("ADT", "A01"), ("ADT", "A08"), ("ORU", "R01"), ("SIU", "S12"), ("ADTX", "A01"))
PATIENTS = ("NORTH|M1", "NORTH|M2", "SOUTH|M1", None)


@pytest.fixture
def store(tmp_path: Path):
    s = MessageStore(f"sqlite:///{tmp_path}/messages.db")
    s.upgrade()
    yield s
    s.engine.dispose()
    s.status_engine.dispose()


def put(store: MessageStore, rows: list[dict]) -> list[dict]:
    """Insert ``rows`` (each: any messages columns; the rest defaulted); returns them with ids."""
    full = []
    for r in rows:
        at = r.get("received_at", T0)
        full.append(
            dict(
                channel="adt",
                content=b"MSH|^~\\&|secret content",
                content_hash="0" * 64,
                message_type="ADT",
                trigger="A01",
                control_id="",
                ordering_key=None,
                status="SENT",
                updated_at=at,
                received_at=at,
                sending_app="REG",
                sending_facility="NORTH",
            )
            | r
        )
    with store.engine.begin() as conn:
        for row in full:
            row["id"] = conn.execute(messages.insert().returning(messages.c.id), row).scalar_one()
    return full


def mixed(store: MessageStore, n: int = 240) -> list[dict]:
    """``n`` messages over 10 hours, receive times not quite in id order (several writers)."""
    rng = random.Random(7)
    rows = []
    for i in range(n):
        kind, trigger = rng.choice(TYPES)
        rows.append(
            dict(
                channel=rng.choice(CHANNELS),
                status=rng.choice(STATUSES),
                message_type=kind,
                trigger=trigger,
                control_id=f"C{i % 50}",  # control ids come back (other senders, resends)
                ordering_key=rng.choice(PATIENTS),
                received_at=T0 + timedelta(minutes=i * 2.5 + rng.uniform(-4, 4)),
                error="mapping adt_pm: records[1]: required value is missing" if rng.random() < 0.5 else None,
            )
        )
    return put(store, rows)


def matches(row: dict, f: Filters) -> bool:
    kind, _, trigger = (f.message_type or "").partition("^")
    return (
        (not f.channel or row["channel"] == f.channel)
        and (not f.status or row["status"] == f.status)
        and (not f.control_id or row["control_id"] == f.control_id)
        and (not f.patient or row["ordering_key"] == f.patient)
        and (not kind or row["message_type"] == kind)
        and (not trigger or row["trigger"] == trigger)
        and (f.since is None or row["received_at"] >= f.since)
        and (f.until is None or row["received_at"] <= f.until)
    )


def all_pages(store: MessageStore, f: Filters, limit: int) -> list[int]:
    seen: list[int] = []
    before = None
    while True:
        page = message_search.search(store.engine, f, before_id=before, limit=limit)
        assert len(page) <= limit
        seen += [r["id"] for r in page]
        if len(page) < limit:
            return seen
        before = page[-1]["id"]


@pytest.mark.parametrize("bound_rows", [100_000, 1], ids=["date-bounds-exact", "date-bounds-left-out"])
def test_every_filter_alone_and_combined_finds_exactly_the_matching_messages_across_pages(
    store, monkeypatch, bound_rows
):
    monkeypatch.setattr(message_search, "BOUND_ROWS", bound_rows)
    rows = mixed(store)
    since, until = T0 + timedelta(hours=2), T0 + timedelta(hours=6)
    options = dict(
        channel=[None, "adt", "sched"],
        status=[None, "ERROR", "QUEUED"],
        message_type=[None, "ADT", "ADT^A08", "ORU^R01"],
        patient=[None, "NORTH|M1"],
        control_id=[None, "C7"],
        since=[None, since],
        until=[None, until],
    )
    checked = 0
    for values in itertools.product(*options.values()):
        f = Filters(**dict(zip(options, values)))
        want = sorted((r["id"] for r in rows if matches(r, f)), reverse=True)
        got = all_pages(store, f, limit=7)
        assert got == want, f  # newest first, none twice, none missed
        assert message_search.ids(store.engine, f) == sorted((r["id"], r["channel"]) for r in rows if matches(r, f))
        checked += bool(want)
    assert checked > 100  # most combinations find something: the comparisons are not of empty lists


def test_a_page_is_metadata_only_with_warnings_and_unmapped_as_lists(store):
    put(store, [dict(warnings=json.dumps(["pm: x: skipped"]), unmapped=json.dumps(["PID-19"]), ordering_key="N|1")])
    (row,) = message_search.search(store.engine, Filters())
    assert "content" not in row and "content_hash" not in row and "claim_token" not in row
    assert b"secret" not in repr(row).encode()
    assert row["warnings"] == ["pm: x: skipped"] and row["unmapped"] == ["PID-19"]
    assert row["ordering_key"] == "N|1" and row["message_type"] == "ADT" and row["trigger"] == "A01"


@pytest.mark.parametrize("bound_rows", [100_000, 1], ids=["date-bounds-exact", "date-bounds-left-out"])
def test_date_bounds_are_inclusive_and_exact_when_ids_and_times_interleave(store, monkeypatch, bound_rows):
    monkeypatch.setattr(message_search, "BOUND_ROWS", bound_rows)
    # ids 1..5, received out of id order: the range's id bounds must not cut any off
    times = [T0 + timedelta(seconds=s) for s in (10, 0, 30, 20, 40)]
    rows = put(store, [dict(received_at=t) for t in times])
    got = message_search.search(
        store.engine, Filters(since=T0 + timedelta(seconds=10), until=T0 + timedelta(seconds=30))
    )
    assert [r["id"] for r in got] == [rows[3]["id"], rows[2]["id"], rows[0]["id"]]  # 20 s, 30 s, 10 s: bounds in
    just_one = Filters(since=T0 + timedelta(seconds=20), until=T0 + timedelta(seconds=20))
    assert [r["id"] for r in message_search.search(store.engine, just_one)] == [rows[3]["id"]]
    assert message_search.search(store.engine, Filters(since=T0 + timedelta(seconds=41))) == []
    assert message_search.search(store.engine, Filters(until=T0 - timedelta(seconds=1))) == []
    backwards = Filters(since=T0 + timedelta(seconds=30), until=T0 + timedelta(seconds=10))
    assert message_search.search(store.engine, backwards) == []


def test_message_type_alone_takes_every_trigger_and_with_a_trigger_only_that_one(store):
    put(store, [dict(message_type=k, trigger=t) for k, t in TYPES])

    def found(text: str) -> list[tuple[str, str]]:
        got = message_search.search(store.engine, Filters(message_type=text))
        return sorted((r["message_type"], r["trigger"]) for r in got)

    assert found("ADT") == [("ADT", "A01"), ("ADT", "A08")]  # not ADTX
    assert found("ADT^A01") == [("ADT", "A01")]
    assert found("A01") == []  # a trigger alone is not a type
    assert found("SIU^S13") == []


def test_patient_and_control_id_match_exactly(store):
    put(store, [dict(ordering_key="NORTH|M1", control_id="X1"), dict(ordering_key="NORTH|M10", control_id="X10")])
    assert [r["control_id"] for r in message_search.search(store.engine, Filters(patient="NORTH|M1"))] == ["X1"]
    assert message_search.search(store.engine, Filters(patient="SOUTH|M1")) == []
    assert [r["ordering_key"] for r in message_search.search(store.engine, Filters(control_id="X1"))] == ["NORTH|M1"]


def test_channel_stats_count_per_status_warnings_the_last_minute_and_the_oldest_queued(store):
    now = datetime.now(UTC)
    put(
        store,
        [
            dict(channel="adt", status="SENT", received_at=now - timedelta(hours=2)),
            dict(channel="adt", status="QUEUED", received_at=now - timedelta(minutes=30)),
            dict(channel="adt", status="RECEIVED", received_at=now - timedelta(minutes=10)),
            dict(channel="adt", status="ERROR", received_at=now - timedelta(seconds=20), error="x: y"),
            dict(channel="adt", status="SENT", received_at=now - timedelta(seconds=5), warnings='["w"]'),
            dict(channel="lab", status="SENT", received_at=now - timedelta(days=3), warnings='["w"]'),
            dict(channel="lab", status="FILTERED", received_at=now - timedelta(days=3)),
        ],
    )
    stats = message_search.channel_stats(store.engine)
    assert set(stats) == {"adt", "lab"}
    adt, lab = stats["adt"], stats["lab"]
    assert adt["counts"] == {"SENT": 2, "QUEUED": 1, "RECEIVED": 1, "ERROR": 1} and adt["total"] == 5
    assert adt["warnings"] == 1 and lab["warnings"] == 1
    assert adt["last_minute"] == {"received": 2, "errors": 1}
    assert lab["last_minute"] == {"received": 0, "errors": 0}
    assert abs((adt["oldest_queued_at"] - (now - timedelta(minutes=30))).total_seconds()) < 0.01
    assert lab["oldest_queued_at"] is None and lab["counts"] == {"SENT": 1, "FILTERED": 1}


def test_series_counts_received_and_errors_per_minute_with_zeros_between(store):
    minute = datetime.now(UTC).replace(second=0, microsecond=0)
    put(
        store,
        [
            dict(channel="adt", received_at=minute + timedelta(seconds=1)),
            dict(channel="adt", status="ERROR", received_at=minute + timedelta(seconds=2)),
            dict(channel="adt", received_at=minute - timedelta(minutes=3) + timedelta(seconds=59)),
            dict(channel="lab", status="ERROR", received_at=minute - timedelta(minutes=9)),
            dict(channel="lab", received_at=minute - timedelta(minutes=10)),  # before the window
        ],
    )
    s = message_search.series(store.engine, minutes=10)
    if datetime.now(UTC).replace(second=0, microsecond=0) != minute:  # the minute turned meanwhile
        pytest.skip("the minute changed during the test")
    assert len(s["minutes"]) == 10
    assert datetime.fromisoformat(s["minutes"][-1]) == minute
    assert datetime.fromisoformat(s["minutes"][0]) == minute - timedelta(minutes=9)
    assert s["channels"]["adt"]["received"] == [0, 0, 0, 0, 0, 0, 1, 0, 0, 2]
    assert s["channels"]["adt"]["errors"] == [0] * 9 + [1]
    assert s["channels"]["lab"] == {"received": [1] + [0] * 9, "errors": [1] + [0] * 9}


def test_error_kinds_keep_the_text_before_the_colon_and_at_most_twenty_per_channel(store):
    put(store, [dict(status="ERROR", error=f"kind {i % 25}: detail {i}") for i in range(50)])
    put(store, [dict(status="ERROR", error="destination pm: connection refused") for _ in range(5)])
    kinds = message_search.error_kinds(store.engine)
    assert kinds[("adt", "destination pm")] == 5
    assert len([k for k in kinds if k[0] == "adt"]) == 21  # 20 kinds and "other"
    assert sum(kinds.values()) == 55 and kinds[("adt", "other")] == 12  # 6 kinds of 2 left over


def test_the_search_indexes_are_in_the_model_and_the_migration_alike(store):
    import engine.stores.console_tables  # noqa: F401  (its tables are on the same metadata)

    with store.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": migrate.version_table("messages")})
        diffs = [d for d in compare_metadata(ctx, metadata) if "index" in str(d[0])]
    assert diffs == []
    names = {ix.name for ix in messages.indexes}
    assert {"ix_messages_channel_id", "ix_messages_status_id", "ix_messages_type", "ix_messages_received_at"} <= names


def test_each_search_shape_reads_through_an_index_not_the_whole_table(store):
    mixed(store, 60)
    from sqlalchemy import select, text

    from engine.stores.message_search import _COLUMNS, _where

    shapes = [
        Filters(channel="adt"),
        Filters(status="ERROR"),
        Filters(channel="adt", status="ERROR"),
        Filters(control_id="C1"),
        Filters(patient="NORTH|M1"),
        Filters(patient="NORTH|M1", channel="adt"),
        Filters(message_type="ADT"),
        Filters(message_type="ADT^A01"),
    ]
    with store.engine.connect() as conn:
        for f in shapes:
            q = select(*_COLUMNS).where(*_where(conn, f)).order_by(messages.c.id.desc()).limit(50)
            sql = str(q.compile(conn, compile_kwargs={"literal_binds": True}))
            plan = " / ".join(r[-1] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
            assert "USING INDEX ix_messages_" in plan or "USING COVERING INDEX" in plan, (f, plan)
            if f.patient and not f.channel:  # one seek per channel, then the patient's own rows sorted
                assert plan.startswith("SEARCH messages USING INDEX ix_messages_order (channel=? AND ordering_key=?)")
            else:
                assert "TEMP B-TREE" not in plan, (f, plan)  # newest first straight from the index: no sort


def test_ack_latency_and_the_partner_gauges_come_from_the_last_thousand_acks():
    m = Metrics()
    assert m.ack_latency("adt") is None
    for i in range(1, 1201):  # the first 200 fall out of the reservoir
        m.observe_ack("adt", "REG/NORTH", "AE" if i % 10 == 0 else "AA", i / 1000)
    lat = m.ack_latency("adt")
    assert lat == {"p50": pytest.approx(700.0), "p99": pytest.approx(1190.0), "count": 1000}
    families = {f.name: f for f in text_string_to_metric_families(m.render()[0].decode())}
    (nak,) = families["engine_partner_nak_ratio"].samples
    assert nak.labels == {"channel": "adt", "partner": "REG/NORTH"} and nak.value == pytest.approx(0.1)
    assert families["engine_partner_ack_p99_seconds"].samples[0].value == pytest.approx(1.19)
    for i in range(MAX_PARTNERS + 5):  # a sender picks MSH-3/4: labels stay few
        m.observe_ack("adt", f"APP{i}/F", "AA", 0.001)
    partners = {s.labels["partner"] for s in families_of(m)["engine_acks"].samples}
    assert len(partners) == MAX_PARTNERS + 1 and "other" in partners


def families_of(m: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(m.render()[0].decode())}


def test_the_partner_is_read_back_from_the_ack():
    ack = "MSH|^~\\&|ENGINE|HUB|REGADT^1.2.3^ISO|SUNRISE_GH|20260101||ACK^A01^ACK|1|P|2.5.1\rMSA|AA|X1"
    assert ack_partner(ack) == "REGADT/SUNRISE_GH"
    assert ack_partner("MSH|^~\\&|ENGINE|HUB|||20260101||ACK|1|P|2.5\rMSA|AR|") == ""
    assert ack_partner("MSH#^~\\&#E#H#" + "A" * 80 + "#F#x") == "A" * 60


METRICS_CONFIG = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
mappings_dir: MAPPINGS
console: {port: "${ENGINE_CONSOLE_PORT}", first_admin_password: "metrics-test-password-1"}
channels:
  - name: adt-metrics
    source: {type: mllp, port: "${ENGINE_ADT_PORT}", max_message_bytes: 4096}
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: adt_clinical}
"""


def scrape(port: int) -> dict:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {f.name: f for f in text_string_to_metric_families(body)}


def test_metrics_count_exactly_the_acks_the_listener_sent_and_read_the_store(tmp_path):
    console_port = free_port()
    eng = EngineProcess(tmp_path, config_file(tmp_path, METRICS_CONFIG), env={"ENGINE_CONSOLE_PORT": str(console_port)})
    eng.start()
    try:
        good = fixture_bytes("adt_a01.hl7")
        conn = MllpConnection(eng.adt_port)
        codes = []
        for i in range(12):
            codes.append(ack_fields(conn.send(good.replace(b"SGH-A01-000101", b"M-%d" % i)))["MSA"][1])
        codes.append(ack_fields(conn.send(good.replace(b"|2.5.1|", b"|9.9|")))["MSA"][1])  # unsupported version
        codes.append(ack_fields(conn.send(good + b"NTE|1||" + b"x" * 5000 + b"\r"))["MSA"][1])  # oversized
        conn.close()
        assert codes.count("AA") == 12 and len(set(codes)) > 1
        eng.wait_for("messages", "select id from messages where status in ('RECEIVED', 'QUEUED')", lambda r: not r)
        stored = eng.query("messages", "select status, count(*) as n from messages group by status")
        m = scrape(console_port)
    finally:
        eng.stop()

    acks = {
        s.labels["code"]: s.value
        for s in m["engine_acks"].samples
        if s.name == "engine_acks_total" and s.labels["channel"] == "adt-metrics"
    }
    assert acks == {code: codes.count(code) for code in set(codes)}
    assert {s.labels["partner"] for s in m["engine_acks"].samples if s.name == "engine_acks_total"} == {
        "REGADT/SUNRISE_GH"
    }
    (count,) = [s for s in m["engine_ack_seconds"].samples if s.name == "engine_ack_seconds_count"]
    assert count.value == len(codes)
    (nak,) = m["engine_partner_nak_ratio"].samples
    assert nak.value == pytest.approx((len(codes) - 12) / len(codes))
    assert 0 < m["engine_partner_ack_p99_seconds"].samples[0].value < 5
    by_status = {
        s.labels["status"]: s.value for s in m["engine_messages"].samples if s.labels["channel"] == "adt-metrics"
    }
    assert by_status == {r["status"]: r["n"] for r in stored}
    assert [s.value for s in m["engine_queue_depth"].samples] == [0]
    assert m["engine_store_up"].samples[0].value == 1


def test_a_message_store_that_cannot_answer_gives_store_up_zero_not_a_failed_scrape(tmp_path):
    s = MessageStore(f"sqlite:///{tmp_path}/never-migrated.db")
    m = Metrics()
    m.observe_ack("adt", "", "AA", 0.002)
    start = time.perf_counter()
    families = {f.name: f for f in text_string_to_metric_families(m.render(s.engine)[0].decode())}
    assert time.perf_counter() - start < 5
    assert families["engine_store_up"].samples[0].value == 0
    assert families["engine_acks"].samples[0].value == 1
    s.engine.dispose()
    s.status_engine.dispose()


def test_the_store_half_exports_counts_queue_depth_and_age_warnings_errors_and_waiting_partners(store):
    now = datetime.now(UTC)
    put(
        store,
        [
            dict(status="QUEUED", received_at=now - timedelta(minutes=5), sending_app="REG^1.2.3^ISO"),
            dict(status="RECEIVED", received_at=now - timedelta(minutes=1), sending_app="LAB", sending_facility=""),
            dict(status="SENT", warnings='["w"]'),
            dict(status="ERROR", error="destination pm: connection refused"),
            dict(status="ERROR", error="no colon at all"),
        ],
    )
    assert set(message_search.pending_by_partner(store.engine)) == {("adt", "REG/NORTH"), ("adt", "LAB/")}
    m = families_of_store(store)
    assert {s.labels["status"]: s.value for s in m["engine_messages"].samples} == {
        "QUEUED": 1,
        "RECEIVED": 1,
        "SENT": 1,
        "ERROR": 2,
    }
    assert [s.value for s in m["engine_queue_depth"].samples] == [2]
    assert 299 < m["engine_queue_oldest_seconds"].samples[0].value < 330
    assert [s.value for s in m["engine_message_warnings"].samples] == [1]
    assert {s.labels["reason"]: s.value for s in m["engine_errors_by_reason"].samples} == {
        "destination pm": 1,
        "no colon at all": 1,
    }
    waiting = {s.labels["partner"]: s.value for s in m["engine_partner_oldest_queued_seconds"].samples}
    assert set(waiting) == {"REG/NORTH", "LAB/"} and waiting["REG/NORTH"] > waiting["LAB/"] > 59


def families_of_store(store: MessageStore) -> dict:
    body, ctype = Metrics().render(store.engine)
    assert ctype.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def test_the_search_migration_goes_down_and_up_again(store):
    from alembic import command
    from sqlalchemy import inspect

    from engine.stores.db import write_transaction

    def names() -> set[str]:
        return {ix["name"] for ix in inspect(store.engine).get_indexes("messages")}

    ours = {"ix_messages_channel_id", "ix_messages_status_id", "ix_messages_control_id", "ix_messages_type"}
    ours |= {"ix_messages_received_at", "ix_messages_warnings"}
    assert ours <= names()
    with write_transaction(store.engine) as conn:
        command.downgrade(migrate.config(store.url, "messages", conn), "messages_0008")
    assert not ours & names() and "ix_messages_order" in names()
    migrate.upgrade(store.url, "messages", engine=store.engine)
    assert ours <= names()
