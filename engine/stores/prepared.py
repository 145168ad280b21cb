"""Hot statements compiled once and run on the driver's cursor, inside SQLAlchemy's transaction.

Why by hand: for each execution SQLAlchemy looks its compiled form up in its cache, builds every
row's parameters again (``construct_params``), runs each value through its type's bind
processor with the generic machinery, and sets up a result object. On the write path that
overhead cost more CPU than SQLite itself: a batch of upserts spent about three quarters of its
statement time in it (``bench/stages.py`` under cProfile). No library does "compile once, run
many on the DBAPI cursor" for Core statements; SQLAlchemy's own compiler still writes the SQL
and its types still convert the values, so both dialects and the column types stay theirs.
Transactions, savepoints and the reads stay SQLAlchemy's.

The statements run on the DBAPI connection under a SQLAlchemy :class:`Connection`, inside the
transaction (and SAVEPOINT) that connection began, so they commit or roll back with it.
Driver errors come back as SQLAlchemy's own exception classes (``IntegrityError``,
``OperationalError``...), with the parameters hidden (they may be patient data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


class Prepared:
    """``stmt`` compiled for ``dialect``: its SQL text, its parameters' order (positional
    drivers, SQLite's ``?``) or names (psycopg's ``%(name)s``), and one bind processor per
    parameter. Parameters are given as mappings by bind name, as to ``Connection.execute``;
    each must name every parameter but those the statement fixes itself (``.values(x=None)``);
    a missing one is a KeyError, never a silent NULL. A statement whose columns take
    Python-side defaults is refused (SQLAlchemy would compute them at execution; here nothing
    would): name those columns in its ``values``.
    """

    __slots__ = ("_dialect", "_fixed", "_names", "_positional", "_procs", "sql")

    def __init__(self, stmt: ClauseElement, dialect: Dialect):
        # for_executemany: without it PostgreSQL's compiler adds an implicit RETURNING of the
        # primary key to an INSERT (rows nobody reads); a RETURNING the statement asks for stays
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect, for_executemany=True))
        for bind in compiled.binds.values():
            if bind.expanding or bind.literal_execute:
                raise ValueError("a prepared statement takes plain parameters only (no expanding IN)")
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ValueError("a prepared statement cannot fill Python-side column defaults: give those columns")
        self.sql = compiled.string
        self._dialect = dialect
        self._positional = bool(dialect.positional)
        names = list(compiled.positiontup or ()) if self._positional else list(compiled.bind_names.values())
        self._names = tuple(names)
        by_name = {n: b for b, n in compiled.bind_names.items()}
        procs: list[tuple[int, Callable[[Any], Any]]] = []
        for i, name in enumerate(names):
            proc = by_name[name].type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                procs.append((i, proc))
        self._procs = tuple(procs)
        self._fixed = {n: b.effective_value for b, n in compiled.bind_names.items() if not b.required}

    def _row(self, params: Mapping[str, Any]) -> tuple | dict:
        fixed = self._fixed
        values = [params[n] if n not in fixed else fixed[n] for n in self._names]
        for i, proc in self._procs:
            if values[i] is not None:
                values[i] = proc(values[i])
        return tuple(values) if self._positional else dict(zip(self._names, values, strict=True))

    def run(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Execute for each of ``rows`` (one executemany); nothing is returned."""
        params = [self._row(r) for r in rows]
        if not params:
            return
        cur = _cursor(conn)
        try:
            if len(params) == 1:
                cur.execute(self.sql, params[0])
            else:
                cur.executemany(self.sql, params)
        except self._dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, conn, cur) from None
        finally:
            cur.close()

    def returning(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> list[tuple]:
        """Execute for each of ``rows`` and return each one's RETURNING row, in ``rows``' order."""
        params = [self._row(r) for r in rows]
        out: list[tuple] = []
        if not params:
            return out
        cur = _cursor(conn)
        try:
            if self._dialect.driver == "psycopg":  # one round trip, results per parameter set
                cur.executemany(self.sql, params, returning=True)
                while True:
                    out.append(tuple(cur.fetchone()))
                    if not cur.nextset():
                        break
            else:  # sqlite3 cannot return rows from executemany; a statement each is cheap in-process
                for p in params:
                    cur.execute(self.sql, p)
                    out.append(tuple(cur.fetchone()))
        except self._dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, conn, cur) from None
        finally:
            cur.close()
        return out

    def _wrapped(self, exc: Exception, conn: Connection, cur: Any) -> Exception:
        """The driver's error as SQLAlchemy's class for it, its parameters hidden. A lost
        connection is invalidated, as SQLAlchemy does for its own statements: otherwise it
        would go back to the pool and fail the next transaction that takes it."""
        gone = self._dialect.is_disconnect(cast(Any, exc), conn.connection.dbapi_connection, cur)
        if gone:
            conn.invalidate(exc)
        err = DBAPIError.instance(
            self.sql,
            None,
            exc,
            self._dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=gone,
            dialect=self._dialect,
        )
        err.__cause__ = exc
        return err


def _cursor(conn: Connection) -> Any:
    """A cursor of the driver's connection under ``conn`` (in the transaction ``conn`` began)."""
    return conn.connection.driver_connection.cursor()  # type: ignore[union-attr]


_CACHE: dict[tuple[Any, str, str], Prepared] = {}


def prepared(stmt: ClauseElement, dialect: Dialect) -> Prepared:
    """``stmt`` prepared for ``dialect``, compiled at its first use (statements are the
    modules' and the planners' own, made once, so the cache stays as small as they are)."""
    key = (stmt, dialect.name, dialect.driver)
    p = _CACHE.get(key)
    if p is None:
        p = _CACHE[key] = Prepared(stmt, dialect)
    return p
