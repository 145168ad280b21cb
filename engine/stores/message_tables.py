"""The message store's tables: messages, their deliveries, workers' heartbeats and the audit of
content reads, with the statuses a message goes through (see :mod:`engine.stores.message_store`).

Alembic compares migrations with ``metadata`` here (engine/migrations/env.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    text,
)

from engine.stores.db import UTCDateTime

metadata = MetaData()

RECEIVED, FILTERED, TRANSFORMED, QUEUED, SENT, ERROR = (
    "RECEIVED",
    "FILTERED",
    "TRANSFORMED",
    "QUEUED",
    "SENT",
    "ERROR",
)
STATUSES = (RECEIVED, FILTERED, TRANSFORMED, QUEUED, SENT, ERROR)
PENDING = (RECEIVED, TRANSFORMED, QUEUED)

messages = Table(
    "messages",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("channel", String(100), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("charset", String(40), nullable=False, default=""),
    Column("content_hash", String(64), nullable=False),
    Column("message_type", String(20), nullable=False, default=""),
    Column("trigger", String(20), nullable=False, default=""),
    Column("control_id", String(200), nullable=False, default=""),
    Column("sending_app", String(200), nullable=False, default=""),
    Column("sending_facility", String(200), nullable=False, default=""),
    Column("version", String(20), nullable=False, default=""),
    Column("ordering_key", String(200)),
    Column("status", String(12), nullable=False),
    Column("error", Text),
    Column("duplicate_of", BigInteger().with_variant(Integer, "sqlite")),
    Column("flags", String(200), nullable=False, default=""),
    Column("peer", String(100), nullable=False, default=""),
    Column("source_message_id", BigInteger().with_variant(Integer, "sqlite")),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("claim_until", UTCDateTime),
    Column("claim_token", String(40)),
    Column("seq", BigInteger().with_variant(Integer, "sqlite")),
    Column("warnings", Text),
    Column("unmapped", Text),
)
"""``claim_token`` fences a claim: only the worker holding it may write the message's statuses.
``seq`` is the message's place in receive order when it differs from its own id: a copy routed
from another channel or a resend of a failed message keeps the original's (NULL means ``id``).
``warnings`` (JSON list of text, never values) says what the mappings let go under
``on_error: skip``; ``unmapped`` (JSON list of positions such as ``OBX-17.1``) the populated
source positions no mapping rule read."""
Index("ix_messages_dup", messages.c.channel, messages.c.sending_facility, messages.c.control_id)
Index("ix_messages_status", messages.c.status, messages.c.channel)
Index("ix_messages_order", messages.c.channel, messages.c.ordering_key, messages.c.id)
Index("ix_messages_source", messages.c.channel, messages.c.source_message_id)
Index("ix_messages_received", messages.c.channel, messages.c.received_at)  # retention: a channel's messages by age
_PENDING_SQL = "status IN ('RECEIVED', 'TRANSFORMED', 'QUEUED')"
Index(
    "ix_messages_pending",
    messages.c.channel,
    messages.c.ordering_key,
    messages.c.id,
    sqlite_where=text(_PENDING_SQL),
    postgresql_where=text(_PENDING_SQL),
)
"""Only the messages still in work (see migration messages_0006): the claim and the hand-on
read through it, so their cost does not grow with a patient's history. A query uses it only
when its status condition is the index's own, written with literal values (:func:`_pending`)."""
# The console's search (engine/stores/message_search.py, migration messages_0009): each filter
# alone, newest first, reads only its own entries, in id order (SQLite appends the rowid to
# every index, so ``control_id`` alone is in id order there; PostgreSQL sorts a value's few rows).
# A patient is found through ix_messages_order, channel by channel: an index on ordering_key
# alone would cost each insert most of all (its keys are random), for little gain here.
# ``trigger`` comes after ``id`` in ix_messages_type: "ADT" alone is then in id order too, and
# "ADT^A01" is checked inside the index, never in the table.
Index("ix_messages_channel_id", messages.c.channel, messages.c.id)
Index("ix_messages_status_id", messages.c.status, messages.c.id)
Index("ix_messages_control_id", messages.c.control_id)
Index("ix_messages_type", messages.c.message_type, messages.c.id, messages.c.trigger)
Index("ix_messages_received_at", messages.c.received_at, postgresql_include=["id"])
_WARNED_SQL = "warnings IS NOT NULL"
Index(
    "ix_messages_warnings",
    messages.c.channel,
    sqlite_where=text(_WARNED_SQL),
    postgresql_where=text(_WARNED_SQL),
)
"""Only the messages with warnings, for their count per channel (none at insert: free there)."""

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", BigInteger().with_variant(Integer, "sqlite"), ForeignKey("messages.id"), nullable=False),
    Column("destination", String(100), nullable=False),
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("result", Text),
    Column("error", Text),
    Column("next_attempt_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("message_id", "destination", name="uq_deliveries_message_destination"),
)

workers = Table(
    "workers",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("processed", BigInteger().with_variant(Integer, "sqlite"), nullable=False, default=0),
)

content_access = Table(
    "content_access",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("accessed_by", String(200), nullable=False),
    Column("accessed_at", UTCDateTime, nullable=False),
    Column("purpose", String(200), nullable=False, default=""),
)


def now() -> datetime:
    return datetime.now(UTC)


def expanding(name: str = "ids") -> BindParameter:
    """A bind parameter that takes a list (``IN (...)``), for statements built once."""
    return bindparam(name, expanding=True)


control_numbers = Table(
    "control_numbers",
    metadata,
    Column("sender", String(100), primary_key=True),
    Column("receiver", String(100), primary_key=True),
    Column("last", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
"""The last X12 control number used per (our id, the partner's id): every 999, TA1 and 837 we
write takes the next one (:mod:`engine.stores.control_numbers`), whichever process writes it."""
