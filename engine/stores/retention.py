"""Retention: delete a channel's finished messages once they are older than its retention.

A channel's ``retention_days`` prunes its SENT and FILTERED messages; ERROR messages are
evidence an operator must act on, so they stay until reprocessed, or until
``error_retention_days`` if the channel sets it. Pending messages (RECEIVED, TRANSFORMED,
QUEUED) are never pruned, whatever their age. A message goes once both its receipt
(``received_at``) and its last status change (``updated_at``) are older than the cutoff, so a
message reprocessed today is kept for the full retention from today.

A message is deleted with its ``deliveries`` rows. The ``content_access`` audit trail (who read
which message's content) is kept: it outlives the content it audits.

Deletes go in batches of ``batch`` messages, one short write transaction each, with ``pause``
seconds between them, so the listener's commits (SQLite has a single writer) wait for one batch
at most. On PostgreSQL the batch is locked ``FOR UPDATE SKIP LOCKED``: several processes may
prune at once without waiting on each other or on a worker. On SQLite the newest message of the
store is never deleted: SQLite hands out ``max(id) + 1``, so deleting it would give its id to
the next message, and the clinical and PM stores' ``last_seq`` (receive order) and the audit
trail would then take the new message for the old one.

:func:`sweep` is what the running engine calls (``Runtime._sweep``); ``engine prune`` calls
:func:`plan` and :func:`prune`. Logs name channels and counts, never content.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from engine.stores.db import write_transaction
from engine.stores.message_store import ERROR, FILTERED, SENT, MessageStore, deliveries, messages, now

if TYPE_CHECKING:
    from engine.config import ChannelConfig

PRUNE_EVERY = 300.0
"""Seconds between two retention passes of a running engine (the first one at start-up)."""
RETRY_AFTER = 60.0
"""Seconds before a running engine tries again after a pass failed (the store unreachable)."""
BATCH = 500
"""Messages deleted per write transaction."""
PAUSE = 0.05
"""Seconds between two batches: the listener's commits get the single SQLite writer in between."""
FINISHED = (SENT, FILTERED)

log = logging.getLogger("engine.retention")


@dataclass(frozen=True)
class Job:
    """Prune ``channel``'s messages in ``statuses`` whose receipt and last change precede ``cutoff``."""

    channel: str
    cutoff: datetime
    statuses: tuple[str, ...]


def plan(channels: Iterable[ChannelConfig], at: datetime | None = None) -> list[Job]:
    """The prune jobs of ``channels`` at ``at`` (default: now): one for SENT/FILTERED per channel
    with ``retention_days``, one for ERROR per channel with ``error_retention_days``."""
    at = at or now()
    jobs = []
    for ch in channels:
        if ch.retention_days is not None:
            jobs.append(Job(ch.name, at - timedelta(days=ch.retention_days), FINISHED))
        if ch.error_retention_days is not None:
            jobs.append(Job(ch.name, at - timedelta(days=ch.error_retention_days), (ERROR,)))
    return jobs


def prune(
    engine_or_store: Engine | MessageStore,
    channel: str,
    older_than: datetime,
    statuses: Iterable[str] = FINISHED,
    batch: int = BATCH,
    pause: float = PAUSE,
    *,
    deadline: float | None = None,
    dry_run: bool = False,
) -> int:
    """Delete ``channel``'s messages in ``statuses`` received and last changed before
    ``older_than``, with their deliveries, ``batch`` per transaction and ``pause`` seconds apart;
    returns how many were deleted (with ``dry_run``, how many would be, deleting nothing).

    ``deadline`` (``time.monotonic()`` seconds) stops after the batch that passes it: the caller
    calls again later for the rest. Statuses other than SENT, FILTERED and ERROR are refused.
    """
    statuses = tuple(statuses)
    if not statuses or not set(statuses) <= {SENT, FILTERED, ERROR}:
        raise ValueError(f"only finished messages (SENT, FILTERED, ERROR) are pruned, not {statuses}")
    if batch < 1:
        raise ValueError("batch must be at least 1")
    engine = engine_or_store.status_engine if isinstance(engine_or_store, MessageStore) else engine_or_store
    due = [
        messages.c.channel == channel,
        messages.c.status.in_(statuses),
        messages.c.received_at < older_than,
        messages.c.updated_at < older_than,
    ]
    if engine.dialect.name == "sqlite":  # keep the newest message: its id must never be handed out again
        due.append(messages.c.id < select(func.max(messages.c.id)).scalar_subquery())
    if dry_run:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(messages).where(*due)).scalar_one()
    total = 0
    since: datetime | None = None  # received_at reached: messages kept before it are not read again
    while True:
        q = select(messages.c.id, messages.c.received_at).where(*due)
        if since is not None:
            q = q.where(messages.c.received_at >= since)
        q = q.order_by(messages.c.received_at).limit(batch).with_for_update(skip_locked=True)
        with write_transaction(engine) as conn:
            rows = conn.execute(q).all()
            ids = [r[0] for r in rows]
            if ids:
                conn.execute(delete(deliveries).where(deliveries.c.message_id.in_(ids)))
                total += conn.execute(delete(messages).where(messages.c.id.in_(ids))).rowcount
        if len(rows) < batch or (deadline is not None and time.monotonic() >= deadline):
            return total
        since = rows[-1][1]
        if pause > 0:
            time.sleep(pause)


def sweep(store: MessageStore, channels: Iterable[ChannelConfig], *, budget: float = 2.0) -> bool:
    """One retention pass of a running engine over ``channels``, for at most about ``budget``
    seconds; logs each channel's count. Returns False when time ran out before the end (call
    again soon: what is left is taken first), True when every channel is done."""
    deadline = time.monotonic() + budget
    for job in plan(channels):
        n = prune(store, job.channel, job.cutoff, job.statuses, deadline=deadline)
        if n:
            log.info(
                "channel=%s pruned %d %s message(s) received before %s",
                job.channel,
                n,
                "/".join(job.statuses),
                f"{job.cutoff:%Y-%m-%d %H:%M}",
            )
        if time.monotonic() >= deadline:
            return False
    return True
