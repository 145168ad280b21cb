"""Console search benchmark: each search shape of engine/stores/message_search.py on a store of
1,000,000 messages, and what the search indexes (migration messages_0009) cost each insert.

The store is built by ``engine.stores.migrate.upgrade`` (the real schema and indexes) in a
temporary SQLite file, or in a private PostgreSQL cluster (``--postgres private``: initdb on a
free port in a temporary directory, fsync off; the machine's own PostgreSQL is never touched)
or an empty database you name (``--postgres URL``). Messages go in with executemany through
SQLAlchemy Core: 8 channels of unequal traffic (one with 0.5 %), statuses mostly SENT with some
ERROR, FILTERED and, among the newest, QUEUED and RECEIVED; 200,000 patients plus a test
patient with 1 % of all messages; ADT, ORU, SIU, ORM, MDM, DFT and VXU types; receive times
over 30 days up to now; 5 % with warnings; a small dummy content (a real one is 1-5 KB: the
indexed searches do not read it, full scans would).

Each shape runs ``--runs`` times (5; 0 skips them) and prints its median in ms, with the query plan's index
(``--plans`` prints the whole plans). Then the insert cost: ``--insert`` messages (20,000) in
transactions of 500 (the committer's batch) with the search indexes, then without them, then
with them again (the two "with" figures averaged, as the store grows meanwhile), in microseconds
per message (SQLite: synchronous=NORMAL and the process's CPU time, so
neither the disk nor the machine's other processes hide the indexes' own cost; PostgreSQL: wall
time).

    python bench/console_search.py [-n 1000000] [--postgres private|URL] [--runs 5] [--insert 20000] [--plans]
                                   [--db FILE]   # SQLite: build FILE once, measure it again on later runs

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sqlalchemy import inspect, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from engine.metrics import Metrics  # noqa: E402
from engine.stores import message_search, migrate  # noqa: E402
from engine.stores.db import make_engine  # noqa: E402
from engine.stores.message_search import Filters  # noqa: E402
from engine.stores.message_tables import messages  # noqa: E402

SEARCH_INDEXES = [  # as migration messages_0009 creates them: (name, columns, PostgreSQL INCLUDE, WHERE)
    ("ix_messages_channel_id", "channel, id", "", ""),
    ("ix_messages_status_id", "status, id", "", ""),
    ("ix_messages_control_id", "control_id", "", ""),
    ("ix_messages_type", "message_type, id, trigger", "", ""),
    ("ix_messages_received_at", "received_at", "id", ""),
    ("ix_messages_warnings", "channel", "", "warnings IS NOT NULL"),
]
CHANNELS = [
    ("lab-results", 30),
    ("adt", 25),
    ("scheduling", 12),
    ("orders-out", 10),
    ("pharmacy-in", 10),
    ("documents", 7),
    ("charges", 5.5),
    ("immunizations", 0.5),
]
TYPES = [
    ("ADT", "A01", 8),
    ("ADT", "A04", 6),
    ("ADT", "A08", 14),
    ("ADT", "A03", 5),
    ("ADT", "A17", 0.05),
    ("ORU", "R01", 30),
    ("SIU", "S12", 8),
    ("SIU", "S14", 4),
    ("ORM", "O01", 10),
    ("MDM", "T02", 5),
    ("DFT", "P03", 6),
    ("VXU", "V04", 3.95),
]
ERRORS = [
    "mapping adt_pm: records[2]: required value is missing",
    "destination pm: connection refused",
    "filter: unknown trigger",
    "unreadable message: UnicodeDecodeError",
]
SPAN = timedelta(days=30)
TEST_PATIENT = "NCH|TEST0001"


def rows(n: int, start_id: int, first: datetime, step: timedelta, rng: random.Random, pending_from: int) -> list[dict]:
    """``n`` message rows with ids from ``start_id``, received from ``first`` every ``step``;
    from id ``pending_from`` on, some are still QUEUED or RECEIVED."""
    chans, cw = zip(*CHANNELS)
    types, tw = [t[:2] for t in TYPES], [t[2] for t in TYPES]
    picked_ch = rng.choices(chans, cw, k=n)
    picked_ty = rng.choices(types, tw, k=n)
    out = []
    for i in range(n):
        k = start_id + i
        at = first + step * i + timedelta(seconds=rng.uniform(-2, 2))  # several writers: ids and times interleave
        r = rng.random()
        if k >= pending_from and r < 0.3:
            status = "QUEUED" if r < 0.25 else "RECEIVED"
        else:
            status = "SENT" if r < 0.93 else ("FILTERED" if r < 0.97 else "ERROR")
        kind, trigger = picked_ty[i]
        patient = TEST_PATIENT if rng.random() < 0.01 else f"NCH|M{rng.randrange(200_000):06d}"
        out.append(
            dict(
                channel=picked_ch[i],
                received_at=at,
                content=b"MSH|^~\\&|REG|NORTHCLINIC|ENGINE|HUB|||%s^%s|C%d|P|2.5.1\r"
                % (kind.encode(), trigger.encode(), k),
                charset="",
                content_hash=f"{k:064x}",
                message_type=kind,
                trigger=trigger,
                control_id=f"C{k}",
                sending_app=rng.choice(("REG", "LAB", "SCHED", "PHARM")),
                sending_facility=rng.choice(("NORTHCLINIC", "SOUTHCLINIC")),
                version="2.5.1",
                ordering_key=patient,
                status=status,
                error=rng.choice(ERRORS) if status == "ERROR" else None,
                flags="",
                peer="10.0.0.1:5000",
                updated_at=at,
                warnings=json.dumps(["pm: pm.coverage.member_id: required value is missing"])
                if rng.random() < 0.05
                else None,
            )
        )
    return out


def load(engine: Engine, n: int, rng: random.Random, batch: int = 20_000) -> float:
    """Insert ``n`` rows received over the last :data:`SPAN`; returns seconds taken."""
    step = SPAN / n
    first = datetime.now(UTC) - SPAN
    t0 = time.perf_counter()
    done = 0
    while done < n:
        chunk = rows(min(batch, n - done), done + 1, first + step * done, step, rng, int(n * 0.98))
        with engine.begin() as conn:
            conn.execute(messages.insert(), chunk)
        done += len(chunk)
        if done % 200_000 == 0:
            print(f"  {done:,} loaded ({time.perf_counter() - t0:.0f} s)", flush=True)
    return time.perf_counter() - t0


def timed(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    """Median ms of ``runs`` calls, and the last call's result."""
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def plan(engine: Engine, filters: Filters, before_id: int | None = None) -> list[str]:
    """The plan of the page query for ``filters`` (id bounds resolved as search() does)."""
    from sqlalchemy import select

    from engine.stores.message_search import _COLUMNS, _where

    with engine.connect() as conn:
        where = _where(conn, filters) or []
        if before_id is not None:
            where.append(messages.c.id < before_id)
        q = select(*_COLUMNS).where(*where).order_by(messages.c.id.desc()).limit(50)
        sql = str(q.compile(conn, compile_kwargs={"literal_binds": True}))
        prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
        return [str(r[-1]) for r in conn.execute(text(prefix + sql))]


