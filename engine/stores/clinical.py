"""The clinical store's schema: patients, encounters, results, allergies, diagnoses.

Natural keys are UNIQUE constraints (the writer upserts on them); ``id`` is a surrogate.
Patients are identified across stores by the MRN value, never by a foreign key. Datetimes are
UTC and timezone-aware (:class:`~engine.stores.db.UTCDateTime`); dates are ``Date``.
``patient.merged_into`` holds the survivor's MRN once an ADT A40 merged this patient away.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Date, Float, Index, MetaData, String, Table, Text, UniqueConstraint

from engine.stores.columns import (
    NAMING,
    JSONText,
    StoreSpec,
    demographic_columns,
    id_column,
    managed_columns,
    merge_audit_table,
)
from engine.stores.db import UTCDateTime

metadata = MetaData(naming_convention=NAMING)

patient = Table(
    "patient",
    metadata,
    id_column(),
    Column("mrn", String, nullable=False),
    Column("assigning_authority", String),
    Column("other_ids", JSONText),
    *demographic_columns(),
    Column("phone_work", String),
    Column("deceased", Boolean),
    Column("deceased_at", UTCDateTime),
    Column("merged_into", String),
    *managed_columns(),
    UniqueConstraint("mrn"),
)
Index(None, patient.c.merged_into)

encounter = Table(
    "encounter",
    metadata,
    id_column(),
    Column("visit_number", String, nullable=False),
    Column("mrn", String),
    Column("patient_class", String),
    Column("location", String),
    Column("attending", String),
    Column("hospital_service", String),
    Column("admit_at", UTCDateTime),
    Column("discharge_at", UTCDateTime),
    Column("status", String),
    *managed_columns(),
    UniqueConstraint("visit_number"),
)
Index(None, encounter.c.mrn)

observation = Table(
    "observation",
    metadata,
    id_column(),
    Column("filler_order_number", String, nullable=False),
    Column("set_id", String, nullable=False),
    Column("mrn", String),
    Column("code", String),
    Column("code_system", String),
    Column("code_text", String),
    Column("value_type", String),
    Column("value_numeric", Float),
    Column("value_string", Text),
    Column("value_code", String),
    Column("units", String),
    Column("reference_range", String),
    Column("abnormal_flag", String),
    Column("status", String),
    Column("effective_at", UTCDateTime),
    Column("performer", String),
    *managed_columns(),
    UniqueConstraint("filler_order_number", "set_id"),
)
Index(None, observation.c.mrn)

diagnostic_report = Table(
    "diagnostic_report",
    metadata,
    id_column(),
    Column("filler_order_number", String, nullable=False),
    Column("placer_order_number", String),
    Column("mrn", String),
    Column("visit_number", String),
    Column("code", String),
    Column("code_text", String),
    Column("code_system", String),
    Column("status", String),
    Column("issued_at", UTCDateTime),
    Column("observed_at", UTCDateTime),
    *managed_columns(),
    UniqueConstraint("filler_order_number"),
)
Index(None, diagnostic_report.c.mrn)
Index(None, diagnostic_report.c.visit_number)

allergy = Table(
    "allergy",
    metadata,
    id_column(),
    Column("mrn", String, nullable=False),
    Column("allergen_code", String, nullable=False),
    Column("allergen_text", String),
    Column("allergen_type", String),
    Column("severity", String),
    Column("reaction", String),
    Column("identified_at", Date),
    *managed_columns(),
    UniqueConstraint("mrn", "allergen_code"),
)

diagnosis = Table(
    "diagnosis",
    metadata,
    id_column(),
    Column("visit_number", String, nullable=False),
    Column("code", String, nullable=False),
    Column("mrn", String),
    Column("code_system", String),
    Column("description", String),
    Column("diagnosis_type", String),
    Column("diagnosed_at", UTCDateTime),
    *managed_columns(),
    UniqueConstraint("visit_number", "code"),
)
Index(None, diagnosis.c.mrn)

patient_merge = merge_audit_table(metadata, "patient_merge")

SPEC = StoreSpec(
    kind="clinical",
    tables={t.name: t for t in (patient, encounter, observation, diagnostic_report, allergy, diagnosis, patient_merge)},
    keys={
        "patient": ("mrn",),
        "encounter": ("visit_number",),
        "observation": ("filler_order_number", "set_id"),
        "diagnostic_report": ("filler_order_number",),
        "allergy": ("mrn", "allergen_code"),
        "diagnosis": ("visit_number", "code"),
        "patient_merge": ("old_mrn", "new_mrn", "message_id"),
    },
    identity="patient",
)
