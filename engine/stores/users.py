"""Console users and their sessions, in the message store (``users``, ``sessions``).

Passwords are kept as argon2id hashes (argon2-cffi), rehashed at the next login when the
hasher's parameters have grown. A session token is 32 random bytes (URL-safe text) handed to
the browser once; the store keeps only its SHA-256, so a copy of the database opens no session.
A session ends ``absolute_hours`` after login or ``idle_minutes`` after its last use.

Errors: ``ValueError`` for a bad name, role or password, or a name already taken;
``LookupError`` for an unknown user.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import secrets
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from engine.stores.audit import ROLES
from engine.stores.console_tables import sessions, users
from engine.stores.db import write_transaction
from engine.stores.message_tables import now

NAME = re.compile(r"[A-Za-z0-9._@-]{1,100}")
MIN_PASSWORD, MAX_PASSWORD = 12, 1024
"""Password length in characters; the maximum keeps one login attempt's hashing bounded."""
REFRESH_SECONDS = 60
"""A session's ``last_seen_at`` is written at most this often (or every tenth of its idle
window, when shorter): a dashboard polling every few seconds must not take the message
store's write lock on each request."""

_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash to verify against when the name is unknown, so the answer takes as long as for a
    known name and its timing does not tell which names exist."""
    return _HASHER.hash(secrets.token_urlsafe(16))


def token_hash(token: str) -> str:
    """The SHA-256 (hex) of a session token: what the store keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


class Users:
    """The console's users and sessions in the message store at ``engine``."""

    def __init__(self, engine: Engine):
        self.engine = engine

    # -- accounts -------------------------------------------------------------------------------
    def add(self, name: str, role: str, password: str) -> None:
        """Create an enabled user."""
        _check_name(name)
        _check_role(role)
        hashed = _hash(password)
        stamp = now()
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(
                    users.insert().values(
                        name=name, role=role, password_hash=hashed, created_at=stamp, updated_at=stamp
                    )
                )
        except IntegrityError:
            raise ValueError(f"user {name!r} already exists") from None

    def set_password(self, name: str, password: str) -> None:
        """Replace the password; the user's open sessions end (a leaked one dies with the old password)."""
        hashed = _hash(password)
        with write_transaction(self.engine) as conn:
            _change(conn, name, password_hash=hashed)
            conn.execute(delete(sessions).where(sessions.c.user_name == name))

    def set_role(self, name: str, role: str) -> None:
        """Change the role; open sessions get the new role at their next request."""
        _check_role(role)
        with write_transaction(self.engine) as conn:
            _change(conn, name, role=role)

    def disable(self, name: str) -> None:
        """The user can no longer log in and its open sessions end; the row stays (the audit log names it)."""
        with write_transaction(self.engine) as conn:
            _change(conn, name, disabled_at=func.coalesce(users.c.disabled_at, now()))
            conn.execute(delete(sessions).where(sessions.c.user_name == name))

    def list(self) -> list[dict[str, Any]]:
        """Every user by name: name, role, created_at, updated_at, disabled_at (never the hash)."""
        cols = [c for c in users.c if c.name != "password_hash"]
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(*cols).order_by(users.c.name)).mappings()]

    def count(self) -> int:
        """How many users there are, disabled ones included."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(users)).scalar_one()

    def ensure_first_admin(self, name: str, password: str) -> bool:
        """Create ``name`` as admin when there is no user at all; True when it was created.
        With users present, nothing is checked or changed (the password may then be empty)."""
        if self.count():
            return False
        try:
            self.add(name, "admin", password)
        except ValueError:
            if self.count():  # another process created the first user meanwhile
                return False
            raise
        return True

    def verify(self, name: str, password: str) -> dict[str, str] | None:
        """``{name, role}`` when ``password`` is this enabled user's; None otherwise (unknown
        name, disabled user, wrong password: one answer, one hashing time)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(users).where(users.c.name == name)).mappings().first()
        hashed = row["password_hash"] if row is not None else _dummy_hash()
        try:
            _HASHER.verify(hashed, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or row["disabled_at"] is not None:
            return None
        if _HASHER.check_needs_rehash(hashed):
            with write_transaction(self.engine) as conn:
                conn.execute(update(users).where(users.c.name == name).values(password_hash=_HASHER.hash(password)))
        return {"name": row["name"], "role": row["role"]}

    # -- sessions -------------------------------------------------------------------------------
    def open_session(self, name: str, peer: str, *, idle_minutes: float = 30, absolute_hours: float = 12) -> str:
        """A new session for the enabled user ``name``; returns its token (shown to the client
        once, kept here only as its SHA-256). Sessions past their absolute end are removed."""
        token = secrets.token_urlsafe(32)
        stamp = now()
        with write_transaction(self.engine) as conn:
            enabled = select(users.c.name).where(users.c.name == name, users.c.disabled_at.is_(None))
            if conn.execute(enabled).first() is None:
                raise LookupError(f"no enabled user {name!r}")
            conn.execute(delete(sessions).where(sessions.c.expires_at <= stamp))
            conn.execute(
                sessions.insert().values(
                    token_hash=token_hash(token),
                    user_name=name,
                    peer=peer[:100],
                    created_at=stamp,
                    last_seen_at=stamp,
                    expires_at=stamp + timedelta(hours=absolute_hours),
                    idle_seconds=max(1, math.ceil(idle_minutes * 60)),
                )
            )
        return token

    def session(self, token: str) -> dict[str, Any] | None:
        """``{name, role, expires_at}`` of the session ``token`` opened, with the user's current
        role, and its idle clock restarted; None when unknown, past its absolute end, idle too
        long, or its user is disabled."""
        key = token_hash(token)
        q = (
            select(sessions, users.c.role, users.c.disabled_at)
            .join(users, users.c.name == sessions.c.user_name)
            .where(sessions.c.token_hash == key)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        stamp = now()
        if row is None or row["disabled_at"] is not None or stamp >= row["expires_at"]:
            return None
        idle = stamp - row["last_seen_at"]
        if idle >= timedelta(seconds=row["idle_seconds"]):
            return None
        if idle >= timedelta(seconds=min(REFRESH_SECONDS, row["idle_seconds"] / 10)):
            with write_transaction(self.engine) as conn:
                conn.execute(update(sessions).where(sessions.c.token_hash == key).values(last_seen_at=stamp))
        return {"name": row["user_name"], "role": row["role"], "expires_at": row["expires_at"]}

    def close_session(self, token: str) -> None:
        """End the session (logout); an unknown token is no error."""
        with write_transaction(self.engine) as conn:
            conn.execute(delete(sessions).where(sessions.c.token_hash == token_hash(token)))


def _check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise ValueError("a user name is 1 to 100 of letters, digits, '.', '_', '@' and '-'")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")


def _hash(password: str) -> str:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"a password is {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return _HASHER.hash(password)


def _change(conn: Connection, name: str, **values: Any) -> None:
    """Update one user's row (and its ``updated_at``); LookupError when there is none."""
    done = conn.execute(update(users).where(users.c.name == name).values(updated_at=now(), **values))
    if done.rowcount == 0:
        raise LookupError(f"no user {name!r}")
