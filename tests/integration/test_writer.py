"""The SQLite writer thread: one hop per write, group commit with a savepoint per write.

Every test holds the writer inside one write (a body that blocks its thread on a
``threading.Event``) while the others are submitted, so that those others are committed together
in the next transaction: the batch is made on purpose, not by luck.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from nexus_bridge import config
from nexus_bridge.db.engine import create_engine, create_writer_engine
from nexus_bridge.db.store import Store, StoreTransaction
from nexus_bridge.db.writer import SqliteWriter, WalKeeper, WriteWaited
from nexus_bridge.domain import TargetPolicy, Transport, content_hash
from nexus_bridge.errors import DatabaseUnreachable, TaskNotFound
from nexus_bridge.queue import QueueService
from tests.conftest import DEADLINE_SECONDS, wait_for

BATCH = 16


def _path(url: str) -> Path:
    return Path(url.removeprefix("sqlite+aiosqlite:///"))


@pytest.fixture
async def writer(migrated_sqlite_url: str) -> AsyncIterator[SqliteWriter]:
    engine = create_engine(migrated_sqlite_url)
    writer = SqliteWriter(
        create_writer_engine(engine), connect_error=lambda exc: DatabaseUnreachable(str(exc))
    )
    yield writer
    await writer.close()
    await engine.dispose()


class Gate:
    """A write that holds the writer thread until :meth:`open`; the writes submitted meanwhile
    wait in its inbox and make the next batch."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._released = threading.Event()

    async def body(self, _connection: Any) -> None:
        self.entered.set()
        self._released.wait(DEADLINE_SECONDS)  # blocks the writer thread, on purpose

    def open(self) -> None:
        self._released.set()


async def batched(
    submit: Callable[[Any], Awaitable[Any]], bodies: list[Any], queued: Callable[[], int]
) -> list[Any]:
    """Run ``bodies`` (through ``submit``) as one batch: the writer is held in a gate until all
    of them are waiting in its inbox (``queued()`` counts them). Results or exceptions."""
    gate = Gate()
    held = asyncio.ensure_future(submit(gate.body))
    await wait_for(gate.entered.is_set, what="the writer to enter the gate")
    calls = [asyncio.ensure_future(submit(body)) for body in bodies]
    await wait_for(lambda: queued() >= len(bodies), what="every write to wait in the inbox")
    gate.open()
    await held
    return await asyncio.gather(*calls, return_exceptions=True)


def _insert_agent_update(content: str) -> Callable[[Connection], Any]:
    async def body(connection: Connection) -> int:
        result = connection.execute(
            text(
                "INSERT INTO updates (task_id, kind, content, created_at) "
                "VALUES (NULL, 'agent', :content, '2026-11-29T00:00:00.000000+00:00')"
            ),
            {"content": content},
        )
        return int(result.lastrowid or 0)

    return body


def _contents(url: str) -> list[str]:
    with sqlite3.connect(_path(url)) as conn:
        return [str(r[0]) for r in conn.execute("SELECT content FROM updates ORDER BY seq")]


async def test_writes_that_wait_meanwhile_are_committed_together_in_one_transaction(
    writer: SqliteWriter, migrated_sqlite_url: str
) -> None:
    bodies = [_insert_agent_update(f"write {i}") for i in range(BATCH)]
    results = await batched(writer.run, bodies, writer.queued)

    assert all(isinstance(r, int) for r in results), results
    assert writer.commits == 2  # the gate's own transaction, then all the others at once
    assert writer.committed_writes == 1 + BATCH
    assert _contents(migrated_sqlite_url) == [f"write {i}" for i in range(BATCH)]


async def test_writes_submitted_in_one_turn_of_the_loop_are_committed_together(
    writer: SqliteWriter, migrated_sqlite_url: str
) -> None:
    # As when a commit resumes its callers and each writes again at once. Between two of them
    # the loop's thread lets go of the GIL (as any system call does), and an idle writer thread
    # would start on the first write alone: a batch of one, then one of the rest.
    async def pause_then_write(i: int) -> int:
        time.sleep(0.002)  # noqa: ASYNC251 - blocking the loop's thread is the point
        result: int = await writer.run(_insert_agent_update(f"write {i}"))
        return result

    results = await asyncio.gather(*(pause_then_write(i) for i in range(BATCH)))

    assert all(isinstance(r, int) for r in results), results
    assert (writer.commits, writer.committed_writes) == (1, BATCH)
    assert _contents(migrated_sqlite_url) == [f"write {i}" for i in range(BATCH)]


