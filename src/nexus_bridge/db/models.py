"""The schema, declared once; alembic migrations must match it (a test runs ``alembic check``)."""

from __future__ import annotations

from datetime import datetime
from typing import Final, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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

OUTBOX_KINDS: Final = ("task", "reply", "cancel")
OUTBOX_STATES: Final = ("pending", "delivered", "failed", "skipped")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TaskRow(Base):
    """A task queued for an agent."""

    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    target: Mapped[str] = mapped_column(String(100))
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    status_reason: Mapped[str | None] = mapped_column(Text)
    urgent: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The lease of a claim over the direct agent API: set while acknowledged by next_task.
    claim_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The agent's session for the task (set by the agent, e.g. Claude Code's session id).
    agent_session: Mapped[str | None] = mapped_column(String(MAX_AGENT_SESSION_CHARS))

    __table_args__ = (
        CheckConstraint(KNOWN_STATUS_SQL, name="status_known"),
        # Dedup lives here: at most one open task per (target, content). Never read-then-write.
        Index(
            OPEN_CONTENT_INDEX,
            "target",
            "content_hash",
            unique=True,
            sqlite_where=text(OPEN_STATUS_SQL),
            postgresql_where=text(OPEN_STATUS_SQL),
        ),
        # created_at too: a target's tasks in one status come newest (or oldest) first off the
        # index, without sorting that status's whole history.
        Index("ix_tasks_target_status_created_at", "target", "status", "created_at"),
        Index("ix_tasks_created_at", "created_at"),
        Index("ix_tasks_claim_expires_at", "claim_expires_at"),
        Index("ix_tasks_status_created_at", "status", "created_at"),
    )


class UpdateRow(Base):
    """One entry of the update stream: a status change or agent text. ``seq`` is the cursor."""

    __tablename__ = "updates"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("tasks.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(KNOWN_KIND_SQL, name="kind_known"),
        Index("ix_updates_task_id_seq", "task_id", "seq"),
        Index("ix_updates_created_at", "created_at"),
        # AUTOINCREMENT: a seq is never reused, even after rows are deleted, so cursors stay valid.
        {"sqlite_autoincrement": True},
    )


