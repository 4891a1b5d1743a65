"""Telling this process, within milliseconds, that another process committed to the database.

Writes in this process wake waiters directly (``UpdateSignal``); writes by another process (the
CLI, the agent CLI, a second server) are noticed here:

- SQLite: inotify on the database's directory, for the database file and its ``-wal`` file
  (a commit writes one or the other). The commit becomes visible to readers only after its last
  write (the WAL index in ``-shm`` is updated through shared memory, which inotify never sees),
  so every burst of writes is followed by two late wake-ups as well.
- PostgreSQL: ``LISTEN`` on the channel a trigger on ``updates`` notifies at commit
  (migration 0011).

Where neither works (not Linux, inotify exhausted, a lost PostgreSQL connection) the caller's
poll every ``change_poll_seconds`` remains, as before; which mechanism is active is logged once.
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

from sqlalchemy.ext.asyncio import AsyncEngine

from nexus_bridge.db.engine import sqlite_file

logger = logging.getLogger(__name__)

UPDATES_CHANNEL: Final = "nexus_bridge_updates"  # notified by the trigger of migration 0011

# <sys/inotify.h>
_IN_MODIFY: Final = 0x00000002
_IN_CLOSE_WRITE: Final = 0x00000008
_IN_MOVED_TO: Final = 0x00000080
_IN_CREATE: Final = 0x00000100
_IN_NONBLOCK: Final = 0o4000
_IN_CLOEXEC: Final = 0o2000000
_EVENT_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_BYTES: Final = 64 * 1024
# After a burst of writes, look again this much later: the commit may become visible to readers
# only after its last write to the WAL file (the -shm update and the fsync come after it).
LATE_WAKEUPS_SECONDS: Final = (0.005, 0.03)


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

    def __init__(self, path: Path, names: frozenset[bytes]) -> None:
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
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE | _IN_MOVED_TO
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            error = ctypes.get_errno()
            os.close(fd)
            raise OSError(error, f"inotify_add_watch on {directory} failed")
        self.fd = fd
        self._names = names

    def relevant(self) -> bool:
        """Read every pending event; True if one concerns the database's files."""
        found = False
        while True:
            try:
                data = os.read(self.fd, _READ_BYTES)
            except BlockingIOError:
                return found
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                _wd, _mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                start = offset + _EVENT_HEADER.size
                name = data[start : start + length].rstrip(b"\0")
                found = found or name in self._names
                offset = start + length

    def close(self) -> None:
        os.close(self.fd)


@asynccontextmanager
async def _sqlite_feed(path: Path) -> AsyncIterator[ChangeFeed | None]:
    names = frozenset(os.fsencode(path.name + suffix) for suffix in ("", "-wal", "-journal"))
    try:
        watch = _Inotify(path, names)
    except (OSError, AttributeError) as exc:
        logger.debug("no inotify (%s): other processes' writes are noticed by polling", exc)
        yield None
        return
    loop = asyncio.get_running_loop()
    feed = ChangeFeed("inotify")
    late: list[asyncio.TimerHandle] = []

    def readable() -> None:
        if not watch.relevant():
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


@asynccontextmanager
async def _postgres_feed(engine: AsyncEngine) -> AsyncIterator[ChangeFeed | None]:
    feed = ChangeFeed("LISTEN/NOTIFY")

    def notified(*_args: Any) -> None:
        feed.poke()

    def lost(*_args: Any) -> None:
        logger.warning("the LISTEN connection to PostgreSQL closed; polling from now on")
        feed.mechanism = "poll"

    try:
        conn = await engine.connect()
    except Exception as exc:  # noqa: BLE001 - any failure here only means: poll instead
        logger.debug("no LISTEN connection (%s): other processes' writes are polled", exc)
        yield None
        return
    listening: ChangeFeed | None = feed
    try:
        raw: Any = (await conn.get_raw_connection()).driver_connection
        await raw.add_listener(UPDATES_CHANNEL, notified)
        raw.add_termination_listener(lost)
    except Exception as exc:  # noqa: BLE001 - not asyncpg, or LISTEN refused: poll instead
        logger.debug("could not LISTEN (%s): other processes' writes are polled", exc)
        listening = None
    try:
        yield listening
    finally:
        await conn.close()


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
