"""The clinical store's schema: patients, encounters, results, allergies, diagnoses.

Natural keys are UNIQUE constraints (the writer upserts on them); ``id`` is a surrogate.
Patients are identified across stores by the pair (``mrn_issuer``, ``mrn``), never by a foreign
key. Datetimes are UTC and timezone-aware (:class:`~engine.stores.db.UTCDateTime`); dates are ``Date``, and a
value sent without a time of day is kept only as a date (``*_date`` beside ``*_at``).
Reports and observations are keyed by where they stand in the message (``REPORT_KEY``,
``OBSERVATION_KEY``); an observation's ``kind`` says what it is: ``result``, ``specimen`` (an
OBX under SPM), ``order-answer`` (OBX-29 QST/AOE: an ask-at-order-entry answer, not a result).
``patient.merged_into`` and ``merged_into_issuer`` name the survivor once an ADT A40 merged this
patient away.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Date, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

from engine.stores.columns import (
    MERGE_AUDIT_KEY,
    NAMING,
    JSONText,
    StoreSpec,
    coded_columns,
    demographic_columns,
    id_column,
    issuer_column,
    managed_columns,
    merge_audit_table,
    visit_columns,
)
from engine.stores.db import UTCDateTime

metadata = MetaData(naming_convention=NAMING)

REPORT_KEY = ("filler_order_number", "code", "occurrence")
"""A report is one OBR: its order (OBR-3), its test (OBR-4) and, for the rare order that sends
the same test twice in one message (a susceptibility panel per organism), which one (1, 2 ...)."""
OBSERVATION_KEY = ("filler_order_number", "report_code", "report_occurrence", "specimen_seq", "seq")
"""An observation is one OBX: its report's key, the SPM group it lies in (0: the report's own
results, 1, 2 ...: the OBR's first, second ... specimen) and its place in that group (1, 2 ...).
Two OBX never share a key, whatever their set ids (OBX-1, kept in ``set_id``)."""

patient = Table(
    "patient",
    metadata,
    id_column(),
    Column("mrn", String, nullable=False),
    issuer_column(),
    Column("assigning_authority", String),
    Column("other_ids", JSONText),
    *demographic_columns(),
    Column("phone_work", String),
    Column("deceased", Boolean),
    Column("deceased_at", UTCDateTime),
    Column("deceased_date", Date),
    Column("merged_into", String),
    Column("merged_into_issuer", String),
    *managed_columns(),
    UniqueConstraint("mrn", "mrn_issuer"),
)
Index(None, patient.c.merged_into)

encounter = Table(
    "encounter",
    metadata,
    id_column(),
    Column("visit_number", String, nullable=False),
    Column("mrn", String),
    issuer_column(),
    Column("patient_class", String),
    Column("location", String),
    Column("attending", String),
    Column("hospital_service", String),
    Column("admit_at", UTCDateTime),
    Column("discharge_at", UTCDateTime),
    Column("status", String),
    *visit_columns(),
    *managed_columns(),
    UniqueConstraint("visit_number"),
)
Index(None, encounter.c.mrn)

observation = Table(
    "observation",
    metadata,
    id_column(),
    Column("filler_order_number", String, nullable=False),
    Column("report_code", String, nullable=False),
    Column("report_occurrence", Integer, nullable=False),
    Column("specimen_seq", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("set_id", String),
    Column("kind", String),
    Column("mrn", String),
    issuer_column(),
    Column("code", String),
    Column("code_system", String),
    Column("code_text", String),
    Column("value_type", String),
    Column("value_numeric", Float),
    Column("value_comparator", String),
    Column("value_separator", String),
    Column("value_numeric2", Float),
    Column("value_string", Text),
    Column("value_code", String),
    Column("value_code_text", String),
    Column("value_code_system", String),
    Column("value_date", Date),
    Column("value_datetime", UTCDateTime),
    Column("value_id", String),
    Column("value_issuer", String),
    Column("value_reference", String),
    Column("value_data_type", String),
    Column("value_data_subtype", String),
    Column("value_list", JSONText),
    Column("units", String),
    Column("reference_range", String),
    Column("abnormal_flag", String),
    Column("status", String),
    Column("effective_at", UTCDateTime),
    Column("effective_date", Date),
    Column("performer", String),
    Column("performer_name", String),
    *coded_columns("method"),
    Column("equipment_id", String),
    Column("performing_lab_id", String),
    Column("performing_lab_name", String),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*OBSERVATION_KEY, name="uq_observation_position"),
)
Index(None, observation.c.mrn)

diagnostic_report = Table(
    "diagnostic_report",
    metadata,
    id_column(),
    Column("filler_order_number", String, nullable=False),
    Column("code", String, nullable=False),
    Column("occurrence", Integer, nullable=False),
    Column("placer_order_number", String),
    Column("mrn", String),
    issuer_column(),
    Column("visit_number", String),
    Column("code_text", String),
    Column("code_system", String),
    Column("status", String),
    Column("issued_at", UTCDateTime),
    Column("observed_at", UTCDateTime),
    Column("observed_date", Date),
    Column("ordering_provider", String),
    Column("ordering_provider_name", String),
    Column("specimen_id", String),
    *coded_columns("specimen_type"),
    Column("specimen_collected_at", UTCDateTime),
    Column("specimen_collected_date", Date),
    Column("specimen_received_at", UTCDateTime),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*REPORT_KEY, name="uq_diagnostic_report_position"),
)
Index(None, diagnostic_report.c.mrn)
Index(None, diagnostic_report.c.visit_number)

allergy = Table(
    "allergy",
    metadata,
    id_column(),
    Column("mrn", String, nullable=False),
    issuer_column(),
    Column("allergen_code", String, nullable=False),
    Column("allergen_text", String),
    Column("allergen_system", String),
    Column("allergen_type", String),
    Column("severity", String),
    Column("reaction", String),
    Column("identified_at", Date),
    *managed_columns(),
    UniqueConstraint("mrn", "mrn_issuer", "allergen_code"),
)

diagnosis = Table(
    "diagnosis",
    metadata,
    id_column(),
    Column("visit_number", String, nullable=False),
    Column("code", String, nullable=False),
    Column("mrn", String),
    issuer_column(),
    Column("code_system", String),
    Column("description", String),
    Column("diagnosis_type", String),
    Column("diagnosed_at", UTCDateTime),
    Column("diagnosed_date", Date),
    *managed_columns(),
    UniqueConstraint("visit_number", "code"),
)
Index(None, diagnosis.c.mrn)

patient_merge = merge_audit_table(metadata, "patient_merge")

SPEC = StoreSpec(
    kind="clinical",
    tables={t.name: t for t in (patient, encounter, observation, diagnostic_report, allergy, diagnosis, patient_merge)},
    keys={
        "patient": ("mrn", "mrn_issuer"),
        "encounter": ("visit_number",),
        "observation": OBSERVATION_KEY,
        "diagnostic_report": REPORT_KEY,
        "allergy": ("mrn", "mrn_issuer", "allergen_code"),
        "diagnosis": ("visit_number", "code"),
        "patient_merge": MERGE_AUDIT_KEY,
    },
    identity="patient",
)
