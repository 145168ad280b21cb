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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    and_,
    bindparam,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError

from engine.stores.claims import WAITING, Claims, Lease, Outcome  # noqa: F401 - the store's public names
from engine.stores.db import UTCDateTime, aware, make_engine, write_transaction
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
    expanding,
    messages,
    metadata,
    now,
    workers,
)
from engine.stores.prepared import prepared

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
    ).where(
        messages.c.channel == bindparam("channel"),
        messages.c.sending_facility == bindparam("facility"),
        messages.c.control_id.in_(expanding("control_ids")),
        # wrapped so that no planner takes the (channel, received_at) index instead of the
        # control id's: a day of messages is far more rows than a control id ever has
        func.coalesce(messages.c.received_at, messages.c.received_at) >= bindparam("since", type_=UTCDateTime()),
        messages.c.duplicate_of.is_(None),
    )
    # no ORDER BY: SQLite would walk the (channel, id) index to skip sorting, every message of
    # the channel, instead of the control ids' few rows; the rows are put in order in Python
)
_RECEIVED_COLUMNS = (
    *("channel", "received_at", "content", "charset", "content_hash", "message_type", "trigger", "control_id"),
    *("sending_app", "sending_facility", "version", "ordering_key", "status", "error", "duplicate_of", "flags"),
    *("peer", "source_message_id", "updated_at", "claim_until", "seq"),
)
_INSERT = messages.insert().values({c: bindparam(c) for c in _RECEIVED_COLUMNS}).returning(messages.c.id)


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


class MessageStore(Claims):
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
            ids = [r[0] for r in prepared(_INSERT, conn.dialect).returning(conn, rows)]
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
            for r in prepared(_PRIOR, conn.dialect).all(
                conn,
                {"channel": channel, "facility": facility, "control_ids": list(control_ids), "since": stamp - window},
            )
        ]
        rows.sort(key=lambda r: r.id)  # the latest original of a control id wins below
        return {
            (r.channel, r.sending_facility, r.control_id): (
                r.id,
                r.content_hash,
                aware(r.received_at),
                r.status,
                r.seq,
            )
            for r in rows
        }

    # -- processing -----------------------------------------------------------------------------

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
        return {r[0]: aware(r[1]) for r in rows}

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
