"""Database plumbing shared by every store: engines per URL and a UTC datetime column type.

SQLite is the embedded default, PostgreSQL (``postgresql+psycopg://``) the scale-out one; the
same code serves both. For SQLite this module turns on WAL, sets the sync level and lets
SQLAlchemy (not pysqlite) manage transactions, so SAVEPOINTs work (the SQLite dialect page of
the SQLAlchemy docs explains the pysqlite quirk this fixes).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)


class UTCDateTime(TypeDecorator):
    """Timezone-aware datetimes, stored as UTC; SQLite gives them back aware too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


SQLITE_CACHE_KIB = int(os.environ.get("ENGINE_SQLITE_CACHE_KIB", "65536"))
"""SQLite page cache per connection, in KiB (``ENGINE_SQLITE_CACHE_KIB``: less on a small machine)."""
SQLITE_MMAP_BYTES = int(os.environ.get("ENGINE_SQLITE_MMAP_BYTES", str(1 << 30)))
"""How much of a SQLite file is read through a memory map, in bytes (``ENGINE_SQLITE_MMAP_BYTES``; 0: none)."""


def make_engine(url: str, *, durable: bool = False) -> Engine:
    """An Engine for ``url``. ``durable`` commits reach the disk before they return.

    Every store write that says "done" is durable: the message store's receipt (before the
    ACK) and the clinical and PM stores' records (before the message is SENT). Only the
    message store's processing bookkeeping (claims, statuses) uses ``durable=False``: if a
    crash loses it, the message is simply still pending and is processed again, idempotently.
    SQLite: synchronous=FULL or NORMAL (WAL). PostgreSQL: synchronous_commit on or off.
    """
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        args = {}
        if not durable:  # connect_args replaces the URL's own options (a search_path, say): keep them
            given = u.query.get("options")
            given = " ".join(given) if isinstance(given, tuple) else given
            args = {"connect_args": {"options": " ".join(filter(None, [given, "-c synchronous_commit=off"]))}}
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **args)
    if u.database and u.database != ":memory:" and not u.query.get("uri"):
        _owner_only(Path(u.database))
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False, "factory": _SQLiteConnection})
    sync = "FULL" if durable else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (savepoints work)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        # SQLite keeps 2 MB of pages per connection by default: once a store's indexes outgrow
        # that, every upsert reads its index pages again through the OS (a 1,000,000-message
        # soak went from 1.9 to 3.1 ms of CPU per message). 64 MB of cache per connection and
        # reads through a memory map (up to 1 GB of the file) keep a large store's hot pages near.
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cur.close()

    # SQLAlchemy calls the dialect's do_begin for each transaction; pysqlite's does nothing (the
    # driver would begin on its own, but it is told not to above). This one emits BEGIN, and a
    # writer's BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that reads
    # first and then writes can fail with SQLITE_BUSY instead of waiting when another writer
    # commits. (SQLAlchemy's documented recipe is a "begin" event listener; any connection
    # event, though, costs its dispatch on every statement of the engine, ~20 us each.)
    engine.dialect.do_begin = _do_begin  # type: ignore[method-assign]
    return engine


def _owner_only(path: Path) -> None:
    """Make the SQLite file at ``path`` readable and writable by its owner only (0600), before
    SQLite opens it: the stores hold patient data. A new file's folder is made 0700 when this
    creates it. An existing file (or its -wal/-shm) open to group or others is narrowed to 0600
    with one warning naming the path. SQLite gives the -wal and -shm files it creates the mode
    of the database file."""
    if not path.exists():
        if not path.parent.exists():
            path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            loose = file.stat().st_mode & 0o077
        except FileNotFoundError:
            continue
        if loose:
            file.chmod(0o600)
            if str(file) not in _NARROWED:
                _NARROWED.add(str(file))
                log.warning("%s was readable by group or others: now owner-only (0600)", file)


_NARROWED: set[str] = set()  # files whose mode was narrowed (warned once per process)


class _SQLiteConnection(sqlite3.Connection):
    """A pysqlite connection that knows whether its next transaction will write."""

    writing = False


def _do_begin(dbapi_connection) -> None:
    dbapi_connection.execute("BEGIN IMMEDIATE" if dbapi_connection.writing else "BEGIN")


_LOCKS: dict[str, threading.Lock] = {}  # SQLite database file -> its writers' lock
_WRITERS: dict[Engine, threading.Lock | None] = {}
_SETUP = threading.Lock()


def _writer_lock(engine: Engine) -> threading.Lock | None:
    """For a SQLite file, the lock its writers in this process share (found once per engine).

    SQLite has one writer at a time; a connection that finds the write lock taken waits in
    SQLite's busy handler, which sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries. Two
    threads of one process (the listener's commit and a worker's status write) then wait
    milliseconds for a lock held for a fraction of one: the ACK latency's long tail. Taking
    turns on a Python lock first hands the file over at once. Other processes (the CLI) still
    meet the busy handler, as before.
    """
    if engine in _WRITERS:
        return _WRITERS[engine]
    with _SETUP:
        lock = None
        if engine.dialect.name == "sqlite" and engine.url.database and engine.url.database != ":memory:":
            lock = _LOCKS.setdefault(str(Path(engine.url.database).resolve()), threading.Lock())
        _WRITERS[engine] = lock
    return lock


_LOCAL = threading.local()


@contextmanager
def pinned_connections() -> Iterator[None]:
    """While in this block, the current thread's write transactions on SQLite keep one
    connection per engine instead of taking one from the pool each time (closed at the end).

    For the threads that write all the time (the receive path's committer, the in-process
    worker): SQLAlchemy's checkout and checkin of a pooled connection (the pool's records,
    events and reset) cost about a third of the committer's time under the interpreter lock in
    a py-spy sample of one connection's load. SQLite only: a PostgreSQL connection is
    still checked out each time, so the pool's pre-ping finds a server that restarted.
    """
    pins: dict[Engine, Connection] = {}
    _LOCAL.pins = pins
    try:
        yield
    finally:
        _LOCAL.pins = None
        for conn in pins.values():
            conn.close()


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock at BEGIN (after its
    turn among this process's writers of the same file)."""
    lock = _writer_lock(engine)
    if engine.dialect.name != "sqlite":
        with engine.connect() as conn, conn.begin():
            yield conn
        return
    pins = getattr(_LOCAL, "pins", None)
    with lock or nullcontext():
        if pins is None:
            with engine.connect() as conn, _writing(conn), conn.begin():
                yield conn
            return
        conn = pins.get(engine)
        if conn is None or conn.closed or conn.invalidated:
            conn = pins[engine] = engine.connect()
        with _writing(conn), conn.begin():
            yield conn


@contextmanager
def _writing(conn: Connection) -> Iterator[None]:
    """Mark ``conn``'s driver connection as writing, so its BEGIN is BEGIN IMMEDIATE (:func:`_do_begin`)."""
    raw = conn.connection.dbapi_connection
    raw.writing = True  # type: ignore[union-attr]
    try:
        yield
    finally:
        raw.writing = False  # type: ignore[union-attr]


def aware(value):
    """A stored time as an aware UTC datetime (SQLite gives naive ones, or text); None stays None."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
