"""3. ``pull_updates`` latency with a small vs a large update table: it should stay flat.

Two databases differ only in how many update rows they hold (1k vs 1M by default, bulk-loaded with
a recursive CTE). Each pull asks for 100 rows near the end of the stream, through three paths:
an explicit ``cursor``, the durable cursor (no cursor: continue from the identity's last pull,
which also advances it; it is reset, untimed, before each call), and ``since`` (a timestamp). All
are measured on the service layer and over MCP (live server, SDK client). ``queue_status`` is
measured alongside (it reads maintained counts, so it must stay flat too). Last, the tool layer's
own cost: the same 100-row pull over MCP vs on the service layer (target <= 2x), beside two
figures for scale: an MCP ``ping`` (the transport alone) and the SDK client's own check of the
100-row result against the tool's output schema (which every ``call_tool`` runs); and, measured
whole, a no-op tool added for the benchmark that returns the same 100 rows, already built, as the
same result model: every cost of an MCP pull but the service's and ours.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    Case,
    CursorSetter,
    Report,
    Row,
    Sample,
    created_at_of,
    measure,
    progress,
    running_bridge,
    server_settings,
    sqlite_url,
)
from mcp import Client
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import CallToolResult

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.mcp_tools import PullResult
from nexus_bridge.queue import QueueService

TARGET = 1.5
TOOL_LAYER_TARGET = 2.0  # an MCP pull of a page vs the same pull on the service layer
PAGE = 100
BEHIND = 150  # start this many rows before the end: a full page, and has_more is true
MCP_IDENTITY = "anonymous"  # the server's identity for unauthenticated clients
NOOP_PULL_TOOL = "bench_pull_noop"


@dataclass(frozen=True)
class Dataset:
    label: str  # "1k", "1M"
    path: Path
    rows: int

    @property
    def start(self) -> int:
        return self.rows - BEHIND

    @property
    def since(self) -> str:
        return created_at_of(self.path, self.start)


def _check_page(updates: list[Any], first_seq: int, what: str) -> None:
    if len(updates) != PAGE or updates[0] != first_seq:
        got = f"{len(updates)} rows from seq {updates[0] if updates else '-'}"
        raise RuntimeError(f"{what}: expected {PAGE} rows from seq {first_seq}, got {got}")


def _service_cases(data: Dataset, queue: QueueService, setters: list[CursorSetter]) -> list[Case]:
    first = data.start + 1
    since = data.since
    durable_identity = f"bench-durable-{data.label}"
    setter = CursorSetter(data.path, durable_identity, data.start)
    setters.append(setter)

    async def by_cursor() -> None:
        page = await queue.pull("bench", cursor=str(data.start), limit=PAGE)
        _check_page([u.seq for u in page.updates], first, "pull(cursor)")

    async def durable() -> None:
        page = await queue.pull(durable_identity, limit=PAGE)
        _check_page([u.seq for u in page.updates], first, "pull(durable)")

    async def by_since() -> None:
        page = await queue.pull("bench", since=since, limit=PAGE)
        _check_page([u.seq for u in page.updates], first, "pull(since)")

    async def status() -> None:
        counts = await queue.status()
        if counts.total_updates != data.rows:
            raise RuntimeError(f"queue_status counted {counts.total_updates} updates")

    return [
        Case(f"svc cursor {data.label}", by_cursor),
        Case(f"svc durable {data.label}", durable, setup=setter),
        Case(f"svc since {data.label}", by_since),
        Case(f"svc queue_status {data.label}", status),
    ]


def _mcp_cases(data: Dataset, client: Client, setters: list[CursorSetter]) -> list[Case]:
    first = data.start + 1
    since = data.since
    setter = CursorSetter(data.path, MCP_IDENTITY, data.start)
    setters.append(setter)

    def pull(arguments: dict[str, Any], what: str) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            result = await client.call_tool("pull_updates", {**arguments, "limit": PAGE})
            if result.is_error:
                raise RuntimeError(f"{what}: {result}")
            updates = (result.structured_content or {}).get("updates", [])
            _check_page([u["seq"] for u in updates], first, what)

        return call

    async def status() -> None:
        result = await client.call_tool("queue_status", {})
        total = (result.structured_content or {}).get("total_updates")
        if result.is_error or total != data.rows:
            raise RuntimeError(f"MCP queue_status: {result}")

    return [
        Case(f"mcp queue_status {data.label}", status),
        Case(f"mcp cursor {data.label}", pull({"cursor": str(data.start)}, "MCP cursor")),
        Case(f"mcp durable {data.label}", pull({}, "MCP durable"), setup=setter),
        Case(f"mcp since {data.label}", pull({"since": since}, "MCP since")),
    ]


def _scale_cases(
    data: Dataset, client: Client, legacy: Client, built: list[PullResult]
) -> list[Case]:
    """An MCP ping, the SDK client's output-schema check of one 100-row result, and a call of
    the no-op tool that returns ``built[0]``: the same 100 rows, already built."""
    first = data.start + 1
    page: list[CallToolResult] = []

    async def ping() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await legacy.send_ping()

    async def check() -> None:
        if not page:
            arguments = {"cursor": str(data.start), "limit": PAGE}
            page.append(await client.call_tool("pull_updates", arguments))
            updates = (page[0].structured_content or {}).get("updates", [])
            _check_page([u["seq"] for u in updates], first, "MCP pull for the check")
        await client.session.validate_tool_result("pull_updates", page[0])

    async def noop_pull() -> None:
        if not built:
            arguments = {"cursor": str(data.start), "limit": PAGE}
            fetched = await client.call_tool("pull_updates", arguments)
            built.append(PullResult.model_validate(fetched.structured_content))
        result = await client.call_tool(NOOP_PULL_TOOL, {"cursor": str(data.start)})
        if result.is_error:
            raise RuntimeError(f"the no-op pull tool failed: {result}")
        updates = (result.structured_content or {}).get("updates", [])
        _check_page([u["seq"] for u in updates], first, "the no-op pull tool")

    return [
        Case(f"mcp ping {data.label}", ping),
        Case(f"client check {data.label}", check),
        Case(f"noop pull {data.label}", noop_pull),
    ]


def _noop_pull_of(built: list[PullResult]) -> Callable[[str], Awaitable[PullResult]]:
    async def noop_pull(cursor: str) -> PullResult:
        """Returns the page fetched once from pull_updates (benchmark only)."""
        return built[0]

    return noop_pull


def _rows(report: Report, samples: dict[str, Sample], small: Dataset, big: Dataset) -> None:
    paths = [
        ("svc", "cursor", "QueueService.pull(cursor=near end)", TARGET),
        ("svc", "durable", "QueueService.pull(durable cursor)", TARGET),
        ("svc", "since", "QueueService.pull(since=near end)", TARGET),
        ("svc", "queue_status", "QueueService.status()", TARGET),
        ("mcp", "queue_status", "MCP queue_status", TARGET),
        ("mcp", "cursor", "MCP pull_updates(cursor=near end)", TARGET),
        ("mcp", "durable", "MCP pull_updates(durable cursor)", TARGET),
        ("mcp", "since", "MCP pull_updates(since=near end)", TARGET),
    ]
    for layer, path, title, target in paths:
        large = samples.get(f"{layer} {path} {big.label}")
        base = samples.get(f"{layer} {path} {small.label}")
        if large is None or base is None:
            continue
        report.rows.append(
            Row(
                section="3",
                name=f"{title}, {big.label} vs {small.label} rows",
                measured=f"{big.label}: {large.describe()}",
                baseline=f"{small.label}: {base.describe()}",
                ratio=large.median / base.median,
                target=target,
            )
        )
    mcp = samples.get(f"mcp cursor {small.label}")
    svc = samples.get(f"svc cursor {small.label}")
    if mcp is not None and svc is not None:
        report.rows.append(
            Row(
                section="3",
                name=f"MCP pull_updates of {PAGE} rows vs QueueService.pull of the same",
                measured=f"MCP: {mcp.describe()}",
                baseline=f"service: {svc.describe()}",
                ratio=mcp.median / svc.median,
                target=TOOL_LAYER_TARGET,
            )
        )
    scale = [
        ("mcp ping", "  for scale: MCP ping vs QueueService.pull of the same", "ping"),
        (
            "client check",
            f"  for scale: the SDK client's schema check of the {PAGE} rows vs the service pull",
            "check",
        ),
        (
            "noop pull",
            f"  for scale: MCP no-op tool returning the {PAGE} rows, built, vs the service pull",
            "no-op tool",
        ),
    ]
    for key, title, what in scale:
        sample = samples.get(f"{key} {small.label}")
        if sample is not None and svc is not None:
            report.rows.append(
                Row(
                    section="3",
                    name=title,
                    measured=f"{what}: {sample.describe()}",
                    baseline=f"service: {svc.describe()}",
                    ratio=sample.median / svc.median,
                )
            )


async def run(
    report: Report, small: Dataset, big: Dataset, *, iterations: int, warmup: int
) -> None:
    setters: list[CursorSetter] = []
    samples: dict[str, Sample] = {}
    try:
        progress(f"3a. pull, service layer: {small.label} vs {big.label} update rows")
        stores = [Store(create_engine(sqlite_url(d.path))) for d in (small, big)]
        try:
            cases = [
                case
                for data, store in zip((small, big), stores, strict=True)
                for case in _service_cases(data, QueueService(store), setters)
            ]
            samples |= await measure(
                cases, iterations=iterations, warmup=warmup, label="service-layer pulls"
            )
        finally:
            for store in stores:
                await store.dispose()

        progress(f"3b. pull over MCP: two live servers ({small.label} and {big.label} rows)")
        async with AsyncExitStack() as stack:
            cases = []
            for data in (small, big):
                url, server = await stack.enter_async_context(
                    running_bridge(server_settings(sqlite_url(data.path)))
                )
                client = await stack.enter_async_context(Client(url))
                cases += _mcp_cases(data, client, setters)
                if data is small:
                    built: list[PullResult] = []
                    server.bridge.mcp.add_tool(_noop_pull_of(built), name=NOOP_PULL_TOOL)
                    # ping exists only in the handshake-era protocol (see bench_roundtrip).
                    legacy = await stack.enter_async_context(Client(url, mode="legacy"))
                    cases += _scale_cases(data, client, legacy, built)
            samples |= await measure(cases, iterations=iterations, warmup=warmup, label="MCP pulls")
    finally:
        for setter in setters:
            setter.close()

    _rows(report, samples, small, big)
    report.notes.append(
        f"3: each pull returns {PAGE} rows starting {BEHIND} rows before the end of the stream; "
        "the durable cursor is reset (untimed) before each call, so every call also advances it "
        "(one write transaction); ratio = median at the large size / median at the small size."
    )
    report.notes.append(
        "3: for scale, an MCP pull costs at least a ping plus the service pull plus the client's "
        "schema check of the rows it receives (the SDK's ClientSession.validate_tool_result, "
        "timed alone on one fetched result). The no-op pull tool (bench_pull_noop, added for the "
        "benchmark only) returns that page already built, as the same result model: the SDK's "
        "tools/call, its serialising and the client's check, with no database and nothing of ours; "
        "an MCP pull costs at least the service pull plus that, so its ratio is at least 1 + the "
        "no-op tool's."
    )
    for name, sample in samples.items():
        progress(f"  {name}: {sample.describe()}")
