"""Lookups that run on every call, claim, delivery or lease renewal read an index, never the whole
history: checked on SQLite's query plan of the statement the code really sends."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.errors import InvalidInput
from nexus_bridge.queue import QueueService
from tests.conftest import _asyncpg_dsn

Statement = tuple[str, Any]


@contextmanager
def statements_sent(about: str) -> Iterator[list[Statement]]:
    """Every statement any engine (the writer thread's too) sends meanwhile that names
    ``about``, with its parameters."""
    sent: list[Statement] = []

    def captured(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if about in statement:
            sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", captured)
    try:
        yield sent
    finally:
        event.remove(Engine, "before_cursor_execute", captured)


def query_plan(url: str, statement: Statement) -> list[str]:
    """SQLite's plan for ``statement`` on the database at ``url``, one step per line."""
    sql, parameters = statement
    with closing(sqlite3.connect(url.removeprefix("sqlite+aiosqlite:///"))) as conn:
        return [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", parameters)]


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": "pending"},
        {"target": "homelab"},
        {"target": "homelab", "status": "pending"},
        {"target": "homelab", "before": True},
        {"status": "pending", "before": True},
    ],
    ids=lambda f: "+".join(f) or "none",
)
async def test_a_listing_sorts_no_history(
    migrated_sqlite_url: str, filters: dict[str, Any]
) -> None:
    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(store)
    try:
        first = (await queue.enqueue("one")).task
        await queue.enqueue("two")
        arguments = {k: v for k, v in filters.items() if k != "before"}
        if filters.get("before"):
            arguments["before"] = first.id
        with statements_sent("FROM tasks") as sent:
            await queue.list_tasks(limit=10, **arguments)
    finally:
        await store.dispose()

    listing = [s for s in sent if "ORDER BY" in s[0]]
    assert len(listing) == 1, sent
    plan = query_plan(migrated_sqlite_url, listing[0])
    assert any("USING INDEX" in step for step in plan), plan
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan  # a sort of every matching task


async def test_a_short_id_is_found_by_its_range_of_ids_not_the_targets_history(
    migrated_sqlite_url: str,
) -> None:
    """An agent's call with a short id (8+ characters) seeks the id's range: it never walks the
    target's tasks, however many there are."""
    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(store)
    try:
        task = (await queue.enqueue("find me by a short id")).task
        await queue.enqueue("and another")
        with statements_sent("FROM tasks") as sent:
            found = await queue.agent_task("homelab", task.id[:8])
    finally:
        await store.dispose()

    assert found.id == task.id
    lookups = [s for s in sent if s[0].lstrip().upper().startswith("SELECT")]
    assert lookups
    for statement in lookups:
        plan = query_plan(migrated_sqlite_url, statement)
        assert all("ix_tasks_target" not in step for step in plan), (statement, plan)
        assert any("sqlite_autoindex_tasks_1" in step for step in plan), (statement, plan)


async def test_one_at_a_time_reads_open_tasks_only(migrated_sqlite_url: str) -> None:
    """Whether a target's agent already has a task (asked before every claim and every Telegram
    post of a one-at-a-time target) reads the target's open tasks and their own deliveries:
    never every delivery ever made, nor the target's ended history."""
    store = Store(create_engine(migrated_sqlite_url))
    try:
        async with store.read() as tx:
            with statements_sent("outbox") as sent:
                assert await tx.count_handed_over("homelab", excluding="x" * 36) == 0
    finally:
        await store.dispose()

    assert len(sent) == 1, sent
    plan = query_plan(migrated_sqlite_url, sent[0])
    scans = [step for step in plan if step.startswith("SCAN") and step != "SCAN CONSTANT ROW"]
    assert not scans, plan
    assert all("ix_tasks_target_created_at" not in step for step in plan), plan


async def test_the_relays_journal_lookups_read_no_history(migrated_sqlite_url: str) -> None:
    """Before posting each part the relay asks which epochs already posted it; at every lease
    renewal it asks for inbound messages not yet acted on. Neither reads the whole journal."""
    store = Store(create_engine(migrated_sqlite_url))
    try:
        async with store.read() as tx:
            with statements_sent("telegram_messages") as sent:
                assert await tx.epochs_of_part(1, 0, chat_id=-1, telegram_message_id=1) == []
                assert await tx.unprocessed_inbound() == []
    finally:
        await store.dispose()

    assert len(sent) == 2, sent
    for statement in sent:
        plan = query_plan(migrated_sqlite_url, statement)
        assert plan, statement
        for step in plan:
            indexed = step.startswith("SEARCH") or "ix_telegram_messages_unprocessed" in step
            assert indexed, (statement, plan)


