"""Hot statements compiled once and run on the driver's cursor, inside SQLAlchemy's transaction.

Why by hand: for each execution SQLAlchemy looks its compiled form up in its cache, builds every
row's parameters again (``construct_params``), runs each value through its type's bind
processor with the generic machinery, and sets up a result object. On the write path that
overhead cost more CPU than SQLite itself: a batch of upserts spent about three quarters of its
statement time in it (``bench/stages.py`` under cProfile). No library does "compile once, run
many on the DBAPI cursor" for Core statements; SQLAlchemy's own compiler still writes the SQL
and its types still convert the values, so both dialects and the column types stay theirs.
The reads of a batch's bookkeeping (claim, load, hand-on, the stores' owner and merge checks:
about ten a message when messages come one at a time) run here too, for the same reason: in
``bench/stages.py`` at batches of 1, SQLAlchemy's per-execution work (compiled-cache lookup,
expanding the IN lists, setting up the result) took about seven times the database's own time
for them. Transactions, savepoints and every other statement stay SQLAlchemy's.

The statements run on the DBAPI connection under a SQLAlchemy :class:`Connection`, inside the
transaction (and SAVEPOINT) that connection began, so they commit or roll back with it.
Driver errors come back as SQLAlchemy's own exception classes (``IntegrityError``,
``OperationalError``...), with the parameters hidden (they may be patient data).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import Date, DateTime
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

_STAMPS = (Date, DateTime)
"""Types whose values are immutable and often one object across a batch's rows."""


class _Form:
    """One SQL text of a statement: for an expanding IN, the text for one length of its list."""

    __slots__ = ("get", "last", "names", "procs", "sources", "sql")

    def __init__(self, sql: str, names: list[str], sources: list[tuple[str, int]], procs: list, fixed: Mapping):
        self.sql = sql
        self.names = tuple(names)
        """The driver's parameter names (psycopg) in the statement's order (SQLite's ``?``)."""
        self.sources = tuple(sources)
        """For each of ``names``: the caller's parameter and, for a list's element, its index (else -1)."""
        self.procs = tuple((i, proc, stamp) for i, (proc, stamp) in enumerate(procs) if proc is not None)
        """(place, bind processor, whether the value is a date or time: see ``last``)."""
        plain = len(sources) > 1 and all(i < 0 and n not in fixed for n, i in sources)
        self.get = itemgetter(*(n for n, _i in sources)) if plain else None
        """Every value straight from the caller's mapping, in order, in one call."""
        self.last: list[tuple[Any, Any]] = [(None, None)] * len(names)
        """Per place, the last date or time converted and its result: a batch's rows share one
        stamp object (``updated_at``), converted once. Dates and times are immutable, so the
        same object gives the same result; one tuple per slot, so threads sharing a statement
        never see half of another's pair."""


