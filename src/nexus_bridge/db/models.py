"""The schema, declared once; alembic migrations must match it (a test runs ``alembic check``)."""

from __future__ import annotations

from datetime import datetime
from typing import Final, cast

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from nexus_bridge.db.types import UTCDateTime
from nexus_bridge.domain import OPEN_STATUSES, TaskStatus, UpdateKind

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
OPEN_CONTENT_INDEX: Final = "uq_messages_open_content"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class MessageRow(Base):
    """A task queued for an agent."""

    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    target: Mapped[str] = mapped_column(String(100))
    content: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    status_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

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
        Index("ix_messages_target_status", "target", "status"),
        Index("ix_messages_created_at", "created_at"),
    )


class UpdateRow(Base):
    """One entry of the update stream: a status change or agent text. ``seq`` is the cursor."""

    __tablename__ = "updates"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    message_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("messages.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(KNOWN_KIND_SQL, name="kind_known"),
        Index("ix_updates_message_id_seq", "message_id", "seq"),
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


messages = cast(Table, MessageRow.__table__)
updates = cast(Table, UpdateRow.__table__)
pull_cursors = cast(Table, PullCursorRow.__table__)
