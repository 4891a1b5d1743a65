"""The single writer of a SQLite database: one thread, one connection, group commit.

A write is a coroutine function over a synchronous connection whose awaits never wait; the
thread runs it whole (one trip from the event loop per write transaction, not one per
statement). Writes that arrive while a transaction is being committed are committed together in
the next one: one fsync for many writes. The writes submitted in one turn of the event loop
reach the thread together: a commit's callers, resumed in one turn and writing again at once,
make one group (not a group of the first of them, then one of the rest). The group runs straight
through; if a write of it fails (a duplicate caught by a unique index, or anything else), the
group is rolled back and run again with each write in its own savepoint, so that the failure
rolls back only that write. A write may therefore run twice, which is harmless: it only runs
statements, and nothing of its first run is kept or answered. Its caller's future resolves after
the COMMIT returned, so whatever a write answers is on disk.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from nexus_bridge.constants import (
    MAX_WRITES_PER_COMMIT,
    WAL_CHECKPOINT_RETRY_SECONDS,
    WAL_CHECKPOINT_WAIT_MS,
    WAL_LIMIT_BYTES,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
WriteJob = Callable[[Connection], Coroutine[Any, Any, T]]

GROUP_FINISHERS: Final = "nexus_bridge.group_finishers"
"""The ``connection.info`` key of a list that is there while the writes of a group run straight
through in one transaction (not a savepoint each). A write may append a callable to it that runs
what it put off (the store's multi-row INSERTs): every one runs before any later statement on
the connection, so statements keep their order, and before the COMMIT. One that raises fails the
group, which then runs again, a savepoint per write, with nothing put off."""


def _run_put_off(connection: Connection, *_statement: Any) -> None:
    """Before a statement on the writer's connection: what the group's writes put off."""
    for finish in connection.info.get(GROUP_FINISHERS, ()):
        finish()


class WriteWaited(RuntimeError):
    """A write awaited something that waits (not a statement); it must only run statements."""


@dataclass(slots=True, eq=False)
class _Pending(Generic[T]):
    job: WriteJob[T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    result: Any = None
    error: BaseException | None = None


@dataclass(slots=True, eq=False)
class _Step:
    """One statement of a session, or (``action`` None) its end: commit or roll back."""

    action: Callable[[Connection], Any] | None
    future: asyncio.Future[Any]
    commit: bool = False


class WriteSession:
    """A write transaction on the writer's connection, driven statement by statement from the
    event loop (one trip each, as on any async driver): for writes that cannot be one body.
    While it is open the writer does nothing else, so keep it short."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started: asyncio.Future[None] = loop.create_future()
        self.steps: queue.SimpleQueue[_Step] = queue.SimpleQueue()

    async def run(self, action: Callable[[Connection], T]) -> T:
        """``action(connection)`` in the writer's thread, inside this session's transaction."""
        step = _Step(action, self.loop.create_future())
        self.steps.put(step)
        return await step.future  # type: ignore[no-any-return]

    async def end(self, *, commit: bool) -> None:
        """Commit (or roll back) and give the writer back. Raises what COMMIT raised."""
        step = _Step(None, self.loop.create_future(), commit=commit)
        self.steps.put(step)
        await asyncio.shield(step.future)


# What the thread takes: a write, a session, or None (stop).
_Item = _Pending[Any] | WriteSession | None


def _notify(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    """From the writer thread: resolve ``future`` on its loop (if that still runs)."""
    try:
        loop.call_soon_threadsafe(_resolve, future, result, error)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        logger.debug("a session step finished after its event loop closed")


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends, here and now."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise WriteWaited(WriteWaited.__doc__)


def _settle(batch: list[_Pending[Any]]) -> None:
    """On the caller's loop: hand every write its outcome (a cancelled caller gets nothing)."""
    for item in batch:
        if item.future.done():
            continue
        if item.error is not None:
            item.future.set_exception(item.error)
        else:
            item.future.set_result(item.result)


class WalKeeper:
    """Keeps the write-ahead log of a SQLite file near ``limit_bytes``; the writer thread's.

    SQLite checkpoints the log on its own after commits, but it starts the file over only at a
    moment when no reader is still reading from it; on a busy server some pull is always
    reading, and the file grows for as long as that lasts. Past ``limit_bytes``, after a
    commit, this checkpoints the log and truncates it (``wal_checkpoint(TRUNCATE)``), letting
    the readers of the moment finish for up to ``wait_ms`` (the writes that arrive meanwhile are
    committed together afterwards); if they do not, it tries again ``retry_seconds`` later.
    """

    def __init__(
        self,
        database: Path,
        *,
        limit_bytes: int = WAL_LIMIT_BYTES,
        wait_ms: int = WAL_CHECKPOINT_WAIT_MS,
        retry_seconds: float = WAL_CHECKPOINT_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = database.with_name(database.name + "-wal")
        self._limit_bytes = limit_bytes
        self._wait_ms = wait_ms
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._next_try = 0.0
        self._busy_since: float | None = None
        # Written by the writer thread only: commits looked at, logs truncated, and tries the
        # readers outlasted.
        self.commits_seen = 0
        self.truncations = 0
        self.busy_tries = 0

    def after_commit(self, connection: sqlite3.Connection) -> None:
        """Checkpoint and truncate the log if it is past the limit (``connection`` is not in a
        transaction)."""
        try:
            self._keep(connection)
        finally:
            self.commits_seen += 1

    def _keep(self, connection: sqlite3.Connection) -> None:
        now = self._clock()
        if now < self._next_try:
            return
        try:
            size = self.log.stat().st_size
        except OSError:
            return  # no log (yet), or not ours to look at: nothing to keep
        if size <= self._limit_bytes:
            self._busy_since = None
            return
        failure: sqlite3.Error | None = None
        try:
            (timeout,) = connection.execute("PRAGMA busy_timeout").fetchone()
            connection.execute(f"PRAGMA busy_timeout={int(self._wait_ms)}")
            try:
                busy, _frames, _copied = connection.execute(
                    "PRAGMA wal_checkpoint(TRUNCATE)"
                ).fetchone()
            finally:
                connection.execute(f"PRAGMA busy_timeout={int(timeout)}")
        except sqlite3.Error as exc:
            busy, failure = 1, exc
            logger.debug("checkpointing the write-ahead log failed: %s", exc)
        if not busy:
            self.truncations += 1
            self._busy_since = None
            logger.debug("write-ahead log checkpointed and truncated at %d bytes", size)
            return
        self.busy_tries += 1
        self._next_try = now + self._retry_seconds
        if self._busy_since is None:
            self._busy_since = now
        elif now - self._busy_since >= 60 * self._retry_seconds:
            self._busy_since = now  # once a minute (of retries) at most
            why = (
                f"checkpointing it failed ({failure})"
                if failure is not None
                else "a reader has kept it from being checkpointed (a long backup or a stuck "
                "process?)"
            )
            logger.warning(
                "the write-ahead log %s is %d MB: for a minute %s; trying again",
                self.log,
                size // 1_000_000,
                why,
            )


class SqliteWriter:
    """Runs write transactions in its own thread, on its own connection of ``engine``.

    ``connect_error`` turns a failure to open the connection into the error its callers get;
    ``wal``, when given, keeps the file's write-ahead log bounded after each commit.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        connect_error: Callable[[Exception], Exception],
        max_batch: int = MAX_WRITES_PER_COMMIT,
        wal: WalKeeper | None = None,
    ) -> None:
        self._engine = engine
        self._wal = wal
        event.listen(engine, "before_cursor_execute", _run_put_off)
        self._connect_error = connect_error
        self._max_batch = max_batch
        # What the event loops hand over, a turn's writes at a time; the thread's own copy of
        # the items handed over and not yet taken.
        self._inbox: queue.SimpleQueue[list[_Item]] = queue.SimpleQueue()
        self._taking: collections.deque[_Item] = collections.deque()
        # Each loop's writes of its current turn, not yet handed over.
        self._outgoing: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._submitted = 0  # written by the event loop only
        self._taken = 0  # written by the writer thread only
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # Written by the writer thread only: how many transactions committed, holding how many
        # writes that succeeded (more writes than commits: group commit at work).
        self.commits = 0
        self.committed_writes = 0

    async def run(self, job: WriteJob[T]) -> T:
        """Run ``job`` in a write transaction and return its result once that is committed.

        Raises:
            whatever ``job`` raised (its savepoint was rolled back), or the error that failed
            the transaction's BEGIN or COMMIT (nothing of it was written).
        """
        loop = asyncio.get_running_loop()
        pending: _Pending[T] = _Pending(job, loop.create_future(), loop)
        self._ensure_thread()
        self._submit(loop, pending)
        return await pending.future

    def queued(self) -> int:
        """How many writes and sessions were submitted and not yet taken by the thread."""
        return self._submitted - self._taken

    def _submit(self, loop: asyncio.AbstractEventLoop, item: _Item) -> None:
        """Queue ``item`` for the thread at the end of this turn of ``loop``."""
        self._submitted += 1
        turn = self._outgoing.get(loop)
        if turn is None:
            self._outgoing[loop] = [item]
            loop.call_soon(self._hand_over, loop)
        else:
            turn.append(item)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        turn = self._outgoing.pop(loop, None)
        if turn:
            self._inbox.put(turn)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[WriteSession]:
        """A :class:`WriteSession`: committed when the block ends, rolled back if it raises.

        Raises:
            the error that failed its BEGIN or its COMMIT.
        """
        session = WriteSession(asyncio.get_running_loop())
        self._ensure_thread()
        self._submit(session.loop, session)
        try:
            await session.started
        except BaseException:
            # Cancelled while waiting its turn: the writer will start it, and must end it at once.
            session.steps.put(_Step(None, session.loop.create_future(), commit=False))
            raise
        try:
            yield session
        except BaseException:
            await session.end(commit=False)
            raise
        await session.end(commit=True)

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="nexus-bridge-writer", daemon=True
                )
                self._thread.start()

    async def close(self) -> None:
        """Finish the writes already submitted, then stop the thread and close the connection."""
        with self._start_lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            loop = asyncio.get_running_loop()
            self._submit(loop, None)
            self._hand_over(loop)  # with what this turn submitted before it
            await asyncio.to_thread(thread.join)

    # --- the writer thread -----------------------------------------------------------------

    def _serve(self) -> None:
        connection: Connection | None = None
        try:
            while True:
                batch, session, stop = self._take()
                batch = [item for item in batch if not item.future.cancelled()]
                if batch:
                    try:
                        connection = self._commit(connection, batch)
                    except BaseException as exc:  # noqa: BLE001 - never leave a caller waiting
                        for item in batch:
                            item.error = item.error or exc
                        _discard(connection)
                        connection = None
                    self._answer(batch)
                if session is not None:
                    try:
                        connection = self._serve_session(connection, session)
                    except BaseException as exc:  # the thread must go on
                        logger.exception("a write session failed in the writer thread")
                        _notify(session.loop, session.started, None, exc)
                        _discard(connection)
                        connection = None
                if self._wal is not None and connection is not None:
                    # After the answers: nobody waits on it but the writes queued meanwhile.
                    self._wal.after_commit(_sqlite3_connection(connection))
                if stop:
                    return
        finally:
            _discard(connection)

    def _take(self) -> tuple[list[_Pending[Any]], WriteSession | None, bool]:
        """The next batch: wait for a write, then take every write already waiting, up to a
        session (which runs alone, after the batch); and whether to stop after it."""
        batch: list[_Pending[Any]] = []
        while len(batch) < self._max_batch:
            if not self._taking:
                try:
                    turn = self._inbox.get_nowait() if batch else self._inbox.get()
                except queue.Empty:
                    break
                self._taking.extend(turn)
                continue
            item = self._taking.popleft()
            self._taken += 1
            if item is None:
                return batch, None, True
            if isinstance(item, WriteSession):
                return batch, item, False
            batch.append(item)
        return batch, None, False

    def _serve_session(
        self, connection: Connection | None, session: WriteSession
    ) -> Connection | None:
        """Begin, run the session's statements as they come, end as it says; the connection to
        use next."""
        loop = session.loop
        if connection is None:
            try:
                connection = self._engine.connect()
            except Exception as exc:  # noqa: BLE001 - the session's caller gets it
                _notify(loop, session.started, None, self._connect_error(exc))
                return None
        try:
            transaction = connection.begin()
        except Exception as exc:  # noqa: BLE001 - the session's caller gets it
            _notify(loop, session.started, None, exc)
            _discard(connection)
            return None
        _notify(loop, session.started, None, None)
        while True:
            step = session.steps.get()
            if step.action is not None:
                try:
                    result, error = step.action(connection), None
                except Exception as exc:  # noqa: BLE001 - the session's caller gets it
                    result, error = None, exc
                _notify(loop, step.future, result, error)
                continue
            try:
                if step.commit:
                    transaction.commit()
                    self.commits += 1
                else:
                    transaction.rollback()
            except Exception as exc:  # noqa: BLE001 - the session's caller gets it
                _notify(loop, step.future, None, exc)
                _discard(connection)
                return None
            _notify(loop, step.future, None, None)
            return connection

    def _commit(
        self, connection: Connection | None, batch: list[_Pending[Any]]
    ) -> Connection | None:
        """One ``BEGIN IMMEDIATE … COMMIT`` for the whole batch; the connection to use next."""
        if connection is None:
            try:
                connection = self._engine.connect()
            except Exception as exc:  # noqa: BLE001 - every caller gets it, as connect_error says
                error = self._connect_error(exc)
                for item in batch:
                    item.error = error
                return None
        try:
            if not self._run_together(connection, batch):
                # A write failed, and the batch had no savepoints: it was rolled back whole.
                # Again, each write in its own savepoint, so that the failure is only its own.
                self._run_isolated(connection, batch)
        except Exception as exc:  # noqa: BLE001 - each caller gets its write's outcome
            # BEGIN, a savepoint or COMMIT failed: nothing of the batch is on disk.
            for item in batch:
                if item.error is None:
                    item.error = exc
            _discard(connection)
            return None
        written = sum(item.error is None for item in batch)
        if written == 0 and len(batch) == 1:
            return connection  # the one write failed and was rolled back: nothing committed
        self.commits += 1
        self.committed_writes += written
        if len(batch) > 1:
            logger.debug("committed %d writes of %d in one transaction", written, len(batch))
        return connection

    @staticmethod
    def _run_together(connection: Connection, batch: list[_Pending[Any]]) -> bool:
        """Every write of ``batch`` in one transaction, with no savepoints (the common case:
        nothing fails, and a savepoint costs two statements per write). False, with the
        transaction rolled back, if a write of a batch of several raised; a lone write that
        raised gets its error (its transaction rolled back) and True."""
        grouped = len(batch) > 1
        finishers: list[Callable[[], None]] = []
        if grouped:
            connection.info[GROUP_FINISHERS] = finishers
        try:
            transaction = connection.begin()
            for item in batch:
                try:
                    item.result = _run_to_end(item.job(connection))
                except Exception as exc:  # noqa: BLE001 - the caller's, or a reason to isolate
                    transaction.rollback()
                    item.result = None
                    if grouped:
                        return False
                    item.error = exc
                    return True
            try:
                for finish in finishers:
                    finish()
            except Exception:  # noqa: BLE001 - run again, a savepoint per write
                transaction.rollback()
                return False
            transaction.commit()
            return True
        finally:
            connection.info.pop(GROUP_FINISHERS, None)

    @staticmethod
    def _run_isolated(connection: Connection, batch: list[_Pending[Any]]) -> None:
        """Every write of ``batch`` in one transaction, each in its own savepoint: a write that
        raises rolls back only itself and gets its error; the others are committed."""
        # Straight to sqlite3: SQLAlchemy's savepoints would compile two statements per write,
        # and it has no part in them (the transaction is ours).
        driver = _sqlite3_connection(connection)
        with connection.begin():
            for item in batch:
                item.result, item.error = None, None
                driver.execute("SAVEPOINT write")
                try:
                    item.result = _run_to_end(item.job(connection))
                except Exception as exc:  # it is its caller's to handle
                    item.error = exc
                    if not driver.in_transaction:
                        # SQLite rolled the whole transaction back (a full disk, an I/O error
                        # while spilling pages): nothing of the batch stays; all get this error.
                        raise
                    driver.execute("ROLLBACK TO write")
                driver.execute("RELEASE write")

    @staticmethod
    def _answer(batch: list[_Pending[Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending[Any]]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
                logger.debug("a write finished after its event loop closed")


def _discard(connection: Connection | None) -> None:
    """Close a connection that may be broken; the next batch opens a fresh one."""
    if connection is not None:
        try:
            connection.close()
        except Exception:
            logger.debug("closing the writer's connection failed", exc_info=True)


def _sqlite3_connection(connection: Connection) -> Any:
    driver = connection.connection.driver_connection
    if driver is None:  # pragma: no cover - an open connection has its driver
        raise RuntimeError("no sqlite3 connection to write on")
    return driver
