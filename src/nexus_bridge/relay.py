"""The Telegram relay: what passes between the queue and an agent's Telegram chat.

It delivers the outbox (tasks, answers and cancel notices, part by part, each part journaled so a
restart never posts it twice), journals every message from the chat before anything acts on it,
correlates the agent's messages with its tasks (the only place besides the agent runner that reads
the agent grammar, :mod:`nexus_bridge.protocol`), and keeps the poller lease that lets one process
of several talk to Telegram. A status change it makes is :func:`~nexus_bridge.transition.
apply_transition`, inside its own write transaction, as the queue service's are.

It knows nothing of the Telegram library: :mod:`nexus_bridge.transports.telegram` speaks to
Telegram and calls this relay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from nexus_bridge.db.store import Store, StoreTransaction
from nexus_bridge.domain import (
    InboundMessage,
    Lease,
    OutboxItem,
    OutboxKind,
    OutboxState,
    TargetPolicy,
    Task,
    TaskStatus,
    UpdateKind,
    can_transition,
    first_line,
)
from nexus_bridge.errors import InvalidInput
from nexus_bridge.protocol import AgentMessage, parse_agent_message
from nexus_bridge.queue import QueueService, UpdateSignal
from nexus_bridge.transition import apply_transition

logger = logging.getLogger(__name__)

_MIN_QUOTE_CHARS: Final = 12  # a shorter quoted first line must match exactly
# Tags looked up per agent message: a message stuffed with tags costs a bounded number of queries.
_MAX_TAG_LOOKUPS: Final = 16
# A reply to a message the journal does not know yet (the bridge's own post, whose journal commit
# is still to come) waits this long for it before it is correlated without it.
REPLY_TARGET_WAIT_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """An outbox entry that is due, with its task: what the delivery worker posts next."""

    item: OutboxItem
    task: Task


@dataclass(frozen=True, slots=True)
class InboundResult:
    """What a message from the agent did: which task it joined, and any status it applied."""

    task_id: str | None
    status: TaskStatus | None
    applied: bool
    deferred: bool = False  # not acted on yet: it answers a message not journaled yet


class TelegramRelay:
    """The outbox, the inbound journal and the poller lease, beside a :class:`QueueService`
    (whose targets, clock and update signal it shares)."""

    def __init__(self, store: Store, queue: QueueService) -> None:
        self._store = store
        self._queue = queue
        self._clock = queue.now
        self._policies: dict[str, TargetPolicy] = {p.name: p for p in queue.policies}
        self.signal: UpdateSignal = queue.signal

    def now(self) -> datetime:
        """The shared clock (injectable in tests)."""
        return self._clock()

    async def touch_presence(self, target: str) -> None:
        """The agent of ``target`` showed a sign of life (a message in its chat)."""
        await self._queue.touch_presence(target)

    # --- delivery (the outbox) --------------------------------------------------------------

    async def next_delivery(self) -> Delivery | None:
        """The next due outbox entry. Entries whose task ended before delivery are skipped; a
        one-at-a-time target's next task waits while another of its tasks is with the agent."""
        while True:
            # A read first: the worker looks after every update, and most need no delivery.
            async with self._store.read() as tx:
                candidates = await tx.due_outbox(self._clock(), limit=50)
                chosen: Delivery | None = None
                for item in candidates:
                    task = await tx.get_task(item.task_id)
                    ended = item.kind is not OutboxKind.CANCEL and task.status.is_terminal
                    if ended and item.parts_sent == 0:
                        chosen = Delivery(item=item, task=task)  # to be skipped below
                        break
                    if (
                        item.kind is OutboxKind.TASK
                        and item.parts_sent == 0
                        and (await self._target_busy(tx, task))
                    ):
                        continue
                    chosen = Delivery(item=item, task=task)
                    break
            if chosen is None:
                return None
            notice = chosen.item.kind is OutboxKind.CANCEL
            if notice or not chosen.task.status.is_terminal or chosen.item.parts_sent > 0:
                return chosen
            async with self._store.write() as tx:
                await tx.update_outbox(
                    chosen.item.id,
                    state=OutboxState.SKIPPED.value,
                    last_error=f"the task was {chosen.task.status.value} before delivery",
                )

    async def _target_busy(self, tx: StoreTransaction, task: Task) -> bool:
        """Whether a one-at-a-time target has another task with its agent right now."""
        policy = self._policies.get(task.target)
        if policy is None or not policy.one_at_a_time:
            return False
        return await tx.count_handed_over(task.target, excluding=task.id) > 0

    async def next_delivery_due_at(self) -> datetime | None:
        """When the earliest pending delivery is due (maybe already), or None if none is pending."""
        async with self._store.read() as tx:
            return await tx.earliest_pending_outbox()

    async def record_part_sent(
        self,
        delivery: Delivery,
        *,
        part: int,
        chat_id: int,
        telegram_message_id: int,
        lease_epoch: int | None = None,
    ) -> list[int | None]:
        """Journal one posted part; a restart resumes after it, so no part is posted twice.

        Returns the lease epochs under which the same part had already been journaled: empty,
        unless two holders of the poller lease both posted it (then it is logged as doubled).
        """
        now = self._clock()
        async with self._store.write() as tx:
            # The same Telegram message journaled again is a retry whose first commit went
            # through unseen (the database went away as it answered), not a second copy.
            earlier = await tx.epochs_of_part(
                delivery.item.id, part, chat_id=chat_id, telegram_message_id=telegram_message_id
            )
            await tx.journal_telegram_message(
                chat_id=chat_id,
                telegram_message_id=telegram_message_id,
                direction="out",
                accepted=True,
                at=now,
                task_id=delivery.task.id,
                outbox_id=delivery.item.id,
                part=part,
                processed_at=now,
                lease_epoch=lease_epoch,
            )
            await tx.update_outbox(delivery.item.id, parts_sent=part + 1)
        if earlier:
            logger.warning(
                "task %s: part %d was posted twice (Telegram message %d under lease epoch %s; "
                "already posted under epoch %s)",
                delivery.task.id,
                part,
                telegram_message_id,
                lease_epoch,
                ", ".join(str(e) for e in earlier),
            )
        return earlier

    async def mark_delivered(self, delivery: Delivery) -> None:
        async with self._store.write() as tx:
            await tx.update_outbox(
                delivery.item.id,
                state=OutboxState.DELIVERED.value,
                attempts=delivery.item.attempts + 1,
                delivered_at=self._clock(),
                last_error=None,
            )

    async def mark_retry(self, delivery: Delivery, *, error: str, delay_seconds: float) -> None:
        """Try again after ``delay_seconds``; the error stays visible in get_message."""
        async with self._store.write() as tx:
            await tx.update_outbox(
                delivery.item.id,
                attempts=delivery.item.attempts + 1,
                last_error=error,
                next_attempt_at=self._clock() + timedelta(seconds=delay_seconds),
            )

    async def postpone(self, delivery: Delivery, *, reason: str, until: datetime) -> None:
        """Not tried now (Telegram asked the whole chat to wait): no attempt is counted."""
        async with self._store.write() as tx:
            await tx.update_outbox(delivery.item.id, last_error=reason, next_attempt_at=until)

    async def mark_failed(self, delivery: Delivery, *, error: str) -> None:
        """A permanent refusal: the delivery fails and the task ends in error, saying why."""
        async with self._store.write() as tx:
            await tx.update_outbox(
                delivery.item.id,
                state=OutboxState.FAILED.value,
                attempts=delivery.item.attempts + 1,
                last_error=error,
            )
            task = await tx.get_task(delivery.task.id)
            if not task.status.is_terminal:
                what = "the task" if delivery.item.kind is OutboxKind.TASK else "the answer"
                await apply_transition(
                    tx,
                    task,
                    TaskStatus.ERROR,
                    f"Telegram refused {what}: {error}",
                    now=self._clock(),
                )
        self.signal.notify()

    # --- inbound (the agent's messages) ------------------------------------------------------

    async def journal_inbound(
        self,
        *,
        chat_id: int,
        telegram_message_id: int,
        from_id: int | None,
        text: str | None,
        reply_to_telegram_id: int | None,
        accepted: bool,
    ) -> int | None:
        """Journal a received message before anything acts on it; None if already journaled.

        Messages that are not accepted are kept without their text, only to be counted.
        """
        async with self._store.write() as tx:
            return await tx.journal_telegram_message(
                chat_id=chat_id,
                telegram_message_id=telegram_message_id,
                direction="in",
                accepted=accepted,
                at=self._clock(),
                from_id=from_id,
                reply_to_telegram_id=reply_to_telegram_id,
                text=text if accepted else None,
            )

    async def unprocessed_inbound(self) -> list[tuple[int, int]]:
        """Journaled messages (id, chat) not yet acted on (a crash between journal and acting)."""
        async with self._store.read() as tx:
            return await tx.unprocessed_inbound()

    async def process_inbound(self, journal_id: int, *, target: str) -> InboundResult:
        """Turn a journaled agent message into an update, and a status change if it asks for one.

        The task is found by, first match wins: a reply to one of the task's messages; a task
        tag; a ``[Responding to: <first line>]`` announcement; the target's task in progress.
        Only ``target``'s tasks are ever found: another target's task is as good as unknown to
        this agent, on every path. A status change the transition table forbids is recorded as
        text only.
        """
        # The text is parsed outside the write transaction: however long parsing takes, it
        # never holds the database's write lock.
        async with self._store.read() as tx:
            inbound = await tx.inbound_message(journal_id)
            replied = inbound.reply_to_telegram_id
            unknown = replied is not None and not await tx.is_journaled(inbound.chat_id, replied)
        if unknown and inbound.created_at is not None:
            age = (self._clock() - inbound.created_at).total_seconds()
            if age < REPLY_TARGET_WAIT_SECONDS:
                # An answer can overtake the journal entry of the post it answers (a fast agent,
                # a stalled poster): act on it once the post is journaled, or after the wait.
                return InboundResult(task_id=None, status=None, applied=False, deferred=True)
        text = inbound.text or ""
        parsed = parse_agent_message(text)
        async with self._store.write() as tx:
            if (await tx.inbound_message(journal_id)).processed_at is not None:
                # Already acted on (by a recovery pass, or another process): once only.
                return InboundResult(task_id=None, status=None, applied=False)
            task = await self._correlate(tx, inbound, parsed, target)
            now = self._clock()
            await tx.insert_update(
                task_id=task.id if task else None,
                kind=UpdateKind.AGENT,
                content=text,
                at=now,
            )
            applied = False
            if task is not None and parsed.status is not None:
                if can_transition(task.status, parsed.status):
                    await apply_transition(tx, task, parsed.status, None, now=now)
                    applied = True
                else:
                    logger.info(
                        "agent asked to move task %s from %s to %s: not allowed, kept as text",
                        task.id,
                        task.status.value,
                        parsed.status.value,
                    )
            await tx.mark_inbound_processed(journal_id, task_id=task.id if task else None, at=now)
        self.signal.notify()
        return InboundResult(
            task_id=task.id if task else None, status=parsed.status, applied=applied
        )

    async def _correlate(
        self,
        tx: StoreTransaction,
        inbound: InboundMessage,
        parsed: AgentMessage,
        target: str,
    ) -> Task | None:
        if inbound.reply_to_telegram_id is not None:
            task_id = await tx.task_of_telegram_message(
                inbound.chat_id, inbound.reply_to_telegram_id
            )
            if task_id is not None:
                replied = await tx.task_of_target(target, task_id)
                if replied is not None:
                    return replied
        for tag in parsed.task_tags[:_MAX_TAG_LOOKUPS]:
            try:
                tagged = await tx.task_of_target(target, tag)
            except InvalidInput:  # a short id several of the target's tasks share
                continue
            if tagged is not None:
                return tagged
        open_tasks = await tx.open_tasks(target)
        if parsed.responding_to:
            wanted = parsed.responding_to.casefold().rstrip(".…")
            for task in open_tasks:
                line = first_line(task.content, 10_000).casefold()
                # Equal, or one a prefix of the other (an agent may shorten or run on) when the
                # shorter side is long enough to mean something.
                shorter = min(len(line), len(wanted))
                prefix = line.startswith(wanted) or wanted.startswith(line)
                if wanted and (line == wanted or (prefix and shorter >= _MIN_QUOTE_CHARS)):
                    return task
        in_progress = [t for t in open_tasks if t.status is TaskStatus.IN_PROGRESS]
        return in_progress[0] if in_progress else None

    # --- leases -----------------------------------------------------------------------------

    async def acquire_lease(
        self, name: str, holder: str, *, seconds: float, replacing: str | None = None
    ) -> int | None:
        """Take or renew a lease: its epoch, or None while another live holder has it.

        ``replacing`` names a holder known to be dead, whose lease is taken before it expires.
        """
        now = self._clock()
        async with self._store.write() as tx:
            return await tx.acquire_lease(
                name, holder, now=now, until=now + timedelta(seconds=seconds), replacing=replacing
            )

    async def release_lease(self, name: str, holder: str) -> None:
        async with self._store.write() as tx:
            await tx.release_lease(name, holder, now=self._clock())

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
        """What the lease's holder reports about the service it talks to (for other processes)."""
        async with self._store.write() as tx:
            await tx.record_lease_health(
                name,
                holder,
                health=health,
                last_ok_at=last_ok_at,
                last_error=last_error,
                error_since=error_since,
            )

    async def lease_row(self, name: str) -> Lease | None:
        """The lease as recorded, expired or not (whose it was, its epoch, its holder's report)."""
        async with self._store.read() as tx:
            return await tx.get_lease(name)

    async def lease(self, name: str) -> Lease | None:
        """The lease if it is held and has not expired."""
        async with self._store.read() as tx:
            lease = await tx.get_lease(name)
        if lease is None or lease.expires_at < self._clock():
            return None
        return lease
