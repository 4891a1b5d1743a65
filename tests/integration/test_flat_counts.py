"""``queue_status`` reads counts kept by triggers (migration 0011), not a count over the history:
the counts equal a full count of the rows after every kind of change, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select

from nexus_bridge.db import migrate
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.models import tasks, telegram_messages, updates
from nexus_bridge.db.store import Store
from nexus_bridge.domain import TaskStatus, UpdateKind
from nexus_bridge.queue import QueueCounts, QueueService
from nexus_bridge.relay import TelegramRelay

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def scanned(store: Store) -> tuple[dict[TaskStatus, int], int, int]:
    """The counts queue_status used to compute: a count over every row."""
    async with store.engine.connect() as conn:
        by_status = {status: 0 for status in TaskStatus}
        rows = await conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status))
        for status, n in rows.all():
            by_status[TaskStatus(status)] = int(n)
        total = (await conn.execute(select(func.count()).select_from(updates))).scalar_one()
        ignored = (
            await conn.execute(
                select(func.count())
                .select_from(telegram_messages)
                .where(telegram_messages.c.accepted.is_(False))
            )
        ).scalar_one()
    return by_status, int(total), int(ignored)


async def assert_counts_match_rows(queue: QueueService, store: Store) -> QueueCounts:
    counts = await queue.status()
    assert (counts.by_status, counts.total_updates, counts.ignored_messages) == await scanned(store)
    return counts


async def test_queue_status_matches_a_count_of_the_rows_after_every_kind_of_change(
    store: Store,
) -> None:
    clock = Clock(NOW - timedelta(days=100))
    queue = QueueService(store, max_message_chars=1_000, max_wait_seconds=5, clock=clock)
    empty = await assert_counts_match_rows(queue, store)
    assert empty.total_updates == 0

    done = (await queue.enqueue("finish this")).task.id
    await queue.agent_report("homelab", done, status=TaskStatus.ACKNOWLEDGED)
    await queue.agent_report("homelab", done, status=TaskStatus.IN_PROGRESS)
    await queue.agent_report("homelab", done, text="halfway")
    await queue.agent_report("homelab", done, status=TaskStatus.COMPLETE)
    cancelled = (await queue.enqueue("never mind")).task.id
    await queue.cancel(cancelled, "changed my mind")
    await queue.enqueue("still waiting")
    async with store.write() as tx:  # an agent message that joined no task
        await tx.insert_update(
            task_id=None, kind=UpdateKind.AGENT, content="a message about no task", at=clock()
        )
    relay = TelegramRelay(store, queue)
    for telegram_id in (1, 1, 2):  # a redelivered message is journaled (and counted) once
        await relay.journal_inbound(
            chat_id=-100, telegram_message_id=telegram_id, from_id=666, text="spam",
            reply_to_telegram_id=None, accepted=False,
        )  # fmt: skip
    busy = await assert_counts_match_rows(queue, store)
    assert busy.by_status[TaskStatus.COMPLETE] == 1
    assert busy.by_status[TaskStatus.PENDING] == 1
    assert busy.ignored_messages == 2
    assert await queue.status("homelab") == QueueCounts(
        by_status=busy.by_status,
        total_updates=busy.total_updates - 1,  # the update of no task belongs to no target
        current_task=None,
        ignored_messages=busy.ignored_messages,
    )

    clock.now = NOW
    report = await queue.prune(timedelta(days=90))
    assert report.tasks == 2
    pruned = await assert_counts_match_rows(queue, store)
    assert pruned.by_status[TaskStatus.COMPLETE] == 0
    assert pruned.ignored_messages == 0


def test_migration_0011_counts_the_rows_already_there(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    url = f"sqlite+aiosqlite:///{path}"
    migrate.upgrade(url, "0009")
    with closing(sqlite3.connect(path)) as conn:
        for n, status in enumerate(["complete", "complete", "pending", "in_progress"]):
            conn.execute(
                "INSERT INTO messages (id, target, content, content_hash, status, urgent, "
                "created_at, updated_at) VALUES (?, 'homelab', ?, ?, ?, 0, "
                "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')",
                (f"t{n}", f"task {n}", f"h{n}", status),
            )
        conn.executemany(
            "INSERT INTO updates (message_id, kind, content, created_at) "
            "VALUES (?, 'agent', 'x', '2026-01-01 00:00:00.000000')",
            [("t0",), ("t0",), ("t3",), (None,)],
        )
        conn.execute(
            "INSERT INTO telegram_messages (chat_id, telegram_message_id, direction, accepted, "
            "created_at) VALUES (-100, 7, 'in', 0, '2026-01-01 00:00:00.000000')"
        )
        conn.commit()
    migrate.upgrade(url)

    async def check() -> None:
        store = Store(create_engine(url))
        try:
            queue = QueueService(store)
            counts = await assert_counts_match_rows(queue, store)
            assert counts.by_status[TaskStatus.COMPLETE] == 2
            assert counts.total_updates == 4
            assert counts.ignored_messages == 1
            assert (await queue.status("homelab")).total_updates == 3
            assert counts.current_task is not None
            assert counts.current_task.id == "t3"
        finally:
            await store.dispose()

    asyncio.run(check())
