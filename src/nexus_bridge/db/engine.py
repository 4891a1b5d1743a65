"""Engine set-up: the SQLite pragmas that make a queued task durable, on every connection."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only as await_

WRITE_OPTION: Final = "nexus_bridge_write"


def ensure_sqlite_directory(database_url: str) -> None:
    """Create the directory of a SQLite file database, so a fresh machine just works."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_engine(
    database_url: str, *, busy_timeout_ms: int = 5_000, foreign_keys: bool = True
) -> AsyncEngine:
    """An async engine for ``database_url`` (``sqlite+aiosqlite://`` or ``postgresql+asyncpg://``).

    On SQLite every connection gets WAL, ``synchronous=FULL`` (a committed send survives power
    loss), foreign keys and a busy timeout; writes open with ``BEGIN IMMEDIATE`` so concurrent
    writers queue on the busy timeout instead of failing on a lock upgrade.
    """
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_async_engine(url, pool_pre_ping=True)

    ensure_sqlite_directory(database_url)
    engine = create_async_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so we can choose the BEGIN mode below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        # Straight to aiosqlite: one trip to its thread instead of three through a cursor.
        driver = connection.connection.driver_connection
        if driver is None:  # pragma: no cover - a pooled connection always has its driver
            raise RuntimeError("no aiosqlite connection to begin a transaction on")
        await_(driver.execute("BEGIN IMMEDIATE" if write else "BEGIN"))

    return engine
