"""The clinical store's schema: patients, encounters, results, allergies, diagnoses, and the rest
of a visit: appointments, orders, medications (orders, dispenses, administrations), documents
and immunizations.

Natural keys are UNIQUE constraints (the writer upserts on them); ``id`` is a surrogate.
Patients are identified across stores by the pair (``mrn_issuer``, ``mrn``), never by a foreign
key. Datetimes are UTC and timezone-aware (:class:`~engine.stores.db.UTCDateTime`); dates are ``Date``, and a
value sent without a time of day is kept only as a date (``*_date`` beside ``*_at``).
Reports and observations are keyed by where they stand in the message (``REPORT_KEY``,
``OBSERVATION_KEY``); an observation's ``kind`` says what it is: ``result``, ``specimen`` (an
OBX under SPM), ``order-answer`` (OBX-29 QST/AOE: an ask-at-order-entry answer, not a result).
``patient.merged_into`` and ``merged_into_issuer`` name the survivor once an ADT A40 merged this
patient away.

Identifiers other than the patient's are keyed as issuer + identifier too: an order by its
placer order number and the placer's namespace (EI.1 and EI.2), a document by its unique
document number and namespace, an appointment by the filler's appointment id and namespace
(:func:`~engine.stores.columns.namespace_column`: '' when the feed sends the number alone).
Results link to their order by ``placer_order_number``/``placer_order_namespace`` (OBR-2);
dispenses and administrations to their medication order the same way (ORC-2).
Nothing is deleted by a message: a cancelled appointment, a discontinued order or a document
marked in error keeps its row, with its status.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Date, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

from engine.stores.columns import (
    MERGE_AUDIT_KEY,
    NAMING,
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

metadata = MetaData(naming_convention=NAMING)

REPORT_KEY = ("filler_order_number", "code", "occurrence")
"""A report is one OBR: its order (OBR-3), its test (OBR-4) and, for the rare order that sends
the same test twice in one message (a susceptibility panel per organism), which one (1, 2 ...)."""
OBSERVATION_KEY = ("filler_order_number", "report_code", "report_occurrence", "specimen_seq", "seq")
"""An observation is one OBX: its report's key, the SPM group it lies in (0: the report's own
results, 1, 2 ...: the OBR's first, second ... specimen) and its place in that group (1, 2 ...).
Two OBX never share a key, whatever their set ids (OBX-1, kept in ``set_id``)."""
APPOINTMENT_KEY = ("filler_appointment_id", "filler_appointment_namespace")
"""An appointment is the scheduler's (the filler's) appointment id, SCH-2 (EI.1, EI.2 else EI.3):
it stays the same through booking (S12), rescheduling (S13), modification (S14), cancellation
(S15) and no-show (S26), so each of those updates one row. The placer's id (SCH-1) is a column:
the scheduler is the system of record. Feeds that send the scheduler's id in SCH-1 and leave
SCH-2 empty (some v2.3 ones) fill the key from SCH-1; a feed decides once which it uses."""
ORDER_KEY = ("placer_order_number", "placer_order_namespace", "code")
"""A service order (ORM^O01, OML^O21) is one ordered test: the placer order number (ORC-2, else
OBR-2: EI.1), the placer's namespace (EI.2, else EI.3; '' if none) and the test (OBR-4.1, else
its text OBR-4.2). The test is in the key because real placers send one requisition number for
several tests (one ORC-2 or OBR-2 on every OBR of an order message); the result (ORU) names the
same placer number and test, and updates the order's ``status``."""
MEDICATION_ORDER_KEY = ("placer_order_number", "placer_order_namespace")
"""A medication order (RDE^O11/O25, RXO in ORM^O01) is one ORC: placer order number and namespace
(ORC-2). The pharmacy's number (ORC-3, RXE-15) is a column."""
DISPENSE_KEY = ("placer_order_number", "placer_order_namespace", "dispense_seq")
"""A dispense (RDS^O13) is its order (ORC-2) and the dispense sub-id counter RXD-1 (1, 2, ...
for the order's successive dispenses): a resent dispense updates its row, the next fill is a
new one."""
ADMINISTRATION_KEY = ("placer_order_number", "placer_order_namespace", "give_seq", "administration_seq")
"""An administration (RAS^O17) is its order (ORC-2), the give sub-id counter (RXA-1: which
give of the order, 0 when not tied to one) and the administration sub-id counter (RXA-2: 1, 2
... for successive administrations)."""
DOCUMENT_KEY = ("document_number", "document_namespace")
"""A document (MDM^T02-T11) is its unique document number, TXA-12 (EI.1, and EI.2 else EI.3):
a status change (T04), edit (T08) or cancellation (T11) of the same document updates its row;
a replacement or addendum with a new number is a new row naming its parent (TXA-13)."""
IMMUNIZATION_KEY = ("mrn", "mrn_issuer", "vaccine_code", "administered_date")
"""An immunization (VXU^V04) is the patient, the vaccine (RXA-5, CVX where sent) and the date
it was given (RXA-3, date part): what an immunization registry deduplicates on. Not ORC-3:
VXU feeds often leave it empty or send a placeholder (9999) for historical doses, and the same
dose reported again by another system carries another number. Two doses of one vaccine on one
day are one row; the filler order number (ORC-3) is a column."""

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
    Column("placer_order_number", String),
    Column("placer_order_namespace", String),
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
    Column("placer_order_namespace", String),
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

