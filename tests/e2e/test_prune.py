"""``nexus-bridge prune`` and ``RETENTION_DAYS``: old ended tasks go, open ones stay."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nexus_bridge.config import Settings
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.domain import TaskStatus
from nexus_bridge.queue import QueueService
from tests.conftest import running_server, wait_for
from tests.e2e.test_cli import run


async def old_tasks(url: str) -> tuple[str, str]:
    """A task that ended 100 days ago and one still open since then: (ended, open)."""
    store = Store(create_engine(url))
    then = datetime.now(UTC) - timedelta(days=100)
    queue = QueueService(store, clock=lambda: then)
    try:
        done = (await queue.enqueue("finished long ago")).task.id
        await queue.cancel(done, "not needed")
        still_open = (await queue.enqueue("waiting since long ago")).task.id
    finally:
        await store.dispose()
    return done, still_open


async def task_ids(url: str) -> set[str]:
    store = Store(create_engine(url))
    try:
        async with store.read() as tx:
            tasks = await tx.list_tasks(status=None, target=None, limit=100, before=None)
    finally:
        await store.dispose()
    return {t.id for t in tasks}


async def test_prune_from_the_shell_reports_then_removes_only_old_ended_tasks(
    migrated_sqlite_url: str,
) -> None:
    url = migrated_sqlite_url
    done, still_open = await old_tasks(url)

    dry = run(url, "prune", "--older-than", "90d", "--dry-run")
    assert dry.stdout.startswith("would remove 1 ended tasks older than 90d")
    assert await task_ids(url) == {done, still_open}
    assert "removed 0 ended tasks" in run(url, "prune", "--older-than", "101d").stdout

    report = json.loads(run(url, "prune", "--older-than", "90d", "--json").stdout)
    assert report["dry_run"] is False
    assert report["tasks"] == 1
    assert report["updates"] == 2  # queued, cancelled
    assert await task_ids(url) == {still_open}
    shown = json.loads(run(url, "show", "--json", still_open).stdout)
    assert shown["status"] == TaskStatus.PENDING.value


def test_prune_refuses_an_age_it_cannot_read_in_one_line(migrated_sqlite_url: str) -> None:
    for bad in ("90", "0d", "-5d", "1y", "99999d", ""):
        result = run(migrated_sqlite_url, "prune", "--older-than", bad, ok=False)
        assert result.returncode == 2, bad
        assert "--older-than" in result.stderr, bad


async def test_the_server_applies_retention_days_when_it_starts(
    make_settings: Callable[..., Settings], migrated_sqlite_url: str
) -> None:
    done, still_open = await old_tasks(migrated_sqlite_url)
    async with running_server(make_settings(retention_days=90)):
        await wait_for(
            lambda: _gone(migrated_sqlite_url, done), what="the server to prune the old task"
        )
    assert await task_ids(migrated_sqlite_url) == {still_open}


async def _gone(url: str, task_id: str) -> bool:
    return task_id not in await task_ids(url)