async def test_a_failing_write_in_a_batch_fails_only_its_caller_and_leaves_nothing_behind(
    writer: SqliteWriter, migrated_sqlite_url: str
) -> None:
    async def half_then_fail(connection: Connection) -> None:
        await _insert_agent_update("half-written")(connection)
        raise ValueError("the write changed its mind")

    async def violates_a_check(connection: Connection) -> None:
        connection.execute(
            text(
                "INSERT INTO updates (task_id, kind, content, created_at) "
                "VALUES (NULL, 'no-such-kind', 'x', '2026-11-29T00:00:00.000000+00:00')"
            )
        )

    bodies = [
        _insert_agent_update("before"),
        half_then_fail,
        violates_a_check,
        _insert_agent_update("after"),
    ]
    results = await batched(writer.run, bodies, writer.queued)

    assert isinstance(results[0], int)
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], IntegrityError)
    assert isinstance(results[3], int)
    assert writer.commits == 2
    assert _contents(migrated_sqlite_url) == ["before", "after"]


async def test_a_write_that_waits_on_something_is_refused_and_rolled_back(
    writer: SqliteWriter, migrated_sqlite_url: str
) -> None:
    async def waits(connection: Connection) -> None:
        await _insert_agent_update("never")(connection)
        await asyncio.sleep(0)  # suspends: a write must only run statements

    bodies = [_insert_agent_update("kept"), waits]
    results = await batched(writer.run, bodies, writer.queued)

    assert isinstance(results[0], int)
    assert isinstance(results[1], WriteWaited)
    assert _contents(migrated_sqlite_url) == ["kept"]
    # Alone in its transaction too.
    with pytest.raises(WriteWaited):
        await writer.run(waits)
    assert _contents(migrated_sqlite_url) == ["kept"]


async def test_when_the_commit_fails_every_write_of_the_batch_gets_the_error(
    writer: SqliteWriter, migrated_sqlite_url: str
) -> None:
    async def orphan_delivery_checked_at_commit(connection: Connection) -> None:
        # A deferred foreign key is checked by COMMIT: the batch's COMMIT fails.
        connection.execute(text("PRAGMA defer_foreign_keys = ON"))
        connection.execute(
            text(
                "INSERT INTO outbox (task_id, kind, body, state, attempts, parts_sent, "
                "next_attempt_at, created_at) VALUES ('no-such-task', 'task', 'x', 'pending', "
                "0, 0, '2026-11-29T00:00:00.000000+00:00', '2026-11-29T00:00:00.000000+00:00')"
            )
        )

    bodies = [
        _insert_agent_update("lost with the batch"),
        orphan_delivery_checked_at_commit,
        _insert_agent_update("lost too"),
    ]
    results = await batched(writer.run, bodies, writer.queued)

    assert all(isinstance(r, IntegrityError) for r in results), results
    assert all("FOREIGN KEY" in str(r) for r in results)
    assert _contents(migrated_sqlite_url) == []
    # The writer goes on with a fresh connection.
    assert isinstance(await writer.run(_insert_agent_update("next")), int)
    assert _contents(migrated_sqlite_url) == ["next"]


async def test_a_write_whose_caller_was_cancelled_before_its_turn_is_not_run(
    writer: SqliteWriter, migrated_sqlite_url: str
) -> None:
    gate = Gate()
    held = asyncio.ensure_future(writer.run(gate.body))
    await wait_for(gate.entered.is_set, what="the writer to enter the gate")
    dropped = asyncio.ensure_future(writer.run(_insert_agent_update("dropped")))
    kept = asyncio.ensure_future(writer.run(_insert_agent_update("kept")))
    await wait_for(lambda: writer.queued() >= 2, what="both writes to wait")
    dropped.cancel()
    gate.open()
    await held
    assert isinstance(await kept, int)
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert _contents(migrated_sqlite_url) == ["kept"]


@pytest.fixture
async def store(migrated_sqlite_url: str) -> AsyncIterator[Store]:
    store = Store(create_engine(migrated_sqlite_url))
    yield store
    await store.dispose()


