"""Destination ``file``: each message's content written to a folder (an outbox), atomically.

A reader of the folder (a clearinghouse's SFTP pickup, a partner's agent) sees a whole file or
none: the content goes to a hidden temporary file, is flushed to disk, renamed into place, and
the folder entry is flushed too. The file name comes from the message (``file_name``), so a
delivery repeated after a crash (the write done, its status not yet recorded) writes the same
file again instead of a second one: a message is in the outbox once.

``file_name`` holds ``{id}``, the message's id in the message store (``claims-{id}.837``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from engine.channels import registry
from engine.channels.base import Destination, DestinationConfig, Item
from engine.channels.file_source import write_atomically
from engine.errors import DeliveryError


class FileWriterConfig(DestinationConfig):
    type: Literal["file"]
    folder: str
    """The outbox (relative paths are relative to the working directory); created if missing."""
    file_name: str = Field("{id}.txt", pattern=r"^[A-Za-z0-9._-]*\{id\}[A-Za-z0-9._-]*$")
    """File name around ``{id}``, the message's id (letters, digits, ``.``, ``_`` and ``-``)."""


@registry.destination("file", FileWriterConfig)
class FileWriter(Destination):
    """Writes each message's content, as received, to ``folder`` under ``name``."""

    config: FileWriterConfig

    def __init__(self, config: FileWriterConfig, context):
        super().__init__(config, context)
        self.folder = Path(config.folder)

    def prepare(self, message, report=None):
        return True  # the file is the message's content as received (Item.content)

    def deliver(self, items: list[Item]) -> list[Exception | None]:
        out: list[Exception | None] = []
        for item in items:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                write_atomically(self.folder / self.file_name(item), item.content)
                out.append(None)
            except OSError as exc:  # a full disk, a folder gone: retried by the channel's policy
                out.append(DeliveryError(f"file {self.config.file_name!r}: {type(exc).__name__}: {exc.strerror}"))
        return out

    def file_name(self, item: Item) -> str:
        return self.config.file_name.format(id=item.message_id)
