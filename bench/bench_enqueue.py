"""2. Service-layer enqueue vs raw ``sqlite3`` and persist-queue, with the same durability pragmas.

``QueueService.enqueue`` runs on the project's engine (WAL, ``synchronous=FULL``, ``BEGIN
IMMEDIATE``) and writes three rows per call in one transaction: the task, its delivery (outbox)
and its first ``status`` update. The raw baseline writes the same three rows, into the same
schema (a copy of the migrated template, with its indexes and foreign keys), one ``BEGIN
IMMEDIATE … COMMIT`` per task, with the same pragmas: what a hand-written sqlite3 queue costs.

Then 32 concurrent producers (32 coroutines enqueueing on one service) against that raw
sequential rate, and against persist-queue's ``SQLiteAckQueue.put`` from 32 threads, also WAL
and ``synchronous=FULL`` (it commits every put on its own).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from benchlib import Report, Row, copy_database, progress, sqlite_url
from persistqueue import SQLiteAckQueue

from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.db.types import format_timestamp
from nexus_bridge.queue import QueueService

CHUNK = 50  # alternate service and raw in chunks of this many ops, so drift hits all alike
PRODUCERS = 32
SEQUENTIAL_TARGET = 0.5  # enqueue rate / raw rate, at least
CONCURRENT_TARGET = 2.0  # 32 producers' rate / raw sequential rate (and / persist-queue), at least


async def _service_block(queue: QueueService, run_id: str, start: int, count: int) -> float:
    begin = time.perf_counter()
    for i in range(start, start + count):
        result = await queue.enqueue(f"benchmark task {run_id}-{i}: rotate the logs")
        if not result.queued:
            raise RuntimeError("enqueue found a duplicate; the benchmark's messages must be unique")
    return time.perf_counter() - begin


async def _service_concurrent(queue: QueueService, run_id: str, start: int, each: int) -> float:
    async def producer(n: int) -> None:
        for i in range(each):
            text = f"benchmark task {run_id}-p{n}-{start + i}: rotate the logs"
            if not (await queue.enqueue(text)).queued:
                raise RuntimeError("enqueue found a duplicate")

    begin = time.perf_counter()
    await asyncio.gather(*(producer(n) for n in range(PRODUCERS)))
    return time.perf_counter() - begin


class RawWriter:
    """Plain ``sqlite3`` on a copy of the migrated schema: WAL, synchronous=FULL, foreign keys,
    one ``BEGIN IMMEDIATE ... COMMIT`` per task writing the rows the service writes."""

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")

    def block(self, run_id: str, start: int, count: int, *, per_commit: int = 1) -> float:
        """``count`` tasks, ``per_commit`` to a transaction; the seconds it took."""
        conn = self._conn
        begin = time.perf_counter()
        for i in range(start, start + count):
            task_id = str(uuid.uuid4())
            content = f"benchmark task {run_id}-{i}: rotate the logs"
            digest = hashlib.sha256(content.encode()).hexdigest()
            now = format_timestamp(datetime.now(UTC))
            if (i - start) % per_commit == 0:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO tasks (id, target, content, content_hash, status, status_reason, "
                "urgent, created_at, updated_at) VALUES (?, 'default', ?, ?, 'pending', NULL, 0, "
                "?, ?)",
                (task_id, content, digest, now, now),
            )
            conn.execute(
                "INSERT INTO outbox (task_id, kind, body, reply_to_telegram_id, state, "
                "attempts, parts_sent, next_attempt_at, created_at) VALUES (?, 'task', ?, NULL, "
                "'pending', 0, 0, ?, ?)",
                (task_id, content, now, now),
            )
            conn.execute(
                "INSERT INTO updates (task_id, kind, status, content, created_at) "
                "VALUES (?, 'status', 'pending', 'status: pending (queued)', ?)",
                (task_id, now),
            )
            if (i - start) % per_commit == per_commit - 1 or i == start + count - 1:
                conn.execute("COMMIT")
        return time.perf_counter() - begin

    def close(self) -> None:
        self._conn.close()


class _PersistQueue:
    """persist-queue's ``SQLiteAckQueue`` (WAL), its putting connection set to synchronous=FULL."""

    def __init__(self, directory: Path) -> None:
        self._queue = SQLiteAckQueue(str(directory), multithreading=True, auto_commit=True)
        with self._queue.tran_lock:
            self._queue._putter.execute("PRAGMA synchronous=FULL")

    def concurrent(self, run_id: str, start: int, each: int) -> float:
        errors: list[BaseException] = []

        def producer(n: int) -> None:
            try:
                for i in range(each):
                    self._queue.put(f"benchmark task {run_id}-p{n}-{start + i}: rotate the logs")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(PRODUCERS)]
        begin = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        took = time.perf_counter() - begin
        if errors:
            raise RuntimeError(f"persist-queue put failed: {errors[0]!r}") from errors[0]
        return took

    def close(self) -> None:
        self._queue.close()


