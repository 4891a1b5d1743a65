"""Outbox entries of kind 'cancel': telling the agent to stop a task the client cancelled.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS_BEFORE = "kind IN ('task', 'reply')"
KINDS_AFTER = "kind IN ('task', 'reply', 'cancel')"


def _kinds(kinds: str) -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_outbox_kind_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_outbox_kind_known"), kinds)


def upgrade() -> None:
    _kinds(KINDS_AFTER)


def downgrade() -> None:
    op.execute("DELETE FROM outbox WHERE kind = 'cancel'")
    _kinds(KINDS_BEFORE)
