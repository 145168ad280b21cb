"""Column building blocks shared by the clinical and PM store schemas (no store imports another).

Every table of a record store has a surrogate integer ``id`` primary key, its natural key as a
UNIQUE constraint, and two columns the writer maintains on every write: ``updated_at`` (UTC,
timezone-aware), ``last_message_id`` (the message-store id of the last message that wrote
the row) and ``last_seq`` (that message's place in receive order: an upsert from a message with a
lower ``last_seq`` than the row's leaves the row as it is, so an older message — reprocessed,
retried, resent late or carried through another channel — never overwrites a newer one).
Constraint and index names follow one naming convention so that Alembic migrations
are deterministic and names stay unique when all stores share one PostgreSQL database (a key
whose column names would pass PostgreSQL's 63 characters is named ``uq_<table>_key``).
Money is :class:`Amount` (exact ``Decimal``), never a float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)
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


class Amount(TypeDecorator):
    """An exact money amount (``Decimal``, 4 decimal places): NUMERIC(18, 4) on PostgreSQL.

    SQLite has no exact decimal: the value is kept as REAL and read back through its shortest
    decimal form, which is exact for up to 15 significant digits (amounts below 10^11 with 4
    decimals). Reads give ``Decimal`` quantized to 4 places on both. Charge lines are summed
    into claims, so amounts are never binary floats in Python.
    """

    impl = Numeric(18, 4)
    cache_ok = True
    SCALE = Decimal("0.0001")

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":  # no native Decimal: floats in, converted here (no SAWarning)
            return dialect.type_descriptor(Numeric(18, 4, asdecimal=False))
        return dialect.type_descriptor(Numeric(18, 4))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value if isinstance(value, Decimal) else Decimal(str(value))
        return float(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return (value if isinstance(value, Decimal) else Decimal(repr(float(value)))).quantize(self.SCALE)


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

    NOT NULL, '' where no issuer is known (rows written before identity had issuers). Marked
    ``info["blank"]``: '' is a value here, so the writer accepts it in a natural key (and, for
    a namespace column of a key, writes '' where a record leaves it out; see
    :meth:`engine.stores.upsert.Planner.upsert`)."""
    return Column(name, String, nullable=False, server_default="", info={"blank": True})


def namespace_column(name: str) -> Column:
    """The namespace of an identifier that is part of a natural key (an order's placer, a
    document's or an appointment's assigning application: EI.2, else EI.3): identity is issuer +
    identifier, as for patients. NOT NULL, '' when the feed sends the number alone; a record
    that leaves it out (an empty EI.2) writes ''. Beside identifiers that are not keys, a
    namespace is a plain nullable column."""
    return issuer_column(name)


def appointment_columns() -> list[Column[Any]]:
    """What an appointment (SIU^S12-S26) keeps in the clinical and the PM store, beyond its key
    (``filler_appointment_id``, ``filler_appointment_namespace``) and patient:

    ``placer_appointment_id``/``_namespace`` (SCH-1), ``visit_number`` (PV1-19), ``status`` (the
    appointment's state: booked, arrived, complete, cancelled, noshow ...; SCH-25, else from the
    trigger: S15 cancelled, S26 noshow), ``event`` (the last trigger applied: S12, S13, ...),
    start and end (``start_at``, ``end_at``; ``start_date``, ``end_date`` when sent without a time
    of day),
    ``duration`` and ``duration_units`` as sent (SCH-9/10, AIS-7/8), appointment type (SCH-8),
    reason (SCH-7), event reason (SCH-6: why cancelled or moved), service (AIS-3) each as code,
    text and system, the provider (AIP-3 id and name), location (AIL-3) and its facility,
    ``resources`` (JSON list of every AIS/AIG/AIL/AIP resource), the order it is for (SCH-26,
    number and namespace), and notes (NTE)."""
    cols: list[Column[Any]] = [Column(n, String) for n in ("placer_appointment_id", "placer_appointment_namespace")]
    cols += [Column(n, String) for n in ("visit_number", "status", "event")]
    cols += [Column("start_at", UTCDateTime), Column("start_date", Date)]
    cols += [Column("end_at", UTCDateTime), Column("end_date", Date)]
    cols += [Column("duration", Float), Column("duration_units", String)]
    for name in ("appointment_type", "reason", "event_reason", "service"):
        cols += coded_columns(name)
    cols += [Column(n, String) for n in ("provider", "provider_name", "location", "location_facility")]
    cols += [Column("resources", JSONText)]
    cols += [Column(n, String) for n in ("placer_order_number", "placer_order_namespace")]
    return cols + [Column("notes", Text)]


def fhir_id_column() -> Column:
    """The id the FHIR API serves a row under (``GET /fhir/<Type>/<fhir_id>``): the client's id
    when a FHIR client created the row with one, else the deterministic id of the row's natural
    key (:func:`engine.formats.fhir_bundle.row_id`). Set on insert only (``info["insert_only"]``):
    a resource's id never changes, whoever writes the row later."""
    return Column("fhir_id", String(64), info={"insert_only": True})


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


def access_audit_table(metadata: MetaData, name: str) -> Table:
    """The audit of reads of a patient's record (``engine patient``): one row per read of this
    store, keyed by ``access_id`` (one id for one read, the same in every store it read).

    ``accessed_by`` (the user), ``accessed_at`` (UTC), ``purpose`` (required, free text),
    ``action`` (``view``: a patient's record shown; ``candidates``: the issuers an identifier
    has were listed; ``not-found``), and the patient asked for as ``patient_mrn`` and
    ``patient_mrn_issuer`` (null for a bare identifier). Not ``mrn``/``mrn_issuer``: a merge never
    rewrites what was read. Not a table of ``StoreSpec.tables``: mappings cannot write it."""
    return Table(
        name,
        metadata,
        id_column(),
        Column("access_id", String(64), nullable=False),
        Column("accessed_by", String(200), nullable=False),
        Column("accessed_at", UTCDateTime, nullable=False),
        Column("purpose", String(200), nullable=False),
        Column("action", String(20), nullable=False),
        Column("patient_mrn", String),
        Column("patient_mrn_issuer", String),
        *managed_columns(),
        UniqueConstraint("access_id", name=f"uq_{name}_access_id"),
    )


@dataclass(frozen=True)
class StoreSpec:
    """What the writer needs to know about one store kind beyond its ``metadata``.

    ``tables`` maps the logical table name (as records and ``rows()`` name it) to its Table;
    ``keys`` gives each table's natural key; ``identity`` is the table keyed by the patient
    (``mrn``, ``mrn_issuer``) that carries ``merged_into`` and ``merged_into_issuer`` (patient,
    registration); ``merge_audit`` the logical name of the A40 audit table, which mappings may
    not write; ``access_audit`` the audit of reads of patients' records (``engine patient``),
    outside ``tables`` (never written by mappings, never touched by merges).

    Every table of ``tables`` with an ``mrn`` column whose key does not contain ``mrn`` (an
    encounter, an order, a document, an appointment, a charge) is *owned*: its row belongs to
    the patient who first had it and is never re-parented by a later message (only a merge
    moves it); see :class:`engine.stores.records_store.RecordStore`.
    """

    kind: str
    tables: dict[str, Table]
    keys: dict[str, tuple[str, ...]]
    identity: str
    merge_audit: str = "patient_merge"
    access_audit: Table | None = None
