"""Initial schema of the clinical store (generated from engine/stores/clinical.py, then reviewed).

Revision ID: clinical_0001
Revises: 

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'clinical_0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('allergy',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('mrn', sa.String(), nullable=False),
    sa.Column('allergen_code', sa.String(), nullable=False),
    sa.Column('allergen_text', sa.String(), nullable=True),
    sa.Column('allergen_type', sa.String(), nullable=True),
    sa.Column('severity', sa.String(), nullable=True),
    sa.Column('reaction', sa.String(), nullable=True),
    sa.Column('identified_at', sa.Date(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_allergy')),
    sa.UniqueConstraint('mrn', 'allergen_code', name=op.f('uq_allergy_mrn_allergen_code'))
    )
    op.create_table('diagnosis',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('visit_number', sa.String(), nullable=False),
    sa.Column('code', sa.String(), nullable=False),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('code_system', sa.String(), nullable=True),
    sa.Column('description', sa.String(), nullable=True),
    sa.Column('diagnosis_type', sa.String(), nullable=True),
    sa.Column('diagnosed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_diagnosis')),
    sa.UniqueConstraint('visit_number', 'code', name=op.f('uq_diagnosis_visit_number_code'))
    )
    op.create_index(op.f('ix_diagnosis_mrn'), 'diagnosis', ['mrn'], unique=False)
    op.create_table('diagnostic_report',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('filler_order_number', sa.String(), nullable=False),
    sa.Column('placer_order_number', sa.String(), nullable=True),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('visit_number', sa.String(), nullable=True),
    sa.Column('code', sa.String(), nullable=True),
    sa.Column('code_text', sa.String(), nullable=True),
    sa.Column('code_system', sa.String(), nullable=True),
    sa.Column('status', sa.String(), nullable=True),
    sa.Column('issued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('observed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_diagnostic_report')),
    sa.UniqueConstraint('filler_order_number', name=op.f('uq_diagnostic_report_filler_order_number'))
    )
    op.create_index(op.f('ix_diagnostic_report_mrn'), 'diagnostic_report', ['mrn'], unique=False)
    op.create_index(op.f('ix_diagnostic_report_visit_number'), 'diagnostic_report', ['visit_number'], unique=False)
    op.create_table('encounter',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('visit_number', sa.String(), nullable=False),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('patient_class', sa.String(), nullable=True),
    sa.Column('location', sa.String(), nullable=True),
    sa.Column('attending', sa.String(), nullable=True),
    sa.Column('hospital_service', sa.String(), nullable=True),
    sa.Column('admit_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('discharge_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('status', sa.String(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_encounter')),
    sa.UniqueConstraint('visit_number', name=op.f('uq_encounter_visit_number'))
    )
    op.create_index(op.f('ix_encounter_mrn'), 'encounter', ['mrn'], unique=False)
    op.create_table('observation',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('filler_order_number', sa.String(), nullable=False),
    sa.Column('set_id', sa.String(), nullable=False),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('code', sa.String(), nullable=True),
    sa.Column('code_system', sa.String(), nullable=True),
    sa.Column('code_text', sa.String(), nullable=True),
    sa.Column('value_type', sa.String(), nullable=True),
    sa.Column('value_numeric', sa.Float(), nullable=True),
    sa.Column('value_string', sa.Text(), nullable=True),
    sa.Column('value_code', sa.String(), nullable=True),
    sa.Column('units', sa.String(), nullable=True),
    sa.Column('reference_range', sa.String(), nullable=True),
    sa.Column('abnormal_flag', sa.String(), nullable=True),
    sa.Column('status', sa.String(), nullable=True),
    sa.Column('effective_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('performer', sa.String(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_observation')),
    sa.UniqueConstraint('filler_order_number', 'set_id', name=op.f('uq_observation_filler_order_number_set_id'))
    )
    op.create_index(op.f('ix_observation_mrn'), 'observation', ['mrn'], unique=False)
    op.create_table('patient',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('mrn', sa.String(), nullable=False),
    sa.Column('assigning_authority', sa.String(), nullable=True),
    sa.Column('other_ids', sa.Text(), nullable=True),
    sa.Column('family_name', sa.String(), nullable=True),
    sa.Column('given_name', sa.String(), nullable=True),
    sa.Column('middle_name', sa.String(), nullable=True),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('sex', sa.String(), nullable=True),
    sa.Column('address_line1', sa.String(), nullable=True),
    sa.Column('address_line2', sa.String(), nullable=True),
    sa.Column('city', sa.String(), nullable=True),
    sa.Column('state', sa.String(), nullable=True),
    sa.Column('postal_code', sa.String(), nullable=True),
    sa.Column('country', sa.String(), nullable=True),
    sa.Column('phone_home', sa.String(), nullable=True),
    sa.Column('phone_work', sa.String(), nullable=True),
    sa.Column('deceased', sa.Boolean(), nullable=True),
    sa.Column('deceased_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('merged_into', sa.String(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient')),
    sa.UniqueConstraint('mrn', name=op.f('uq_patient_mrn'))
    )
    op.create_index(op.f('ix_patient_merged_into'), 'patient', ['merged_into'], unique=False)
    op.create_table('patient_merge',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('old_mrn', sa.String(), nullable=False),
    sa.Column('new_mrn', sa.String(), nullable=False),
    sa.Column('merged_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_merge')),
    sa.UniqueConstraint('old_mrn', 'new_mrn', 'message_id', name=op.f('uq_patient_merge_old_mrn_new_mrn_message_id'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('patient_merge')
    op.drop_index(op.f('ix_patient_merged_into'), table_name='patient')
    op.drop_table('patient')
    op.drop_index(op.f('ix_observation_mrn'), table_name='observation')
    op.drop_table('observation')
    op.drop_index(op.f('ix_encounter_mrn'), table_name='encounter')
    op.drop_table('encounter')
    op.drop_index(op.f('ix_diagnostic_report_visit_number'), table_name='diagnostic_report')
    op.drop_index(op.f('ix_diagnostic_report_mrn'), table_name='diagnostic_report')
    op.drop_table('diagnostic_report')
    op.drop_index(op.f('ix_diagnosis_mrn'), table_name='diagnosis')
    op.drop_table('diagnosis')
    op.drop_table('allergy')
