"""Indexes for lookups that read a whole history without one:

- ``ix_tasks_target_created_at``: ``list_messages(target=…)`` with no status reads a page off it
  instead of sorting the target's every task;
- ``ix_telegram_messages_outbox_id_part``: before posting each part of a delivery the relay asks
  which lease epochs already posted it (and pruning a delivery nulls its journal rows' link):
  a seek, not a scan of every message ever journaled;
- ``ix_telegram_messages_unprocessed`` (partial: ``processed_at IS NULL``): the inbound messages
  not yet acted on, asked at every renewal of the poller's lease.

And ``ix_tasks_claim_expires_at`` becomes partial (``claim_expires_at IS NOT NULL``): it holds the
live claims only, not an entry for every task ever queued, so queueing a task writes no more index
entries than before this migration.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPROCESSED = "processed_at IS NULL"
CLAIMED = "claim_expires_at IS NOT NULL"


def upgrade() -> None:
    op.create_index("ix_tasks_target_created_at", "tasks", ["target", "created_at"], unique=False)
    op.drop_index("ix_tasks_claim_expires_at", table_name="tasks")
    op.create_index(
        "ix_tasks_claim_expires_at",
        "tasks",
        ["claim_expires_at"],
        unique=False,
        sqlite_where=sa.text(CLAIMED),
        postgresql_where=sa.text(CLAIMED),
    )
    op.create_index(
        "ix_telegram_messages_outbox_id_part",
        "telegram_messages",
        ["outbox_id", "part"],
        unique=False,
    )
    op.create_index(
        "ix_telegram_messages_unprocessed",
        "telegram_messages",
        ["id"],
        unique=False,
        sqlite_where=sa.text(UNPROCESSED),
        postgresql_where=sa.text(UNPROCESSED),
    )


def downgrade() -> None:
    op.drop_index("ix_telegram_messages_unprocessed", table_name="telegram_messages")
    op.drop_index("ix_telegram_messages_outbox_id_part", table_name="telegram_messages")
    op.drop_index("ix_tasks_claim_expires_at", table_name="tasks")
    op.create_index("ix_tasks_claim_expires_at", "tasks", ["claim_expires_at"], unique=False)
    op.drop_index("ix_tasks_target_created_at", table_name="tasks")
