"""The one place that issues SQL (its OAuth half is oauth_store.py, reached as ``tx.oauth``).
Driver errors are translated to domain errors here."""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, closing, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from sqlalchemy import (
    Insert,
    Row,
    Select,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement, Executable

from nexus_bridge.constants import PRESENCE_RESOLUTION_SECONDS, SHORT_ID_CHARS
from nexus_bridge.db.engine import WRITE_OPTION, create_writer_engine, sqlite_file
from nexus_bridge.db.models import (
    OPEN_CONTENT_INDEX,
    agent_presence,
    console_sessions,
    database_identity,
    leases,
    outbox,
    pull_cursors,
    queue_counts,
    tasks,
    telegram_messages,
    updates,
)
from nexus_bridge.db.oauth_store import OAuthStore
from nexus_bridge.db.types import UTCDateTime, format_timestamp
from nexus_bridge.db.wakeups import ChangeFeed, change_feed
from nexus_bridge.db.writer import GROUP_FINISHERS, SqliteWriter, WalKeeper, WriteSession
from nexus_bridge.domain import (
    HANDED_OVER_STATUSES,
    MAX_ID_CHARS,
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    InboundMessage,
    Lease,
    OutboxItem,
    OutboxKind,
    OutboxState,
    PruneReport,
    Task,
    TaskStatus,
    TaskUpdate,
    UpdateKind,
)
from nexus_bridge.errors import (
    DatabaseBusy,
    DatabaseUnreachable,
    DatabaseUnwritable,
    DuplicateTask,
    InvalidInput,
    NexusBridgeError,
    TaskNotFound,
)

T = TypeVar("T")
logger = logging.getLogger(__name__)

# Every PostgreSQL write transaction takes this advisory lock, so update rows commit in `seq`
# order and a cursor can never skip a row that committed late. SQLite writers are serial anyway.
_PG_WRITE_LOCK: Final = 0x6E6578  # "nex"
# The kinds of queue_counts rows (kept by the triggers of migration 0010).
COUNT_TASKS: Final = "tasks"
COUNT_UPDATES: Final = "updates"
COUNT_IGNORED: Final = "ignored"
# What a task id (a UUID) or its prefix can be made of; anything else matches no task.
_ID_CHARS: Final = re.compile(rf"[0-9A-Za-z-]{{1,{MAX_ID_CHARS}}}")


def latest_agent_updates(task_ids: Sequence[str]) -> Select[tuple[str, datetime | None]]:
    """Each task's id with the time of its latest agent update (None if it has none).

    One index probe per task, read backwards along (task_id, seq) and stopping at the first
    agent update: a task with 10,000 updates costs what one with 10 does (writers are
    serialised and stamp rows in seq order, so the latest seq is the latest time). A
    ``max(created_at) … GROUP BY`` would read every update of every task.
    """
    latest = (
        select(updates.c.created_at)
        .where(updates.c.task_id == tasks.c.id, updates.c.kind == UpdateKind.AGENT.value)
        .order_by(updates.c.seq.desc())
        .limit(1)
        .scalar_subquery()
    )
    return select(tasks.c.id.label("task_id"), latest.label("latest")).where(
        tasks.c.id.in_(list(task_ids))
    )


# Read at most this many tasks of any target for a short id before asking for the target's only.
_MAX_PREFIX_MATCHES: Final = 64


class HotInsert:
    """An INSERT of a whole row, built once from the model and compiled once per dialect.

    In the writer's thread it runs straight on the ``sqlite3`` cursor with the columns' own bind
    processors (a few µs, where SQLAlchemy's per-call execution costs ~40 µs); elsewhere it is an
    ordinary Core statement.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.statement = insert(table)
        self._compiled: dict[tuple[str, tuple[str, ...]], _CompiledInsert] = {}

    def compiled(self, dialect: Dialect, keys: tuple[str, ...]) -> _CompiledInsert:
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
            order = tuple(compiled.positiontup or ())
            if set(order) != set(keys):  # pragma: no cover - a whole-row insert names them all
                raise RuntimeError(f"cannot prepare {self.table.name} insert for {keys}")
            processors = tuple(
                (position, processor)
                for position, key in enumerate(order)
                if (processor := _bind_processor(self.table.c[key].type, dialect)) is not None
            )
            found = _CompiledInsert(str(compiled), order, processors)
            self._compiled[(dialect.name, keys)] = found
        return found


def _bind_timestamp(value: Any) -> Any:
    return format_timestamp(value) if isinstance(value, datetime) else value


def _bind_processor(column_type: Any, dialect: Dialect) -> Callable[[Any], Any] | None:
    """The column's bind processor; a timestamp's without SQLAlchemy's wrapping (the hot path
    binds five per task)."""
    if isinstance(column_type, UTCDateTime):
        return _bind_timestamp  # what UTCDateTime.process_bind_param does, in one call
    return column_type._cached_bind_processor(dialect)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class _CompiledInsert:
    sql: str
    keys: tuple[str, ...]
    # (position, bind processor) of the columns that have one (timestamps, booleans).
    processors: tuple[tuple[int, Callable[[Any], Any]], ...]

    def parameters(self, values: Mapping[str, Any]) -> list[Any]:
        bound = [values[key] for key in self.keys]
        for position, process in self.processors:
            bound[position] = process(bound[position])
        return bound

    @property
    def rows_per_statement(self) -> int:
        """The most rows one multi-row INSERT takes: a power of two (a few statement shapes,
        which SQLite keeps prepared) within 999 bound parameters (SQLite's limit before 3.32,
        and below every later one)."""
        return 1 << ((999 // len(self.keys)).bit_length() - 1)


@functools.lru_cache(maxsize=256)
def _multi_row_sql(sql: str, rows: int) -> str:
    """``INSERT INTO t (…) VALUES (?, …)`` for ``rows`` rows in one statement."""
    head, values = sql.rsplit(" VALUES ", 1)
    return f"{head} VALUES {', '.join([values] * rows)}"


class _GroupInserts:
    """The rows that a group of writes in the writer thread inserted without wanting their keys
    back (a queued task, its delivery, its first update), run as one multi-row INSERT per table:
    before any other statement of the group, and at its end (a finisher: see
    :data:`~nexus_bridge.db.writer.GROUP_FINISHERS`). A failure is kept and raised again at the
    end, so the group runs again, a savepoint per write, even if the write that met it went on."""

    __slots__ = ("_driver", "_failed", "_rows")

    def __init__(self, driver: sqlite3.Connection) -> None:
        self._driver = driver
        self._rows: dict[_CompiledInsert, list[list[Any]]] = {}
        self._failed: Exception | None = None

    def add(self, compiled: _CompiledInsert, parameters: list[Any]) -> None:
        self._rows.setdefault(compiled, []).append(parameters)

    def __call__(self) -> None:
        if self._failed is not None:
            raise self._failed
        rows, self._rows = self._rows, {}
        for compiled, table_rows in rows.items():
            start = 0
            while start < len(table_rows):  # in statements of 2**k rows
                left = len(table_rows) - start
                size = min(compiled.rows_per_statement, 1 << (left.bit_length() - 1))
                chunk = table_rows[start : start + size]
                start += size
                sql = _multi_row_sql(compiled.sql, size)
                parameters = [value for row in chunk for value in row]
                try:
                    self._driver.execute(sql, parameters)
                except sqlite3.Error as exc:
                    self._failed = DBAPIError.instance(sql, parameters, exc, sqlite3.Error)
                    raise self._failed from exc

    @classmethod
    def of(cls, connection: Connection, driver: sqlite3.Connection) -> _GroupInserts | None:
        """The group's own, made on first use; None when no group is running (a lone write, or
        a group run again a savepoint per write)."""
        finishers: list[Callable[[], None]] | None = connection.info.get(GROUP_FINISHERS)
        if finishers is None:
            return None
        for finisher in finishers:
            if isinstance(finisher, cls):
                return finisher
        made = cls(driver)
        finishers.append(made)
        return made


# The hottest writes (enqueue, reply, cancel, an agent's report).
_INSERT_TASK: Final = HotInsert(tasks)
_INSERT_UPDATE: Final = HotInsert(updates)
_INSERT_OUTBOX: Final = HotInsert(outbox)


def _timestamp(value: datetime) -> Any:
    """A bound timestamp in its stored form, where SQLAlchemy cannot infer the column type
    (inside a CASE): without it the driver would write ``2026-11-29 19:03:00.350441``."""
    return literal(value, UTCDateTime())


def _task(row: Row[Any]) -> Task:
    return Task(
        id=row.id,
        target=row.target,
        content=row.content,
        status=TaskStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
        acknowledged_at=row.acknowledged_at,
        started_at=row.started_at,
        ended_at=row.ended_at,
        status_reason=row.status_reason,
        urgent=bool(row.urgent),
        claim_expires_at=row.claim_expires_at,
        agent_session=row.agent_session,
    )


def _outbox(row: Row[Any]) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        task_id=row.task_id,
        kind=OutboxKind(row.kind),
        body=row.body,
        reply_to_telegram_id=row.reply_to_telegram_id,
        state=OutboxState(row.state),
        attempts=row.attempts,
        parts_sent=row.parts_sent,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )


def _update(row: Row[Any]) -> TaskUpdate:
    return TaskUpdate(
        seq=row.seq,
        task_id=row.task_id,
        kind=UpdateKind(row.kind),
        content=row.content,
        created_at=row.created_at,
    )


def _is_open_content_violation(exc: IntegrityError) -> bool:
    text_of = str(exc.orig).lower()
    return OPEN_CONTENT_INDEX in text_of or (
        "unique" in text_of and "tasks.target" in text_of and "content_hash" in text_of
    )


@dataclass(frozen=True, slots=True)
class NewTask:
    """The fields of a task about to be inserted."""

    id: str
    target: str
    content: str
    content_hash: str
    created_at: datetime
    urgent: bool = False


def _task_values(new: NewTask) -> dict[str, Any]:
    return {
        "id": new.id,
        "target": new.target,
        "content": new.content,
        "content_hash": new.content_hash,
        "status": TaskStatus.PENDING.value,
        "status_reason": None,
        "urgent": new.urgent,
        "created_at": new.created_at,
        "updated_at": new.created_at,
    }


def _new_task(new: NewTask) -> Task:
    """The task that :func:`_task_values` inserts, as read back."""
    return Task(
        id=new.id,
        target=new.target,
        content=new.content,
        status=TaskStatus.PENDING,
        created_at=new.created_at,
        updated_at=new.created_at,
        acknowledged_at=None,
        started_at=None,
        ended_at=None,
        status_reason=None,
        urgent=new.urgent,
    )


def _update_values(
    task_id: str | None, kind: UpdateKind, content: str, at: datetime, status: TaskStatus | None
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "kind": kind.value,
        "status": status.value if status else None,
        "content": content,
        "created_at": at,
    }


def _outbox_values(
    task_id: str, kind: OutboxKind, body: str, reply_to_telegram_id: int | None, at: datetime
) -> dict[str, Any]:
    return {
        "task_id": task_id,
        "kind": kind.value,
        "body": body,
        "reply_to_telegram_id": reply_to_telegram_id,
        "state": OutboxState.PENDING.value,
        "attempts": 0,
        "parts_sent": 0,
        "next_attempt_at": at,
        "created_at": at,
    }


class ImmediateConnection:
    """A synchronous connection behind :class:`StoreTransaction`'s awaits: every ``execute``
    returns at once, so a write runs whole in the writer's thread (see :mod:`.writer`)."""

    __slots__ = ("_conn", "_driver", "_group", "dialect")

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        driver = connection.connection.driver_connection
        if driver is None:  # pragma: no cover - an open connection has its driver
            raise RuntimeError("no sqlite3 connection to write on")
        self._driver: sqlite3.Connection = driver
        self._group = _GroupInserts.of(connection, driver)
        self.dialect = connection.dialect

    async def execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> CursorResult[*tuple[Any, ...]]:
        # What the group put off runs first (the writer's before_cursor_execute hook).
        return self._conn.execute(statement, parameters)

    def insert_later(self, hot: HotInsert, values: Mapping[str, Any]) -> bool:
        """In a group, add the row to the group's multi-row INSERT of its table (it runs before
        the group's next other statement, or at its end) and say True; else do nothing and say
        False."""
        if self._group is None:
            return False
        compiled = hot.compiled(self.dialect, tuple(values))
        self._group.add(compiled, compiled.parameters(values))
        return True

    def insert(self, hot: HotInsert, values: Mapping[str, Any]) -> int:
        """Run ``hot`` on the sqlite3 cursor; the new row's rowid. Driver errors come wrapped
        as SQLAlchemy's, as from :meth:`execute`."""
        if self._group is not None:
            self._group()  # what the group put off runs first: statements keep their order
        compiled = hot.compiled(self.dialect, tuple(values))
        parameters = compiled.parameters(values)
        try:
            return self._driver.execute(compiled.sql, parameters).lastrowid or 0
        except sqlite3.Error as exc:
            raise DBAPIError.instance(compiled.sql, parameters, exc, sqlite3.Error) from exc


