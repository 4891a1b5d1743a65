"""Another process's write wakes a waiting ``pull_updates`` or ``next_task`` at once, not at the
next poll: inotify on the SQLite files, LISTEN/NOTIFY on PostgreSQL. The poll is set to an hour
here, so only the wake-up can answer within the deadline."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest
from mcp import Client
from sqlalchemy.engine import make_url

from nexus_bridge.config import Settings
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.wakeups import change_feed
from tests.conftest import (
    _asyncpg_dsn,
    _pg_admin,
    mcp_client,
    postgres_admin_url,
    running_server,
    subprocess_env,
    wait_for,
)
from tests.e2e.test_agent_api import FELT_TOKEN, agent_client, two_targets
from tests.e2e.test_http import call

EXE = str(Path(sys.executable).with_name("nexus-bridge"))
POLL_SECONDS = 3600.0  # the fallback poll: far beyond every deadline below
WAIT_SECONDS = 120.0  # the client's wait: also far beyond them
# From the end of the CLI process to the waiting call's answer. Generous for a loaded machine,
# and still a small fraction of the poll.
WAKE_DEADLINE_SECONDS = 5.0


def settings_for(database_url: str, tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "port": 0,
        "agent_token_file": tmp_path / "agent-token",
        "change_poll_seconds": POLL_SECONDS,
        "max_wait_seconds": WAIT_SECONDS,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


async def cli_send(database_url: str, text: str, *args: str, **env: str) -> str:
    """``nexus-bridge send`` in its own process; the new task's id."""
    process = await asyncio.create_subprocess_exec(
        EXE,
        "send",
        "--json",
        text,
        *args,
        env=subprocess_env(database_url, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    sent = json.loads(out)
    assert sent["queued"] is True
    return str(sent["id"])


async def cli_send_wakes_a_waiting_pull(client: Client, database_url: str, text: str) -> None:
    """A pull_updates waiting past the latest update is answered, within the wake-up deadline,
    with exactly the task ``nexus-bridge send`` queues from its own process."""
    start = await call(client, "pull_updates", {})
    waiting = asyncio.create_task(
        client.call_tool(
            "pull_updates", {"cursor": start["next_cursor"], "wait_seconds": WAIT_SECONDS}
        )
    )
    task_id = await cli_send(database_url, text)
    with anyio.fail_after(WAKE_DEADLINE_SECONDS):
        result = await waiting
    updates = (result.structured_content or {})["updates"]
    assert [u["message_id"] for u in updates] == [task_id]


async def test_a_cli_send_wakes_a_waiting_pull_updates_at_once(
    migrated_url: str, tmp_path: Path
) -> None:
    text = f"sent from another process {uuid.uuid4().hex}"
    settings = settings_for(migrated_url, tmp_path)
    async with running_server(settings) as (url, _server), mcp_client(url) as client:
        await cli_send_wakes_a_waiting_pull(client, migrated_url, text)


async def test_a_cli_send_wakes_an_agent_waiting_in_next_task_at_once(
    migrated_url: str, tmp_path: Path
) -> None:
    text = f"a task from another process {uuid.uuid4().hex}"
    settings = settings_for(migrated_url, tmp_path, config_file=two_targets(tmp_path))
    async with (
        running_server(settings) as (url, _server),
        agent_client(url.removesuffix("/mcp"), FELT_TOKEN) as agent,
    ):
        waiting = asyncio.create_task(agent.call_tool("next_task", {"wait_seconds": WAIT_SECONDS}))
        task_id = await cli_send(
            migrated_url,
            text,
            "--target",
            "nexus:felt",
            NEXUS_BRIDGE_CONFIG=str(settings.config_file),
        )
        with anyio.fail_after(WAKE_DEADLINE_SECONDS):
            result = await waiting
    task = (result.structured_content or {})["task"]
    assert task is not None
    assert task["id"] == task_id


async def _listening_backends(database_url: str) -> list[int]:
    """The PostgreSQL backends of ``database_url``'s database that LISTEN for updates."""
    conn = await asyncpg.connect(_asyncpg_dsn(database_url), timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'",
            make_url(database_url).database,
        )
    finally:
        await conn.close()
    return [int(row["pid"]) for row in rows]


async def test_after_postgresql_closes_the_listen_connection_wake_ups_come_back(
    migrated_postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A PostgreSQL restart (here: its backend terminated) closes the LISTEN connection. The
    bridge opens it again, so a write by another process still wakes a waiting pull at once,
    not at the next poll (an hour here), for as long as the bridge keeps running."""
    settings = settings_for(migrated_postgres_url, tmp_path)
    with caplog.at_level(logging.INFO, logger="nexus_bridge.db.wakeups"):
        async with running_server(settings) as (url, _server), mcp_client(url) as client:
            await wait_for(
                lambda: _listening_backends(migrated_postgres_url), what="the LISTEN connection"
            )
            (first,) = await _listening_backends(migrated_postgres_url)
            await _pg_admin(migrated_postgres_url, f"SELECT pg_terminate_backend({first})")

            async def listening_again() -> bool:
                return [first] != await _listening_backends(migrated_postgres_url) != []

            await wait_for(listening_again, what="a new LISTEN connection")
            await cli_send_wakes_a_waiting_pull(
                client, migrated_postgres_url, "sent after the reconnection"
            )
    logged = [r.getMessage() for r in caplog.records]
    assert any("LISTEN connection to PostgreSQL closed" in m for m in logged), logged
    assert any("LISTEN connection to PostgreSQL is open again" in m for m in logged), logged


async def test_a_listen_connection_closed_soon_after_each_opening_is_opened_again_ever_slower(
    migrated_postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's idle_session_timeout (or a proxy's) closes the connection each time: it is
    opened again after a pause that doubles, not in a tight loop that floods the log."""
    name = make_url(migrated_postgres_url).database
    await _pg_admin(
        migrated_postgres_url, f"ALTER DATABASE \"{name}\" SET idle_session_timeout = '100ms'"
    )
    engine = create_engine(migrated_postgres_url)
    try:
        with caplog.at_level(logging.INFO, logger="nexus_bridge.db.wakeups"):
            async with change_feed(engine):

                def closes() -> list[float]:
                    return [
                        r.created for r in caplog.records if "PostgreSQL closed" in r.getMessage()
                    ]

                await wait_for(lambda: len(closes()) >= 3, what="three closed connections")
                opens = [r.created for r in caplog.records if "is open again" in r.getMessage()]
                gaps = [o - c for c, o in zip(closes(), opens, strict=False)]
    finally:
        await engine.dispose()
    assert len(gaps) >= 2, (closes(), opens)
    assert gaps[0] >= 0.45, gaps  # LISTEN_RETRY_SECONDS[0], then twice that
    assert gaps[1] >= 0.9, gaps


async def test_through_a_symbolic_link_to_the_database_a_cli_send_still_wakes_a_pull_at_once(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    """SQLite writes its -wal beside the file the link points to: that is the one to watch."""
    real = Path(make_url(migrated_sqlite_url).database or "")
    linked = tmp_path / "elsewhere" / "bridge.db"
    linked.parent.mkdir()
    linked.symlink_to(real)
    url = f"sqlite+aiosqlite:///{linked}"
    settings = settings_for(url, tmp_path)
    async with running_server(settings) as (mcp_url, _server), mcp_client(mcp_url) as client:
        await cli_send_wakes_a_waiting_pull(client, url, "sent through the link")
    assert not linked.with_name("bridge.db-wal").exists()


async def test_while_postgresql_refuses_connections_the_polls_log_one_traceback_not_one_a_round(
    migrated_postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An idle bridge whose database is down for a while (here: it accepts no connections):
    the change poll and the claims' expiry run every round; the log gets each failure's first
    traceback, not one per round, and a line when the database is back."""
    name = make_url(migrated_postgres_url).database
    admin = postgres_admin_url()  # another database: not one that refuses connections
    assert admin is not None
    settings = settings_for(migrated_postgres_url, tmp_path, change_poll_seconds=0.02)
    try:
        with caplog.at_level(logging.INFO, logger="nexus_bridge"):
            async with running_server(settings) as (url, _server), mcp_client(url) as client:
                await _pg_admin(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await _pg_admin(
                    admin,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
                )

                def failed_polls() -> int:
                    return sum(
                        "could not check the database" in r.getMessage() for r in caplog.records
                    )

                # The outage lasts a second, some 50 rounds of each loop; calls fail meanwhile.
                end = asyncio.get_running_loop().time() + 50 * settings.change_poll_seconds
                while asyncio.get_running_loop().time() < end:
                    assert (await client.call_tool("queue_status", {})).is_error
                await _pg_admin(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await wait_for(
                    lambda: any("works again" in r.getMessage() for r in caplog.records),
                    what="the poll to work again",
                )
                assert (await call(client, "queue_status", {}))["pending"] == 0
        tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
        assert 1 <= failed_polls() <= 3  # the first, perhaps a "still failing", "works again"
        assert len(tracebacks) <= 2, tracebacks  # the poll's and the claims' first failure
    finally:
        await _pg_admin(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


async def test_a_shared_memory_file_deleted_under_a_running_bridge_is_a_critical_log_line(
    migrated_sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cleanup script's `rm bridge.db-*`: the processes using the database stop sharing the
    index of its log, and a CLI send can be lost without a word (found by a probe). The bridge
    cannot repair that; it says so at once, naming the file and the way out."""
    settings = settings_for(migrated_sqlite_url, tmp_path)
    database = Path(make_url(migrated_sqlite_url).database or "")
    shm = database.with_name(database.name + "-shm")
    with caplog.at_level(logging.INFO, logger="nexus_bridge.db.wakeups"):
        async with running_server(settings) as (url, _server), mcp_client(url) as client:
            await call(client, "send_message", {"message": "before"})
            assert shm.exists()
            shm.unlink()

            def warned() -> list[str]:
                return [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]

            await wait_for(warned, what="the critical line")
    (line,) = warned()
    assert str(shm) in line
    assert "Restart nexus-bridge now" in line
