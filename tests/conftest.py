"""Shared fixtures: real SQLite files and a real PostgreSQL database, migrated by real alembic."""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from sqlalchemy.engine import make_url

from nexus_bridge.app import BridgeServer, make_server
from nexus_bridge.config import Settings
from nexus_bridge.db import migrate
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.queue import QueueService
from nexus_bridge.relay import TelegramRelay

# python-telegram-bot warns (an error under filterwarnings=error) when it builds RetryAfter with
# an int; opting in to its timedelta form, which the transport handles, keeps 429s as RetryAfter.
os.environ.setdefault("PTB_TIMEDELTA", "true")

POSTGRES_ENV = "NEXUS_BRIDGE_TEST_POSTGRES_URL"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEADLINE_SECONDS = 20.0


def postgres_admin_url() -> str | None:
    """The PostgreSQL server for tests; when set, PostgreSQL tests must run (fail, not skip)."""
    return os.environ.get(POSTGRES_ENV) or None


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(url), timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def postgres_refuses_writes(database_url: str, refuse: bool = True) -> None:
    """Make a PostgreSQL test database read-only for every session (as a full disk or a standby
    would refuse writes), or writable again; its other connections are closed, so a pool opens
    new ones under the new setting."""
    name = make_url(database_url).database
    conn = await asyncpg.connect(_asyncpg_dsn(database_url), timeout=10)
    try:
        await conn.execute("SET default_transaction_read_only = off")  # this one, to ALTER
        value = "on" if refuse else "off"
        await conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {value}')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bridge.db'}"


@pytest.fixture(scope="session")
def migrated_postgres_template() -> Iterator[str]:
    """The name of a PostgreSQL database after a real ``alembic upgrade head``, once per session
    (an upgrade costs about 0.3 s and some 100 tests start from a migrated database)."""
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = f"nexus_template_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        migrate.upgrade(make_url(admin).set(database=name).render_as_string(hide_password=False))
        yield name
    finally:
        asyncio.run(_pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards: empty, or, for a test that
    asks for ``migrated_url`` or ``migrated_postgres_url``, a copy of the session's migrated
    template (``CREATE DATABASE …
    TEMPLATE`` costs what an empty one does)."""
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    name = f"nexus_test_{uuid.uuid4().hex[:12]}"
    create = f'CREATE DATABASE "{name}"'
    if {"migrated_url", "migrated_postgres_url"} & set(request.fixturenames):
        create += f' TEMPLATE "{request.getfixturevalue("migrated_postgres_template")}"'
    asyncio.run(_pg_admin(admin, create))
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """An empty database of each kind (not migrated)."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A SQLite file after a real ``alembic upgrade head``, checkpointed into one file, once per
    session: an upgrade costs about 0.5 s and some 430 tests start from a migrated file."""
    path = tmp_path_factory.mktemp("migrated") / "template.db"
    migrate.upgrade(f"sqlite+aiosqlite:///{path}")
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.read_bytes()


def _write_migrated(url: str, template: bytes) -> None:
    """The migrated template as this test's database file: owner-only, as the server makes it."""
    path = Path(str(make_url(url).database))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(template)


@pytest.fixture
def migrated_url(database_url: str, request: pytest.FixtureRequest) -> str:
    """The same database after a real ``alembic upgrade head``: a copy of the session's
    migrated file (SQLite) or database (PostgreSQL: ``postgres_url`` made it so)."""
    if make_url(database_url).get_backend_name() == "sqlite":
        _write_migrated(database_url, request.getfixturevalue("migrated_sqlite_template"))
    return database_url


@pytest.fixture
def migrated_postgres_url(postgres_url: str) -> str:
    """A PostgreSQL database at the schema's head (``postgres_url`` copies the template)."""
    return postgres_url


@pytest.fixture
def migrated_sqlite_url(sqlite_url: str, migrated_sqlite_template: bytes) -> str:
    """A SQLite file at the schema's head: a copy of the session's migrated file."""
    _write_migrated(sqlite_url, migrated_sqlite_template)
    return sqlite_url


@pytest.fixture
async def store(migrated_url: str) -> AsyncIterator[Store]:
    store = Store(create_engine(migrated_url))
    yield store
    await store.dispose()


@pytest.fixture
async def queue(store: Store) -> QueueService:
    return QueueService(store, max_message_chars=1_000, max_wait_seconds=5)


@pytest.fixture
def relay(store: Store, queue: QueueService) -> TelegramRelay:
    """The Telegram relay beside the ``queue`` fixture (same targets, clock and signal)."""
    return TelegramRelay(store, queue)


async def wait_for(
    condition: Callable[[], Any], *, deadline: float = DEADLINE_SECONDS, what: str = "condition"
) -> None:
    """Wait until ``condition()`` is truthy (it may be a coroutine function), within a deadline."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running_server(
    settings: Settings, *, port: int = 0
) -> AsyncIterator[tuple[str, BridgeServer]]:
    """A real uvicorn server for ``settings`` on loopback (an ephemeral port unless given)."""
    server = make_server(settings.model_copy(update={"host": "127.0.0.1", "port": port}))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.bound_port or task.done(), what="the server to start")
        if task.done():
            task.result()
            raise AssertionError("the server stopped during start-up")
        yield f"http://127.0.0.1:{server.bound_port}/mcp", server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=DEADLINE_SECONDS)


def free_port() -> int:
    """A loopback port that was free a moment ago (for settings that must name their URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def mcp_client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    """The SDK's own client over Streamable HTTP, optionally with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


@pytest.fixture
def make_settings(migrated_sqlite_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on a migrated SQLite file, with overrides."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": migrated_sqlite_url,
            "port": 0,
            "agent_token_file": tmp_path / "agent-token",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


def subprocess_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment for a ``nexus-bridge`` subprocess: only our variables, no stray .env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_BRIDGE_")}
    env["NEXUS_BRIDGE_DATABASE_URL"] = database_url
    # Not whatever may listen on the default port of this machine: a port nothing answers on.
    env["NEXUS_BRIDGE_URL"] = "http://127.0.0.1:9"
    database = make_url(database_url).database
    if make_url(database_url).get_backend_name() == "sqlite" and database:
        # Keep the default agent token beside the test's database, not in the real home.
        env["NEXUS_BRIDGE_AGENT_TOKEN_FILE"] = str(Path(database).parent / "agent-token")
        # ... and the standard configuration file too (none there unless a test writes one).
        env["XDG_CONFIG_HOME"] = str(Path(database).parent / "config")
    env.update(extra)
    return env
