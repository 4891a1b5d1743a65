"""Engine set-up: the SQLite pragmas that make a queued task durable, on every connection."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.util import await_only as await_

from nexus_bridge.constants import PRIVATE_DIRECTORY_MODE, PRIVATE_FILE_MODE, WAL_LIMIT_BYTES
from nexus_bridge.db.models import declare_postgresql_options
from nexus_bridge.errors import ConfigError

logger = logging.getLogger(__name__)

WRITE_OPTION: Final = "nexus_bridge_write"
DATABASE_VARIABLE: Final = "NEXUS_BRIDGE_DATABASE_URL"
# The database holds client secrets, token hashes, the passphrase hash and every task: only its
# owner may read it. SQLite gives the -wal and -shm files the database file's mode.
DATA_DIRECTORY_MODE: Final = PRIVATE_DIRECTORY_MODE
DATABASE_FILE_MODE: Final = PRIVATE_FILE_MODE


def sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite database URL, or None (PostgreSQL, or in memory): its real path,
    where SQLite puts its ``-wal`` and ``-shm`` files when the URL names a symbolic link."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).expanduser().resolve()
    return None


def prepare_sqlite_file(database_url: str) -> None:
    """Create a SQLite database's directory (0700) and empty file (0600) before SQLite opens it,
    so a fresh machine just works and nobody else can read the queue; warn about a database
    file others can read.

    Raises:
        ConfigError: the directory or the file cannot be created; the message names the path.
    """
    path = sqlite_file(database_url)
    if path is None:
        return
    try:
        path.parent.mkdir(mode=DATA_DIRECTORY_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE)
    except FileExistsError:
        if path.is_dir():
            raise ConfigError(
                f"{DATABASE_VARIABLE}: {path} is a directory; name a file in it, "
                f"e.g. {path / 'bridge.db'}"
            ) from None
        if not path.parent.is_dir():
            raise ConfigError(
                f"{DATABASE_VARIABLE}: {path.parent} is not a directory; choose another path"
            ) from None
        _warn_if_readable_by_others(path)
        return
    except OSError as exc:
        raise ConfigError(
            f"{DATABASE_VARIABLE}: cannot create the database {path}: {exc.strerror} "
            f"({exc.filename}); choose a directory you can write"
        ) from None
    os.close(fd)


def _warn_if_readable_by_others(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "%s is readable by other users (mode %o); it holds secrets and every task: "
            "chmod 600 %s*",
            path,
            mode,
            path,
        )


SERVER_LOCK_SUFFIX: Final = ".lock"


def server_lock_path(database_url: str) -> Path | None:
    """The lock file beside a SQLite database that every server holds while it runs."""
    path = sqlite_file(database_url)
    return None if path is None else path.with_name(path.name + SERVER_LOCK_SUFFIX)


class ServerLock:
    """An advisory lock (``flock``) on the file beside a SQLite database.

    Every server holds it shared for as long as it runs (several servers may share a database);
    ``restore`` takes it exclusively, so it refuses while any server runs and no server starts
    while it swaps the files. The kernel drops the lock when its process dies, however it dies,
    so there is never a stale lock to clean up.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def try_acquire(cls, database_url: str, *, exclusive: bool) -> ServerLock | None:
        """The lock, or None if it is held the other way (a server, or a restore, has it).
        A PostgreSQL database has no lock file: the lock is a no-op there.

        Raises:
            ConfigError: the lock file cannot be created or opened.
        """
        path = server_lock_path(database_url)
        if path is None:
            return cls(-1, Path())
        try:
            path.parent.mkdir(mode=DATA_DIRECTORY_MODE, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, DATABASE_FILE_MODE)
        except OSError as exc:
            raise ConfigError(
                f"{DATABASE_VARIABLE}: cannot open the server lock file {path}: {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None and self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
        self._fd = None


@dataclass(frozen=True, slots=True)
class SqliteOptions:
    """What every SQLite connection of an engine is set up with (see :func:`create_engine`)."""

    busy_timeout_ms: int
    foreign_keys: bool


# The options each SQLite engine was made with, so the store's writer opens its own connection
# the same way (keyed by the async engine's sync engine; gone with it).
_SQLITE_OPTIONS: weakref.WeakKeyDictionary[Engine, SqliteOptions] = weakref.WeakKeyDictionary()


def _set_pragmas(engine: Engine, options: SqliteOptions) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so we can choose the BEGIN mode below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if options.foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={int(options.busy_timeout_ms)}")
        # When SQLite restarts the write-ahead log, it cuts the file back to this size (it
        # would otherwise keep the largest size it ever reached).
        cursor.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        cursor.close()


def create_engine(
    database_url: str, *, busy_timeout_ms: int = 5_000, foreign_keys: bool = True
) -> AsyncEngine:
    """An async engine for ``database_url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``).

    SQL parameters (task text, OAuth values) never appear in an error or a log line.
    On SQLite every connection gets WAL, ``synchronous=FULL`` (a committed send survives power
    loss), foreign keys and a busy timeout; writes open with ``BEGIN IMMEDIATE`` so concurrent
    writers queue on the busy timeout instead of failing on a lock upgrade.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        declare_postgresql_options()
        return create_async_engine(url, pool_pre_ping=True, hide_parameters=True)

    prepare_sqlite_file(database_url)
    options = SqliteOptions(busy_timeout_ms=busy_timeout_ms, foreign_keys=foreign_keys)
    engine = create_async_engine(
        url, connect_args={"timeout": busy_timeout_ms / 1000}, hide_parameters=True
    )
    _set_pragmas(engine.sync_engine, options)
    _SQLITE_OPTIONS[engine.sync_engine] = options

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        # Straight to aiosqlite: one trip to its thread instead of three through a cursor.
        driver = connection.connection.driver_connection
        if driver is None:  # pragma: no cover - a pooled connection always has its driver
            raise RuntimeError("no aiosqlite connection to begin a transaction on")
        await_(driver.execute("BEGIN IMMEDIATE" if write else "BEGIN"))

    return engine


def create_writer_engine(engine: AsyncEngine) -> Engine:
    """A synchronous (``sqlite3``) engine on the same SQLite file as ``engine``, with the same
    pragmas, for the store's single writer thread. Every transaction on it begins with ``BEGIN
    IMMEDIATE``: it only ever writes."""
    options = _SQLITE_OPTIONS.get(engine.sync_engine) or SqliteOptions(
        busy_timeout_ms=5_000, foreign_keys=True
    )
    writer = sqlalchemy.create_engine(
        engine.url.set(drivername="sqlite"),
        connect_args={"timeout": options.busy_timeout_ms / 1000, "check_same_thread": False},
        poolclass=NullPool,
        hide_parameters=True,
    )
    _set_pragmas(writer, options)

    @event.listens_for(writer, "begin")
    def _on_begin(connection: Connection) -> None:
        driver = connection.connection.driver_connection
        if driver is None:  # pragma: no cover - a pooled connection always has its driver
            raise RuntimeError("no sqlite3 connection to begin a transaction on")
        driver.execute("BEGIN IMMEDIATE")

    return writer
