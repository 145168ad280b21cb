"""control numbers: the last X12 control number used per (sender, receiver)

Every 999, TA1 and 837 the engine writes takes the next number of its partner pair from here
(engine/stores/control_numbers.py), so numbers never repeat across restarts and processes.

Revision ID: messages_0007
Revises: messages_0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "messages_0007"
down_revision: str | Sequence[str] | None = "messages_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "control_numbers",
        sa.Column("sender", sa.String(length=100), nullable=False),
        sa.Column("receiver", sa.String(length=100), nullable=False),
        sa.Column("last", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sender", "receiver"),
    )


def downgrade() -> None:
    op.drop_table("control_numbers")
