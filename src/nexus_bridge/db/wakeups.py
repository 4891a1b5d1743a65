"""Telling this process, within milliseconds, that another process committed to the database.

Writes in this process wake waiters directly (``UpdateSignal``); writes by another process (the
CLI, the agent CLI, a second server) are noticed here:

- SQLite: inotify on the database's directory, for the database file and its ``-wal`` file
  (a commit writes one or the other). The commit becomes visible to readers only after its last
  write (the WAL index in ``-shm`` is updated through shared memory, which inotify never sees),
  so every burst of writes is followed by two late wake-ups as well.
- PostgreSQL: ``LISTEN`` on the channel a trigger on ``updates`` notifies at commit
  (migration 0011).

Where neither works (not Linux, inotify exhausted, PostgreSQL away) the caller's poll every
``change_poll_seconds`` remains, as before; which mechanism is active is logged once. A LISTEN
connection PostgreSQL closes (a restart, a failover) is opened again in the background.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from nexus_bridge.db.engine import sqlite_file

logger = logging.getLogger(__name__)

UPDATES_CHANNEL: Final = "nexus_bridge_updates"  # notified by the trigger of migration 0011

# <sys/inotify.h>
_IN_MODIFY: Final = 0x00000002
_IN_CLOSE_WRITE: Final = 0x00000008
_IN_MOVED_FROM: Final = 0x00000040
_IN_MOVED_TO: Final = 0x00000080
_IN_CREATE: Final = 0x00000100
_IN_DELETE: Final = 0x00000200
_IN_NONBLOCK: Final = 0o4000
_IN_CLOEXEC: Final = 0o2000000
_EVENT_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_BYTES: Final = 64 * 1024
# After a burst of writes, look again this much later: the commit may become visible to readers
# only after its last write to the WAL file (the -shm update and the fsync come after it).
LATE_WAKEUPS_SECONDS: Final = (0.005, 0.03)
# After PostgreSQL closed the LISTEN connection: the first pause before opening it again, and
# the longest (each failed try doubles it).
LISTEN_RETRY_SECONDS: Final = (0.5, 30.0)


class ChangeFeed:
    """Wake-ups for "another process may have committed": :meth:`wait` returns early on one."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self._event = asyncio.Event()

    def poke(self) -> None:
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Until the next wake-up, or ``seconds`` (the poll) if none comes."""
        with suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._event.wait()
        self._event.clear()


class _Inotify:
    """A non-blocking inotify descriptor watching a file's directory (Linux only, via libc) for
    changes to the file and its companions (``names``)."""

    def __init__(
        self, path: Path, names: frozenset[bytes], guarded: frozenset[bytes] = frozenset()
    ) -> None:
        directory = path.absolute().parent
        libc_name = ctypes.util.find_library("c")
        if libc_name is None:
            raise OSError("no C library found")
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if not hasattr(libc, "inotify_init1"):
            raise OSError("no inotify on this system")
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = (
            _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE | _IN_MOVED_TO | _IN_DELETE | _IN_MOVED_FROM
        )
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"inotify_add_watch on {directory} failed")
        self.fd = fd
        self._names = names
        self._guarded = guarded
        self.removed: list[str] = []  # guarded files deleted or moved away, as they go

    def relevant(self) -> bool:
        """Read every pending event; True if one concerns the database's files. A guarded
        file deleted or moved away is added to ``removed``."""
        found = False
        while True:
            try:
                data = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                return found
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                start = offset + _EVENT_HEADER.size
                name = data[start : start + length].rstrip(b"\0")
                found = found or name in self._names
                if mask & (_IN_DELETE | _IN_MOVED_FROM) and name in self._guarded:
                    self.removed.append(os.fsdecode(name))
                offset = start + length

    def close(self) -> None:
        os.close(self.fd)


@asynccontextmanager
async def _sqlite_feed(path: Path) -> AsyncIterator[ChangeFeed | None]:
    names = frozenset(os.fsencode(path.name + suffix) for suffix in ("", "-wal", "-journal"))
    # SQLite's files that must not go while a connection is open: removed, this process and
    # the others (the CLI, agents) stop sharing the log and its index, and writes get lost.
    guarded = frozenset(os.fsencode(path.name + suffix) for suffix in ("-wal", "-shm"))
    try:
        watch = _Inotify(path, names, guarded)
    except (OSError, AttributeError) as exc:
        logger.debug("no inotify (%s): other processes' writes are noticed by polling", exc)
        yield None
        return
    loop = asyncio.get_running_loop()
    feed = ChangeFeed("inotify")
    late: list[asyncio.TimerHandle] = []

    def readable() -> None:
        changed = watch.relevant()
        for name in watch.removed:
            logger.critical(
                "%s was deleted or moved while nexus-bridge has the database open: this process "
                "and the others using it (the CLI, agents) no longer share its write-ahead log, "
                "and the writes of one can be lost to the other. Restart nexus-bridge now "
                "(systemctl restart nexus-bridge), and stop whatever removes it",
                path.with_name(name),
            )
        watch.removed.clear()
        if not changed:
            return
        feed.poke()
        for handle in late:
            handle.cancel()
        late[:] = [loop.call_later(delay, feed.poke) for delay in LATE_WAKEUPS_SECONDS]

    loop.add_reader(watch.fd, readable)
    try:
        yield feed
    finally:
        loop.remove_reader(watch.fd)
        for handle in late:
            handle.cancel()
        watch.close()


class _PostgresListener:
    """One LISTEN connection, opened again whenever PostgreSQL closes it (a restart for an
    upgrade, a failover, a proxy's idle timeout), with a growing pause between tries. While it
    is closed the feed says ``poll``, and the caller's poll is what notices other processes'
    writes; once it is open again the feed wakes once, for what was missed meanwhile."""

    def __init__(self, engine: AsyncEngine, feed: ChangeFeed) -> None:
        self._engine = engine
        self._feed = feed
        self._closed = asyncio.Event()
        self._conn: AsyncConnection | None = None

    def _notified(self, *_args: Any) -> None:
        self._feed.poke()

    def _lost(self, *_args: Any) -> None:
        self._closed.set()

    async def _open(self) -> None:
        """Open the connection and LISTEN; raises what failed (the connection is closed)."""
        conn = await self._engine.connect()
        try:
            raw: Any = (await conn.get_raw_connection()).driver_connection
            await raw.add_listener(UPDATES_CHANNEL, self._notified)
            raw.add_termination_listener(self._lost)
        except BaseException:
            await self._close(conn)
            raise
        self._conn = conn

    @staticmethod
    async def _close(conn: AsyncConnection | None) -> None:
        if conn is not None:
            with suppress(Exception):  # it may be dead already: that is why we close it
                await conn.close()

    async def run(self, first_try: asyncio.Future[bool]) -> None:
        """Keep the connection open until cancelled; ``first_try`` is set to whether the first
        attempt listened."""
        pause = LISTEN_RETRY_SECONDS[0]
        opened_before = False
        while True:
            try:
                await self._open()
            except (AttributeError, NotImplementedError) as exc:
                # Not asyncpg: it never can. The poll alone notices other processes' writes.
                logger.debug("could not LISTEN (%s): other processes' writes are polled", exc)
                self._feed.mechanism = "poll"
                if not first_try.done():
                    first_try.set_result(False)
                return
            except Exception as exc:  # noqa: BLE001 - the server is away: try again later
                self._feed.mechanism = "poll"
                if not first_try.done():
                    first_try.set_result(False)
                logger.debug("no LISTEN connection (%s); trying again in %.0f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, LISTEN_RETRY_SECONDS[1])
                continue
            self._feed.mechanism = "LISTEN/NOTIFY"
            opened_at = asyncio.get_running_loop().time()
            if opened_before:
                logger.info("the LISTEN connection to PostgreSQL is open again")
                self._feed.poke()  # what other processes wrote while it was closed
            opened_before = True
            if not first_try.done():
                first_try.set_result(True)
            await self._closed.wait()
            self._closed.clear()
            self._feed.mechanism = "poll"
            logger.warning(
                "the LISTEN connection to PostgreSQL closed; polling until it opens again"
            )
            conn, self._conn = self._conn, None
            await self._close(conn)
            if asyncio.get_running_loop().time() - opened_at >= LISTEN_RETRY_SECONDS[1]:
                pause = LISTEN_RETRY_SECONDS[0]  # it stayed open a while: pauses start over
            # A connection closed soon after each opening (an idle timeout, say) is not
            # opened again in a tight loop.
            await asyncio.sleep(pause)
            pause = min(pause * 2, LISTEN_RETRY_SECONDS[1])

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        await self._close(conn)


@asynccontextmanager
async def _postgres_feed(engine: AsyncEngine) -> AsyncIterator[ChangeFeed | None]:
    feed = ChangeFeed("LISTEN/NOTIFY")
    listener = _PostgresListener(engine, feed)
    first_try: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(listener.run(first_try), name="nexus-bridge-listen")
    try:
        started: set[asyncio.Future[Any]] = {first_try, task}
        await asyncio.wait(started, return_when=asyncio.FIRST_COMPLETED)
        if task.done() and not first_try.done():
            task.result()  # it failed unexpectedly: raise that
        # Listening, or trying again in the background (the poll works meanwhile); None only
        # when this driver can never listen.
        yield feed if not task.done() else None
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        await listener.close()


@asynccontextmanager
async def change_feed(engine: AsyncEngine) -> AsyncIterator[ChangeFeed | None]:
    """Wake-ups on other processes' commits for ``engine``'s database, or None where only the
    poll works. Logs once, at debug, which mechanism is active."""
    path = None
    if engine.dialect.name == "sqlite":
        path = sqlite_file(engine.url.render_as_string(hide_password=False))
    if engine.dialect.name == "postgresql":
        opened = _postgres_feed(engine)
    elif path is not None:
        opened = _sqlite_feed(path)
    else:
        opened = _nothing()
    async with opened as feed:
        logger.debug(
            "other processes' writes are noticed by %s", feed.mechanism if feed else "polling"
        )
        yield feed


@asynccontextmanager
async def _nothing() -> AsyncIterator[ChangeFeed | None]:
    yield None
