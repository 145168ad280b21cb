"""The practice-management (PM) store's schema: registrations, insurance coverage, visits,
appointments, charge lines, and the billing tables of :mod:`engine.stores.pm_claims` (claims,
remittances and what they paid and adjusted).

Same conventions as the clinical store (natural keys as UNIQUE constraints, surrogate ``id``,
UTC timezone-aware datetimes, ``Date`` for dates, identity by the (``mrn_issuer``, ``mrn``) pair only).

The A40 audit table is logically ``patient_merge`` (as in the clinical store) but is created
as ``pm_patient_merge`` so that both stores can share one PostgreSQL database without a name
clash; the writer and ``RecordStore.rows("patient_merge")`` use the logical name. The same holds
for ``appointment`` (created as ``pm_appointment``, beside the clinical store's ``appointment``)
and the read audit ``pm_record_access``.

Charge lines are what X12 837 claims are built from. A charge is never edited in place: a
correction is a reversal (a credit line, FT1-6 CD) plus a new charge, each its own row.
"""

from __future__ import annotations

from sqlalchemy import Column, Date, Float, Index, Integer, MetaData, String, Table, UniqueConstraint

from engine.stores.columns import (
    MERGE_AUDIT_KEY,
    NAMING,
    Amount,
    JSONText,
    StoreSpec,
    access_audit_table,
    appointment_columns,
    coded_columns,
    demographic_columns,
    fhir_id_column,
    id_column,
    issuer_column,
    managed_columns,
    merge_audit_table,
    namespace_column,
    visit_columns,
)
from engine.stores.db import UTCDateTime
from engine.stores.pm_claims import BILLING_KEYS, billing_tables

metadata = MetaData(naming_convention=NAMING)

APPOINTMENT_KEY = ("filler_appointment_id", "filler_appointment_namespace")
"""As in the clinical store: the scheduler's appointment id, SCH-2 (EI.1; EI.2 else EI.3), the
same through booking, rescheduling, cancellation and no-show (SIU^S12-S26); SCH-1 a column."""
CHARGE_KEY = ("transaction_id", "transaction_source", "transaction_type")
"""A charge line is one financial transaction: its id, the system that assigned it, and its
type (FT1-6: CG charge, CD credit, AJ adjustment, PY payment).

- ``transaction_id``: FT1-2 when the feed sends it; when it is empty (common: many DFT feeds
  send only a set id), ``<MSH-10>:<FT1-1>``, the message's control id and the line's set id.
  For a procedure of an ADT (PR1), PR1-19 (v2.6+) when sent, else
  ``PR1:<PV1-19>:<PR1-3.1>:<PR1-5 date>``, stable across the A08s that resend the visit's
  procedures.
- ``transaction_source``: the sending application (MSH-3.1), as an issuer: two systems'
  transaction ids never meet; '' when none.
- ``transaction_type`` in the key makes a reversal sent with the original's FT1-2 and type CD
  a new row, never an edit of the charge.

So the same DFT applied again (a resend with the same MSH-10, a reprocess) updates its own
lines and never duplicates them; a new DFT's lines without FT1-2 are new lines; a credit is a
new line. A DFT resent with a new MSH-10 and no FT1-2 cannot be told from a new posting: its
lines are posted again (the duplicate check on MSH-10 drops true resends first).
"""

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

appointment = Table(
    "pm_appointment",
    metadata,
    id_column(),
    Column("filler_appointment_id", String, nullable=False),
    namespace_column("filler_appointment_namespace"),
    Column("mrn", String),
    issuer_column(),
    Column("account_number", String),
    *appointment_columns(),
    *managed_columns(),
    UniqueConstraint(*APPOINTMENT_KEY, name="uq_pm_appointment_key"),
)
Index(None, appointment.c.mrn)

