"""retention: index on messages (channel, received_at), for pruning one channel's old messages

Revision ID: messages_0005
Revises: messages_0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "messages_0005"
down_revision: str | Sequence[str] | None = "messages_0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_received", ["channel", "received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_received")
