"""PM coverage served as FHIR (issue 10): each coverage row's FHIR id.

``fhir_id`` (unique): the id ``GET /fhir/Coverage/<id>`` reads it under. Set on insert and never
changed; existing rows get the deterministic id of their natural key
(engine/formats/fhir_bundle.py), the id the store gives new rows. The downgrade drops it.

Revision ID: pm_0007
Revises: pm_0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pm_0007"
down_revision: str | Sequence[str] | None = "pm_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS: dict[str, tuple[str, ...]] = {"coverage": ("mrn", "mrn_issuer", "payer_id", "member_id")}


def upgrade() -> None:
    with op.batch_alter_table('coverage', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fhir_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_coverage_fhir_id'), ['fhir_id'], unique=True)

    _backfill('pm', KEYS)


def downgrade() -> None:
    with op.batch_alter_table('coverage', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_coverage_fhir_id'))
        batch_op.drop_column('fhir_id')


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
