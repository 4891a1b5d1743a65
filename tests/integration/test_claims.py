"""Claims over the direct agent API are leases, waits give up when their caller has gone, and
every argument of the service is bounded: on real SQLite files and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from nexus_bridge.constants import PRESENCE_RESOLUTION_SECONDS
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.domain import CLAIM_EXPIRED_REASON, TargetPolicy, TaskStatus, UpdateKind
from nexus_bridge.errors import IllegalTransition, InvalidInput, TaskNotFound
from nexus_bridge.queue import QueueService

START = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
LEASE = 120.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def agents(store: Store, clock: Clock) -> QueueService:
    return QueueService(
        store,
        targets=[
            TargetPolicy("felt", transport="agent"),
            TargetPolicy("solo", transport="agent", one_at_a_time=True),
        ],
        clock=clock,
        claim_seconds=LEASE,
        max_wait_seconds=5,
    )


async def test_a_claim_is_a_lease_renewed_by_any_agent_call(
    agents: QueueService, clock: Clock
) -> None:
    task = (await agents.enqueue("resize the pool", "felt")).task
    claimed = await agents.claim_next("felt")
    assert claimed is not None
    assert claimed.id == task.id
    assert claimed.claim_expires_at == START + timedelta(seconds=LEASE)

    for renew in (
        lambda: agents.agent_task("felt", task.id),  # heartbeat
        lambda: agents.agent_report("felt", task.id, text="looking at it first"),
        lambda: agents.replies("felt", task.id, None),
    ):
        clock.advance(LEASE - 1)
        await renew()
        assert await agents.expire_claims() == []
        held = (await agents.get(task.id)).task
        assert held.status is TaskStatus.ACKNOWLEDGED
        assert held.claim_expires_at == clock.now + timedelta(seconds=LEASE)

    started = await agents.agent_report("felt", task.id, status=TaskStatus.IN_PROGRESS)
    assert started.claim_expires_at is None  # no lease once started: it is never re-run


async def test_a_lapsed_claim_goes_back_to_pending_and_is_handed_out_again(
    agents: QueueService, clock: Clock
) -> None:
    task = (await agents.enqueue("rotate the logs", "felt")).task
    assert await agents.claim_next("felt") is not None
    clock.advance(LEASE - 0.001)
    assert await agents.expire_claims() == []
    clock.advance(0.002)
    (returned,) = await agents.expire_claims()
    assert returned.id == task.id
    assert returned.status is TaskStatus.PENDING
    assert returned.status_reason == CLAIM_EXPIRED_REASON
    assert returned.claim_expires_at is None
    history = (await agents.get(task.id)).recent_updates
    assert history[-1].kind is UpdateKind.STATUS
    assert history[-1].content == f"status: acknowledged → pending ({CLAIM_EXPIRED_REASON})"
    assert await agents.expire_claims() == []  # once

    # The agent that let it lapse no longer holds it: its reports are refused.
    with pytest.raises(IllegalTransition, match="it is not yours"):
        await agents.agent_report("felt", task.id, status=TaskStatus.IN_PROGRESS)
    again = await agents.claim_next("felt")
    assert again is not None
    assert again.id == task.id
    assert again.status is TaskStatus.ACKNOWLEDGED


async def test_a_call_on_a_lapsed_claim_is_refused_even_before_the_sweep_runs(
    agents: QueueService, clock: Clock
) -> None:
    """A start held up past the lease (a stalled database, a paused server) must not land: the
    task is the queue's again, and an agent that later retries cannot tell its own late start
    from another agent's."""
    task = (await agents.enqueue("compact the database", "felt")).task
    assert await agents.claim_next("felt") is not None
    clock.advance(LEASE + 0.001)  # lapsed; no sweep has run yet
    for call in (
        lambda: agents.agent_report("felt", task.id, status=TaskStatus.IN_PROGRESS),
        lambda: agents.agent_task("felt", task.id),  # a heartbeat does not revive it either
    ):
        with pytest.raises(IllegalTransition, match=r"claim on task .* lapsed"):
            await call()
    (returned,) = await agents.expire_claims()
    assert returned.status is TaskStatus.PENDING


async def test_a_started_task_is_never_put_back_in_the_queue(
    agents: QueueService, clock: Clock
) -> None:
    task = (await agents.enqueue("migrate the database", "felt")).task
    await agents.claim_next("felt")
    await agents.agent_report("felt", task.id, status=TaskStatus.IN_PROGRESS)
    clock.advance(LEASE * 100)
    assert await agents.expire_claims() == []
    assert (await agents.get(task.id)).task.status is TaskStatus.IN_PROGRESS
    assert await agents.claim_next("felt") is None


