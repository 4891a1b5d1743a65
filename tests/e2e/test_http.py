"""Every tool over Streamable HTTP: a real uvicorn server and the SDK's own client."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.app import BridgeHttpProtocol
from nexus_bridge.config import Settings
from nexus_bridge.db import migrate
from tests.conftest import DEADLINE_SECONDS, mcp_client, running_server, subprocess_env

TOOLS = {
    "send_message",
    "pull_updates",
    "queue_status",
    "get_message",
    "list_messages",
    "cancel_message",
    "reply_to_task",
    "list_targets",
}
TOKEN_A = "token-a-" + "a" * 32
TOKEN_B = "token-b-" + "b" * 32
INIT_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
}


async def call(client: Any, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    text = result.content[0].text
    assert json.loads(text) == result.structured_content  # the same JSON as text
    return dict(result.structured_content)


async def call_error(client: Any, tool: str, args: dict[str, Any]) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error
    text: str = result.content[0].text
    assert "\n" not in text
    assert "Traceback" not in text
    return text


async def test_every_tool_works_over_http(make_settings: Callable[..., Settings]) -> None:
    async with running_server(make_settings()) as (url, _), mcp_client(url) as client:
        listed = (await client.list_tools()).tools
        assert {t.name for t in listed} == TOOLS
        for tool in listed:
            assert tool.output_schema is not None, tool.name
            assert tool.description, tool.name

        sent = await call(client, "send_message", {"message": "Fix the DNS record *now*"})
        assert sent["queued"] is True
        task_id = sent["id"]
        dup = await call(client, "send_message", {"message": "Fix the DNS record *now*  "})
        assert dup == {"queued": False, "id": task_id, "status": "pending", "reason": "duplicate"}

        pulled = await call(client, "pull_updates", {})
        assert [u["message_id"] for u in pulled["updates"]] == [task_id]
        assert pulled["updates"][0]["kind"] == "status"
        assert pulled["updates"][0]["created_at"].endswith("+00:00")
        assert pulled["has_more"] is False
        assert (await call(client, "pull_updates", {}))["updates"] == []

        status = await call(client, "queue_status", {})
        assert status["pending"] == 1
        assert status["total_updates"] == 1
        assert status["current_task"] is None

        got = await call(client, "get_message", {"id": task_id})
        assert got["content"] == "Fix the DNS record *now*"
        assert got["status"] == "pending"
        assert len(got["updates"]) == 1

        listed_tasks = await call(client, "list_messages", {"status": "pending"})
        assert [m["id"] for m in listed_tasks["messages"]] == [task_id]

        cancelled = await call(client, "cancel_message", {"id": task_id, "reason": "test"})
        assert cancelled["status"] == "cancelled"
        assert cancelled["ended_at"] is not None
        again = await call_error(client, "cancel_message", {"id": task_id})
        assert "already ended as cancelled" in again

        history = await call(client, "pull_updates", {"message_id": task_id})
        assert [u["content"] for u in history["updates"]] == [
            "status: pending (queued)",
            "status: pending → cancelled (test)",
        ]


BAD_CALLS = [
    ("send_message", {"message": ""}, "message is empty"),
    ("send_message", {"message": " \n\t "}, "message is empty"),
    ("send_message", {"message": "x" * 2_001}, "over the limit of 2000"),
    ("send_message", {"message": "hi", "target": "mars"}, "unknown target 'mars'"),
    ("send_message", {}, "invalid arguments for send_message: message"),
    ("get_message", {"id": "does-not-exist"}, "no task with id 'does-not-exist'"),
    ("cancel_message", {"id": "does-not-exist"}, "no task with id"),
    ("pull_updates", {"since": "yesterday"}, "since must be an ISO-8601 time"),
    ("pull_updates", {"since": "2026-01-01T00:00:00Z", "cursor": "1"}, "not both"),
    ("pull_updates", {"cursor": "-5"}, "cursor must be a next_cursor value"),
    ("pull_updates", {"limit": 0}, "limit must be between 1 and 1000"),
    ("pull_updates", {"limit": "many"}, "invalid arguments for pull_updates: limit"),
    ("pull_updates", {"message_id": "nope"}, "no task with id 'nope'"),
    ("pull_updates", {"wait_seconds": -1}, "wait_seconds must be 0 or more"),
    ("list_messages", {"limit": 5_000}, "limit must be between 1 and 200"),
    ("list_messages", {"status": "finished"}, "invalid arguments for list_messages: status"),
    ("list_messages", {"before": "nope"}, "no task with id 'nope'"),
    ("queue_status", {"target": "mars"}, "unknown target 'mars'"),
]


async def test_bad_input_is_a_one_line_tool_error_and_nothing_is_written(
    make_settings: Callable[..., Settings],
) -> None:
    async with (
        running_server(make_settings(max_message_chars=2_000)) as (url, _),
        mcp_client(url) as client,
    ):
        for tool, args, expected in BAD_CALLS:
            text = await call_error(client, tool, args)
            assert expected in text, (tool, args, text)
        # The server kept serving, and no call left anything behind.
        status = await call(client, "queue_status", {})
        assert sum(status[s] for s in ("pending", "cancelled", "complete")) == 0
        assert status["total_updates"] == 0


async def test_fifty_concurrent_identical_sends_queue_exactly_one(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings()) as (url, _):

        async def five_sends() -> list[dict[str, Any]]:
            async with mcp_client(url) as client:
                return list(
                    await asyncio.gather(
                        *(
                            call(client, "send_message", {"message": "reboot the NAS"})
                            for _ in range(5)
                        )
                    )
                )

        batches = await asyncio.gather(*(five_sends() for _ in range(10)))
        results = [r for batch in batches for r in batch]
        assert len(results) == 50
        queued = [r for r in results if r["queued"]]
        assert len(queued) == 1
        duplicates = [r for r in results if not r["queued"]]
        assert len(duplicates) == 49
        assert {r["id"] for r in duplicates} == {queued[0]["id"]}
        assert {r["reason"] for r in duplicates} == {"duplicate"}
        async with mcp_client(url) as client:
            assert (await call(client, "queue_status", {}))["pending"] == 1


async def test_without_a_valid_token_mcp_answers_401_with_www_authenticate(
    make_settings: Callable[..., Settings],
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with running_server(make_settings(auth_tokens=[TOKEN_A])) as (url, _):
        async with create_mcp_http_client() as http:
            for headers in ({}, {"Authorization": "Bearer wrong-" + "x" * 30}):
                response = await http.post(url, json=body, headers={**INIT_HEADERS, **headers})
                assert response.status_code == 401
                assert response.headers["www-authenticate"].startswith("Bearer")
            # Liveness stays open and says nothing.
            health = await http.get(url.removesuffix("/mcp") + "/healthz")
            assert health.status_code == 200
            assert health.json() == {"status": "ok"}
        with pytest.raises(Exception):  # noqa: B017, PT011 - the SDK's error for a 401
            async with mcp_client(url) as client:
                await client.list_tools()
        async with mcp_client(url, TOKEN_A) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS


async def test_tokens_never_reach_the_logs(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_server(make_settings(auth_tokens=[TOKEN_A])) as (url, _):
        async with mcp_client(url, TOKEN_A) as client:
            await call(client, "send_message", {"message": "log test"})
            await call_error(client, "get_message", {"id": "nope"})
        async with create_mcp_http_client() as http:
            await http.post(url, json={}, headers={**INIT_HEADERS, "Authorization": "Bearer x"})
    assert caplog.records, "expected the server to log something"
    assert TOKEN_A not in caplog.text


async def test_each_token_has_its_own_pull_cursor(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(auth_tokens=[TOKEN_A, TOKEN_B])
    async with (
        running_server(settings) as (url, _),
        mcp_client(url, TOKEN_A) as alice,
        mcp_client(url, TOKEN_B) as bob,
    ):
        first = await call(alice, "send_message", {"message": "one"})
        assert [u["message_id"] for u in (await call(alice, "pull_updates", {}))["updates"]] == [
            first["id"]
        ]
        second = await call(bob, "send_message", {"message": "two"})
        alice_next = (await call(alice, "pull_updates", {}))["updates"]
        bob_all = (await call(bob, "pull_updates", {}))["updates"]
        assert [u["message_id"] for u in alice_next] == [second["id"]]
        assert [u["message_id"] for u in bob_all] == [first["id"], second["id"]]


async def test_a_waiting_pull_over_http_returns_when_an_update_lands(
    make_settings: Callable[..., Settings],
) -> None:
    async with (
        running_server(make_settings()) as (url, _),
        mcp_client(url) as waiter_client,
        mcp_client(url) as sender,
    ):
        waiter = asyncio.create_task(
            call(waiter_client, "pull_updates", {"cursor": "0", "wait_seconds": 20})
        )
        sent = await call(sender, "send_message", {"message": "wake the waiter"})
        result = await asyncio.wait_for(waiter, timeout=10)
        assert [u["message_id"] for u in result["updates"]] == [sent["id"]]


async def test_dns_rebinding_protection_refuses_foreign_hosts_unless_allowed(
    make_settings: Callable[..., Settings],
) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    settings = make_settings(allowed_hosts=["bridge.example.net"])
    async with running_server(settings) as (url, _):
        async with create_mcp_http_client() as http:
            evil = await http.post(url, json=body, headers={**INIT_HEADERS, "Host": "evil.example"})
            assert evil.status_code == 421
        async with (
            create_mcp_http_client(headers={"Host": "bridge.example.net"}) as http,
            Client(streamable_http_client(url, http_client=http)) as client,
        ):
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS


async def test_readyz_reports_a_database_that_is_not_at_head(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with running_server(settings) as (url, _):
        base = url.removesuffix("/mcp")
        async with create_mcp_http_client() as http:
            ready = await http.get(base + "/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "ready"
            assert ready.json()["transport"]["state"] == "not configured"
            await asyncio.to_thread(migrate.downgrade, settings.database_url, "base")
            not_ready = await http.get(base + "/readyz")
            assert not_ready.status_code == 503
            assert "nexus-bridge db upgrade" in not_ready.json()["reason"]


@pytest.mark.parametrize(
    ("host", "env", "named"),
    [
        ("0.0.0.0", {}, "listen on 0.0.0.0"),
        ("127.0.0.1", {"NEXUS_BRIDGE_ALLOWED_HOSTS": "mcp.example.net"}, "mcp.example.net"),
    ],
)
def test_serving_beyond_loopback_without_auth_is_refused(
    migrated_sqlite_url: str, host: str, env: dict[str, str], named: str
) -> None:
    exe = str(Path(sys.executable).with_name("nexus-bridge"))
    result = subprocess.run(
        [exe, "serve", "--host", host, "--port", "0"],
        env=subprocess_env(migrated_sqlite_url, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert named in result.stderr
    assert "NEXUS_BRIDGE_AUTH_TOKENS" in result.stderr
    assert "ALLOW_UNAUTHENTICATED" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


async def test_a_request_that_does_not_arrive_whole_in_time_closes_its_connection(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle or crawling sockets cannot hold the process's open files for ever (slowloris): not
    before a first request, not in a head, not in a body (sized or chunked), not in a later
    request's head, not in a request pipelined behind a whole one."""
    monkeypatch.setattr(BridgeHttpProtocol, "REQUEST_SECONDS", 0.5)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    body_head = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n"
    async with running_server(make_settings()) as (url, server):
        port = server.bound_port
        assert port is not None
        connections = []
        chunked = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        pipelined = head + b"\r\n"  # a whole request, then one behind it that never ends
        for sent in (
            b"",
            head,
            body_head + b"{",
            chunked + b"1\r\n{\r\n",
            pipelined + body_head + b"{",
            pipelined + chunked + b"1\r\n{\r\n",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(sent)  # and no more
            await writer.drain()
            connections.append((reader, writer))
        # Kept alive after a whole request and its answer, then a second head that crawls.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(head)
        await writer.drain()
        connections.append((reader, writer))
        for reader, writer in connections:
            answered = await asyncio.wait_for(reader.read(), DEADLINE_SECONDS)
            assert answered.count(b"HTTP/1.1 ") <= 1  # only a whole request's (the pipelined)
            writer.close()
            await writer.wait_closed()
        async with httpx2.AsyncClient() as http:  # a request that comes at once is served
            assert (await http.get(url.removesuffix("/mcp") + "/healthz")).status_code == 200


async def test_stateless_mcp_requests_log_nothing_below_warning(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Every stateless request ends its one-request "session": the SDK said so at INFO, one
    line a call (4,500 of 10,856 lines of a probe's soak), drowning what the owner needs."""
    from nexus_bridge.logs import quiet_noisy_loggers

    with caplog.at_level(logging.INFO):
        quiet_noisy_loggers()  # as every command's logging set-up does, after the root's level
        async with running_server(make_settings()) as (url, _), mcp_client(url) as client:
            for _ in range(3):
                await call(client, "queue_status", {})
    chatter = [r.getMessage() for r in caplog.records if r.name.startswith("mcp.")]
    assert chatter == []


async def test_a_flood_of_refused_requests_logs_a_line_a_minute_not_a_line_each(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who can reach the port can make the server refuse a request: 50 with a foreign
    Host used to log 50 warnings (a disk's worth over months of a scanner)."""
    from nexus_bridge.logs import OncePerInterval, limit_refused_request_logs

    app_log = logging.getLogger("nexus_bridge.app")
    limit_refused_request_logs()  # as configure_logging does; taken off again below
    limits = [f for f in app_log.filters if isinstance(f, OncePerInterval)]
    try:
        with caplog.at_level(logging.WARNING, logger="nexus_bridge.app"):
            async with running_server(make_settings()) as (url, _), httpx2.AsyncClient() as http:
                for _ in range(50):
                    refused = await http.get(url, headers={"Host": "evil.example"})
                    assert refused.status_code in (403, 421)
    finally:
        for limit in limits:
            app_log.removeFilter(limit)
    lines = [r for r in caplog.records if "not an allowed host name" in r.getMessage()]
    assert len(lines) == 1
