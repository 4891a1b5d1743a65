"""The schema, declared once; alembic migrations must match it (a test runs ``alembic check``).

SQLAlchemy Core tables: the store writes SQL, it maps no objects (and declaring the tables as
ORM classes cost a server 0.02 s of its cold start).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

from nexus_bridge.db.types import UTCDateTime
from nexus_bridge.domain import MAX_AGENT_SESSION_CHARS, OPEN_STATUSES, TaskStatus, UpdateKind

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _sql_list(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


OPEN_STATUS_SQL: Final = f"status IN ({_sql_list([s.value for s in OPEN_STATUSES])})"
KNOWN_STATUS_SQL: Final = f"status IN ({_sql_list([s.value for s in TaskStatus])})"
KNOWN_KIND_SQL: Final = f"kind IN ({_sql_list([k.value for k in UpdateKind])})"
OPEN_CONTENT_INDEX: Final = "uq_tasks_open_content"
CLAIMS_INDEX: Final = "ix_tasks_claim_expires_at"
CLAIMED_SQL: Final = "claim_expires_at IS NOT NULL"
UNPROCESSED_INDEX: Final = "ix_telegram_messages_unprocessed"
UNPROCESSED_SQL: Final = "processed_at IS NULL"
# PostgreSQL only: tasks.id under varchar_pattern_ops, which serves a short id's LIKE 'prefix%'
# under any collation (the primary key serves it only under C). SQLite seeks the primary key's
# range instead (Store._id_prefix).
ID_PATTERN_INDEX: Final = "ix_tasks_id_pattern"
POSTGRESQL_ONLY: Final = "postgresql_only"
"""An ``Index.info`` key: the index exists on PostgreSQL only (alembic compares it there only)."""

OUTBOX_KINDS: Final = ("task", "reply", "cancel")
OUTBOX_STATES: Final = ("pending", "delivered", "failed", "skipped")


metadata: Final = MetaData(naming_convention=NAMING_CONVENTION)


# A task queued for an agent.
tasks = Table(
    "tasks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("target", String(100), nullable=False),
    Column("content", Text, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("status", String(20), nullable=False),
    Column("status_reason", Text),
    Column("urgent", Boolean, server_default=text("false"), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("acknowledged_at", UTCDateTime()),
    Column("started_at", UTCDateTime()),
    Column("ended_at", UTCDateTime()),
    # The lease of a claim over the direct agent API: set while acknowledged by next_task.
    Column("claim_expires_at", UTCDateTime()),
    # The agent's session for the task (set by the agent, e.g. Claude Code's session id).
    Column("agent_session", String(MAX_AGENT_SESSION_CHARS)),
    CheckConstraint(KNOWN_STATUS_SQL, name="status_known"),
    # Dedup lives here: at most one open task per (target, content). Never read-then-write.
    # On PostgreSQL too (declare_postgresql_options).
    Index(
        OPEN_CONTENT_INDEX,
        "target",
        "content_hash",
        unique=True,
        sqlite_where=text(OPEN_STATUS_SQL),
    ),
    # created_at too: a target's tasks in one status come newest (or oldest) first off the
    # index, without sorting that status's whole history.
    Index("ix_tasks_target_status_created_at", "target", "status", "created_at"),
    # And a target's tasks in every status (list_messages(target=...) with no status).
    Index("ix_tasks_target_created_at", "target", "created_at"),
    Index("ix_tasks_created_at", "created_at"),
    # Live claims only (the lease is cleared by every other move): no entry per queued task.
    Index(CLAIMS_INDEX, "claim_expires_at", sqlite_where=text(CLAIMED_SQL)),
    Index("ix_tasks_status_created_at", "status", "created_at"),
)


# One entry of the update stream: a status change or agent text. ``seq`` is the cursor.
updates = Table(
    "updates",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(36), ForeignKey("tasks.id", ondelete="CASCADE")),
    Column("kind", String(16), nullable=False),
    Column("status", String(20)),
    Column("content", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint(KNOWN_KIND_SQL, name="kind_known"),
    Index("ix_updates_task_id_seq", "task_id", "seq"),
    Index("ix_updates_created_at", "created_at"),
    # AUTOINCREMENT: a seq is never reused, even after rows are deleted, so cursors stay valid.
    sqlite_autoincrement=True,
)


# Where each authenticated client's ``pull_updates`` left off.
pull_cursors = Table(
    "pull_cursors",
    metadata,
    Column("identity", String(200), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# Something to post to the agent's chat: a task, or the client's answer to a question.
#
# Committed with the task (or the answer) and posted by the delivery worker, so nothing is
# lost if the process dies before Telegram has it.
outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(36), ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("body", Text, nullable=False),
    Column("reply_to_telegram_id", BigInteger),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, server_default=text("0"), nullable=False),
    Column("parts_sent", Integer, server_default=text("0"), nullable=False),
    Column("last_error", Text),
    Column("next_attempt_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("delivered_at", UTCDateTime()),
    CheckConstraint(f"kind IN ({_sql_list(OUTBOX_KINDS)})", name="kind_known"),
    CheckConstraint(f"state IN ({_sql_list(OUTBOX_STATES)})", name="state_known"),
    Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
    Index("ix_outbox_task_id", "task_id"),
    sqlite_autoincrement=True,
)


# Every Telegram message the bridge posted or received in a chat: the journal.
#
# Unique on (chat, Telegram message id), so a redelivered update is stored once. Inbound
# messages from unknown senders are kept without their text (``accepted`` false).
telegram_messages = Table(
    "telegram_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("chat_id", BigInteger, nullable=False),
    Column("telegram_message_id", BigInteger, nullable=False),
    Column("direction", String(8), nullable=False),
    Column("task_id", String(36), ForeignKey("tasks.id", ondelete="SET NULL")),
    Column("outbox_id", Integer, ForeignKey("outbox.id", ondelete="SET NULL")),
    Column("part", Integer),
    Column("from_id", BigInteger),
    Column("reply_to_telegram_id", BigInteger),
    Column("text", Text),
    Column("accepted", Boolean, nullable=False),
    Column("processed_at", UTCDateTime()),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("lease_epoch", Integer),  # the poller lease's, when posted
    CheckConstraint("direction IN ('out', 'in')", name="direction_known"),
    UniqueConstraint("chat_id", "telegram_message_id"),
    Index("ix_telegram_messages_task_id", "task_id"),
    # The parts of a delivery already posted, asked before posting each part: a seek.
    Index("ix_telegram_messages_outbox_id_part", "outbox_id", "part"),
    # The inbound messages not yet acted on, asked at every lease renewal: only those rows.
    Index(UNPROCESSED_INDEX, "id", sqlite_where=text(UNPROCESSED_SQL)),
    sqlite_autoincrement=True,
)


# A named lease: which process holds a singleton job (the Telegram poller) and until when.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("acquired_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    # Incremented each time a new holder takes the lease: stamped on every delivery, so a
    # message posted twice by two holders shows which holder posted which copy.
    Column("epoch", Integer, server_default=text("0"), nullable=False),
    # The holder's view of the service it talks to (the Telegram Bot API), for other processes.
    Column("health", String(32)),
    Column("last_ok_at", UTCDateTime()),
    Column("last_error", Text),
    Column("error_since", UTCDateTime()),
)


# A client registered through Dynamic Client Registration (claude.ai, a desktop client).
oauth_clients = Table(
    "oauth_clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("client_name", Text),
    # The registration as JSON. A confidential client's secret is inside, as issued: the SDK's
    # client authentication compares it directly. It is worthless without the owner's consent.
    Column("info", Text, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
)


# An authorization request waiting on the owner's consent page.
oauth_requests = Table(
    "oauth_requests",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column(
        "client_id",
        String(64),
        ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("params", Text, nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)


# An authorization code, stored hashed; single use, bound to client, redirect and PKCE.
oauth_codes = Table(
    "oauth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column(
        "client_id",
        String(64),
        ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("family_id", String(36), nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("redirect_uri_explicit", Boolean, nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("resource", Text),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
)


# An access or refresh token, stored hashed. A family is every token grown from one code.
oauth_tokens = Table(
    "oauth_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column(
        "client_id",
        String(64),
        ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("family_id", String(36), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("resource", Text),
    Column("expires_at", UTCDateTime(), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("used_at", UTCDateTime()),
    Column("revoked_at", UTCDateTime()),
    CheckConstraint("kind IN ('access', 'refresh')", name="kind_known"),
    Index("ix_oauth_tokens_family_id", "family_id"),
    Index("ix_oauth_tokens_client_id", "client_id"),
)


# The single owner: the consent passphrase (scrypt) and the wrong-passphrase lockout.
owner = Table(
    "owner",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("passphrase_hash", Text),
    Column("failed_attempts", Integer, server_default=text("0"), nullable=False),
    Column("locked_until", UTCDateTime()),
    Column("updated_at", UTCDateTime(), nullable=False),
)


# When each target's agent was last seen (any inbound message or agent API call).
agent_presence = Table(
    "agent_presence",
    metadata,
    Column("target", String(100), primary_key=True),
    Column("last_seen_at", UTCDateTime(), nullable=False),
)


# A signed-in session of the owner's console: only the SHA-256 of its cookie is stored.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("expires_at", UTCDateTime(), nullable=False),
    Index("ix_console_sessions_expires_at", "expires_at"),
)


# Which database this is: one row, a random id made by migration 0015. A command compares it with
# the running server's (GET /targets) to tell that both read the same database.
database_identity = Table(
    "database_identity",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("created_at", UTCDateTime(), nullable=False),
)


# How many rows of a kind there are, kept by triggers (migration 0011) in the transaction
# that inserts, changes or deletes them: ``queue_status`` reads these few rows instead of
# counting the whole history.
#
# ``kind`` 'tasks': per (target, status); 'updates': per target ('' for updates of no task);
# 'ignored': inbound messages not accepted ('', '').
queue_counts = Table(
    "queue_counts",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("target", String(100), primary_key=True),
    Column("status", String(20), primary_key=True),
    Column("n", BigInteger, nullable=False),
)


def declare_postgresql_options() -> None:
    """Add what only PostgreSQL reads of the schema: the WHERE of the partial indexes, and the
    index of PostgreSQL's alone (:data:`ID_PATTERN_INDEX`).

    Not declared with the table: naming a ``postgresql_`` option makes SQLAlchemy import its
    whole PostgreSQL dialect to check it, 0.02 s of a SQLite server's cold start. A PostgreSQL
    engine (``create_engine``) and alembic (``migrations/env.py``) call this; again is harmless.
    """
    for index in tasks.indexes:
        if index.name == OPEN_CONTENT_INDEX:
            index.dialect_options["postgresql"]["where"] = text(OPEN_STATUS_SQL)
        if index.name == CLAIMS_INDEX:
            index.dialect_options["postgresql"]["where"] = text(CLAIMED_SQL)
    for index in telegram_messages.indexes:
        if index.name == UNPROCESSED_INDEX:
            index.dialect_options["postgresql"]["where"] = text(UNPROCESSED_SQL)
    if not any(index.name == ID_PATTERN_INDEX for index in tasks.indexes):
        Index(
            ID_PATTERN_INDEX,
            tasks.c.id,
            postgresql_ops={"id": "varchar_pattern_ops"},
            info={POSTGRESQL_ONLY: True},
        )
