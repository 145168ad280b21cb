"""Source ``claims``: every ``every_seconds``, the PM store's unbilled charges become an 837P.

The scheduled half of ``engine claims build`` (:mod:`engine.billing`, which decides what bills
and bills each charge once, also against a concurrent ``engine claims build``): each run that
finds something to bill commits the 837P interchange it built into this channel as one message
(type 837, control id ``ISA13/GS06/ST02``, content the file as written), and the channel's
destinations deliver it, typically a ``file`` destination writing the clearinghouse's outbox.
So the claims file sits in the message store like every message: listed by ``engine messages``,
its delivery retried, and ``engine reprocess`` writes it again.

The claims are committed to the PM store before the message is committed: a crash in between
leaves claims billed with no message, which ``engine claims build --resend ISA13`` writes (the
claims carry their interchange control number). The first run is ``every_seconds`` after start.
Nothing is logged of a claim but counts and control numbers.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from engine.channels import registry
from engine.channels.registry import ConnectorConfig
from engine.errors import ConfigError, Problem
from engine.stores.message_store import Inbound, Stored

log = logging.getLogger("engine.claims")


class ClaimsSourceConfig(ConnectorConfig):
    type: Literal["claims"]
    store: str = "pm"
    """The PM store whose charges are billed."""
    every_seconds: float = Field(3600.0, gt=0)
    """Seconds between runs."""

    def check(self, cfg, key, src) -> list[Problem]:
        problems = []
        if getattr(cfg, "billing", None) is None:
            problems.append(
                src.problem(key + ("type",), "a claims source needs the billing: section (who we are on the 837P)")
            )
        if self.store not in cfg.stores or cfg.store_kind(self.store) != "pm":
            problems.append(src.problem(key + ("store",), f"store {self.store!r} is not a PM store of stores:"))
        return problems


@registry.source("claims", ClaimsSourceConfig)
class ClaimsSource:
    """Bills unbilled charges on a timer; each 837P built is committed as a message of the channel."""

    def __init__(self, channel, config: ClaimsSourceConfig, receiver):
        self.channel = channel
        self.config = config
        self.committer = receiver.committer
        self.cfg = receiver.config
        self._task: asyncio.Task | None = None
        self._pm: Any = None

    async def start(self) -> str:
        if self.cfg is None or self.cfg.billing is None:
            raise ConfigError([Problem("", None, "billing", "a claims source needs the billing: section")])
        self._task = asyncio.create_task(self._every())
        return f"claims from store {self.config.store} every {self.config.every_seconds:g} s"

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _every(self) -> None:
        while True:
            await asyncio.sleep(self.config.every_seconds)
            try:
                await asyncio.to_thread(self.run_once)
            except Exception as exc:  # a store away, a file that does not validate: logged, tried next time
                log.error("channel=%s claims build failed: %s: %s", self.channel.name, type(exc).__name__, exc)

    def run_once(self) -> list[Stored]:
        """One build; the message committed for its 837P ([] when nothing was billed)."""
        from engine.billing import build_claims
        from engine.formats.x12_837 import TRANSACTION_CONTROL
        from engine.stores.records_store import RecordStore

        if self._pm is None:
            self._pm = RecordStore(self.cfg.stores[self.config.store].url, "pm")
        result = build_claims(self._pm, self.committer.store.engine, self.cfg.billing, None, at=datetime.now(UTC))
        for s in result.skipped[:20]:
            log.info("channel=%s charge %s not billed: %s", self.channel.name, s.transaction_id, s.reason)
        if not result.text:
            return []
        isa = result.interchange_control or ""
        item = Inbound(
            channel=self.channel.name,
            content=result.text.encode("ascii"),
            charset="utf-8",
            message_type="837",
            trigger="HC",
            control_id=f"{isa}/{int(isa)}/{TRANSACTION_CONTROL}" if isa.isdigit() else isa,  # GS06 = ISA13
            sending_app="engine",
            sending_facility=self.cfg.billing.interchange.sender_id,
            version="005010X222A1",
            ordering_key=f"claims|{self.cfg.billing.billing_provider.npi}",
            duplicate_window=None,
        )
        stored = self.committer.submit_sync([item])
        log.info(
            "channel=%s interchange %s: %d claim(s), %d line(s)", self.channel.name, isa, result.claims, result.lines
        )
        return stored
