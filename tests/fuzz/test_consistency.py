"""The consistency check the fuzzers rely on: silent on what the queue writes, loud on damage."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.domain import TargetPolicy, TaskStatus
from nexus_bridge.queue import QueueService
from tests.fuzz.consistency import connect_read_only, problems

TARGETS = {"homelab": "telegram", "felt": "agent"}


@pytest.fixture
async def queue(migrated_sqlite_url: str) -> AsyncIterator[QueueService]:
    store = Store(create_engine(migrated_sqlite_url))
    policies = [
        TargetPolicy(name="homelab", transport="telegram"),
        TargetPolicy(name="felt", transport="agent"),
    ]
    yield QueueService(store, max_message_chars=100, max_wait_seconds=0, targets=policies)
    await store.dispose()


def found(url: str) -> list[str]:
    with connect_read_only(Path(str(make_url(url).database))) as db:
        return problems(db, targets=TARGETS, chats={-1: "homelab"}, max_message_chars=100)


def damage(url: str, *statements: str) -> None:
    with sqlite3.connect(str(make_url(url).database)) as db:
        for statement in statements:
            db.execute(statement)


async def a_busy_queue(queue: QueueService) -> dict[str, str]:
    """Tasks in every status, on both kinds of target."""
    ids = {}
    for name in ("done", "asked", "cancelled", "pending"):
        ids[name] = (await queue.enqueue(f"{name} task", "homelab")).task.id
    await queue.agent_report("homelab", ids["done"], status=TaskStatus.IN_PROGRESS)
    await queue.agent_report("homelab", ids["done"], status=TaskStatus.COMPLETE)
    await queue.agent_report("homelab", ids["asked"], status=TaskStatus.INPUT_REQUIRED)
    await queue.reply(ids["asked"], "yes")
    await queue.cancel(ids["cancelled"], "no longer needed")
    ids["agent"] = (await queue.enqueue("agent task", "felt")).task.id
    claimed = await queue.claim_next("felt")
    assert claimed is not None
    await queue.agent_report("felt", claimed.id, text="looking", status=TaskStatus.IN_PROGRESS)
    await queue.pull("client:a", since=None, cursor=None, task_id=None, limit=10, wait_seconds=0)
    return ids


async def test_what_the_queue_writes_is_consistent(
    queue: QueueService, migrated_sqlite_url: str
) -> None:
    await a_busy_queue(queue)
    assert found(migrated_sqlite_url) == []


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("DELETE FROM updates WHERE task_id = '{pending}'", "no initial 'pending'"),
        ("UPDATE tasks SET ended_at = NULL WHERE id = '{done}'", "but ended_at=None"),
        ("UPDATE tasks SET status = 'complete' WHERE id = '{pending}'", "last status update"),
        ("UPDATE tasks SET content = ' x' WHERE id = '{pending}'", "not normalized"),
        ("UPDATE tasks SET started_at = NULL WHERE id = '{agent}'", "started_at is not set"),
        ("DELETE FROM outbox WHERE task_id = '{pending}'", "0 task deliveries"),
        ("UPDATE pull_cursors SET position = 10000", "outside"),
        (
            "INSERT INTO updates (task_id, kind, status, content, created_at)"
            " VALUES ('{done}', 'status', 'in_progress', 'x', '2026-01-01T00:00:00.000000+00:00')",
            "illegal move complete -> in_progress",
        ),
        (
            "INSERT INTO updates (task_id, kind, content, created_at)"
            " VALUES ('gone', 'agent', 'x', '2026-01-01T00:00:00.000000+00:00')",
            "does not exist",
        ),
        (
            "INSERT INTO telegram_messages (chat_id, telegram_message_id, direction, task_id,"
            " accepted, created_at) VALUES (-1, 99, 'in', '{agent}', 1,"
            " '2026-01-01T00:00:00.000000+00:00')",
            "in the chat of 'homelab' was linked to task",
        ),
    ],
)
async def test_damage_is_reported(
    queue: QueueService, migrated_sqlite_url: str, statement: str, expected: str
) -> None:
    ids = await a_busy_queue(queue)
    damage(migrated_sqlite_url, "PRAGMA foreign_keys = OFF", statement.format(**ids))
    reported = found(migrated_sqlite_url)
    assert any(expected in line for line in reported), reported