class PullCursorRow(Base):
    """Where each authenticated client's ``pull_updates`` left off."""

    __tablename__ = "pull_cursors"

    identity: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OutboxRow(Base):
    """Something to post to the agent's chat: a task, or the client's answer to a question.

    Committed with the task (or the answer) and posted by the delivery worker, so nothing is
    lost if the process dies before Telegram has it.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36), ForeignKey("tasks.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)
    reply_to_telegram_id: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    parts_sent: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(f"kind IN ({_sql_list(OUTBOX_KINDS)})", name="kind_known"),
        CheckConstraint(f"state IN ({_sql_list(OUTBOX_STATES)})", name="state_known"),
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
        Index("ix_outbox_task_id", "task_id"),
        {"sqlite_autoincrement": True},
    )


class TelegramMessageRow(Base):
    """Every Telegram message the bridge posted or received in a chat: the journal.

    Unique on (chat, Telegram message id), so a redelivered update is stored once. Inbound
    messages from unknown senders are kept without their text (``accepted`` false).
    """

    __tablename__ = "telegram_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    chat_id: Mapped[int] = mapped_column(BigInteger)
    telegram_message_id: Mapped[int] = mapped_column(BigInteger)
    direction: Mapped[str] = mapped_column(String(8))
    task_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("tasks.id", ondelete="SET NULL")
    )
    outbox_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("outbox.id", ondelete="SET NULL")
    )
    part: Mapped[int | None] = mapped_column(Integer)
    from_id: Mapped[int | None] = mapped_column(BigInteger)
    reply_to_telegram_id: Mapped[int | None] = mapped_column(BigInteger)
    text: Mapped[str | None] = mapped_column(Text)
    accepted: Mapped[bool] = mapped_column(Boolean)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    lease_epoch: Mapped[int | None] = mapped_column(Integer)  # the poller lease's, when posted

    __table_args__ = (
        CheckConstraint("direction IN ('out', 'in')", name="direction_known"),
        UniqueConstraint("chat_id", "telegram_message_id"),
        Index("ix_telegram_messages_task_id", "task_id"),
        {"sqlite_autoincrement": True},
    )


class LeaseRow(Base):
    """A named lease: which process holds a singleton job (the Telegram poller) and until when."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Incremented each time a new holder takes the lease: stamped on every delivery, so a
    # message posted twice by two holders shows which holder posted which copy.
    epoch: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The holder's view of the service it talks to (the Telegram Bot API), for other processes.
    health: Mapped[str | None] = mapped_column(String(32))
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    error_since: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OAuthClientRow(Base):
    """A client registered through Dynamic Client Registration (claude.ai, a desktop client)."""

    __tablename__ = "oauth_clients"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_name: Mapped[str | None] = mapped_column(Text)
    # The registration as JSON. A confidential client's secret is inside, as issued: the SDK's
    # client authentication compares it directly. It is worthless without the owner's consent.
    info: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OAuthRequestRow(Base):
    """An authorization request waiting on the owner's consent page."""

    __tablename__ = "oauth_requests"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("oauth_clients.client_id", ondelete="CASCADE")
    )
    params: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class OAuthCodeRow(Base):
    """An authorization code, stored hashed; single use, bound to client, redirect and PKCE."""

    __tablename__ = "oauth_codes"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("oauth_clients.client_id", ondelete="CASCADE")
    )
    family_id: Mapped[str] = mapped_column(String(36))
    redirect_uri: Mapped[str] = mapped_column(Text)
    redirect_uri_explicit: Mapped[bool] = mapped_column(Boolean)
    code_challenge: Mapped[str] = mapped_column(String(128))
    scopes: Mapped[str] = mapped_column(Text)
    resource: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class OAuthTokenRow(Base):
    """An access or refresh token, stored hashed. A family is every token grown from one code."""

    __tablename__ = "oauth_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    client_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("oauth_clients.client_id", ondelete="CASCADE")
    )
    family_id: Mapped[str] = mapped_column(String(36))
    scopes: Mapped[str] = mapped_column(Text)
    resource: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("kind IN ('access', 'refresh')", name="kind_known"),
        Index("ix_oauth_tokens_family_id", "family_id"),
        Index("ix_oauth_tokens_client_id", "client_id"),
    )


class OwnerRow(Base):
    """The single owner: the consent passphrase (scrypt) and the wrong-passphrase lockout."""

    __tablename__ = "owner"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    passphrase_hash: Mapped[str | None] = mapped_column(Text)
    failed_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AgentPresenceRow(Base):
    """When each target's agent was last seen (any inbound message or agent API call)."""

    __tablename__ = "agent_presence"

    target: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ConsoleSessionRow(Base):
    """A signed-in session of the owner's console: only the SHA-256 of its cookie is stored."""

    __tablename__ = "console_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_console_sessions_expires_at", "expires_at"),)


class QueueCountRow(Base):
    """How many rows of a kind there are, kept by triggers (migration 0011) in the transaction
    that inserts, changes or deletes them: ``queue_status`` reads these few rows instead of
    counting the whole history.

    ``kind`` 'tasks': per (target, status); 'updates': per target ('' for updates of no task);
    'ignored': inbound messages not accepted ('', '').
    """

    __tablename__ = "queue_counts"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    target: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(20), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


tasks = cast(Table, TaskRow.__table__)
updates = cast(Table, UpdateRow.__table__)
pull_cursors = cast(Table, PullCursorRow.__table__)
outbox = cast(Table, OutboxRow.__table__)
telegram_messages = cast(Table, TelegramMessageRow.__table__)
leases = cast(Table, LeaseRow.__table__)
oauth_clients = cast(Table, OAuthClientRow.__table__)
oauth_requests = cast(Table, OAuthRequestRow.__table__)
oauth_codes = cast(Table, OAuthCodeRow.__table__)
oauth_tokens = cast(Table, OAuthTokenRow.__table__)
owner = cast(Table, OwnerRow.__table__)
agent_presence = cast(Table, AgentPresenceRow.__table__)
console_sessions = cast(Table, ConsoleSessionRow.__table__)
queue_counts = cast(Table, QueueCountRow.__table__)
