"""Lease fencing: an epoch per poller lease (recorded with each delivery), the transport's
health on the lease row, and ``leases.acquired_at`` rewritten as ISO-8601 UTC with offset.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.String(length=32)  # fixed-width ISO-8601 UTC text, see nexus_bridge.db.types

# Older code stored acquired_at as "YYYY-MM-DD HH:MM:SS[.ffffff]" (no T, no offset; it was UTC).
_FIX_ACQUIRED_AT = """
UPDATE leases SET acquired_at =
    substr(acquired_at, 1, 10) || 'T' || substr(acquired_at, 12, 8)
    || CASE WHEN length(acquired_at) = 19 THEN '.000000' ELSE substr(acquired_at, 20, 7) END
    || '+00:00'
WHERE acquired_at NOT LIKE '%+00:00'
"""


def upgrade() -> None:
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("epoch", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )
        batch_op.add_column(sa.Column("health", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("last_ok_at", TIMESTAMP, nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("error_since", TIMESTAMP, nullable=True))
    with op.batch_alter_table("telegram_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_epoch", sa.Integer(), nullable=True))
    op.execute(_FIX_ACQUIRED_AT)


def downgrade() -> None:
    with op.batch_alter_table("telegram_messages", schema=None) as batch_op:
        batch_op.drop_column("lease_epoch")
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_column("error_since")
        batch_op.drop_column("last_error")
        batch_op.drop_column("last_ok_at")
        batch_op.drop_column("health")
        batch_op.drop_column("epoch")
