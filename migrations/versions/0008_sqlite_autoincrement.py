"""SQLite: updates.seq and outbox.id are AUTOINCREMENT again, so pruning never lets one be reused.

0002 and 0005 rebuilt these tables (batch mode) and the rebuilt tables lost AUTOINCREMENT: SQLite
then hands out max(rowid)+1, so once retention deletes the newest updates their seq values come
back, and a cursor that had passed them would skip the new rows. Rebuilding keeps every row, and
SQLite starts the sequence at the largest seq kept (nothing was ever deleted before retention).
PostgreSQL's sequences never go back: nothing to do there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("updates", "outbox")


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
        ):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
