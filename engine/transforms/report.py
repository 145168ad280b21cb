"""What a mapping run notices besides its records: warnings, and which source positions it read.

A :class:`RunReport` is handed to :meth:`Mapping.run`; the processor keeps one per message
across all its destinations and stores two things with the message: the warnings (a record
skipped under ``on_error: skip``, never a value), and the unmapped positions — populated
``SEG-field.component`` positions that no rule of any destination read (:func:`unmapped`), so
an analyst sees what the mappings leave behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from engine.formats.hl7 import Message

NEVER_DATA = frozenset({"MSH-1", "MSH-2"})  # the delimiters themselves


@dataclass
class RunReport:
    """Collected during one or more mapping runs over one message."""

    warnings: list[str] = field(default_factory=list)
    """One line per thing the mapping let go (``table.column: reason``); never a value."""
    read: set[str] = field(default_factory=set)
    """Positions a rule read: ``SEG-f`` (the whole field) or ``SEG-f.c`` (one component)."""


def unmapped(message: Message, reports: Iterable[RunReport]) -> list[str]:
    """Populated positions (``SEG-f`` for a field without components, else ``SEG-f.c``) that
    no report read, in message order without repeats. Positions only, never values."""
    read: set[str] = set()
    for r in reports:
        read |= r.read
    out: dict[str, None] = {}
    comp = message.delimiters.component
    rep = message.delimiters.repetition
    for seg in message.segments:
        for n, value in enumerate(seg.fields[1:], 1):
            whole = f"{seg.name}-{n}"
            if not value or whole in read or whole in NEVER_DATA or whole in out:
                continue
            if comp not in value:
                out[whole] = None
                continue
            for repetition in value.split(rep):
                for c, part in enumerate(repetition.split(comp), 1):
                    where = f"{whole}.{c}"
                    if part and where not in read:
                        out[where] = None
    return list(out)
