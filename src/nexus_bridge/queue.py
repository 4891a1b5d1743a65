"""The queue service: enqueue with dedup, status transitions, updates and pull cursors.

It knows nothing of MCP, HTTP or Telegram; adapters call it, and it reaches the database only
through :class:`~nexus_bridge.db.store.Store`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from nexus_bridge import config
from nexus_bridge.db.store import NewTask, Store, StoreTransaction
from nexus_bridge.domain import (
    CLAIM_EXPIRED_REASON,
    EnqueueResult,
    OutboxKind,
    OutboxState,
    PruneReport,
    QueueCounts,
    TargetPolicy,
    Task,
    TaskStatus,
    TaskUpdate,
    UpdateKind,
    check_agent_session,
    check_storable,
    check_task_id,
    check_transition,
    content_hash,
    normalize_content,
    parse_instant,
    shown,
    status_line,
    utc_now,
)
from nexus_bridge.errors import (
    DatabaseUnwritable,
    DuplicateTask,
    IllegalTransition,
    InvalidInput,
    TaskNotFound,
)
from nexus_bridge.logs import RepeatedFailure
from nexus_bridge.transition import apply_transition

logger = logging.getLogger(__name__)

_ENQUEUE_ATTEMPTS: Final = 5
_QUEUED_LINE: Final = status_line(None, TaskStatus.PENDING, "queued")
# Tasks deleted per write transaction by a prune: small enough that a writer waits little.
PRUNE_BATCH: Final = 200


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
    async def wait(
        generation: asyncio.Event, seconds: float, stop: asyncio.Event | None = None
    ) -> bool:
        """Wait until ``generation`` fires, ``stop`` is set or ``seconds`` pass; True if
        ``generation`` fired."""
        if seconds <= 0:
            return generation.is_set()
        waiters = [asyncio.ensure_future(generation.wait())]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return generation.is_set()


@dataclass(frozen=True, slots=True)
class UpdatePage:
    updates: Sequence[TaskUpdate]
    next_cursor: str
    has_more: bool


@dataclass(frozen=True, slots=True)
class TaskPage:
    tasks: Sequence[Task]
    next_before: str | None


@dataclass(frozen=True, slots=True)
class DeliveryInfo:
    """How a task (or the latest answer to it) reached the agent's chat."""

    state: OutboxState
    attempts: int
    last_error: str | None
    delivered_at: datetime | None
    telegram_message_ids: Sequence[int]


@dataclass(frozen=True, slots=True)
class TaskDetail:
    task: Task
    recent_updates: Sequence[TaskUpdate]
    delivery: DeliveryInfo | None = None


@dataclass(frozen=True, slots=True)
class TargetSummary:
    policy: TargetPolicy
    by_status: dict[TaskStatus, int]
    last_seen_at: datetime | None
    reachable: bool
    stalled: int


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """The figures ``/metrics`` reads from the database, per target."""

    targets: list[TargetSummary]
    oldest_pending_seconds: dict[str, float]
    deliveries_due: dict[str, int]
    deliveries_failed: dict[str, int]


