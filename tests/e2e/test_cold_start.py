"""A server loads only what its configuration uses: without a Telegram target no Telegram
library, without PUBLIC_URL no OAuth authorization server, on SQLite no PostgreSQL dialect, and
no alembic to serve."""

from __future__ import annotations

import asyncio
import signal
import sys

import httpx2

from nexus_bridge.constants import READYZ_PATH
from tests.conftest import subprocess_env, wait_for
from tests.e2e.test_process import ServerProcess

# The server, started through the CLI's own entry point, reports at exit what it had loaded.
SERVE_AND_REPORT = """
import atexit, sys
from nexus_bridge.cli import main
WATCHED = ("telegram", "alembic", "nexus_bridge.oauth", "nexus_bridge.consent",
           "nexus_bridge.transports.telegram", "sqlalchemy.dialects.postgresql")
atexit.register(lambda: print(
    "loaded at exit:", ",".join(m for m in WATCHED if m in sys.modules) or "-",
    file=sys.stderr, flush=True))
sys.exit(main(["serve", "--host", "127.0.0.1", "--port", "0"]))
"""


async def test_a_server_without_telegram_or_public_url_loads_neither(
    migrated_sqlite_url: str,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE_AND_REPORT,
        env=subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_LOG_LEVEL="INFO"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    server = ServerProcess(proc)
    try:
        await wait_for(lambda: server.url is not None or server.reader.done(), what="listening")
        assert server.url is not None, server.log
        async with httpx2.AsyncClient() as http:
            ready = await http.get(server.url.removesuffix("/mcp") + READYZ_PATH)
        assert ready.status_code == 200, ready.text
        proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0, server.log
        await server.reader
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert "loaded at exit: -" in server.log, server.log
