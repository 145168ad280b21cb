"""what mappings let go: messages.warnings and messages.unmapped (JSON lists, never values)

Revision ID: messages_0004
Revises: messages_0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "messages_0004"
down_revision: str | Sequence[str] | None = "messages_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("warnings", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("unmapped", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("unmapped")
        batch_op.drop_column("warnings")