def shapes(engine: Engine) -> list[tuple[str, Filters, int]]:
    """(name, filters, page) — page 3 follows before_id twice."""
    now = datetime.now(UTC)
    day = now - timedelta(days=10)
    with engine.connect() as conn:
        some_patient = conn.execute(text("SELECT ordering_key FROM messages WHERE id = 500000 OR id = 1")).scalar()
        some_control = conn.execute(text("SELECT control_id FROM messages WHERE id = 400001 OR id = 1")).scalar()
    return [
        ("newest, no filter", Filters(), 1),
        ("channel (30 % of traffic)", Filters(channel="lab-results"), 1),
        ("channel (0.5 % of traffic)", Filters(channel="immunizations"), 1),
        ("channel, page 3 (before_id)", Filters(channel="adt"), 3),
        ("status ERROR", Filters(status="ERROR"), 1),
        ("status QUEUED", Filters(status="QUEUED"), 1),
        ("status ERROR, page 3", Filters(status="ERROR"), 3),
        ("channel + status ERROR", Filters(channel="adt", status="ERROR"), 1),
        ("rare channel + status ERROR", Filters(channel="immunizations", status="ERROR"), 1),
        ("channel + status SENT", Filters(channel="lab-results", status="SENT"), 1),
        ("date range: one day, 10 days ago", Filters(since=day, until=day + timedelta(days=1)), 1),
        ("date range: since 29 days ago", Filters(since=now - timedelta(days=29)), 1),
        ("date range: until 20 days ago", Filters(until=now - timedelta(days=20)), 1),
        ("channel + one day", Filters(channel="immunizations", since=day, until=day + timedelta(days=1)), 1),
        ("patient (a few messages)", Filters(patient=some_patient), 1),
        ("patient (test patient, 1 %)", Filters(patient=TEST_PATIENT), 1),
        ("patient unknown", Filters(patient="NCH|NOSUCH"), 1),
        ("control id", Filters(control_id=some_control), 1),
        ("message type ADT", Filters(message_type="ADT"), 1),
        ("message type ADT^A01", Filters(message_type="ADT^A01"), 1),
        ("message type ADT^A17 (0.05 %)", Filters(message_type="ADT^A17"), 1),
        ("message type ORU^R01 + channel", Filters(message_type="ORU^R01", channel="lab-results"), 1),
    ]


