"""Lookups that run on every call, claim, delivery or lease renewal read an index, never the whole
history: checked on SQLite's query plan of the statement the code really sends."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.queue import QueueService


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
    engine = create_engine(migrated_sqlite_url)
    statements: list[tuple[str, Any]] = []

    def captured(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM tasks" in statement:
            statements.append((statement, parameters))

    store = Store(engine)
    queue = QueueService(store)
    try:
        first = (await queue.enqueue("one")).task
        await queue.enqueue("two")
        event.listen(engine.sync_engine, "before_cursor_execute", captured)
        arguments = {k: v for k, v in filters.items() if k != "before"}
        if filters.get("before"):
            arguments["before"] = first.id
        await queue.list_tasks(limit=10, **arguments)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", captured)
        await store.dispose()

    listing = [s for s in statements if "ORDER BY" in s[0]]
    assert len(listing) == 1, statements
    statement, parameters = listing[0]
    path = migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    assert any("USING INDEX" in step for step in plan), plan
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan  # a sort of every matching task


async def test_a_short_id_is_found_by_its_range_of_ids_not_the_targets_history(
    migrated_sqlite_url: str,
) -> None:
    """An agent's call with a short id (8+ characters) seeks the id's range: it never walks the
    target's tasks, however many there are."""
    engine = create_engine(migrated_sqlite_url)
    statements: list[tuple[str, Any]] = []

    def captured(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM tasks" in statement:
            statements.append((statement, parameters))

    store = Store(engine)
    queue = QueueService(store)
    try:
        task = (await queue.enqueue("find me by a short id")).task
        await queue.enqueue("and another")
        event.listen(Engine, "before_cursor_execute", captured)  # the writer's too
        found = await queue.agent_task("homelab", task.id[:8])
    finally:
        event.remove(Engine, "before_cursor_execute", captured)
        await store.dispose()

    assert found.id == task.id
    assert statements
    path = migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        for statement, parameters in statements:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            assert all("ix_tasks_target" not in step for step in plan), (statement, plan)
            assert any("sqlite_autoindex_tasks_1" in step for step in plan), (statement, plan)


async def test_one_at_a_time_reads_open_tasks_only(migrated_sqlite_url: str) -> None:
    """Whether a target's agent already has a task (asked before every claim and every Telegram
    post of a one-at-a-time target) reads the target's open tasks and their own deliveries:
    never every delivery ever made, nor the target's ended history."""
    engine = create_engine(migrated_sqlite_url)
    store = Store(engine)
    try:
        async with store.read() as tx:
            statements: list[tuple[str, Any]] = []

            def captured(_c: Any, _k: Any, statement: str, parameters: Any, *_: Any) -> None:
                statements.append((statement, parameters))

            event.listen(engine.sync_engine, "before_cursor_execute", captured)
            try:
                assert await tx.count_handed_over("homelab", excluding="x" * 36) == 0
            finally:
                event.remove(engine.sync_engine, "before_cursor_execute", captured)
    finally:
        await store.dispose()

    (statement, parameters), *_ = [s for s in statements if "outbox" in s[0]]
    path = migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    scans = [step for step in plan if step.startswith("SCAN") and step != "SCAN CONSTANT ROW"]
    assert not scans, plan
    assert all("ix_tasks_target_created_at" not in step for step in plan), plan


async def test_the_relays_journal_lookups_read_no_history(migrated_sqlite_url: str) -> None:
    """Before posting each part the relay asks which epochs already posted it; at every lease
    renewal it asks for inbound messages not yet acted on. Neither reads the whole journal."""
    engine = create_engine(migrated_sqlite_url)
    store = Store(engine)
    statements: list[tuple[str, Any]] = []

    def captured(_c: Any, _k: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    try:
        async with store.read() as tx:
            event.listen(engine.sync_engine, "before_cursor_execute", captured)
            try:
                assert await tx.epochs_of_part(1, 0) == []
                assert await tx.unprocessed_inbound() == []
            finally:
                event.remove(engine.sync_engine, "before_cursor_execute", captured)
    finally:
        await store.dispose()

    lookups = [s for s in statements if "telegram_messages" in s[0]]
    assert len(lookups) == 2, statements
    path = migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        for statement, parameters in lookups:
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
            assert plan, statement
            for step in plan:
                assert step.startswith("SEARCH") or "ix_telegram_messages_unprocessed" in step, (
                    statement,
                    plan,
                )
