"""Targets end to end: one bridge routing tasks to a Telegram target and to a direct-agent
target, and one-at-a-time dispatch on both transports. The real server, the SDK's own client
(for claude.ai's side at /mcp and the agent's side at /agent/mcp) and unpatched
python-telegram-bot talking to the fake Bot API, all on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from nexus_bridge.config import Settings
from nexus_bridge.protocol import short_id
from tests.conftest import mcp_client, running_server, wait_for
from tests.e2e.test_http import call, call_error
from tests.e2e.test_telegram import (
    AGENT,
    CHAT,
    agent_updates,
    send_and_deliver,
    telegram_settings,
    wait_status,
)
from tests.fake_telegram import FakeTelegram, running_fake_telegram

FELT_TOKEN = "felt-agent-token-" + "f" * 32
SOLO_TOKEN = "solo-agent-token-" + "s" * 32
OTHER_CHAT = -1009876  # a second Telegram target's own chat, in the one-at-a-time test

HOMELAB = '[targets.homelab]\ntransport = "telegram"\ndescription = "Homelab agent"\n'
FELT = (
    '[targets."nexus:felt"]\n'
    'transport = "agent"\n'
    'description = "Felt"\n'
    f'agent_tokens = ["{FELT_TOKEN}"]\n'
)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(text, encoding="utf-8")
    return path


@asynccontextmanager
async def bridge(
    make_settings: Callable[..., Settings], config: Path
) -> AsyncIterator[tuple[FakeTelegram, Client, str]]:
    """The fake Bot API, a bridge with the targets in ``config``, a client, and the base URL."""
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, config_file=config)
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            yield fake, client, url.removesuffix("/mcp")


def agent_client(base: str, token: str) -> AbstractAsyncContextManager[Client]:
    """The SDK client at /agent/mcp with an agent token."""
    return mcp_client(base + "/agent/mcp", token)


async def send(client: Client, text: str, target: str) -> str:
    sent = await call(client, "send_message", {"message": text, "target": target})
    assert sent["queued"] is True
    return str(sent["id"])


async def next_task(agent: Client) -> dict[str, Any] | None:
    task: dict[str, Any] | None = (await call(agent, "next_task", {}))["task"]
    return task


async def claim(agent: Client) -> dict[str, Any]:
    """next_task, which must hand over a task."""
    task = await next_task(agent)
    assert task is not None, "next_task returned no task"
    return task


async def delivery_state(client: Client, task_id: str) -> str | None:
    delivery = (await call(client, "get_message", {"id": task_id}))["delivery"]
    return None if delivery is None else str(delivery["state"])


async def _is_delivered(client: Client, task_id: str) -> bool:
    return await delivery_state(client, task_id) == "delivered"


def sent_for(fake: FakeTelegram, task_id: str) -> list[str]:
    """The texts the bot posted for one task."""
    return [m.text for m in fake.sent if m.text.startswith(f"[task {short_id(task_id)}]")]


async def test_telegram_tasks_go_to_the_chat_and_direct_tasks_to_their_agent(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = write_config(tmp_path, HOMELAB + "\n" + FELT)
    async with bridge(make_settings, config) as (fake, client, base):
        felt = await send(client, "Re-index the felt catalogue", "nexus:felt")
        homelab, message_id = await send_and_deliver(client, fake, "Rotate the homelab backups")
        assert (await call(client, "get_message", {"id": homelab}))["target"] == "homelab"

        async with agent_client(base, FELT_TOKEN) as agent:
            claimed = await claim(agent)
            assert (claimed["id"], claimed["target"]) == (felt, "nexus:felt")
            assert claimed["content"] == "Re-index the felt catalogue"
            assert claimed["status"] == "acknowledged"
            assert await next_task(agent) is None  # the homelab task is not the felt agent's

            await call(agent, "post_update", {"id": felt, "text": "indexed 1200 of 3000"})
            done = await call(agent, "complete_task", {"id": felt, "summary": "all 3000 indexed"})
            assert done["status"] == "complete"

        detail = await call(client, "get_message", {"id": felt})
        assert detail["status"] == "complete"
        assert detail["ended_at"] is not None
        assert detail["delivery"] is None  # never queued for Telegram at all
        assert await agent_updates(client, felt) == ["indexed 1200 of 3000", "all 3000 indexed"]

        # The homelab task still lives in the chat: its agent's reply there drives it.
        fake.inject_message(CHAT, AGENT, "[Done] rotated", reply_to_message_id=message_id)
        await wait_status(client, homelab, "complete")
        assert [m.text for m in fake.sent] == sent_for(fake, homelab)
        assert not any("felt" in m.text for m in fake.sent)


async def test_list_targets_and_queue_status_describe_each_target(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = write_config(tmp_path, HOMELAB + "\n" + FELT)
    async with bridge(make_settings, config) as (fake, client, base):
        listed = (await call(client, "list_targets", {}))["targets"]
        assert [(t["name"], t["transport"], t["description"], t["dispatch"]) for t in listed] == [
            ("homelab", "telegram", "Homelab agent", "immediate"),
            ("nexus:felt", "agent", "Felt", "immediate"),
        ]

        await send_and_deliver(client, fake, "homelab one")
        await send_and_deliver(client, fake, "homelab two")
        felt_done = await send(client, "felt one", "nexus:felt")
        await send(client, "felt two", "nexus:felt")
        async with agent_client(base, FELT_TOKEN) as agent:
            assert (await claim(agent))["id"] == felt_done
            await call(agent, "complete_task", {"id": felt_done})

        status = await call(client, "queue_status", {"target": "nexus:felt"})
        assert (status["pending"], status["acknowledged"], status["complete"]) == (1, 0, 1)
        assert status["total_updates"] == 4  # felt one: queued, claimed, complete; felt two
        assert [t["name"] for t in status["targets"]] == ["nexus:felt"]
        assert status["targets"][0]["pending"] == 1
        assert status["targets"][0]["reachable"] is True  # its agent just called in

        homelab = await call(client, "queue_status", {"target": "homelab"})
        assert (homelab["pending"], homelab["complete"]) == (2, 0)
        everything = await call(client, "queue_status", {})
        assert (everything["pending"], everything["complete"]) == (3, 1)

        refused = await call_error(client, "send_message", {"message": "hi", "target": "mars"})
        assert "unknown target 'mars'" in refused
        assert "homelab, nexus:felt" in refused


async def test_one_at_a_time_agent_gets_the_next_task_only_after_finishing_one(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = write_config(
        tmp_path,
        '[targets.solo]\ntransport = "agent"\ndispatch = "one_at_a_time"\n'
        f'agent_tokens = ["{SOLO_TOKEN}"]\n',
    )
    settings = make_settings(config_file=config)
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        first = await send(client, "first job", "solo")
        second = await send(client, "second job", "solo")
        async with agent_client(url.removesuffix("/mcp"), SOLO_TOKEN) as agent:
            assert (await claim(agent))["id"] == first

            assert await next_task(agent) is None  # held while the first is with the agent
            assert (await call(client, "get_message", {"id": second}))["status"] == "pending"
            await call(agent, "start_task", {"id": first})
            assert await next_task(agent) is None  # still held while it is in progress

            await call(agent, "complete_task", {"id": first, "summary": "done"})
            claimed = await claim(agent)
            assert (claimed["id"], claimed["status"]) == (second, "acknowledged")
            assert await next_task(agent) is None


async def test_one_at_a_time_telegram_target_posts_the_next_task_after_done(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # "elsewhere" is an immediate target in its own chat: a task for it that is queued after
    # the held one reaches the fake only once the delivery worker has looked past the held one.
    config = write_config(
        tmp_path,
        '[targets.homelab]\ntransport = "telegram"\ndispatch = "one_at_a_time"\n\n'
        f'[targets.elsewhere]\ntransport = "telegram"\nchat_id = {OTHER_CHAT}\n',
    )
    async with bridge(make_settings, config) as (fake, client, _):
        first, message_id = await send_and_deliver(client, fake, "first homelab job")
        second = await send(client, "second homelab job", "homelab")

        marker = await send(client, "marker while the first is pending", "elsewhere")
        await wait_for(lambda: sent_for(fake, marker), what="the marker task to be posted")
        assert await delivery_state(client, second) == "pending"
        assert sent_for(fake, second) == []

        fake.inject_message(CHAT, AGENT, "[Working] on it", reply_to_message_id=message_id)
        await wait_status(client, first, "in_progress")
        marker = await send(client, "marker while the first is in progress", "elsewhere")
        await wait_for(lambda: sent_for(fake, marker), what="the second marker to be posted")
        status = await call(client, "queue_status", {"target": "homelab"})
        assert (status["pending"], status["in_progress"]) == (1, 1)
        assert await delivery_state(client, second) == "pending"
        assert sent_for(fake, second) == []

        fake.inject_message(CHAT, AGENT, "[Done] finished", reply_to_message_id=message_id)
        await wait_status(client, first, "complete")
        await fake.wait_for_sent(4)
        (posted,) = sent_for(fake, second)
        assert posted.endswith("\nsecond homelab job")
        assert fake.sent[-1].chat_id == CHAT
        await wait_for(
            lambda: _is_delivered(client, second), what="the second task marked delivered"
        )
        assert [m.chat_id for m in fake.sent] == [CHAT, OTHER_CHAT, OTHER_CHAT, CHAT]


async def test_immediate_telegram_target_posts_every_task_without_waiting(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = write_config(tmp_path, HOMELAB)
    async with bridge(make_settings, config) as (fake, client, _):
        first = await send(client, "first homelab job", "homelab")
        second = await send(client, "second homelab job", "homelab")
        await fake.wait_for_sent(2)
        assert len(sent_for(fake, first)) == len(sent_for(fake, second)) == 1

        async def both_delivered() -> bool:
            return all([await _is_delivered(client, first), await _is_delivered(client, second)])

        await wait_for(both_delivered, what="both tasks marked delivered")
        for task_id in (first, second):  # posted while nobody answered: still pending
            assert (await call(client, "get_message", {"id": task_id}))["status"] == "pending"


def test_two_telegram_targets_on_one_chat_are_refused(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from nexus_bridge.app import build_bridge
    from nexus_bridge.errors import ConfigError

    config = tmp_path / "same-chat.toml"
    config.write_text(
        '[targets.homelab]\ntransport = "telegram"\n\n[targets.lab2]\ntransport = "telegram"\n'
    )
    settings = make_settings(
        config_file=config,
        telegram_bot_token="123:abc",
        telegram_chat_id=-1001,
        telegram_agent_ids=[1],
    )
    with pytest.raises(ConfigError, match="use the same Telegram chat -1001"):
        build_bridge(settings, default_identity="test", http=True)


async def test_an_agent_in_one_chat_cannot_move_another_targets_task_by_any_link(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # homelab's agent names, in homelab's chat, a task of the direct-agent target felt and a
    # task of the Telegram target elsewhere, by every form of tag, by quoting its first line
    # and by replying to a message linked to it. None of it reaches those tasks.
    config = write_config(
        tmp_path,
        HOMELAB
        + f'\n[targets.elsewhere]\ntransport = "telegram"\nchat_id = {OTHER_CHAT}\n\n'
        + FELT,
    )
    async with bridge(make_settings, config) as (fake, client, base):
        felt = await send(client, "Re-index the felt catalogue", "nexus:felt")
        async with agent_client(base, FELT_TOKEN) as agent:
            assert (await claim(agent))["id"] == felt
        elsewhere = await send(client, "Rotate the elsewhere backups", "elsewhere")
        await wait_for(lambda: _is_delivered(client, elsewhere), what="the elsewhere task")
        (elsewhere_message,) = [m for m in fake.sent if m.chat_id == OTHER_CHAT]
        fake.inject_message(
            OTHER_CHAT, AGENT, "[Working] on it", reply_to_message_id=elsewhere_message.message_id
        )
        await wait_status(client, elsewhere, "in_progress")

        named = []
        for other in (felt, elsewhere):
            tag = short_id(other)
            named.append(fake.inject_message(CHAT, AGENT, f"[Working] #{tag}"))
            fake.inject_message(CHAT, AGENT, f"[Done] #{tag} finished")
            fake.inject_message(CHAT, AGENT, f"[task {tag}] [Error] failed")
            fake.inject_message(CHAT, AGENT, f"[Question] #{tag.upper()} which one?")
        fake.inject_message(CHAT, AGENT, "[Responding to: Rotate the elsewhere backups]")
        fake.inject_message(CHAT, AGENT, "[Done] all finished")  # elsewhere's is in progress
        for message in named:  # replies to the messages that named the other targets' tasks
            fake.inject_message(
                CHAT, AGENT, "[Done] replied", reply_to_message_id=message["message"]["message_id"]
            )

        # Messages are handled in order: once homelab's own task moves, all of the above were.
        homelab, _ = await send_and_deliver(client, fake, "Rotate the homelab backups")
        fake.inject_message(CHAT, AGENT, f"[Received] #{short_id(homelab)}")
        await wait_status(client, homelab, "acknowledged")

        assert (await call(client, "get_message", {"id": felt}))["status"] == "acknowledged"
        assert (await call(client, "get_message", {"id": elsewhere}))["status"] == "in_progress"
        assert await agent_updates(client, felt) == []
        assert await agent_updates(client, elsewhere) == ["[Working] on it"]
        loose = await call(client, "pull_updates", {"cursor": "0", "limit": 100})
        unlinked = [
            u["content"]
            for u in loose["updates"]
            if u["kind"] == "agent" and u["message_id"] is None
        ]
        assert len(unlinked) == 12  # every message above, kept, and linked to no task
        assert f"[Done] #{short_id(felt)} finished" in unlinked
