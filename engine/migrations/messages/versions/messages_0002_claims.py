"""claims, ordering and workers: messages.claim_until, index on (channel, ordering_key, id),
the workers heartbeat table

Revision ID: messages_0002
Revises: messages_0001
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = "messages_0002"
down_revision: Union[str, Sequence[str], None] = "messages_0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_messages_order", ["channel", "ordering_key", "id"], unique=False)
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_order")
        batch_op.drop_column("claim_until")
