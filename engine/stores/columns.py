"""Column building blocks shared by the clinical and PM store schemas (no store imports another).

Every table of a record store has a surrogate integer ``id`` primary key, its natural key as a
UNIQUE constraint, and two columns the writer maintains on every write: ``updated_at`` (UTC,
timezone-aware), ``last_message_id`` (the message-store id of the last message that wrote
the row) and ``last_seq`` (that message's place in receive order: an upsert from a message with a
lower ``last_seq`` than the row's leaves the row as it is, so an older message — reprocessed,
retried, resent late or carried through another channel — never overwrites a newer one).
Constraint and index names follow one naming convention so that Alembic migrations
are deterministic and names stay unique when all stores share one PostgreSQL database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Column, Date, Integer, MetaData, String, Table, Text, UniqueConstraint
from sqlalchemy.types import TypeDecorator

from engine.stores.db import UTCDateTime

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MANAGED = ("updated_at", "last_message_id", "last_seq")
"""Columns the writer sets on every insert and update."""


class JSONText(TypeDecorator):
    """JSON kept as text: a str is stored as given, a list/dict is serialised (sorted keys).

    Reads give back the stored text; callers ``json.loads`` it when they need the structure.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None or isinstance(value, str):
            return value
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def id_column() -> Column:
    """Surrogate primary key: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite."""
    return Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


def demographic_columns() -> list[Column[Any]]:
    """Name, birth date, sex, address and home phone: the columns a patient has in every store
    (each store keeps its own copy, joined to the others by MRN value, never by a key)."""
    names = ("family_name", "given_name", "middle_name")
    address = ("address_line1", "address_line2", "city", "state", "postal_code", "country", "phone_home")
    cols: list[Column[Any]] = [Column(n, String) for n in names]
    cols += [Column("birth_date", Date), Column("sex", String)]
    return cols + [Column(n, String) for n in address]


def managed_columns() -> list[Column]:
    """``updated_at``, ``last_message_id`` and ``last_seq``, appended to every table."""
    return [
        Column("updated_at", UTCDateTime, nullable=False),
        Column("last_message_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
        Column("last_seq", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    ]


def merge_audit_table(metadata: MetaData, name: str) -> Table:
    """The audit of ADT A40 merges: one row per (old_mrn, new_mrn, message_id)."""
    return Table(
        name,
        metadata,
        id_column(),
        Column("old_mrn", String, nullable=False),
        Column("new_mrn", String, nullable=False),
        Column("merged_at", UTCDateTime, nullable=False),
        Column("message_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
        *managed_columns(),
        UniqueConstraint("old_mrn", "new_mrn", "message_id"),
    )


@dataclass(frozen=True)
class StoreSpec:
    """What the writer needs to know about one store kind beyond its ``metadata``.

    ``tables`` maps the logical table name (as records and ``rows()`` name it) to its Table;
    ``keys`` gives each table's natural key; ``identity`` is the table keyed by ``mrn`` that
    carries ``merged_into`` (patient, registration); ``merge_audit`` the logical name of the
    A40 audit table, which mappings may not write.
    """

    kind: str
    tables: dict[str, Table]
    keys: dict[str, tuple[str, ...]]
    identity: str
    merge_audit: str = "patient_merge"
