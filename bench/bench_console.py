"""9. The console's task page for a task with a long history vs one with a short history.

One live server and one database with two tasks in progress: one with 10 updates, one with
10,000 (bulk-loaded with a recursive CTE, as section 3 loads its rows). A signed-in HTTP client
GETs each task's page (the server renders its facts and the latest window of its timeline); the
long task's page must cost about what the short one's does: only a window of the history is
rendered.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import httpx2
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

from nexus_bridge.console.routes import TIMELINE_WINDOW
from nexus_bridge.domain import TaskStatus
from nexus_bridge.oauth import OwnerGate

TARGET = 2.0
SHORT = 10
LONG = 10_000
PASSPHRASE = "bench console passphrase"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _add_updates(path: Path, task_id: str, count: int) -> None:
    """``count`` agent updates of ``task_id``, in one statement, 50 ms apart."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            """
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)
            INSERT INTO updates (task_id, kind, status, content, created_at)
            SELECT :task, 'agent', NULL,
                   'bench: step ' || i || ' of the task, as the agent reported it',
                   strftime('%Y-%m-%dT%H:%M:%S', '2026-01-01', '+' || (i / 20) || ' seconds')
                       || printf('.%06d+00:00', (i % 20) * 50000)
            FROM n
            """,
            {"count": count, "task": task_id},
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


async def run(report: Report, path: Path, *, iterations: int, warmup: int) -> None:
    progress(f"9. console task page: {LONG} vs {SHORT} updates")
    settings = server_settings(sqlite_url(path), oauth_failure_delay_seconds=0)
    async with running_bridge(settings) as (url, server):
        queue = server.bridge.queue
        short = (await queue.enqueue("a task with a short history")).task
        long = (await queue.enqueue("a task with a long history")).task
        for task in (short, long):  # with the agent: the page also says whether it is stalled
            claimed = await queue.claim_next(task.target)  # -> acknowledged
            if claimed is None or claimed.id != task.id:
                raise RuntimeError("the agent did not claim the benchmark's task")
            await queue.agent_report(task.target, task.id, status=TaskStatus.IN_PROGRESS)
        _add_updates(path, short.id, SHORT - 3)  # and its three status updates
        _add_updates(path, long.id, LONG - 3)
        gate = OwnerGate(
            server.bridge.store, max_failed_attempts=5, lockout_seconds=900, failure_delay_seconds=0
        )
        await gate.set_passphrase(PASSPHRASE)
        base = url.removesuffix("/mcp")
        async with httpx2.AsyncClient(base_url=base, timeout=30) as http:
            form = await http.get("/console/sign-in")
            found = _CSRF.search(form.text)
            if found is None:
                raise RuntimeError("no sign-in form")
            signed = await http.post(
                "/console/sign-in", data={"csrf": found.group(1), "passphrase": PASSPHRASE}
            )
            if signed.status_code != 303:
                raise RuntimeError(f"sign-in failed: {signed.status_code}")

            def page(task_id: str, shown: int) -> Case:
                async def get() -> None:
                    answer = await http.get(f"/console/tasks/{task_id}")
                    count = answer.text.count('class="update ')
                    if answer.status_code != 200 or count != shown:
                        raise RuntimeError(f"task page: {answer.status_code}, {count} updates")

                return Case(f"page {task_id}", get)

            samples = await measure(
                [page(short.id, SHORT), page(long.id, TIMELINE_WINDOW)],
                iterations=iterations,
                warmup=warmup,
                label="console task pages",
            )
    big, small = samples[f"page {long.id}"], samples[f"page {short.id}"]
    report.rows.append(
        Row(
            section="9",
            name=f"console task page (GET, signed in), {LONG:,} vs {SHORT} updates",
            measured=f"{LONG:,}: {big.describe()}",
            baseline=f"{SHORT}: {small.describe()}",
            ratio=big.median / small.median,
            target=TARGET,
        )
    )
    report.notes.append(
        f"9: the page shows the latest {TIMELINE_WINDOW} updates of the history (older ones a "
        "link away), so the long task's page renders 100 of its 10,000 and the short one all 10; "
        "ratio = median long / median short."
    )
    progress(f"  long: {big.describe()}; short: {small.describe()}")