charge = Table(
    "charge",
    metadata,
    id_column(),
    Column("transaction_id", String, nullable=False),
    namespace_column("transaction_source"),
    Column("transaction_type", String, nullable=False),
    Column("origin", String),  # FT1 or PR1: the segment the line came from
    Column("reversal_of", String),  # the transaction_id a credit reverses, when the feed says
    Column("mrn", String),
    issuer_column(),
    Column("visit_number", String),
    Column("account_number", String),
    Column("set_id", Integer),  # FT1-1
    Column("batch_id", String),  # FT1-3
    Column("service_at", UTCDateTime),  # FT1-4.1 with a time of day (PR1-5)
    Column("service_date", Date),  # FT1-4.1 date: the date of service
    Column("service_end_date", Date),  # FT1-4.2
    Column("posted_at", UTCDateTime),  # FT1-5
    Column("posted_date", Date),
    *coded_columns("charge"),  # FT1-7: the charge master (CDM) code
    Column("description", String),  # FT1-8, else FT1-9
    *coded_columns("procedure"),  # FT1-25 (PR1-3): CPT/HCPCS
    Column("modifiers", JSONText),  # FT1-26 (PR1-16): JSON list, in order
    Column("quantity", Float),  # FT1-10: units
    Column("amount", Amount),  # FT1-11.1, as sent (a credit may be negative or positive)
    Column("unit_amount", Amount),  # FT1-12.1
    Column("currency", String),  # FT1-11.2
    Column("diagnoses", JSONText),  # FT1-19 (PR1-15) codes, in priority order: a claim's pointers
    Column("rendering_provider", String),  # FT1-20 (PR1-12): NPI where sent
    Column("rendering_provider_name", String),
    Column("ordering_provider", String),  # FT1-21
    Column("ordering_provider_name", String),
    Column("entered_by", String),  # FT1-24
    *coded_columns("department"),  # FT1-13
    Column("location", String),  # FT1-16
    Column("patient_type", String),  # FT1-18
    Column("fee_schedule", String),  # FT1-17
    Column("insurance_plan_id", String),  # FT1-14
    Column("filler_order_number", String),  # FT1-23: the order it bills
    Column("filler_order_namespace", String),
    Column("revenue_code", String),  # FT1-41 (v2.6)
    Column("ndc_code", String),  # FT1-29.1
    Column("ndc_quantity", Float),  # FT1-43 (v2.6)
    Column("ndc_units", String),
    Column("abn_code", String),  # FT1-27
    Column("authorization_number", String),  # FT1-39 (v2.6)
    Column("claimed_in", String),  # the patient control number of the claim that bills it (None: unbilled)
    Column("claimed_by", String),  # that claim's billing provider id
    *managed_columns(),
    UniqueConstraint(*CHARGE_KEY, name="uq_charge_key"),
)
Index(None, charge.c.mrn)
Index(None, charge.c.visit_number)

coverage.append_column(fhir_id_column())  # what the FHIR API serves: GET /fhir/Coverage/<fhir_id>
Index(None, coverage.c.fhir_id, unique=True)

billing = billing_tables(metadata)  # claims and remittances: engine/stores/pm_claims.py
patient_merge = merge_audit_table(metadata, "pm_patient_merge")
record_access = access_audit_table(metadata, "pm_record_access")

SPEC = StoreSpec(
    kind="pm",
    tables={
        "registration": registration,
        "coverage": coverage,
        "visit": visit,
        "appointment": appointment,
        "charge": charge,
        **billing,
        "patient_merge": patient_merge,
    },
    keys={
        "registration": ("mrn", "mrn_issuer"),
        "coverage": ("mrn", "mrn_issuer", "payer_id", "member_id"),
        "visit": ("visit_number",),
        "appointment": APPOINTMENT_KEY,
        "charge": CHARGE_KEY,
        **BILLING_KEYS,
        "patient_merge": MERGE_AUDIT_KEY,
    },
    identity="registration",
    access_audit=record_access,
)
