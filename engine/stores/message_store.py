"""The message store: every inbound message, committed before it is acknowledged.

One row per message per channel (raw bytes exactly as received, header fields, status), one
row per message per destination (attempts, result, error), and an audit trail of who read
message content. Statuses::

    RECEIVED     committed, waiting for processing (re-dispatched at start-up)
    FILTERED     dropped on purpose: the channel filter, or a duplicate resend (duplicate_of set)
    TRANSFORMED  mapped, delivery under way (kept for destinations that deliver asynchronously;
                 the built-in ones map and deliver in one step, so a message goes from
                 RECEIVED straight to SENT, QUEUED or ERROR)
    QUEUED       a destination failed and waits for its next attempt (next_attempt_at)
    SENT         every destination delivered
    ERROR        a fault, with its reason in ``error``; ``engine reprocess`` puts it back

Writes on the receive path are grouped: :meth:`MessageStore.insert_received` commits many
inbound messages in one transaction (one fsync), which is what lets one process ACK thousands
of messages a second durably.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError

from engine.stores.db import UTCDateTime, make_engine, write_transaction
from engine.stores.message_tables import (  # noqa: F401 - the store's public names
    ERROR,
    FILTERED,
    PENDING,
    QUEUED,
    RECEIVED,
    SENT,
    STATUSES,
    TRANSFORMED,
    content_access,
    deliveries,
    messages,
    metadata,
    workers,
)


def now() -> datetime:
    return datetime.now(UTC)


# The hot path's statements, built once: building a SQLAlchemy expression costs more than
# running it on SQLite, and a prebuilt statement also keeps its compiled form cached.
# Lists of ids or keys go in as expanding bind parameters.
def _pending(status):
    """``status IN ('RECEIVED', 'TRANSFORMED', 'QUEUED')`` with the values in the SQL text, as the
    planners need to match the partial index ``ix_messages_pending``."""
    return status.in_([literal(s, literal_execute=True) for s in PENDING])


def _ids(name: str = "ids"):
    return bindparam(name, expanding=True)


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
_OWNED = (
    select(messages.c.id)
    .where(messages.c.id.in_(_ids()), messages.c.claim_token == bindparam("token"))
    .with_for_update()
)
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
_PRIOR = (
    select(
        messages.c.id,
        messages.c.content_hash,
        messages.c.received_at,
        messages.c.channel,
        messages.c.sending_facility,
        messages.c.control_id,
        messages.c.status,
        func.coalesce(messages.c.seq, messages.c.id).label("seq"),
    )
    .where(
        messages.c.channel == bindparam("channel"),
        messages.c.sending_facility == bindparam("facility"),
        messages.c.control_id.in_(_ids("control_ids")),
        # wrapped so that no planner takes the (channel, received_at) index instead of the
        # control id's: a day of messages is far more rows than a control id ever has
        func.coalesce(messages.c.received_at, messages.c.received_at) >= bindparam("since", type_=UTCDateTime()),
        messages.c.duplicate_of.is_(None),
    )
    .order_by(messages.c.id)
)
_INSERT = messages.insert().returning(messages.c.id, sort_by_parameter_order=True)
_DELIVERY_VALUES = ("status", "attempts", "result", "error", "next_attempt_at", "updated_at")
_DELIVERY_UPSERT = {
    name: (
        lambda ins: ins.on_conflict_do_update(
            index_elements=[deliveries.c.message_id, deliveries.c.destination],
            set_={k: ins.excluded[k] for k in _DELIVERY_VALUES},
        )
    )(insert(deliveries))
    for name, insert in (("sqlite", sqlite_insert), ("postgresql", pg_insert))
}
"""One INSERT ... ON CONFLICT (message_id, destination) DO UPDATE per dialect: a delivery row
is written in one statement whether or not an earlier attempt left one."""


@dataclass
class Inbound:
    """One message as the receive path saw it, before it is committed."""

    channel: str
    content: bytes
    charset: str = ""
    message_type: str = ""
    trigger: str = ""
    control_id: str = ""
    sending_app: str = ""
    sending_facility: str = ""
    version: str = ""
    ordering_key: str | None = None
    peer: str = ""
    error: str | None = None  # set when the header or the bytes are unreadable: stored as ERROR, answered AR or AE
    duplicate_window: timedelta | None = timedelta(hours=24)
    source_message_id: int | None = None
    seq: int | None = None  # receive order of the original (a routed copy); None: its own id


@dataclass(frozen=True)
class Stored:
    """What committing one Inbound produced: its id, status and, for a resend, the original.

    ``error`` is set when the store refused the message's header fields (stored raw as ERROR).
    """

    id: int
    status: str
    duplicate_of: int | None = None
    flags: str = ""
    error: str | None = None


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


class MessageStore:
    """Message store over any SQLAlchemy URL (SQLite by default, PostgreSQL for scale-out)."""

    def __init__(self, url: str, *, engine: Engine | None = None):
        self.url = url
        self.engine = engine or make_engine(url, durable=True)
        # Processing statuses need not reach the disk before the worker goes on: if they are
        # lost, the message is still pending and is processed again (writes are idempotent).
        self.status_engine = make_engine(url, durable=False) if engine is None else self.engine

    def upgrade(self) -> None:
        from engine.stores.migrate import upgrade

        upgrade(self.url, "messages", engine=self.engine)

    # -- receive path ---------------------------------------------------------------------------
    def insert_received(self, items: list[Inbound]) -> list[Stored]:
        """Commit ``items`` in one transaction; returns one Stored per item, in order.

        Duplicate detection: a message whose channel, MSH-4 and MSH-10 match an earlier one
        within its window is FILTERED with ``duplicate_of`` when the content is identical, and
        processed but flagged ``control_id_reused`` when the content differs. The resend of a
        message that ended in ERROR is processed again (flagged ``resend_of_failed``), in the
        original's place in receive order (its ``seq``), so it can never overtake newer data.
        Two statements per batch, whatever its size: one SELECT for the earlier messages with
        these control ids, one multi-row INSERT ... RETURNING (on PostgreSQL, also one advisory
        lock statement, so that listeners in several processes cannot both take a resend for
        an original).

        When the database refuses a value (e.g. a header field longer than its column), the
        batch is retried one message per transaction, and a message refused again is stored
        raw, without its header fields, as ERROR (``Stored.error`` says why): one bad message
        never costs the others their commit.
        Raises the driver's error when the store cannot commit (the caller answers AE).
        """
        try:
            return self._insert(items)
        except (DataError, IntegrityError):
            if len(items) == 1:
                return [self._insert_raw(items[0])]
        out: list[Stored] = []
        for item in items:
            try:
                out.extend(self._insert([item]))
            except (DataError, IntegrityError):
                out.append(self._insert_raw(item))
        return out

    def _insert_raw(self, item: Inbound) -> Stored:
        """Store a message the database refused with its header fields: raw content, ERROR."""
        stamp = now()
        error = "the message store refused this message's header fields (a value too long or malformed)"
        row = dict(
            channel=item.channel,
            received_at=stamp,
            content=item.content,
            charset="",
            content_hash=hashlib.sha256(item.content).hexdigest(),
            status=ERROR,
            error=error,
            peer=item.peer[:100],
            source_message_id=item.source_message_id,
            updated_at=stamp,
        )
        with write_transaction(self.engine) as conn:
            row_id = conn.execute(messages.insert().returning(messages.c.id), row).scalar_one()
        return Stored(row_id, ERROR, error=error)

    def _insert(self, items: list[Inbound]) -> list[Stored]:
        stamp = now()
        with write_transaction(self.engine) as conn:
            if conn.dialect.name == "postgresql":
                _lock_control_ids(conn, items)
            prior = self._prior(conn, items, stamp)
            rows, out_meta = [], []
            for item in items:
                digest = hashlib.sha256(item.content).hexdigest()
                status, dup, flags, seq = (ERROR if item.error else RECEIVED), None, "", item.seq
                key = (item.channel, item.sending_facility, item.control_id)
                if not item.error and item.control_id and item.duplicate_window is not None:
                    earlier = prior.get(key)
                    if earlier is not None and earlier[2] >= stamp - item.duplicate_window:
                        if earlier[1] != digest:
                            flags = "control_id_reused"
                        elif earlier[3] == ERROR:  # the sender tries again: so do we, in the original's place
                            flags, seq = "resend_of_failed", earlier[4]
                        else:
                            status, dup = FILTERED, earlier[0]
                rows.append(
                    dict(
                        channel=item.channel,
                        received_at=stamp,
                        content=item.content,
                        charset=item.charset[:40],
                        content_hash=digest,
                        message_type=item.message_type[:20],
                        trigger=item.trigger[:20],
                        control_id=item.control_id[:200],
                        sending_app=item.sending_app[:200],
                        sending_facility=item.sending_facility[:200],
                        version=item.version[:20],
                        ordering_key=(item.ordering_key or None),
                        status=status,
                        error=item.error if item.error else (f"duplicate of message {dup}" if dup else None),
                        duplicate_of=dup,
                        flags=flags,
                        peer=item.peer[:100],
                        source_message_id=item.source_message_id,
                        updated_at=stamp,
                        claim_until=None,
                        seq=seq,
                    )
                )
                out_meta.append((status, dup, flags, key, digest))
                if status == RECEIVED and item.control_id and dup is None:
                    # a later copy in this same batch is a duplicate of this one: its id comes below
                    prior[key] = (None, digest, stamp, RECEIVED, None)
            ids = [r[0] for r in conn.execute(_INSERT, rows)]
            out: list[Stored] = []
            first_in_batch: dict[tuple, int] = {}
            for row_id, (status, dup, flags, key, _digest) in zip(ids, out_meta):
                if status == FILTERED and dup is None:  # duplicate of a message earlier in this batch
                    dup = first_in_batch[key]
                    conn.execute(
                        update(messages)
                        .where(messages.c.id == row_id)
                        .values(duplicate_of=dup, error=f"duplicate of message {dup}")
                    )
                if status == RECEIVED and key not in first_in_batch:
                    first_in_batch[key] = row_id
                out.append(Stored(row_id, status, dup, flags))
        return out

    def _prior(self, conn, items: list[Inbound], stamp: datetime) -> dict[tuple, tuple]:
        """(channel, MSH-4, MSH-10) -> (id, content hash, received_at, status, seq) of the latest
        earlier original."""
        keyed = [i for i in items if i.control_id and not i.error and i.duplicate_window is not None]
        if not keyed:
            return {}
        window = max(i.duplicate_window or timedelta(0) for i in keyed)
        # one query per (channel, MSH-4): a row-value IN over the three columns is not
        # matched to the index by SQLite, which then reads the whole table for each batch
        groups: dict[tuple[str, str], set[str]] = {}
        for i in keyed:
            groups.setdefault((i.channel, i.sending_facility), set()).add(i.control_id)
        rows = [
            r
            for (channel, facility), control_ids in groups.items()
            for r in conn.execute(
                _PRIOR,
                {"channel": channel, "facility": facility, "control_ids": list(control_ids), "since": stamp - window},
            )
        ]
        rows.sort(key=lambda r: r.id)  # the latest original of a control id wins below
        return {
            (r.channel, r.sending_facility, r.control_id): (
                r.id,
                r.content_hash,
                _aware(r.received_at),
                r.status,
                r.seq,
            )
            for r in rows
        }

    # -- processing -----------------------------------------------------------------------------
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
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CLAIM_LOCK})
            claimed = sorted(r[0] for r in conn.execute(_CLAIM, params))
            if len(claimed) < len(ids):  # the others wait for an earlier one: its worker hands them on
                conn.execute(_PASSED_OVER, {"ids": ids, "claimed": claimed or [0], "stamp": stamp})
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

    def _owned(self, conn, lease: Lease, ids: list[int]) -> set[int]:
        """Those of ``ids`` whose claim ``lease`` still holds, locked until the transaction ends
        (PostgreSQL: FOR UPDATE; SQLite: the write transaction already excludes other writers)."""
        return {r[0] for r in conn.execute(_OWNED, {"ids": ids, "token": lease.token})}

    def record_deliveries(self, lease: Lease, results: list[tuple[int, dict[str, Any]]]) -> set[int]:
        """Write (message_id, delivery) rows at once, before the rest of the batch is done
        (a destination that cannot be undone, such as an MLLP sender, records each ACK as it
        comes). Fenced like :meth:`record`; returns the message ids written."""
        stamp = now()
        with write_transaction(self.status_engine) as conn:
            owned = self._owned(conn, lease, [m for m, _d in results])
            self._write_deliveries(conn, [(m, d) for m, d in results if m in owned], stamp)
        return owned

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
        rows = conn.execute(_NEXT, {"channel": channel, "keys": list(done), "stamp": now()})
        return sorted(mid for key, mid in rows if mid > done[key])

    def load(self, ids: Iterable[int]) -> list[Any]:
        """Pending rows (with content and earlier delivery rows) for ``ids``, in id order."""
        ids = list(ids)
        if not ids:
            return []
        with self.engine.connect() as conn:
            return self._load(conn, ids)

    def _load(self, conn, ids: list[int]) -> list[Any]:
        rows = conn.execute(_LOAD, {"ids": ids}).all()
        by_msg: dict[int, dict[str, Any]] = {}
        for d in conn.execute(_LOAD_DELIVERIES, {"ids": ids}):
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
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CLAIM_LOCK})
            if lease is not None and outcomes:
                owned = self._owned(conn, lease, [o.message_id for o in outcomes])
                outcomes = [o for o in outcomes if o.message_id in owned]
            rows = [
                {
                    "b_id": o.message_id,
                    "b_status": o.status,
                    "b_error": o.error,
                    "b_warnings": json.dumps(o.warnings) if o.warnings else None,
                    "b_unmapped": json.dumps(o.unmapped) if o.unmapped else None,
                    "b_stamp": stamp,
                }
                for o in outcomes
            ]
            if rows:  # one statement, executed for each message (executemany)
                conn.execute(_RECORD, rows)
            self._write_deliveries(conn, [(o.message_id, d) for o in outcomes for d in o.deliveries or ()], stamp)
            after = self.next_in_line(hand_on[0], hand_on[1], conn) if hand_on else []
        return outcomes, after

    def _write_deliveries(self, conn, rows: list[tuple[int, dict[str, Any]]], stamp: datetime) -> None:
        """Insert or update one delivery row per (message_id, delivery dict), in one statement."""
        if not rows:
            return
        values = [
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
        conn.execute(_DELIVERY_UPSERT[conn.dialect.name], values)

    def pending(
        self,
        *,
        channel: str | None = None,
        older_than: timedelta = timedelta(0),
        limit: int = 10_000,
        stuck: bool = True,
    ) -> list[tuple[int, str]]:
        """(id, channel) of messages that still need processing, oldest first.

        QUEUED whose next attempt is due and, with ``stuck``, RECEIVED and TRANSFORMED older
        than ``older_than`` (lost from the queue, worker killed).
        """
        cutoff = now() - older_than
        t = now()
        # correlated, so it reads the deliveries of QUEUED messages only (by the unique index on
        # message_id): the sweep runs every second, and deliveries grow with the store
        waiting = (
            select(deliveries.c.id)
            .where(
                deliveries.c.message_id == messages.c.id,
                deliveries.c.status == QUEUED,
                deliveries.c.next_attempt_at > t,
            )
            .exists()
        )
        due = (messages.c.status == QUEUED) & ~waiting
        lost = messages.c.status.in_((RECEIVED, TRANSFORMED)) & (messages.c.updated_at <= cutoff)
        q = select(messages.c.id, messages.c.channel).where(
            or_(lost, due) if stuck else due,
            or_(messages.c.claim_until.is_(None), messages.c.claim_until < t),
        )
        if channel:
            q = q.where(messages.c.channel == channel)
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(q.order_by(messages.c.id).limit(limit))]

    # -- operations -----------------------------------------------------------------------------
    def search(
        self, *, channel: str | None = None, status: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[Any]:
        """Message metadata (never content), newest first."""
        cols = [c for c in messages.c if c.name != "content"]
        q = select(*cols)
        if channel:
            q = q.where(messages.c.channel == channel)
        if status:
            q = q.where(messages.c.status == status)
        if before_id:
            q = q.where(messages.c.id < before_id)
        with self.engine.connect() as conn:
            return list(conn.execute(q.order_by(messages.c.id.desc()).limit(limit)).all())

    def deliveries_of(self, message_id: int) -> list[Any]:
        with self.engine.connect() as conn:
            q = select(deliveries).where(deliveries.c.message_id == message_id).order_by(deliveries.c.id)
            return list(conn.execute(q).all())

    def read_content(self, message_id: int, *, who: str, purpose: str = "") -> bytes | None:
        """The raw content of one message; every read is audited with ``who`` and ``purpose``."""
        with write_transaction(self.engine) as conn:
            content = conn.execute(select(messages.c.content).where(messages.c.id == message_id)).scalar()
            if content is not None:
                conn.execute(
                    content_access.insert().values(
                        message_id=message_id, accessed_by=who, accessed_at=now(), purpose=purpose
                    )
                )
        return content

    def access_log(self, message_id: int | None = None) -> list[Any]:
        q = select(content_access).order_by(content_access.c.id)
        if message_id is not None:
            q = q.where(content_access.c.message_id == message_id)
        with self.engine.connect() as conn:
            return list(conn.execute(q).all())

    def reset_for_reprocess(
        self, ids: list[int] | None = None, *, status: str | None = None, channel: str | None = None
    ) -> list[tuple[int, str]]:
        """Put messages back to RECEIVED (delivered destinations stay delivered); returns (id, channel)."""
        q = select(messages.c.id, messages.c.channel).where(messages.c.duplicate_of.is_(None))
        if ids:
            q = q.where(messages.c.id.in_(ids))
        if status:
            q = q.where(messages.c.status == status)
        if channel:
            q = q.where(messages.c.channel == channel)
        with write_transaction(self.engine) as conn:
            found = [(r[0], r[1]) for r in conn.execute(q.order_by(messages.c.id))]
            if found:
                conn.execute(
                    update(messages)
                    .where(messages.c.id.in_([f[0] for f in found]))
                    .values(status=RECEIVED, error=None, updated_at=now())
                )
                conn.execute(
                    update(deliveries)
                    .where(and_(deliveries.c.message_id.in_([f[0] for f in found]), deliveries.c.status != SENT))
                    .values(attempts=0, next_attempt_at=None)
                )
        return found

    def copy_of(self, channel: str, source_message_id: int) -> int | None:
        """The id of the copy of ``source_message_id`` already routed into ``channel``, if any."""
        q = select(messages.c.id).where(
            messages.c.channel == channel, messages.c.source_message_id == source_message_id
        )
        with self.engine.connect() as conn:
            return conn.execute(q.limit(1)).scalar()

    def status_of(self, message_id: int) -> tuple[str, str | None] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(messages.c.status, messages.c.error).where(messages.c.id == message_id)).first()
        return (row[0], row[1]) if row else None

    def heartbeat(self, name: str, role: str, processed: int) -> None:
        """Record that process ``name`` (host:pid) is alive; ``engine status`` lists them."""
        stamp = now()
        with write_transaction(self.status_engine) as conn:
            res = conn.execute(
                update(workers).where(workers.c.name == name).values(role=role, seen_at=stamp, processed=processed)
            )
            if res.rowcount == 0:
                conn.execute(
                    workers.insert().values(name=name, role=role, started_at=stamp, seen_at=stamp, processed=processed)
                )

    def workers_seen(self, within: timedelta = timedelta(seconds=15)) -> list[Any]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(select(workers).where(workers.c.seen_at >= now() - within).order_by(workers.c.name)).all()
            )

    def oldest_pending(self) -> dict[str, datetime]:
        """channel -> receive time of its oldest message still to process."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.channel, func.min(messages.c.received_at))
                .where(messages.c.status.in_(PENDING))
                .group_by(messages.c.channel)
            ).all()
        return {r[0]: _aware(r[1]) for r in rows}

    def warning_counts(self) -> dict[str, int]:
        """channel -> messages whose mappings left a warning."""
        q = (
            select(messages.c.channel, func.count())
            .where(messages.c.warnings.is_not(None))
            .group_by(messages.c.channel)
        )
        with self.engine.connect() as conn:
            return {r[0]: r[1] for r in conn.execute(q)}

    def unmapped_lists(self, channel: str | None = None, since: datetime | None = None) -> Iterator[tuple[str, str]]:
        """(channel, unmapped JSON list) of every message with unmapped positions, streamed."""
        q = select(messages.c.channel, messages.c.unmapped).where(messages.c.unmapped.is_not(None))
        if channel:
            q = q.where(messages.c.channel == channel)
        if since is not None:
            q = q.where(messages.c.received_at >= since)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=1000).execute(q):
                yield row[0], row[1]

    def delivery_counts(self) -> dict[tuple[str, str, str], int]:
        """(channel, destination, status) -> deliveries, for QUEUED and ERROR."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.channel, deliveries.c.destination, deliveries.c.status, func.count())
                .join(messages, messages.c.id == deliveries.c.message_id)
                .where(deliveries.c.status.in_((QUEUED, ERROR)))
                .group_by(messages.c.channel, deliveries.c.destination, deliveries.c.status)
            ).all()
        return {(r[0], r[1], r[2]): r[3] for r in rows}

    def counts(self) -> dict[tuple[str, str], int]:
        """(channel, status) -> number of messages."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(messages.c.channel, messages.c.status, func.count()).group_by(
                    messages.c.channel, messages.c.status
                )
            ).all()
        return {(r[0], r[1]): r[2] for r in rows}


