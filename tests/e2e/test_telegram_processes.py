"""One poller among many processes: two real `nexus-bridge serve` processes on one database."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from typing import Any

from mcp import Client
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.protocol import short_id
from nexus_bridge.queue import QueueService
from tests.conftest import wait_for
from tests.e2e.test_http import call
from tests.e2e.test_process import ServerProcess, serve_process, sqlite_path
from tests.e2e.test_telegram import AGENT, CHAT
from tests.fake_telegram import FakeTelegram, running_fake_telegram

LEASE_SECONDS = 2


def telegram_env(fake: FakeTelegram) -> dict[str, str]:
    return {
        "NEXUS_BRIDGE_TELEGRAM_BOT_TOKEN": fake.token,
        "NEXUS_BRIDGE_TELEGRAM_CHAT_ID": str(CHAT),
        "NEXUS_BRIDGE_TELEGRAM_AGENT_IDS": str(AGENT),
        "NEXUS_BRIDGE_TELEGRAM_BASE_URL": fake.base_url,
        "NEXUS_BRIDGE_TELEGRAM_POLL_TIMEOUT": "1",
        "NEXUS_BRIDGE_TELEGRAM_LEASE_SECONDS": str(LEASE_SECONDS),
        "NEXUS_BRIDGE_TELEGRAM_MIN_SEND_INTERVAL": "0",
    }


async def transport_of(server: ServerProcess) -> dict[str, Any]:
    assert server.url is not None
    async with create_mcp_http_client() as http:
        ready = await http.get(server.url.removesuffix("/mcp") + "/readyz")
    assert ready.status_code == 200, ready.text
    return dict(ready.json()["transport"])


async def test_exactly_one_process_polls_and_the_other_takes_over_when_it_dies(
    migrated_sqlite_url: str,
) -> None:
    async with running_fake_telegram() as fake:
        env = telegram_env(fake)
        async with (
            serve_process(migrated_sqlite_url, **env) as first,
            serve_process(migrated_sqlite_url, **env) as second,
        ):
            servers = (first, second)

            async def one_polls() -> bool:
                states = sorted([(await transport_of(s))["state"] for s in servers])
                return states == ["polling", "standby"]

            await wait_for(one_polls, what="one poller and one standby")
            reports = [await transport_of(s) for s in servers]
            poller, standby = (
                (first, second) if reports[0]["state"] == "polling" else (second, first)
            )
            poller_id = (await transport_of(poller))["this_process"]
            assert (await transport_of(standby))["poller"] == poller_id
            # Both stay up through several lease renewals, and only one ever polled.
            await fake.wait_for_call("getUpdates", 4)
            assert fake.conflicts == 0
            assert await one_polls()

            assert standby.url is not None
            async with Client(standby.url) as client:
                task_id = (await call(client, "send_message", {"message": "via standby"}))["id"]
                await fake.wait_for_sent(1)
                assert fake.sent[0].text.startswith(f"[task {short_id(task_id)}]")

                async def delivered() -> bool:
                    detail = await call(client, "get_message", {"id": task_id})
                    return bool(detail["delivery"]["state"] == "delivered")

                # (Killing the poller between Telegram's answer and this commit is the one
                # window in which a task can be posted twice; docs/queue.md says so.)
                await wait_for(delivered, what="the poller to record the delivery")

                poller.proc.send_signal(signal.SIGKILL)
                await poller.proc.wait()

                async def took_over() -> bool:
                    report = await transport_of(standby)
                    return bool(report["state"] == "polling")

                await wait_for(took_over, what="the standby to take over the lease")
                fake.inject_message(
                    CHAT,
                    AGENT,
                    "[Done] after the take-over",
                    reply_to_message_id=fake.sent[0].message_id,
                )

                async def completed() -> bool:
                    detail = await call(client, "get_message", {"id": task_id})
                    return bool(detail["status"] == "complete")

                await wait_for(completed, what="the survivor to process the agent's reply")
                second_task = (await call(client, "send_message", {"message": "after"}))["id"]
                await fake.wait_for_sent(2)
                assert fake.sent[1].text.startswith(f"[task {short_id(second_task)}]")
                assert len(fake.sent) == 2  # nothing was posted twice
                assert fake.conflicts == 0


async def enqueue_directly(database_url: str, *texts: str) -> list[str]:
    """Queue tasks straight into the database (as another process would)."""
    store = Store(create_engine(database_url))
    try:
        queue = QueueService(store)
        return [(await queue.enqueue(text)).task.id for text in texts]
    finally:
        await store.dispose()


async def wait_polling(server: ServerProcess) -> None:
    async def polling() -> bool:
        return (await transport_of(server))["state"] == "polling"

    await wait_for(polling, what="the process to poll")


async def test_a_restart_after_kill_9_posts_within_2_seconds(migrated_sqlite_url: str) -> None:
    async with running_fake_telegram() as fake:
        # A long lease: waiting for the dead process's lease to expire would take 10 s.
        env = {**telegram_env(fake), "NEXUS_BRIDGE_TELEGRAM_LEASE_SECONDS": "10"}
        async with serve_process(migrated_sqlite_url, **env) as crashed:
            await wait_polling(crashed)
            crashed.proc.send_signal(signal.SIGKILL)
            await crashed.proc.wait()
        (task_id,) = await enqueue_directly(migrated_sqlite_url, "after the crash")
        async with serve_process(migrated_sqlite_url, **env) as restarted:
            started = time.monotonic()
            (sent,) = await fake.wait_for_sent(1, timeout=15)
            elapsed = time.monotonic() - started
            assert sent.text.startswith(f"[task {short_id(task_id)}]")
            assert elapsed < 2.0, f"first post {elapsed:.1f}s after the restart:\n{restarted.log}"
            assert restarted.count("is no longer running; taking over") == 1


async def test_a_paused_holder_resumed_after_its_lease_delivers_nothing_the_successor_did(
    migrated_sqlite_url: str,
) -> None:
    async with running_fake_telegram() as fake:
        # One message a second: the poller spends most of its time with the next task in
        # hand, waiting to send it, which is where a stall hurts.
        env = {**telegram_env(fake), "NEXUS_BRIDGE_TELEGRAM_MIN_SEND_INTERVAL": "1"}
        texts = [f"paced task {n}" for n in range(6)]
        async with (
            serve_process(migrated_sqlite_url, **env) as first,
            serve_process(migrated_sqlite_url, **env) as second,
        ):
            await wait_for(lambda: fake.calls_of("getUpdates"), what="one process to start polling")
            reports = [await transport_of(s) for s in (first, second)]
            poller, successor = (
                (first, second) if reports[0]["state"] == "polling" else (second, first)
            )
            ids = await enqueue_directly(migrated_sqlite_url, *texts)
            path = sqlite_path(migrated_sqlite_url)

            def first_delivered() -> bool:
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM outbox WHERE state = 'delivered'"
                    ).fetchone()
                return bool(row[0] >= 1)

            await wait_for(first_delivered, what="the first delivery to be recorded")
            poller.proc.send_signal(signal.SIGSTOP)  # with the next task in hand
            try:
                await fake.wait_for_sent(len(texts), timeout=30)  # the successor posts the rest
                await wait_polling(successor)
            finally:
                poller.proc.send_signal(signal.SIGCONT)

            async def stood_down() -> bool:
                return (await transport_of(poller))["state"] == "standby"

            await wait_for(stood_down, what="the resumed process to stand by")
            # Long enough for the resumed process to have sent anything it still meant to.
            await wait_for(
                lambda: poller.count("lost the poller lease") >= 1,
                what="the resumed process to notice it lost the lease",
            )
            posted = [m.text.split("\n", 1)[1] for m in fake.sent]
            assert sorted(posted) == sorted(texts), (posted, poller.log)
            tags = [m.text.split("]", 1)[0] for m in fake.sent]
            assert sorted(tags) == sorted(f"[task {short_id(i)}" for i in ids)
            # Each post is journaled with the epoch of the lease it was posted under.
            with contextlib.closing(sqlite3.connect(path)) as conn:
                epochs = [
                    row[0]
                    for row in conn.execute(
                        "SELECT lease_epoch FROM telegram_messages WHERE direction = 'out' "
                        "ORDER BY id"
                    )
                ]
            assert len(epochs) == len(texts)
            assert None not in epochs
            assert epochs == sorted(epochs)
            assert epochs[0] < epochs[-1]  # the successor took the lease: a later epoch
