"""What the console's task page asks of the queue: one task's stall, read without walking its
whole history, agrees with the stall the MCP tools report."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta

from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store, latest_agent_updates
from nexus_bridge.domain import TaskStatus
from nexus_bridge.queue import QueueService


async def test_one_tasks_stall_agrees_with_the_tools_stall(store: Store) -> None:
    now = [datetime(2026, 11, 29, 12, 0, tzinfo=UTC)]
    queue = QueueService(store, stall_seconds=60, clock=lambda: now[0])
    task = (await queue.enqueue("stall me")).task
    assert await queue.stalled_seconds(task) is None  # pending: not with the agent
    await queue.agent_report("homelab", task.id, status=TaskStatus.ACKNOWLEDGED)
    task = await queue.agent_report("homelab", task.id, status=TaskStatus.IN_PROGRESS)
    for n in range(50):
        await queue.agent_report("homelab", task.id, text=f"step {n}")
    now[0] += timedelta(seconds=30)
    await queue.agent_report("homelab", task.id, text="the latest step")
    now[0] += timedelta(seconds=59)
    assert await queue.stalled_seconds(task) is None
    assert await queue.stalls([task]) == {}
    now[0] += timedelta(seconds=61)
    idle = await queue.stalled_seconds(task)
    assert idle == (await queue.stalls([task]))[task.id] == 120.0


async def test_the_tools_stall_query_costs_the_same_for_a_long_history(
    migrated_sqlite_url: str,
) -> None:
    """``list_messages`` and ``get_message`` read each task's latest agent update: SQLite does the
    same work for a task with 2,000 agent updates as for one with 2 (counted in VM steps)."""
    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(store)
    try:
        short = (await queue.enqueue("a short history")).task
        long = (await queue.enqueue("a long history")).task
        for task, reports in ((short, 2), (long, 2000)):
            await queue.agent_report("homelab", task.id, status=TaskStatus.ACKNOWLEDGED)
            for n in range(reports):
                await queue.agent_report("homelab", task.id, text=f"step {n}")
        activity = await queue.last_activity([short.id, long.id])
        assert set(activity) == {short.id, long.id}
    finally:
        await store.dispose()

    def steps(task_id: str) -> int:
        query = latest_agent_updates([task_id]).compile(
            dialect=sqlite_dialect(), compile_kwargs={"literal_binds": True}
        )
        counted = [0]

        def count() -> int:
            counted[0] += 1
            return 0

        path = migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///")
        with closing(sqlite3.connect(path)) as conn:
            conn.set_progress_handler(count, 10)
            assert conn.execute(str(query)).fetchone()[1] is not None
        return counted[0]

    assert steps(long.id) <= steps(short.id) + 5