class SessionConnection:
    """The writer's connection, reached from the event loop one statement at a time (a
    :class:`~nexus_bridge.db.writer.WriteSession`), behind :class:`StoreTransaction`."""

    __slots__ = ("_session", "dialect")

    def __init__(self, session: WriteSession, dialect: Dialect) -> None:
        self._session = session
        self.dialect = dialect

    async def execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> CursorResult[*tuple[Any, ...]]:
        def run(connection: Connection) -> CursorResult[*tuple[Any, ...]]:
            result = connection.execute(statement, parameters)
            if result.returns_rows:
                # Read every row here, in the writer's thread; the caller gets them buffered
                # (a Result with the same row API; rowcount and keys matter only without rows).
                return cast("CursorResult[*tuple[Any, ...]]", result.freeze()())
            return result

        return await self._session.run(run)


class StoreTransaction:
    """The queries of one transaction. Obtain it from :meth:`Store.read`, :meth:`Store.write`
    or :meth:`Store.commit`."""

    def __init__(
        self, connection: AsyncConnection | ImmediateConnection | SessionConnection
    ) -> None:
        self._conn = connection
        self._dialect = connection.dialect.name

    @functools.cached_property
    def oauth(self) -> OAuthStore:
        """The OAuth clients, consent requests, codes, tokens and owner (``db/oauth_store.py``)."""
        # OAuthStore only awaits execute(), which every kind of connection here offers alike.
        return OAuthStore(cast("AsyncConnection", self._conn))

    async def _insert(self, hot: HotInsert, values: Mapping[str, Any]) -> int:
        """Insert one row; its integer primary key (a text key: whatever the driver reports)."""
        if isinstance(self._conn, ImmediateConnection):
            return self._conn.insert(hot, values)
        result = await self._conn.execute(hot.statement, values)
        # The primary key comes back without a RETURNING fetch on SQLite (lastrowid).
        key = result.inserted_primary_key
        if key is None:  # pragma: no cover - every supported driver reports it
            raise RuntimeError(f"the database did not report the new {hot.table.name} row's key")
        return key[0]  # type: ignore[no-any-return]

    def _insert_ignoring_duplicates(self, table: Table) -> Insert:
        """INSERT ... ON CONFLICT DO NOTHING, which keeps a PostgreSQL transaction usable."""
        if self._dialect == "postgresql":
            # Imported here: the PostgreSQL dialect costs a SQLite server 0.1 s of its cold start.
            from sqlalchemy.dialects.postgresql import insert as postgresql_insert

            return postgresql_insert(table).on_conflict_do_nothing()
        return sqlite_insert(table).on_conflict_do_nothing()

    # --- tasks -----------------------------------------------------------------------------

    async def queue_task(self, new: NewTask, *, delivery: bool, first_update: str) -> Task:
        """Insert a pending task, its delivery when ``delivery`` (the outbox row that takes it
        to the agent's chat) and its first ``status`` update, ``first_update``.

        In a group of writes in the writer's thread, the three rows join the group's multi-row
        INSERTs, and a duplicate fails the group, which runs again with a savepoint per write:
        this raises then.

        Raises:
            DuplicateTask: an open task with the same target and content exists.
        """
        at = new.created_at
        outbox_row = _outbox_values(new.id, OutboxKind.TASK, new.content, None, at)
        update_row = _update_values(new.id, UpdateKind.STATUS, first_update, at, TaskStatus.PENDING)
        conn = self._conn
        if isinstance(conn, ImmediateConnection) and conn.insert_later(
            _INSERT_TASK, _task_values(new)
        ):
            if delivery:
                conn.insert_later(_INSERT_OUTBOX, outbox_row)
            conn.insert_later(_INSERT_UPDATE, update_row)
            return _new_task(new)
        task = await self.insert_task(new)
        if delivery:
            await self._insert(_INSERT_OUTBOX, outbox_row)
        await self._insert(_INSERT_UPDATE, update_row)
        return task

    async def insert_task(self, new: NewTask) -> Task:
        """Insert a pending task.

        Raises:
            DuplicateTask: an open task with the same target and content exists.
        """
        try:
            await self._insert(_INSERT_TASK, _task_values(new))
        except IntegrityError as exc:
            if _is_open_content_violation(exc):
                raise DuplicateTask() from exc
            raise
        return _new_task(new)

    async def open_task_with_hash(self, target: str, content_hash: str) -> Task | None:
        row = (
            await self._conn.execute(
                select(tasks).where(
                    tasks.c.target == target,
                    tasks.c.content_hash == content_hash,
                    tasks.c.status.in_([s.value for s in OPEN_STATUSES]),
                )
            )
        ).first()
        return _task(row) if row else None

    async def get_task(self, task_id: str) -> Task:
        """The task with this id, or the only task whose id starts with it (8+ characters).

        Raises:
            TaskNotFound: no task matches.
            InvalidInput: a short id matches several tasks.
        """
        if not _ID_CHARS.fullmatch(task_id):
            # Never sent to the database: no giant LIKE pattern, no NUL that PostgreSQL refuses.
            raise TaskNotFound(task_id)
        row = (await self._conn.execute(select(tasks).where(tasks.c.id == task_id))).first()
        if row is not None:
            return _task(row)
        if len(task_id) >= SHORT_ID_CHARS and "%" not in task_id and "_" not in task_id:
            query = select(tasks).where(*self._id_prefix(task_id))
            rows = (await self._conn.execute(query.limit(2))).all()
            if len(rows) == 1:
                return _task(rows[0])
            if len(rows) > 1:
                raise InvalidInput(
                    f"the short id {task_id!r} matches several tasks; use the full id"
                )
        raise TaskNotFound(task_id)

    async def task_of_target(self, target: str, task_id: str) -> Task | None:
        """``target``'s task with this id, or its only task whose id starts with it (8+
        characters); None if there is none. Other targets' tasks are not seen at all.

        Raises:
            InvalidInput: a short id matches several of the target's tasks.
        """
        if not _ID_CHARS.fullmatch(task_id):
            return None  # never sent to the database, as in get_task
        of_target = tasks.c.target == target
        row = (
            await self._conn.execute(select(tasks).where(tasks.c.id == task_id, of_target))
        ).first()
        if row is not None:
            return _task(row)
        if len(task_id) < SHORT_ID_CHARS or "%" in task_id or "_" in task_id:
            return None
        # Every target's matches, then this target's: a condition on the target would make
        # SQLite walk the target's index (its whole history) instead of the id's range. An id
        # prefix of 8+ characters matches almost nothing, so the read is tiny.
        matches = (
            await self._conn.execute(
                select(tasks).where(*self._id_prefix(task_id)).limit(_MAX_PREFIX_MATCHES)
            )
        ).all()
        rows = [row for row in matches if row.target == target]
        if len(matches) == _MAX_PREFIX_MATCHES:  # a crowded prefix: ask for this target's alone
            query = select(tasks).where(*self._id_prefix(task_id), of_target).limit(2)
            rows = list((await self._conn.execute(query)).all())
        if len(rows) > 1:
            raise InvalidInput(f"the short id {task_id!r} matches several tasks; use the full id")
        return _task(rows[0]) if rows else None

    def _id_prefix(self, prefix: str) -> tuple[ColumnElement[bool], ...]:
        """Conditions for the tasks whose id starts with ``prefix`` (no ``%`` or ``_`` in it).

        On SQLite also the same rows as a range of the primary key (every id character sorts
        below DEL), so SQLite seeks instead of scanning; PostgreSQL's collations need not sort
        byte-wise, so there the LIKE alone decides.
        """
        like = tasks.c.id.like(f"{prefix}%")
        if self._dialect != "sqlite":
            return (like,)
        return (like, tasks.c.id >= prefix, tasks.c.id < f"{prefix}\x7f")

    async def set_status(
        self,
        task: Task,
        new_status: TaskStatus,
        *,
        at: datetime,
        reason: str | None,
        stamps: Mapping[str, datetime],
        claim_expires_at: datetime | None = None,
    ) -> bool:
        """Move ``task`` to ``new_status`` if it is still in ``task.status`` (compare-and-set).

        The claim's lease is set to ``claim_expires_at`` (cleared by every other move).
        """
        result = await self._conn.execute(
            update(tasks)
            .where(tasks.c.id == task.id, tasks.c.status == task.status.value)
            .values(
                status=new_status.value,
                status_reason=reason,
                updated_at=at,
                claim_expires_at=claim_expires_at,
                **stamps,
            )
        )
        return bool(result.rowcount == 1)

    async def renew_claim(self, task_id: str, *, until: datetime) -> bool:
        """Extend the lease of a claimed (acknowledged) task; False if it holds no lease."""
        result = await self._conn.execute(
            update(tasks)
            .where(
                tasks.c.id == task_id,
                tasks.c.status == TaskStatus.ACKNOWLEDGED.value,
                tasks.c.claim_expires_at.is_not(None),
            )
            .values(claim_expires_at=until)
        )
        return bool(result.rowcount == 1)

    async def set_agent_session(self, task_id: str, session: str) -> None:
        """Record the agent's session for the task (replacing any earlier one)."""
        await self._conn.execute(
            update(tasks).where(tasks.c.id == task_id).values(agent_session=session)
        )

    async def expired_claims(self, now: datetime, *, target: str | None = None) -> list[Task]:
        """Claimed (acknowledged) tasks whose lease ran out before ``now``, oldest first."""
        query = select(tasks).where(
            tasks.c.status == TaskStatus.ACKNOWLEDGED.value,
            tasks.c.claim_expires_at.is_not(None),
            tasks.c.claim_expires_at <= now,
        )
        if target is not None:
            query = query.where(tasks.c.target == target)
        rows = await self._conn.execute(query.order_by(tasks.c.created_at, tasks.c.id))
        return [_task(row) for row in rows.all()]

    async def list_tasks(
        self,
        *,
        status: TaskStatus | None,
        target: str | None,
        limit: int,
        before: Task | None,
    ) -> list[Task]:
        """Newest first; ``before`` continues after that task."""
        query = select(tasks)
        if status is not None:
            query = query.where(tasks.c.status == status.value)
        if target is not None:
            query = query.where(tasks.c.target == target)
        if before is not None:
            query = query.where(
                or_(
                    tasks.c.created_at < before.created_at,
                    and_(tasks.c.created_at == before.created_at, tasks.c.id < before.id),
                )
            )
        query = query.order_by(tasks.c.created_at.desc(), tasks.c.id.desc()).limit(limit)
        return [_task(row) for row in (await self._conn.execute(query)).all()]

    async def tasks_with_status(self, target: str, statuses: Sequence[TaskStatus]) -> list[Task]:
        rows = await self._conn.execute(
            select(tasks).where(
                tasks.c.target == target,
                tasks.c.status.in_([s.value for s in statuses]),
            )
        )
        return [_task(row) for row in rows.all()]

    async def open_tasks(self, target: str) -> list[Task]:
        """The target's open tasks, oldest first."""
        rows = await self._conn.execute(
            select(tasks)
            .where(
                tasks.c.target == target,
                tasks.c.status.in_([s.value for s in OPEN_STATUSES]),
            )
            .order_by(tasks.c.created_at, tasks.c.id)
        )
        return [_task(row) for row in rows.all()]

    async def count_by_status(self, target: str | None) -> dict[TaskStatus, int]:
        """Tasks per status, from the maintained counts (a few rows, whatever the history)."""
        query = (
            select(queue_counts.c.status, func.sum(queue_counts.c.n))
            .where(queue_counts.c.kind == COUNT_TASKS)
            .group_by(queue_counts.c.status)
        )
        if target is not None:
            query = query.where(queue_counts.c.target == target)
        counts = {status: 0 for status in TaskStatus}
        for status, count in (await self._conn.execute(query)).all():
            counts[TaskStatus(status)] = int(count)
        return counts

    async def current_task(self, target: str | None) -> Task | None:
        """The oldest in-progress task: what the agent is working on."""
        query = select(tasks).where(tasks.c.status == TaskStatus.IN_PROGRESS.value)
        if target is not None:
            query = query.where(tasks.c.target == target)
        row = (
            await self._conn.execute(query.order_by(tasks.c.created_at, tasks.c.id).limit(1))
        ).first()
        return _task(row) if row else None

    # --- updates ---------------------------------------------------------------------------

    async def insert_update(
        self,
        *,
        task_id: str | None,
        kind: UpdateKind,
        content: str,
        at: datetime,
        status: TaskStatus | None = None,
    ) -> TaskUpdate:
        seq = await self._insert(_INSERT_UPDATE, _update_values(task_id, kind, content, at, status))
        return TaskUpdate(seq=seq, task_id=task_id, kind=kind, content=content, created_at=at)

    async def list_updates(
        self,
        *,
        after_seq: int | None = None,
        since: datetime | None = None,
        task_id: str | None = None,
        limit: int,
        newest_first: bool = False,
        before_seq: int | None = None,
    ) -> list[TaskUpdate]:
        query = select(updates)
        if after_seq is not None:
            query = query.where(updates.c.seq > after_seq)
        if before_seq is not None:
            query = query.where(updates.c.seq < before_seq)
        if since is not None:
            # Start from the first seq after `since`, found on the created_at index, so the cost
            # does not grow with the history before it. Exact because writers are serialised and
            # stamp rows in seq order.
            first = (
                select(updates.c.seq)
                .where(updates.c.created_at > since)
                .order_by(updates.c.created_at, updates.c.seq)
                .limit(1)
                .scalar_subquery()
            )
            query = query.where(updates.c.seq >= first, updates.c.created_at > since)
        if task_id is not None:
            query = query.where(updates.c.task_id == task_id)
        order = updates.c.seq.desc() if newest_first else updates.c.seq
        rows = (await self._conn.execute(query.order_by(order).limit(limit))).all()
        return [_update(row) for row in rows]

    async def count_updates(self, target: str | None) -> int:
        """Update rows (of ``target``'s tasks), from the maintained counts."""
        return await self._maintained_count(COUNT_UPDATES, target)

    async def _maintained_count(self, kind: str, target: str | None) -> int:
        query = select(func.coalesce(func.sum(queue_counts.c.n), 0)).where(
            queue_counts.c.kind == kind
        )
        if target is not None:
            query = query.where(queue_counts.c.target == target)
        return int((await self._conn.execute(query)).scalar_one())

    async def last_seq(self) -> int:
        return int((await self._conn.execute(select(func.max(updates.c.seq)))).scalar() or 0)

    # --- pull cursors ----------------------------------------------------------------------

    async def get_cursor(self, identity: str) -> int | None:
        value = (
            await self._conn.execute(
                select(pull_cursors.c.position).where(pull_cursors.c.identity == identity)
            )
        ).scalar()
        return None if value is None else int(value)

    async def advance_cursor(self, identity: str, position: int, *, at: datetime) -> None:
        """Move the cursor forward to ``position`` (never backwards)."""
        moved = await self._conn.execute(
            update(pull_cursors)
            .where(pull_cursors.c.identity == identity, pull_cursors.c.position < position)
            .values(position=position, updated_at=at)
        )
        if moved.rowcount == 0:
            exists = await self.get_cursor(identity)
            if exists is None:
                await self._conn.execute(
                    insert(pull_cursors).values(identity=identity, position=position, updated_at=at)
                )

    # --- outbox ----------------------------------------------------------------------------

    async def insert_outbox(
        self,
        *,
        task_id: str,
        kind: OutboxKind,
        body: str,
        reply_to_telegram_id: int | None,
        at: datetime,
    ) -> int:
        return await self._insert(
            _INSERT_OUTBOX, _outbox_values(task_id, kind, body, reply_to_telegram_id, at)
        )

    async def due_outbox(self, now: datetime, *, limit: int) -> list[OutboxItem]:
        """Pending deliveries that are due: urgent tasks first, then oldest first."""
        rows = await self._conn.execute(
            select(outbox)
            .join(tasks, tasks.c.id == outbox.c.task_id)
            .where(
                outbox.c.state == OutboxState.PENDING.value,
                outbox.c.next_attempt_at <= now,
            )
            .order_by(tasks.c.urgent.desc(), outbox.c.id)
            .limit(limit)
        )
        return [_outbox(row) for row in rows.all()]

    async def count_handed_over(self, target: str, *, excluding: str | None) -> int:
        """Open tasks of ``target`` that its agent has: past pending, or already posted to it.

        Two counts off the (target, status) index, each over open tasks only, the pending ones
        checked one by one against their own deliveries: never the target's ended history, nor
        every delivery ever made.
        """
        mine = [tasks.c.target == target]
        if excluding is not None:
            mine.append(tasks.c.id != excluding)
        handed = (
            select(func.count())
            .select_from(tasks)
            .where(*mine, tasks.c.status.in_([s.value for s in HANDED_OVER_STATUSES]))
            .scalar_subquery()
        )
        was_posted = (
            select(outbox.c.id)
            .where(
                outbox.c.task_id == tasks.c.id,
                outbox.c.kind == OutboxKind.TASK.value,
                or_(outbox.c.state == OutboxState.DELIVERED.value, outbox.c.parts_sent > 0),
            )
            .exists()
        )
        posted = (
            select(func.count())
            .select_from(tasks)
            .where(*mine, tasks.c.status == TaskStatus.PENDING.value, was_posted)
            .scalar_subquery()
        )
        return int((await self._conn.execute(select(handed + posted))).scalar_one())

    async def oldest_pending(self, target: str) -> Task | None:
        row = (
            await self._conn.execute(
                select(tasks)
                .where(
                    tasks.c.target == target,
                    tasks.c.status == TaskStatus.PENDING.value,
                )
                .order_by(tasks.c.urgent.desc(), tasks.c.created_at, tasks.c.id)
                .limit(1)
            )
        ).first()
        return _task(row) if row else None

    async def touch_presence(self, target: str, *, at: datetime) -> None:
        """The target's agent was seen ``at``. Written only when the last sighting is
        ``PRESENCE_RESOLUTION_SECONDS`` old or more (or ahead of ``at``): an agent's heartbeat
        every half second would otherwise be a write to disk every half second."""
        stale = at - timedelta(seconds=PRESENCE_RESOLUTION_SECONDS)
        changed = await self._conn.execute(
            update(agent_presence)
            .where(
                agent_presence.c.target == target,
                or_(agent_presence.c.last_seen_at <= stale, agent_presence.c.last_seen_at > at),
            )
            .values(last_seen_at=at)
        )
        if changed.rowcount == 0:  # a new target, or seen a moment ago (then this is no write)
            await self._conn.execute(
                self._insert_ignoring_duplicates(agent_presence).values(
                    target=target, last_seen_at=at
                )
            )

    async def presence(self) -> dict[str, datetime]:
        rows = await self._conn.execute(select(agent_presence))
        return {row.target: row.last_seen_at for row in rows.all()}

    async def last_agent_activity(self, task_ids: Sequence[str]) -> dict[str, datetime]:
        """The latest agent update of each task (tasks with none are left out), at a cost that
        does not grow with the tasks' histories (:func:`latest_agent_updates`)."""
        if not task_ids:
            return {}
        rows = await self._conn.execute(latest_agent_updates(task_ids))
        return {row.task_id: row.latest for row in rows.all() if row.latest is not None}

    async def latest_agent_update_at(self, task_id: str) -> datetime | None:
        """The time of one task's latest agent update: read backwards along its (task_id,
        seq) index, so a long history costs no more than a short one (writers are serialised
        and stamp rows in seq order, so the latest seq is the latest time)."""
        row = (
            await self._conn.execute(
                select(updates.c.created_at)
                .where(updates.c.task_id == task_id, updates.c.kind == UpdateKind.AGENT.value)
                .order_by(updates.c.seq.desc())
                .limit(1)
            )
        ).first()
        return row.created_at if row is not None else None

    async def earliest_pending_outbox(self) -> datetime | None:
        value = (
            await self._conn.execute(
                select(func.min(outbox.c.next_attempt_at, type_=UTCDateTime())).where(
                    outbox.c.state == OutboxState.PENDING.value
                )
            )
        ).scalar()
        return value if isinstance(value, datetime) else None

    async def outbox_for_task(self, task_id: str) -> list[OutboxItem]:
        rows = await self._conn.execute(
            select(outbox).where(outbox.c.task_id == task_id).order_by(outbox.c.id)
        )
        return [_outbox(row) for row in rows.all()]

    async def update_outbox(self, outbox_id: int, **values: Any) -> None:
        """Set delivery fields: state, attempts, parts_sent, last_error, next_attempt_at, ..."""
        await self._conn.execute(update(outbox).where(outbox.c.id == outbox_id).values(**values))

    # --- telegram journal ------------------------------------------------------------------

    async def journal_telegram_message(
        self,
        *,
        chat_id: int,
        telegram_message_id: int,
        direction: str,
        accepted: bool,
        at: datetime,
        task_id: str | None = None,
        outbox_id: int | None = None,
        part: int | None = None,
        from_id: int | None = None,
        reply_to_telegram_id: int | None = None,
        text: str | None = None,
        processed_at: datetime | None = None,
        lease_epoch: int | None = None,
    ) -> int | None:
        """Record a Telegram message; None if (chat, message id) was already recorded."""
        result = await self._conn.execute(
            self._insert_ignoring_duplicates(telegram_messages).values(
                chat_id=chat_id,
                telegram_message_id=telegram_message_id,
                direction=direction,
                task_id=task_id,
                outbox_id=outbox_id,
                part=part,
                from_id=from_id,
                reply_to_telegram_id=reply_to_telegram_id,
                text=text,
                accepted=accepted,
                processed_at=processed_at,
                created_at=at,
                lease_epoch=lease_epoch,
            )
        )
        if result.rowcount != 1:
            return None
        found = (
            await self._conn.execute(
                select(telegram_messages.c.id).where(
                    telegram_messages.c.chat_id == chat_id,
                    telegram_messages.c.telegram_message_id == telegram_message_id,
                )
            )
        ).scalar_one()
        return int(found)

    async def inbound_message(self, journal_id: int) -> InboundMessage:
        row = (
            await self._conn.execute(
                select(telegram_messages).where(telegram_messages.c.id == journal_id)
            )
        ).one()
        return InboundMessage(
            id=row.id,
            chat_id=row.chat_id,
            telegram_message_id=row.telegram_message_id,
            from_id=row.from_id,
            reply_to_telegram_id=row.reply_to_telegram_id,
            text=row.text,
            processed_at=row.processed_at,
            created_at=row.created_at,
        )

    async def unprocessed_inbound(self) -> list[tuple[int, int]]:
        rows = await self._conn.execute(
            select(telegram_messages.c.id, telegram_messages.c.chat_id)
            .where(
                telegram_messages.c.direction == "in",
                telegram_messages.c.accepted.is_(True),
                telegram_messages.c.processed_at.is_(None),
            )
            .order_by(telegram_messages.c.id)
        )
        return [(int(r[0]), int(r[1])) for r in rows.all()]

    async def mark_inbound_processed(
        self, journal_id: int, *, task_id: str | None, at: datetime
    ) -> None:
        await self._conn.execute(
            update(telegram_messages)
            .where(telegram_messages.c.id == journal_id)
            .values(task_id=task_id, processed_at=at)
        )

    async def is_journaled(self, chat_id: int, telegram_message_id: int) -> bool:
        """Whether this chat's message (either direction) is in the journal."""
        found = await self._conn.execute(
            select(telegram_messages.c.id).where(
                telegram_messages.c.chat_id == chat_id,
                telegram_messages.c.telegram_message_id == telegram_message_id,
            )
        )
        return found.first() is not None

    async def task_of_telegram_message(self, chat_id: int, telegram_message_id: int) -> str | None:
        value = (
            await self._conn.execute(
                select(telegram_messages.c.task_id).where(
                    telegram_messages.c.chat_id == chat_id,
                    telegram_messages.c.telegram_message_id == telegram_message_id,
                )
            )
        ).scalar()
        return None if value is None else str(value)

    async def telegram_ids_of_task(self, task_id: str, *, direction: str) -> list[int]:
        rows = await self._conn.execute(
            select(telegram_messages.c.telegram_message_id)
            .where(
                telegram_messages.c.task_id == task_id,
                telegram_messages.c.direction == direction,
            )
            .order_by(telegram_messages.c.id)
        )
        return [int(r[0]) for r in rows.all()]

    async def count_ignored_inbound(self) -> int:
        """Inbound messages not accepted, from the maintained counts."""
        return await self._maintained_count(COUNT_IGNORED, None)

    # --- leases ----------------------------------------------------------------------------

    async def acquire_lease(
        self,
        name: str,
        holder: str,
        *,
        now: datetime,
        until: datetime,
        replacing: str | None = None,
    ) -> int | None:
        """Take or renew the lease ``name`` for ``holder`` unless someone else holds it; the
        lease's epoch if held (it grows by one whenever a different holder takes it), else None.

        ``replacing`` names a holder known to be dead: its lease is taken even before it expires
        (only if it is still that holder's, so two processes cannot both replace it).
        """
        taken = or_(leases.c.holder == holder, leases.c.expires_at < now)
        if replacing is not None:
            taken = or_(taken, leases.c.holder == replacing)
        same = leases.c.holder == holder
        renewed = await self._conn.execute(
            update(leases)
            .where(leases.c.name == name, taken)
            .values(
                holder=holder,
                expires_at=until,
                acquired_at=case((same, leases.c.acquired_at), else_=_timestamp(now)),
                epoch=case((same, leases.c.epoch), else_=leases.c.epoch + 1),
                health=case((same, leases.c.health), else_=None),
                last_error=case((same, leases.c.last_error), else_=None),
                error_since=case((same, leases.c.error_since), else_=None),
            )
        )
        if renewed.rowcount != 1:
            created = await self._conn.execute(
                self._insert_ignoring_duplicates(leases).values(
                    name=name, holder=holder, acquired_at=now, expires_at=until, epoch=1
                )
            )
            if created.rowcount != 1:
                return None
        epoch = (
            await self._conn.execute(select(leases.c.epoch).where(leases.c.name == name))
        ).scalar_one()
        return int(epoch)

    async def release_lease(self, name: str, holder: str, *, now: datetime) -> None:
        """End ``holder``'s lease now. The row stays, so the next holder's epoch is higher."""
        await self._conn.execute(
            update(leases)
            .where(leases.c.name == name, leases.c.holder == holder)
            .values(expires_at=now)
        )

    async def record_lease_health(
        self,
        name: str,
        holder: str,
        *,
        health: str,
        last_ok_at: datetime | None,
        last_error: str | None,
        error_since: datetime | None,
    ) -> None:
        """The holder's report on the service it talks to; ignored if it no longer holds it."""
        await self._conn.execute(
            update(leases)
            .where(leases.c.name == name, leases.c.holder == holder)
            .values(
                health=health,
                last_ok_at=last_ok_at,
                last_error=last_error,
                error_since=error_since,
            )
        )

    async def get_lease(self, name: str) -> Lease | None:
        row = (await self._conn.execute(select(leases).where(leases.c.name == name))).first()
        if row is None:
            return None
        return Lease(
            name=row.name,
            holder=row.holder,
            acquired_at=row.acquired_at,
            expires_at=row.expires_at,
            epoch=row.epoch,
            health=row.health,
            last_ok_at=row.last_ok_at,
            last_error=row.last_error,
            error_since=row.error_since,
        )

    async def epochs_of_part(
        self, outbox_id: int, part: int, *, chat_id: int, telegram_message_id: int
    ) -> list[int | None]:
        """The lease epochs under which this outbox part was already posted (journaled) as a
        Telegram message other than ``telegram_message_id`` in ``chat_id``."""
        rows = await self._conn.execute(
            select(telegram_messages.c.lease_epoch).where(
                telegram_messages.c.outbox_id == outbox_id,
                telegram_messages.c.part == part,
                telegram_messages.c.direction == "out",
                ~and_(
                    telegram_messages.c.chat_id == chat_id,
                    telegram_messages.c.telegram_message_id == telegram_message_id,
                ),
            )
        )
        return [r[0] for r in rows.all()]

    # --- console sessions --------------------------------------------------------------------

    async def console_insert_session(
        self, id_hash: str, *, at: datetime, expires_at: datetime
    ) -> None:
        """Store a new console session, forgetting the ones that have expired."""
        await self._conn.execute(
            delete(console_sessions).where(console_sessions.c.expires_at <= at)
        )
        await self._conn.execute(
            insert(console_sessions).values(id_hash=id_hash, created_at=at, expires_at=expires_at)
        )

    async def console_session_valid(self, id_hash: str, *, now: datetime) -> bool:
        found = await self._conn.execute(
            select(console_sessions.c.id_hash).where(
                console_sessions.c.id_hash == id_hash, console_sessions.c.expires_at > now
            )
        )
        return found.first() is not None

    async def console_end_session(self, id_hash: str) -> None:
        await self._conn.execute(
            delete(console_sessions).where(console_sessions.c.id_hash == id_hash)
        )

    async def console_end_all_sessions(self) -> None:
        await self._conn.execute(delete(console_sessions))

    # --- metrics ---------------------------------------------------------------------------

    async def oldest_pending_by_target(self) -> dict[str, datetime]:
        """When each target's oldest pending task was queued."""
        rows = await self._conn.execute(
            select(tasks.c.target, func.min(tasks.c.created_at, type_=UTCDateTime()))
            .where(tasks.c.status == TaskStatus.PENDING.value)
            .group_by(tasks.c.target)
        )
        return {str(r[0]): r[1] for r in rows.all()}

    async def count_outbox_by_target(
        self, state: OutboxState, *, due_at: datetime | None = None
    ) -> dict[str, int]:
        """Deliveries in ``state`` per target (only those due by ``due_at``, if given)."""
        query = (
            select(tasks.c.target, func.count())
            .select_from(outbox.join(tasks, tasks.c.id == outbox.c.task_id))
            .where(outbox.c.state == state.value)
            .group_by(tasks.c.target)
        )
        if due_at is not None:
            query = query.where(outbox.c.next_attempt_at <= due_at)
        return {str(r[0]): int(r[1]) for r in (await self._conn.execute(query)).all()}

    # --- retention -------------------------------------------------------------------------

    @staticmethod
    def _ended_before(cutoff: datetime) -> Any:
        """Ended tasks whose end (or, for rows from before ended_at, last change) is older."""
        return and_(
            tasks.c.status.in_([s.value for s in TERMINAL_STATUSES]),
            func.coalesce(tasks.c.ended_at, tasks.c.updated_at) < cutoff,
        )

    @staticmethod
    def _old_unattached_journal(cutoff: datetime) -> Any:
        """Journal rows of no task that are done with: ignored, or processed, and old."""
        return and_(
            telegram_messages.c.task_id.is_(None),
            telegram_messages.c.created_at < cutoff,
            or_(
                telegram_messages.c.accepted.is_(False),
                telegram_messages.c.processed_at.is_not(None),
            ),
        )

    async def ended_task_ids(self, cutoff: datetime, *, limit: int) -> list[str]:
        """Up to ``limit`` ids of tasks that ended before ``cutoff``, in the order of the
        (status, created_at) index: oldest first within each status. Not sorted as a whole: that
        sorted every ended task for each batch (75 ms a batch at 220,000 tasks)."""
        rows = await self._conn.execute(
            select(tasks.c.id).where(self._ended_before(cutoff)).limit(limit)
        )
        return [str(r[0]) for r in rows.all()]

    async def delete_ended_tasks(self, task_ids: Sequence[str], cutoff: datetime) -> PruneReport:
        """Delete these tasks (re-checked: still ended before ``cutoff``, so an open task is
        never touched) with their updates, deliveries and journal rows."""
        ids = select(tasks.c.id).where(tasks.c.id.in_(task_ids), self._ended_before(cutoff))
        their_outbox = select(outbox.c.id).where(outbox.c.task_id.in_(ids))
        journal = await self._conn.execute(
            delete(telegram_messages).where(
                or_(
                    telegram_messages.c.task_id.in_(ids),
                    telegram_messages.c.outbox_id.in_(their_outbox),
                )
            )
        )
        deliveries = await self._conn.execute(delete(outbox).where(outbox.c.task_id.in_(ids)))
        removed_updates = await self._conn.execute(
            delete(updates).where(updates.c.task_id.in_(ids))
        )
        removed_tasks = await self._conn.execute(
            delete(tasks).where(tasks.c.id.in_(task_ids), self._ended_before(cutoff))
        )
        return PruneReport(
            tasks=int(removed_tasks.rowcount),
            updates=int(removed_updates.rowcount),
            deliveries=int(deliveries.rowcount),
            journal=int(journal.rowcount),
        )

    async def delete_unattached(self, cutoff: datetime, *, limit: int) -> PruneReport:
        """Delete up to ``limit`` old updates and old, finished journal rows that belong to
        no task (agent messages no task claimed, messages from strangers)."""
        old_updates = (
            select(updates.c.seq)
            .where(updates.c.task_id.is_(None), updates.c.created_at < cutoff)
            .order_by(updates.c.seq)
            .limit(limit)
        )
        old_journal = (
            select(telegram_messages.c.id)
            .where(self._old_unattached_journal(cutoff))
            .order_by(telegram_messages.c.id)
            .limit(limit)
        )
        removed_updates = await self._conn.execute(
            delete(updates).where(updates.c.seq.in_(old_updates.scalar_subquery()))
        )
        journal = await self._conn.execute(
            delete(telegram_messages).where(
                telegram_messages.c.id.in_(old_journal.scalar_subquery())
            )
        )
        return PruneReport(updates=int(removed_updates.rowcount), journal=int(journal.rowcount))

    async def count_prunable(self, cutoff: datetime) -> PruneReport:
        """What a prune at ``cutoff`` would delete."""
        ids = select(tasks.c.id).where(self._ended_before(cutoff))
        their_outbox = select(outbox.c.id).where(outbox.c.task_id.in_(ids))

        async def count(table: Table, *where: Any) -> int:
            query = select(func.count()).select_from(table).where(*where)
            return int((await self._conn.execute(query)).scalar_one())

        return PruneReport(
            tasks=await count(tasks, self._ended_before(cutoff)),
            updates=await count(
                updates,
                or_(
                    updates.c.task_id.in_(ids),
                    and_(updates.c.task_id.is_(None), updates.c.created_at < cutoff),
                ),
            ),
            deliveries=await count(outbox, outbox.c.task_id.in_(ids)),
            journal=await count(
                telegram_messages,
                or_(
                    telegram_messages.c.task_id.in_(ids),
                    telegram_messages.c.outbox_id.in_(their_outbox),
                    self._old_unattached_journal(cutoff),
                ),
            ),
        )

    # --- schema ----------------------------------------------------------------------------

    async def sqlite_journal_mode(self) -> str | None:
        """SQLite's journal mode as the file has it (``wal`` unless WAL could not be set on its
        file system); None on PostgreSQL."""
        if self._conn.dialect.name != "sqlite":
            return None
        row = (await self._conn.execute(text("PRAGMA journal_mode"))).first()
        return str(row[0]).lower() if row else None

    async def database_id(self) -> str | None:
        """The random id migration 0015 gave this database (None if it has none)."""
        row = (await self._conn.execute(select(database_identity.c.id).limit(1))).first()
        return None if row is None else str(row[0])

    async def schema_revisions(self) -> Sequence[str]:
        """The alembic revisions the database is at (empty before the first migration)."""
        try:
            rows = (await self._conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        except Exception:  # noqa: BLE001 - any failure here means "not migrated"
            return ()
        return tuple(str(r[0]) for r in rows)


def _is_busy(exc: Exception) -> bool:
    """SQLite's "database is locked": another connection held it past the busy timeout. (BEGIN
    IMMEDIATE runs in the engine's begin hook, so its error arrives unwrapped by SQLAlchemy.)"""
    message = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in message or "database is busy" in message


# What SQLite says when a write cannot reach the disk (SQLITE_FULL, SQLITE_IOERR,
# SQLITE_READONLY), and PostgreSQL's SQLSTATEs for the same: disk_full, and
# read_only_sql_transaction (a standby, or default_transaction_read_only).
_UNWRITABLE_SQLITE: Final = (
    "database or disk is full",
    "disk i/o error",
    "attempt to write a readonly database",
)
_UNWRITABLE_SQLSTATES: Final = frozenset({"53100", "25006"})
# Writes that fail so are logged once per this many seconds, not once per call.
_UNWRITABLE_LOG_SECONDS: Final = 60.0


def _unwritable_reason(exc: BaseException) -> str | None:
    """The database's own words when ``exc`` is a write its storage refused, else None."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = " ".join(str(inner).split())
    if any(words in message.lower() for words in _UNWRITABLE_SQLITE):
        return message
    state = getattr(inner, "sqlstate", None) or getattr(inner, "pgcode", None)
    if state in _UNWRITABLE_SQLSTATES:
        return message.partition(": ")[2] or message
    return None


class Store:
    """Opens transactions on the engine; all SQL lives in :class:`StoreTransaction`."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._is_postgres = engine.dialect.name == "postgresql"
        self._writer: SqliteWriter | None = None
        self._file = sqlite_file(engine.url.render_as_string(hide_password=False))
        self._writes_in_thread = self._file is not None
        self._probe: sqlite3.Connection | None = None
        # Writes refused by the database's storage: when one was last logged, and how many
        # were not logged since.
        self._unwritable_logged_at: float | None = None
        self._unwritable_unlogged = 0

    def _write_failed(self, exc: Exception) -> NexusBridgeError | None:
        """The error a failed write transaction means to a caller (busy, or storage refused
        it), or None to let ``exc`` through. A refusal by the storage is logged for the owner,
        once a minute at most: every call it fails already gets it as a one-line error."""
        if _is_busy(exc):
            return DatabaseBusy()
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            # The connection died under the call (a database restart, a failover): the pool
            # opens a new one next time; the caller may try again.
            return DatabaseUnreachable(f"the connection was lost ({_reason(exc)})")
        reason = _unwritable_reason(exc)
        if reason is None:
            return None
        now = time.monotonic()
        last = self._unwritable_logged_at
        if last is not None and now - last < _UNWRITABLE_LOG_SECONDS:
            self._unwritable_unlogged += 1
        else:
            self._unwritable_logged_at = now
            unlogged, self._unwritable_unlogged = self._unwritable_unlogged, 0
            logger.error(
                "the database refused a write (%s): free space on its disk or make it writable; "
                "writes fail until then, reads go on%s",
                reason,
                f" ({unlogged} more failed writes since the last line)" if unlogged else "",
            )
        return DatabaseUnwritable(reason)

    async def commit(self, body: Callable[[StoreTransaction], Coroutine[Any, Any, T]]) -> T:
        """Run ``body`` in a write transaction; its result once the transaction is committed
        (on disk). Raising in ``body`` rolls back only what ``body`` wrote.

        On SQLite ``body`` runs whole in the store's writer thread, grouped with the writes that
        arrive meanwhile (:class:`~nexus_bridge.db.writer.SqliteWriter`): it must only run
        statements on its transaction, never wait on anything else, and never touch the event
        loop's objects; it may be run a second time (when another write of its group failed),
        so it must change nothing but the database. On PostgreSQL it runs in a :meth:`write`
        transaction.

        Raises:
            DatabaseBusy: another process held the write lock past the busy timeout.
            DatabaseUnreachable: the database cannot be opened.
        """
        writer = self._sqlite_writer()
        if writer is None:
            async with self.write() as tx:
                return await body(tx)

        def job(connection: Connection) -> Coroutine[Any, Any, T]:
            return body(StoreTransaction(ImmediateConnection(connection)))

        try:
            return await writer.run(job)
        except (DBAPIError, sqlite3.Error) as exc:
            if (error := self._write_failed(exc)) is not None:
                raise error from exc
            raise

    def _sqlite_writer(self) -> SqliteWriter | None:
        """The writer thread of a SQLite file (started on first use); None on PostgreSQL."""
        if not self._writes_in_thread:
            return None
        if self._writer is None:
            self._writer = SqliteWriter(
                create_writer_engine(self.engine),
                connect_error=lambda exc: DatabaseUnreachable(_reason(exc)),
                wal=WalKeeper(self._file) if self._file is not None else None,
            )
        return self._writer

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection; failing to open one is DatabaseUnreachable, with the driver's reason."""
        conn = self.engine.connect()
        try:
            await conn.start()
        except (OSError, DBAPIError) as exc:
            raise DatabaseUnreachable(_reason(exc)) from exc
        try:
            yield conn
        finally:
            await conn.close()

    async def check_connection(self) -> None:
        """Raises DatabaseUnreachable unless a connection to the database opens."""
        async with self._connect():
            pass

    @asynccontextmanager
    async def read(self) -> AsyncIterator[StoreTransaction]:
        """A read transaction.

        Raises:
            DatabaseBusy: another process held the database past the busy timeout.
        """
        try:
            async with self._connect() as conn, conn.begin():
                yield StoreTransaction(conn)
        except (DBAPIError, sqlite3.OperationalError) as exc:
            if _is_busy(exc):
                raise DatabaseBusy from exc
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:  # as in _write_failed
                raise DatabaseUnreachable(f"the connection was lost ({_reason(exc)})") from exc
            raise

    @asynccontextmanager
    async def write(self) -> AsyncIterator[StoreTransaction]:
        """A write transaction: committed when the block ends, rolled back if it raises.

        Keep it short and never wait on the network inside it: on SQLite it holds the one
        write lock, and every other writer waits for it (then fails with DatabaseBusy). On a
        SQLite file it runs on the writer thread's connection, statement by statement, so it
        never contends with this process's :meth:`commit` writes for the lock.

        Raises:
            DatabaseBusy: another process held the write lock past the busy timeout.
        """
        writer = self._sqlite_writer()
        if writer is not None:
            try:
                async with writer.session() as session:
                    yield StoreTransaction(SessionConnection(session, self.engine.dialect))
            except (DBAPIError, sqlite3.Error) as exc:
                if (error := self._write_failed(exc)) is not None:
                    raise error from exc
                raise
            return
        try:
            async with self._connect() as conn:
                conn = await conn.execution_options(**{WRITE_OPTION: True})
                async with conn.begin():
                    if self._is_postgres:
                        await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_WRITE_LOCK})"))
                    yield StoreTransaction(conn)
        except (DBAPIError, sqlite3.Error) as exc:
            if (error := self._write_failed(exc)) is not None:
                raise error from exc
            raise

    def changes(self) -> AbstractAsyncContextManager[ChangeFeed | None]:
        """Wake-ups when another process commits (None where only polling can tell)."""
        return change_feed(self.engine)

    async def last_seq(self) -> int:
        """The highest committed update seq, cheap enough to ask on every wake-up of
        :meth:`changes` (which fire on this process's own commits too).

        On a SQLite file: one lookup at the end of the primary key on a private read-only
        connection, run right here (no pool, no thread hop; a WAL reader never waits for a
        writer, and the busy timeout is zero); any error falls back to a pooled read.
        """
        if self._file is not None:
            try:
                if self._probe is None:
                    self._probe = _read_only_sqlite(self._file)
                return _sqlite_last_seq(self._probe)
            except sqlite3.Error:
                self._close_probe()
        async with self.read() as tx:
            return await tx.last_seq()

    def _close_probe(self) -> None:
        if self._probe is not None:
            with suppress(sqlite3.Error):
                self._probe.close()
            self._probe = None

    async def dispose(self) -> None:
        self._close_probe()
        if self._writer is not None:
            await self._writer.close()
            self._writer = None
        await self.engine.dispose()


