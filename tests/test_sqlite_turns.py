"""Writers of one SQLite file take turns across processes (engine/stores/db.py, ``_Turns``).

``engine run`` and an ``engine worker`` (or the CLI) on the same SQLite store: a writer that
finds the file's write lock taken must wait for its turn and go in when it is released, not
meet SQLite's busy handler (which sleeps up to 100 ms between tries). The waiting process here
has SQLite's busy timeout set to zero, so if it ever reached the lock while the other process
held it, its BEGIN IMMEDIATE would fail at once with "database is locked".
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import event, text

from engine.stores.db import make_engine, write_transaction

ROOT = Path(__file__).resolve().parent.parent

HOLDER = """
import sys, time
from sqlalchemy import text
from engine.stores.db import make_engine, write_transaction
engine = make_engine(sys.argv[1], durable=True)
with write_transaction(engine) as conn:
    conn.execute(text("INSERT INTO t (who, at) VALUES ('holder', :at)"), {"at": time.time()})
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    released = time.time()
print(released, flush=True)
"""


def _impatient(url: str):
    """An engine of the store whose connections never wait in SQLite's busy handler."""
    engine = make_engine(url, durable=True)

    @event.listens_for(engine, "connect")
    def _no_busy_wait(dbapi_conn, _record):
        dbapi_conn.execute("PRAGMA busy_timeout=0")

    return engine


def test_a_writer_in_another_process_waits_its_turn_instead_of_meeting_the_busy_handler(tmp_path):
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    engine = _impatient(url)
    with write_transaction(engine) as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, at REAL)"))
    for hold in (0.05, 0.3):
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLDER, url, str(hold)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with write_transaction(engine) as conn:  # the holder's transaction is open: wait for the turn
            entered = time.time()
            conn.execute(text("INSERT INTO t (who, at) VALUES ('waiter', :at)"), {"at": entered})
        released = float(holder.stdout.readline())
        assert holder.wait(10) == 0
        assert entered >= released, "the waiter wrote while the other process held the file"
        assert entered - released < 1.0  # it went in when the turn came, not after a timeout
    with engine.connect() as conn:
        order = [r[0] for r in conn.execute(text("SELECT who FROM t ORDER BY id"))]
    assert order == ["holder", "waiter", "holder", "waiter"]
    turns = tmp_path / "store.db-writer"
    assert stat.S_IMODE(turns.stat().st_mode) == 0o600  # beside a store of patient data: owner-only


def test_without_the_turns_the_same_writer_meets_the_lock(tmp_path):
    """The test above can fail: a write that does not take turns finds the file locked."""
    db = tmp_path / "store.db"
    url = f"sqlite:///{db}"
    engine = _impatient(url)
    with write_transaction(engine) as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT, at REAL)"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, "0.3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    refused = None
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            conn.exec_driver_sql("ROLLBACK")
    except Exception as exc:
        refused = exc
    holder.stdout.readline()
    assert holder.wait(10) == 0
    assert refused is not None and "locked" in str(refused)
