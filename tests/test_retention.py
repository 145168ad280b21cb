"""Retention: a channel's old finished messages are pruned, in small transactions, by
``engine prune`` and by the running engine; pending, young and ERROR messages stay, and so does
the content access audit.

Messages are put in their states through the message store's own API and aged by moving their
``received_at`` / ``updated_at`` back in the test database (test setup); pruning itself runs as a
user runs it (``engine prune``, ``engine check``, ``engine run``).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ROOT, MllpConnection, ack_fields, adt_update, config_file, engine_check
from sqlalchemy import event, func, select, update

from engine.stores import retention
from engine.stores.message_store import (
    ERROR,
    FILTERED,
    QUEUED,
    RECEIVED,
    SENT,
    TRANSFORMED,
    Inbound,
    MessageStore,
    Outcome,
    content_access,
    deliveries,
    messages,
    now,
)

CONFIG = """\
stores:
  messages: {{url: "{url}"}}
  clinical: {{url: "sqlite:///{tmp}/c.db"}}
mappings_dir: MAPPINGS
channels:
  - name: adt
    source: {{type: mllp, port: 7101}}
    retention_days: 7
    {extra}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
  - name: lab
    source: {{type: mllp, port: 7102}}
    destinations:
      - {{name: clinical, type: store, store: clinical, mapping: oru_clinical}}
