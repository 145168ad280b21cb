"""The clinical store served as FHIR (issue 10): conditions, procedures, and each row's FHIR id.

- ``condition``: a Condition sent over FHIR (a problem-list entry has no visit, so it cannot be a
  ``diagnosis``), keyed by its identifier (condition_id, condition_namespace).
- ``procedure``: a Procedure sent over FHIR, keyed by its identifier (procedure_id,
  procedure_namespace).
- ``fhir_id`` on every table the FHIR API serves (unique): the id a resource is read under. Set
  on insert and never changed; existing rows get the deterministic id of their natural key
  (engine/formats/fhir_bundle.py), the id the store gives new rows.

The downgrade drops the two tables with their data, and the ``fhir_id`` columns.

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

KEYS: dict[str, tuple[str, ...]] = {  # the tables that existed before, and their natural keys (frozen here: this revision's view)
    "patient": ("mrn", "mrn_issuer"),
    "encounter": ("visit_number",),
    "observation": ("filler_order_number", "report_code", "report_occurrence", "specimen_seq", "seq"),
    "diagnostic_report": ("filler_order_number", "code", "occurrence"),
    "allergy": ("mrn", "mrn_issuer", "allergen_code"),
    "diagnosis": ("visit_number", "code"),
    "appointment": ("filler_appointment_id", "filler_appointment_namespace"),
}


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
    sa.Column('fhir_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_condition')),
    sa.UniqueConstraint('condition_id', 'condition_namespace', name='uq_condition_key')
    )
    with op.batch_alter_table('condition', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_condition_fhir_id'), ['fhir_id'], unique=True)
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
    sa.Column('fhir_id', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_procedure')),
    sa.UniqueConstraint('procedure_id', 'procedure_namespace', name='uq_procedure_key')
    )
    with op.batch_alter_table('procedure', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_procedure_fhir_id'), ['fhir_id'], unique=True)
        batch_op.create_index(batch_op.f('ix_procedure_mrn'), ['mrn'], unique=False)

    with op.batch_alter_table('allergy', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_allergy_fhir_id'), ['fhir_id'], unique=True)

    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_appointment_fhir_id'), ['fhir_id'], unique=True)

    with op.batch_alter_table('diagnosis', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_diagnosis_fhir_id'), ['fhir_id'], unique=True)

    with op.batch_alter_table('diagnostic_report', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_diagnostic_report_fhir_id'), ['fhir_id'], unique=True)

    with op.batch_alter_table('encounter', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_encounter_fhir_id'), ['fhir_id'], unique=True)

    with op.batch_alter_table('observation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_observation_fhir_id'), ['fhir_id'], unique=True)

    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_patient_fhir_id'), ['fhir_id'], unique=True)

    _backfill('clinical', KEYS)


def downgrade() -> None:
    with op.batch_alter_table('patient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_patient_fhir_id'))
        batch_op.drop_column('fhir_id')

    with op.batch_alter_table('observation', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_observation_fhir_id'))
        batch_op.drop_column('fhir_id')

    with op.batch_alter_table('encounter', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_encounter_fhir_id'))
        batch_op.drop_column('fhir_id')

    with op.batch_alter_table('diagnostic_report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_diagnostic_report_fhir_id'))
        batch_op.drop_column('fhir_id')

    with op.batch_alter_table('diagnosis', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_diagnosis_fhir_id'))
        batch_op.drop_column('fhir_id')

    with op.batch_alter_table('appointment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appointment_fhir_id'))
        batch_op.drop_column('fhir_id')

    with op.batch_alter_table('allergy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_allergy_fhir_id'))
        batch_op.drop_column('fhir_id')

    with op.batch_alter_table('procedure', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_procedure_mrn'))
        batch_op.drop_index(batch_op.f('ix_procedure_fhir_id'))

    op.drop_table('procedure')
    with op.batch_alter_table('condition', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_condition_mrn'))
        batch_op.drop_index(batch_op.f('ix_condition_fhir_id'))

    op.drop_table('condition')


def _backfill(kind: str, keys: dict[str, tuple[str, ...]]) -> None:
    """Each existing row's ``fhir_id``: the deterministic id of its natural key (written with
    the same function the store uses for new rows, whose namespace never changes)."""
    from engine.formats.fhir_bundle import row_id

    conn = op.get_bind()
    for table, key in keys.items():
        t = sa.table(table, sa.column("id"), sa.column("fhir_id"), *(sa.column(k) for k in key))
        rows = conn.execute(sa.select(t.c.id, *(t.c[k] for k in key))).all()
        logical = table.removeprefix("pm_")
        updates = [{"row": r[0], "fid": row_id(kind, logical, tuple(r[1:]))} for r in rows]
        if updates:
            stmt = sa.update(t).where(t.c.id == sa.bindparam("row")).values(fhir_id=sa.bindparam("fid"))
            conn.execute(stmt, updates)