def _read_only_sqlite(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing SQLite file that never waits on a lock."""
    uri = f"{path.absolute().as_uri()}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None)


def _sqlite_last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(seq) FROM updates").fetchone()
    return int(row[0] or 0)


def _reason(exc: BaseException) -> str:
    """The driver's own words, on one line (SQLAlchemy appends a multi-line background note)."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    if isinstance(inner, OSError) and inner.errno and inner.errno > 0 and inner.strerror:
        # asyncpg's "[Errno 111] Connect call failed (...)" never says "refused" in words.
        return f"{os.strerror(inner.errno)}: {inner.strerror}"
    return " ".join(str(inner).split()) or type(inner).__name__


# --- SQLite files: backup and restore --------------------------------------------------------
# Plain sqlite3 on the file, not the async engine: the online backup API is not in aiosqlite,
# and these run from the CLI with no event loop.


@dataclass(frozen=True, slots=True)
class SqliteFileCheck:
    """What a check of a SQLite database file found."""

    integrity: tuple[str, ...]
    revisions: tuple[str, ...]
    tasks: int

    @property
    def ok(self) -> bool:
        return self.integrity == ("ok",)


def sqlite_copy(source: Path, destination: Path, *, busy_timeout_ms: int) -> None:
    """Copy the database ``source`` into the empty file ``destination`` with SQLite's online
    backup, in one step: one consistent snapshot (a read transaction, which in WAL mode never
    blocks the server's writers). The copy is left in rollback-journal mode, one self-contained
    file (the server turns WAL back on when it opens it).

    Raises:
        sqlite3.Error: the source is not a SQLite database, or cannot be read.
    """
    with (
        closing(sqlite3.connect(source, timeout=busy_timeout_ms / 1000)) as src,
        closing(sqlite3.connect(destination)) as dst,
    ):
        src.backup(dst)
        dst.execute("PRAGMA journal_mode=DELETE")
        dst.commit()


def sqlite_check(path: Path) -> SqliteFileCheck:
    """``PRAGMA integrity_check``, the alembic revision and the number of tasks of a file.

    Raises:
        sqlite3.Error: not a SQLite database.
    """
    with closing(sqlite3.connect(path)) as conn:
        integrity = tuple(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))
        try:
            revisions = tuple(
                str(row[0]) for row in conn.execute("SELECT version_num FROM alembic_version")
            )
            # A backup older than migration 0012 keeps its tasks in the table "messages".
            names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")}
            count = (
                "SELECT count(*) FROM tasks"
                if "tasks" in names
                else "SELECT count(*) FROM messages"
            )
            tasks = int(conn.execute(count).fetchone()[0])
        except sqlite3.OperationalError:  # no such table: not a nexus-bridge database
            revisions, tasks = (), 0
    return SqliteFileCheck(integrity=integrity, revisions=revisions, tasks=tasks)


def sqlite_checkpoint(path: Path, *, busy_timeout_ms: int) -> None:
    """Fold the write-ahead log into the database file, so the file alone holds everything.

    Raises:
        sqlite3.Error: the file cannot be opened or checkpointed.
    """
    with closing(sqlite3.connect(path, timeout=busy_timeout_ms / 1000)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
