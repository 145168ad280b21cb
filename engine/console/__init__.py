"""The operator console: the admin REST API, the dashboard and ``/metrics``, on one HTTP port
served inside ``engine run`` (``console:`` in the config; :mod:`engine.console.app`).

Who may do what (every endpoint checks it; the dashboard only hides what a role cannot use):

- ``viewer``: channel states and statistics, charts, metrics; no message, no identifier;
- ``operator``: + message metadata (no patient identifiers), reprocess, pause and resume;
- ``analyst``: + message content and mapping output (audited, with a purpose), patient
  identifiers and search by them, replay of a changed mapping;
- ``admin``: everything, + users and the audit log.

Start-up creates the first admin when the store has no user yet: from ``first_admin_password``
(the sample: ``ENGINE_ADMIN_PASSWORD``), else with a random password written, owner-only, to
``initial_password_file`` or beside an SQLite message store (never printed). A changed
configuration file is recorded in the audit log when the console starts on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from engine.config import Config, ConsoleConfig
from engine.http_server import ThreadedServer

log = logging.getLogger("engine.console")

ROLE_CAN: dict[str, frozenset[str]] = {
    "viewer": frozenset({"stats"}),
    "operator": frozenset({"stats", "messages", "reprocess", "pause"}),
    "analyst": frozenset({"stats", "messages", "reprocess", "pause", "content", "replay"}),
    "admin": frozenset({"stats", "messages", "reprocess", "pause", "content", "replay", "users", "audit"}),
}
"""What each role may do. ``content`` covers message content, mapping output and patient identifiers."""


class Console:
    """The console of one engine process (``runtime`` is its :class:`~engine.runtime.Runtime`)."""

    def __init__(self, cfg: Config, runtime: Any):
        from engine.stores.audit import AuditLog
        from engine.stores.users import Users

        assert cfg.console is not None
        self.cfg = cfg
        self.settings: ConsoleConfig = cfg.console
        self.runtime = runtime
        self.store = runtime.message_store
        self.users = Users(self.store.engine)
        self.audit = AuditLog(self.store.engine)
        self.states = runtime.channel_states
        self._server: ThreadedServer | None = None

    def prepare(self) -> None:
        """The first admin, when there is no user; the config file's change, in the audit log."""
        from engine.stores.audit import os_user

        who = os_user()
        if self.users.count() == 0:
            s = self.settings
            password = s.first_admin_password or None
            how = "first_admin_password"
            path = self._password_file()
            if password is None and path is not None:
                password = secrets.token_urlsafe(18)
                how = "initial_password_file"
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(password + "\n")
                log.warning("console: no user yet; the password of %r is in %s (owner-only)", s.first_admin, path)
            if password is None:
                log.warning("console: no user yet; create one: engine users add NAME --role admin")
            elif self.users.ensure_first_admin(s.first_admin, password):
                self.audit.record(
                    actor=who, action="users.add", target=s.first_admin, detail={"role": "admin", "from": how}
                )
        digest = hashlib.sha256(self.cfg.file.read_bytes()).hexdigest()
        last = self.audit.search(action="config.loaded", limit=1)
        before = (last[0].get("detail") or {}).get("sha256") if last else None
        if before != digest:
            self.audit.record(
                actor=who,
                action="config.loaded",
                target=str(self.cfg.file),
                detail={"sha256": digest, "previous": before},
            )

    def _password_file(self) -> Path | None:
        """Where a first admin's random password goes: ``initial_password_file``, else beside an
        SQLite message store (the embedded default: ``data/console-admin-password``)."""
        if self.settings.initial_password_file:
            return Path(self.settings.initial_password_file)
        url = make_url(self.cfg.message_store_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            return Path(url.database).parent / "console-admin-password"
        return None

    async def start(self) -> str:
        from engine.console.app import create_app

        self.prepare()
        s = self.settings
        self._server = ThreadedServer(create_app(self), host=s.host, port=s.port, name="engine-console", tls=s.tls)
        await self._server.start()
        return f"console {self._server.scheme}://{s.host}:{self._server.port}/"

    @property
    def port(self) -> int | None:
        return self._server.port if self._server is not None else None

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
