"""One poller among many processes: two real `nexus-bridge serve` processes on one database."""

from __future__ import annotations

import signal
from typing import Any

from mcp import Client
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.protocol import short_id
from tests.conftest import wait_for
from tests.e2e.test_http import call
from tests.e2e.test_process import ServerProcess, serve_process
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
                # window in which a task can be posted twice; the README says so.)
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
