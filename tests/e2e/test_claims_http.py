"""Over a real server: a client that disconnects mid-wait claims nothing and marks nothing read,
a claim never started is back in the queue within AGENT_CLAIM_SECONDS plus one poll, and the
MCP endpoints answer GET with 405."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.app import BridgeServer
from nexus_bridge.config import Settings
from tests.conftest import mcp_client, running_server, wait_for
from tests.e2e.test_agent_api import FELT_TOKEN, agent_client, two_targets
from tests.e2e.test_http import call

# The SDK serves each protocol era on its own path: a handshake-era request runs its tool in a
# task of the session manager, a 2026-07-28 one in the request's own task. Both must notice.
LEGACY, MODERN = "2025-06-18", "2026-07-28"


async def raw_tool_call(
    server: BridgeServer,
    path: str,
    tool: str,
    arguments: dict[str, Any],
    token: str | None,
    version: str = LEGACY,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A tools/call POST over a plain socket, left waiting for its answer."""
    port = server.bound_port
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: application/json, text/event-stream",
        f"MCP-Protocol-Version: {version}",
    ]
    if version == MODERN:
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        head += ["Mcp-Method: tools/call", f"Mcp-Name: {tool}"]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})
    head.append(f"Content-Length: {len(body.encode())}")
    if token:
        head.append(f"Authorization: Bearer {token}")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("\r\n".join(head) + "\r\n\r\n" + body).encode())
    await writer.drain()
    return reader, writer


def logged(caplog: pytest.LogCaptureFixture, text: str) -> Callable[[], bool]:
    return lambda: any(text in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("version", [LEGACY, MODERN])
async def test_a_next_task_whose_client_disconnected_claims_nothing(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    version: str,
) -> None:
    caplog.set_level(logging.INFO, logger="nexus_bridge")
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, server), mcp_client(url) as client:
        _, writer = await raw_tool_call(
            server, "/agent/mcp", "next_task", {"wait_seconds": 30}, FELT_TOKEN, version
        )
        # The handler has made its first attempt (it touches the agent's presence) and waits.
        await wait_for(lambda: _seen(server, "nexus:felt"), what="the waiting next_task to start")
        writer.close()
        await writer.wait_closed()
        await wait_for(
            logged(caplog, "the client went away; nothing claimed"),
            what="the handler to notice the disconnect",
        )
        sent = await call(
            client, "send_message", {"message": "for a live agent", "target": "nexus:felt"}
        )
        assert (await call(client, "get_message", {"id": sent["id"]}))["status"] == "pending"
        async with agent_client(url.removesuffix("/mcp"), FELT_TOKEN) as agent:
            claimed = await call(agent, "next_task", {})
        assert claimed["task"] is not None
        assert claimed["task"]["id"] == sent["id"]


async def _seen(server: BridgeServer, target: str) -> bool:
    return target in await server.bridge.queue.presence()


@pytest.mark.parametrize("version", [LEGACY, MODERN])
async def test_a_pull_whose_client_disconnected_marks_nothing_read(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture, version: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="nexus_bridge")
    async with running_server(make_settings()) as (url, server), mcp_client(url) as client:
        await call(client, "send_message", {"message": "before"})
        assert len((await call(client, "pull_updates", {}))["updates"]) == 1  # all read
        _, writer = await raw_tool_call(
            server, "/mcp", "pull_updates", {"wait_seconds": 30}, None, version
        )
        await wait_for(logged(caplog, "waiting up to"), what="the pull to wait")
        writer.close()
        await writer.wait_closed()
        await wait_for(
            logged(caplog, "the client went away; nothing marked read"),
            what="the pull to notice the disconnect",
        )
        sent = await call(client, "send_message", {"message": "after"})
        page = await call(client, "pull_updates", {})
        assert [u["message_id"] for u in page["updates"]] == [sent["id"]]


async def test_a_claim_never_started_is_back_in_the_queue_within_the_lease_and_one_poll(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    lease, poll = 1.0, 0.2
    settings = make_settings(
        config_file=two_targets(tmp_path), agent_claim_seconds=lease, change_poll_seconds=poll
    )
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        base = url.removesuffix("/mcp")
        idle = await call(
            client, "send_message", {"message": "never started", "target": "nexus:felt"}
        )
        busy = await call(client, "send_message", {"message": "started", "target": "nexus:felt"})
        async with agent_client(base, FELT_TOKEN) as agent:
            first = (await call(agent, "next_task", {}))["task"]
            claimed_at = time.monotonic()
            second = (await call(agent, "next_task", {}))["task"]
            assert [first["id"], second["id"]] == [idle["id"], busy["id"]]
            expires = datetime.fromisoformat(first["claim_expires_at"])
            acknowledged = datetime.fromisoformat(first["acknowledged_at"])
            assert (expires - acknowledged).total_seconds() == pytest.approx(lease, abs=0.01)
            await call(agent, "start_task", {"id": busy["id"]})

            async def back_in_queue() -> bool:
                task = await call(client, "get_message", {"id": idle["id"]})
                return task["status"] == "pending"

            await wait_for(back_in_queue, what="the lapsed claim to return to the queue")
            # Within the lease plus one poll (plus slack for a loaded machine: a get_message round
            # trip and the sweep's own write).
            assert time.monotonic() - claimed_at < lease + poll + 1.0
            task = await call(client, "get_message", {"id": idle["id"]})
            assert task["claim_expires_at"] is None
            assert task["updates"][-1]["content"] == (
                "status: acknowledged → pending (claim expired; back in the queue)"
            )
            started = await call(client, "get_message", {"id": busy["id"]})
            assert started["status"] == "in_progress"  # never re-run
            again = (await call(agent, "next_task", {}))["task"]
            assert again["id"] == idle["id"]
            renewed = await call(agent, "heartbeat", {"id": idle["id"]})
            assert renewed["claim_expires_at"] > again["claim_expires_at"]


async def test_get_and_delete_on_the_mcp_endpoints_answer_405(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, _), create_mcp_http_client() as http:
        agent_url = url.removesuffix("/mcp") + "/agent/mcp"
        sse = {"Accept": "text/event-stream"}
        for method, target, headers in (
            ("GET", url, sse),
            ("DELETE", url, {}),
            ("GET", agent_url, {**sse, "Authorization": f"Bearer {FELT_TOKEN}"}),
        ):
            response = await asyncio.wait_for(
                http.request(method, target, headers=headers), timeout=10
            )
            assert response.status_code == 405, (method, target, response.text)
            assert response.headers["allow"] == "POST"
        # Without a token the agent endpoint still says 401 first.
        response = await http.get(agent_url, headers=sse)
        assert response.status_code == 401
