"""search: indexes for the console's message search, newest first, on any one filter

Each filter of engine/stores/message_search.py (channel, status, control id, message type, date
range) reads only the rows it asks for, in id order, through an index ending in ``id``: a page
costs the same on a store of millions as on an empty one. (A patient is found through
ix_messages_order, channel by channel.) ``ix_messages_warnings``
holds only the messages with warnings (none at insert), for their count per channel.
``ix_messages_type`` has ``trigger`` after ``id``: a type alone ("ADT") reads in id order, and
a trigger ("ADT^A01") is checked in the index as it goes.

On PostgreSQL each index is built under the migration's lock on ``messages``: on a large store,
run ``engine db upgrade`` while the engine is stopped.

Revision ID: messages_0009
Revises: messages_0008
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "messages_0009"
down_revision: str | Sequence[str] | None = "messages_0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WARNED = "warnings IS NOT NULL"
INDEXES: list[tuple[str, list[str], dict[str, Any]]] = [
    ("ix_messages_channel_id", ["channel", "id"], {}),
    ("ix_messages_status_id", ["status", "id"], {}),
    ("ix_messages_control_id", ["control_id"], {}),
    ("ix_messages_type", ["message_type", "id", "trigger"], {}),
    ("ix_messages_received_at", ["received_at"], {"postgresql_include": ["id"]}),
    ("ix_messages_warnings", ["channel"], {"sqlite_where": sa.text(WARNED), "postgresql_where": sa.text(WARNED)}),
]


def upgrade() -> None:
    for name, columns, options in INDEXES:
        op.create_index(name, "messages", columns, **options)


def downgrade() -> None:
    for name, _columns, _options in reversed(INDEXES):
        op.drop_index(name, table_name="messages")