def _store_inbox(store: Store) -> Callable[[], int]:
    def queued() -> int:
        writer = store._writer
        return 0 if writer is None else writer.queued()

    return queued


async def _store_gate(store: Store, gate_body: Callable[[Any], Awaitable[None]]) -> None:
    async def body(_tx: StoreTransaction) -> None:
        await gate_body(None)

    await store.commit(body)


async def test_identical_sends_in_one_batch_queue_exactly_one_task(store: Store) -> None:
    """The unique partial index decides, inside the batch: one send queues the task, every other
    gets the duplicate answer with its id."""
    queue = QueueService(store)
    sends = 24

    def submit(body: Any) -> Awaitable[Any]:
        if isinstance(body, str):
            return queue.enqueue(body)
        return _store_gate(store, body)

    await queue.enqueue("warm the writer up")  # so that store._writer exists
    results = await batched(submit, ["the same task"] * sends, _store_inbox(store))

    assert not [r for r in results if isinstance(r, BaseException)], results
    queued = [r for r in results if r.queued]
    assert len(queued) == 1
    assert {r.task.id for r in results} == {queued[0].task.id}
    assert store._writer is not None
    assert store._writer.commits >= 3  # the warm-up, the gate, the batch (+ duplicate look-ups)
    tasks = await queue.list_tasks(limit=100)
    assert sorted(t.content for t in tasks.tasks) == ["the same task", "warm the writer up"]


async def test_a_failing_service_write_in_a_batch_fails_only_its_caller(store: Store) -> None:
    queue = QueueService(store)
    await queue.enqueue("warm the writer up")

    def submit(body: Any) -> Awaitable[Any]:
        if body == "cancel a task that does not exist":
            return queue.cancel("0" * 36)
        if isinstance(body, str):
            return queue.enqueue(body)
        return _store_gate(store, body)

    bodies = ["first", "cancel a task that does not exist", "second"]
    results = await batched(submit, bodies, _store_inbox(store))

    assert results[0].queued
    assert results[2].queued
    assert isinstance(results[1], TaskNotFound)
    contents = {t.content for t in (await queue.list_tasks(limit=10)).tasks}
    assert contents == {"warm the writer up", "first", "second"}


async def test_a_long_cold_write_makes_hot_writes_wait_their_turn_not_fail_busy(
    migrated_sqlite_url: str,
) -> None:
    """``Store.write`` (the statement-by-statement kind) runs on the writer's own connection:
    writes of this process queue behind it instead of racing it for SQLite's lock (which, past
    the busy timeout, fails them with DatabaseBusy)."""
    store = Store(create_engine(migrated_sqlite_url, busy_timeout_ms=20))
    queue = QueueService(store)
    try:
        await queue.enqueue("warm the writer up")
        holding = asyncio.Event()

        async def cold() -> None:
            async with store.write() as tx:
                holding.set()
                for _ in range(3):
                    await tx.touch_presence("default", at=queue.now())
                    await asyncio.sleep(0.05)  # a slow transaction: longer than the busy timeout

        slow = asyncio.ensure_future(cold())
        await asyncio.wait_for(holding.wait(), DEADLINE_SECONDS)
        results = await asyncio.gather(*(queue.enqueue(f"hot {n}") for n in range(8)))
        await slow
    finally:
        await store.dispose()
    assert all(r.queued for r in results)


# --- a group's sends: one multi-row INSERT per table --------------------------------------------

TWO_TARGETS = (TargetPolicy("chat", Transport.TELEGRAM), TargetPolicy("api", Transport.AGENT))


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row a send writes, in write order, with its id replaced by its task's content."""
    with sqlite3.connect(_path(url)) as conn:
        return {
            "tasks": conn.execute(
                "SELECT target, content, status, urgent, created_at = updated_at FROM tasks "
                "ORDER BY rowid"
            ).fetchall(),
            "outbox": conn.execute(
                "SELECT t.content, o.kind, o.body, o.state, o.next_attempt_at = t.created_at, "
                "o.created_at = t.created_at FROM outbox o JOIN tasks t ON t.id = o.task_id "
                "ORDER BY o.id"
            ).fetchall(),
            "updates": conn.execute(
                "SELECT t.content, u.kind, u.status, u.content, u.created_at = t.created_at "
                "FROM updates u JOIN tasks t ON t.id = u.task_id ORDER BY u.seq"
            ).fetchall(),
            "counts": conn.execute(
                "SELECT kind, target, status, n FROM queue_counts WHERE n <> 0 "
                "ORDER BY kind, target, status"
            ).fetchall(),
        }


