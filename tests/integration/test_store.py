"""Connection set-up and schema facts that the durability promise rests on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from nexus_bridge.constants import WAL_LIMIT_BYTES
from nexus_bridge.db.engine import create_engine, create_writer_engine
from nexus_bridge.db.store import Store
from nexus_bridge.domain import TargetPolicy
from nexus_bridge.errors import DatabaseUnwritable
from nexus_bridge.queue import QueueService
from tests.conftest import postgres_refuses_writes, wait_for


async def test_every_sqlite_connection_gets_the_durability_pragmas(
    migrated_sqlite_url: str,
) -> None:
    engine = create_engine(migrated_sqlite_url, busy_timeout_ms=4321)
    try:
        # Several pooled connections at once: each one must be configured, not just the first.
        conns = [await engine.connect() for _ in range(3)]
        for conn in conns:
            pragmas = {
                name: (await conn.execute(text(f"PRAGMA {name}"))).scalar()
                for name in (
                    "journal_mode",
                    "synchronous",
                    "foreign_keys",
                    "busy_timeout",
                    "journal_size_limit",
                )
            }
            assert pragmas == {
                "journal_mode": "wal",
                "synchronous": 2,  # FULL
                "foreign_keys": 1,
                "busy_timeout": 4321,
                "journal_size_limit": WAL_LIMIT_BYTES,
            }
        for conn in conns:
            await conn.close()
    finally:
        await engine.dispose()


async def test_a_database_error_never_carries_the_statements_values(migrated_url: str) -> None:
    """Errors are logged: a task's text or an OAuth value in one would reach the log."""
    secret = f"secret-{uuid.uuid4().hex}"
    failing = text("SELECT id FROM no_such_table WHERE id = :value")
    engine = create_engine(migrated_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as failed:
                await conn.execute(failing, {"value": secret})
        assert "no_such_table" in str(failed.value)
        assert secret not in str(failed.value)
        if engine.dialect.name == "sqlite":
            writer = create_writer_engine(engine)
            with writer.connect() as sync_conn, pytest.raises(DBAPIError) as failed:
                sync_conn.execute(failing, {"value": secret})
            assert secret not in str(failed.value)
            writer.dispose()
    finally:
        await engine.dispose()


async def test_timestamps_read_well_and_sort_in_the_sqlite3_cli(migrated_sqlite_url: str) -> None:
    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(store)
    ids = [(await queue.enqueue(f"task {i}")).task.id for i in range(3)]
    await store.dispose()
    path = Path(migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///"))
    with sqlite3.connect(path) as raw:
        rows = raw.execute("SELECT id, created_at FROM tasks ORDER BY created_at").fetchall()
    assert [r[0] for r in rows] == ids
    for _, created in rows:
        assert len(created) == 32
        assert created.endswith("+00:00")
        assert created[10] == "T"


async def test_the_sqlite_file_directory_is_created_on_first_use(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'deep' / 'er' / 'bridge.db'}"
    engine = create_engine(url)
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    await engine.dispose()
    assert (tmp_path / "deep" / "er" / "bridge.db").exists()


async def test_last_seq_sees_another_connections_commit_at_once(store: Store) -> None:
    """The wake-up check (``Store.last_seq``) reads what another process committed: on SQLite
    through its private read-only connection, which must never show a stale snapshot."""
    other = Store(create_engine(store.engine.url.render_as_string(hide_password=False)))
    try:
        before = await store.last_seq()
        await QueueService(other).enqueue("written by another process")
        first = await store.last_seq()
        assert first > before
        await QueueService(other).enqueue("and once more")
        assert await store.last_seq() > first
        async with other.read() as tx:
            assert await store.last_seq() == await tx.last_seq()
    finally:
        await other.dispose()


async def test_a_read_only_postgresql_database_refuses_a_send_in_one_line_and_reads_go_on(
    migrated_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A standby promoted the wrong way round, or default_transaction_read_only set by an
    administrator: the caller is told what is wrong, not "internal error", and the owner gets
    one log line however many writes fail."""
    await postgres_refuses_writes(migrated_postgres_url)
    store = Store(create_engine(migrated_postgres_url))
    queue = QueueService(store)
    try:
        with caplog.at_level(logging.ERROR, logger="nexus_bridge.db.store"):
            for i in range(3):
                with pytest.raises(DatabaseUnwritable) as refused:
                    await queue.enqueue(f"check the backups {i}")
                message = str(refused.value)
                assert "read-only transaction" in message, message
                assert "nothing of this call was written" in message
        assert len([r for r in caplog.records if "refused a write" in r.getMessage()]) == 1
        assert (await queue.status()).total_updates == 0  # reads go on
    finally:
        await store.dispose()
    await postgres_refuses_writes(migrated_postgres_url, refuse=False)
    store = Store(create_engine(migrated_postgres_url))
    try:
        assert (await QueueService(store).enqueue("check the backups")).queued
    finally:
        await store.dispose()


async def test_a_background_loop_on_a_database_that_refuses_writes_logs_no_traceback_per_round(
    migrated_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The claims' expiry runs every second: a full disk must not put a traceback in the log
    every second; the store's line a minute says it all."""
    now = [datetime(2026, 11, 30, 12, 0, tzinfo=UTC)]
    store = Store(create_engine(migrated_postgres_url))
    agents = QueueService(
        store,
        targets=[TargetPolicy("felt", transport="agent")],
        clock=lambda: now[0],
        claim_seconds=60,
    )
    try:
        await agents.enqueue("check the backups", "felt")
        assert await agents.claim_next("felt") is not None
        now[0] += timedelta(seconds=61)  # the claim has lapsed: the next round writes
        await postgres_refuses_writes(migrated_postgres_url)
        await store.engine.dispose()  # connections open again, read-only now
        with caplog.at_level(logging.DEBUG):
            rounds = asyncio.create_task(agents.expire_claims_every(0.01))
            try:
                await wait_for(lambda: store._unwritable_unlogged >= 5, what="five failed rounds")
            finally:
                rounds.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await rounds
        assert [r.getMessage() for r in caplog.records if r.exc_info] == []
        refused = [r for r in caplog.records if "refused a write" in r.getMessage()]
        assert len(refused) == 1
    finally:
        await store.dispose()
        await postgres_refuses_writes(migrated_postgres_url, refuse=False)
