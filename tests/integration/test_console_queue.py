"""What the console's task page asks of the queue: one task's stall, read without walking its
whole history, agrees with the stall the MCP tools report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nexus_bridge.db.store import Store
from nexus_bridge.domain import TaskStatus
from nexus_bridge.queue import QueueService


async def test_one_tasks_stall_agrees_with_the_tools_stall(store: Store) -> None:
    now = [datetime(2026, 11, 29, 12, 0, tzinfo=UTC)]
    queue = QueueService(store, stall_seconds=60, clock=lambda: now[0])
    task = (await queue.enqueue("stall me")).task
    assert await queue.stalled_seconds(task) is None  # pending: not with the agent
    await queue.transition(task.id, TaskStatus.ACKNOWLEDGED)
    task = await queue.transition(task.id, TaskStatus.IN_PROGRESS)
    for n in range(50):
        await queue.add_agent_update(task.id, f"step {n}")
    now[0] += timedelta(seconds=30)
    await queue.add_agent_update(task.id, "the latest step")
    now[0] += timedelta(seconds=59)
    assert await queue.stalled_seconds(task) is None
    assert await queue.stalls([task]) == {}
    now[0] += timedelta(seconds=61)
    idle = await queue.stalled_seconds(task)
    assert idle == (await queue.stalls([task]))[task.id] == 120.0
