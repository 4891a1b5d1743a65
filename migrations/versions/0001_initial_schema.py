"""Initial schema: messages (tasks), updates (the stream clients pull), pull_cursors.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here on purpose: a migration describes the schema as it was at this revision.
OPEN_STATUSES = "status IN ('pending', 'acknowledged', 'in_progress')"
KNOWN_STATUSES = (
    "status IN ('pending', 'acknowledged', 'in_progress', 'complete', 'error', 'cancelled')"
)
TIMESTAMP = sa.String(length=32)  # fixed-width ISO-8601 UTC text, see nexus_bridge.db.types


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("target", sa.String(length=100), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("acknowledged_at", TIMESTAMP, nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("ended_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(KNOWN_STATUSES, name=op.f("ck_messages_status_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_messages_target_status", ["target", "status"], unique=False)
        batch_op.create_index(
            "uq_messages_open_content",
            ["target", "content_hash"],
            unique=True,
            sqlite_where=sa.text(OPEN_STATUSES),
            postgresql_where=sa.text(OPEN_STATUSES),
        )

    op.create_table(
        "pull_cursors",
        sa.Column("identity", sa.String(length=200), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("identity", name=op.f("pk_pull_cursors")),
    )
    op.create_table(
        "updates",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint("kind IN ('status', 'agent')", name=op.f("ck_updates_kind_known")),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_updates_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_updates")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.create_index("ix_updates_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_updates_message_id_seq", ["message_id", "seq"], unique=False)


def downgrade() -> None:
    op.drop_table("updates")
    op.drop_table("pull_cursors")
    op.drop_table("messages")
