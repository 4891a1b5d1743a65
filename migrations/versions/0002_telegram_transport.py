"""Telegram transport: outbox, telegram_messages journal, leases, urgent, input_required.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.String(length=32)  # fixed-width ISO-8601 UTC text, see nexus_bridge.db.types

OPEN_BEFORE = "status IN ('pending', 'acknowledged', 'in_progress')"
OPEN_AFTER = "status IN ('pending', 'acknowledged', 'in_progress', 'input_required')"
STATUSES_BEFORE = (
    "status IN ('pending', 'acknowledged', 'in_progress', 'complete', 'error', 'cancelled')"
)
STATUSES_AFTER = (
    "status IN ('pending', 'acknowledged', 'in_progress', 'input_required', 'complete', "
    "'error', 'cancelled')"
)
KINDS_BEFORE = "kind IN ('status', 'agent')"
KINDS_AFTER = "kind IN ('status', 'agent', 'client')"


def _messages_rules(statuses: str, open_statuses: str) -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("uq_messages_open_content")
        batch_op.drop_constraint(op.f("ck_messages_status_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_messages_status_known"), statuses)
        batch_op.create_index(
            "uq_messages_open_content",
            ["target", "content_hash"],
            unique=True,
            sqlite_where=sa.text(open_statuses),
            postgresql_where=sa.text(open_statuses),
        )


def _update_kinds(kinds: str) -> None:
    with op.batch_alter_table("updates", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_updates_kind_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_updates_kind_known"), kinds)


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("reply_to_telegram_id", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("parts_sent", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint("kind IN ('task', 'reply')", name=op.f("ck_outbox_kind_known")),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed', 'skipped')",
            name=op.f("ck_outbox_state_known"),
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_outbox_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_message_id", ["message_id"], unique=False)
        batch_op.create_index(
            "ix_outbox_state_next_attempt_at", ["state", "next_attempt_at"], unique=False
        )

    op.create_table(
        "telegram_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("telegram_message_id", sa.BigInteger(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("part", sa.Integer(), nullable=True),
        sa.Column("from_id", sa.BigInteger(), nullable=True),
        sa.Column("reply_to_telegram_id", sa.BigInteger(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("processed_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "direction IN ('out', 'in')", name=op.f("ck_telegram_messages_direction_known")
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_telegram_messages_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox.id"],
            name=op.f("fk_telegram_messages_outbox_id_outbox"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telegram_messages")),
        sa.UniqueConstraint(
            "chat_id",
            "telegram_message_id",
            name=op.f("uq_telegram_messages_chat_id_telegram_message_id"),
        ),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("telegram_messages", schema=None) as batch_op:
        batch_op.create_index("ix_telegram_messages_message_id", ["message_id"], unique=False)

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("urgent", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )
    _messages_rules(STATUSES_AFTER, OPEN_AFTER)
    _update_kinds(KINDS_AFTER)


def downgrade() -> None:
    # Rows in the new status or kind cannot be represented before this revision.
    op.execute("UPDATE messages SET status = 'in_progress' WHERE status = 'input_required'")
    op.execute("UPDATE updates SET kind = 'agent' WHERE kind = 'client'")
    _update_kinds(KINDS_BEFORE)
    _messages_rules(STATUSES_BEFORE, OPEN_BEFORE)
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("urgent")
    op.drop_table("telegram_messages")
    op.drop_table("outbox")
    op.drop_table("leases")
