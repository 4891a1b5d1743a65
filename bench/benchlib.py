"""Shared helpers for the benchmarks: timing, statistics, the result table, databases, a server.

The modules in ``bench/`` are plain scripts' helpers (``bench/run.py`` puts this directory first on
``sys.path``); ``bench`` is deliberately not a package.
"""

from __future__ import annotations

import asyncio
import gc
import math
import shutil
import sqlite3
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexus_bridge.app import BridgeServer, make_server
from nexus_bridge.config import Settings
from nexus_bridge.db import migrate

_STARTED = time.perf_counter()
SERVER_START_SECONDS = 20.0

# The first update row's created_at; row ``i`` is 50 ms later than row ``i - 1``.
FILL_EPOCH = "2026-11-26 00:00:00"


def progress(message: str) -> None:
    """One progress line on stderr, stamped with the time since the run started."""
    print(f"[bench {time.perf_counter() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# --- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Sample:
    """Latencies of one measured operation, in seconds."""

    times: Sequence[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p50(self) -> float:
        """Nearest-rank 50th percentile (a value that occurred, unlike ``median``)."""
        return percentile(self.times, 0.50)

    @property
    def p95(self) -> float:
        return percentile(self.times, 0.95)

    @property
    def p99(self) -> float:
        return percentile(self.times, 0.99)

    def describe(self) -> str:
        return f"med {fmt_seconds(self.median)}, p95 {fmt_seconds(self.p95)} (n={len(self.times)})"


def fmt_seconds(seconds: float) -> str:
    if seconds >= 0.1:
        return f"{seconds * 1e3:.0f} ms"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


@dataclass
class Case:
    """One operation to time. ``setup`` runs before every call, outside the timed region."""

    name: str
    run: Callable[[], Awaitable[object]]
    setup: Callable[[], object] | None = None


async def measure(
    cases: Sequence[Case], *, iterations: int, warmup: int, label: str
) -> dict[str, Sample]:
    """Time every case ``iterations`` times, interleaved (the order rotates every round) so that
    drift in the machine's speed affects all cases alike; ``warmup`` untimed rounds first."""
    for _ in range(warmup):
        for case in cases:
            if case.setup is not None:
                case.setup()
            await case.run()
    gc.collect()
    times: dict[str, list[float]] = {case.name: [] for case in cases}
    report_every = max(1, iterations // 4)
    for i in range(iterations):
        shift = i % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            if case.setup is not None:
                case.setup()
            start = time.perf_counter()
            await case.run()
            times[case.name].append(time.perf_counter() - start)
        if (i + 1) % report_every == 0 and i + 1 < iterations:
            progress(f"  {label}: {i + 1}/{iterations} rounds")
    return {name: Sample(values) for name, values in times.items()}


# --- the result table -----------------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table. ``ratio`` is measured time / baseline time, or, in a row
    with ``at_least``, measured rate / baseline rate (its name says "rate").

    A row is judged either by its ratio (``target``: pass when ratio <= target; ``at_least``:
    pass when ratio >= at_least) or, for an absolute limit, by ``passed`` with ``target_text``
    saying what the limit is.
    """

    section: str
    name: str
    measured: str
    baseline: str
    ratio: float | None
    target: float | None = None  # pass when ratio <= target; None: informational
    at_least: float | None = None  # pass when ratio >= at_least (a rate ratio)
    target_text: str | None = None  # an absolute target, shown as is (e.g. "p99 < 100 ms")
    passed: bool | None = None  # the verdict on target_text

    @property
    def judged(self) -> bool:
        return self.result != "info"

    @property
    def result(self) -> str:
        if self.passed is not None:
            return "PASS" if self.passed else "FAIL"
        if self.ratio is None or (self.target is None and self.at_least is None):
            return "info"
        if self.at_least is not None and self.ratio < self.at_least:
            return "FAIL"
        return "PASS" if self.target is None or self.ratio <= self.target else "FAIL"

    @property
    def target_cell(self) -> str:
        if self.target_text is not None:
            return self.target_text
        if self.at_least is not None:
            return f">= {self.at_least:.2f}x"
        return "-" if self.target is None else f"<= {self.target:.2f}x"


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        header = ("#", "benchmark", "measured", "baseline (same run)", "ratio", "target", "result")
        body = [
            (
                row.section,
                row.name,
                row.measured,
                row.baseline,
                "-" if row.ratio is None else f"{row.ratio:.2f}x",
                row.target_cell,
                row.result,
            )
            for row in self.rows
        ]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

        rule = "-+-".join("-" * width for width in widths)
        out = [line(header), rule]
        previous = None
        for row, cells in zip(self.rows, body, strict=True):
            if previous is not None and row.section != previous:
                out.append(rule)
            out.append(line(cells))
            previous = row.section
        if self.notes:
            out.append("")
            out.extend(f"note: {note}" for note in self.notes)
        return "\n".join(out)


# --- databases ------------------------------------------------------------------------------


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def migrated_template(directory: Path) -> Path:
    """A SQLite file at the current schema head (real alembic), checkpointed so it can be copied.

    Call it outside any running event loop: ``migrate.upgrade`` runs its own ``asyncio.run``.
    """
    path = directory / "template.db"
    migrate.upgrade(sqlite_url(path))
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path


def copy_database(template: Path, destination: Path) -> Path:
    """A copy of ``template``, private to its owner as the server makes its database (a copy
    that others could read draws the server's warning on every open)."""
    shutil.copyfile(template, destination)
    destination.chmod(0o600)
    return destination


def fill_updates(path: Path, count: int) -> None:
    """Append ``count`` agent updates in one statement (a recursive CTE): ~1M rows per 2-3 s.

    Rows match the schema the service writes: no task, kind 'agent', no status, fixed-width UTC
    text timestamps 50 ms apart, so that ``since`` and ``seq`` order agree.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # bulk load only; the benchmarks use the engine
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
            INSERT INTO updates (task_id, kind, status, content, created_at)
            SELECT NULL, 'agent', NULL,
                   'bench: progress report number ' || i || ' from the agent',
                   strftime('%Y-%m-%dT%H:%M:%S', :epoch, '+' || (i / 20) || ' seconds')
                       || printf('.%06d+00:00', (i % 20) * 50000)
            FROM n
            """,
            {"count": count, "epoch": FILL_EPOCH},
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def created_at_of(path: Path, seq: int) -> str:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT created_at FROM updates WHERE seq = ?", (seq,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise RuntimeError(f"no update with seq {seq} in {path}")
    return str(row[0])


class CursorSetter:
    """Puts one identity's durable pull cursor back at a fixed position (untimed set-up)."""

    def __init__(self, path: Path, identity: str, position: int) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, timeout=5)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._identity = identity
        self._position = position

    def __call__(self) -> None:
        self._conn.execute(
            "INSERT INTO pull_cursors (identity, position, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (identity) DO UPDATE SET position = excluded.position",
            (self._identity, self._position, "2026-11-26T00:00:00.000000+00:00"),
        )

    def close(self) -> None:
        self._conn.close()


# --- a live server --------------------------------------------------------------------------


def server_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a benchmark server on an ephemeral 127.0.0.1 port (no .env file)."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "host": "127.0.0.1",
        "port": 0,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running_bridge(settings: Settings) -> AsyncIterator[tuple[str, BridgeServer]]:
    """The real app under uvicorn on an ephemeral 127.0.0.1 port, in this loop; yields the /mcp
    URL and the server (whose ``bridge`` holds the queue service, the store and the transport of
    this process)."""
    server = make_server(settings)
    task = asyncio.create_task(server.serve())
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while server.bound_port is None:
            if task.done():
                task.result()
                raise RuntimeError("the server stopped during start-up")
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in time")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{server.bound_port}/mcp", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=SERVER_START_SECONDS)
