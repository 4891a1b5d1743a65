"""2. Service-layer enqueue rate vs raw ``sqlite3`` insert+commit, with the same durability pragmas.

``QueueService.enqueue`` runs on the project's engine (WAL, ``synchronous=FULL``, ``BEGIN
IMMEDIATE``) and writes two rows per call in one transaction: the task and its first ``status``
update. The raw baseline writes one row per transaction with the same pragmas; a second raw
figure with two rows per transaction separates the row count from the stack's own cost.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

from benchlib import Report, Row, progress, sqlite_url

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.queue import QueueService

CHUNK = 50  # alternate service and raw in chunks of this many ops, so drift hits all alike


async def _service_block(queue: QueueService, run_id: str, start: int, count: int) -> float:
    begin = time.perf_counter()
    for i in range(start, start + count):
        result = await queue.enqueue(f"benchmark task {run_id}-{i}: rotate the logs")
        if not result.queued:
            raise RuntimeError("enqueue found a duplicate; the benchmark's messages must be unique")
    return time.perf_counter() - begin


class _RawWriter:
    """Plain ``sqlite3``: WAL, synchronous=FULL, one ``BEGIN IMMEDIATE ... COMMIT`` per op."""

    def __init__(self, path: Path, rows_per_commit: int) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "content TEXT NOT NULL, created_at TEXT NOT NULL)"
        )
        self._rows = rows_per_commit

    def block(self, start: int, count: int) -> float:
        conn = self._conn
        begin = time.perf_counter()
        for i in range(start, start + count):
            conn.execute("BEGIN IMMEDIATE")
            for _ in range(self._rows):
                conn.execute(
                    "INSERT INTO items (content, created_at) VALUES (?, ?)",
                    (f"benchmark task {i}: rotate the logs", "2026-11-26T00:00:00.000000+00:00"),
                )
            conn.execute("COMMIT")
        return time.perf_counter() - begin

    def close(self) -> None:
        self._conn.close()


async def run(
    report: Report, service_db: Path, scratch: Path, *, operations: int, warmup: int
) -> None:
    progress(f"2. enqueue rate: ~{operations} sequential ops each (after {warmup} warm-up)")
    store = Store(create_engine(sqlite_url(service_db)))
    queue = QueueService(store)
    raw1 = _RawWriter(scratch / "raw1.db", rows_per_commit=1)
    raw2 = _RawWriter(scratch / "raw2.db", rows_per_commit=2)
    run_id = uuid.uuid4().hex[:8]
    try:
        await _service_block(queue, run_id, 0, warmup)
        raw1.block(0, warmup)
        raw2.block(0, warmup)
        chunk = min(CHUNK, operations)
        rounds = max(1, operations // chunk)
        spent = {"service": 0.0, "raw1": 0.0, "raw2": 0.0}
        done = 0
        for r in range(rounds):
            start = warmup + done
            spent["service"] += await _service_block(queue, run_id, start, chunk)
            spent["raw1"] += raw1.block(start, chunk)
            spent["raw2"] += raw2.block(start, chunk)
            done += chunk
            if (r + 1) % max(1, rounds // 4) == 0 and r + 1 < rounds:
                progress(f"  {done}/{rounds * chunk} ops each")
    finally:
        raw1.close()
        raw2.close()
        await store.dispose()

    rate = {name: done / seconds for name, seconds in spent.items()}

    def ops(name: str) -> str:
        return f"{rate[name]:,.0f} ops/s ({spent[name] / done * 1e3:.3f} ms/op)"

    report.rows.append(
        Row(
            section="2",
            name="QueueService.enqueue (2 rows/txn) vs raw sqlite3 (1 row/txn)",
            measured=f"service {ops('service')}",
            baseline=f"raw 1-row txn {ops('raw1')}",
            ratio=rate["raw1"] / rate["service"],
        )
    )
    report.rows.append(
        Row(
            section="2",
            name="QueueService.enqueue (2 rows/txn) vs raw sqlite3 (2 rows/txn)",
            measured=f"service {ops('service')}",
            baseline=f"raw 2-row txn {ops('raw2')}",
            ratio=rate["raw2"] / rate["service"],
        )
    )
    report.notes.append(
        "2: every enqueue writes 2 rows (the task + its 'pending' status update) in one "
        "BEGIN IMMEDIATE transaction; the raw baseline writes 1 row per transaction (2 in the "
        "second line). All three use WAL + synchronous=FULL on their own file; sequential, "
        "no concurrency; ratio = service time per op / raw time per op (no target)."
    )
    progress(f"  service {ops('service')}; raw 1-row {ops('raw1')}; raw 2-row {ops('raw2')}")
