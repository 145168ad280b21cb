"""last_seq on every pm table: the receive-order place of the message that last wrote the row.

Revision ID: pm_0002
Revises: pm_0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "pm_0002"
down_revision: str | Sequence[str] | None = "pm_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


TABLES = ("registration", "coverage", "visit", "pm_patient_merge")  # as they stand at this revision


def upgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("last_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True)
            )
    # rows written before this revision: their writer's id is the best receive order known
    for name in TABLES:
        op.execute(sa.text(f"UPDATE {name} SET last_seq = last_message_id"))


def downgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("last_seq")
