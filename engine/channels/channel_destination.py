"""Destination ``channel``: hand the message, unchanged, to another channel of this engine.

The copy is committed to the message store under the target channel (linked by
``source_message_id``) before this destination counts as delivered, so nothing is lost between
channels.
"""

from __future__ import annotations

from typing import Literal

from engine.channels import registry
from engine.channels.base import Destination, DestinationConfig, Item
from engine.errors import Problem


class ChannelDestinationConfig(DestinationConfig):
    type: Literal["channel"]
    channel: str
    """Name of the channel that receives the message."""

    def check(self, cfg, key, src, *, check_mappings: bool = True) -> list[Problem]:
        names = [c.name for c in cfg.channels]
        if self.channel not in names:
            return [src.problem(key + ("channel",), f"unknown channel {self.channel!r}")]
        return []


@registry.destination("channel", ChannelDestinationConfig)
class ChannelDestination(Destination):
    """Routes each message to another channel, which processes it on its own."""

    config: ChannelDestinationConfig

    def deliver(self, items: list[Item]) -> list[Exception | None]:
        results: list[Exception | None] = []
        for item in items:
            try:
                self.context.route(self.config.channel, item)
                results.append(None)
            except Exception as exc:
                results.append(exc)
        return results