async def test_a_lapsed_claim_is_returned_when_the_agent_asks_again_before_any_sweep(
    agents: QueueService, clock: Clock
) -> None:
    """One at a time: the lapsed claim no longer blocks the target, and is handed out again."""
    first = (await agents.enqueue("first", "solo")).task
    clock.advance(1)
    await agents.enqueue("second", "solo")
    assert (await agents.claim_next("solo")).id == first.id  # type: ignore[union-attr]
    assert await agents.claim_next("solo") is None  # one at a time: the first is with the agent
    clock.advance(LEASE + 1)
    again = await agents.claim_next("solo")
    assert again is not None
    assert again.id == first.id
    statuses = [u.content for u in (await agents.get(first.id)).recent_updates]
    assert any(CLAIM_EXPIRED_REASON in s for s in statuses)


async def test_a_waiting_claim_whose_caller_went_away_claims_nothing(
    agents: QueueService,
) -> None:
    gone = asyncio.Event()
    waiter = asyncio.create_task(agents.wait_for_task("felt", 5, stop=gone))
    await asyncio.sleep(0)
    gone.set()
    assert await asyncio.wait_for(waiter, timeout=5) is None
    task = (await agents.enqueue("after the caller left", "felt")).task
    assert await agents.wait_for_task("felt", 0, stop=gone) is None  # gone before it started
    assert (await agents.get(task.id)).task.status is TaskStatus.PENDING


async def test_a_waiting_pull_whose_caller_went_away_marks_nothing_read(
    agents: QueueService,
) -> None:
    await agents.enqueue("one", "felt")
    assert len((await agents.pull("client")).updates) == 1
    gone = asyncio.Event()
    waiter = asyncio.create_task(agents.pull("client", wait_seconds=5, stop=gone))
    await asyncio.sleep(0)
    gone.set()
    assert (await asyncio.wait_for(waiter, timeout=5)).updates == []
    task = (await agents.enqueue("two", "felt")).task
    assert (await agents.pull("client", stop=gone)).updates == []
    assert [u.task_id for u in (await agents.pull("client")).updates] == [task.id]


@pytest.mark.parametrize("wait", [float("nan"), float("inf"), float("-inf"), -1.0])
async def test_a_wait_that_is_not_a_finite_number_is_refused(
    agents: QueueService, wait: float
) -> None:
    with pytest.raises(InvalidInput, match="wait_seconds must be 0 or more"):
        await agents.pull("client", wait_seconds=wait)
    with pytest.raises(InvalidInput, match="wait_seconds must be 0 or more"):
        await agents.wait_for_task("felt", wait)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"cursor": "²"}, "cursor must be a next_cursor value"),
        ({"cursor": "1" * 30}, "cursor must be a next_cursor value"),
        ({"cursor": "x" * 50_000}, "cursor must be a next_cursor value"),
        ({"since": "0001-01-01T00:00:00+14:00"}, "since is out of range"),
        ({"since": "9999-12-31T23:59:59-14:00"}, "since is out of range"),
        ({"since": "2026" * 20_000}, "since must be an ISO-8601 time"),
        ({"task_id": "a" * 50_000}, "message_id must be a task id"),
    ],
)
async def test_malformed_pull_arguments_are_one_line_errors_naming_the_field(
    agents: QueueService, kwargs: dict[str, str], error: str
) -> None:
    with pytest.raises(InvalidInput, match=error) as caught:
        await agents.pull("client", **kwargs)  # type: ignore[arg-type]
    assert len(str(caught.value)) < 200


async def test_ids_that_cannot_be_a_task_are_refused_without_a_query(
    agents: QueueService,
) -> None:
    task = (await agents.enqueue("real", "felt")).task
    long = "a" * 50_000
    for call in (
        lambda: agents.get(long),
        lambda: agents.cancel(long),
        lambda: agents.reply(long, "x"),
        lambda: agents.list_tasks(before=long),
        lambda: agents.agent_task("felt", long),
    ):
        with pytest.raises(InvalidInput, match="must be a task id"):
            await call()
    for odd in ("a\x00b", "\ud800abc", "abc%", "3f2a_9c1e", "' OR 1=1"):
        with pytest.raises(TaskNotFound):
            await agents.get(odd)
    assert (await agents.get(task.id[:8])).task.id == task.id


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nul \x00 inside", "contains a NUL character"),
        ("lone \ud800 surrogate", "is not valid Unicode"),
    ],
)
async def test_text_no_database_can_store_is_refused_naming_the_field(
    agents: QueueService, text: str, error: str
) -> None:
    with pytest.raises(InvalidInput, match=f"message {error}"):
        await agents.enqueue(text, "felt")
    task = (await agents.enqueue("fine", "felt")).task
    await agents.claim_next("felt")
    with pytest.raises(InvalidInput, match=f"summary {error}"):
        await agents.agent_report("felt", task.id, text=text, field="summary")
    with pytest.raises(InvalidInput, match=f"reason {error}"):
        await agents.cancel(task.id, text)
    with pytest.raises(InvalidInput, match="reason is 1001 characters"):
        await agents.cancel(task.id, "r" * 1001)
    with pytest.raises(InvalidInput, match="target must be at most 100 characters"):
        await agents.enqueue("fine", "t" * 50_000)
    assert (await agents.get(task.id)).task.status is TaskStatus.ACKNOWLEDGED