"""


def prune_cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "prune", "--config", str(cfg), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Feed:
    """Messages in given states and ages in one message store; ids by label."""

    def __init__(self, url: str):
        self.store = MessageStore(url)
        self.store.upgrade()
        self.ids: dict[str, int] = {}
        self.n = 0

    def add(self, label: str, channel: str, status: str, days_old: float = 0, *, updated_days_old=None) -> int:
        self.n += 1
        [stored] = self.store.insert_received([Inbound(channel, f"MSH|{label}".encode(), control_id=f"C{self.n}")])
        mid = stored.id
        if status == FILTERED:  # a resend of the same message: the store itself files it as a duplicate
            [dup] = self.store.insert_received([Inbound(channel, f"MSH|{label}".encode(), control_id=f"C{self.n}")])
            assert dup.status == FILTERED
            self.store.record([Outcome(mid, SENT, deliveries=[dict(destination="clinical", status=SENT)])])
            self.ids[label + "-original"] = mid
            mid = dup.id
        elif status in (SENT, ERROR, QUEUED):
            d = dict(destination="clinical", status=status, error="refused" if status == ERROR else None)
            if status == QUEUED:
                d["next_attempt_at"] = now() + timedelta(hours=1)
            self.store.record([Outcome(mid, status, deliveries=[d])])
        elif status == TRANSFORMED:
            self.store.record([Outcome(mid, TRANSFORMED)])
        self.ids[label] = mid
        self.age(mid, days_old, days_old if updated_days_old is None else updated_days_old)
        if status == FILTERED:
            self.age(self.ids[label + "-original"], days_old, days_old)
        return mid

    def age(self, mid: int, received_days: float, updated_days: float) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(
                update(messages)
                .where(messages.c.id == mid)
                .values(
                    received_at=now() - timedelta(days=received_days), updated_at=now() - timedelta(days=updated_days)
                )
            )

    def left(self) -> set[str]:
        with self.store.engine.connect() as conn:
            there = {r[0] for r in conn.execute(select(messages.c.id))}
        return {label for label, mid in self.ids.items() if mid in there}

    def deliveries_of(self, labels) -> int:
        with self.store.engine.connect() as conn:
            q = select(func.count()).where(deliveries.c.message_id.in_([self.ids[x] for x in labels]))
            return conn.execute(q).scalar_one()


def scenario(feed: Feed) -> None:
    """Old, young, pending and failed messages in ``adt`` (7 days), old ones in ``lab`` (forever)."""
    feed.add("old-sent-1", "adt", SENT, 30)
    feed.add("old-sent-2", "adt", SENT, 8)
    feed.add("old-filtered", "adt", FILTERED, 30)
    feed.add("old-error", "adt", ERROR, 30)
    feed.add("old-received", "adt", RECEIVED, 30)
    feed.add("old-transformed", "adt", TRANSFORMED, 30)
    feed.add("old-queued", "adt", QUEUED, 30)
    feed.add("reprocessed-today", "adt", SENT, 30, updated_days_old=0)
    feed.add("lab-old-sent", "lab", SENT, 30)
    feed.add("young-sent", "adt", SENT, 6)
    feed.add("young-filtered", "adt", FILTERED, 1)


PRUNED = {"old-sent-1", "old-sent-2", "old-filtered", "old-filtered-original"}


def test_engine_prune_deletes_old_sent_and_filtered_with_their_deliveries_and_nothing_else(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    feed = Feed(url)
    scenario(feed)
    feed.store.read_content(feed.ids["old-sent-1"], who="auditor", purpose="complaint 42")
    everything = set(feed.ids)
    assert feed.deliveries_of(PRUNED) == 3  # two SENT and the duplicate's original
    cfg = config_file(tmp_path, CONFIG.format(url=url, tmp=tmp_path, extra=""))

    out = prune_cli(cfg, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "adt: 4 SENT/FILTERED message(s) received before " in out.stdout and "would be deleted" in out.stdout
    assert "adt: ERROR messages kept until reprocessed" in out.stdout
    assert "lab: kept forever (no retention_days)" in out.stdout
    assert feed.left() == everything  # a dry run deletes nothing

    out = prune_cli(cfg)
    assert out.returncode == 0, out.stderr
    assert "adt: 4 SENT/FILTERED message(s) received before " in out.stdout and " UTC deleted" in out.stdout
    assert feed.left() == everything - PRUNED
    assert feed.deliveries_of(PRUNED) == 0
    assert feed.deliveries_of(["old-error", "old-queued", "young-sent", "lab-old-sent"]) == 4
    [audit] = feed.store.access_log(feed.ids["old-sent-1"])  # the audit outlives the content
    assert (audit.accessed_by, audit.purpose) == ("auditor", "complaint 42")
    assert "MSH|" not in out.stdout + out.stderr  # counts, never content

    again = prune_cli(cfg)
    assert "adt: 0 SENT/FILTERED" in again.stdout and feed.left() == everything - PRUNED


def test_error_retention_days_prunes_errors_and_a_channel_may_be_pruned_alone(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    feed = Feed(url)
    scenario(feed)
    feed.add("error-40-days", "adt", ERROR, 40)
    feed.add("lab-newest", "lab", SENT, 0)
    cfg = config_file(tmp_path, CONFIG.format(url=url, tmp=tmp_path, extra="error_retention_days: 35"))

    out = prune_cli(cfg, "--channel", "lab")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "lab: kept forever (no retention_days)"
    assert "error-40-days" in feed.left()

    out = prune_cli(cfg, "--channel", "adt")
    assert out.returncode == 0, out.stderr
    assert "adt: 1 ERROR message(s) received before " in out.stdout
    assert feed.left() == set(feed.ids) - PRUNED - {"error-40-days"}  # the 30-day ERROR is kept

    out = prune_cli(cfg, "--channel", "nope")
    assert out.returncode == 2 and "no channel 'nope'" in out.stderr


def test_a_prune_deletes_in_transactions_of_at_most_batch_messages(tmp_path):
    feed = Feed(f"sqlite:///{tmp_path}/m.db")
    for i in range(23):
        feed.add(f"old-{i}", "adt", SENT, 10)
    feed.add("newest", "adt", SENT, 0)
    eng = feed.store.status_engine
    per_transaction: list[int] = []
    current = [0]

    def on_execute(conn, cursor, statement, params, context, executemany):
        if statement.startswith("DELETE FROM messages"):
            current[0] += cursor.rowcount

    def on_commit(conn):
        if current[0]:
            per_transaction.append(current[0])
        current[0] = 0

    event.listen(eng, "after_cursor_execute", on_execute)
    event.listen(eng, "commit", on_commit)
    n = retention.prune(feed.store, "adt", now() - timedelta(days=7), batch=5, pause=0)
    assert n == 23
    assert per_transaction == [5, 5, 5, 5, 3]
    assert feed.left() == {"newest"}


def test_pending_statuses_are_refused_whatever_is_asked(tmp_path):
    feed = Feed(f"sqlite:///{tmp_path}/m.db")
    feed.add("old", "adt", RECEIVED, 30)
    for statuses in ([RECEIVED], [SENT, QUEUED], [TRANSFORMED], []):
        with pytest.raises(ValueError, match="only finished messages"):
            retention.prune(feed.store, "adt", now(), statuses)
    assert feed.left() == {"old"}


def test_sqlite_keeps_the_newest_message_so_its_id_is_never_given_to_the_next(tmp_path):
    feed = Feed(f"sqlite:///{tmp_path}/m.db")
    for i in range(3):
        feed.add(f"old-{i}", "adt", SENT, 30)
    assert retention.prune(feed.store, "adt", now() - timedelta(days=7)) == 2
    assert feed.left() == {"old-2"}
    [fresh] = feed.store.insert_received([Inbound("adt", b"MSH|new", control_id="NEW")])
    assert fresh.id > feed.ids["old-2"]
    assert retention.prune(feed.store, "adt", now() - timedelta(days=7)) == 1
    assert feed.left() == set()


def test_engine_check_refuses_a_retention_shorter_than_the_duplicate_window_with_file_and_line(tmp_path):
    cfg = config_file(
        tmp_path,
        textwrap.dedent(f"""\
        stores:
          messages: {{url: "sqlite:///{tmp_path}/m.db"}}
          clinical: {{url: "sqlite:///{tmp_path}/c.db"}}
        mappings_dir: MAPPINGS
        channels:
          - name: adt
            source: {{type: mllp, port: 7103}}
            retention_days: 0.5
            destinations:
              - {{name: clinical, type: store, store: clinical, mapping: adt_clinical}}
          - name: lab
            source: {{type: mllp, port: 7104}}
            duplicate_window_hours: 72
            retention_days: 3
            error_retention_days: 2
            destinations:
              - {{name: clinical, type: store, store: clinical, mapping: oru_clinical}}
          - name: other
            source: {{type: mllp, port: 7105}}
            retention_days: 0
            destinations:
              - {{name: clinical, type: store, store: clinical, mapping: oru_clinical}}
        """),
    )
    out = engine_check(cfg)
    assert out.returncode == 2
    err = out.stderr
    assert f"{cfg}:8: channels[0].retention_days: 0.5 day(s) is shorter than duplicate_window_hours (24)" in err
    assert f"{cfg}:15: channels[1].error_retention_days: 2 day(s) is shorter than duplicate_window_hours (72)" in err
    assert "channels[1].retention_days" not in err  # 3 days cover a 72-hour window
    assert f"{cfg}:20: channels[2].retention_days: Input should be greater than 0" in err
    assert "(3 problem(s))" in err

    fine = cfg.read_text().replace("retention_days: 0.5", "retention_days: 1")
    fine = fine.replace("\n    error_retention_days: 2\n", "\n").replace("\n    retention_days: 0\n", "\n")
    cfg.write_text(fine)
    out = engine_check(cfg)
    assert out.returncode == 0, out.stderr


ENGINE_CONFIG = """\
stores:
  messages: {url: "${ENGINE_MESSAGE_STORE_URL}"}
  clinical: {url: "${ENGINE_CLINICAL_STORE_URL}"}
  pm: {url: "${ENGINE_PM_STORE_URL}"}
