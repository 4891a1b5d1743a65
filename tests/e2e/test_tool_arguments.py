"""Every tool argument on both MCP servers is bounded and checked: a malformed one is a one-line
tool error naming the field (never an internal error), and nothing is written. Also what
tools/list shows: descriptions without source indentation, honest annotations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexus_bridge.config import Settings
from tests.conftest import mcp_client, running_server
from tests.e2e.test_agent_api import FELT_TOKEN, agent_client, two_targets
from tests.e2e.test_http import call, call_error

LONG = "a" * 50_000
NAN_WAITS = ["nan", "NaN", "inf", "-Infinity"]

CLIENT_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("pull_updates", {"cursor": "²"}, "cursor must be a next_cursor value"),
    ("pull_updates", {"cursor": "1" * 30}, "cursor must be a next_cursor value"),
    ("pull_updates", {"cursor": LONG}, "cursor must be a next_cursor value"),
    ("pull_updates", {"cursor": 1.5}, "cursor"),
    ("pull_updates", {"since": "0001-01-01T00:00:00+14:00"}, "since is out of range"),
    ("pull_updates", {"since": LONG}, "since must be an ISO-8601 time"),
    ("pull_updates", {"message_id": LONG}, "message_id must be a task id"),
    ("pull_updates", {"limit": 10**30}, "limit must be between 1 and 1000"),
    *[
        ("pull_updates", {"wait_seconds": w}, "wait_seconds: Input should be a finite number")
        for w in NAN_WAITS
    ],
    ("get_message", {"id": LONG}, "id must be a task id"),
    ("get_message", {"id": ""}, "id must be a task id"),
    ("get_message", {"id": "3f2a\x009c1e"}, "no task with id"),
    ("cancel_message", {"id": LONG}, "id must be a task id"),
    ("reply_to_task", {"id": LONG, "text": "x"}, "id must be a task id"),
    ("send_message", {"message": "nul \x00 byte"}, "message contains a NUL character"),
    ("send_message", {"message": "x", "target": LONG}, "target must be at most 100 characters"),
    ("list_messages", {"before": LONG}, "before must be a task id"),
    ("list_messages", {"target": LONG}, "target must be at most 100 characters"),
    ("queue_status", {"target": LONG}, "target must be at most 100 characters"),
]


async def test_malformed_client_arguments_are_one_line_errors_naming_the_field(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings()) as (url, _), mcp_client(url) as client:
        for tool, args, expected in CLIENT_CALLS:
            text = await call_error(client, tool, args)
            assert expected in text, (tool, args, text)
            assert "internal error" not in text
            assert len(text) < 300, (tool, text[:100])
        task = await call(client, "send_message", {"message": "to be cancelled"})
        for args, expected in (
            ({"id": task["id"], "reason": LONG}, "reason is 50000 characters"),
            ({"id": task["id"], "reason": "why\x00"}, "reason contains a NUL character"),
        ):
            assert expected in await call_error(client, "cancel_message", args)
        assert "text contains a NUL" in await call_error(
            client, "reply_to_task", {"id": task["id"], "text": "\x00"}
        )
        status = await call(client, "queue_status", {})
        assert status["pending"] == 1  # only the one good send
        assert status["cancelled"] == 0
        assert status["total_updates"] == 1


async def test_digits_sent_as_numbers_are_taken_as_a_cursor_or_an_id(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings()) as (url, _), mcp_client(url) as client:
        await call(client, "send_message", {"message": "one"})
        page = await call(client, "pull_updates", {"cursor": 0})
        assert len(page["updates"]) == 1
        assert (await call(client, "pull_updates", {"cursor": int(page["next_cursor"])}))[
            "updates"
        ] == []
        assert "no task with id '12345678'" in await call_error(
            client, "get_message", {"id": 12345678}
        )
        assert "id" in await call_error(client, "get_message", {"id": True})


AGENT_CALLS: list[tuple[str, dict[str, Any], str]] = [
    *[
        ("next_task", {"wait_seconds": w}, "wait_seconds: Input should be a finite number")
        for w in NAN_WAITS
    ],
    ("next_task", {"wait_seconds": -1}, "wait_seconds must be 0 or more"),
    ("start_task", {"id": LONG}, "id must be a task id"),
    ("heartbeat", {"id": LONG}, "id must be a task id"),
    ("post_update", {"id": LONG, "text": "x"}, "id must be a task id"),
    ("get_replies", {"id": LONG}, "id must be a task id"),
    ("complete_task", {"id": LONG}, "id must be a task id"),
    ("fail_task", {"id": LONG, "error": "x"}, "id must be a task id"),
]


async def test_malformed_agent_arguments_are_one_line_errors_naming_the_field(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        sent = await call(client, "send_message", {"message": "job", "target": "nexus:felt"})
        async with agent_client(url.removesuffix("/mcp"), FELT_TOKEN) as agent:
            for tool, args, expected in AGENT_CALLS:
                text = await call_error(agent, tool, args)
                assert expected in text, (tool, args, text)
                assert "internal error" not in text
            task_id = (await call(agent, "next_task", {}))["task"]["id"]
            assert task_id == sent["id"]
            for tool, args, expected in (
                ("post_update", {"text": "nul\x00"}, "text contains a NUL character"),
                ("ask_question", {"text": "nul\x00"}, "text contains a NUL character"),
                ("complete_task", {"summary": "nul\x00"}, "summary contains a NUL character"),
                ("fail_task", {"error": "nul\x00"}, "error contains a NUL character"),
                ("get_replies", {"cursor": "²"}, "cursor must be a next_cursor value"),
                ("get_replies", {"cursor": "9" * 30}, "cursor must be a next_cursor value"),
                ("heartbeat", {"session": "s" * 201}, "session must be 1 to 200 characters"),
                ("heartbeat", {"session": ""}, "session must be 1 to 200 characters"),
                ("heartbeat", {"session": "a b\nc"}, "session may hold only letters, digits"),
                ("heartbeat", {"session": 7}, "session"),
            ):
                text = await call_error(agent, tool, {"id": task_id, **args})
                assert expected in text, (tool, args, text)
            assert (await call(agent, "get_replies", {"id": task_id, "cursor": 0}))["replies"] == []
        task = await call(client, "get_message", {"id": task_id})
        assert task["status"] == "acknowledged"
        assert [u["kind"] for u in task["updates"]] == ["status", "status"]
        assert "agent_session" not in task  # the agent's own, not the client's


@pytest.mark.parametrize("endpoint", ["/mcp", "/agent/mcp"])
async def test_tool_descriptions_carry_no_source_indentation(
    make_settings: Callable[..., Settings], tmp_path: Path, endpoint: str
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, _):
        base = url.removesuffix("/mcp")
        if endpoint == "/mcp":
            async with mcp_client(url) as client:
                tools = (await client.list_tools()).tools
        else:
            async with agent_client(base, FELT_TOKEN) as agent:
                tools = (await agent.list_tools()).tools
    assert tools
    for tool in tools:
        description = tool.description or ""
        assert description, tool.name
        for line in description.splitlines():
            assert line == line.lstrip(), (tool.name, line)
    by_name = {t.name: t for t in tools}
    if "pull_updates" in by_name:
        # It moves this client's remembered position: not read-only, and not idempotent.
        annotations = by_name["pull_updates"].annotations
        assert annotations is not None
        assert annotations.read_only_hint is False
        assert annotations.idempotent_hint is False
