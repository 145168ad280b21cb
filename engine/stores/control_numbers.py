"""Outbound X12 control numbers: unique and increasing per sender/receiver pair, durably.

An ISA13 (and the GS06 and ST02 under it) must not repeat between two trading partners: a
clearinghouse drops an interchange whose control number it has seen. The counter lives in the
message store, so it survives restarts and is shared by every process: one row per pair,
advanced in its own committed transaction (``UPDATE ... RETURNING``; on PostgreSQL the row lock
orders concurrent writers, on SQLite the write lock does). A number taken and then not used (a
crash before the file is written) is a gap, never a repeat. ISA13 has nine digits: after
999,999,999 the counter starts again at 1, as X12 allows.
"""

from __future__ import annotations

from sqlalchemy import Engine, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from engine.stores.db import write_transaction
from engine.stores.message_tables import control_numbers, now

LIMIT = 999_999_999


def next_control_numbers(engine: Engine, sender: str, receiver: str, count: int = 1) -> list[int]:
    """Take ``count`` consecutive control numbers for (``sender``, ``receiver``); committed on return."""
    if count < 1:
        return []
    t = control_numbers
    sender, receiver = sender.strip()[:100], receiver.strip()[:100]
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    with write_transaction(engine) as conn:
        stamp = now()
        conn.execute(
            insert(t)
            .values(sender=sender, receiver=receiver, last=0, updated_at=stamp)
            .on_conflict_do_nothing(index_elements=["sender", "receiver"])
        )
        where = (t.c.sender == sender) & (t.c.receiver == receiver)
        last = conn.execute(select(t.c.last).where(where).with_for_update()).scalar_one()
        numbers = [(last + k - 1) % LIMIT + 1 for k in range(1, count + 1)]
        conn.execute(update(t).where(where).values(last=numbers[-1], updated_at=stamp))
    return numbers
