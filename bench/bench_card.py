"""7. The live task card (MCP Apps): what it weighs and what it costs while nothing happens.

* **card size**: the bytes of the ``ui://nexus-bridge/task`` document a host reads (and gzipped),
  against the same client's ``tools/list`` answer in the same run (the other thing a host reads
  when it connects). Target: under 64 KiB, so a host shows it at once on a phone.
* **tool calls per minute, task idle**: the card in Debian's Chromium, in the minimal MCP Apps
  host of tests/card_host.py (its tool calls proxied through the SDK's client to a live bridge),
  following a task that is in progress and quiet; against, over the same minutes, the cheapest
  follower there is: a Python loop of ``pull_updates(message_id, cursor, wait_seconds=the card's
  WAIT_SECONDS)``. Rate = (calls - 1) / (time from the first to the last call) * 60. Target:
  the card costs at most 1.5x that loop.
"""

from __future__ import annotations

import asyncio
import gzip
import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchlib import Report, Row, progress, running_bridge, server_settings, sqlite_url
from mcp import Client
from mcp.client.extension import advertise
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.task_card import CLIENT_SETTINGS, EXTENSION_ID, TASK_CARD_URI
from tests.card_host import CHROMIUM, card_host

TOKEN = "bench-card-agent-token-" + "c" * 20
TARGET_BYTES = 64 * 1024
TARGET_RATIO = 1.5
SETTLE_DEADLINE = 30.0


def card_wait_seconds(html: str) -> float:
    """The card's own WAIT_SECONDS, read from its script (what the baseline loop uses too)."""
    found = re.search(r"var WAIT_SECONDS = (\d+(?:\.\d+)?);", html)
    if found is None:
        raise RuntimeError("the card's WAIT_SECONDS was not found")
    return float(found.group(1))


def per_minute(starts: list[float]) -> float:
    if len(starts) < 2:
        raise RuntimeError(f"too few calls to measure a rate: {len(starts)}")
    return (len(starts) - 1) / (starts[-1] - starts[0]) * 60


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return dict(result.structured_content or {})


async def _baseline(client: Client, task_id: str, wait: float, until: float) -> list[float]:
    """The cheapest follower: one waiting pull_updates after another; the start of each."""
    starts: list[float] = []
    page = await _call(client, "pull_updates", {"message_id": task_id})
    cursor = str(page["next_cursor"])
    while time.monotonic() < until:
        starts.append(time.monotonic())
        args = {"message_id": task_id, "cursor": cursor, "wait_seconds": wait}
        page = await _call(client, "pull_updates", args)
        cursor = str(page["next_cursor"])
    return starts


async def run(report: Report, database: Path, *, idle_seconds: float) -> None:
    settings = server_settings(sqlite_url(database), agent_tokens=[f"homelab:{TOKEN}"])
    async with (
        running_bridge(settings) as (url, _server),
        create_mcp_http_client() as http,
        Client(
            streamable_http_client(url, http_client=http),
            extensions=[advertise(EXTENSION_ID, CLIENT_SETTINGS)],
        ) as client,
    ):
        (resource,) = (await client.read_resource(TASK_CARD_URI)).contents
        html = str(getattr(resource, "text", ""))
        size = len(html.encode())
        packed = len(gzip.compress(html.encode()))
        listed = await client.list_tools()
        tools_bytes = len(json.dumps(listed.model_dump(by_alias=True, mode="json")).encode())
        report.rows.append(
            Row(
                "7",
                "task card: document a host reads",
                f"{size:,} B ({packed:,} B gzip)",
                f"tools/list {tools_bytes:,} B",
                size / tools_bytes,
                target_text=f"< {TARGET_BYTES // 1024} KiB",
                passed=size < TARGET_BYTES,
            )
        )

        if not CHROMIUM.is_file() or importlib.util.find_spec("playwright") is None:
            report.notes.append(f"7: no {CHROMIUM} or no playwright: card calls not measured")
            return
        wait = card_wait_seconds(html)
        arguments = {"message": "bench: a task that stays quiet"}
        sent = await client.call_tool("send_message", arguments)
        task_id = str((sent.structured_content or {})["id"])
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            create_mcp_http_client(headers=headers) as agent_http,
            Client(
                streamable_http_client(
                    url.removesuffix("/mcp") + "/agent/mcp", http_client=agent_http
                )
            ) as agent,
        ):
            await _call(agent, "next_task", {})
            await _call(agent, "start_task", {"id": task_id})
        result = sent.model_dump(by_alias=True, mode="json", exclude_none=True)
        async with card_host(
            str(CHROMIUM), client, html=html, tool_input=arguments, tool_result=result
        ) as host:
            # Idle: the card has caught up (its last call is a waiting pull_updates).
            deadline = time.monotonic() + SETTLE_DEADLINE
            while not (
                host.calls
                and host.calls[-1].name == "pull_updates"
                and host.calls[-1].arguments.get("wait_seconds")
                and host.calls[-1].finished is None
            ):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the card did not settle: {host.calls}")
                await asyncio.sleep(0.05)
            began = time.monotonic()
            progress(f"7: watching the card and the baseline follow an idle task {idle_seconds:g}s")
            settle = len(host.calls) - 1
            baseline = await _baseline(client, task_id, wait, began + idle_seconds)
            ended = time.monotonic()
            card_starts = [c.started for c in host.calls[settle:] if c.started <= ended]
            names = sorted({c.name for c in host.calls[settle:]})
        card_rate = per_minute(card_starts)
        base_rate = per_minute(baseline)
        report.rows.append(
            Row(
                "7",
                "task card: tool calls/min, task idle",
                f"{card_rate:.2f}/min ({len(card_starts)} calls: {', '.join(names)})",
                f"{base_rate:.2f}/min (pull_updates loop, wait {wait:g}s)",
                card_rate / base_rate,
                target=TARGET_RATIO,
            )
        )
