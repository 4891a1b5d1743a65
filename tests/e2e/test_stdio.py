"""Every tool over stdio: the SDK's stdio client spawns `nexus-bridge serve --stdio`."""

from __future__ import annotations

import sys
from pathlib import Path

from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.conftest import subprocess_env
from tests.e2e.test_http import TOOLS, call, call_error


def stdio_params(database_url: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=str(Path(sys.executable).with_name("nexus-bridge")),
        args=["serve", "--stdio"],
        env=subprocess_env(database_url),
    )


async def test_every_tool_works_over_stdio(migrated_sqlite_url: str) -> None:
    async with Client(stdio_params(migrated_sqlite_url)) as client:
        assert {t.name for t in (await client.list_tools()).tools} == TOOLS
        sent = await call(client, "send_message", {"message": "over stdio"})
        assert sent["queued"] is True
        dup = await call(client, "send_message", {"message": "over stdio"})
        assert dup["queued"] is False
        assert dup["id"] == sent["id"]
        pulled = await call(client, "pull_updates", {})
        assert [u["message_id"] for u in pulled["updates"]] == [sent["id"]]
        assert (await call(client, "pull_updates", {}))["updates"] == []
        assert (await call(client, "queue_status", {}))["pending"] == 1
        assert (await call(client, "get_message", {"id": sent["id"]}))["content"] == "over stdio"
        listed = await call(client, "list_messages", {})
        assert [m["id"] for m in listed["messages"]] == [sent["id"]]
        cancelled = await call(client, "cancel_message", {"id": sent["id"]})
        assert cancelled["status"] == "cancelled"
        assert "message is empty" in await call_error(client, "send_message", {"message": " "})
        assert "no task with id" in await call_error(client, "get_message", {"id": "nope"})
        # Still serving after the errors.
        assert (await call(client, "queue_status", {}))["cancelled"] == 1


async def test_tasks_sent_over_stdio_outlive_the_process(migrated_sqlite_url: str) -> None:
    async with Client(stdio_params(migrated_sqlite_url)) as client:
        sent = await call(client, "send_message", {"message": "persisted"})
    async with Client(stdio_params(migrated_sqlite_url)) as client:
        got = await call(client, "get_message", {"id": sent["id"]})
        assert got["status"] == "pending"
