"""The processing half of the message store: claims, their renewal and fencing, outcomes.

A worker claims committed messages (:meth:`Claims.claim`, a :class:`Lease` with a token),
renews the claim while it works, and writes every outcome fenced by that token
(:meth:`Claims.record`, :meth:`Claims.record_deliveries`): a worker whose claim passed to
another (it stalled past the lease) writes nothing. A claim takes a message only when no
earlier message of its ordering key is still pending, which keeps one patient's updates in
receive order with any number of workers; the messages it passes over wait (:data:`WAITING`)
until the worker of the earlier one hands them on. :class:`MessageStore` is these and the
receive path.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, literal, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from engine.stores.db import UTCDateTime, write_transaction
from engine.stores.message_tables import PENDING, QUEUED, deliveries, expanding, messages, now
from engine.stores.prepared import prepared

_ids = expanding


def _pending(status):
    """``status IN ('RECEIVED', 'TRANSFORMED', 'QUEUED')`` with the values in the SQL text, as the
    planners need to match the partial index ``ix_messages_pending``."""
    return status.in_([literal(s, literal_execute=True) for s in PENDING])


# The hot path's statements, built once: building a SQLAlchemy expression costs more than
# running it on SQLite, and a prebuilt statement also keeps its compiled form cached.
# Lists of ids or keys go in as expanding bind parameters.
_STAMP = bindparam("stamp", type_=UTCDateTime())
_EARLIER = messages.alias("e")
_CLAIM = (
    update(messages)
    .where(
        messages.c.id.in_(_ids()),
        messages.c.status.in_(PENDING),
        or_(messages.c.claim_until.is_(None), messages.c.claim_until < _STAMP),
        or_(
            messages.c.ordering_key.is_(None),
            ~select(_EARLIER.c.id)
            .where(
                _EARLIER.c.channel == messages.c.channel,
                _EARLIER.c.ordering_key == messages.c.ordering_key,
                _EARLIER.c.id < messages.c.id,
                _pending(_EARLIER.c.status),
                or_(
                    _EARLIER.c.id.not_in(_ids()),
                    and_(_EARLIER.c.claim_until.is_not(None), _EARLIER.c.claim_until >= _STAMP),
                ),
            )
            .exists(),
        ),
    )
    .values(claim_until=bindparam("until", type_=UTCDateTime()), claim_token=bindparam("token"))
    .returning(messages.c.id)
)
_LOAD = select(messages).where(messages.c.id.in_(_ids()), messages.c.status.in_(PENDING)).order_by(messages.c.id)
_LOAD_DELIVERIES = select(deliveries).where(deliveries.c.message_id.in_(_ids()))
_RECORD = (
    update(messages)
    .where(messages.c.id == bindparam("b_id"))
    .values(
        status=bindparam("b_status"),
        error=bindparam("b_error"),
        warnings=bindparam("b_warnings"),
        unmapped=bindparam("b_unmapped"),
        updated_at=bindparam("b_stamp", type_=UTCDateTime()),
        claim_until=None,
        claim_token=None,
    )
)
_RECORD_FENCED = _RECORD.where(messages.c.claim_token == bindparam("b_token")).returning(messages.c.id)
"""The status write of a worker's lease: only where its token still holds the message (the
UPDATE locks the row and reads the token again, so a takeover committed meanwhile is seen)."""
WAITING = "waiting"
"""``claim_token`` of a pending message a claim passed over because an earlier message of its
ordering key was still in work: nobody will dispatch it again but the worker that finishes that
earlier message (:meth:`MessageStore.record` hands it on). Not a token: no lease is ever it."""
_PASSED_OVER = (
    update(messages)
    .where(
        messages.c.id.in_(_ids()),
        messages.c.id.not_in(_ids("claimed")),
        messages.c.status.in_(PENDING),
        or_(messages.c.claim_until.is_(None), messages.c.claim_until < _STAMP),
    )
    .values(claim_token=WAITING)
)
_NEXT = (
    select(messages.c.ordering_key, func.min(messages.c.id))
    .where(
        messages.c.channel == bindparam("channel"),
        messages.c.ordering_key.in_(_ids("keys")),
        _pending(messages.c.status),
        or_(messages.c.claim_until.is_(None), messages.c.claim_until < _STAMP),
        # passed over by a claim, or waiting for a retry behind the one just done; a RECEIVED
        # message already dispatched in a later batch is left to that batch (handing it on
        # again only made a second worker ask for it, in vain)
        or_(messages.c.claim_token == WAITING, messages.c.status == QUEUED),
    )
    .group_by(messages.c.ordering_key)
)
_DELIVERY_VALUES = ("status", "attempts", "result", "error", "next_attempt_at", "updated_at")
_DELIVERY_UPSERT = {
    name: (
        lambda ins: ins.on_conflict_do_update(
            index_elements=[deliveries.c.message_id, deliveries.c.destination],
            set_={k: ins.excluded[k] for k in _DELIVERY_VALUES},
        )
    )(insert(deliveries).values({c: bindparam(c) for c in ("message_id", "destination", *_DELIVERY_VALUES)}))
    for name, insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
"""One INSERT ... ON CONFLICT (message_id, destination) DO UPDATE per dialect: a delivery row
is written in one statement whether or not an earlier attempt left one."""
_LOCK = text("SELECT pg_advisory_xact_lock(:k)")


def _fenced_delivery(insert):
    """One delivery row, written only while the claim holds: INSERT ... SELECT from the message
    row with the lease's token (PostgreSQL locks that row, FOR UPDATE OF messages, so a
    takeover committing meanwhile is seen), ON CONFLICT updating an earlier attempt's row,
    RETURNING the message id where it wrote. One round trip where a fencing read and a write
    took two; a worker records each downstream ACK this way (:meth:`Claims.record_deliveries`)."""
    typed = {"destination": deliveries.c.destination.type, "status": deliveries.c.status.type}
    typed.update((k, deliveries.c[k].type) for k in _DELIVERY_VALUES if k != "status")
    src = (
        select(messages.c.id, *(bindparam(k, type_=t) for k, t in typed.items()))
        .where(messages.c.id == bindparam("message_id"), messages.c.claim_token == bindparam("token"))
        .with_for_update(of=messages)
    )
    ins = insert(deliveries).from_select(["message_id", *typed], src)
    return ins.on_conflict_do_update(
        index_elements=[deliveries.c.message_id, deliveries.c.destination],
        set_={k: ins.excluded[k] for k in _DELIVERY_VALUES},
    ).returning(deliveries.c.message_id)


_FENCED_DELIVERY = {"sqlite": _fenced_delivery(sqlite_insert), "postgresql": _fenced_delivery(pg_insert)}
_CLAIM_LOCK = int.from_bytes(hashlib.sha256(b"engine.claims").digest()[:8], "big", signed=True)
_SAFE = 0.8
"""Share of a lease a worker relies on: it stops delivering once 80% of the lease has passed
since the store last confirmed it (clocks of different hosts may disagree a little)."""


@dataclass
class Lease:
    """A worker's claim on some messages: ``token`` fences every status it writes.

    ``valid()`` is False once the claim may have passed to another worker: after
    ``deadline`` (monotonic seconds, renewed while the worker works) or once a renewal found
    messages taken over (``lost``). A worker stops delivering then.
    """

    token: str
    ids: list[int]
    seconds: float
    deadline: float
    lost: set[int] = field(default_factory=set)

    def valid(self, message_id: int | None = None) -> bool:
        if time.monotonic() >= self.deadline:
            return False
        return not self.lost if message_id is None else message_id not in self.lost


@dataclass
class Outcome:
    """The result of processing one message, written back by :meth:`MessageStore.record`."""

    message_id: int
    status: str
    error: str | None = None
    deliveries: list[dict[str, Any]] | None = None  # destination, status, attempts, result, error, next_attempt_at
    warnings: list[str] | None = None
    unmapped: list[str] | None = None


class Claims:
    """Claims and outcomes over ``self.engine`` (durable) and ``self.status_engine`` (the
    bookkeeping engine: a lost status only means the message is processed again)."""

    engine: Any
    status_engine: Any

    def claim(self, ids: list[int], *, lease_seconds: float = 60.0) -> tuple[Lease, list[Any]]:
        """Claim ``ids`` for processing by this worker for ``lease_seconds`` and load them;
        returns the Lease (those claimed, and the token that fences every status written for
        them) and the claimed rows, with content and earlier delivery rows, in id order. One
        short transaction.

        A message is claimed only if it still needs processing, nobody else holds an
        unexpired claim on it, and no earlier message of its channel with the same ordering
        key is still pending, unless that one is among ``ids`` and free to be claimed with it
        (else it goes first, and this one is marked :data:`WAITING`: :meth:`record` hands it
        on when the earlier one is done). This is
        what keeps one patient's updates in receive order with any number of workers. Claims
        are serialised (PostgreSQL: a transaction-scoped advisory lock; SQLite: its single
        writer), so two workers handed overlapping batches (a re-dispatch after a
        Redis restart, say) cannot split one patient's messages between them.
        """
        token = uuid.uuid4().hex
        started = time.monotonic()
        if not ids:
            return Lease(token, [], lease_seconds, started + lease_seconds), []
        stamp = now()
        params = {"ids": ids, "stamp": stamp, "until": stamp + timedelta(seconds=lease_seconds), "token": token}
        with write_transaction(self.status_engine) as conn:
            if conn.dialect.name == "postgresql":
                prepared(_LOCK, conn.dialect).run(conn, [{"k": _CLAIM_LOCK}])
            claimed = sorted(r[0] for r in prepared(_CLAIM, conn.dialect).all(conn, params))
            if len(claimed) < len(ids):  # the others wait for an earlier one: its worker hands them on
                prepared(_PASSED_OVER, conn.dialect).run(
                    conn, [{"ids": ids, "claimed": claimed or [0], "stamp": stamp}]
                )
            rows = self._load(conn, claimed) if claimed else []
        return Lease(token, claimed, lease_seconds, started + lease_seconds * _SAFE), rows

    def renew(self, lease: Lease) -> None:
        """Extend ``lease`` by its length from now; messages another worker took over since
        go to ``lease.lost``. The local deadline moves only when the store answered."""
        held = [i for i in lease.ids if i not in lease.lost]
        if not held:
            return
        started = time.monotonic()
        with write_transaction(self.status_engine) as conn:
            kept = {
                r[0]
                for r in conn.execute(
                    update(messages)
                    .where(messages.c.id.in_(held), messages.c.claim_token == lease.token)
                    .values(claim_until=now() + timedelta(seconds=lease.seconds))
                    .returning(messages.c.id)
                )
            }
        lease.lost.update(i for i in held if i not in kept)
        lease.deadline = started + lease.seconds * _SAFE

    def record_deliveries(self, lease: Lease, results: list[tuple[int, dict[str, Any]]]) -> set[int]:
        """Write (message_id, delivery) rows at once, before the rest of the batch is done
        (a destination that cannot be undone, such as an MLLP sender, records each ACK as it
        comes). Fenced like :meth:`record`; returns the message ids written."""
        stamp = now()
        with write_transaction(self.status_engine) as conn:
            rows = [{**v, "token": lease.token} for v in _delivery_rows(results, stamp)]
            written = prepared(_FENCED_DELIVERY[conn.dialect.name], conn.dialect).returning(conn, rows)
        return {r[0] for r in written if r is not None}

    def release_claims(self) -> int:
        """Drop every claim (an embedded engine starting up: claims left by its last run are stale)."""
        with write_transaction(self.status_engine) as conn:
            return conn.execute(
                update(messages).where(messages.c.claim_until.is_not(None)).values(claim_until=None, claim_token=None)
            ).rowcount

    def next_in_line(self, channel: str, done: dict[str, int], conn=None) -> list[int]:
        """For each ordering key -> last processed id, the next pending unclaimed message that
        waits for it (passed over by a claim, or QUEUED), if any."""
        if not done:
            return []
        if conn is None:
            with self.engine.connect() as own:
                return self.next_in_line(channel, done, own)
        rows = prepared(_NEXT, conn.dialect).all(conn, {"channel": channel, "keys": list(done), "stamp": now()})
        return sorted(mid for key, mid in rows if mid > done[key])

    def load(self, ids: Iterable[int]) -> list[Any]:
        """Pending rows (with content and earlier delivery rows) for ``ids``, in id order."""
        ids = list(ids)
        if not ids:
            return []
        with self.engine.connect() as conn:
            return self._load(conn, ids)

    def _load(self, conn, ids: list[int]) -> list[Any]:
        rows = prepared(_LOAD, conn.dialect).all(conn, {"ids": ids})
        by_msg: dict[int, dict[str, Any]] = {}
        for d in prepared(_LOAD_DELIVERIES, conn.dialect).all(conn, {"ids": ids}):
            by_msg.setdefault(d.message_id, {})[d.destination] = d
        return [_Loaded(r, by_msg.get(r.id, {})) for r in rows]

    def record(
        self, outcomes: list[Outcome], lease: Lease | None = None, *, hand_on: tuple[str, dict[str, int]] | None = None
    ) -> tuple[list[Outcome], list[int]]:
        """Write processing outcomes (message status and per-destination rows) in one
        transaction and release their claims; returns the outcomes written and, with
        ``hand_on`` = (channel, {ordering key: last id processed}), the messages next in line
        for those keys (:meth:`next_in_line`, read in the same transaction).

        With ``lease``, only messages whose claim it still holds are written: a worker whose
        claim passed to another worker (it stalled past the lease) writes nothing for them.
        """
        stamp = now()
        with write_transaction(self.status_engine) as conn:
            if hand_on and hand_on[1] and conn.dialect.name == "postgresql":
                # in turn with claims: a claim that passes a message over (in its own transaction)
                # is then either seen here, or sees this one's messages done and takes it itself
                prepared(_LOCK, conn.dialect).run(conn, [{"k": _CLAIM_LOCK}])
            rows = [
                {
                    "b_id": o.message_id,
                    "b_status": o.status,
                    "b_error": o.error,
                    "b_warnings": json.dumps(o.warnings) if o.warnings else None,
                    "b_unmapped": json.dumps(o.unmapped) if o.unmapped else None,
                    "b_stamp": stamp,
                    "b_token": None if lease is None else lease.token,
                }
                for o in outcomes
            ]
            if rows and lease is not None:  # fenced in the statement: one per message, one round trip
                written = prepared(_RECORD_FENCED, conn.dialect).returning(conn, rows)
                outcomes = [o for o, w in zip(outcomes, written, strict=True) if w is not None]
            elif rows:  # one statement, executed for each message (executemany)
                prepared(_RECORD, conn.dialect).run(conn, rows)
            self._write_deliveries(conn, [(o.message_id, d) for o in outcomes for d in o.deliveries or ()], stamp)
            after = self.next_in_line(hand_on[0], hand_on[1], conn) if hand_on else []
        return outcomes, after

    def _write_deliveries(self, conn, rows: list[tuple[int, dict[str, Any]]], stamp: datetime) -> None:
        """Insert or update one delivery row per (message_id, delivery dict), in one statement."""
        if rows:
            prepared(_DELIVERY_UPSERT[conn.dialect.name], conn.dialect).run(conn, _delivery_rows(rows, stamp))


def _delivery_rows(rows: list[tuple[int, dict[str, Any]]], stamp: datetime) -> list[dict[str, Any]]:
    """The parameters of a delivery row's upsert for each (message_id, delivery dict)."""
    return [
        dict(
            message_id=mid,
            destination=d["destination"],
            status=d["status"],
            attempts=d.get("attempts", 1),
            result=d.get("result"),
            error=d.get("error"),
            next_attempt_at=d.get("next_attempt_at"),
            updated_at=stamp,
        )
        for mid, d in rows
    ]


class _Loaded:
    """A message row plus its delivery rows keyed by destination name."""

    __slots__ = ("deliveries", "row")

    def __init__(self, row, deliveries):
        self.row = row
        self.deliveries = deliveries

    def __getattr__(self, name):
        return getattr(self.row, name)
