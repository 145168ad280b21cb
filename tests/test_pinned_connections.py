"""A thread that writes all the time keeps one SQLite connection per store (engine/stores/db.py,
``pinned_connections``): the committer and the in-process worker. Its transactions must behave
as the pooled ones do: the write lock taken at BEGIN, a failed transaction rolled back without
spoiling the next, and the connections given back when the thread is done."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from engine.stores.db import make_engine, pinned_connections, write_transaction


@pytest.fixture
def store(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}", durable=True)
    with write_transaction(engine) as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    yield engine, tmp_path / "store.db"
    engine.dispose()


def _rows(engine) -> list[str]:
    with engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT v FROM t ORDER BY id"))]


def test_a_pinned_thread_writes_on_one_connection_and_gives_it_back(store):
    engine, _ = store
    with pinned_connections():
        drivers = set()
        for v in ("a", "b", "c"):
            with write_transaction(engine) as conn:
                drivers.add(id(conn.connection.driver_connection))
                conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
        assert len(drivers) == 1
        assert engine.pool.checkedout() == 1
    assert engine.pool.checkedout() == 0
    assert _rows(engine) == ["a", "b", "c"]


def test_a_pinned_transaction_takes_the_write_lock_at_begin(store):
    engine, path = store
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with pinned_connections():
            # nothing written yet: BEGIN IMMEDIATE holds the lock already
            with write_transaction(engine), pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.execute("BEGIN IMMEDIATE")  # released at commit
            other.execute("ROLLBACK")
    finally:
        other.close()


def test_a_failed_pinned_transaction_is_rolled_back_and_the_next_one_commits(store):
    engine, _ = store
    with pinned_connections():
        with pytest.raises(Exception, match="NOT NULL"), write_transaction(engine) as conn:
            conn.execute(text("INSERT INTO t (v) VALUES ('kept out')"))
            conn.execute(text("INSERT INTO t (v) VALUES (NULL)"))
        with write_transaction(engine) as conn:
            conn.execute(text("INSERT INTO t (v) VALUES ('next')"))
    assert _rows(engine) == ["next"]
