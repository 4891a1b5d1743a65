"""The Telegram transport under Bot API faults: chat-wide 429s, a hung long poll, an outage
that health reports at once, a dropped connection, and a busy database as a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.config import Settings
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.queue import QueueService
from nexus_bridge.relay import TelegramRelay
from tests.conftest import (
    mcp_client,
    postgres_refuses_writes,
    running_server,
    subprocess_env,
    wait_for,
)
from tests.e2e.test_http import call, call_error
from tests.e2e.test_telegram import (
    AGENT,
    CHAT,
    _delivered,
    agent_updates,
    send_and_deliver,
    telegram_settings,
    wait_status,
)
from tests.fake_telegram import Fault, running_fake_telegram

NEXUS_BRIDGE = str(Path(sys.executable).with_name("nexus-bridge"))


async def readyz_transport(url: str) -> dict[str, Any]:
    async with create_mcp_http_client() as http:
        ready = await http.get(url.removesuffix("/mcp") + "/readyz")
    assert ready.status_code == 200, ready.text
    return dict(ready.json()["transport"])


async def test_a_429_with_retry_after_stops_all_sends_to_that_chat_for_that_long(
    make_settings: Callable[..., Settings],
) -> None:
    window = 3.0
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake)
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            await fake.wait_for_call("getUpdates")
            fake.rate_limit_chat(CHAT, window)
            flooded_at = time.monotonic()
            ids = [
                (await call(client, "send_message", {"message": f"flood {n}"}))["id"]
                for n in range(5)
            ]
            for task_id in ids:
                await wait_for(lambda t=task_id: _delivered(client, t), what="every delivery")
        # One refused call for the whole chat; nothing more was tried inside the window.
        assert len(fake.refused) == 1, fake.refused
        first_refusal = fake.refused[0][1]
        sends = [at for method, at in fake.call_times if method == "sendMessage"]
        inside = [at for at in sends if first_refusal < at < flooded_at + window]
        assert inside == [], f"{len(inside)} sendMessage call(s) inside the retry_after window"
        assert len(fake.sent) == 5


async def test_a_hung_get_updates_is_abandoned_after_request_plus_poll_timeout(
    make_settings: Callable[..., Settings],
) -> None:
    # Given up after 5 s now; after 9 s when the poll timeout was added twice.
    request_timeout, poll_timeout = 1.0, 4
    async with running_fake_telegram() as fake:
        settings = telegram_settings(
            make_settings,
            fake,
            telegram_request_timeout=request_timeout,
            telegram_poll_timeout=poll_timeout,
            telegram_lease_seconds=30,  # no lease renewal gets in the way
        )
        fake.fail_next("getUpdates", Fault.timeout(60))  # the first long poll never answers
        async with running_server(settings) as (url, _):
            await fake.wait_for_call("getUpdates", 2, timeout=20)
            polls = [at for method, at in fake.call_times if method == "getUpdates"]
            # Given up after request + poll timeout, then retried after a 1 s back-off.
            gap = polls[1] - polls[0]
            limit = request_timeout + poll_timeout
            assert limit <= gap < limit + 1 + 2, f"the hung poll was abandoned after {gap:.1f}s"
            report = await readyz_transport(url)
            assert report["last_error"] is None or "getUpdates" in report["last_error"]


async def test_readyz_and_status_report_an_outage_after_one_failed_call(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        # A long retry delay: the one failed sendMessage stays the only one while we look.
        settings = telegram_settings(make_settings, fake, telegram_retry_base_seconds=30)
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            await fake.wait_for_call("getUpdates")
            healthy = await readyz_transport(url)
            assert healthy["state"] == "polling"
            assert healthy["last_error"] is None
            assert healthy["last_ok_at"] is not None

            fake.fail_next("sendMessage", Fault.server_error(502))
            await call(client, "send_message", {"message": "into the outage"})
            await fake.wait_for_call("sendMessage", 1)

            async def reported() -> bool:
                return (await readyz_transport(url))["state"] == "unreachable"

            await wait_for(reported, what="/readyz to report the outage")
            report = await readyz_transport(url)
            assert len(fake.calls_of("sendMessage")) == 1  # one failed call was enough
            assert "sendMessage" in report["last_error"]
            assert report["error_since"] is not None
            assert report["last_ok_at"] is not None
            status = await call(client, "queue_status", {})
            assert status["transport"]["state"] == "unreachable"

            # Other processes see it too: `nexus-bridge status` reads the poller's report.
            async def cli_reports() -> bool:
                return (await cli_status(settings))["state"] == "unreachable"

            await wait_for(cli_reports, what="`nexus-bridge status` to report the outage")
            shown = await cli_status(settings)
            assert "sendMessage" in shown["last_error"]
            assert shown["error_since"] is not None


async def cli_status(settings: Settings) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        NEXUS_BRIDGE,
        "status",
        "--json",
        env=subprocess_env(settings.database_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out)["telegram"])


async def test_an_outage_of_dropped_connections_is_reported_and_recovered(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, telegram_retry_base_seconds=0.2)
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            await fake.wait_for_call("getUpdates")
            fake.outage = Fault.dropped()
            task_id = (await call(client, "send_message", {"message": "through drops"}))["id"]

            async def down() -> bool:
                return (await readyz_transport(url))["state"] == "unreachable"

            await wait_for(down, what="/readyz to report the dropped connections")
            fake.outage = None
            await wait_for(lambda: _delivered(client, task_id), what="delivery after the outage")

            async def back() -> bool:
                report = await readyz_transport(url)
                return report["state"] == "polling" and report["last_error"] is None

            await wait_for(back, what="/readyz to report recovery")
        assert len([m for m in fake.sent if "through drops" in m.text]) == 1


@contextlib.contextmanager
def write_lock_held(database_url: str) -> Iterator[None]:
    """Another process stalled inside a write transaction: the SQLite write lock is taken."""
    path = database_url.split("///", 1)[1]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


async def test_a_busy_database_is_a_clear_retryable_error_in_tools_and_the_cli(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(sqlite_busy_timeout_ms=200)
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        with write_lock_held(settings.database_url):
            message = await call_error(client, "send_message", {"message": "while busy"})
            assert message.endswith(": the database is busy; try again"), message
            assert "internal error" not in message
            proc = await asyncio.create_subprocess_exec(
                NEXUS_BRIDGE,
                "send",
                "from the shell",
                env=subprocess_env(
                    settings.database_url, NEXUS_BRIDGE_SQLITE_BUSY_TIMEOUT_MS="200"
                ),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
            assert proc.returncode == 2
            assert err.decode().strip() == "nexus-bridge: error: the database is busy; try again"
        # Free again: the same call works.
        assert (await call(client, "send_message", {"message": "while busy"}))["queued"]


async def test_a_journaled_but_unprocessed_reply_is_acted_on_without_a_takeover(
    make_settings: Callable[..., Settings],
) -> None:
    # A poll worker cancelled between journaling a reply and acting on it (its lease lapsed)
    # leaves the reply journaled only. The holder finds it at its next renewal.
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, telegram_lease_seconds=1.5)
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            task_id, message_id = await send_and_deliver(client, fake, "journaled only")
            store = Store(create_engine(settings.database_url))
            try:
                journaled = await TelegramRelay(store, QueueService(store)).journal_inbound(
                    chat_id=CHAT,
                    telegram_message_id=message_id + 100,
                    from_id=AGENT,
                    text="[Done] finished",
                    reply_to_telegram_id=message_id,
                    accepted=True,
                )
            finally:
                await store.dispose()
            assert journaled is not None
            await wait_status(client, task_id, "complete")
            assert await agent_updates(client, task_id) == ["[Done] finished"]


async def test_a_post_telegram_accepted_while_the_database_refused_writes_is_not_posted_again(
    make_settings: Callable[..., Settings],
    migrated_postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Telegram accepts a task's post just as the database stops taking writes, so the post
    cannot be journaled: the bridge keeps trying to journal it, and once it can, the task is
    delivered with that one post. Before, the delivery worker died, and the one started after
    it posted the task to the agent again."""
    gate = asyncio.Event()
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, database_url=migrated_postgres_url)
        try:
            async with running_server(settings) as (url, _), mcp_client(url) as client:
                await fake.wait_for_call("getUpdates")
                fake.fail_next("sendMessage", Fault.held(gate))
                task = await call(client, "send_message", {"message": "check the backups"})
                await fake.wait_for_call("sendMessage")  # Telegram holds it
                await postgres_refuses_writes(migrated_postgres_url)
                gate.set()
                await fake.wait_for_sent(1)
                await wait_for(
                    lambda: any("refused a write" in r.getMessage() for r in caplog.records),
                    what="the journal write to be refused",
                )
                await postgres_refuses_writes(migrated_postgres_url, refuse=False)
                await wait_for(lambda: _delivered(client, task["id"]), what="the delivery")
                # The next delivery goes out: the worker is past the first for good.
                later = await call(client, "send_message", {"message": "and the logs"})
                await wait_for(lambda: _delivered(client, later["id"]), what="the next one")
        finally:
            await postgres_refuses_writes(migrated_postgres_url, refuse=False)
        posts = [m.text for m in fake.sent]
        assert sum("check the backups" in text for text in posts) == 1, posts
