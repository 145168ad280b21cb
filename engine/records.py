"""What a mapping produces and a store destination applies: plain records, no ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    """One row to write into a store.

    ``target`` is ``"<store>.<table>"`` with the store named as in channels.yaml (``clinical``,
    ``pm``). ``op`` is ``"upsert"`` (insert or update the row whose ``key`` columns match) or
    ``"merge"`` (ADT A40: ``values`` holds ``mrn`` and ``mrn_issuer`` (the survivor),
    ``old_mrn`` and ``old_mrn_issuer``; other values are written onto the survivor).
    ``values`` holds typed Python values (str, int, float, date, timezone-aware datetime,
    bool, None). A column absent from ``values`` is left as the store has it; a column present
    with ``None`` is cleared (HL7's explicit null ``""``). ``sources`` names, per column, where
    its value came from (``PID-5.1``, ``table sex(PID-8)``), for ``engine try``.
    """

    target: str
    key: tuple[str, ...]
    values: dict[str, Any]
    op: str = "upsert"
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def store(self) -> str:
        return self.target.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.target.split(".", 1)[1]