appointment = Table(
    "appointment",
    metadata,
    id_column(),
    Column("filler_appointment_id", String, nullable=False),
    namespace_column("filler_appointment_namespace"),
    Column("mrn", String),
    issuer_column(),
    *appointment_columns(),
    *managed_columns(),
    UniqueConstraint(*APPOINTMENT_KEY, name="uq_appointment_key"),
)
Index(None, appointment.c.mrn)


def _order_columns() -> list[Column]:
    """The columns every kind of order row shares: the other numbers (filler ORC-3, placer group
    ORC-4), patient, visit (PV1-19), the last order control (ORC-1: NW, CA, DC, XO, SC ...),
    ``status`` (the order's state, from ORC-5 or a result's OBR-25: the mapping's table) and its
    reason (ORC-16), when and by whom it was ordered (ORC-9, ORC-12)."""
    return [
        Column("filler_order_number", String),
        Column("filler_order_namespace", String),
        Column("placer_group_number", String),
        Column("mrn", String),
        issuer_column(),
        Column("visit_number", String),
        Column("order_control", String),
        Column("status", String),
        *coded_columns("status_reason"),
        Column("ordered_at", UTCDateTime),
        Column("ordering_provider", String),
        Column("ordering_provider_name", String),
    ]


service_order = Table(
    "service_order",
    metadata,
    id_column(),
    Column("placer_order_number", String, nullable=False),
    namespace_column("placer_order_namespace"),
    Column("code", String, nullable=False),
    Column("code_text", String),
    Column("code_system", String),
    *_order_columns(),
    Column("priority", String),
    Column("requested_at", UTCDateTime),
    Column("requested_date", Date),
    Column("service_section", String),
    *coded_columns("specimen_type"),
    Column("diagnoses", JSONText),
    Column("resulted_at", UTCDateTime),
    Column("resulted_date", Date),  # OBR-22 sent without a time of day
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*ORDER_KEY, name="uq_service_order_key"),
)
Index(None, service_order.c.mrn)
Index(None, service_order.c.filler_order_number)

medication_order = Table(
    "medication_order",
    metadata,
    id_column(),
    Column("placer_order_number", String, nullable=False),
    namespace_column("placer_order_namespace"),
    *_order_columns(),
    Column("prescription_number", String),
    *coded_columns("medication"),
    Column("give_amount", Float),
    Column("give_amount_max", Float),
    *coded_columns("give_units"),
    Column("give_strength", Float),
    *coded_columns("give_strength_units"),
    *coded_columns("dosage_form"),
    *coded_columns("route"),
    Column("frequency", String),
    Column("instructions", Text),
    Column("start_at", UTCDateTime),
    Column("start_date", Date),
    Column("end_at", UTCDateTime),
    Column("end_date", Date),
    Column("dispense_amount", Float),
    *coded_columns("dispense_units"),
    Column("refills", Integer),
    Column("substitution", String),
    *coded_columns("indication"),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*MEDICATION_ORDER_KEY, name="uq_medication_order_key"),
)
Index(None, medication_order.c.mrn)

