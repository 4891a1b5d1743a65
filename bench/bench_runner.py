"""6. The agent runner's overhead: ``nexus-bridge agent run`` as a real subprocess against a live
bridge in this process, running a tiny shell command for each task.

Per task (sequential; the runner long-polls ``next_task`` between them):

* **claimed → command started**: from the moment the bridge's ``claim_next`` hands the task out
  (instrumented in this process) to the command's first action (``date +%s%N`` into a file):
  the answer reaching the runner, ``start_task``, the state file, fork and exec.
* **output line → visible to a waiting pull_updates**: the command prints a line carrying its
  own ``date +%s%N``; a client already waiting in ``pull_updates(wait_seconds=…)`` gets it as
  an update: the runner reading it, ``post_update``, the bridge waking the pull.

Baseline, alternating with the tasks: the bridge's own wake-up latency, a client waiting in
``pull_updates`` woken by ``QueueService.agent_report`` on the same server (as in 4).
Targets, absolute (the ratio column is p99 / baseline p99): claimed → started p99 < 500 ms (two
MCP calls, ``next_task``'s answer and ``start_task``, both write transactions, then a fork),
output line → visible p99 < 250 ms (one ``post_update``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from bench_telegram import _watch_waiting_pulls
from benchlib import (
    Report,
    Row,
    Sample,
    fmt_seconds,
    progress,
    running_bridge,
    server_settings,
    sqlite_url,
)
from mcp import Client

TARGET_START_P99 = 0.500  # seconds, absolute
TARGET_LINE_P99 = 0.250
WAIT_SECONDS = 10
STEP_DEADLINE = 20.0
TOKEN = "bench-runner-agent-token-" + "b" * 20
LINE = "bench-line"
EXE = str(Path(sys.executable).with_name("nexus-bridge"))


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return dict(result.structured_content or {})


async def _deadline(work: Awaitable[Any], what: str) -> Any:
    try:
        return await asyncio.wait_for(work, STEP_DEADLINE)
    except TimeoutError:
        raise RuntimeError(f"timed out after {STEP_DEADLINE:g}s waiting for {what}") from None


async def _latest_cursor(client: Client) -> str:
    cursor = "0"
    while True:
        page = await _call(client, "pull_updates", {"cursor": cursor, "limit": 500})
        cursor = str(page["next_cursor"])
        if not page["has_more"]:
            return cursor


class _Bench:
    def __init__(self, client: Client, queue: Any, waiting: Any, started_file: Path) -> None:
        self.client = client
        self.queue = queue
        self.waiting = waiting
        self.started_file = started_file
        self.claimed: dict[str, int] = {}
        self.cursor = "0"
        self.number = 0
        original = queue.claim_next

        async def timed_claim(target: str) -> Any:
            task = await original(target)
            if task is not None:
                self.claimed[task.id] = time.time_ns()
            return task

        queue.claim_next = timed_claim  # instrumentation: when the bridge hands the task out

    async def task(self) -> tuple[float, float]:
        """One task through the runner: (claimed → started, line → visible) in seconds."""
        self.number += 1
        sent = await _call(self.client, "send_message", {"message": f"bench {self.number}"})
        task_id = str(sent["id"])
        visible = None
        while True:  # a pull is waiting whenever an update arrives
            page = await _call(
                self.client,
                "pull_updates",
                {"cursor": self.cursor, "wait_seconds": WAIT_SECONDS, "message_id": task_id},
            )
            now = time.time_ns()
            self.cursor = str(page["next_cursor"])
            for update in page["updates"]:
                if update["kind"] == "agent" and update["content"].startswith(LINE):
                    visible = visible or (now - int(update["content"].split()[1])) / 1e9
                if update["kind"] == "status" and "complete" in update["content"]:
                    if visible is None:
                        raise RuntimeError(f"task {task_id} completed, its line never seen")
                    started = int(self.started_file.read_text().split()[-1])
                    return (started - self.claimed[task_id]) / 1e9, visible
                if update["kind"] == "status" and "error" in update["content"]:
                    raise RuntimeError(f"the runner failed task {task_id}: {update['content']}")

    async def wake_up(self, task_id: str) -> float:
        """The baseline: a waiting pull woken by the service layer, in seconds."""
        self.waiting.event.clear()
        pull = asyncio.create_task(
            self.client.call_tool(
                "pull_updates", {"cursor": self.cursor, "wait_seconds": WAIT_SECONDS}
            )
        )
        await _deadline(self.waiting.event.wait(), "the pull to wait")
        target = (await self.queue.get(task_id)).task.target
        start = time.perf_counter()
        await self.queue.agent_report(target, task_id, text="baseline wake-up")
        result = await _deadline(pull, "the woken pull")
        elapsed = time.perf_counter() - start
        self.cursor = str((result.structured_content or {})["next_cursor"])
        return elapsed


def _runner(base: str, scratch: Path) -> subprocess.Popen[bytes]:
    started = scratch / "runner-started"
    script = (
        f"date +%s%N >> {started}; cat > /dev/null; sleep 0.1; "
        f'echo "{LINE} $(date +%s%N)"; sleep 0.05; echo done'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_BRIDGE_")}
    env.update(
        NEXUS_BRIDGE_URL=base, NEXUS_BRIDGE_AGENT_TOKEN=TOKEN, NEXUS_BRIDGE_LOG_LEVEL="WARNING"
    )
    with (scratch / "runner.log").open("ab") as log:
        return subprocess.Popen(
            [
                EXE,
                "agent",
                "run",
                "--state-dir",
                str(scratch / "runner-state"),
                "--",
                "sh",
                "-c",
                script,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def run(report: Report, database: Path, scratch: Path, *, tasks: int, warmup: int) -> None:
    progress(
        f"6. agent runner: nexus-bridge agent run (subprocess), live server on {database.name}"
    )
    settings = server_settings(sqlite_url(database), agent_tokens=[f"homelab:{TOKEN}"])
    claims: list[float] = []
    lines: list[float] = []
    wakes: list[float] = []
    with _watch_waiting_pulls() as waiting:
        async with running_bridge(settings) as (url, server), Client(url) as client:
            base = url.removesuffix("/mcp")
            runner = _runner(base, scratch)
            try:
                bench = _Bench(client, server._bridge.queue, waiting, scratch / "runner-started")
                bench.cursor = await _latest_cursor(client)
                for i in range(warmup + tasks):
                    claim, line = await _deadline(bench.task(), "a task through the runner")
                    task_id = next(reversed(bench.claimed))
                    wake = await bench.wake_up(task_id)
                    if i == warmup:
                        gc.collect()
                    if i >= warmup:
                        claims.append(claim)
                        lines.append(line)
                        wakes.append(wake)
                    if i >= warmup and (i - warmup + 1) % max(1, tasks // 4) == 0:
                        progress(f"  tasks through the runner: {i - warmup + 1}/{tasks}")
            finally:
                runner.terminate()
                await asyncio.to_thread(runner.wait, STEP_DEADLINE)

    claim_s, line_s, wake_s = Sample(claims), Sample(lines), Sample(wakes)
    for name, sample, target in (
        ("runner: task claimed -> command started", claim_s, TARGET_START_P99),
        ("runner: output line -> waiting pull_updates", line_s, TARGET_LINE_P99),
    ):
        report.rows.append(
            Row(
                section="6",
                name=f"{name} vs bridge wake-up",
                measured=_describe(sample),
                baseline=f"agent_report {_describe(wake_s)}",
                ratio=sample.p99 / wake_s.p99,
                target_text=f"p99 < {fmt_seconds(target)}",
                passed=sample.p99 < target,
            )
        )
        progress(f"  {name}: {_describe(sample)}")
    progress(f"  bridge wake-up: {_describe(wake_s)}")
    report.notes.append(
        "6: `nexus-bridge agent run -- sh -c …` as a subprocess, one task at a time, against the "
        "server in this process; claimed = the bridge's claim_next returns (instrumented), "
        "started = the command's first `date +%s%N`; the line carries its own `date +%s%N` and "
        "is timed until a client waiting in pull_updates has it; baseline = a waiting "
        "pull_updates woken by QueueService.agent_report; ratio = p99 / baseline p99; "
        "the targets are absolute."
    )


def _describe(sample: Sample) -> str:
    return f"p50 {fmt_seconds(sample.p50)}, p99 {fmt_seconds(sample.p99)} (n={len(sample.times)})"