async def run(
    report: Report, template: Path, scratch: Path, *, operations: int, warmup: int
) -> None:
    progress(
        f"2. enqueue rate: ~{operations} sequential ops each, then {PRODUCERS} concurrent "
        f"producers (after {warmup} warm-up)"
    )
    sequential_store = Store(create_engine(sqlite_url(copy_database(template, scratch / "seq.db"))))
    concurrent_store = Store(create_engine(sqlite_url(copy_database(template, scratch / "con.db"))))
    sequential = QueueService(sequential_store)
    concurrent = QueueService(concurrent_store)
    raw = RawWriter(copy_database(template, scratch / "raw.db"))
    raw_batched = RawWriter(copy_database(template, scratch / "raw-batched.db"))
    persisted = _PersistQueue(scratch / "persist-queue")
    run_id = uuid.uuid4().hex[:8]
    each = max(1, CHUNK // 4)  # per producer and round: 32 x 12 = 384 tasks a round
    try:
        await _service_block(sequential, run_id, 0, warmup)
        raw.block(run_id, 0, warmup)
        await _service_concurrent(concurrent, run_id, 0, 2)
        persisted.concurrent(run_id, 0, 2)
        raw_batched.block(run_id, 0, PRODUCERS * 2, per_commit=PRODUCERS)
        chunk = min(CHUNK, operations)
        rounds = max(1, operations // chunk)
        names = ("service", "raw", "concurrent", "persist-queue", "raw batched")
        spent = dict.fromkeys(names, 0.0)
        done = dict.fromkeys(names, 0)
        for r in range(rounds):
            start = warmup + done["service"]
            spent["service"] += await _service_block(sequential, run_id, start, chunk)
            spent["raw"] += raw.block(run_id, start, chunk)
            done["service"] += chunk
            done["raw"] += chunk
            if r % 4 == 0:  # concurrent rounds are 384 tasks each: fewer of them
                first = 2 + done["concurrent"] // PRODUCERS
                spent["concurrent"] += await _service_concurrent(concurrent, run_id, first, each)
                spent["persist-queue"] += await asyncio.to_thread(
                    persisted.concurrent, run_id, first, each
                )
                first_raw = PRODUCERS * 2 + done["raw batched"]
                spent["raw batched"] += raw_batched.block(
                    run_id, first_raw, each * PRODUCERS, per_commit=PRODUCERS
                )
                done["concurrent"] += each * PRODUCERS
                done["persist-queue"] += each * PRODUCERS
                done["raw batched"] += each * PRODUCERS
            if (r + 1) % max(1, rounds // 4) == 0 and r + 1 < rounds:
                progress(f"  {done['service']}/{rounds * chunk} sequential ops each")
    finally:
        raw.close()
        raw_batched.close()
        persisted.close()
        await sequential_store.dispose()
        await concurrent_store.dispose()
        shutil.rmtree(scratch / "persist-queue", ignore_errors=True)

    rate = {name: done[name] / seconds for name, seconds in spent.items()}

    def ops(name: str) -> str:
        return f"{rate[name]:,.0f} tasks/s ({spent[name] / done[name] * 1e3:.3f} ms/task)"

    report.rows.append(
        Row(
            section="2",
            name="sequential enqueue vs raw sqlite3, same rows (rate)",
            measured=f"service {ops('service')}",
            baseline=f"raw {ops('raw')}",
            ratio=rate["service"] / rate["raw"],
            at_least=SEQUENTIAL_TARGET,
        )
    )
    report.rows.append(
        Row(
            section="2",
            name=f"{PRODUCERS} concurrent producers vs raw sequential (rate)",
            measured=f"service {ops('concurrent')}",
            baseline=f"raw {ops('raw')}",
            ratio=rate["concurrent"] / rate["raw"],
            at_least=CONCURRENT_TARGET,
        )
    )
    report.rows.append(
        Row(
            section="2",
            name=f"{PRODUCERS} concurrent producers vs persist-queue put x{PRODUCERS} (rate)",
            measured=f"service {ops('concurrent')}",
            baseline=f"persist-queue {ops('persist-queue')}",
            ratio=rate["concurrent"] / rate["persist-queue"],
            at_least=CONCURRENT_TARGET,
        )
    )
    report.rows.append(
        Row(
            section="2",
            name=f"  for scale: raw sqlite3, {PRODUCERS} tasks a transaction vs persist-queue",
            measured=f"raw batched {ops('raw batched')}",
            baseline=f"persist-queue {ops('persist-queue')}",
            ratio=rate["raw batched"] / rate["persist-queue"],
        )
    )
    report.notes.append(
        "2: every enqueue writes 3 rows (the task, its delivery, its 'pending' status update) in "
        "one BEGIN IMMEDIATE transaction, committed before it returns; the raw baseline writes "
        "the same 3 rows into the same schema, one transaction per task. Concurrent: "
        f"{PRODUCERS} coroutines on one service (group commit) vs {PRODUCERS} threads calling "
        "persist-queue's SQLiteAckQueue.put. All use WAL + synchronous=FULL on their own file; "
        "ratio = rate / baseline rate (higher is better)."
    )
    report.notes.append(
        f"2: 'raw batched' is the same SQL as the raw baseline with {PRODUCERS} tasks to a "
        "transaction, in one thread, no Python around it but the loop: the most group commit "
        "can make of these three rows a task. persist-queue's put writes one row."
    )
    progress(
        f"  service {ops('service')}; raw {ops('raw')}; {PRODUCERS} producers "
        f"{ops('concurrent')}; persist-queue {ops('persist-queue')}"
    )