_CLAIM_LOCK = int.from_bytes(hashlib.sha256(b"engine.claims").digest()[:8], "big", signed=True)
_SAFE = 0.8
"""Share of a lease a worker relies on: it stops delivering once 80% of the lease has passed
since the store last confirmed it (clocks of different hosts may disagree a little)."""


def _lock_control_ids(conn, items: list[Inbound]) -> None:
    """PostgreSQL: hold a transaction-scoped advisory lock per (channel, MSH-4, MSH-10) of
    ``items`` until commit, taken in ascending order (no deadlock between batches), so the
    duplicate lookup and the insert of one control id are atomic across processes."""
    keys = sorted(
        {
            int.from_bytes(
                hashlib.sha256(f"{i.channel}\x1f{i.sending_facility}\x1f{i.control_id}".encode()).digest()[:8],
                "big",
                signed=True,
            )
            for i in items
            if i.control_id and not i.error and i.duplicate_window is not None
        }
    )
    if keys:
        conn.execute(
            text("SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY k) s"),
            {"keys": keys},
        )


def _aware(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class _Loaded:
    """A message row plus its delivery rows keyed by destination name."""

    __slots__ = ("deliveries", "row")

    def __init__(self, row, deliveries):
        self.row = row
        self.deliveries = deliveries

    def __getattr__(self, name):
        return getattr(self.row, name)
