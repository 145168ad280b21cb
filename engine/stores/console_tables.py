"""The operator console's tables, in the message store's schema (migration messages_0008):
console users, their sessions, the audit log of who did what, and which channels are paused.

They sit on :data:`engine.stores.message_tables.metadata`, so Alembic compares them with the
rest of the messages schema (engine/migrations/env.py imports this module for it).

``audit_log`` is append-only: triggers on SQLite and PostgreSQL refuse every UPDATE and DELETE,
so not even the engine's own database account can rewrite what was done.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, String, Table, Text

from engine.stores.db import UTCDateTime
from engine.stores.message_tables import metadata

__all__ = ["audit_log", "channel_state", "metadata", "sessions", "users"]

users = Table(
    "users",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("role", String(20), nullable=False),
    Column("password_hash", String(200), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime),
)
"""Console accounts: ``password_hash`` is argon2id (:mod:`engine.stores.users`); a disabled
user keeps its row (the audit log names it) and can no longer log in."""

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_name", String(100), nullable=False),
    Column("peer", String(100), nullable=False, default=""),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("idle_seconds", Integer, nullable=False),
)
"""Logged-in sessions: the SHA-256 (hex) of the cookie's token, never the token. A session ends
at ``expires_at`` (absolute) or ``idle_seconds`` after ``last_seen_at``, whichever comes first."""
Index("ix_sessions_user", sessions.c.user_name)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("role", String(20), nullable=False, default=""),
    Column("peer", String(100), nullable=False, default=""),
    Column("action", String(40), nullable=False),
    Column("target", String(200), nullable=False, default=""),
    Column("purpose", String(200), nullable=False, default=""),
    Column("outcome", String(20), nullable=False, default="ok"),
    Column("detail", Text),
)
"""Who (``actor``: a console user or, from the CLI, the OS account) did what (``action`` such as
``users.add``, ``message.content``) to what (``target``), why (``purpose``), from where (``peer``)
and with which ``outcome``; ``detail`` is JSON. Never patient identifiers or content."""
Index("ix_audit_log_at", audit_log.c.at)
Index("ix_audit_log_actor", audit_log.c.actor, audit_log.c.at)
Index("ix_audit_log_action", audit_log.c.action, audit_log.c.at)

channel_state = Table(
    "channel_state",
    metadata,
    Column("channel", String(100), primary_key=True),
    Column("paused", Boolean, nullable=False, default=False),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("changed_by", String(100), nullable=False),
)
"""A channel paused from the console stays paused across restarts (no row: running)."""
