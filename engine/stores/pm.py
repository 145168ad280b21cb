"""The practice-management (PM) store's schema: registrations, insurance coverage, visits.

Same conventions as the clinical store (natural keys as UNIQUE constraints, surrogate ``id``,
UTC timezone-aware datetimes, ``Date`` for dates, identity by the (``mrn_issuer``, ``mrn``) pair only).

The A40 audit table is logically ``patient_merge`` (as in the clinical store) but is created
as ``pm_patient_merge`` so that both stores can share one PostgreSQL database without a name
clash; the writer and ``RecordStore.rows("patient_merge")`` use the logical name.
"""

from __future__ import annotations

from sqlalchemy import Column, Date, Index, Integer, MetaData, String, Table, UniqueConstraint

from engine.stores.columns import (
    MERGE_AUDIT_KEY,
    NAMING,
    StoreSpec,
    demographic_columns,
    id_column,
    issuer_column,
    managed_columns,
    merge_audit_table,
    visit_columns,
)
from engine.stores.db import UTCDateTime

metadata = MetaData(naming_convention=NAMING)

registration = Table(
    "registration",
    metadata,
    id_column(),
    Column("mrn", String, nullable=False),
    issuer_column(),
    Column("account_number", String),
    *demographic_columns(),
    Column("guarantor_name", String),
    Column("guarantor_relationship", String),
    Column("guarantor_address", String),
    Column("guarantor_phone", String),
    Column("merged_into", String),
    Column("merged_into_issuer", String),
    *managed_columns(),
    UniqueConstraint("mrn", "mrn_issuer"),
)
Index(None, registration.c.merged_into)

coverage = Table(
    "coverage",
    metadata,
    id_column(),
    Column("mrn", String, nullable=False),
    issuer_column(),
    Column("payer_id", String, nullable=False),
    Column("member_id", String, nullable=False),
    Column("priority", Integer),
    Column("payer_name", String),
    Column("plan_id", String),
    Column("plan_type", String),
    Column("plan_type_text", String),
    Column("group_number", String),
    Column("group_name", String),
    Column("subscriber_name", String),
    Column("subscriber_relationship", String),
    Column("subscriber_dob", Date),
    Column("effective_date", Date),
    Column("expiration_date", Date),
    Column("insured_employee_id", String),
    Column("insured_ssn", String),
    Column("medicare_id", String),
    Column("medicaid_id", String),
    *managed_columns(),
    UniqueConstraint("mrn", "mrn_issuer", "payer_id", "member_id"),
)

visit = Table(
    "visit",
    metadata,
    id_column(),
    Column("visit_number", String, nullable=False),
    Column("mrn", String),
    issuer_column(),
    Column("account_number", String),
    Column("patient_class", String),
    Column("attending", String),
    Column("financial_class", String),
    Column("hospital_service", String),
    Column("location", String),
    Column("admit_at", UTCDateTime),
    Column("discharge_at", UTCDateTime),
    *visit_columns(),
    *managed_columns(),
    UniqueConstraint("visit_number"),
)
Index(None, visit.c.mrn)

patient_merge = merge_audit_table(metadata, "pm_patient_merge")

SPEC = StoreSpec(
    kind="pm",
    tables={"registration": registration, "coverage": coverage, "visit": visit, "patient_merge": patient_merge},
    keys={
        "registration": ("mrn", "mrn_issuer"),
        "coverage": ("mrn", "mrn_issuer", "payer_id", "member_id"),
        "visit": ("visit_number",),
        "patient_merge": MERGE_AUDIT_KEY,
    },
    identity="registration",
)
