"""What every destination shares: its name, retry policy and the two-step contract.

A destination first ``prepare``s one parsed message (a store destination runs its mapping
here; ``None`` means the message has nothing for this destination), then ``deliver``s a batch
of prepared payloads. Batches let a store destination write many messages in one transaction.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.channels.registry import ConnectorConfig
from engine.formats.hl7 import Message
from engine.transforms.report import RunReport


class RetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_attempts: int = Field(5, ge=1, le=1000)
    """Attempts before the message goes to ERROR (the first delivery counts as one)."""
    backoff_seconds: float = Field(1.0, ge=0)
    """Wait before the second attempt; doubles with each further attempt."""
    max_backoff_seconds: float = Field(300.0, ge=0)

    def delay(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed attempts."""
        return min(self.backoff_seconds * (2 ** max(attempts - 1, 0)), self.max_backoff_seconds)


class DestinationConfig(ConnectorConfig):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    retry: RetryConfig = RetryConfig()


@dataclass
class Item:
    """One message's payload for one destination."""

    message_id: int
    payload: Any
    content: bytes
    ordering_key: str | None = None
    seq: int | None = None
    """The message's place in receive order (see ``messages.seq``); None: its id."""


@dataclass
class Context:
    """What a destination may use, handed in at construction (no reaching for globals).

    ``record_store(name)`` gives a store by its channels.yaml name; ``route(channel, item)``
    commits an item's message into another channel, in the item's place in receive order, and
    dispatches it; ``channel`` is the destination's own channel's config (its senders' clock).
    """

    config: Any
    record_store: Callable[[str], Any]
    route: Callable[[str, Item], None]
    channel: Any = None


class Destination(ABC):
    """Base class; subclasses register with ``@registry.destination(type, Config)``."""

    def __init__(self, config: DestinationConfig, context: Context):
        self.config = config
        self.context = context

    orders_its_batch = False
    """True when ``deliver`` itself never applies an item after a failed item of the same
    ordering key (it returns :class:`Deferred` for those); otherwise the processor hands it a
    batch in waves of one item per key."""

    @property
    def name(self) -> str:
        return self.config.name

    def prepare(self, message: Message, report: RunReport | None = None) -> Any | None:
        """The payload for ``message``, or None if it has nothing for this destination.

        Raises MappingError when the message cannot be mapped (the message goes to ERROR). A
        destination that maps adds its warnings and the positions it read to ``report``.
        """
        return message

    def sender_clock(self, message: Message) -> Any:
        """The clock of ``message``'s sender, for date/times it sends without an offset: its
        channel's ``timezone``/``timezones`` (HL7 only); None leaves each mapping's own."""
        channel = self.context.channel
        if channel is None or not (channel.timezone or channel.timezones) or message.format != "hl7v2":
            return None
        return channel.clock(message.header().sending_facility, message.delimiters.component)

    @abstractmethod
    def deliver(self, items: list[Item]) -> list[Exception | None]:
        """Deliver each item; one result per item: None when delivered, else the error."""

    def close(self) -> None:  # noqa: B027 - optional hook: most destinations hold nothing
        """Release connections; called once when the engine stops."""
