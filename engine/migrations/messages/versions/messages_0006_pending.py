"""pending: a partial index on the messages still in work, by (channel, ordering key, id)

The claim ("is an earlier message of this patient still pending?") and the hand-on ("which
message of this patient is next?") read only pending messages. Through the full
(channel, ordering_key, id) index they walked every message the patient ever had, so a
patient with a long history (a lab's test patient, a feed with one ordering key) made each
claim slower as the store grew. This index holds only the pending rows: a few, whatever the
store's size.

Revision ID: messages_0006
Revises: messages_0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "messages_0006"
down_revision: str | Sequence[str] | None = "messages_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "status IN ('RECEIVED', 'TRANSFORMED', 'QUEUED')"


def upgrade() -> None:
    op.create_index(
        "ix_messages_pending",
        "messages",
        ["channel", "ordering_key", "id"],
        sqlite_where=sa.text(PENDING),
        postgresql_where=sa.text(PENDING),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_pending", table_name="messages")
