"""Counts kept as rows change: queue_status reads queue_counts instead of counting history.

Triggers keep ``queue_counts`` in the same transaction as every insert, status change and delete
of a task, an update or an ignored inbound message, whichever code path writes it, so the counts
can never drift from the rows; the migration fills it from the rows already there. On PostgreSQL
a statement trigger on ``updates`` also sends ``NOTIFY nexus_bridge_updates`` (delivered at
commit), which wakes other processes' waiting pulls at once.

A later migration that rebuilds ``messages``, ``updates`` or ``telegram_messages`` with
``batch_alter_table`` on SQLite drops their triggers with the old table: it must call
``create_count_triggers`` again (tests/integration/test_migrations.py checks they exist at head).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOTIFY_CHANNEL: Final = "nexus_bridge_updates"  # nexus_bridge.db.wakeups.UPDATES_CHANNEL

# kind, target, status: the key of one count. Tasks are counted per (target, status); updates
# per target ('' for updates of no task); ignored inbound messages once ('', '').
_SQLITE_BUMP: Final = (
    "INSERT INTO queue_counts (kind, target, status, n) VALUES ({key}, {delta}) "
    "ON CONFLICT (kind, target, status) DO UPDATE SET n = n + {delta};"
)
_TASK_OF_UPDATE: Final = "COALESCE((SELECT target FROM messages WHERE id = {row}.message_id), '')"

_SQLITE_TRIGGERS: Final = {
    "queue_counts_messages_insert": (
        "AFTER INSERT ON messages",
        _SQLITE_BUMP.format(key="'tasks', NEW.target, NEW.status", delta=1),
    ),
    "queue_counts_messages_status": (
        "AFTER UPDATE OF status ON messages WHEN OLD.status <> NEW.status",
        _SQLITE_BUMP.format(key="'tasks', OLD.target, OLD.status", delta=-1)
        + _SQLITE_BUMP.format(key="'tasks', NEW.target, NEW.status", delta=1),
    ),
    "queue_counts_messages_delete": (
        "AFTER DELETE ON messages",
        _SQLITE_BUMP.format(key="'tasks', OLD.target, OLD.status", delta=-1),
    ),
    # The prune deletes a task's updates before the task, so the task is there to name its target.
    "queue_counts_updates_insert": (
        "AFTER INSERT ON updates",
        _SQLITE_BUMP.format(key=f"'updates', {_TASK_OF_UPDATE.format(row='NEW')}, ''", delta=1),
    ),
    "queue_counts_updates_delete": (
        "AFTER DELETE ON updates",
        _SQLITE_BUMP.format(key=f"'updates', {_TASK_OF_UPDATE.format(row='OLD')}, ''", delta=-1),
    ),
    "queue_counts_ignored_insert": (
        "AFTER INSERT ON telegram_messages WHEN NOT NEW.accepted",
        _SQLITE_BUMP.format(key="'ignored', '', ''", delta=1),
    ),
    "queue_counts_ignored_delete": (
        "AFTER DELETE ON telegram_messages WHEN NOT OLD.accepted",
        _SQLITE_BUMP.format(key="'ignored', '', ''", delta=-1),
    ),
}

_PG_FUNCTIONS: Final = {
    "queue_counts_bump": """
CREATE FUNCTION queue_counts_bump(k text, t text, s text, delta bigint) RETURNS void AS $$
    INSERT INTO queue_counts (kind, target, status, n) VALUES (k, t, s, delta)
    ON CONFLICT (kind, target, status) DO UPDATE SET n = queue_counts.n + delta
$$ LANGUAGE sql""",
    "queue_counts_messages": """
CREATE FUNCTION queue_counts_messages() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM queue_counts_bump('tasks', OLD.target, OLD.status, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        PERFORM queue_counts_bump('tasks', NEW.target, NEW.status, 1);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "queue_counts_updates": """
CREATE FUNCTION queue_counts_updates() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM queue_counts_bump('updates', COALESCE(
            (SELECT target FROM messages WHERE id = NEW.message_id), ''), '', 1);
    ELSE
        PERFORM queue_counts_bump('updates', COALESCE(
            (SELECT target FROM messages WHERE id = OLD.message_id), ''), '', -1);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "queue_counts_ignored": """
CREATE FUNCTION queue_counts_ignored() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' AND NOT NEW.accepted THEN
        PERFORM queue_counts_bump('ignored', '', '', 1);
    ELSIF TG_OP = 'DELETE' AND NOT OLD.accepted THEN
        PERFORM queue_counts_bump('ignored', '', '', -1);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
    "notify_updates": f"""
CREATE FUNCTION notify_updates() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
    RETURN NULL;
END $$ LANGUAGE plpgsql""",
}

_PG_TRIGGERS: Final = {
    "queue_counts_messages": (
        "AFTER INSERT OR DELETE OR UPDATE OF status ON messages FOR EACH ROW",
        "queue_counts_messages",
    ),
    "queue_counts_updates": (
        "AFTER INSERT OR DELETE ON updates FOR EACH ROW",
        "queue_counts_updates",
    ),
    "queue_counts_ignored": (
        "AFTER INSERT OR DELETE ON telegram_messages FOR EACH ROW",
        "queue_counts_ignored",
    ),
    "notify_updates": ("AFTER INSERT ON updates FOR EACH STATEMENT", "notify_updates"),
}

_BACKFILL: Final = (
    "INSERT INTO queue_counts (kind, target, status, n) "
    "SELECT 'tasks', target, status, count(*) FROM messages GROUP BY target, status",
    "INSERT INTO queue_counts (kind, target, status, n) "
    "SELECT 'updates', COALESCE(m.target, ''), '', count(*) "
    "FROM updates u LEFT JOIN messages m ON m.id = u.message_id "
    "GROUP BY COALESCE(m.target, '')",
    "INSERT INTO queue_counts (kind, target, status, n) "
    "SELECT 'ignored', '', '', count(*) FROM telegram_messages "
    "WHERE NOT accepted HAVING count(*) > 0",
)


def create_count_triggers() -> None:
    """The triggers that keep queue_counts (and, on PostgreSQL, the NOTIFY on new updates)."""
    if op.get_bind().dialect.name == "postgresql":
        for body in _PG_FUNCTIONS.values():
            op.execute(body)
        for name, (when, function) in _PG_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION {function}()")
        return
    for name, (when, body) in _SQLITE_TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {when} BEGIN {body} END")


def drop_count_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, (when, _function) in _PG_TRIGGERS.items():
            table = when.split(" ON ")[1].split()[0]
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
        for name in _PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {name} CASCADE")
        return
    for name in _SQLITE_TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")


def upgrade() -> None:
    op.create_table(
        "queue_counts",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "target", "status", name=op.f("pk_queue_counts")),
    )
    # The oldest task in progress, for any target, without walking the history of ended tasks;
    # a target's tasks in one status in time order, without sorting them all.
    op.create_index(
        op.f("ix_messages_status_created_at"), "messages", ["status", "created_at"], unique=False
    )
    op.create_index(
        op.f("ix_messages_target_status_created_at"),
        "messages",
        ["target", "status", "created_at"],
        unique=False,
    )
    op.drop_index("ix_messages_target_status", table_name="messages")
    for statement in _BACKFILL:
        op.execute(statement)
    create_count_triggers()


def downgrade() -> None:
    drop_count_triggers()
    op.create_index("ix_messages_target_status", "messages", ["target", "status"], unique=False)
    op.drop_index(op.f("ix_messages_target_status_created_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_status_created_at"), table_name="messages")
    op.drop_table("queue_counts")