def run_searches(engine: Engine, runs: int, plans: bool) -> None:
    print(f"{'search':44} {'median ms':>10}  rows  plan")
    for name, filters, page in shapes(engine):
        before = None
        for _ in range(page - 1):
            found = message_search.search(engine, filters, before_id=before)
            before = found[-1]["id"] if found else None
        ms, out = timed(lambda f=filters, b=before: message_search.search(engine, f, before_id=b), runs)
        steps = plan(engine, filters, before)
        used = sorted({w for s in steps for w in s.replace("(", " ").split() if w.startswith(("ix_", "messages_pkey"))})
        print(f"{name:44} {ms:10.2f} {len(out):5}  {', '.join(used) or steps[0][:60]}")  # type: ignore[arg-type]
        if plans:
            for s in steps:
                print(f"{'':50}{s}")
    for name, fn in [
        ("ids(status ERROR), up to 10,000", lambda: message_search.ids(engine, Filters(status="ERROR"))),
        ("channel_stats", lambda: message_search.channel_stats(engine)),
        ("series(60)", lambda: message_search.series(engine, 60)),
        ("series(1440)", lambda: message_search.series(engine, 1440)),
        ("error_kinds", lambda: message_search.error_kinds(engine)),
        ("pending_by_partner", lambda: message_search.pending_by_partner(engine)),
        ("metrics render (store collector)", _render(engine)),
    ]:
        ms, _ = timed(fn, runs)
        print(f"{name:44} {ms:10.2f}")


def _render(engine: Engine) -> Callable[[], object]:
    m = Metrics()
    m.register_store(engine)
    return m.render


