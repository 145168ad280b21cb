"""The record writer: applies mappings' :class:`~engine.records.Record`s to a clinical or PM store.

``apply_batch`` is the hot path. It writes many messages in ONE transaction (one commit, one
fsync on SQLite) with one SAVEPOINT per message: a message whose records fail rolls back alone
and gets its exception in the result list; the others commit. Upserts are keyed on each
table's natural key, so applying the same message twice leaves the same rows (only
``updated_at`` moves). A patient is the pair (``mrn_issuer``, ``mrn``): the same value from two
authorities is two patients. Patients are resolved through ``merged_into`` on the way in, so
records for a merged-away patient land on the survivor.

Errors: a record the schema cannot take (unknown table or column, wrong type, missing key) is
a :class:`DeliveryError` with ``retryable=False`` naming the table/column; a database
refusal of one message's rows is non-retryable too; a database that cannot be reached or
locked past the busy timeout gives every unfailed message a retryable DeliveryError. No
message text carries patient values (database driver texts are never copied, they quote
values).
"""

from __future__ import annotations

import importlib
import logging
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from engine.errors import Deferred, DeliveryError, EngineError
from engine.records import Record
from engine.stores import migrate
from engine.stores.columns import StoreSpec
from engine.stores.db import make_engine, write_transaction
from engine.stores.merge import Patient, apply_merge, load_resolution
from engine.stores.prepared import prepared
from engine.stores.schema import MANAGED as NOT_MAPPABLE
from engine.stores.upsert import Planner, Upsert

log = logging.getLogger("engine.stores")

KINDS = ("clinical", "pm")


class _Merge:
    """One checked merge record: old patient into survivor, plus optional survivor values."""

    __slots__ = ("extra", "new", "old")

    def __init__(self, old: Patient, new: Patient, extra: Upsert | None):
        self.old, self.new, self.extra = old, new, extra


def _patient(params: dict[str, Any]) -> Patient | None:
    """The (issuer, mrn) a checked upsert names, or None."""
    mrn = params.get("mrn")
    return (params.get("mrn_issuer") or "", mrn) if mrn else None


