"""Appointments and charge lines in the PM store (issue 12), and the audit of record reads.

- ``pm_appointment`` (logically ``appointment``; SIU^S12-S26): (filler_appointment_id,
  filler_appointment_namespace), SCH-2, as in the clinical store.
- ``charge`` (DFT^P03 FT1; an ADT's PR1): (transaction_id, transaction_source,
  transaction_type): FT1-2, else ``<MSH-10>:<FT1-1>``; the sending application; FT1-6. A resent
  DFT updates its lines, a reversal (CD) is a new line. Amounts are NUMERIC(18, 4).
- ``pm_record_access``: who read which patient's record, when and why (``engine patient``).

Existing rows are untouched; the downgrade drops the new tables with their data.

Revision ID: pm_0005
Revises: pm_0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pm_0005"
down_revision: str | Sequence[str] | None = "pm_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_TABLES = ("charge", "pm_appointment", "pm_record_access")  # dropped in reverse order by the downgrade


def upgrade() -> None:
    op.create_table('charge',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('transaction_id', sa.String(), nullable=False),
    sa.Column('transaction_source', sa.String(), server_default='', nullable=False),
    sa.Column('transaction_type', sa.String(), nullable=False),
    sa.Column('origin', sa.String(), nullable=True),
    sa.Column('reversal_of', sa.String(), nullable=True),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('mrn_issuer', sa.String(), server_default='', nullable=False),
    sa.Column('visit_number', sa.String(), nullable=True),
    sa.Column('account_number', sa.String(), nullable=True),
    sa.Column('set_id', sa.Integer(), nullable=True),
    sa.Column('batch_id', sa.String(), nullable=True),
    sa.Column('service_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('service_date', sa.Date(), nullable=True),
    sa.Column('service_end_date', sa.Date(), nullable=True),
    sa.Column('posted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('posted_date', sa.Date(), nullable=True),
    sa.Column('charge_code', sa.String(), nullable=True),
    sa.Column('charge_text', sa.String(), nullable=True),
    sa.Column('charge_system', sa.String(), nullable=True),
    sa.Column('description', sa.String(), nullable=True),
    sa.Column('procedure_code', sa.String(), nullable=True),
    sa.Column('procedure_text', sa.String(), nullable=True),
    sa.Column('procedure_system', sa.String(), nullable=True),
    sa.Column('modifiers', sa.Text(), nullable=True),
    sa.Column('quantity', sa.Float(), nullable=True),
    sa.Column('amount', sa.Numeric(precision=18, scale=4), nullable=True),
    sa.Column('unit_amount', sa.Numeric(precision=18, scale=4), nullable=True),
    sa.Column('currency', sa.String(), nullable=True),
    sa.Column('diagnoses', sa.Text(), nullable=True),
    sa.Column('rendering_provider', sa.String(), nullable=True),
    sa.Column('rendering_provider_name', sa.String(), nullable=True),
    sa.Column('ordering_provider', sa.String(), nullable=True),
    sa.Column('ordering_provider_name', sa.String(), nullable=True),
    sa.Column('entered_by', sa.String(), nullable=True),
    sa.Column('department_code', sa.String(), nullable=True),
    sa.Column('department_text', sa.String(), nullable=True),
    sa.Column('department_system', sa.String(), nullable=True),
    sa.Column('location', sa.String(), nullable=True),
    sa.Column('patient_type', sa.String(), nullable=True),
    sa.Column('fee_schedule', sa.String(), nullable=True),
    sa.Column('insurance_plan_id', sa.String(), nullable=True),
    sa.Column('filler_order_number', sa.String(), nullable=True),
    sa.Column('filler_order_namespace', sa.String(), nullable=True),
    sa.Column('revenue_code', sa.String(), nullable=True),
    sa.Column('ndc_code', sa.String(), nullable=True),
    sa.Column('ndc_quantity', sa.Float(), nullable=True),
    sa.Column('ndc_units', sa.String(), nullable=True),
    sa.Column('abn_code', sa.String(), nullable=True),
    sa.Column('authorization_number', sa.String(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('last_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_charge')),
    sa.UniqueConstraint('transaction_id', 'transaction_source', 'transaction_type', name='uq_charge_key')
    )
    op.create_index(op.f('ix_charge_mrn'), 'charge', ['mrn'], unique=False)
    op.create_index(op.f('ix_charge_visit_number'), 'charge', ['visit_number'], unique=False)
    op.create_table('pm_appointment',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('filler_appointment_id', sa.String(), nullable=False),
    sa.Column('filler_appointment_namespace', sa.String(), server_default='', nullable=False),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('mrn_issuer', sa.String(), server_default='', nullable=False),
    sa.Column('account_number', sa.String(), nullable=True),
    sa.Column('placer_appointment_id', sa.String(), nullable=True),
    sa.Column('placer_appointment_namespace', sa.String(), nullable=True),
    sa.Column('visit_number', sa.String(), nullable=True),
    sa.Column('status', sa.String(), nullable=True),
    sa.Column('event', sa.String(), nullable=True),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('start_date', sa.Date(), nullable=True),
    sa.Column('end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_date', sa.Date(), nullable=True),
    sa.Column('duration', sa.Float(), nullable=True),
    sa.Column('duration_units', sa.String(), nullable=True),
    sa.Column('appointment_type_code', sa.String(), nullable=True),
    sa.Column('appointment_type_text', sa.String(), nullable=True),
    sa.Column('appointment_type_system', sa.String(), nullable=True),
    sa.Column('reason_code', sa.String(), nullable=True),
    sa.Column('reason_text', sa.String(), nullable=True),
    sa.Column('reason_system', sa.String(), nullable=True),
    sa.Column('event_reason_code', sa.String(), nullable=True),
    sa.Column('event_reason_text', sa.String(), nullable=True),
    sa.Column('event_reason_system', sa.String(), nullable=True),
    sa.Column('service_code', sa.String(), nullable=True),
    sa.Column('service_text', sa.String(), nullable=True),
    sa.Column('service_system', sa.String(), nullable=True),
    sa.Column('provider', sa.String(), nullable=True),
    sa.Column('provider_name', sa.String(), nullable=True),
    sa.Column('location', sa.String(), nullable=True),
    sa.Column('location_facility', sa.String(), nullable=True),
    sa.Column('resources', sa.Text(), nullable=True),
    sa.Column('placer_order_number', sa.String(), nullable=True),
    sa.Column('placer_order_namespace', sa.String(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('last_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pm_appointment')),
    sa.UniqueConstraint('filler_appointment_id', 'filler_appointment_namespace', name='uq_pm_appointment_key')
    )
    op.create_index(op.f('ix_pm_appointment_mrn'), 'pm_appointment', ['mrn'], unique=False)
    op.create_table('pm_record_access',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('access_id', sa.String(length=64), nullable=False),
    sa.Column('accessed_by', sa.String(length=200), nullable=False),
    sa.Column('accessed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('purpose', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=20), nullable=False),
    sa.Column('patient_mrn', sa.String(), nullable=True),
    sa.Column('patient_mrn_issuer', sa.String(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('last_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pm_record_access')),
    sa.UniqueConstraint('access_id', name='uq_pm_record_access_access_id')
    )


def downgrade() -> None:
    for table in reversed(NEW_TABLES):
        op.drop_table(table)  # its indexes go with it
