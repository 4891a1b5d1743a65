"""The queue service on real databases: SQLite files and PostgreSQL, migrated by alembic."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from nexus_bridge.db.store import Store
from nexus_bridge.domain import TaskStatus, UpdateKind
from nexus_bridge.errors import (
    IllegalTransition,
    InvalidInput,
    TaskAlreadyEnded,
    TaskNotFound,
)
from nexus_bridge.queue import QueueService


async def test_enqueue_stores_a_pending_task_and_records_it_as_a_status_update(
    queue: QueueService,
) -> None:
    result = await queue.enqueue("  Fix the nexus.mg DNS record \n")
    assert result.queued
    assert result.task.status is TaskStatus.PENDING
    assert result.task.content == "Fix the nexus.mg DNS record"
    assert result.task.target == "homelab"
    detail = await queue.get(result.task.id)
    assert detail.task == result.task
    assert [(u.kind, u.task_id) for u in detail.recent_updates] == [
        (UpdateKind.STATUS, result.task.id)
    ]
    assert detail.task.created_at.utcoffset() == timedelta(0)


async def test_an_identical_open_task_is_rejected_with_its_id_and_status(
    queue: QueueService,
) -> None:
    first = await queue.enqueue("restart jellyfin")
    await queue.agent_report("homelab", first.task.id, status=TaskStatus.IN_PROGRESS)
    again = await queue.enqueue("\trestart jellyfin  ")
    assert not again.queued
    assert again.task.id == first.task.id
    assert again.task.status is TaskStatus.IN_PROGRESS
    status = await queue.status()
    assert status.by_status[TaskStatus.IN_PROGRESS] == 1
    assert sum(status.by_status.values()) == 1


@pytest.mark.parametrize("ending", [TaskStatus.COMPLETE, TaskStatus.ERROR, TaskStatus.CANCELLED])
async def test_the_same_text_can_be_queued_again_once_the_task_ended(
    queue: QueueService, ending: TaskStatus
) -> None:
    first = await queue.enqueue("rotate the backups")
    await queue.agent_report("homelab", first.task.id, status=ending)
    second = await queue.enqueue("rotate the backups")
    assert second.queued
    assert second.task.id != first.task.id


async def test_concurrent_identical_sends_queue_exactly_one(queue: QueueService) -> None:
    results = await asyncio.gather(*(queue.enqueue("same task") for _ in range(30)))
    queued = [r for r in results if r.queued]
    assert len(queued) == 1
    assert {r.task.id for r in results} == {queued[0].task.id}


async def test_the_database_enforces_dedup_even_for_a_direct_insert(store: Store) -> None:
    """The unique partial index, not the service, is what stops a duplicate."""
    queue = QueueService(store)
    first = await queue.enqueue("only once")
    row = (await queue.get(first.task.id)).task
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        async with store.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO tasks (id, target, content, content_hash, status, "
                    "created_at, updated_at) SELECT 'x', target, content, content_hash, "
                    "'acknowledged', created_at, updated_at FROM tasks WHERE id = :id"
                ),
                {"id": row.id},
            )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("", "message is empty"),
        ("   \n\t ", "message is empty"),
        ("x" * 1_001, "over the limit of 1000"),
    ],
)
async def test_bad_messages_are_refused_and_nothing_is_written(
    queue: QueueService, message: str, error: str
) -> None:
    with pytest.raises(InvalidInput, match=error):
        await queue.enqueue(message)
    status = await queue.status()
    assert sum(status.by_status.values()) == 0
    assert status.total_updates == 0


async def test_an_unknown_target_is_refused_naming_the_known_ones(queue: QueueService) -> None:
    with pytest.raises(InvalidInput, match=r"unknown target 'nexus:felt'; known targets: homelab"):
        await queue.enqueue("hello", target="nexus:felt")


async def test_every_transition_is_recorded_and_stamped(queue: QueueService) -> None:
    task = (await queue.enqueue("upgrade proxmox")).task
    await queue.agent_report("homelab", task.id, status=TaskStatus.ACKNOWLEDGED)
    await queue.agent_report("homelab", task.id, status=TaskStatus.IN_PROGRESS)
    await queue.agent_report("homelab", task.id, text="[Step 1] apt update ✅")
    done = await queue.agent_report(
        "homelab", task.id, status=TaskStatus.COMPLETE, reason="all green"
    )
    assert done.status is TaskStatus.COMPLETE
    assert done.status_reason == "all green"
    assert done.acknowledged_at is not None
    assert done.started_at is not None
    assert done.ended_at is not None
    assert done.acknowledged_at <= done.started_at <= done.ended_at
    history = (await queue.get(task.id)).recent_updates
    assert [u.kind for u in history] == [
        UpdateKind.STATUS,
        UpdateKind.STATUS,
        UpdateKind.STATUS,
        UpdateKind.AGENT,
        UpdateKind.STATUS,
    ]
    assert [u.seq for u in history] == sorted(u.seq for u in history)
    assert history[-1].content == "status: in_progress → complete (all green)"


async def test_an_agent_that_says_it_is_done_is_done(queue: QueueService) -> None:
    task = (await queue.enqueue("quick one")).task
    done = await queue.agent_report("homelab", task.id, status=TaskStatus.COMPLETE)
    assert done.status is TaskStatus.COMPLETE
    assert done.acknowledged_at is None


async def test_illegal_transitions_are_refused_and_change_nothing(queue: QueueService) -> None:
    task = (await queue.enqueue("backwards")).task
    await queue.agent_report("homelab", task.id, status=TaskStatus.IN_PROGRESS)
    with pytest.raises(IllegalTransition, match="cannot go from in_progress to acknowledged"):
        await queue.agent_report("homelab", task.id, status=TaskStatus.ACKNOWLEDGED)
    detail = await queue.get(task.id)
    assert detail.task.status is TaskStatus.IN_PROGRESS
    assert len(detail.recent_updates) == 2


async def test_cancelling_an_ended_task_is_an_error(queue: QueueService) -> None:
    task = (await queue.enqueue("cancel me twice")).task
    cancelled = await queue.cancel(task.id, "no longer needed")
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.status_reason == "no longer needed"
    with pytest.raises(TaskAlreadyEnded, match="already ended as cancelled"):
        await queue.cancel(task.id)


async def test_unknown_ids_are_task_not_found(queue: QueueService) -> None:
    with pytest.raises(TaskNotFound, match="no task with id 'nope'"):
        await queue.get("nope")
    with pytest.raises(TaskNotFound):
        await queue.cancel("00000000-0000-0000-0000-000000000000")


async def test_a_task_can_be_found_by_its_short_id(queue: QueueService) -> None:
    task = (await queue.enqueue("short ids")).task
    assert (await queue.get(task.id[:8])).task.id == task.id


async def test_pull_without_cursor_continues_from_this_clients_previous_pull(
    queue: QueueService,
) -> None:
    a = (await queue.enqueue("a")).task
    first = await queue.pull("client:alice")
    assert [u.task_id for u in first.updates] == [a.id]
    assert (await queue.pull("client:alice")).updates == []
    b = (await queue.enqueue("b")).task
    assert [u.task_id for u in (await queue.pull("client:alice")).updates] == [b.id]
    # Another identity has its own cursor and sees everything.
    assert [u.task_id for u in (await queue.pull("client:bob")).updates] == [a.id, b.id]


async def test_pull_by_cursor_pages_through_everything_once(queue: QueueService) -> None:
    for i in range(7):
        await queue.enqueue(f"task {i}")
    seen: list[int] = []
    cursor = "0"
    while True:
        page = await queue.pull("x", cursor=cursor, limit=3)
        seen.extend(u.seq for u in page.updates)
        cursor = page.next_cursor
        if not page.has_more:
            break
    assert len(seen) == 7
    assert seen == sorted(set(seen))
    assert (await queue.pull("x", cursor=cursor)).updates == []


async def test_pull_since_a_time_returns_only_later_updates(queue: QueueService) -> None:
    early = (await queue.enqueue("early")).task
    late = (await queue.enqueue("late")).task
    page = await queue.pull("x", since=early.created_at.isoformat())
    assert [u.task_id for u in page.updates] == [late.id]
    naive = early.created_at.replace(tzinfo=None).isoformat()
    assert [u.task_id for u in (await queue.pull("x", since=naive)).updates] == [late.id]


async def test_pull_for_one_task_returns_its_history(queue: QueueService) -> None:
    a = (await queue.enqueue("a")).task
    await queue.enqueue("b")
    await queue.agent_report("homelab", a.id, text="working on a")
    page = await queue.pull("x", task_id=a.id)
    assert [u.kind for u in page.updates] == [UpdateKind.STATUS, UpdateKind.AGENT]
    assert {u.task_id for u in page.updates} == {a.id}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"since": "2026-01-01T00:00:00Z", "cursor": "3"}, "either since or cursor, not both"),
        ({"since": "last tuesday"}, "since must be an ISO-8601 time"),
        ({"cursor": "abc"}, "cursor must be a next_cursor value"),
        ({"limit": 0}, "limit must be between 1 and 1000"),
        ({"limit": 1001}, "limit must be between 1 and 1000"),
        ({"wait_seconds": -1}, "wait_seconds must be 0 or more"),
    ],
)
async def test_bad_pull_arguments_are_refused(
    queue: QueueService, kwargs: dict[str, object], error: str
) -> None:
    with pytest.raises(InvalidInput, match=error):
        await queue.pull("x", **kwargs)  # type: ignore[arg-type]


async def test_a_waiting_pull_returns_as_soon_as_an_update_lands(queue: QueueService) -> None:
    waiter = asyncio.create_task(queue.pull("waiter", wait_seconds=5))
    await asyncio.sleep(0)  # usually lets the waiter start waiting first; either order is correct
    started = time.monotonic()
    task = (await queue.enqueue("wake up")).task
    page = await asyncio.wait_for(waiter, timeout=5)
    assert [u.task_id for u in page.updates] == [task.id]
    assert time.monotonic() - started < 2


async def test_a_waiting_pull_returns_empty_at_its_deadline(queue: QueueService) -> None:
    started = time.monotonic()
    page = await queue.pull("waiter", wait_seconds=0.3)
    elapsed = time.monotonic() - started
    assert page.updates == []
    assert 0.25 <= elapsed < 3


async def test_wait_seconds_is_capped(store: Store) -> None:
    queue = QueueService(store, max_wait_seconds=0.2)
    started = time.monotonic()
    await queue.pull("waiter", wait_seconds=3600)
    assert time.monotonic() - started < 3


async def test_list_is_newest_first_and_paginates_with_before(queue: QueueService) -> None:
    ids = [(await queue.enqueue(f"task {i}")).task.id for i in range(5)]
    first = await queue.list_tasks(limit=2)
    assert [t.id for t in first.tasks] == ids[::-1][:2]
    second = await queue.list_tasks(limit=2, before=first.next_before)
    assert [t.id for t in second.tasks] == ids[::-1][2:4]
    third = await queue.list_tasks(limit=2, before=second.next_before)
    assert [t.id for t in third.tasks] == ids[:1]
    assert third.next_before is None


async def test_list_filters_by_status_and_refuses_unknown_ones(queue: QueueService) -> None:
    a = (await queue.enqueue("a")).task
    await queue.enqueue("b")
    await queue.cancel(a.id)
    assert [t.id for t in (await queue.list_tasks(status="cancelled")).tasks] == [a.id]
    with pytest.raises(InvalidInput, match="unknown status 'done'"):
        await queue.list_tasks(status="done")
    with pytest.raises(InvalidInput, match="limit must be between 1 and 200"):
        await queue.list_tasks(limit=0)


async def test_status_counts_and_names_the_current_task(queue: QueueService) -> None:
    a = (await queue.enqueue("first")).task
    b = (await queue.enqueue("second")).task
    await queue.enqueue("third")
    await queue.agent_report("homelab", b.id, status=TaskStatus.IN_PROGRESS)
    await queue.agent_report("homelab", a.id, status=TaskStatus.COMPLETE)
    status = await queue.status()
    assert status.by_status[TaskStatus.PENDING] == 1
    assert status.by_status[TaskStatus.IN_PROGRESS] == 1
    assert status.by_status[TaskStatus.COMPLETE] == 1
    assert status.current_task is not None
    assert status.current_task.id == b.id
    assert status.total_updates == 5


async def test_an_agent_api_task_is_never_put_in_the_telegram_outbox(store: Store) -> None:
    from nexus_bridge.domain import TargetPolicy

    queue = QueueService(
        store, targets=[TargetPolicy("homelab"), TargetPolicy("felt", transport="agent")]
    )
    task = (await queue.enqueue("agent work", "felt")).task
    claimed = await queue.claim_next("felt")
    assert claimed is not None
    await queue.agent_report("felt", task.id, text="which one?", status=TaskStatus.INPUT_REQUIRED)
    await queue.reply(task.id, "the first")
    assert (await queue.get(task.id)).delivery is None  # nothing to post anywhere
    assert [u.content for u in (await queue.replies("felt", task.id, None)).updates] == [
        "the first"
    ]
    with pytest.raises(InvalidInput, match="takes its tasks over Telegram"):
        await queue.claim_next("homelab")
