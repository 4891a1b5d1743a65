"""1. ``send_message`` round trip vs the MCP ``ping`` round trip: same client, same live server;
then the throughput of 32 concurrent clients sending vs the same 32 clients pinging.

Beside them, for scale (informational rows): a no-op tool that returns ``send_message``'s own
result model, added to the same server for the benchmark only. It is the SDK's ``tools/call``
with none of nexus-bridge's work (no validation, no database): the floor under any tool. And the
same no-op tool that first commits one raw ``sqlite3`` transaction of the rows a send writes (row
2's raw baseline, on its own copy of the schema, blocking the loop: the cheapest a durable write
can be): the floor under any durable ``send_message``.

``ping`` exists only in the handshake-era protocol (the SDK removes it from 2026-07-28 on and the
server answers "Method not found" there), so the client connects with ``mode="legacy"``; both
calls then travel the same path: one HTTP POST to the stateless Streamable HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

from bench_enqueue import RawWriter
from benchlib import (
    Case,
    Report,
    Row,
    measure,
    progress,
    running_bridge,
    server_settings,
    sqlite_url,
)
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning

from nexus_bridge.mcp_tools import SendResult

TARGET = 1.25
CLIENTS = 32
CONCURRENT_TARGET = 0.9  # send_message throughput / ping throughput, at least
CONCURRENT_ROUNDS = 6
NOOP_TOOL = "bench_noop"
NOOP_COMMIT_TOOL = "bench_noop_commit"


async def _noop(message: str) -> SendResult:
    """Does nothing: returns what send_message returns for a new task (benchmark only)."""
    return SendResult(queued=True, id=message, status="pending")


async def _throughput(calls: list[Callable[[], Awaitable[None]]], each: int) -> float:
    """Every call in ``calls`` ``each`` times, all concurrently; calls per second."""

    async def repeat(call: Callable[[], Awaitable[None]]) -> None:
        for _ in range(each):
            await call()

    begin = time.perf_counter()
    await asyncio.gather(*(repeat(call) for call in calls))
    return len(calls) * each / (time.perf_counter() - begin)


async def run(
    report: Report, database: Path, raw_database: Path, *, iterations: int, warmup: int
) -> None:
    progress(f"1. MCP round trip: live server on {database.name}, SDK client (mode='legacy')")
    settings = server_settings(sqlite_url(database))
    raw = RawWriter(raw_database)
    run_id = uuid.uuid4().hex[:8]
    raw_numbers = itertools.count()

    async def noop_commit(message: str) -> SendResult:
        """Commits one raw sqlite3 transaction of a task's rows, then returns what send_message
        returns (benchmark only)."""
        raw.block(run_id, next(raw_numbers), 1)
        return SendResult(queued=True, id=message, status="pending")

    async with (
        running_bridge(settings) as (url, server),
        Client(url, mode="legacy") as client,
    ):
        server.bridge.mcp.add_tool(_noop, name=NOOP_TOOL)
        server.bridge.mcp.add_tool(noop_commit, name=NOOP_COMMIT_TOOL)
        progress(f"  server at {url}, protocol {client.protocol_version}")
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

        async def noop() -> None:
            result = await client.call_tool(NOOP_TOOL, {"message": "x"})
            if result.is_error:
                raise RuntimeError(f"the no-op tool failed: {result}")

        async def commit() -> None:
            result = await client.call_tool(NOOP_COMMIT_TOOL, {"message": "x"})
            if result.is_error:
                raise RuntimeError(f"the no-op tool with a raw commit failed: {result}")

        samples = await measure(
            [
                Case("ping", ping),
                Case("send_message", send),
                Case("no-op tool", noop),
                Case("no-op tool + raw commit", commit),
            ],
            iterations=iterations,
            warmup=warmup,
            label="ping / send_message / no-op tool / no-op tool + raw commit",
        )

        progress(f"  {CLIENTS} concurrent clients: ping vs send_message throughput")
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Client(url, mode="legacy")) for _ in range(CLIENTS)
            ]
            pings, sends, noops = _concurrent_calls(clients, run_id)
            each = max(2, iterations // CLIENTS)
            for calls in (pings, sends, noops):
                await _throughput(calls, 2)
            rates: dict[str, list[float]] = {"ping": [], "send_message": [], "no-op tool": []}
            for r in range(CONCURRENT_ROUNDS):
                order = [("ping", pings), ("send_message", sends), ("no-op tool", noops)]
                for name, calls in order[r % 3 :] + order[: r % 3]:
                    rates[name].append(await _throughput(calls, each))
    raw.close()  # on an error the process ends and the scratch directory goes with it

    sent, ping_sample, noop_sample = samples["send_message"], samples["ping"], samples["no-op tool"]
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
    report.rows.append(
        Row(
            section="1",
            name="  for scale: MCP no-op tool (same result model) vs MCP ping",
            measured=f"no-op tool {noop_sample.describe()}",
            baseline=f"ping {ping_sample.describe()}",
            ratio=noop_sample.median / ping_sample.median,
        )
    )
    commit_sample = samples["no-op tool + raw commit"]
    report.rows.append(
        Row(
            section="1",
            name="  for scale: MCP no-op tool + a raw sqlite3 commit of a task's rows vs ping",
            measured=f"no-op tool + commit {commit_sample.describe()}",
            baseline=f"ping {ping_sample.describe()}",
            ratio=commit_sample.median / ping_sample.median,
        )
    )
    report.notes.append(
        "1: SDK Client over Streamable HTTP (stateless) to uvicorn on 127.0.0.1, mode='legacy' "
        "(ping is gone from protocol 2026-07-28), calls interleaved, every message unique; "
        "ratio = median / median."
    )
    progress(f"  send_message {sent.describe()}; ping {ping_sample.describe()}")
    ping_rate, send_rate, noop_rate = (
        sum(rates[name]) / len(rates[name]) for name in ("ping", "send_message", "no-op tool")
    )
    report.rows.append(
        Row(
            section="1",
            name=f"{CLIENTS} concurrent MCP clients: send_message vs ping (rate)",
            measured=f"send_message {send_rate:,.0f} calls/s",
            baseline=f"ping {ping_rate:,.0f} calls/s",
            ratio=send_rate / ping_rate,
            at_least=CONCURRENT_TARGET,
        )
    )
    report.rows.append(
        Row(
            section="1",
            name=f"  for scale: {CLIENTS} clients, no-op tool vs ping (rate)",
            measured=f"no-op tool {noop_rate:,.0f} calls/s",
            baseline=f"ping {ping_rate:,.0f} calls/s",
            ratio=noop_rate / ping_rate,
        )
    )
    report.notes.append(
        f"1: {CLIENTS} SDK clients on the same server, each calling in a loop, all at once; "
        f"{CONCURRENT_ROUNDS} rounds rotating ping, send_message and the no-op tool; ratio = "
        "mean rate / mean rate (higher is better; group commit lets concurrent sends share an "
        "fsync)."
    )
    report.notes.append(
        f"1: the no-op tool ({NOOP_TOOL}, added for the benchmark only) returns send_message's "
        "result model and does nothing else: the SDK's tools/call on both sides, the floor under "
        "any tool. send_message's cost above it is the durable enqueue. The no-op tool + raw "
        f"commit ({NOOP_COMMIT_TOOL}) first writes a task's 3 rows with raw sqlite3 in one "
        "transaction (row 2's raw baseline, WAL + synchronous=FULL, its own copy of the schema, "
        "blocking the loop): the floor under any send_message whose answer waits for the disk."
    )
    progress(f"  {CLIENTS} clients: send_message {send_rate:,.0f}/s; ping {ping_rate:,.0f}/s")


Calls = list[Callable[[], Awaitable[None]]]


def _concurrent_calls(clients: list[Client], run_id: str) -> tuple[Calls, Calls, Calls]:
    """One ping, one send_message and one no-op tool call per client."""
    numbers = itertools.count()

    def ping_of(client: Client) -> Callable[[], Awaitable[None]]:
        async def ping() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MCPDeprecationWarning)
                await client.send_ping()

        return ping

    def send_of(client: Client) -> Callable[[], Awaitable[None]]:
        async def send() -> None:
            message = f"benchmark task {run_id}-c{next(numbers)}: check the backups"
            result = await client.call_tool("send_message", {"message": message})
            content = result.structured_content or {}
            if result.is_error or content.get("queued") is not True:
                raise RuntimeError(f"send_message did not queue a new task: {result}")

        return send

    def noop_of(client: Client) -> Callable[[], Awaitable[None]]:
        async def noop() -> None:
            result = await client.call_tool(NOOP_TOOL, {"message": "x"})
            if result.is_error:
                raise RuntimeError(f"the no-op tool failed: {result}")

        return noop

    return (
        [ping_of(c) for c in clients],
        [send_of(c) for c in clients],
        [noop_of(c) for c in clients],
    )