class RecordStore:
    """A clinical or PM store at ``url`` (``sqlite:///./data/clinical.db``, ``postgresql+psycopg://...``).

    ``schema`` is the store kind, ``"clinical"`` or ``"pm"``. ``engine`` (optional) reuses an
    existing SQLAlchemy Engine; otherwise one is made (SQLite: WAL, synchronous=NORMAL,
    busy_timeout, savepoint-safe transactions; see :mod:`engine.stores.db`).
    """

    def __init__(self, url: str, schema: str, *, engine: Engine | None = None):
        if schema not in KINDS:
            raise ValueError(f"unknown record store kind {schema!r} (known: {', '.join(KINDS)})")
        self.url = url
        self.schema = schema
        self.engine = engine or make_engine(url, durable=True)
        self.spec: StoreSpec = importlib.import_module(f"engine.stores.{schema}").SPEC
        self._planner = Planner(self.spec, self.engine.dialect.name)
        self._owner_queries: dict[str, Any] = {}
        self._owned = {  # tables keyed by something else than the patient, whose rows carry one
            name
            for name, t in self.spec.tables.items()
            if "mrn" in t.c and "mrn" not in self.spec.keys[name] and name != self.spec.identity
        }

    # -- schema -------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Apply this store's Alembic migrations up to head."""
        migrate.upgrade(self.url, self.schema, engine=self.engine)

    def check_schema(self) -> None:
        """Raise :class:`~engine.stores.migrate.SchemaOutOfDate` ("run `engine db upgrade`")
        unless the database is at the code's head revision."""
        migrate.check(self.url, self.schema, engine=self.engine)

    def columns(self) -> dict[str, set[str]]:
        """{table: column names a mapping may write} (no id/updated_at/last_message_id/merged_into,
        no merge audit table)."""
        return {
            name: {c.name for c in t.columns if c.name not in NOT_MAPPABLE}
            for name, t in self.spec.tables.items()
            if name != self.spec.merge_audit
        }

    def key_columns(self, table: str) -> tuple[str, ...]:
        """The natural key of ``table`` (the UNIQUE constraint upserts conflict on)."""
        self._planner.table(table)
        return self.spec.keys[table]

    def dispose(self) -> None:
        self.engine.dispose()

    # -- writing ------------------------------------------------------------------------------
    def apply_batch(
        self,
        batch: list[tuple[int, list[Record]]],
        keys: list[str | None] | None = None,
        seqs: list[int | None] | None = None,
    ) -> list[Exception | None]:
        """Apply each (message_id, records) in one transaction, one SAVEPOINT per message.

        Returns, in order, None for a message whose records were all written, or the
        exception that rolled that message back. Never raises for a single message's fault.
        With ``keys`` (each message's ordering key), a message after a failed one of the same
        key is not applied: its result is ``Deferred`` (updates for one patient keep their order).
        ``seqs`` gives each message's place in receive order (default: its id); a row already
        written by a message with a higher one is left as it is (see :mod:`engine.stores.upsert`).
        """
        results: list[Exception | None] = [None] * len(batch)
        keys = keys or [None] * len(batch)
        order = [s if s is not None else mid for s, (mid, _r) in zip(seqs or [None] * len(batch), batch)]
        failed: dict[str | None, int] = {}  # ordering key -> first message of it that failed
        plans: list[tuple[int, int, int, list[Any]]] = []
        mrns: set[Patient] = set()
        for i, (message_id, records) in enumerate(batch):
            if keys[i] in failed:
                results[i] = Deferred(failed[keys[i]])
                continue
            try:
                ops = [self._plan(r) for r in records]
            except Exception as exc:
                results[i] = self._wrap(exc, message_id)
                if keys[i]:
                    failed[keys[i]] = message_id
                continue
            for op in ops:
                if isinstance(op, _Merge):
                    mrns.update((op.old, op.new))
                elif (patient := _patient(op.params)) is not None:
                    mrns.add(patient)
            plans.append((i, message_id, order[i], ops))
        if not plans:
            return results
        now = datetime.now(UTC)
        grouped = not any(isinstance(op, _Merge) for _i, _m, _s, ops in plans for op in ops)
        try:
            if grouped:
                try:
                    return self._write(plans, mrns, now, keys, list(results), dict(failed), grouped=True)
                except OperationalError:
                    raise
                except Exception as exc:
                    log.info(
                        "%s store: grouped write of %d message(s) failed (%s); retrying one savepoint each",
                        self.schema,
                        len(plans),
                        type(exc).__name__,
                    )
            return self._write(plans, mrns, now, keys, results, failed, grouped=False)
        except Exception as exc:
            err = DeliveryError(f"{self.schema} store: batch not committed ({type(exc).__name__})", retryable=True)
            err.__cause__ = exc
            log.warning(
                "%s store: batch of %d message(s) not committed: %s", self.schema, len(batch), type(exc).__name__
            )
            return [r if r is not None else err for r in results]

    def _write(
        self,
        plans: list[tuple[int, int, int, list[Any]]],
        mrns: set[Patient],
        now: datetime,
        keys: list[str | None],
        results: list[Exception | None],
        failed: dict[str | None, int],
        *,
        grouped: bool,
    ) -> list[Exception | None]:
        """One write transaction: the patient resolution and the owner check are read in it,
        then the records are written, ``grouped`` (one executemany per run of one shape, no
        savepoint: any failure fails the whole transaction, and the caller comes back with
        ``grouped=False``) or one SAVEPOINT per message (a message that fails rolls back alone;
        later messages of its ordering key are Deferred)."""
        with write_transaction(self.engine) as conn:
            resolved = load_resolution(conn, self.spec, mrns)
            conflicts = self._owner_conflicts(conn, plans, resolved)
            kept = []
            for plan in plans:
                i, message_id = plan[0], plan[1]
                if keys[i] in failed:
                    results[i] = Deferred(failed[keys[i]])
                elif i in conflicts:
                    results[i] = conflicts[i]
                    if keys[i]:
                        failed[keys[i]] = message_id
                else:
                    kept.append(plan)
            if grouped:
                self._write_grouped(conn, kept, resolved, now)
                return results
            for i, message_id, seq, ops in kept:
                if keys[i] in failed and failed[keys[i]] != message_id:
                    results[i] = Deferred(failed[keys[i]])
                    continue
                try:
                    with conn.begin_nested():
                        after = self._apply_ops(conn, ops, message_id, seq, now, resolved)
                except Exception as exc:
                    results[i] = self._wrap(exc, message_id)
                    if keys[i]:
                        failed.setdefault(keys[i], message_id)
                else:
                    if after is not None:  # the message merged patients: its resolution now holds
                        resolved.clear()
                        resolved.update(after)
        return results

    def _owner_conflicts(
        self, conn, plans: list[tuple[int, int, int, list[Any]]], resolved: dict[Patient, Patient]
    ) -> dict[int, Exception]:
        """Messages whose records would move a row to another patient: {batch index: error}.

        A row keyed by something other than the patient (an encounter by its visit number, an
        observation by its order and set id) belongs to the patient who first had it. A later
        message that names the same key for another patient is a conflict the analyst must
        see (a reused visit number, a wrong patient in the feed): its message fails with the
        reason, and the row is never re-parented (the upsert's guard says so too). One query
        per such table per batch; patients compare as (issuer, mrn) pairs, merged-away ones by
        their survivor.
        """
        wanted: dict[str, dict[tuple, list[tuple[int, Patient]]]] = {}
        for i, _m, _s, ops in plans:
            for op in ops:
                if isinstance(op, Upsert) and op.table in self._owned and (patient := _patient(op.params)):
                    key = tuple(op.params[k] for k in self.spec.keys[op.table])
                    wanted.setdefault(op.table, {}).setdefault(key, []).append((i, patient))
        if not wanted:
            return {}
        out: dict[int, Exception] = {}
        for table, by_key in wanted.items():
            t = self.spec.tables[table]
            cols = [t.c[k] for k in self.spec.keys[table]]
            n = len(cols)
            # by the key's leading column (its unique index's first), the whole key matched
            # here: SQLite does not use an index for a row-value IN
            q = self._owner_queries.get(table)
            if q is None:
                q = select(*cols, t.c.mrn_issuer, t.c.mrn).where(cols[0].in_(bindparam("first", expanding=True)))
                self._owner_queries[table] = q
            owners: dict[tuple, Patient] = {}
            firsts = sorted({k[0] for k in by_key}, key=str)
            for k in range(0, len(firsts), 500):
                for r in prepared(q, conn.dialect).all(conn, {"first": firsts[k : k + 500]}):
                    if tuple(r[:n]) in by_key and r[n + 1] is not None:
                        owners[tuple(r[:n])] = (r[n] or "", r[n + 1])
            for key, claims in by_key.items():
                for i, patient in claims:
                    mine = resolved.get(patient, patient)
                    owner = owners.setdefault(key, mine)
                    if resolved.get(owner, owner) != mine and i not in out:
                        out[i] = DeliveryError(
                            f"{self.schema}.{table}: this {'/'.join(self.spec.keys[table])} already belongs "
                            "to another patient; not moved (a reused or mistyped identifier?)",
                            retryable=False,
                        )
        return out

    def _write_grouped(
        self, conn, plans: list[tuple[int, int, int, list[Any]]], resolved: dict[Patient, Patient], now: datetime
    ) -> None:
        """The fast path for a batch without merges: one executemany per shape.

        Tables have no foreign keys between them, so each table's upserts can go together, and
        upserts of different rows commute: a table's records are gathered by shape (the columns
        they set), whatever their order. Only two records of one row must keep the batch order
        (a later message's values win): when a row comes again, what was gathered is written
        first. An 835 of 10,000 claims, whose records alternate between a few shapes (a claim
        with remark codes, one without), goes in a few dozen statements instead of 20,000.
        """
        per_table: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
        for _i, message_id, seq, ops in plans:
            stamp = {"updated_at": now, "last_message_id": message_id, "last_seq": seq}
            for op in ops:
                per_table.setdefault(op.shape[0], []).append((op.shape, _params(op, resolved, stamp)))
        for entries in per_table.values():
            groups: dict[Any, list[dict[str, Any]]] = {}
            rows: set[tuple] = set()
            for op_shape, params in entries:
                row = tuple(params.get(k) for k in op_shape[1])
                if row in rows:  # the same row again: what came before it is written first
                    for shape, group in groups.items():
                        self._flush(conn, shape, group)
                    groups, rows = {}, set()
                rows.add(row)
                groups.setdefault(op_shape, []).append(params)
            for shape, group in groups.items():
                self._flush(conn, shape, group)

    def _plan(self, record: Record) -> Upsert | _Merge:
        """Check one record against the schema (no SQL)."""
        if "." not in record.target:
            raise DeliveryError(f"record target {record.target!r} is not <store>.<table>", retryable=False)
        table = record.table
        if record.op == "upsert":
            return self._planner.upsert(table, tuple(record.key), record.values)
        if record.op != "merge":
            raise DeliveryError(f"{self.schema}.{table}: unknown record op {record.op!r}", retryable=False)
        self._planner.table(table)
        values = dict(record.values)
        old = (values.pop("old_mrn_issuer", None), values.pop("old_mrn", None))
        new = (values.get("mrn_issuer"), values.get("mrn"))
        if not all(isinstance(v, str) for v in (*old, *new)) or not old[1] or not new[1]:
            raise DeliveryError(
                f"{self.schema}.{table}: merge needs text values mrn, mrn_issuer, old_mrn and old_mrn_issuer",
                retryable=False,
            )
        if old == new:
            raise DeliveryError(f"{self.schema}.{table}: merge of a patient into itself", retryable=False)
        extra = None
        if len(values) > 2:  # survivor values besides its identity: upserted onto its identity row
            extra = self._planner.upsert(self.spec.identity, self.spec.keys[self.spec.identity], values)
        return _Merge((str(old[0]), str(old[1])), (str(new[0]), str(new[1])), extra)

    def _apply_ops(
        self, conn, ops: list, message_id: int, seq: int, now: datetime, resolved: dict[Patient, Patient]
    ) -> dict[Patient, Patient] | None:
        """Run one message's checked records. A message with merges works on a copy of the
        patient resolution and returns it (adopted once its savepoint is released); otherwise None."""
        merges = any(isinstance(o, _Merge) for o in ops)
        local = dict(resolved) if merges else resolved
        stamp = {"updated_at": now, "last_message_id": message_id, "last_seq": seq}
        group: list[dict[str, Any]] = []
        shape: Any = None
        for op in ops:
            if isinstance(op, _Merge):
                self._flush(conn, shape, group)
                group, shape = [], None
                delta = apply_merge(
                    conn,
                    self.spec,
                    op.old,
                    op.new,
                    message_id=message_id,
                    seq=seq,
                    now=now,
                    resolve=lambda m: local.get(m, m),
                )
                _update_resolution(local, delta)
                if op.extra is not None:
                    self._flush(conn, op.extra.shape, [_params(op.extra, local, stamp)])
                continue
            if op.shape != shape:  # consecutive records of one shape go as one executemany
                self._flush(conn, shape, group)
                group, shape = [], op.shape
            group.append(_params(op, local, stamp))
        self._flush(conn, shape, group)
        return local if merges else None

    def _flush(self, conn, shape, group: list[dict[str, Any]]) -> None:
        if group:
            prepared(self._planner.statement(shape), conn.dialect).run(conn, group)

    def _wrap(self, exc: Exception, message_id: int) -> Exception:
        """A message's failure as a DeliveryError whose text carries no patient values."""
        if isinstance(exc, EngineError):
            return exc
        retryable = isinstance(exc, OperationalError)
        err = DeliveryError(
            f"{self.schema} store refused message {message_id}'s records ({type(exc).__name__}"
            + (f": {type(exc.orig).__name__}" if isinstance(exc, DBAPIError) else "")
            + ")",
            retryable=retryable,
        )
        err.__cause__ = exc
        log.warning("%s store: message %s rolled back: %s", self.schema, message_id, type(exc).__name__)
        return err

    # -- reading ------------------------------------------------------------------------------
    def table(self, name: str):
        """The SQLAlchemy table of logical table ``name`` (``appointment`` -> ``pm_appointment``)."""
        return self._planner.table(name)

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        """Rows of logical ``table`` whose columns equal ``where``'s values, in insertion order."""
        t = self._planner.table(table)
        for col in where:
            if col not in t.c:
                raise DeliveryError(f"{self.schema}.{table} has no column {col!r}", retryable=False)
        stmt = select(t).where(*[t.c[c] == v for c, v in where.items()]).order_by(t.c.id)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(stmt).mappings()]


def _params(op: Upsert, resolved: dict[Patient, Patient], stamp: dict[str, Any]) -> dict[str, Any]:
    params = {**op.params, **stamp}
    patient = _patient(params)
    if patient is not None and patient in resolved:
        params["mrn_issuer"], params["mrn"] = resolved[patient]
    return params


def _update_resolution(resolved: dict[Patient, Patient], changes: dict[Patient, Patient]) -> None:
    """Fold a merge's {patient: survivor} changes into ``resolved``, keeping chains one hop deep."""
    for old, new in changes.items():
        for k, v in list(resolved.items()):
            if v == old:
                resolved[k] = new
        resolved[old] = new
    for k in [k for k, v in resolved.items() if k == v]:
        del resolved[k]
