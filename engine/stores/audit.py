"""The audit log: who did what, when, from where and why, in the message store's ``audit_log``.

The console writes a row for each login, content read, reprocess, pause and user change; the
CLI for each of its own (with the OS account as actor, :func:`os_user`). Rows are never changed
or deleted: the table's triggers refuse it (migration messages_0008). A row names its target
(a message id, a user name, a channel), never patient identifiers or content.
"""

from __future__ import annotations

import json
import os
import pwd
from datetime import datetime
from typing import Any

from sqlalchemy import String, select
from sqlalchemy.engine import Engine

from engine.stores.console_tables import audit_log
from engine.stores.db import write_transaction
from engine.stores.message_tables import now

ROLES = ("admin", "analyst", "operator", "viewer")
"""The console's roles, most rights first: admin (everything, users, audit), analyst (+ content,
patient identifiers, replay), operator (message list, reprocess, pause), viewer (channels, stats)."""
_LENGTHS = {c.name: c.type.length for c in audit_log.c if isinstance(c.type, String)}


def os_user() -> str:
    """The OS account running this process (its uid's name; the uid when it has none).

    Never an environment variable: ``USER`` or ``LOGNAME`` can be set to anything by whoever
    runs the command, and the audit log must name who really did it."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a container's uid without a passwd entry
        return f"uid {uid}"


class AuditLog:
    """Append to and read the audit log of the message store at ``engine``."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def record(
        self,
        *,
        actor: str,
        action: str,
        target: str = "",
        purpose: str = "",
        peer: str = "",
        role: str = "",
        outcome: str = "ok",
        detail: dict | None = None,
    ) -> None:
        """Append one row, committed before this returns. Text longer than its column is cut
        (a long purpose must not make the action it records fail)."""
        given = dict(actor=actor, action=action, target=target, purpose=purpose, peer=peer, role=role, outcome=outcome)
        row: dict[str, Any] = {k: v[: _LENGTHS[k]] for k, v in given.items()}
        row["detail"] = json.dumps(detail, sort_keys=True, default=str) if detail else None
        with write_transaction(self.engine) as conn:
            conn.execute(audit_log.insert().values(at=now(), **row))

    def search(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Rows newest first, each a dict with ``detail`` parsed ({} when none). ``since`` is
        inclusive, ``until`` exclusive; page on with ``before_id`` = the last row's ``id``."""
        q = select(audit_log)
        for column, value in ((audit_log.c.actor, actor), (audit_log.c.action, action)):
            if value is not None:
                q = q.where(column == value)
        if since is not None:
            q = q.where(audit_log.c.at >= since)
        if until is not None:
            q = q.where(audit_log.c.at < until)
        if before_id is not None:
            q = q.where(audit_log.c.id < before_id)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(audit_log.c.id.desc()).limit(limit)).mappings().all()
        return [{**r, "detail": json.loads(r["detail"]) if r["detail"] else {}} for r in rows]