class QueueService:
    """Everything a client or a transport can do with the queue."""

    def __init__(
        self,
        store: Store,
        *,
        targets: Sequence[str | TargetPolicy] = (config.DEFAULT_TARGET,),
        max_message_chars: int = config.DEFAULT_MAX_MESSAGE_CHARS,
        max_wait_seconds: float = config.DEFAULT_MAX_WAIT_SECONDS,
        clock: Callable[[], datetime] = utc_now,
        signal: UpdateSignal | None = None,
        stall_seconds: float = config.DEFAULT_STALL_SECONDS,
        claim_seconds: float = config.DEFAULT_AGENT_CLAIM_SECONDS,
    ) -> None:
        self._store = store
        self._policies = {
            p.name: p
            for p in (t if isinstance(t, TargetPolicy) else TargetPolicy(t) for t in targets)
        }
        self._targets = tuple(self._policies)
        self._stall_seconds = stall_seconds
        self._claim_seconds = claim_seconds
        self._max_message_chars = max_message_chars
        self._max_wait_seconds = max_wait_seconds
        self._clock = clock
        self.signal = signal or UpdateSignal()

    @property
    def targets(self) -> tuple[str, ...]:
        return self._targets

    def policy(self, target: str) -> TargetPolicy:
        """Raises InvalidInput for an unknown target, naming the known ones."""
        return self._policies[self._check_target(target)]

    @property
    def policies(self) -> tuple[TargetPolicy, ...]:
        return tuple(self._policies.values())

    def now(self) -> datetime:
        """The service's clock (injectable in tests)."""
        return self._clock()

    @property
    def max_message_chars(self) -> int:
        return self._max_message_chars

    @property
    def max_wait_seconds(self) -> float:
        return self._max_wait_seconds

    @property
    def claim_seconds(self) -> float:
        return self._claim_seconds

    def _check_target(self, target: str) -> str:
        if len(target) > config.MAX_TARGET_CHARS:
            raise InvalidInput(
                f"target must be at most {config.MAX_TARGET_CHARS} characters, got {len(target)}"
            )
        if target not in self._targets:
            known = ", ".join(self._targets)
            raise InvalidInput(f"unknown target {target!r}; known targets: {known}")
        return target

    # --- commands --------------------------------------------------------------------------

    async def enqueue(
        self, text: str, target: str = config.DEFAULT_TARGET, *, urgent: bool = False
    ) -> EnqueueResult:
        """Queue a task (and its delivery), or return the open task it duplicates.

        Raises:
            InvalidInput: empty text, text over the size limit, or an unknown target.
        """
        self._check_target(target)
        content = self._check_text(text, "message")
        digest = content_hash(content)
        uses_outbox = self._policies[target].uses_outbox
        task_id = str(uuid.uuid4())

        async def insert(tx: StoreTransaction) -> Task:
            now = self._clock()  # in the transaction: times follow the order of commits
            new = NewTask(
                id=task_id,
                target=target,
                content=content,
                content_hash=digest,
                created_at=now,
                urgent=urgent,
            )
            return await tx.queue_task(new, delivery=uses_outbox, first_update=_QUEUED_LINE)

        for _ in range(_ENQUEUE_ATTEMPTS):
            try:
                task = await self._store.commit(insert)
            except DuplicateTask:
                async with self._store.read() as tx:
                    existing = await tx.open_task_with_hash(target, digest)
                if existing is not None:
                    return EnqueueResult(queued=False, task=existing)
                continue  # the open duplicate ended in between: try again
            self.signal.notify()
            logger.info(
                "queued task %s for %s",
                task.id,
                target,
                extra={"task_id": task.id, "target": target},
            )
            return EnqueueResult(queued=True, task=task)
        raise DuplicateTask("the same task keeps being queued and ended concurrently; try again")

    def _check_text(self, text: str, field: str) -> str:
        content = normalize_content(check_storable(text, field))
        if not content:
            raise InvalidInput(f"{field} is empty; send the text")
        if len(content) > self._max_message_chars:
            raise InvalidInput(
                f"{field} is {len(content)} characters, over the limit of "
                f"{self._max_message_chars}; shorten it or split it"
            )
        return content

    async def reply(self, task_id: str, text: str) -> Task:
        """Answer the agent's question: record it, queue it for delivery, resume the task.

        Raises:
            TaskNotFound: no task has that id.
            InvalidInput: empty or over-long text.
            IllegalTransition: the task is not waiting for an answer.
        """
        check_task_id(task_id, "id")
        content = self._check_text(text, "text")

        async def answer(tx: StoreTransaction) -> Task:
            task = await tx.get_task(task_id)
            if task.status is not TaskStatus.INPUT_REQUIRED:
                raise IllegalTransition(
                    f"task {task.id} is not waiting for an answer (it is {task.status.value}); "
                    "reply_to_task answers a task in input_required"
                )
            now = self._clock()
            await tx.insert_update(task_id=task.id, kind=UpdateKind.CLIENT, content=content, at=now)
            policy = self._policies.get(task.target)
            if policy is None or policy.uses_outbox:
                questions = await tx.telegram_ids_of_task(task.id, direction="in")
                posted = await tx.telegram_ids_of_task(task.id, direction="out")
                reply_to = questions[-1] if questions else (posted[0] if posted else None)
                await tx.insert_outbox(
                    task_id=task.id,
                    kind=OutboxKind.REPLY,
                    body=content,
                    reply_to_telegram_id=reply_to,
                    at=now,
                )
            # An agent-API agent reads the answer with get_replies instead.
            return await apply_transition(
                tx, task, TaskStatus.IN_PROGRESS, "answered", now=self._clock()
            )

        resumed = await self._store.commit(answer)
        self.signal.notify()
        return resumed

    async def cancel(self, task_id: str, reason: str | None = None) -> Task:
        """Cancel an open task; if it already reached the agent's chat, tell the agent to stop.

        Raises:
            TaskNotFound: no task has that id.
            TaskAlreadyEnded: it already ended.
        """
        check_task_id(task_id, "id")
        reason = _check_reason(reason)

        async def cancel(tx: StoreTransaction) -> Task:
            task = await tx.get_task(task_id)
            cancelled = await apply_transition(
                tx, task, TaskStatus.CANCELLED, reason, now=self._clock()
            )
            posted = await tx.telegram_ids_of_task(task.id, direction="out")
            if posted:
                await tx.insert_outbox(
                    task_id=task.id,
                    kind=OutboxKind.CANCEL,
                    body=reason or "",
                    reply_to_telegram_id=posted[0],
                    at=self._clock(),
                )
            return cancelled

        cancelled = await self._store.commit(cancel)
        self.signal.notify()
        return cancelled

    # --- queries ---------------------------------------------------------------------------

    async def get(
        self,
        task_id: str,
        *,
        recent: int = config.RECENT_UPDATES_IN_GET,
        before_seq: int | None = None,
    ) -> TaskDetail:
        """A task and its most recent updates (oldest first); with ``before_seq``, the most
        recent of those before that seq (a window further back in a long history).

        Raises:
            TaskNotFound: no task has that id.
        """
        check_task_id(task_id, "id")
        async with self._store.read() as tx:
            task = await tx.get_task(task_id)
            latest = await tx.list_updates(
                task_id=task.id, limit=recent, newest_first=True, before_seq=before_seq
            )
            deliveries = await tx.outbox_for_task(task.id)
            posted = await tx.telegram_ids_of_task(task.id, direction="out")
        delivery = None
        if deliveries:
            last = deliveries[-1]
            delivery = DeliveryInfo(
                state=last.state,
                attempts=last.attempts,
                last_error=last.last_error,
                delivered_at=last.delivered_at,
                telegram_message_ids=posted,
            )
        return TaskDetail(task=task, recent_updates=list(reversed(latest)), delivery=delivery)

    async def list_tasks(
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
        if before is not None:
            check_task_id(before, "before")
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
            ignored = await tx.count_ignored_inbound()
        return QueueCounts(
            by_status=counts, total_updates=total, current_task=current, ignored_messages=ignored
        )

    async def pull(
        self,
        identity: str,
        *,
        since: str | None = None,
        cursor: str | None = None,
        task_id: str | None = None,
        limit: int = config.DEFAULT_PULL_LIMIT,
        wait_seconds: float = 0,
        stop: asyncio.Event | None = None,
    ) -> UpdatePage:
        """Updates after a cursor, after a time, or since ``identity``'s previous pull.

        With neither ``since`` nor ``cursor`` (and no ``message_id``), the pull continues from the
        durable cursor of ``identity`` and advances it. With ``message_id`` alone it returns that
        task's updates from the beginning. ``wait_seconds`` (capped) waits for the first update;
        once ``stop`` is set (the caller went away) the wait ends and the durable cursor stays put,
        so nothing is marked read that nobody received.

        Raises:
            InvalidInput: both since and cursor, a malformed since or cursor, a bad limit or wait.
            TaskNotFound: ``message_id`` names no task.
        """
        if since is not None and cursor is not None:
            raise InvalidInput("pass either since or cursor, not both")
        _check_range("limit", limit, 1, config.MAX_PULL_LIMIT)
        wait = self._check_wait(wait_seconds)
        since_at = parse_instant(since, field="since") if since is not None else None
        after = _parse_cursor(cursor) if cursor is not None else None
        if task_id is not None:
            check_task_id(task_id, "message_id")
        durable = since is None and cursor is None and task_id is None

        async with self._store.read() as tx:
            if task_id is not None:
                task_id = (await tx.get_task(task_id)).id
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
                    after_seq=after, since=since_at, task_id=task_id, limit=limit + 1
                )
                floor = after if after is not None else await tx.last_seq()
            remaining = deadline - loop.time()
            if rows or remaining <= 0 or self.signal.closed or _is_set(stop):
                break
            logger.debug("pull for %s waiting up to %.1f s for an update", identity, remaining)
            await self.signal.wait(generation, remaining, stop)

        if _is_set(stop):
            logger.info("pull_updates for %s: the client went away; nothing marked read", identity)
            return UpdatePage(updates=[], next_cursor=str(floor), has_more=bool(rows))
        more = len(rows) > limit
        rows = rows[:limit]
        position = rows[-1].seq if rows else floor
        if durable and rows:
            async with self._store.write() as tx:
                await tx.advance_cursor(identity, position, at=self._clock())
        return UpdatePage(updates=rows, next_cursor=str(position), has_more=more)

    def _check_wait(self, wait_seconds: float) -> float:
        """``wait_seconds`` capped at MAX_WAIT_SECONDS; NaN, infinities and negatives refused."""
        if not math.isfinite(wait_seconds) or wait_seconds < 0:
            raise InvalidInput(
                f"wait_seconds must be 0 or more (a finite number of seconds), got {wait_seconds}"
            )
        return min(float(wait_seconds), self._max_wait_seconds)

    # --- the direct agent API ------------------------------------------------------------------

    async def claim_next(self, target: str) -> Task | None:
        """Hand the oldest pending task of ``target`` to its agent (-> acknowledged), atomically:
        two agents claiming at once never get the same task. None when there is nothing to do
        (or, one at a time, while another task is with the agent).

        The claim is a lease of ``claim_seconds``: the task's ``claim_expires_at``. Claims of this
        target that lapsed are returned to the queue first, so they can be handed out again.
        """
        policy = self.policy(target)
        if policy.uses_outbox:
            raise InvalidInput(f"target {target!r} takes its tasks over Telegram, not next_task")

        async def claim(tx: StoreTransaction) -> tuple[Task | None, list[Task]]:
            now = self._clock()
            await tx.touch_presence(target, at=now)
            expired = await self._expire_claims(tx, now, target)
            if policy.one_at_a_time and await tx.count_handed_over(target, excluding=None) > 0:
                return None, expired
            task = await tx.oldest_pending(target)
            if task is None:
                return None, expired
            claimed = await apply_transition(
                tx,
                task,
                TaskStatus.ACKNOWLEDGED,
                "claimed by the agent",
                now=now,
                lease_seconds=self._claim_seconds,
            )
            return claimed, expired

        claimed, expired = await self._store.commit(claim)
        if claimed is not None or expired:
            self.signal.notify()
        return claimed

    async def wait_for_task(
        self, target: str, wait_seconds: float, *, stop: asyncio.Event | None = None
    ) -> Task | None:
        """claim_next, waiting up to ``wait_seconds`` (capped) for a task to arrive.

        Once ``stop`` is set (the caller went away) it returns None without claiming anything.

        Raises:
            InvalidInput: a negative or non-finite wait.
        """
        wait = self._check_wait(wait_seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            generation = self.signal.generation()
            if _is_set(stop):
                logger.info(
                    "next_task for %s: the client went away; nothing claimed",
                    target,
                    extra={"target": target},
                )
                return None
            task = await self.claim_next(target)
            remaining = deadline - loop.time()
            if task is not None or remaining <= 0 or self.signal.closed:
                return task
            await self.signal.wait(generation, remaining, stop)

    async def _expire_claims(
        self, tx: StoreTransaction, now: datetime, target: str | None = None
    ) -> list[Task]:
        """Put every lapsed claim back in the queue (the one move backwards, by the bridge)."""
        returned = []
        for task in await tx.expired_claims(now, target=target):
            returned.append(
                await apply_transition(
                    tx, task, TaskStatus.PENDING, CLAIM_EXPIRED_REASON, now=now, by_bridge=True
                )
            )
            logger.info(
                "the claim on task %s expired; it is back in the queue",
                task.id,
                extra={"task_id": task.id, "target": task.target},
            )
        return returned

    async def expire_claims(self) -> list[Task]:
        """Return every claimed, never-started task whose lease ran out to ``pending``."""
        now = self._clock()
        # A read first: this runs every poll, and almost always finds nothing to do.
        async with self._store.read() as tx:
            if not await tx.expired_claims(now):
                return []
        async with self._store.write() as tx:
            returned = await self._expire_claims(tx, now)
        if returned:
            self.signal.notify()
        return returned

    async def expire_claims_every(self, interval: float) -> None:
        """Run :meth:`expire_claims` every ``interval`` seconds, until cancelled."""
        failures = RepeatedFailure(logger, "could not return expired claims to the queue")
        while True:
            try:
                await self.expire_claims()
            except DatabaseUnwritable:
                pass  # the store says so in the log, once a minute; the next round tries again
            except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                failures.failed(exc)
            else:
                failures.succeeded()
            await asyncio.sleep(interval)

    async def agent_task(
        self, target: str, task_id: str, *, field: str = "id", session: str | None = None
    ) -> Task:
        """A task of ``target``, for its agent: any call on it renews the lease of its claim.

        Another target's task is as good as unknown to its agent. ``session``, when given, is
        recorded as the agent's session for the task (``agent_session``), so another runner
        can resume it.

        Raises:
            TaskNotFound: no such task for this target.
            InvalidInput: a malformed id, or a short id that matches several of the target's
                tasks (a short id is looked up among the target's own tasks only); a malformed
                session.
        """
        check_task_id(task_id, field)
        if session is not None:
            check_agent_session(session)

        async def touch(tx: StoreTransaction) -> Task:
            return await self._agent_task(tx, target, task_id, session=session)

        return await self._store.commit(touch)

    async def _agent_task(
        self, tx: StoreTransaction, target: str, task_id: str, *, session: str | None = None
    ) -> Task:
        """:meth:`agent_task` inside a write transaction."""
        now = self._clock()
        await tx.touch_presence(target, at=now)
        task = await tx.task_of_target(target, task_id)
        if task is None:
            raise TaskNotFound(task_id)
        changed = False
        if task.claim_expires_at is not None:
            if task.claim_expires_at <= now:
                # Lapsed, swept back to the queue within a poll: a call held up past the lease
                # (a stalled database, a paused server) must not revive it, or an agent could
                # not tell its own late start from another agent's after the sweep.
                raise IllegalTransition(
                    f"the claim on task {task.id} lapsed at "
                    f"{task.claim_expires_at.isoformat()}: the task goes back to the queue; "
                    "take tasks with next_task"
                )
            await tx.renew_claim(task.id, until=now + timedelta(seconds=self._claim_seconds))
            changed = True
        if session is not None and session != task.agent_session:
            await tx.set_agent_session(task.id, session)
            changed = True
        if changed:
            task = await tx.get_task(task.id)
        return task

    async def agent_report(
        self,
        target: str,
        task_id: str,
        *,
        text: str | None = None,
        status: TaskStatus | None = None,
        reason: str | None = None,
        field: str = "text",
    ) -> Task:
        """The agent's own report on its task: text (an ``agent`` update) and/or a status.

        Raises:
            TaskNotFound: not a task of this target.
            InvalidInput: empty text (``field`` names it).
            IllegalTransition: the transition table forbids the status, or the task is pending
                (not claimed, or its claim expired and it went back to the queue).
        """
        content = self._check_text(text, field) if text is not None else None
        check_task_id(task_id, "id")

        async def report(tx: StoreTransaction) -> Task:
            task = await self._agent_task(tx, target, task_id)
            if task.status is TaskStatus.PENDING and not self.policy(target).uses_outbox:
                raise IllegalTransition(
                    f"task {task.id} is pending: it is not yours (never claimed, or its claim "
                    "expired and it went back to the queue); take tasks with next_task"
                )
            if status is not None:
                check_transition(task.status, status)
            if content is not None:
                await tx.insert_update(
                    task_id=task.id, kind=UpdateKind.AGENT, content=content, at=self._clock()
                )
            if status is not None:
                task = await apply_transition(tx, task, status, reason, now=self._clock())
            return task

        task = await self._store.commit(report)
        self.signal.notify()
        return task

    async def replies(self, target: str, task_id: str, cursor: str | None) -> UpdatePage:
        """The client's answers to this task's questions, after ``cursor``."""
        after = _parse_cursor(cursor) if cursor is not None else 0
        task = await self.agent_task(target, task_id)
        async with self._store.read() as tx:
            rows = await tx.list_updates(
                after_seq=after, task_id=task.id, limit=config.MAX_PULL_LIMIT
            )
        answers = [u for u in rows if u.kind is UpdateKind.CLIENT]
        position = rows[-1].seq if rows else after
        return UpdatePage(updates=answers, next_cursor=str(position), has_more=False)

    async def touch_presence(self, target: str) -> None:
        """The agent of ``target`` showed a sign of life (a message, an API call)."""
        async with self._store.write() as tx:
            await tx.touch_presence(target, at=self._clock())

    async def presence(self) -> dict[str, datetime]:
        async with self._store.read() as tx:
            return await tx.presence()

    def stall(self, task: Task, last_activity: datetime | None) -> float | None:
        """Seconds without agent activity, if the task is with the agent and stalled."""
        if task.status not in (TaskStatus.ACKNOWLEDGED, TaskStatus.IN_PROGRESS):
            return None
        latest = max(filter(None, [task.updated_at, last_activity]))
        idle = (self._clock() - latest).total_seconds()
        return idle if idle >= self._stall_seconds else None

    async def last_activity(self, task_ids: Sequence[str]) -> dict[str, datetime]:
        async with self._store.read() as tx:
            return await tx.last_agent_activity(task_ids)

    async def stalls(self, tasks: Sequence[Task]) -> dict[str, float]:
        """Idle seconds of each stalled task among ``tasks``."""
        activity = await self.last_activity([t.id for t in tasks])
        found = {}
        for task in tasks:
            idle = self.stall(task, activity.get(task.id))
            if idle is not None:
                found[task.id] = idle
        return found

    async def stalled_seconds(self, task: Task) -> float | None:
        """:meth:`stall` of one task, at a cost that does not grow with its history."""
        if task.status not in (TaskStatus.ACKNOWLEDGED, TaskStatus.IN_PROGRESS):
            return None
        async with self._store.read() as tx:
            latest = await tx.latest_agent_update_at(task.id)
        return self.stall(task, latest)

    async def target_summaries(self) -> list[TargetSummary]:
        """Every target with its queue counts, when its agent was last seen, and stalled tasks."""
        seen = await self.presence()
        summaries = []
        for policy in self._policies.values():
            async with self._store.read() as tx:
                counts = await tx.count_by_status(policy.name)
                with_agent = await tx.tasks_with_status(
                    policy.name, (TaskStatus.ACKNOWLEDGED, TaskStatus.IN_PROGRESS)
                )
            stalled = await self.stalls(with_agent)
            last = seen.get(policy.name)
            summaries.append(
                TargetSummary(
                    policy=policy,
                    by_status=counts,
                    last_seen_at=last,
                    reachable=last is not None
                    and (self._clock() - last).total_seconds() < self._stall_seconds,
                    stalled=len(stalled),
                )
            )
        return summaries

    # --- retention ----------------------------------------------------------------------------

    async def prune(
        self, older_than: timedelta, *, dry_run: bool = False, batch_size: int = PRUNE_BATCH
    ) -> PruneReport:
        """Delete tasks that ended more than ``older_than`` ago, with their updates, deliveries
        and journal rows, and old updates and journal rows of no task; open tasks are never
        touched. Each batch is its own short write transaction, so the server's writers wait
        at most one batch. Cursors stay valid: ``seq`` is never reused, so a cursor into pruned
        history continues at the next surviving update.
        """
        cutoff = self._clock() - older_than
        if dry_run:
            async with self._store.read() as tx:
                return await tx.count_prunable(cutoff)
        total = PruneReport()
        while True:
            async with self._store.read() as tx:
                ids = await tx.ended_task_ids(cutoff, limit=batch_size)
            if not ids:
                break
            async with self._store.write() as tx:
                removed = await tx.delete_ended_tasks(ids, cutoff)
            total += removed
            if removed.tasks == 0:  # pragma: no cover - ended tasks never reopen
                break
            await asyncio.sleep(0)  # let writers waiting for the lock in between batches
        while True:
            async with self._store.write() as tx:
                removed = await tx.delete_unattached(cutoff, limit=batch_size)
            total += removed
            if removed.updates < batch_size and removed.journal < batch_size:
                break
            await asyncio.sleep(0)
        return total

    async def prune_every(self, older_than: timedelta, interval: float) -> None:
        """Run :meth:`prune` now and then every ``interval`` seconds, until cancelled."""
        while True:
            try:
                report = await self.prune(older_than)
            except DatabaseUnwritable:
                pass  # the store says so in the log, once a minute; the next round tries again
            except Exception:
                logger.exception("retention: could not prune old tasks")
            else:
                logger.info(
                    "retention: removed %d tasks, %d updates, %d deliveries, %d journal rows "
                    "older than %s",
                    report.tasks,
                    report.updates,
                    report.deliveries,
                    report.journal,
                    older_than,
                )
            await asyncio.sleep(interval)

    async def metrics_snapshot(self) -> QueueMetrics:
        """Every target's figures for a metrics scrape: a few grouped queries."""
        summaries = await self.target_summaries()
        now = self._clock()
        async with self._store.read() as tx:
            oldest = await tx.oldest_pending_by_target()
            due = await tx.count_outbox_by_target(OutboxState.PENDING, due_at=now)
            failed = await tx.count_outbox_by_target(OutboxState.FAILED)
        return QueueMetrics(
            targets=summaries,
            oldest_pending_seconds={
                target: max(0.0, (now - created).total_seconds())
                for target, created in oldest.items()
            },
            deliveries_due=due,
            deliveries_failed=failed,
        )

    # --- other processes ----------------------------------------------------------------------

    async def watch_for_changes(self, interval: float) -> None:
        """Wake waiters when another process (a second server, the CLI) commits an update.

        Writes in this process wake waiters at once; other processes' writes are noticed here,
        within milliseconds where the store can watch the database (inotify on SQLite, LISTEN on
        PostgreSQL), else by one cheap primary-key lookup per interval for the whole process,
        however many clients are waiting. Runs until cancelled.
        """
        failures = RepeatedFailure(logger, "could not check the database for new updates")
        async with self._store.changes() as feed:
            last: int | None = None
            while True:
                try:
                    current = await self._store.last_seq()
                except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
                    failures.failed(exc)
                else:
                    failures.succeeded()
                    if last is not None and current != last:
                        self.signal.notify()
                    last = current
                if feed is None:
                    await asyncio.sleep(interval)
                else:
                    await feed.wait(interval)

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
        raise InvalidInput(f"unknown status {shown(value)}; use one of: {known}") from None


_CURSOR: Final = re.compile(r"[0-9]{1,18}")  # a seq; below 2**63, what every database holds


def _parse_cursor(value: str) -> int:
    text = value.strip()
    if not _CURSOR.fullmatch(text):
        raise InvalidInput(
            "cursor must be a next_cursor value from an earlier call (up to 18 digits), got "
            f"{shown(value)}"
        )
    return int(text)


def _check_reason(reason: str | None) -> str | None:
    """A reason as stored: trimmed, at most MAX_REASON_CHARS, None when blank."""
    if reason is None or not reason.strip():
        return None
    text = check_storable(reason, "reason").strip()
    if len(text) > config.MAX_REASON_CHARS:
        raise InvalidInput(
            f"reason is {len(text)} characters, over the limit of {config.MAX_REASON_CHARS}; "
            "say it in a few words"
        )
    return text


def _is_set(event: asyncio.Event | None) -> bool:
    return event is not None and event.is_set()