class Prepared:
    """``stmt`` compiled for ``dialect``: its SQL text, its parameters' order (positional
    drivers, SQLite's ``?``) or names (psycopg's ``%(name)s``), and one bind processor per
    parameter. Parameters are given as mappings by bind name, as to ``Connection.execute``;
    each must name every parameter but those the statement fixes itself (``.values(x=None)``,
    ``status.in_(PENDING)``); a missing one is a KeyError, never a silent NULL. A statement
    whose columns take Python-side defaults is refused (SQLAlchemy would compute them at
    execution; here nothing would): name those columns in its ``values``.

    An expanding IN (``bindparam("ids", expanding=True)``) takes a list; SQLAlchemy's compiler
    writes the text for each length of it (``construct_expanded_state``), kept here by length
    (up to ``FORMS`` of them, then started afresh). Rows a statement returns (:meth:`all`) go
    through their columns' result processors, as SQLAlchemy's own results do.
    """

    FORMS = 256

    __slots__ = (
        "_columns",
        "_compiled",
        "_dialect",
        "_expanding",
        "_fixed",
        "_forms",
        "_positional",
        "_results",
        "sql",
    )

    def __init__(self, stmt: ClauseElement, dialect: Dialect):
        # for_executemany: without it PostgreSQL's compiler adds an implicit RETURNING of the
        # primary key to an INSERT (rows nobody reads); a RETURNING the statement asks for stays
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect, for_executemany=True))
        for bind in compiled.binds.values():
            if bind.literal_execute and bind.required:
                raise ValueError("a prepared statement cannot render a caller's value into its SQL (literal_execute)")
            if bind.expanding and bind.type._is_tuple_type:
                raise ValueError("a prepared statement takes an IN over one column only (no tuple IN)")
        if getattr(compiled, "insert_prefetch", None) or getattr(compiled, "update_prefetch", None):
            raise ValueError("a prepared statement cannot fill Python-side column defaults: give those columns")
        self.sql = compiled.string
        self._compiled = compiled
        self._dialect = dialect
        self._positional = bool(dialect.positional)
        self._fixed: dict[str, Any] = {n: b.effective_value for b, n in compiled.bind_names.items() if not b.required}
        self._expanding = tuple(n for b, n in compiled.bind_names.items() if b.expanding and b.required)
        self._forms: dict[tuple[int, ...], _Form] = {}
        # the rows' field names and types (None: a text() statement; names from the cursor)
        exported = getattr(stmt, "exported_columns", None)
        self._columns = None if exported is None else (tuple(exported.keys()), tuple(c.type for c in exported))
        self._results: dict[tuple, tuple] = {}
        if not self._expanding:  # a list's text is written at the first use of its length
            self._form(())

    def _form(self, lengths: tuple[int, ...]) -> _Form:
        form = self._forms.get(lengths)
        if form is not None:
            return form
        compiled, dialect = self._compiled, self._dialect
        # placeholders of the right lengths; the compiler needs a value for every required bind
        dummy: dict[str, Any] = {n: None for b, n in compiled.bind_names.items() if b.required}
        dummy.update({n: [None] * k for n, k in zip(self._expanding, lengths, strict=True)} if lengths else {})
        state = compiled.construct_expanded_state(dummy, escape_names=False)
        names = list(state.positiontup or ()) if self._positional else list(state.parameters)
        element = {e: (n, i) for n, expanded in state.parameter_expansion.items() for i, e in enumerate(expanded)}
        by_name = {n: b for b, n in compiled.bind_names.items()}
        sources, procs = [], []
        for name in names:
            source, index = element.get(name, (name, -1))
            sources.append((source, index))
            type_ = by_name[source].type
            procs.append((type_.dialect_impl(dialect).bind_processor(dialect), type_._type_affinity in _STAMPS))
        if len(self._forms) >= self.FORMS:
            self._forms.clear()
        form = self._forms[lengths] = _Form(state.statement, names, sources, procs, self._fixed)
        return form

    def _bound(self, params: Mapping[str, Any]) -> tuple[_Form, tuple | dict]:
        """The SQL text for ``params`` and the driver's parameters for it."""
        form = self._form(tuple(len(params[n]) for n in self._expanding)) if self._expanding else self._form(())
        values: list[Any]
        if form.get is not None:
            values = list(form.get(params))
        else:
            fixed = self._fixed
            values = []
            for name, index in form.sources:
                v = fixed[name] if name in fixed else params[name]
                values.append(v if index < 0 else v[index])
        last = form.last
        for i, proc, stamp in form.procs:
            v = values[i]
            if v is None:
                continue
            if stamp:
                seen = last[i]
                if seen[0] is v:
                    values[i] = seen[1]
                    continue
                values[i] = out = proc(v)
                last[i] = (v, out)
            else:
                values[i] = proc(v)
        return form, tuple(values) if self._positional else dict(zip(form.names, values, strict=True))

    def run(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Execute for each of ``rows`` (one executemany where they share a text); nothing is returned."""
        bound = [self._bound(r) for r in rows]
        if not bound:
            return
        cur = _cursor(conn)
        try:
            if len(bound) == 1:
                cur.execute(bound[0][0].sql, bound[0][1])
            elif all(form is bound[0][0] for form, _p in bound):
                cur.executemany(bound[0][0].sql, [p for _f, p in bound])
            else:  # lists of different lengths: a text each
                for form, p in bound:
                    cur.execute(form.sql, p)
        except self._dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, conn, cur) from None
        finally:
            cur.close()

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Execute once and return every row it gives (a SELECT, a RETURNING), each a named
        tuple of its columns (by their keys: ``r.id``, ``r[0]``), converted as SQLAlchemy
        converts them (aware datetimes, JSON, bytes)."""
        form, p = self._bound(params)
        cur = _cursor(conn)
        try:
            cur.execute(form.sql, p)
            found = cur.fetchall()
            description = cur.description
        except self._dialect.loaded_dbapi.Error as exc:
            raise self._wrapped(exc, conn, cur) from None
        finally:
            cur.close()
        make, procs = self._result(description)
        out = []
        for r in found:
            values = list(r)
            for i, proc in procs:
                values[i] = proc(values[i])
            out.append(make(values))
        return out

    def _result(self, description: Any) -> tuple[Callable[[list], Any], tuple]:
        """A row maker and the columns' result processors, for the cursor's column types."""
        codes = tuple(d[1] for d in description)
        known = self._results.get(codes)
        if known is None:
            dialect = self._dialect
            procs: tuple[tuple[int, Any], ...] = ()
            if self._columns is None:
                names = tuple(d[0] for d in description)
            else:
                names, types = self._columns
                found = (
                    t.dialect_impl(dialect).result_processor(dialect, c) for t, c in zip(types, codes, strict=True)
                )
                procs = tuple((i, p) for i, p in enumerate(found) if p is not None)
            row = namedtuple("Row", names, rename=True)  # type: ignore[misc]  # field names known only here
            known = self._results[codes] = (row._make, procs)
        return known

    def returning(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> list[Any]:
        """Execute for each of ``rows`` and return each one's RETURNING row (a tuple), in
        ``rows``' order; None for one that returned no row (an INSERT ... SELECT that found none)."""
        bound = [self._bound(r) for r in rows]
        out: list[Any] = []
        if not bound:
            return out
        cur = _cursor(conn)
        try:
            same = all(form is bound[0][0] for form, _p in bound)
            if self._dialect.driver == "psycopg" and same:  # one round trip, results per parameter set
                cur.executemany(bound[0][0].sql, [p for _f, p in bound], returning=True)
                while True:
                    found = cur.fetchone()
                    out.append(None if found is None else tuple(found))
                    if not cur.nextset():
                        break
            else:  # sqlite3 cannot return rows from executemany; a statement each is cheap in-process
                for form, p in bound:
                    cur.execute(form.sql, p)
                    found = cur.fetchone()
                    out.append(None if found is None else tuple(found))
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
