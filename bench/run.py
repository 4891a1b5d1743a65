"""nexus-bridge benchmarks: ``make bench`` (full, ~4 min on 2 cores) or ``--quick`` (smoke run).

Every figure is compared with a baseline measured in the same run, on the same machine:

1. ``send_message`` round trip vs the MCP ``ping`` round trip (target <= 1.25x); 32 concurrent
   clients: ``send_message`` throughput vs ``ping`` throughput (target >= 0.9x).
2. ``QueueService.enqueue`` rate vs raw ``sqlite3`` insert+commit of the same rows, same pragmas
   (target >= 0.5x); 32 concurrent producers vs that raw sequential rate and vs persist-queue's
   ``SQLiteAckQueue.put`` from 32 threads (targets >= 2x: group commit).
3. ``pull_updates`` and ``queue_status`` latency with 1M vs 1k update rows (target <= 1.5x:
   flat), and an MCP ``pull_updates`` of 100 rows vs the service-level pull (target <= 2x).
4. An agent's Telegram reply reaching a client waiting in ``pull_updates(wait_seconds=…)`` vs the
   same wait woken by a service-layer insert (target: p99 < 100 ms on loopback).
5. The agent grammar on 10,000-character inputs, ordinary and adversarial (worst one reported)
   vs ``str.splitlines()`` on the same input (target: median < 10 ms).
6. The agent runner (``nexus-bridge agent run``, a subprocess): task claimed -> command started,
   and command output line -> visible to a waiting ``pull_updates``, each vs the bridge's own
   wake-up latency in the same run (targets: p99 < 500 ms and < 250 ms on loopback).
7. The live task card (MCP Apps): its size vs the same client's ``tools/list`` answer (target
   < 64 KiB), and its tool calls per minute while the task is idle, in Chromium, vs a plain
   ``pull_updates`` long-poll loop over the same minute (target <= 1.5x).
8. Another process's write (the CLI's code path) waking a client waiting in ``pull_updates``,
   vs a write in the server's own process (target: p99 < 50 ms).
9. The console's task page (signed in, over HTTP) for a task with 10,000 updates vs one with 10
   (target <= 2x: only a window of the history is rendered).
10. Cold start: ``nexus-bridge serve`` to its first ``/readyz`` answer vs
   ``python -c 'import mcp.server.mcpserver'`` (target <= 1.5x); the server's memory (RSS).

``--only N`` (repeatable) runs only the numbered benchmarks. The exit status is 1 when a target
is missed.

Progress goes to stderr, the table to stdout. Temporary databases live in one temporary
directory that is removed at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_card
import bench_cold_start
import bench_console
import bench_enqueue
import bench_grammar
import bench_pull
import bench_roundtrip
import bench_runner
import bench_telegram
import bench_wakeup
from benchlib import Report, copy_database, fill_updates, migrated_template, progress


@dataclass(frozen=True)
class Sizes:
    roundtrip_iterations: int
    roundtrip_warmup: int
    enqueue_operations: int
    enqueue_warmup: int
    small_rows: int
    big_rows: int
    pull_iterations: int
    pull_warmup: int
    telegram_replies: int
    telegram_warmup: int
    grammar_iterations: int
    grammar_warmup: int
    runner_tasks: int
    runner_warmup: int
    card_idle_seconds: float
    console_iterations: int
    console_warmup: int
    wakeup_samples: int
    wakeup_warmup: int
    cold_start_rounds: int


FULL = Sizes(
    roundtrip_iterations=1000,
    roundtrip_warmup=100,
    enqueue_operations=3000,
    enqueue_warmup=100,
    small_rows=1_000,
    big_rows=1_000_000,
    pull_iterations=200,
    pull_warmup=20,
    telegram_replies=200,
    telegram_warmup=10,
    grammar_iterations=200,
    grammar_warmup=10,
    runner_tasks=100,
    runner_warmup=5,
    card_idle_seconds=61,
    console_iterations=200,
    console_warmup=20,
    wakeup_samples=100,
    wakeup_warmup=5,
    cold_start_rounds=7,
)
QUICK = Sizes(
    roundtrip_iterations=60,
    roundtrip_warmup=10,
    enqueue_operations=150,
    enqueue_warmup=10,
    small_rows=1_000,
    big_rows=20_000,
    pull_iterations=20,
    pull_warmup=3,
    telegram_replies=20,
    telegram_warmup=3,
    grammar_iterations=20,
    grammar_warmup=2,
    runner_tasks=10,
    runner_warmup=2,
    card_idle_seconds=21,
    console_iterations=20,
    console_warmup=3,
    wakeup_samples=20,
    wakeup_warmup=2,
    cold_start_rounds=2,
)


SECTIONS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10")


def _label(rows: int) -> str:
    if rows >= 1_000_000 and rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}M"
    if rows >= 1_000 and rows % 1_000 == 0:
        return f"{rows // 1_000}k"
    return str(rows)


def _pull(report: Report, template: Path, scratch: Path, sizes: Sizes) -> None:
    datasets = []
    for rows in (sizes.small_rows, sizes.big_rows):
        label = _label(rows)
        path = copy_database(template, scratch / f"pull-{label}.db")
        start = time.perf_counter()
        fill_updates(path, rows)
        size_mb = path.stat().st_size / 1e6
        progress(
            f"filled {label} update rows in {time.perf_counter() - start:.1f}s ({size_mb:.0f} MB)"
        )
        datasets.append(bench_pull.Dataset(label=label, path=path, rows=rows))
    asyncio.run(
        bench_pull.run(
            report,
            datasets[0],
            datasets[1],
            iterations=sizes.pull_iterations,
            warmup=sizes.pull_warmup,
        )
    )


VERSIONED = (
    "nexus-bridge",
    "mcp",
    "uvicorn",
    "starlette",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "python-telegram-bot",
    "persist-queue",
)


def _machine() -> str:
    """The CPU, its count and the kernel."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def _versions() -> list[tuple[str, str]]:
    found = [("Python", platform.python_version()), ("SQLite", sqlite3.sqlite_version)]
    for name in VERSIONED:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            found.append((name, "absent"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="N",
        help="run only benchmark N; repeat for several",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    chosen = set(args.only or SECTIONS)
    began = time.perf_counter()
    load = os.getloadavg()
    report = Report()

    with tempfile.TemporaryDirectory(prefix="nexus-bridge-bench-") as tmp:
        scratch = Path(tmp)
        progress(f"{'quick' if args.quick else 'full'} run; scratch directory {scratch}")
        if chosen & {"1", "2", "3", "4", "6", "7", "8", "9", "10"}:
            progress("migrating a template database (alembic upgrade head)")
            template = migrated_template(scratch)
        if "1" in chosen:
            roundtrip_db = copy_database(template, scratch / "roundtrip.db")
            asyncio.run(
                bench_roundtrip.run(
                    report,
                    roundtrip_db,
                    copy_database(template, scratch / "roundtrip-raw.db"),
                    iterations=sizes.roundtrip_iterations,
                    warmup=sizes.roundtrip_warmup,
                )
            )
        if "2" in chosen:
            asyncio.run(
                bench_enqueue.run(
                    report,
                    template,
                    scratch,
                    operations=sizes.enqueue_operations,
                    warmup=sizes.enqueue_warmup,
                )
            )
        if "3" in chosen:
            _pull(report, template, scratch, sizes)
        if "4" in chosen:
            telegram_db = copy_database(template, scratch / "telegram.db")
            asyncio.run(
                bench_telegram.run(
                    report,
                    telegram_db,
                    replies=sizes.telegram_replies,
                    warmup=sizes.telegram_warmup,
                )
            )
        if "5" in chosen:
            asyncio.run(
                bench_grammar.run(
                    report, iterations=sizes.grammar_iterations, warmup=sizes.grammar_warmup
                )
            )
        if "6" in chosen:
            runner_db = copy_database(template, scratch / "runner.db")
            asyncio.run(
                bench_runner.run(
                    report,
                    runner_db,
                    scratch,
                    tasks=sizes.runner_tasks,
                    warmup=sizes.runner_warmup,
                )
            )
        if "7" in chosen:
            card_db = copy_database(template, scratch / "card.db")
            asyncio.run(bench_card.run(report, card_db, idle_seconds=sizes.card_idle_seconds))
        if "8" in chosen:
            wakeup_db = copy_database(template, scratch / "wakeup.db")
            asyncio.run(
                bench_wakeup.run(
                    report, wakeup_db, samples=sizes.wakeup_samples, warmup=sizes.wakeup_warmup
                )
            )
        if "9" in chosen:
            console_db = copy_database(template, scratch / "console.db")
            asyncio.run(
                bench_console.run(
                    report,
                    console_db,
                    iterations=sizes.console_iterations,
                    warmup=sizes.console_warmup,
                )
            )
        if "10" in chosen:
            cold_db = copy_database(template, scratch / "cold-start.db")
            bench_cold_start.run(report, cold_db, scratch, rounds=sizes.cold_start_rounds)

    elapsed = time.perf_counter() - began
    progress(f"done in {elapsed:.0f}s; scratch directory removed")
    print(f"nexus-bridge benchmarks ({'quick' if args.quick else 'full'} run, {elapsed:.0f}s)")
    print(
        f"machine: {_machine()}; load average {load[0]:.2f} at the start, then "
        f"{os.getloadavg()[0]:.2f}"
    )
    print("versions: " + ", ".join(f"{name} {number}" for name, number in _versions()))
    print(report.render())
    failed = [row.name for row in report.rows if row.result == "FAIL"]
    print(f"\n{len(failed)} of {sum(row.judged for row in report.rows)} targets missed.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