medication_dispense = Table(
    "medication_dispense",
    metadata,
    id_column(),
    Column("placer_order_number", String, nullable=False),
    namespace_column("placer_order_namespace"),
    Column("dispense_seq", Integer, nullable=False),
    Column("filler_order_number", String),
    Column("filler_order_namespace", String),
    Column("prescription_number", String),
    Column("mrn", String),
    issuer_column(),
    Column("visit_number", String),
    Column("status", String),
    *coded_columns("medication"),
    Column("dispensed_at", UTCDateTime),
    Column("dispensed_date", Date),
    Column("quantity", Float),
    *coded_columns("quantity_units"),
    *coded_columns("dosage_form"),
    Column("refills_remaining", Integer),
    Column("dispensing_provider", String),
    Column("dispensing_provider_name", String),
    Column("substitution", String),
    Column("lot_number", String),
    Column("expiration_date", Date),
    *coded_columns("manufacturer"),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*DISPENSE_KEY, name="uq_medication_dispense_key"),
)
Index(None, medication_dispense.c.mrn)

medication_administration = Table(
    "medication_administration",
    metadata,
    id_column(),
    Column("placer_order_number", String, nullable=False),
    namespace_column("placer_order_namespace"),
    Column("give_seq", Integer, nullable=False),
    Column("administration_seq", Integer, nullable=False),
    Column("filler_order_number", String),
    Column("filler_order_namespace", String),
    Column("mrn", String),
    issuer_column(),
    Column("visit_number", String),
    Column("status", String),
    Column("completion_status", String),
    Column("action_code", String),
    Column("start_at", UTCDateTime),
    Column("start_date", Date),
    Column("end_at", UTCDateTime),
    *coded_columns("medication"),
    Column("amount", Float),
    *coded_columns("amount_units"),
    *coded_columns("dosage_form"),
    *coded_columns("route"),
    *coded_columns("site"),
    Column("administering_provider", String),
    Column("administering_provider_name", String),
    Column("location", String),
    Column("lot_number", String),
    Column("expiration_date", Date),
    *coded_columns("manufacturer"),
    *coded_columns("refusal_reason"),
    *coded_columns("indication"),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*ADMINISTRATION_KEY, name="uq_medication_administration_key"),
)
Index(None, medication_administration.c.mrn)

document = Table(
    "document",
    metadata,
    id_column(),
    Column("document_number", String, nullable=False),
    namespace_column("document_namespace"),
    Column("parent_document_number", String),
    Column("parent_document_namespace", String),
    Column("mrn", String),
    issuer_column(),
    Column("visit_number", String),
    *coded_columns("document_type"),
    Column("status", String),
    Column("event", String),
    Column("completion_status", String),
    Column("availability_status", String),
    Column("confidentiality", String),
    Column("storage_status", String),
    Column("change_reason", String),
    Column("activity_at", UTCDateTime),
    Column("activity_date", Date),
    Column("originated_at", UTCDateTime),
    Column("transcribed_at", UTCDateTime),
    Column("edited_at", UTCDateTime),
    Column("provider", String),
    Column("provider_name", String),
    Column("author", String),
    Column("author_name", String),
    Column("authenticator", String),
    Column("authenticator_name", String),
    Column("placer_order_number", String),
    Column("placer_order_namespace", String),
    Column("filler_order_number", String),
    Column("filler_order_namespace", String),
    Column("file_name", String),
    Column("content_presentation", String),
    Column("content", Text),
    Column("content_type", String),
    Column("content_reference", String),
    *managed_columns(),
    UniqueConstraint(*DOCUMENT_KEY, name="uq_document_key"),
)
Index(None, document.c.mrn)

immunization = Table(
    "immunization",
    metadata,
    id_column(),
    Column("mrn", String, nullable=False),
    issuer_column(),
    Column("vaccine_code", String, nullable=False),
    Column("administered_date", Date, nullable=False),
    Column("vaccine_text", String),
    Column("vaccine_system", String),
    Column("administered_at", UTCDateTime),
    Column("filler_order_number", String),
    Column("filler_order_namespace", String),
    Column("visit_number", String),
    Column("status", String),
    Column("completion_status", String),
    Column("action_code", String),
    Column("dose_amount", Float),
    *coded_columns("dose_units"),
    Column("lot_number", String),
    Column("expiration_date", Date),
    *coded_columns("manufacturer"),
    *coded_columns("route"),
    *coded_columns("site"),
    Column("administering_provider", String),
    Column("administering_provider_name", String),
    Column("ordering_provider", String),
    Column("ordering_provider_name", String),
    Column("location", String),
    *coded_columns("information_source"),
    *coded_columns("refusal_reason"),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*IMMUNIZATION_KEY, name="uq_immunization_key"),
)

