"""A target's tasks newest first off an index: ``list_messages(target=…)`` with no status no
longer sorts that target's whole history (``ix_tasks_target_created_at``).

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_tasks_target_created_at", "tasks", ["target", "created_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tasks_target_created_at", table_name="tasks")
