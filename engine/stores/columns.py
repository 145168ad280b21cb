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
    (each store keeps its own copy, joined to the others by MRN value, never by a key); then
    name prefix and suffix, ``aliases`` (JSON list of the other names), and race, ethnicity and
    marital status each as code, text and coding system (``races``: every race, JSON list)."""
    names = ("family_name", "given_name", "middle_name")
    address = ("address_line1", "address_line2", "city", "state", "postal_code", "country", "phone_home")
    cols: list[Column[Any]] = [Column(n, String) for n in names]
    cols += [Column("birth_date", Date), Column("sex", String)]
    cols += [Column(n, String) for n in address]
    cols += [Column("name_prefix", String), Column("name_suffix", String), Column("aliases", JSONText)]
    cols += [*coded_columns("race"), Column("races", JSONText), *coded_columns("ethnicity")]
    return cols + coded_columns("marital_status")


def coded_columns(name: str) -> list[Column[Any]]:
    """A coded element as three columns: ``<name>_code``, ``<name>_text``, ``<name>_system``."""
    return [Column(f"{name}_{part}", String) for part in ("code", "text", "system")]


def visit_columns() -> list[Column[Any]]:
    """What an encounter (clinical) and a visit (PM) keep beyond class, attending and times:
    the parts of the location (PV1-3: point of care, room, bed, facility, building), the admit
    type (PV1-4), the attending's name, the admitting and referring doctors (id and name) and
    the consulting ones (JSON list), and admit and discharge dates sent without a time of day."""
    location = ("point_of_care", "room", "bed", "facility", "building")
    cols: list[Column[Any]] = [Column(f"location_{n}", String) for n in location]
    doctors = ("attending_name", "admitting", "admitting_name", "referring", "referring_name")
    cols += [Column("admit_type", String), *(Column(n, String) for n in doctors), Column("consulting", JSONText)]
    return cols + [Column("admit_date", Date), Column("discharge_date", Date)]


def issuer_column(name: str = "mrn_issuer") -> Column:
    """The assigning authority beside an ``mrn`` column: a patient is the pair (issuer, value).

    NOT NULL, '' where no issuer is known (rows written before identity had issuers)."""
    return Column(name, String, nullable=False, server_default="")


def managed_columns() -> list[Column]:
    """``updated_at``, ``last_message_id`` and ``last_seq``, appended to every table."""
    return [
        Column("updated_at", UTCDateTime, nullable=False),
        Column("last_message_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
        Column("last_seq", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
    ]


MERGE_AUDIT_KEY = ("old_mrn_issuer", "old_mrn", "new_mrn_issuer", "new_mrn", "message_id")
"""The merge audit's natural key."""


def merge_audit_table(metadata: MetaData, name: str) -> Table:
    """The audit of ADT A40 merges: one row per (old patient, survivor, message_id), each
    patient as its (issuer, mrn) pair."""
    return Table(
        name,
        metadata,
        id_column(),
        Column("old_mrn", String, nullable=False),
        issuer_column("old_mrn_issuer"),
        Column("new_mrn", String, nullable=False),
        issuer_column("new_mrn_issuer"),
        Column("merged_at", UTCDateTime, nullable=False),
        Column("message_id", BigInteger().with_variant(Integer, "sqlite"), nullable=True),
        *managed_columns(),
        UniqueConstraint(*MERGE_AUDIT_KEY, name=f"uq_{name}_pair"),
    )


@dataclass(frozen=True)
class StoreSpec:
    """What the writer needs to know about one store kind beyond its ``metadata``.

    ``tables`` maps the logical table name (as records and ``rows()`` name it) to its Table;
    ``keys`` gives each table's natural key; ``identity`` is the table keyed by the patient
    (``mrn``, ``mrn_issuer``) that carries ``merged_into`` and ``merged_into_issuer`` (patient,
    registration); ``merge_audit`` the logical name of the A40 audit table, which mappings may
    not write.
    """

    kind: str
    tables: dict[str, Table]
    keys: dict[str, tuple[str, ...]]
    identity: str
    merge_audit: str = "patient_merge"
