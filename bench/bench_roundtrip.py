"""1. ``send_message`` round trip vs the MCP ``ping`` round trip: same client, same live server;
then the throughput of 32 concurrent clients sending vs the same 32 clients pinging.

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

from benchlib import Case, Report, Row, measure, progress, running_server, sqlite_url
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning

TARGET = 1.25
CLIENTS = 32
CONCURRENT_TARGET = 0.9  # send_message throughput / ping throughput, at least
CONCURRENT_ROUNDS = 4


async def _throughput(calls: list[Callable[[], Awaitable[None]]], each: int) -> float:
    """Every call in ``calls`` ``each`` times, all concurrently; calls per second."""

    async def repeat(call: Callable[[], Awaitable[None]]) -> None:
        for _ in range(each):
            await call()

    begin = time.perf_counter()
    await asyncio.gather(*(repeat(call) for call in calls))
    return len(calls) * each / (time.perf_counter() - begin)


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

        progress(f"  {CLIENTS} concurrent clients: ping vs send_message throughput")
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(Client(url, mode="legacy")) for _ in range(CLIENTS)
            ]
            pings, sends = _concurrent_calls(clients, run_id)
            each = max(2, iterations // CLIENTS)
            await _throughput(pings, 2)
            await _throughput(sends, 2)
            rates: dict[str, list[float]] = {"ping": [], "send_message": []}
            for r in range(CONCURRENT_ROUNDS):
                order = [("ping", pings), ("send_message", sends)]
                for name, calls in order if r % 2 == 0 else order[::-1]:
                    rates[name].append(await _throughput(calls, each))

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
    ping_rate = sum(rates["ping"]) / len(rates["ping"])
    send_rate = sum(rates["send_message"]) / len(rates["send_message"])
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
    report.notes.append(
        f"1: {CLIENTS} SDK clients on the same server, each calling in a loop, all at once; "
        f"{CONCURRENT_ROUNDS} rounds alternating ping and send_message; ratio = mean rate / mean "
        "rate (higher is better; group commit lets concurrent sends share an fsync)."
    )
    progress(f"  {CLIENTS} clients: send_message {send_rate:,.0f}/s; ping {ping_rate:,.0f}/s")


def _concurrent_calls(
    clients: list[Client], run_id: str
) -> tuple[list[Callable[[], Awaitable[None]]], list[Callable[[], Awaitable[None]]]]:
    """One ping and one send_message call per client."""
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

    return [ping_of(c) for c in clients], [send_of(c) for c in clients]