async def test_a_short_id_sees_only_its_targets_tasks_even_behind_a_crowded_prefix(
    migrated_sqlite_url: str,
) -> None:
    """Hostile short ids: another target's tasks are as good as unknown, even when a prefix is
    shared by more of them than the first read takes; the target's own ambiguity is refused."""
    path = migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///")
    now = "2026-11-30T00:00:00.000000+00:00"
    with closing(sqlite3.connect(path)) as conn:
        rows = [
            (f"abcdef12-0000-4000-8000-{n:012d}", "other", f"task {n}", f"{n:064d}", now)
            for n in range(100)
        ]
        rows.append(("fedcba98-0000-4000-8000-000000000000", "other", "lone", "f" * 64, now))
        rows.append(("abcdef12-9999-4000-8000-000000000000", "homelab", "mine", "e" * 64, now))
        conn.executemany(
            "INSERT INTO tasks (id, target, content, content_hash, status, urgent, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
            [(*row, now) for row in rows],
        )
        conn.commit()
    store = Store(create_engine(migrated_sqlite_url))
    try:
        async with store.read() as tx:
            assert await tx.task_of_target("homelab", "fedcba98") is None  # another target's
            assert (await tx.task_of_target("other", "fedcba98")) is not None
            mine = await tx.task_of_target("homelab", "abcdef12")
            assert mine is not None
            assert mine.content == "mine"  # past the first read's 64: found by the second
            assert await tx.task_of_target("nobody", "abcdef12") is None
            with pytest.raises(InvalidInput, match="matches several tasks"):
                await tx.task_of_target("other", "abcdef12")
    finally:
        await store.dispose()


@pytest.mark.postgres
async def test_on_postgresql_a_short_id_reads_an_index_under_any_collation(
    migrated_postgres_url: str,
) -> None:
    """PostgreSQL serves ``LIKE 'prefix%'`` from the primary key only under the C collation;
    ``ix_tasks_id_pattern`` (varchar_pattern_ops) serves it under any. With sequential scans
    priced out, every short-id lookup's plan reads an index, never the whole table."""
    store = Store(create_engine(migrated_postgres_url))
    queue = QueueService(store)
    try:
        task = (await queue.enqueue("find me by a short id")).task
        await queue.enqueue("and another")
        with statements_sent("FROM tasks") as sent:
            assert (await queue.agent_task("homelab", task.id[:8])).id == task.id
            assert (await queue.get(task.id[:8])).task.id == task.id
    finally:
        await store.dispose()

    prefix_lookups = [s for s in sent if "LIKE" in s[0].upper()]
    assert len(prefix_lookups) >= 2, sent
    conn = await asyncpg.connect(_asyncpg_dsn(migrated_postgres_url))
    try:
        collation = await conn.fetchval(
            "SELECT datcollate FROM pg_database WHERE datname = $1",
            make_url(migrated_postgres_url).database,
        )
        async with conn.transaction():
            await conn.execute("SET LOCAL enable_seqscan = off")
            for statement, parameters in prefix_lookups:
                rows = await conn.fetch(f"EXPLAIN {statement}", *parameters)
                plan = [row[0] for row in rows]
                assert not any("Seq Scan on tasks" in step for step in plan), (collation, plan)
    finally:
        await conn.close()


async def test_a_prune_batch_sorts_no_history(migrated_sqlite_url: str) -> None:
    """Retention picks each batch of ended tasks off an index: sorting every ended task for
    each batch of 200 made a prune of 200,000 old tasks slow down every send for minutes."""
    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(store)
    try:
        task = (await queue.enqueue("one")).task
        await queue.cancel(task.id)
        with statements_sent("FROM tasks") as sent:
            await queue.prune(timedelta(days=-1))  # everything ended is old enough
    finally:
        await store.dispose()

    picks = [s for s in sent if s[0].lstrip().startswith("SELECT tasks.id")]
    assert picks, sent
    for pick in picks:
        plan = query_plan(migrated_sqlite_url, pick)
        assert any("USING INDEX" in step for step in plan), plan
        assert not any("TEMP B-TREE" in step for step in plan), plan
