"""The agent's session for a task (e.g. Claude Code's session id): messages.agent_session.

The agent runner records it as soon as Claude names it, so a runner that lost its local state
can still resume the session.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_AGENT_SESSION_CHARS = 200  # nexus_bridge.config.MAX_AGENT_SESSION_CHARS at the time


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("agent_session", sa.String(length=MAX_AGENT_SESSION_CHARS), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("agent_session")
