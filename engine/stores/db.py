"""Database plumbing shared by every store: engines per URL and a UTC datetime column type.

SQLite is the embedded default, PostgreSQL (``postgresql+psycopg://``) the scale-out one; the
same code serves both. For SQLite this module turns on WAL, sets the sync level and lets
SQLAlchemy (not pysqlite) manage transactions, so SAVEPOINTs work (the SQLite dialect page of
the SQLAlchemy docs explains the pysqlite quirk this fixes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import DateTime, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.types import TypeDecorator


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
        args = {} if durable else {"connect_args": {"options": "-c synchronous_commit=off"}}
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **args)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    sync = "FULL" if durable else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (savepoints work)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # A writer takes the write lock up front: a deferred transaction that reads first and
        # then writes can fail with SQLITE_BUSY instead of waiting when another writer commits.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that will write: on SQLite it takes the write lock at BEGIN."""
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            yield conn
