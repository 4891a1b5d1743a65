"""1. ``send_message`` round trip vs the MCP ``ping`` round trip: same client, same live server.

``ping`` exists only in the handshake-era protocol (the SDK removes it from 2026-07-28 on and the
server answers "Method not found" there), so the client connects with ``mode="legacy"``; both
calls then travel the same path: one HTTP POST to the stateless Streamable HTTP endpoint.
"""

from __future__ import annotations

import itertools
import uuid
import warnings
from pathlib import Path

from benchlib import Case, Report, Row, measure, progress, running_server, sqlite_url
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning

TARGET = 1.5


async def run(report: Report, database: Path, *, iterations: int, warmup: int) -> None:
    progress(f"1. MCP round trip: live server on {database.name}, SDK client (mode='legacy')")
    async with running_server(sqlite_url(database)) as url, Client(url, mode="legacy") as client:
        progress(f"  server at {url}, protocol {client.protocol_version}")
        run_id = uuid.uuid4().hex[:8]
        numbers = itertools.count()

        async def ping() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await client.send_ping()

        async def send() -> None:
            message = f"benchmark task {run_id}-{next(numbers)}: check the backups"
            result = await client.call_tool("send_message", {"message": message})
            content = result.structured_content or {}
            if result.is_error or content.get("queued") is not True:
                raise RuntimeError(f"send_message did not queue a new task: {result}")

        samples = await measure(
            [Case("ping", ping), Case("send_message", send)],
            iterations=iterations,
            warmup=warmup,
            label="ping / send_message",
        )

    sent, ping_sample = samples["send_message"], samples["ping"]
    report.rows.append(
        Row(
            section="1",
            name="MCP send_message round trip vs MCP ping",
            measured=f"send_message {sent.describe()}",
            baseline=f"ping {ping_sample.describe()}",
            ratio=sent.median / ping_sample.median,
            target=TARGET,
        )
    )
    report.notes.append(
        "1: SDK Client over Streamable HTTP (stateless) to uvicorn on 127.0.0.1, mode='legacy' "
        "(ping is gone from protocol 2026-07-28), calls interleaved, every message unique; "
        "ratio = median / median."
    )
    progress(f"  send_message {sent.describe()}; ping {ping_sample.describe()}")
