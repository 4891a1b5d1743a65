"""Agent presence: when each target's agent was last seen, for liveness and stall detection.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.String(length=32)  # fixed-width ISO-8601 UTC text, see nexus_bridge.db.types


def upgrade() -> None:
    op.create_table(
        "agent_presence",
        sa.Column("target", sa.String(length=100), nullable=False),
        sa.Column("last_seen_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_agent_presence")),
    )


def downgrade() -> None:
    op.drop_table("agent_presence")
