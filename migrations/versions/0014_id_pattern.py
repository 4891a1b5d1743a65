"""PostgreSQL: an index that serves a short id's ``LIKE 'prefix%'`` under any collation.

The primary key serves a prefix search only under the C collation, and a cluster's default
(``en_US.UTF-8``, ``C.UTF-8`` on PostgreSQL 15) is usually another: every lookup of an agent's
or the CLI's short id read the whole ``tasks`` table. ``varchar_pattern_ops`` compares
character by character, whatever the collation. SQLite needs nothing: it seeks the primary key's
range (``Store._id_prefix``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.create_index(
            "ix_tasks_id_pattern",
            "tasks",
            ["id"],
            unique=False,
            postgresql_ops={"id": "varchar_pattern_ops"},
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_tasks_id_pattern", table_name="tasks")