def _send(queue: QueueService, store: Store) -> Callable[[Any], Awaitable[Any]]:
    def submit(body: Any) -> Awaitable[Any]:
        if isinstance(body, tuple):
            target, text = body
            return queue.enqueue(text, target, urgent=text.startswith("!"))
        return _store_gate(store, body)

    return submit


async def _send_as_one_group(url: str, sends: list[tuple[str, str]]) -> list[Any]:
    store = Store(create_engine(url))
    try:
        queue = QueueService(store, targets=TWO_TARGETS)
        await queue.enqueue("warm the writer up", "chat")
        return await batched(_send(queue, store), sends, _store_inbox(store))
    finally:
        await store.dispose()


async def _send_one_by_one(url: str, sends: list[tuple[str, str]]) -> list[Any]:
    store = Store(create_engine(url))
    try:
        queue = QueueService(store, targets=TWO_TARGETS)
        await queue.enqueue("warm the writer up", "chat")
        results = []
        for target, text in sends:
            results.append(await queue.enqueue(text, target, urgent=text.startswith("!")))
        return results
    finally:
        await store.dispose()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sends=st.lists(
        st.tuples(st.sampled_from(["chat", "api"]), st.sampled_from(["a", "b", "!c", " a "])),
        min_size=2,
        max_size=12,
    )
)
def test_a_group_of_sends_writes_exactly_what_the_same_sends_one_by_one_write(
    sends: list[tuple[str, str]], migrated_sqlite_template: bytes, tmp_path_factory: Any
) -> None:
    """Any mix of new and duplicate sends to both kinds of target, made as one group (its rows
    as one multi-row INSERT per table, run again a savepoint per send when a duplicate fails
    it), answers and writes row for row what the same sends made one at a time do."""
    directory = tmp_path_factory.mktemp("group")
    grouped, alone = (f"sqlite+aiosqlite:///{directory / name}" for name in ("g.db", "a.db"))
    for url in (grouped, alone):
        _path(url).write_bytes(migrated_sqlite_template)

    group_results = asyncio.run(_send_as_one_group(grouped, sends))
    alone_results = asyncio.run(_send_one_by_one(alone, sends))

    assert not [r for r in group_results if isinstance(r, BaseException)], group_results
    assert [r.queued for r in group_results] == [r.queued for r in alone_results]
    first_of: dict[tuple[str, str], str] = {}
    for (target, message), result in zip(sends, group_results, strict=True):
        first_of.setdefault((target, message.strip()), result.task.id)
        assert result.task.id == first_of[(target, message.strip())]  # a duplicate names the first
    assert _rows(grouped) == _rows(alone)


def test_a_group_larger_than_one_insert_statement_writes_every_send_in_order(
    migrated_sqlite_template: bytes, tmp_path: Path
) -> None:
    """150 sends in one group: more rows than one multi-row INSERT takes (64 tasks, 128
    updates), so each table is written in several statements, still in the sends' order."""
    sends = [("chat" if i % 3 else "api", f"task {i}") for i in range(150)]
    grouped, alone = (f"sqlite+aiosqlite:///{tmp_path / name}" for name in ("g.db", "a.db"))
    for url in (grouped, alone):
        _path(url).write_bytes(migrated_sqlite_template)

    results = asyncio.run(_send_as_one_group(grouped, sends))
    asyncio.run(_send_one_by_one(alone, sends))

    assert all(not isinstance(r, BaseException) and r.queued for r in results), results
    assert _rows(grouped) == _rows(alone)
    assert [row[1] for row in _rows(grouped)["tasks"]][1:] == [text for _, text in sends]


async def test_a_write_after_a_send_in_its_group_sees_the_send(store: Store) -> None:
    """The rows a group puts off run before any later statement of the group: a later write
    reads the task an earlier one queued."""
    queue = QueueService(store)
    await queue.enqueue("warm the writer up")
    digest = content_hash("look for me")

    async def look(tx: StoreTransaction) -> bool:
        return await tx.open_task_with_hash(config.DEFAULT_TARGET, digest) is not None

    def submit(body: Any) -> Awaitable[Any]:
        if body == "look":
            return store.commit(look)
        if isinstance(body, str):
            return queue.enqueue(body)
        return _store_gate(store, body)

    results = await batched(submit, ["look for me", "look"], _store_inbox(store))

    assert results[0].queued
    assert results[1] is True


