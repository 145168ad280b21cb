"""FHIR conditions and procedures in the clinical store (issue 10).

- ``condition``: a Condition sent over FHIR (a problem-list entry has no visit, so it cannot be a
  ``diagnosis``), keyed by its identifier (condition_id, condition_namespace).
- ``procedure``: a Procedure sent over FHIR, keyed by its identifier (procedure_id,
  procedure_namespace).

Both carry the patient as (mrn, mrn_issuer). The downgrade drops them with their data.

Revision ID: clinical_0006
Revises: clinical_0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "clinical_0006"
down_revision: str | Sequence[str] | None = "clinical_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('condition',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('condition_id', sa.String(), nullable=False),
    sa.Column('condition_namespace', sa.String(), server_default='', nullable=False),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('mrn_issuer', sa.String(), server_default='', nullable=False),
    sa.Column('visit_number', sa.String(), nullable=True),
    sa.Column('code', sa.String(), nullable=True),
    sa.Column('code_system', sa.String(), nullable=True),
    sa.Column('code_text', sa.String(), nullable=True),
    sa.Column('category', sa.String(), nullable=True),
    sa.Column('clinical_status', sa.String(), nullable=True),
    sa.Column('verification_status', sa.String(), nullable=True),
    sa.Column('severity_code', sa.String(), nullable=True),
    sa.Column('severity_text', sa.String(), nullable=True),
    sa.Column('severity_system', sa.String(), nullable=True),
    sa.Column('onset_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('onset_date', sa.Date(), nullable=True),
    sa.Column('abatement_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('abatement_date', sa.Date(), nullable=True),
    sa.Column('recorded_date', sa.Date(), nullable=True),
    sa.Column('recorder', sa.String(), nullable=True),
    sa.Column('recorder_name', sa.String(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('last_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_condition')),
    sa.UniqueConstraint('condition_id', 'condition_namespace', name='uq_condition_key')
    )
    with op.batch_alter_table('condition', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_condition_mrn'), ['mrn'], unique=False)

    op.create_table('procedure',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('procedure_id', sa.String(), nullable=False),
    sa.Column('procedure_namespace', sa.String(), server_default='', nullable=False),
    sa.Column('mrn', sa.String(), nullable=True),
    sa.Column('mrn_issuer', sa.String(), server_default='', nullable=False),
    sa.Column('visit_number', sa.String(), nullable=True),
    sa.Column('code', sa.String(), nullable=True),
    sa.Column('code_system', sa.String(), nullable=True),
    sa.Column('code_text', sa.String(), nullable=True),
    sa.Column('status', sa.String(), nullable=True),
    sa.Column('category_code', sa.String(), nullable=True),
    sa.Column('category_text', sa.String(), nullable=True),
    sa.Column('category_system', sa.String(), nullable=True),
    sa.Column('performed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('performed_date', sa.Date(), nullable=True),
    sa.Column('performed_end_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('performer', sa.String(), nullable=True),
    sa.Column('performer_name', sa.String(), nullable=True),
    sa.Column('body_site_code', sa.String(), nullable=True),
    sa.Column('body_site_text', sa.String(), nullable=True),
    sa.Column('body_site_system', sa.String(), nullable=True),
    sa.Column('reason_code', sa.String(), nullable=True),
    sa.Column('reason_text', sa.String(), nullable=True),
    sa.Column('reason_system', sa.String(), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('last_seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_procedure')),
    sa.UniqueConstraint('procedure_id', 'procedure_namespace', name='uq_procedure_key')
    )
    with op.batch_alter_table('procedure', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_procedure_mrn'), ['mrn'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('procedure', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_procedure_mrn'))

    op.drop_table('procedure')
    with op.batch_alter_table('condition', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_condition_mrn'))

    op.drop_table('condition')
