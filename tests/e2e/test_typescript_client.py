"""End to end with the official TypeScript MCP SDK client (tests/ts/client.mjs) against the server.

Needs ``node`` and ``tests/ts/node_modules`` (``make node-deps``). Without them the tests skip,
unless NEXUS_BRIDGE_REQUIRE_NODE is set, in which case they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from nexus_bridge.config import Settings
from tests.conftest import REPO_ROOT, running_server

TS_DIR = REPO_ROOT / "tests" / "ts"
CLIENT = TS_DIR / "client.mjs"
SDK_PACKAGE = TS_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
REQUIRE_NODE_ENV = "NEXUS_BRIDGE_REQUIRE_NODE"
TOKEN_ENV = "NEXUS_BRIDGE_TOKEN"
CLIENT_TIMEOUT_SECONDS = 60.0
from tests.e2e.test_http import TOOLS  # noqa: E402


@dataclass
class ClientRun:
    returncode: int
    stdout: str
    stderr: str

    def observed(self) -> dict[str, Any]:
        assert self.returncode == 0, (
            f"the TypeScript client failed (exit {self.returncode}):\n{self.stderr}"
        )
        result = json.loads(self.stdout)
        assert isinstance(result, dict)
        return result


def node_or_skip() -> str:
    """The ``node`` executable; skips (or fails, if required) when node or the SDK is missing."""
    node = shutil.which("node")
    if node is None:
        problem = "node is not on PATH"
    elif not SDK_PACKAGE.is_file():
        problem = f"{TS_DIR / 'node_modules'} is missing; run: make node-deps"
    else:
        return node
    message = f"the TypeScript SDK client test cannot run: {problem}"
    if os.environ.get(REQUIRE_NODE_ENV):
        pytest.fail(f"{message} ({REQUIRE_NODE_ENV} is set, so this is an error)")
    pytest.skip(message)


async def run_client(node: str, url: str, token: str | None = None) -> ClientRun:
    """Run ``node client.mjs <url>`` without blocking the loop the server runs in."""
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token is not None:
        env[TOKEN_ENV] = token
    proc = await asyncio.create_subprocess_exec(
        node,
        str(CLIENT),
        url,
        cwd=TS_DIR,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        stdout, stderr = await proc.communicate()
        raise AssertionError(
            f"the TypeScript client did not finish within {CLIENT_TIMEOUT_SECONDS}s\n"
            f"stdout: {stdout.decode(errors='replace')}\nstderr: {stderr.decode(errors='replace')}"
        ) from None
    assert proc.returncode is not None
    return ClientRun(proc.returncode, stdout.decode(), stderr.decode())


def check_session(observed: dict[str, Any]) -> None:
    """What one run of client.mjs saw, against a server whose database started empty."""
    assert set(observed["tools"]) == TOOLS

    first, second = observed["send1"], observed["send2"]
    assert first["queued"] is True
    assert first["reason"] is None
    assert first["status"] == "pending"
    task_id = first["id"]
    assert isinstance(task_id, str)
    assert task_id
    assert second == {"queued": False, "id": task_id, "status": "pending", "reason": "duplicate"}

    pull = observed["pull"]
    assert task_id in {u["message_id"] for u in pull["updates"]}
    assert pull["has_more"] is False
    assert pull["next_cursor"]

    status = observed["status"]
    # One task was queued (the duplicate added nothing) and nothing has picked it up yet.
    assert status["pending"] == 1
    assert status["acknowledged"] == status["in_progress"] == 0
    assert status["complete"] == status["error"] == status["cancelled"] == 0
    assert status["total_updates"] >= len(pull["updates"])

    got = observed["get"]
    assert got["id"] == task_id
    assert got["content"] == observed["text"]
    assert got["status"] == "pending"
    assert task_id in {u["message_id"] for u in got["updates"]}

    listed = observed["list"]["messages"]
    assert [m["id"] for m in listed] == [task_id]
    assert listed[0]["status"] == "pending"

    cancelled = observed["cancel"]
    assert cancelled["id"] == task_id
    assert cancelled["status"] == "cancelled"
    assert cancelled["status_reason"] == "ts e2e test"
    assert cancelled["ended_at"] is not None

    bad = observed["bad"]
    assert bad["isError"] is True
    assert "empty" in bad["text"]


async def test_typescript_client_uses_every_tool(
    make_settings: Callable[..., Settings],
) -> None:
    node = node_or_skip()
    async with running_server(make_settings()) as (url, _):
        run = await run_client(node, url)
    check_session(run.observed())


async def test_typescript_client_needs_the_bearer_token(
    make_settings: Callable[..., Settings],
) -> None:
    node = node_or_skip()
    token = secrets.token_urlsafe(24)
    assert len(token) == 32
    async with running_server(make_settings(auth_tokens=[token])) as (url, _):
        refused = {
            "no token": await run_client(node, url),
            "wrong token": await run_client(node, url, token=secrets.token_urlsafe(24)),
        }
        accepted = await run_client(node, url, token=token)

    for case, run in refused.items():
        assert run.returncode != 0, f"{case}: the client was let in:\n{run.stdout}"
        assert "error code: 401" in run.stderr, (
            f"{case}: no 401 in the client's error:\n{run.stderr}"
        )
        assert run.stdout == "", f"{case}: the client printed a result:\n{run.stdout}"
    check_session(accepted.observed())
