"""Retention: ``QueueService.prune`` on SQLite and PostgreSQL deletes old ended tasks with
everything that belongs to them, never an open task, and cursors stay valid."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from nexus_bridge.db import migrate
from nexus_bridge.db.models import outbox, tasks, telegram_messages
from nexus_bridge.db.store import Store
from nexus_bridge.domain import OutboxKind, PruneReport, TaskStatus, UpdateKind
from nexus_bridge.queue import QueueService

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
RETENTION = timedelta(days=90)


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW - timedelta(days=100))


@pytest.fixture
def aged_queue(store: Store, clock: Clock) -> QueueService:
    return QueueService(store, max_message_chars=1_000, max_wait_seconds=5, clock=clock)


async def count(store: Store, table: object) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())  # type: ignore[arg-type]


async def ended(queue: QueueService, text: str, status: TaskStatus) -> str:
    task = (await queue.enqueue(text)).task
    if status is TaskStatus.CANCELLED:
        await queue.cancel(task.id, "no longer needed")
    else:
        await queue.agent_report("homelab", task.id, status=TaskStatus.ACKNOWLEDGED)
        await queue.agent_report("homelab", task.id, status=TaskStatus.IN_PROGRESS)
        await queue.agent_report("homelab", task.id, text=f"working on {text}")
        await queue.agent_report("homelab", task.id, status=status)
    return task.id


async def with_delivery_and_journal(store: Store, task_id: str, at: datetime, n: int) -> None:
    async with store.write() as tx:
        outbox_id = await tx.insert_outbox(
            task_id=task_id, kind=OutboxKind.TASK, body="b", reply_to_telegram_id=None, at=at
        )
        await tx.journal_telegram_message(
            chat_id=-100, telegram_message_id=n, direction="out", accepted=True, at=at,
            task_id=task_id, outbox_id=outbox_id,
        )  # fmt: skip
        # An agent message that named the task, journaled, and its outbox-only echo.
        await tx.journal_telegram_message(
            chat_id=-100, telegram_message_id=n + 1, direction="in", accepted=True, at=at,
            task_id=task_id, processed_at=at,
        )  # fmt: skip


async def test_prune_removes_old_ended_tasks_with_their_rows_and_never_an_open_task(
    store: Store, aged_queue: QueueService, clock: Clock
) -> None:
    old_done = await ended(aged_queue, "old and done", TaskStatus.COMPLETE)
    old_failed = await ended(aged_queue, "old and failed", TaskStatus.ERROR)
    old_cancelled = await ended(aged_queue, "old and cancelled", TaskStatus.CANCELLED)
    await with_delivery_and_journal(store, old_done, clock.now, 10)
    old_open = (await aged_queue.enqueue("old but still pending")).task.id
    old_working = (await aged_queue.enqueue("old and in progress")).task.id
    await aged_queue.agent_report("homelab", old_working, status=TaskStatus.ACKNOWLEDGED)
    await aged_queue.agent_report("homelab", old_working, status=TaskStatus.IN_PROGRESS)
    await with_delivery_and_journal(store, old_open, clock.now, 20)
    async with store.write() as tx:  # an old message from a stranger, and one not yet acted on
        await tx.insert_update(  # and an old agent message that named no task
            task_id=None,
            kind=UpdateKind.AGENT,
            content="an old message that named no task",
            at=clock.now,
        )
        await tx.journal_telegram_message(
            chat_id=-100, telegram_message_id=30, direction="in", accepted=False, at=clock.now
        )
        await tx.journal_telegram_message(
            chat_id=-100, telegram_message_id=31, direction="in", accepted=True, at=clock.now
        )
    clock.now = NOW - timedelta(days=10)
    recent = await ended(aged_queue, "recently done", TaskStatus.COMPLETE)
    clock.now = NOW

    outbox_before = await count(store, outbox)
    expected = await aged_queue.prune(RETENTION, dry_run=True)
    # 3 tasks; each has its status updates and an agent update; the stray agent message;
    # each task's own delivery (the default target is on Telegram) and the added one; the
    # added journal rows and the stranger's message.
    assert expected == PruneReport(tasks=3, updates=13, deliveries=4, journal=3)
    assert await count(store, tasks) == 6  # a dry run deletes nothing

    assert await aged_queue.prune(RETENTION, batch_size=2) == expected
    async with store.read() as tx:
        left = {t.id for t in await tx.list_tasks(status=None, target=None, limit=50, before=None)}
    assert left == {old_open, old_working, recent}
    for gone in (old_done, old_failed, old_cancelled):
        async with store.read() as tx:
            assert await tx.list_updates(task_id=gone, limit=10) == []
    assert await count(store, outbox) == outbox_before - 4  # the open tasks' stay
    assert await count(store, telegram_messages) == 3  # the open task's two and the unprocessed
    assert (await aged_queue.get(old_open)).task.status is TaskStatus.PENDING
    assert await aged_queue.prune(RETENTION) == PruneReport()  # nothing left to do


async def test_a_cursor_into_pruned_history_continues_at_the_next_surviving_update(
    store: Store, aged_queue: QueueService, clock: Clock
) -> None:
    first = await ended(aged_queue, "pruned one", TaskStatus.COMPLETE)
    async with store.read() as tx:
        into_pruned = (await tx.list_updates(task_id=first, limit=10))[1].seq
    durable = await aged_queue.pull("claude", limit=2)  # the durable cursor stops in there too
    await ended(aged_queue, "pruned two", TaskStatus.COMPLETE)
    clock.now = NOW
    survivor = (await aged_queue.enqueue("survivor")).task.id

    await aged_queue.prune(RETENTION)

    page = await aged_queue.pull("someone", cursor=str(into_pruned))
    assert [u.task_id for u in page.updates] == [survivor]
    after_durable = await aged_queue.pull("claude")
    assert int(durable.next_cursor) < after_durable.updates[0].seq
    assert [u.task_id for u in after_durable.updates] == [survivor]


async def test_pruning_the_newest_updates_never_reuses_their_seq(
    store: Store, aged_queue: QueueService, clock: Clock
) -> None:
    await ended(aged_queue, "the only task", TaskStatus.COMPLETE)
    async with store.read() as tx:
        last = await tx.last_seq()
    clock.now = NOW
    assert (await aged_queue.prune(RETENTION)).tasks == 1
    held = await aged_queue.pull("claude", cursor=str(last))
    fresh = (await aged_queue.enqueue("after the prune")).task.id
    page = await aged_queue.pull("claude", cursor=held.next_cursor)
    assert [u.task_id for u in page.updates] == [fresh]
    assert page.updates[0].seq > last


def test_migration_0008_keeps_every_update_and_never_reuses_a_seq(tmp_path: Path) -> None:
    """0002 and 0005 rebuilt updates and outbox without AUTOINCREMENT; 0008 puts it back."""
    path = tmp_path / "bridge.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url, "0007")
    with closing(sqlite3.connect(path)) as conn:
        conn.execute(
            "INSERT INTO messages (id, target, content, content_hash, status, urgent, "
            "created_at, updated_at) VALUES ('t', 'homelab', 'x', 'h', 'complete', 0, "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')"
        )
        conn.executemany(
            "INSERT INTO updates (message_id, kind, content, created_at) "
            "VALUES ('t', 'status', ?, '2026-01-01 00:00:00.000000')",
            [(f"u{i}",) for i in range(5)],
        )
        conn.commit()
    migrate.upgrade(url)
    with closing(sqlite3.connect(path)) as conn:
        kept = [r[0] for r in conn.execute("SELECT content FROM updates ORDER BY seq")]
        conn.execute("DELETE FROM updates WHERE seq >= 4")  # the newest go (a prune)
        conn.execute(
            "INSERT INTO updates (task_id, kind, content, created_at) "
            "VALUES ('t', 'status', 'new', '2026-01-02 00:00:00.000000')"
        )
        (new_seq,) = conn.execute("SELECT seq FROM updates WHERE content = 'new'").fetchone()
    assert kept == [f"u{i}" for i in range(5)]
    assert new_seq == 6  # not 4: a cursor at 5 still sees it
