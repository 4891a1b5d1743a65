"""Vocabulary: the tasks table is `tasks` (was `messages`) and a task id column is `task_id` (was
`message_id`, beside Telegram's own `telegram_message_id`). Indexes, constraints and the count
triggers of 0011 follow.

Renames only: every row stays, and the wire names (`send_message`, `message_id`, ...) do not
change. SQLite (3.26 and newer) rewrites the foreign keys, triggers and index definitions that
name a renamed table or column; the indexes and triggers whose own names say "messages" are
rebuilt from their stored definitions. PostgreSQL renames them in place, and the one trigger
function whose body names the table is replaced.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29
"""

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TASK_ID_TABLES: Final = ("updates", "outbox", "telegram_messages")
INDEXES: Final = (
    ("uq_messages_open_content", "uq_tasks_open_content"),
    ("ix_messages_target_status_created_at", "ix_tasks_target_status_created_at"),
    ("ix_messages_created_at", "ix_tasks_created_at"),
    ("ix_messages_claim_expires_at", "ix_tasks_claim_expires_at"),
    ("ix_messages_status_created_at", "ix_tasks_status_created_at"),
    ("ix_updates_message_id_seq", "ix_updates_task_id_seq"),
    ("ix_outbox_message_id", "ix_outbox_task_id"),
    ("ix_telegram_messages_message_id", "ix_telegram_messages_task_id"),
)
SQLITE_TRIGGERS: Final = (
    ("queue_counts_messages_insert", "queue_counts_tasks_insert"),
    ("queue_counts_messages_status", "queue_counts_tasks_status"),
    ("queue_counts_messages_delete", "queue_counts_tasks_delete"),
)
# PostgreSQL's constraint names (SQLite keeps them inside each table's definition, unused).
CONSTRAINTS: Final = (
    ("tasks", "pk_messages", "pk_tasks"),
    ("tasks", "ck_messages_status_known", "ck_tasks_status_known"),
    ("updates", "fk_updates_message_id_messages", "fk_updates_task_id_tasks"),
    ("outbox", "fk_outbox_message_id_messages", "fk_outbox_task_id_tasks"),
    (
        "telegram_messages",
        "fk_telegram_messages_message_id_messages",
        "fk_telegram_messages_task_id_tasks",
    ),
)
# 0011's function that counts updates per target names the tasks table and its column.
PG_UPDATES_FUNCTION: Final = """
CREATE OR REPLACE FUNCTION queue_counts_updates() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM queue_counts_bump('updates', COALESCE(
            (SELECT target FROM {table} WHERE id = NEW.{column}), ''), '', 1);
    ELSE
        PERFORM queue_counts_bump('updates', COALESCE(
            (SELECT target FROM {table} WHERE id = OLD.{column}), ''), '', -1);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql"""


def _pairs(pairs: Sequence[tuple[str, str]], *, reverse: bool) -> list[tuple[str, str]]:
    return [(new, old) for old, new in pairs] if reverse else list(pairs)


def _rebuild_sqlite(kind: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Rename SQLite indexes or triggers: drop each and create it again from its stored SQL."""
    bind = op.get_bind()
    for old, new in pairs:
        sql = bind.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE type = :kind AND name = :name"),
            {"kind": kind, "name": old},
        ).scalar_one_or_none()
        if sql is None:
            continue
        op.execute(f"DROP {kind.upper()} {old}")
        op.execute(sql.replace(old, new, 1))


def _rename(
    old_table: str, new_table: str, old_column: str, new_column: str, *, reverse: bool
) -> None:
    bind = op.get_bind()
    op.execute(f"ALTER TABLE {old_table} RENAME TO {new_table}")
    for table in TASK_ID_TABLES:
        op.execute(f"ALTER TABLE {table} RENAME COLUMN {old_column} TO {new_column}")
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite("index", _pairs(INDEXES, reverse=reverse))
        _rebuild_sqlite("trigger", _pairs(SQLITE_TRIGGERS, reverse=reverse))
        return
    for old, new in _pairs(INDEXES, reverse=reverse):
        op.execute(f"ALTER INDEX IF EXISTS {old} RENAME TO {new}")
    present = {
        name
        for (name,) in bind.execute(
            sa.text(
                "SELECT conname FROM pg_constraint "
                "WHERE connamespace = current_schema()::regnamespace"
            )
        )
    }
    for table, old, new in CONSTRAINTS:
        if reverse:
            old, new = new, old
        table = new_table if table == "tasks" else table  # the tasks table, renamed above
        if old in present:
            op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {old} TO {new}")
    old_name, new_name = (
        ("queue_counts_tasks", "queue_counts_messages")
        if reverse
        else ("queue_counts_messages", "queue_counts_tasks")
    )
    op.execute(f"ALTER TRIGGER {old_name} ON {new_table} RENAME TO {new_name}")
    op.execute(f"ALTER FUNCTION {old_name}() RENAME TO {new_name}")
    op.execute(PG_UPDATES_FUNCTION.format(table=new_table, column=new_column))


def upgrade() -> None:
    _rename("messages", "tasks", "message_id", "task_id", reverse=False)


def downgrade() -> None:
    _rename("tasks", "messages", "task_id", "message_id", reverse=True)
