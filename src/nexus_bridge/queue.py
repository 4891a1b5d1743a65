"""The queue service: enqueue with dedup, status transitions, updates and pull cursors.

It knows nothing of MCP, HTTP or Telegram; adapters call it, and it reaches the database only
through :class:`~nexus_bridge.db.store.Store`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from nexus_bridge import config
from nexus_bridge.db.store import NewTask, Store, StoreTransaction
from nexus_bridge.domain import (
    EnqueueResult,
    QueueCounts,
    Task,
    TaskStatus,
    Update,
    UpdateKind,
    check_transition,
    content_hash,
    normalize_content,
    parse_instant,
    utc_now,
)
from nexus_bridge.errors import DuplicateTask, IllegalTransition, InvalidInput

logger = logging.getLogger(__name__)

_ENQUEUE_ATTEMPTS: Final = 5

# Which timestamp column a status change stamps (the first time it is reached).
_STAMPS: Final = {
    TaskStatus.ACKNOWLEDGED: "acknowledged_at",
    TaskStatus.IN_PROGRESS: "started_at",
    TaskStatus.COMPLETE: "ended_at",
    TaskStatus.ERROR: "ended_at",
    TaskStatus.CANCELLED: "ended_at",
}


class UpdateSignal:
    """Wakes waiting pulls when an update is committed in this process, without polling.

    A waiter takes :meth:`generation` *before* it reads the database and then waits on it, so an
    update committed between the read and the wait is never missed.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._closed = False

    def generation(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        if self._closed:
            self._event.set()
        event.set()

    def close(self) -> None:
        """Wake every waiter now and from now on (shutdown: let in-flight pulls return)."""
        self._closed = True
        self._event.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @staticmethod
    async def wait(generation: asyncio.Event, seconds: float) -> bool:
        """Wait until ``generation`` fires or ``seconds`` pass; True if it fired."""
        if seconds <= 0:
            return generation.is_set()
        try:
            async with asyncio.timeout(seconds):
                await generation.wait()
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class UpdatePage:
    updates: Sequence[Update]
    next_cursor: str
    has_more: bool


@dataclass(frozen=True, slots=True)
class TaskPage:
    tasks: Sequence[Task]
    next_before: str | None


@dataclass(frozen=True, slots=True)
class TaskDetail:
    task: Task
    recent_updates: Sequence[Update]


def _status_line(old: TaskStatus | None, new: TaskStatus, reason: str | None) -> str:
    line = f"status: {new.value}" if old is None else f"status: {old.value} → {new.value}"
    return f"{line} ({reason})" if reason else line


class QueueService:
    """Everything a client or a transport can do with the queue."""

    def __init__(
        self,
        store: Store,
        *,
        targets: Sequence[str] = (config.DEFAULT_TARGET,),
        max_message_chars: int = config.DEFAULT_MAX_MESSAGE_CHARS,
        max_wait_seconds: float = config.DEFAULT_MAX_WAIT_SECONDS,
        clock: Callable[[], datetime] = utc_now,
        signal: UpdateSignal | None = None,
    ) -> None:
        self._store = store
        self._targets = tuple(targets)
        self._max_message_chars = max_message_chars
        self._max_wait_seconds = max_wait_seconds
        self._clock = clock
        self.signal = signal or UpdateSignal()

    @property
    def targets(self) -> tuple[str, ...]:
        return self._targets

    @property
    def max_message_chars(self) -> int:
        return self._max_message_chars

    @property
    def max_wait_seconds(self) -> float:
        return self._max_wait_seconds

    def _check_target(self, target: str) -> str:
        if target not in self._targets:
            known = ", ".join(self._targets)
            raise InvalidInput(f"unknown target {target!r}; known targets: {known}")
        return target

    # --- commands --------------------------------------------------------------------------

    async def enqueue(self, message: str, target: str = config.DEFAULT_TARGET) -> EnqueueResult:
        """Queue a task, or return the open task it duplicates.

        Raises:
            InvalidInput: empty text, text over the size limit, or an unknown target.
        """
        self._check_target(target)
        content = normalize_content(message)
        if not content:
            raise InvalidInput("message is empty; send the task's text")
        if len(content) > self._max_message_chars:
            raise InvalidInput(
                f"message is {len(content)} characters, over the limit of "
                f"{self._max_message_chars}; shorten it or split it into several tasks"
            )
        digest = content_hash(content)
        for _ in range(_ENQUEUE_ATTEMPTS):
            now = self._clock()
            try:
                async with self._store.write() as tx:
                    task = await tx.insert_task(
                        NewTask(
                            id=str(uuid.uuid4()),
                            target=target,
                            content=content,
                            content_hash=digest,
                            created_at=now,
                        )
                    )
                    await tx.insert_update(
                        message_id=task.id,
                        kind=UpdateKind.STATUS,
                        status=TaskStatus.PENDING,
                        content=_status_line(None, TaskStatus.PENDING, "queued"),
                        at=now,
                    )
            except DuplicateTask:
                async with self._store.read() as tx:
                    existing = await tx.open_task_with_hash(target, digest)
                if existing is not None:
                    return EnqueueResult(queued=False, task=existing)
                continue  # the open duplicate ended in between: try again
            self.signal.notify()
            return EnqueueResult(queued=True, task=task)
        raise DuplicateTask("the same task keeps being queued and ended concurrently; try again")

    async def transition(
        self, task_id: str, new_status: TaskStatus, *, reason: str | None = None
    ) -> Task:
        """Move a task to ``new_status`` and record the change as a ``status`` update.

        Raises:
            TaskNotFound: no task has that id.
            IllegalTransition: the transition table forbids it (TaskAlreadyEnded if it ended).
        """
        reason = reason.strip() if reason and reason.strip() else None
        async with self._store.write() as tx:
            task = await tx.get_task(task_id)
            moved = await self._apply(tx, task, new_status, reason)
        self.signal.notify()
        return moved

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        """Cancel an open task.

        Raises:
            TaskNotFound: no task has that id.
            TaskAlreadyEnded: it already ended.
        """
        return await self.transition(task_id, TaskStatus.CANCELLED, reason=reason)

    async def _apply(
        self, tx: StoreTransaction, task: Task, new_status: TaskStatus, reason: str | None
    ) -> Task:
        check_transition(task.status, new_status)
        now = self._clock()
        stamps: dict[str, datetime] = {}
        column = _STAMPS.get(new_status)
        if column is not None and getattr(task, column) is None:
            stamps[column] = now
        if not await tx.set_status(task, new_status, at=now, reason=reason, stamps=stamps):
            # Inside a write transaction the row cannot change under us; this is a safety net.
            raise IllegalTransition(f"task {task.id} changed concurrently; try again")
        await tx.insert_update(
            message_id=task.id,
            kind=UpdateKind.STATUS,
            status=new_status,
            content=_status_line(task.status, new_status, reason),
            at=now,
        )
        return await tx.get_task(task.id)

    async def add_agent_update(self, task_id: str | None, content: str) -> Update:
        """Record text from the agent, linked to a task when one is known.

        Raises:
            TaskNotFound: ``task_id`` names no task.
            InvalidInput: the text is empty.
        """
        if not content.strip():
            raise InvalidInput("an agent update needs text")
        async with self._store.write() as tx:
            message_id = (await tx.get_task(task_id)).id if task_id else None
            update = await tx.insert_update(
                message_id=message_id, kind=UpdateKind.AGENT, content=content, at=self._clock()
            )
        self.signal.notify()
        return update

    # --- queries ---------------------------------------------------------------------------

    async def get(self, task_id: str, *, recent: int = config.RECENT_UPDATES_IN_GET) -> TaskDetail:
        """A task and its most recent updates (oldest first).

        Raises:
            TaskNotFound: no task has that id.
        """
        async with self._store.read() as tx:
            task = await tx.get_task(task_id)
            latest = await tx.list_updates(message_id=task.id, limit=recent, newest_first=True)
        return TaskDetail(task=task, recent_updates=list(reversed(latest)))

    async def list(
        self,
        *,
        status: str | None = None,
        target: str | None = None,
        limit: int = config.DEFAULT_LIST_LIMIT,
        before: str | None = None,
    ) -> TaskPage:
        """Tasks, newest first; pass ``next_before`` back as ``before`` for the next page.

        Raises:
            InvalidInput: an unknown status or target, or a limit out of range.
            TaskNotFound: ``before`` names no task.
        """
        wanted = _parse_status(status) if status else None
        if target is not None:
            self._check_target(target)
        _check_range("limit", limit, 1, config.MAX_LIST_LIMIT)
        async with self._store.read() as tx:
            anchor = await tx.get_task(before) if before else None
            tasks = await tx.list_tasks(
                status=wanted, target=target, limit=limit + 1, before=anchor
            )
        more = len(tasks) > limit
        tasks = tasks[:limit]
        return TaskPage(tasks=tasks, next_before=tasks[-1].id if more else None)

    async def status(self, target: str | None = None) -> QueueCounts:
        """Counts per status, total updates and the task in progress.

        Raises:
            InvalidInput: an unknown target.
        """
        if target is not None:
            self._check_target(target)
        async with self._store.read() as tx:
            counts = await tx.count_by_status(target)
            total = await tx.count_updates(target)
            current = await tx.current_task(target)
        return QueueCounts(by_status=counts, total_updates=total, current_task=current)

    async def pull(
        self,
        identity: str,
        *,
        since: str | None = None,
        cursor: str | None = None,
        message_id: str | None = None,
        limit: int = config.DEFAULT_PULL_LIMIT,
        wait_seconds: float = 0,
    ) -> UpdatePage:
        """Updates after a cursor, after a time, or since ``identity``'s previous pull.

        With neither ``since`` nor ``cursor`` (and no ``message_id``), the pull continues from the
        durable cursor of ``identity`` and advances it. With ``message_id`` alone it returns that
        task's updates from the beginning. ``wait_seconds`` (capped) waits for the first update.

        Raises:
            InvalidInput: both since and cursor, a malformed since or cursor, a bad limit or wait.
            TaskNotFound: ``message_id`` names no task.
        """
        if since is not None and cursor is not None:
            raise InvalidInput("pass either since or cursor, not both")
        _check_range("limit", limit, 1, config.MAX_PULL_LIMIT)
        if wait_seconds < 0:
            raise InvalidInput("wait_seconds must be 0 or more")
        wait = min(float(wait_seconds), self._max_wait_seconds)
        since_at = parse_instant(since, field="since") if since is not None else None
        after = _parse_cursor(cursor) if cursor is not None else None
        durable = since is None and cursor is None and message_id is None

        async with self._store.read() as tx:
            if message_id is not None:
                message_id = (await tx.get_task(message_id)).id
                if since is None and cursor is None:
                    after = 0
            if durable:
                after = await tx.get_cursor(identity) or 0

        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            generation = self.signal.generation()
            async with self._store.read() as tx:
                rows = await tx.list_updates(
                    after_seq=after, since=since_at, message_id=message_id, limit=limit + 1
                )
                floor = after if after is not None else await tx.last_seq()
            remaining = deadline - loop.time()
            if rows or remaining <= 0 or self.signal.closed:
                break
            logger.debug("pull for %s waiting up to %.1f s for an update", identity, remaining)
            await self.signal.wait(generation, remaining)

        more = len(rows) > limit
        rows = rows[:limit]
        position = rows[-1].seq if rows else floor
        if durable and rows:
            async with self._store.write() as tx:
                await tx.advance_cursor(identity, position, at=self._clock())
        return UpdatePage(updates=rows, next_cursor=str(position), has_more=more)

    async def schema_revisions(self) -> Sequence[str]:
        async with self._store.read() as tx:
            return await tx.schema_revisions()


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}, got {value}")


def _parse_status(value: str) -> TaskStatus:
    try:
        return TaskStatus(value.strip().lower())
    except ValueError:
        known = ", ".join(s.value for s in TaskStatus)
        raise InvalidInput(f"unknown status {value!r}; use one of: {known}") from None


def _parse_cursor(value: str) -> int:
    text = value.strip()
    if not text.isdigit():
        raise InvalidInput(
            f"cursor must be a next_cursor value from an earlier pull_updates, got {value!r}"
        )
    return int(text)
