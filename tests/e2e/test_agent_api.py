"""The direct agent API (/agent/mcp): token scoping, atomic claims under a race on SQLite and
PostgreSQL, the agent CLI, and stall detection with an injectable clock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.config import Settings
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.domain import TargetPolicy, TaskStatus
from nexus_bridge.queue import QueueService
from tests.conftest import mcp_client, running_server, subprocess_env
from tests.e2e.test_http import call, call_error

CLIENT_TOKEN = "client-token-" + "c" * 30
FELT_TOKEN = "felt-agent-token-" + "f" * 20
SENTRY_TOKEN = "sentry-agent-token-" + "s" * 20
EXE = str(Path(sys.executable).with_name("nexus-bridge"))
AGENT_TOOLS = {
    "next_task",
    "start_task",
    "heartbeat",
    "post_update",
    "ask_question",
    "get_replies",
    "complete_task",
    "fail_task",
}


@asynccontextmanager
async def agent_client(base: str, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(streamable_http_client(base + "/agent/mcp", http_client=http)) as client,
    ):
        yield client


def two_targets(tmp_path: Path) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(
        '[targets."nexus:felt"]\n'
        'transport = "agent"\n'
        'description = "Felt"\n'
        f'agent_tokens = ["{FELT_TOKEN}"]\n'
        "\n"
        '[targets."nexus:sentry"]\n'
        'transport = "agent"\n'
        f'agent_tokens = ["{SENTRY_TOKEN}"]\n'
    )
    return path


async def status_of(base: str, token: str | None) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with create_mcp_http_client() as http:
        return (await http.post(base, json=body, headers=headers)).status_code


async def test_each_token_works_only_on_its_own_endpoint(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path), auth_tokens=[CLIENT_TOKEN])
    async with running_server(settings) as (url, _):
        base = url.removesuffix("/mcp")
        assert await status_of(url, CLIENT_TOKEN) == 200
        assert await status_of(url, FELT_TOKEN) == 401
        assert await status_of(url, None) == 401
        assert await status_of(base + "/agent/mcp", FELT_TOKEN) == 200
        assert await status_of(base + "/agent/mcp", CLIENT_TOKEN) == 401
        assert await status_of(base + "/agent/mcp", None) == 401
        assert await status_of(base + "/agent/mcp", "made-up-" + "x" * 30) == 401
        async with agent_client(base, FELT_TOKEN) as agent:
            assert {t.name for t in (await agent.list_tools()).tools} == AGENT_TOOLS


async def test_an_agent_sees_only_its_own_targets_tasks(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        base = url.removesuffix("/mcp")
        felt = await call(client, "send_message", {"message": "felt work", "target": "nexus:felt"})
        sentry = await call(
            client, "send_message", {"message": "sentry work", "target": "nexus:sentry"}
        )
        async with agent_client(base, SENTRY_TOKEN) as agent:
            claimed = await call(agent, "next_task", {})
            assert claimed["task"]["id"] == sentry["id"]
            assert (await call(agent, "next_task", {}))["task"] is None
            for tool, args in (
                ("post_update", {"id": felt["id"], "text": "not mine"}),
                ("complete_task", {"id": felt["id"]}),
                ("get_replies", {"id": felt["id"]}),
            ):
                assert "no task with id" in await call_error(agent, tool, args)
        assert (await call(client, "get_message", {"id": felt["id"]}))["status"] == "pending"


async def test_the_whole_agent_session_is_visible_to_the_client(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        base = url.removesuffix("/mcp")
        task = await call(client, "send_message", {"message": "resize", "target": "nexus:felt"})
        async with agent_client(base, FELT_TOKEN) as agent:
            assert (await call(agent, "next_task", {}))["task"]["id"] == task["id"]
            assert (await call(agent, "start_task", {"id": task["id"]}))["status"] == "in_progress"
            await call(agent, "post_update", {"id": task["id"], "text": "[Step 1] looked"})
            asked = await call(agent, "ask_question", {"id": task["id"], "text": "50 or 100?"})
            assert asked["status"] == "input_required"
            assert (await call(agent, "get_replies", {"id": task["id"]}))["replies"] == []
            await call(client, "reply_to_task", {"id": task["id"], "text": "100"})
            replies = await call(agent, "get_replies", {"id": task["id"]})
            assert [r["content"] for r in replies["replies"]] == ["100"]
            later = await call(
                agent, "get_replies", {"id": task["id"], "cursor": replies["next_cursor"]}
            )
            assert later["replies"] == []
            done = await call(agent, "complete_task", {"id": task["id"], "summary": "resized"})
            assert done["status"] == "complete"
            refused = await call_error(agent, "fail_task", {"id": task["id"], "error": "late"})
            assert "already ended" in refused
        history = await call(client, "pull_updates", {"message_id": task["id"]})
        kinds = [(u["kind"], u["content"]) for u in history["updates"]]
        assert ("agent", "[Step 1] looked") in kinds
        assert ("client", "100") in kinds
        assert ("agent", "resized") in kinds
        targets = {t["name"]: t for t in (await call(client, "list_targets", {}))["targets"]}
        assert targets["nexus:felt"]["reachable"] is True
        assert targets["nexus:felt"]["last_seen_at"] is not None
        assert targets["nexus:sentry"]["reachable"] is False


async def test_a_waiting_next_task_returns_when_a_task_arrives(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        base = url.removesuffix("/mcp")
        async with agent_client(base, FELT_TOKEN) as agent:
            waiting = asyncio.create_task(call(agent, "next_task", {"wait_seconds": 20}))
            sent = await call(client, "send_message", {"message": "wake", "target": "nexus:felt"})
            claimed = await asyncio.wait_for(waiting, timeout=10)
            assert claimed["task"]["id"] == sent["id"]


async def test_two_agents_racing_claim_every_task_exactly_once(
    migrated_url: str, tmp_path: Path
) -> None:
    """On SQLite and PostgreSQL (the migrated_url fixture runs for both)."""
    url_value = migrated_url
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url_value,
        config_file=two_targets(tmp_path),
        agent_token_file=tmp_path / "agent-token",
    )
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        base = url.removesuffix("/mcp")
        sent = [
            (await call(client, "send_message", {"message": f"job {i}", "target": "nexus:felt"}))[
                "id"
            ]
            for i in range(30)
        ]

        async def drain() -> list[str]:
            got: list[str] = []
            async with agent_client(base, FELT_TOKEN) as agent:
                while True:
                    task = (await call(agent, "next_task", {}))["task"]
                    if task is None:
                        return got
                    got.append(task["id"])

        first, second = await asyncio.gather(drain(), drain())
    claimed = first + second
    assert sorted(claimed) == sorted(sent)
    assert len(set(claimed)) == len(claimed)
    assert first
    assert second


def agent_cli(db_url: str, base: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "agent", *args],
        env=subprocess_env(db_url, NEXUS_BRIDGE_URL=base, NEXUS_BRIDGE_AGENT_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_agent_cli_takes_and_finishes_a_task(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        base = url.removesuffix("/mcp")
        task = await call(client, "send_message", {"message": "from cli", "target": "nexus:felt"})
        db = settings.database_url

        def run(*args: str, token: str = FELT_TOKEN) -> subprocess.CompletedProcess[str]:
            return agent_cli(db, base, token, *args)

        taken = await asyncio.to_thread(run, "next", "--json")
        assert taken.returncode == 0, taken.stderr
        assert json.loads(taken.stdout)["task"]["id"] == task["id"]
        updated = await asyncio.to_thread(run, "update", task["id"], "half way")
        assert updated.returncode == 0, updated.stderr
        done = await asyncio.to_thread(run, "done", task["id"], "--summary", "all done")
        assert json.loads(done.stdout)["status"] == "complete"
        nothing = await asyncio.to_thread(run, "next")
        assert nothing.stdout.strip() == "no task"

        refused = await asyncio.to_thread(run, "next", token="wrong-token-" + "w" * 20)
        assert refused.returncode == 2
        assert "refused the agent token" in refused.stderr
        unknown = await asyncio.to_thread(run, "done", "nope")
        assert unknown.returncode == 2
        assert "no task with id 'nope'" in unknown.stderr
    unreachable = await asyncio.to_thread(
        agent_cli, settings.database_url, "http://127.0.0.1:9", FELT_TOKEN, "next"
    )
    assert unreachable.returncode == 2
    assert "cannot reach the bridge at http://127.0.0.1:9" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


async def test_the_default_agent_token_is_made_once_and_kept_private(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    token_file = tmp_path / "agent-token"
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        token = token_file.read_text().strip()
        assert len(token) >= 32
        assert token_file.stat().st_mode & 0o077 == 0
        task = await call(client, "send_message", {"message": "default target"})
        async with agent_client(url.removesuffix("/mcp"), token) as agent:
            assert (await call(agent, "next_task", {}))["task"]["id"] == task["id"]
    async with running_server(settings):
        assert token_file.read_text().strip() == token


def test_agent_prompt_for_an_agent_target_names_its_commands(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    env = subprocess_env(settings.database_url, NEXUS_BRIDGE_CONFIG=str(settings.config_file))
    result = subprocess.run(
        [EXE, "agent-prompt", "--target", "nexus:felt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for tool in AGENT_TOOLS:
        assert tool in result.stdout
    assert "nexus-bridge agent next" in result.stdout
    unknown = subprocess.run(
        [EXE, "agent-prompt", "--target", "mars"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unknown.returncode == 2
    assert "known targets: nexus:felt, nexus:sentry" in unknown.stderr


async def test_a_task_with_no_agent_activity_shows_as_stalled(migrated_sqlite_url: str) -> None:
    now = [datetime(2026, 11, 26, 12, 0, tzinfo=UTC)]
    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(
        store,
        targets=[TargetPolicy("felt", transport="agent")],
        clock=lambda: now[0],
        stall_seconds=600,
        claim_seconds=3600,  # the claim outlives the stall: no lapse in between
    )
    try:
        task = (await queue.enqueue("slow job", "felt")).task
        assert await queue.stalls([task]) == {}  # pending is not with the agent
        claimed = await queue.claim_next("felt")
        assert claimed is not None
        now[0] += timedelta(seconds=599)
        assert await queue.stalls([claimed]) == {}
        now[0] += timedelta(seconds=2)
        assert await queue.stalls([claimed]) == {claimed.id: pytest.approx(601)}
        await queue.agent_report("felt", claimed.id, text="still going")
        assert await queue.stalls([(await queue.get(claimed.id)).task]) == {}
        now[0] += timedelta(seconds=700)
        summary = {s.policy.name: s for s in await queue.target_summaries()}["felt"]
        assert summary.stalled == 1
        assert summary.reachable is False
        done = await queue.agent_report("felt", claimed.id, status=TaskStatus.COMPLETE)
        assert await queue.stalls([done]) == {}
    finally:
        await store.dispose()


def test_an_agent_target_without_tokens_is_refused_at_start(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from nexus_bridge.app import build_bridge
    from nexus_bridge.errors import ConfigError

    config = tmp_path / "silent.toml"
    config.write_text('[targets.silent]\ntransport = "agent"\n')
    with pytest.raises(ConfigError, match="silent have no agent_tokens"):
        build_bridge(make_settings(config_file=config), default_identity="t", http=True)