CONDITION_KEY = ("condition_id", "condition_namespace")
"""A condition sent over FHIR (Condition) is its identifier: value and system ('' when the client
gave only an id: then the id, with namespace ``Condition.id``). A problem-list entry has no
visit, so it cannot be a ``diagnosis`` (a visit's DG1, keyed by visit and code); a Condition
naming an encounter is written to ``diagnosis`` as well, by the FHIR mapping."""
PROCEDURE_KEY = ("procedure_id", "procedure_namespace")
"""A procedure (FHIR Procedure; HL7 PR1 has no identifier of its own before v2.6) is its
identifier: value and system, as a condition."""

condition = Table(
    "condition",
    metadata,
    id_column(),
    Column("condition_id", String, nullable=False),
    namespace_column("condition_namespace"),
    Column("mrn", String),
    issuer_column(),
    Column("visit_number", String),
    Column("code", String),
    Column("code_system", String),
    Column("code_text", String),
    Column("category", String),  # problem-list-item, encounter-diagnosis, health-concern
    Column("clinical_status", String),  # active, recurrence, relapse, inactive, remission, resolved
    Column("verification_status", String),  # unconfirmed, provisional, confirmed, refuted, ...
    *coded_columns("severity"),
    Column("onset_at", UTCDateTime),
    Column("onset_date", Date),
    Column("abatement_at", UTCDateTime),
    Column("abatement_date", Date),
    Column("recorded_date", Date),
    Column("recorder", String),
    Column("recorder_name", String),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*CONDITION_KEY, name="uq_condition_key"),
)
Index(None, condition.c.mrn)

procedure = Table(
    "procedure",
    metadata,
    id_column(),
    Column("procedure_id", String, nullable=False),
    namespace_column("procedure_namespace"),
    Column("mrn", String),
    issuer_column(),
    Column("visit_number", String),
    Column("code", String),
    Column("code_system", String),
    Column("code_text", String),
    Column("status", String),  # FHIR codes: in-progress, completed, not-done, ...
    *coded_columns("category"),
    Column("performed_at", UTCDateTime),
    Column("performed_date", Date),
    Column("performed_end_at", UTCDateTime),
    Column("performer", String),
    Column("performer_name", String),
    *coded_columns("body_site"),
    *coded_columns("reason"),
    Column("notes", Text),
    *managed_columns(),
    UniqueConstraint(*PROCEDURE_KEY, name="uq_procedure_key"),
)
Index(None, procedure.c.mrn)

_SERVED = (patient, encounter, observation, diagnostic_report, allergy, diagnosis, appointment, condition, procedure)
for _served in _SERVED:
    _served.append_column(fhir_id_column())  # what the FHIR API serves: GET /fhir/<Type>/<fhir_id>
    Index(None, _served.c.fhir_id, unique=True)

patient_merge = merge_audit_table(metadata, "patient_merge")
record_access = access_audit_table(metadata, "record_access")

_TABLES = (
    patient,
    encounter,
    observation,
    diagnostic_report,
    allergy,
    diagnosis,
    appointment,
    service_order,
    medication_order,
    medication_dispense,
    medication_administration,
    document,
    immunization,
    condition,
    procedure,
    patient_merge,
)

SPEC = StoreSpec(
    kind="clinical",
    tables={t.name: t for t in _TABLES},
    keys={
        "patient": ("mrn", "mrn_issuer"),
        "encounter": ("visit_number",),
        "observation": OBSERVATION_KEY,
        "diagnostic_report": REPORT_KEY,
        "allergy": ("mrn", "mrn_issuer", "allergen_code"),
        "diagnosis": ("visit_number", "code"),
        "appointment": APPOINTMENT_KEY,
        "service_order": ORDER_KEY,
        "medication_order": MEDICATION_ORDER_KEY,
        "medication_dispense": DISPENSE_KEY,
        "medication_administration": ADMINISTRATION_KEY,
        "document": DOCUMENT_KEY,
        "immunization": IMMUNIZATION_KEY,
        "condition": CONDITION_KEY,
        "procedure": PROCEDURE_KEY,
        "patient_merge": MERGE_AUDIT_KEY,
    },
    identity="patient",
    access_audit=record_access,
)