def insert_cost(engine: Engine, n: int, rng: random.Random) -> None:
    """µs per message for ``n`` inserts in transactions of 500, with and without the search indexes."""
    with engine.connect() as conn:
        top = conn.execute(text("SELECT max(id) FROM messages")).scalar() or 0
    pg = engine.dialect.name == "postgresql"

    # SQLite works in this process: its CPU time is the cost, whatever the neighbours do;
    # PostgreSQL works in its server: wall time
    clock = time.perf_counter if pg else time.process_time

    def insert(first: int) -> float:
        batch = rows(n, first, datetime.now(UTC), timedelta(milliseconds=1), rng, first)
        t0 = clock()
        for i in range(0, n, 500):
            with engine.begin() as conn:
                conn.execute(messages.insert(), batch[i : i + 500])
        return (clock() - t0) / n * 1e6

    def drop(indexes) -> None:
        with engine.begin() as conn:
            for name, *_ in indexes:
                conn.execute(text(f"DROP INDEX {name}"))

    def create(indexes) -> None:
        with engine.begin() as conn:
            for name, cols, include, where in indexes:
                extra = f" INCLUDE ({include})" if include and pg else ""
                extra += f" WHERE {where}" if where else ""
                conn.execute(text(f"CREATE INDEX {name} ON messages ({cols}){extra}"))

    with_ix = insert(top + 1)
    first = top + n + 1
    drop(SEARCH_INDEXES)
    without = insert(first)
    first += n
    create(SEARCH_INDEXES)  # back as they were
    with_ix = (with_ix + insert(first)) / 2  # before and after: the store grew meanwhile
    first += n
    print(
        f"insert, {n:,} messages in transactions of 500 ({'wall' if pg else 'CPU'} time): "
        f"{with_ix:.1f} µs/message with the search indexes, "
        f"{without:.1f} without (+{with_ix - without:.1f} µs, +{(with_ix / without - 1) * 100:.0f} %)"
    )


def bench(url: str, n: int, runs: int, inserts: int, plans: bool, reuse: bool = False) -> None:
    engine = make_engine(url)
    rng = random.Random(11)
    try:
        if "messages" in inspect(engine).get_table_names() and not reuse:
            raise SystemExit("that database already has a messages table: give an empty one")
        if not reuse or "messages" not in inspect(engine).get_table_names():
            migrate.upgrade(url, "messages", engine=engine)
            print(f"{engine.dialect.name}: loading {n:,} messages", flush=True)
            secs = load(engine, n, rng)
            print(f"loaded in {secs:.0f} s ({n / secs:,.0f} messages/s, executemany)")
        if engine.dialect.name == "postgresql":  # as autovacuum leaves it: statistics, the visibility map
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE messages"))
        # SQLite: no ANALYZE, as the engine never runs one: the planner goes by the indexes alone
        if runs:
            run_searches(engine, runs, plans)
        if inserts:
            insert_cost(engine, inserts, rng)
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="messages in the store (default 1,000,000)")
    ap.add_argument("--postgres", help="'private' (a cluster of its own) or the URL of an empty database")
    ap.add_argument("--runs", type=int, default=5, help="runs per search shape; the median is printed (default 5)")
    ap.add_argument("--insert", type=int, default=20_000, help="messages for the insert cost, each way (0: skip)")
    ap.add_argument("--plans", action="store_true", help="print each search's whole query plan")
    ap.add_argument("--db", type=Path, help="a SQLite file to build once and measure again on later runs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.db is not None:
        bench(f"sqlite:///{args.db.resolve()}", args.n, args.runs, args.insert, args.plans, reuse=True)
    elif args.postgres is None:
        with tempfile.TemporaryDirectory(prefix="console-search-") as tmp:
            bench(f"sqlite:///{tmp}/messages.db", args.n, args.runs, args.insert, args.plans)
    elif args.postgres == "private":
        from services import PrivatePostgres, ServiceUnavailable

        try:
            pg = PrivatePostgres().start()
        except ServiceUnavailable as exc:
            raise SystemExit(f"cannot run: {exc}") from None
        try:
            print(f"private PostgreSQL {pg.bin.parent.name} (fsync=off) on a free port")
            bench(pg.url, args.n, args.runs, args.insert, args.plans)
        finally:
            pg.close()
    else:
        bench(args.postgres, args.n, args.runs, args.insert, args.plans)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
