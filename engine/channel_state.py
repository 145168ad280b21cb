"""Paused channels: an operator holds a channel's processing, and resumes it.

A paused channel keeps receiving: its source commits and acknowledges as always (nothing is
refused, nothing lost; a sender with ``ack_mode: after_processing`` waits for its answer until
``result_timeout_seconds``), and its messages wait ``RECEIVED`` in the message store. No
processor takes them while the pause lasts; on resume they are handed on in receive order, so
per-patient order holds across the pause. This is what an operator wants when a downstream
system is down or a mapping is found wrong: hold, fix, resume, and nothing is lost or reordered.

The state lives in the message store (``channel_state``), so every process (listener, workers)
sees it. The process that runs the console writes it and knows at once; a worker process
(``engine worker``, or the worker that ``engine run`` starts with ``process://``) reads it for
each batch it takes, so a pause holds every batch taken after the console answered.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from engine.stores.console_tables import channel_state
from engine.stores.db import write_transaction

REFRESH_SECONDS = 1.0


class ChannelStates:
    def __init__(self, engine: Engine, refresh_seconds: float = REFRESH_SECONDS):
        self._engine = engine
        self._refresh = refresh_seconds
        self._paused: set[str] = set()
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def paused(self, channel: str) -> bool:
        """Whether ``channel`` is paused now (as of at most ``refresh_seconds`` ago; a worker
        process reads each time, see the module's docstring). A cached answer in a worker was
        wrong both ways: a message sent right after a pause was processed, and the messages
        handed on at a resume were dropped as paused, until the sweeper found them stuck."""
        with self._lock:
            if time.monotonic() - self._read_at >= self._refresh:
                self._read()
            return channel in self._paused

    def _read(self) -> None:
        with self._engine.connect() as conn:
            rows = conn.execute(select(channel_state.c.channel).where(channel_state.c.paused.is_(True))).all()
        self._paused = {r[0] for r in rows}
        self._read_at = time.monotonic()

    def states(self) -> dict[str, dict]:
        """channel -> {paused, changed_at, changed_by} for every channel ever paused or resumed."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(channel_state)).all()
        return {
            r.channel: {"paused": bool(r.paused), "changed_at": r.changed_at, "changed_by": r.changed_by} for r in rows
        }

    def set(self, channel: str, paused: bool, by: str) -> bool:
        """Pause or resume ``channel``; False when it already was in that state."""
        stamp = datetime.now(UTC)
        with write_transaction(self._engine) as conn:
            current = conn.execute(select(channel_state.c.paused).where(channel_state.c.channel == channel)).scalar()
            if current is None:
                conn.execute(
                    channel_state.insert().values(channel=channel, paused=paused, changed_at=stamp, changed_by=by)
                )
            elif bool(current) == paused:
                return False
            else:
                conn.execute(
                    update(channel_state)
                    .where(channel_state.c.channel == channel)
                    .values(paused=paused, changed_at=stamp, changed_by=by)
                )
        with self._lock:
            self._read_at = float("-inf")
        return True
