"""Which database this is: a random id, made once, that every process reading the database sees.

A command run with another ``DATABASE_URL`` than the server's (another environment file, another
user's default path) queues tasks into a database no server reads; ``send`` and ``doctor`` ask
the running server for this id (``GET /targets``) and compare it with their own.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.String(length=32)  # fixed-width ISO-8601 UTC text, see nexus_bridge.db.types


def upgrade() -> None:
    table = op.create_table(
        "database_identity",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_identity")),
    )
    now = datetime.now(UTC).isoformat(timespec="microseconds")
    op.bulk_insert(table, [{"id": str(uuid.uuid4()), "created_at": now}])


def downgrade() -> None:
    op.drop_table("database_identity")
