"""Checking records against a store's schema and building the upsert statements that write them.

A record is checked in Python before any SQL runs, so a bad one fails with a
:class:`~engine.errors.DeliveryError` (``retryable=False``) that names the table and column,
never a value. Values are coerced lightly where the meaning is unambiguous (an int into a
text column becomes its decimal text, ``"2"`` into an integer column becomes 2); anything else
of the wrong type is refused, so SQLite stores exactly what PostgreSQL would. Money
(:class:`~engine.stores.columns.Amount`) is taken as a ``Decimal`` from a decimal text, an int
or a Decimal (a float through its shortest decimal form), never NaN or infinite.

Key columns must have a value; '' counts as one only in issuer and namespace columns
(``info["blank"]``: ``mrn_issuer``, ``placer_order_namespace`` ...), and a namespace column of
the key that a record leaves out or sends null is written as '' (an identifier sent without
its namespace, EI.1 alone, is the identifier with namespace '').

Upserts are ``INSERT ... ON CONFLICT (natural key) DO UPDATE SET`` the columns present in the
record (absent columns keep the stored value, ``None`` clears), plus ``updated_at`` and
``last_message_id`` and ``last_seq``. The update happens only where the stored row's ``last_seq`` is
not greater than the incoming one: an older message never overwrites what a newer one wrote, a
guarantee of the store rather than of processing order (reprocess, retries, late resends and
channel hops all go through it). One statement is built per (table, key, column set) and cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Boolean, Date, Float, Integer, Table, and_, bindparam, or_
from sqlalchemy.dialects import postgresql, sqlite

from engine.errors import DeliveryError
from engine.formats.fhir_bundle import row_id
from engine.stores.columns import MANAGED, Amount, JSONText, StoreSpec
from engine.stores.db import UTCDateTime

NOT_WRITABLE = frozenset({"id", "merged_into", "merged_into_issuer", *MANAGED})
SHAPES_KEPT = 10_000
"""Record shapes whose column checks a Planner keeps (a mapping gives a few per rule)."""


class _Refused(Exception):
    """A value of the wrong type (raised by a coercer; turned into a DeliveryError)."""


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
        return str(v)
    raise _Refused("text")


def _integer(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            pass
    raise _Refused("an integer")


def _number(v: Any) -> float:
    if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            pass
    raise _Refused("a number")


def _amount(v: Any) -> Decimal:
    if isinstance(v, bool):
        raise _Refused("an amount")
    try:
        if isinstance(v, Decimal):
            d = v
        elif isinstance(v, int):
            d = Decimal(v)
        elif isinstance(v, float):
            d = Decimal(repr(v))
        elif isinstance(v, str):
            d = Decimal(v.strip())
        else:
            raise _Refused("an amount")
    except InvalidOperation:
        raise _Refused("an amount") from None
    if not d.is_finite():
        raise _Refused("an amount")
    return d


def _boolean(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _Refused("a boolean")


def _date(v: Any) -> date:
    if isinstance(v, date) and not isinstance(v, datetime):
        return v
    raise _Refused("a date")


def _datetime(v: Any) -> datetime:
    if isinstance(v, datetime) and v.tzinfo is not None and v.utcoffset() is not None:
        return v
    raise _Refused("a timezone-aware datetime")


def _json(v: Any) -> Any:
    if isinstance(v, (str, list, dict)):
        return v
    raise _Refused("JSON text, a list or a dict")


def coercer(column) -> Callable[[Any], Any]:
    """The value check/coercion for one column, chosen by its type."""
    t = column.type
    if isinstance(t, UTCDateTime):
        return _datetime
    if isinstance(t, JSONText):
        return _json
    if isinstance(t, Amount):
        return _amount
    if isinstance(t, Boolean):
        return _boolean
    if isinstance(t, Date):
        return _date
    if isinstance(t, Float):
        return _number
    if isinstance(t, Integer):
        return _integer
    return _text


@dataclass
class Upsert:
    """One checked upsert: ``shape`` identifies its cached statement, ``params`` its values."""

    table: str
    shape: tuple[str, tuple[str, ...], tuple[str, ...]]  # (table, key, columns)
    params: dict[str, Any]


class Planner:
    """Checks records against one store's schema and caches their upsert statements."""

    def __init__(self, spec: StoreSpec, dialect_name: str):
        self.spec = spec
        self._insert = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
        self._coercers = {name: {c.name: coercer(c) for c in t.columns} for name, t in spec.tables.items()}
        self._blank = {name: {c.name for c in t.columns if c.info.get("blank")} for name, t in spec.tables.items()}
        self._served = {name for name, t in spec.tables.items() if "fhir_id" in t.c}
        self._statements: dict[tuple, Any] = {}
        self._checked: dict[tuple, tuple[Callable, ...]] = {}
        """Column checks done, by shape (see check_values)."""

    def table(self, name: str) -> Table:
        """The Table for logical ``name``; DeliveryError (not retryable) when unknown."""
        t = self.spec.tables.get(name)
        if t is None:
            raise DeliveryError(f"{self.spec.kind} store has no table {name!r}", retryable=False)
        return t

    def writable(self, table: str) -> Table:
        t = self.table(table)
        if table == self.spec.merge_audit:
            raise DeliveryError(f"{self.spec.kind}.{table} is written by merges only", retryable=False)
        return t

    def check_values(self, table: str, values: dict[str, Any], *, allow: frozenset = frozenset()) -> dict[str, Any]:
        """Coerced copy of ``values``; refuses unknown, store-managed and mistyped columns.

        The columns are checked once per shape (table, the record's columns, ``allow``), then
        each value is coerced: text stays as it is without a call (most columns of most records)."""
        shape = (table, tuple(values), allow)
        plan = self._checked.get(shape)
        if plan is None:
            plan = self._check_columns(table, values, allow)
            if len(self._checked) < SHAPES_KEPT:
                self._checked[shape] = plan
        out: dict[str, Any] = {}
        for (col, v), fn in zip(values.items(), plan):
            if v is None or (fn is _text and type(v) is str):
                out[col] = v
                continue
            try:
                out[col] = fn(v)
            except _Refused as why:
                raise DeliveryError(
                    f"{self.spec.kind}.{table}.{col}: expected {why.args[0]}, got {type(v).__name__}", retryable=False
                ) from None
        return out

    def _check_columns(self, table: str, values: dict[str, Any], allow: frozenset) -> tuple[Callable, ...]:
        """Each column's coercer, in order; DeliveryError for an unknown or store-managed column."""
        coercers = self._coercers[table]
        for col in values:
            if col not in coercers:
                raise DeliveryError(f"{self.spec.kind}.{table} has no column {col!r}", retryable=False)
            if col in NOT_WRITABLE and col not in allow:
                raise DeliveryError(f"{self.spec.kind}.{table}.{col} is maintained by the store", retryable=False)
        return tuple(coercers[col] for col in values)

    def upsert(self, table: str, key: tuple[str, ...], values: dict[str, Any]) -> Upsert:
        """Check one upsert record; ``key`` must be the table's natural key (any order)."""
        self.writable(table)
        natural = self.spec.keys[table]
        if key and set(key) != set(natural):
            raise DeliveryError(
                f"{self.spec.kind}.{table}: key ({', '.join(key)}) is not the natural key ({', '.join(natural)})",
                retryable=False,
            )
        params = self.check_values(table, values)
        self._check_identity(table, params)
        blank = self._blank[table]
        for k in natural:
            if k in blank and k != "mrn_issuer" and params.get(k) is None:
                params[k] = ""  # a namespace not sent: the identifier's namespace is ''
            if params.get(k) is None or (params[k] == "" and k not in blank):
                raise DeliveryError(f"{self.spec.kind}.{table}: key column {k!r} has no value", retryable=False)
        if table in self._served and not params.get("fhir_id"):  # a record may bring the client's id
            params["fhir_id"] = row_id(self.spec.kind, table, tuple(params[k] for k in natural))
        return Upsert(table, (table, natural, tuple(sorted(params))), params)

    def _check_identity(self, table: str, params: dict[str, Any]) -> None:
        """A patient is the pair (``mrn_issuer``, ``mrn``): a record writes both or neither.
        The issuer is text ('' for none known); with ``mrn`` cleared it is ''."""
        if "mrn_issuer" not in self.spec.tables[table].c:
            return
        if ("mrn" in params) != ("mrn_issuer" in params):
            raise DeliveryError(
                f"{self.spec.kind}.{table}: mrn and mrn_issuer go together (a patient is the pair)", retryable=False
            )
        if "mrn" in params and params["mrn_issuer"] is None:
            if params["mrn"] is not None:
                raise DeliveryError(
                    f"{self.spec.kind}.{table}.mrn_issuer: no issuer is '' (empty text), never null", retryable=False
                )
            params["mrn_issuer"] = ""

    def statement(self, shape: tuple[str, tuple[str, ...], tuple[str, ...]]):
        """The cached INSERT ... ON CONFLICT DO UPDATE for ``shape`` (binds: columns + managed)."""
        stmt = self._statements.get(shape)
        if stmt is None:
            table, key, cols = shape
            t = self.spec.tables[table]
            ins = self._insert(t).values({c: bindparam(c) for c in (*cols, *MANAGED)})
            fixed = {*key, *(c.name for c in t.columns if c.info.get("insert_only"))}
            update = {c: ins.excluded[c] for c in (*cols, *MANAGED) if c not in fixed}
            guard = or_(t.c.last_seq.is_(None), t.c.last_seq <= ins.excluded.last_seq)
            if "mrn" in cols and "mrn" not in key and table != self.spec.identity:  # never re-parented
                same = and_(t.c.mrn == ins.excluded.mrn, t.c.mrn_issuer == ins.excluded.mrn_issuer)
                guard = and_(guard, or_(t.c.mrn.is_(None), same))
            stmt = ins.on_conflict_do_update(index_elements=[t.c[k] for k in key], set_=update, where=guard)
            self._statements[shape] = stmt
        return stmt
