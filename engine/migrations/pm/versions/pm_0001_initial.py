"""Initial schema of the pm store (generated from engine/stores/pm.py, then reviewed).

Revision ID: pm_0001
Revises: 

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'pm_0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('coverage',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('mrn', sa.String(), nullable=False),
    sa.Column('payer_id', sa.String(), nullable=False),
    sa.Column('member_id', sa.String(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=True),
    sa.Column('payer_name', sa.String(), nullable=True),
    sa.Column('plan_id', sa.String(), nullable=True),
    sa.Column('plan_type', sa.String(), nullable=True),
    sa.Column('group_number', sa.String(), nullable=True),
    sa.Column('group_name', sa.String(), nullable=True),
    sa.Column('subscriber_name', sa.String(), nullable=True),
    sa.Column('subscriber_relationship', sa.String(), nullable=True),
    sa.Column('subscriber_dob', sa.Date(), nullable=True),
    sa.Column('effective_date', sa.Date(), nullable=True),
    sa.Column('expiration_date', sa.Date(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coverage')),
    sa.UniqueConstraint('mrn', 'payer_id', 'member_id', name=op.f('uq_coverage_mrn_payer_id_member_id'))
    )
    op.create_table('pm_patient_merge',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('old_mrn', sa.String(), nullable=False),
    sa.Column('new_mrn', sa.String(), nullable=False),
    sa.Column('merged_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pm_patient_merge')),
    sa.UniqueConstraint('old_mrn', 'new_mrn', 'message_id', name=op.f('uq_pm_patient_merge_old_mrn_new_mrn_message_id'))
    )
    op.create_table('registration',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('mrn', sa.String(), nullable=False),
    sa.Column('account_number', sa.String(), nullable=True),
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
    sa.Column('guarantor_name', sa.String(), nullable=True),
    sa.Column('guarantor_relationship', sa.String(), nullable=True),
    sa.Column('guarantor_address', sa.String(), nullable=True),
    sa.Column('guarantor_phone', sa.String(), nullable=True),
    sa.Column('merged_into', sa.String(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registration')),
    sa.UniqueConstraint('mrn', name=op.f('uq_registration_mrn'))
    )
    op.create_index(op.f('ix_registration_merged_into'), 'registration', ['merged_into'], unique=False)
    op.create_table('visit',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('visit_number', sa.String(), nullable=False),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('account_number', sa.String(), nullable=True),
    sa.Column('patient_class', sa.String(), nullable=True),
    sa.Column('attending', sa.String(), nullable=True),
    sa.Column('financial_class', sa.String(), nullable=True),
    sa.Column('hospital_service', sa.String(), nullable=True),
    sa.Column('location', sa.String(), nullable=True),
    sa.Column('admit_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('discharge_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_visit')),
    sa.UniqueConstraint('visit_number', name=op.f('uq_visit_visit_number'))
    )
    op.create_index(op.f('ix_visit_mrn'), 'visit', ['mrn'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_visit_mrn'), table_name='visit')
    op.drop_table('visit')
    op.drop_index(op.f('ix_registration_merged_into'), table_name='registration')
    op.drop_table('registration')
    op.drop_table('pm_patient_merge')
    op.drop_table('coverage')
