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


async def test_the_check_reads_one_snapshot_while_the_server_keeps_writing(
    queue: QueueService, migrated_sqlite_url: str
) -> None:
    """The server goes on writing while the fuzzers check (a lapsed claim swept back, a report):
    a transition committed between the check's reads of the tasks and of their updates must not
    look like a task whose status and history disagree."""
    ids = await a_busy_queue(queue)
    path = str(make_url(migrated_sqlite_url).database)
    later = "2999-01-01T00:00:00.000000+00:00"
    written = []

    def meanwhile(statement: str) -> None:
        if "FROM updates" in statement and not written:
            written.append(statement)
            with sqlite3.connect(path) as writer:  # the agent completes its task
                writer.execute(
                    "UPDATE tasks SET status = 'complete', ended_at = ?, updated_at = ? "
                    "WHERE id = ?",
                    (later, later, ids["agent"]),
                )
                writer.execute(
                    "INSERT INTO updates (task_id, kind, status, content, created_at) "
                    "VALUES (?, 'status', 'complete', 'status: complete', ?)",
                    (ids["agent"], later),
                )
            writer.close()

    with connect_read_only(Path(path)) as db:
        db.set_trace_callback(meanwhile)
        seen = problems(db, targets=TARGETS, chats={-1: "homelab"}, max_message_chars=100)
    assert written, "the check never read the updates"
    assert seen == []
    assert found(migrated_sqlite_url) == []  # and what was written meanwhile is consistent too


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