async def test_a_write_that_swallows_the_groups_failure_cannot_commit_a_lost_send(
    store: Store, migrated_sqlite_url: str
) -> None:
    """A duplicate fails the group's multi-row INSERT inside a later write of the group; that
    write catches the error and goes on. The group still runs again, a send per savepoint: the
    duplicate is answered as one, and nothing is answered that is not on disk."""
    queue = QueueService(store)
    existing = await queue.enqueue("already open")
    digest = content_hash("already open")

    async def swallow(tx: StoreTransaction) -> str:
        try:
            await tx.open_task_with_hash(config.DEFAULT_TARGET, digest)
        except IntegrityError:
            return "swallowed"
        return "went on"

    def submit(body: Any) -> Awaitable[Any]:
        if body == "swallow":
            return store.commit(swallow)
        if isinstance(body, str):
            return queue.enqueue(body)
        return _store_gate(store, body)

    results = await batched(submit, ["new one", "already open", "swallow"], _store_inbox(store))

    assert results[0].queued
    assert (results[1].queued, results[1].task.id) == (False, existing.task.id)
    assert results[2] == "went on"  # on the second run, with nothing put off to fail
    with sqlite3.connect(_path(migrated_sqlite_url)) as conn:
        rows = conn.execute("SELECT content FROM tasks ORDER BY rowid").fetchall()
    assert rows == [("already open",), ("new one",)]


# --- the write-ahead log -------------------------------------------------------------------

WAL_LIMIT = 256 * 1024
WAL_WRITES = 400  # of a 4,000-character update each: about 2 MB of log, 8 times the limit


class OverlappingReaders:
    """Two readers on their own connections, taking turns so that one is always inside a read
    transaction (the next begins before the last ends), as a busy server's pulls are: SQLite's
    own checkpoints then never find the moment to start the log over."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self.reads = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> OverlappingReaders:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE_SECONDS)

    def _run(self) -> None:
        first, second = (sqlite3.connect(self._path, isolation_level=None) for _ in range(2))
        try:
            current, other = first, second
            current.execute("BEGIN")
            current.execute("SELECT count(*) FROM updates").fetchone()
            while not self._stop.is_set():
                other.execute("BEGIN")
                other.execute("SELECT count(*) FROM updates").fetchone()
                current.execute("COMMIT")
                self.reads += 1
                current, other = other, current
            current.execute("COMMIT")
        finally:
            first.close()
            second.close()


def _wal_bytes(url: str) -> int:
    log = _path(url).with_name(_path(url).name + "-wal")
    return log.stat().st_size if log.exists() else 0


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "unkept (control)"])
async def test_under_readers_that_never_all_stop_the_write_ahead_log_stays_near_its_limit(
    migrated_sqlite_url: str, kept: bool
) -> None:
    """Found on a real server: 12 busy clients for 90 s left a 105 MB log beside a 5 MB
    database. The control shows the readers defeat SQLite's own checkpoints (the log is never
    started over); the writer's keeper checkpoints and truncates it all the same."""
    keeper = WalKeeper(_path(migrated_sqlite_url), limit_bytes=WAL_LIMIT) if kept else None
    engine = create_engine(migrated_sqlite_url)
    writer = SqliteWriter(
        create_writer_engine(engine),
        connect_error=lambda exc: DatabaseUnreachable(str(exc)),
        wal=keeper,
    )
    largest = 0
    try:
        with OverlappingReaders(_path(migrated_sqlite_url)) as readers:
            await wait_for(lambda: readers.reads > 0, what="the readers to start")
            for i in range(WAL_WRITES):
                await writer.run(_insert_agent_update(f"{i:04d} " + "x" * 3995))
                largest = max(largest, _wal_bytes(migrated_sqlite_url))
            assert readers.reads > WAL_WRITES / 10, "the readers did not keep reading"
    finally:
        await writer.close()
        await engine.dispose()

    if keeper is None:
        assert largest > 6 * WAL_LIMIT, largest
        return
    # Checked after each commit is answered: the log may pass the limit by a commit or two.
    assert largest < 2 * WAL_LIMIT, largest
    assert keeper.truncations >= 3, keeper.truncations
    contents = _contents(migrated_sqlite_url)
    assert [c[:4] for c in contents] == [f"{i:04d}" for i in range(WAL_WRITES)]