async def test_the_agent_session_is_kept_with_the_task_and_renews_the_claim(
    agents: QueueService, clock: Clock
) -> None:
    task = (await agents.enqueue("upgrade the kernel", "felt")).task
    assert task.agent_session is None
    assert await agents.claim_next("felt") is not None
    clock.advance(LEASE - 1)
    kept = await agents.agent_task("felt", task.id, session="1f0c-session_id.v2:a")
    assert kept.agent_session == "1f0c-session_id.v2:a"
    assert kept.claim_expires_at == clock.now + timedelta(seconds=LEASE)
    await agents.agent_report("felt", task.id, status=TaskStatus.IN_PROGRESS)
    assert (await agents.get(task.id)).task.agent_session == "1f0c-session_id.v2:a"
    assert (await agents.agent_task("felt", task.id)).agent_session == "1f0c-session_id.v2:a"
    replaced = await agents.agent_task("felt", task.id[:8], session="s" * 200)
    assert replaced.agent_session == "s" * 200


@pytest.mark.parametrize(
    ("session", "message"),
    [
        ("", "session must be 1 to 200 characters, got 0"),
        ("s" * 201, "session must be 1 to 200 characters, got 201"),
        ("two words", "session may hold only letters, digits and - _ . :"),
        ("line\nbreak", "session may hold only letters, digits and - _ . :"),
        ("sessión", "session may hold only letters, digits and - _ . :"),
    ],
)
async def test_a_bad_agent_session_is_refused_in_one_line_and_nothing_is_written(
    agents: QueueService, session: str, message: str
) -> None:
    task = (await agents.enqueue("check the disks", "felt")).task
    assert await agents.claim_next("felt") is not None
    with pytest.raises(InvalidInput) as refused:
        await agents.agent_task("felt", task.id, session=session)
    assert str(refused.value) == message
    assert (await agents.get(task.id)).task.agent_session is None


async def test_only_the_tasks_own_target_can_set_its_agent_session(agents: QueueService) -> None:
    task = (await agents.enqueue("prune the snapshots", "felt")).task
    with pytest.raises(TaskNotFound):
        await agents.agent_task("solo", task.id, session="not-mine")
    assert (await agents.get(task.id)).task.agent_session is None


async def test_heartbeats_on_a_running_task_write_nothing_until_the_sighting_is_stale(
    migrated_sqlite_url: str, clock: Clock
) -> None:
    """The runner heartbeats every half second while a command runs: that must not be a write
    to disk every half second (an SD card's wear). The agent's presence is written again once
    the last sighting is PRESENCE_RESOLUTION_SECONDS old."""
    store = Store(create_engine(migrated_sqlite_url))
    agents = QueueService(
        store, targets=[TargetPolicy("felt", transport="agent")], clock=clock, claim_seconds=LEASE
    )
    watcher = sqlite3.connect(Path(make_url(migrated_sqlite_url).database or ""))
    try:
        await agents.enqueue("check the backups", "felt")
        task = await agents.claim_next("felt")
        assert task is not None
        await agents.agent_report("felt", task.id, status=TaskStatus.IN_PROGRESS)
        seen = (await agents.presence())["felt"]

        def version() -> int:  # changes when another connection commits a change
            return int(watcher.execute("PRAGMA data_version").fetchone()[0])

        before = version()
        for _ in range(int(PRESENCE_RESOLUTION_SECONDS * 2) - 1):  # every half second
            clock.advance(0.5)
            await agents.agent_task("felt", task.id)
        assert version() == before, "a heartbeat wrote to the database"
        assert (await agents.presence())["felt"] == seen

        clock.advance(0.5)  # now the sighting is PRESENCE_RESOLUTION_SECONDS old
        await agents.agent_task("felt", task.id)
        assert version() != before
        assert (await agents.presence())["felt"] == seen + timedelta(
            seconds=PRESENCE_RESOLUTION_SECONDS
        )
    finally:
        watcher.close()
        await store.dispose()
