"""Prepared hot statements (engine/stores/prepared.py) against SQLAlchemy's own execution.

The write path's upserts, the receive path's insert and the status writes run on the driver's
cursor. Each test runs on SQLite and on the machine's PostgreSQL: the rows written must be
the ones ``Connection.execute`` writes for the same statement and parameters (every column
type the stores use, bind processors included), inside the caller's transaction and
savepoints, with SQLAlchemy's exception classes and no parameter value in their text.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    bindparam,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError

from engine.stores.db import UTCDateTime, make_engine, write_transaction
from engine.stores.prepared import Prepared, prepared

SECRET = "DOE^JANE^Q"  # a patient-like value: the statement's parameters never reach an error's text


def _tables():
    meta = MetaData()
    made = [
        Table(
            name,
            meta,
            Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
            Column("k", String(40), nullable=False, unique=True),
            Column("name", String(200)),
            Column("at", UTCDateTime),
            Column("born", Date),
            Column("amount", Numeric(12, 2)),
            Column("flag", Boolean),
            Column("raw", LargeBinary),
            Column("doc", JSON),
            Column("note", Text, nullable=False, default=""),
        )
        for name in ("fast", "slow")
    ]
    return meta, made


COLUMNS = ("k", "name", "at", "born", "amount", "flag", "raw", "doc", "note")


def _rows(n: int, offset: int = 0) -> list[dict]:
    east = timezone(timedelta(hours=5, minutes=30))
    return [
        {
            "k": f"K{i + offset}",
            "name": None if i % 3 == 0 else f"name {i}",
            "at": datetime(2026, 11, 30, 10, i % 60, 5, 123456, tzinfo=east if i % 2 else UTC),
            "born": None if i % 4 == 0 else date(1970 + i % 50, 1 + i % 12, 1 + i % 28),
            "amount": Decimal(f"{i}.{i % 100:02d}"),
            "flag": bool(i % 2),
            "raw": bytes([i % 256]) * (i % 5),
            "doc": {"i": i, "list": [1, "x", None]},
            "note": "",
        }
        for i in range(n)
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/p.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url, durable=True)
    meta, (fast, slow) = _tables()
    meta.create_all(engine)
    yield engine, fast, slow
    engine.dispose()


def _insert(engine, table):
    ins = (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)
    return ins.values({c: bindparam(c) for c in COLUMNS})


def _upsert(engine, table):
    ins = _insert(engine, table)
    return ins.on_conflict_do_update(index_elements=[table.c.k], set_={c: ins.excluded[c] for c in COLUMNS if c != "k"})


def _read(engine, table) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r[1:]) for r in conn.execute(select(table).order_by(table.c.k))]


def test_rows_written_as_sqlalchemy_writes_them(db):
    engine, fast, slow = db
    rows = _rows(40)
    shared = datetime(2026, 11, 30, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5)))
    for r in rows[::3]:  # one stamp object in many rows, other times between them: each converted right
        r["at"] = shared
    with write_transaction(engine) as conn:
        ids = prepared(_insert(engine, fast).returning(fast.c.id, fast.c.k), conn.dialect).returning(conn, rows)
        got = conn.execute(_insert(engine, slow).returning(slow.c.id, slow.c.k), rows).all()
    assert [k for _i, k in ids] == [r["k"] for r in rows]  # RETURNING in the rows' order
    assert [i for i, _k in ids] == sorted(i for i, _k in ids) and len(set(ids)) == 40
    assert [tuple(r) for r in got] == ids
    # an upsert over half of them, and new ones, as one executemany
    again = _rows(20, offset=30)
    for r in again:
        r["name"], r["flag"] = "changed", None
    with write_transaction(engine) as conn:
        prepared(_upsert(engine, fast), conn.dialect).run(conn, again)
        conn.execute(_upsert(engine, slow), again)
    assert _read(engine, fast) == _read(engine, slow)
    assert len(_read(engine, fast)) == 50
    at = {r[0]: r[2] for r in _read(engine, fast)}
    assert at["K1"] == datetime(2026, 11, 30, 4, 31, 5, 123456, tzinfo=UTC)  # stored as UTC, read back aware


def test_in_the_callers_transaction_and_savepoint(db):
    engine, fast, _slow = db
    stmt = prepared(_insert(engine, fast), engine.dialect)
    with pytest.raises(RuntimeError), write_transaction(engine) as conn:
        stmt.run(conn, _rows(3))
        raise RuntimeError("rolled back")
    assert _read(engine, fast) == []
    with write_transaction(engine) as conn:
        stmt.run(conn, _rows(2))
        nested = conn.begin_nested()
        stmt.run(conn, _rows(3, offset=10))
        nested.rollback()
        stmt.run(conn, _rows(1, offset=20))
    assert [r[0] for r in _read(engine, fast)] == ["K0", "K1", "K20"]


def test_driver_errors_are_sqlalchemys_without_values(db):
    engine, fast, _slow = db
    stmt = prepared(_insert(engine, fast), engine.dialect)
    rows = _rows(2)
    rows[1]["k"] = rows[0]["k"]  # the same key twice
    rows[0]["name"] = rows[1]["name"] = SECRET
    with pytest.raises(IntegrityError) as caught, write_transaction(engine) as conn:
        stmt.run(conn, rows)
    assert SECRET not in str(caught.value) and SECRET not in repr(caught.value)
    assert _read(engine, fast) == []
    with write_transaction(engine) as conn:  # the connection is usable again
        stmt.run(conn, _rows(1))
    assert len(_read(engine, fast)) == 1


def test_a_parameter_never_silently_null(db):
    engine, fast, _slow = db
    rows = _rows(1)
    del rows[0]["note"]
    with pytest.raises(KeyError), write_transaction(engine) as conn:
        prepared(_insert(engine, fast), conn.dialect).run(conn, rows)
    # a column with a Python-side default the statement does not name: refused at preparation
    partial = fast.insert().values({c: bindparam(c) for c in COLUMNS if c != "note"})
    with pytest.raises(ValueError, match="defaults"):
        Prepared(partial, engine.dialect)
    with pytest.raises(ValueError, match="literal_execute"):  # a caller's value written into the SQL
        Prepared(select(fast.c.id).where(fast.c.k == bindparam("k", literal_execute=True)), engine.dialect)
    with pytest.raises(ValueError, match="tuple IN"):
        Prepared(
            select(fast.c.id).where(tuple_(fast.c.k, fast.c.name).in_(bindparam("kn", expanding=True))), engine.dialect
        )
    with pytest.raises(KeyError), write_transaction(engine) as conn:  # a list missing, too
        prepared(select(fast.c.id).where(fast.c.k.in_(bindparam("ks", expanding=True))), conn.dialect).all(conn, {})
    # a value the statement fixes itself needs no parameter
    fixed = fast.update().where(fast.c.k == bindparam("b_k")).values(name=None, note=bindparam("b_note"))
    with write_transaction(engine) as conn:
        prepared(_insert(engine, fast), conn.dialect).run(conn, _rows(1))
        prepared(fixed, conn.dialect).run(conn, [{"b_k": "K0", "b_note": "n"}])
    assert _read(engine, fast)[0][1] is None and _read(engine, fast)[0][-1] == "n"


def test_reads_as_sqlalchemy_reads_them(db):
    """IN lists of any length (their elements through the column's bind processor: aware
    datetimes in other zones), an IN list the statement fixes, and the rows' values through
    the result processors: the same rows ``Connection.execute`` gives, read by name or place."""
    engine, fast, _slow = db
    rows = _rows(40)
    with write_transaction(engine) as conn:
        conn.execute(_insert(engine, fast), rows)
    stmt = (
        select(fast)
        .where(
            fast.c.k.in_(bindparam("ks", expanding=True)),
            fast.c.at.not_in(bindparam("ats", expanding=True)),
            fast.c.note.in_(["", "unused"]),
        )
        .order_by(fast.c.k)
    )
    fast_read = prepared(stmt, engine.dialect)
    for n, skip in ((0, 0), (1, 0), (3, 1), (40, 7), (3, 0)):
        params = {"ks": [r["k"] for r in rows[:n]], "ats": [r["at"] for r in rows[:skip]]}
        with engine.connect() as conn:
            got = fast_read.all(conn, params)
            want = conn.execute(stmt, params).all()
        assert [tuple(r) for r in got] == [tuple(r) for r in want]
        assert len(got) == n - skip  # the skipped datetimes matched their rows: converted like the stored ones
        for g, w in zip(got, want, strict=True):
            assert (g.k, g.at, g.doc, g.raw, g.amount, g.flag) == (w.k, w.at, w.doc, w.raw, w.amount, w.flag)
            assert g.at.tzinfo is not None and isinstance(g.raw, bytes)
    # an UPDATE ... RETURNING over a list, and run() with lists of different lengths at once
    change = fast.update().where(fast.c.k.in_(bindparam("ks", expanding=True))).values(name=bindparam("new"))
    with write_transaction(engine) as conn:
        back = prepared(change.returning(fast.c.k, fast.c.name), conn.dialect).all(
            conn, {"ks": ["K1", "K2"], "new": "a"}
        )
        prepared(change, conn.dialect).run(conn, [{"ks": ["K3"], "new": "b"}, {"ks": ["K4", "K5", "K6"], "new": "c"}])
    assert sorted((r.k, r.name) for r in back) == [("K1", "a"), ("K2", "a")]
    names = {r[0]: r[1] for r in _read(engine, fast)}
    assert [names[f"K{i}"] for i in range(1, 8)] == ["a", "a", "b", "c", "c", "c", "name 7"]
    with engine.connect() as conn:  # a text() statement: its columns named by the cursor
        found = prepared(text("SELECT k, name FROM fast WHERE k = :k"), conn.dialect).all(conn, {"k": "K3"})
    assert [(r.k, r.name) for r in found] == [("K3", "b")]


def test_a_lost_connection_is_invalidated_not_pooled_again(pg_url):
    """As SQLAlchemy does for its own statements: a prepared statement that finds its
    connection gone invalidates it, so the pool never hands the dead one out again."""
    engine = make_engine(pg_url, durable=True)
    meta, (fast, _slow) = _tables()
    meta.create_all(engine)
    stmt = prepared(_insert(engine, fast), engine.dialect)
    seen: list = []
    try:
        with contextlib.suppress(DBAPIError), write_transaction(engine) as conn:
            pid = conn.exec_driver_sql("select pg_backend_pid()").scalar()
            with engine.connect() as other:
                other.exec_driver_sql(f"select pg_terminate_backend({int(pid)})")
            try:
                stmt.run(conn, _rows(1))
            except DBAPIError as exc:
                seen.append((exc.connection_invalidated, conn.invalidated))
                raise
        assert seen == [(True, True)]  # asserted outside: the failed rollback would mask it
        with write_transaction(engine) as conn:  # the next transaction gets a live connection
            stmt.run(conn, _rows(1))
        assert len(_read(engine, fast)) == 1
    finally:
        engine.dispose()