async def test_a_reader_that_never_finishes_holds_writes_up_by_the_wait_at_most_and_is_named(
    migrated_sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader stuck inside a transaction (a long backup, a stopped process) outlasts every
    checkpoint: the writer gives up after the wait, keeps writing, tries again a retry later,
    says so in the log after a minute of it, and truncates the log once the reader lets go."""
    now = [1000.0]
    keeper = WalKeeper(
        _path(migrated_sqlite_url),
        limit_bytes=WAL_LIMIT,
        wait_ms=20,
        retry_seconds=1.0,
        clock=lambda: now[0],
    )
    engine = create_engine(migrated_sqlite_url)
    writer = SqliteWriter(
        create_writer_engine(engine),
        connect_error=lambda exc: DatabaseUnreachable(str(exc)),
        wal=keeper,
    )
    stuck = sqlite3.connect(_path(migrated_sqlite_url), isolation_level=None)

    async def write(content: str) -> None:
        """One write, and the keeper's look at the log after it."""
        await writer.run(_insert_agent_update(content))
        await wait_for(lambda: keeper.commits_seen == writer.commits, what="the keeper")

    try:
        await write("before the reader")
        stuck.execute("BEGIN")
        stuck.execute("SELECT count(*) FROM updates").fetchone()
        i = 0
        while keeper.busy_tries == 0:
            await write(f"{i} " + "x" * 4000)
            i += 1
            assert i < WAL_WRITES, "the log never passed its limit"
        assert _wal_bytes(migrated_sqlite_url) > WAL_LIMIT
        # Within the retry interval nothing is tried: writes go on without waiting.
        await write("within the retry interval")
        assert keeper.busy_tries == 1
        with caplog.at_level(logging.WARNING, logger="nexus_bridge.db.writer"):
            for _ in range(61):
                now[0] += 1.0
                await write("still stuck")
        assert keeper.busy_tries == 62
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings
        assert "-wal is" in warnings[0]
        assert "kept it from being checkpointed" in warnings[0]
        assert keeper.truncations == 0

        stuck.execute("COMMIT")
        now[0] += 1.0
        await write("after the reader")
        assert keeper.truncations == 1
        assert _wal_bytes(migrated_sqlite_url) == 0
    finally:
        stuck.close()
        await writer.close()
        await engine.dispose()
    contents = _contents(migrated_sqlite_url)
    assert contents[0] == "before the reader"
    assert contents[-1] == "after the reader"
    assert len(contents) == i + 64


# One process (the limit on file sizes is the whole process's): 100 large sends in one group,
# more than SQLite's page cache holds, so it writes pages to the log before the COMMIT and hits
# the limit there; prints how many sends failed with which error.
FULL_DISK_GROUP = """
import asyncio, collections, json, resource, sys
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.queue import QueueService

async def main():
    store = Store(create_engine(sys.argv[1]))
    queue = QueueService(store, max_message_chars=40_000)
    await queue.enqueue("first, before the limit")  # the writer's connection is open
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    sends = [queue.enqueue(f"{i:03d} " + "x" * 30_000) for i in range(100)]
    results = await asyncio.gather(*sends, return_exceptions=True)
    await store.dispose()
    print(json.dumps(collections.Counter(type(r).__name__ for r in results)))

asyncio.run(main())
"""


def test_a_group_the_full_disk_fails_mid_way_fails_every_send_of_it_as_unwritable(
    migrated_sqlite_url: str,
) -> None:
    """SQLite rolls the whole transaction back when a write fails while it spills pages; the
    savepoint of each send is gone then, and every send must get the disk's error (before, all
    but one got "no such savepoint", which callers saw as an internal error)."""
    path = _path(migrated_sqlite_url)
    limit = path.stat().st_size + 512 * 1024
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_GROUP, migrated_sqlite_url, str(limit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"DatabaseUnwritable": 100}, done.stdout
    with sqlite3.connect(path) as conn:
        tasks = [str(row[0]) for row in conn.execute("SELECT content FROM tasks")]
    assert tasks == ["first, before the limit"]