mappings_dir: MAPPINGS
channels:
  - name: adt
    source: {type: mllp, port: "${ENGINE_ADT_PORT}"}
    retention_days: 2
    destinations:
      - {name: clinical, type: store, store: clinical, mapping: adt_clinical}
"""


def test_a_running_engine_prunes_at_start_up_and_logs_counts_only(tmp_path, fresh_engine):
    cfg = config_file(tmp_path, ENGINE_CONFIG)
    eng = fresh_engine(cfg)
    conn = MllpConnection(eng.adt_port)
    try:
        for seq in (1, 2, 3):
            assert ack_fields(conn.send(adt_update(seq, 7)))["MSA"][1] == "AA"
    finally:
        conn.close()
    sql = "select control_id from messages where status = 'SENT' order by id"
    eng.wait_for("messages", sql, lambda rows: len(rows) == 3)
    eng.stop()
    with eng.db("messages").begin() as db:
        db.execute(
            update(messages)
            .where(messages.c.control_id.in_(["F000001", "F000002"]))
            .values(received_at=now() - timedelta(days=3), updated_at=now() - timedelta(days=3))
        )
        assert db.execute(select(func.count()).select_from(deliveries)).scalar_one() == 3

    again = fresh_engine(cfg)
    rows = again.wait_for("messages", "select control_id from messages", lambda rows: len(rows) == 1)
    assert rows == [{"control_id": "F000003"}]
    log = (tmp_path / "engine.log").read_text()
    assert "channel=adt pruned 2 SENT/FILTERED message(s) received before " in log
    assert "Tester" not in log and "P0007" not in log  # the patient's name and id never reach the log


def test_postgresql_prunes_in_batches_and_two_pruners_share_the_work(pg_url):
    feed = Feed(pg_url)
    scenario(feed)
    for i in range(40):
        feed.add(f"bulk-{i}", "adt", SENT, 20)
    feed.store.read_content(feed.ids["bulk-0"], who="auditor")
    pruned = PRUNED | {f"bulk-{i}" for i in range(40)}
    cutoff = now() - timedelta(days=7)
    assert retention.prune(feed.store, "adt", cutoff, dry_run=True) == len(pruned)

    counts: list[int] = []
    errors: list[BaseException] = []

    def prune() -> None:
        try:
            counts.append(retention.prune(MessageStore(pg_url), "adt", cutoff, batch=3, pause=0.001))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=prune) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sum(counts) == len(pruned)
    assert feed.left() == set(feed.ids) - pruned  # on PostgreSQL ids are never reused: no newest kept
    assert feed.deliveries_of(pruned) == 0
    with feed.store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(content_access)).scalar_one() == 1
        index = conn.exec_driver_sql(
            "select indexdef from pg_indexes where indexname = 'ix_messages_received' and schemaname = current_schema()"
        ).scalar_one()
    assert "(channel, received_at)" in index


def test_the_retention_migration_keeps_existing_messages_and_adds_the_index(tmp_path):
    from sqlalchemy import inspect

    from engine.stores import migrate

    url = f"sqlite:///{tmp_path}/m.db"
    store = MessageStore(url)
    migrate.upgrade(url, "messages", engine=store.engine, revision="messages_0004")
    store.insert_received([Inbound("adt", b"MSH|before", control_id="B1")])

    def indexes() -> set[str]:
        return {i["name"] for i in inspect(store.engine).get_indexes("messages")}

    assert "ix_messages_received" not in indexes()
    store.upgrade()
    assert migrate.is_current(url, "messages") and "ix_messages_received" in indexes()
    assert [r.control_id for r in store.search()] == ["B1"]
    from alembic import command

    with store.engine.begin() as conn:
        command.downgrade(migrate.config(url, "messages", conn), "messages_0004")
    assert "ix_messages_received" not in indexes() and [r.control_id for r in store.search()] == ["B1"]
