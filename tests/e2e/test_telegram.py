"""The Telegram transport end to end: the real server, the SDK client over HTTP, and unpatched
python-telegram-bot talking to the fake Bot API server on loopback."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.config import Settings
from nexus_bridge.protocol import short_id
from tests.conftest import mcp_client, running_server, wait_for
from tests.e2e.test_http import call, call_error
from tests.fake_telegram import FakeTelegram, Fault, running_fake_telegram

CHAT = -1001234
AGENT = 4242
OWNER = 777
STRANGER = 666


def telegram_settings(
    make_settings: Callable[..., Settings], fake: FakeTelegram, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": fake.token,
        "telegram_chat_id": CHAT,
        "telegram_agent_ids": [AGENT, OWNER],
        "telegram_agent_username": "agent_bot",
        "telegram_base_url": fake.base_url,
        "telegram_poll_timeout": 5,
        "telegram_min_send_interval": 0,
        "telegram_retry_base_seconds": 0.05,
        "telegram_request_timeout": 2,
        "telegram_lease_seconds": 3,
    }
    values.update(overrides)
    return make_settings(**values)


@asynccontextmanager
async def bridge_with_telegram(
    make_settings: Callable[..., Settings], **overrides: Any
) -> AsyncIterator[tuple[FakeTelegram, Any, Settings]]:
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, **overrides)
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            yield fake, client, settings


async def task_status(client: Any, task_id: str) -> str:
    return str((await call(client, "get_message", {"id": task_id}))["status"])


async def wait_status(client: Any, task_id: str, status: str) -> dict[str, Any]:
    async def reached() -> bool:
        return await task_status(client, task_id) == status

    await wait_for(reached, what=f"task {task_id[:8]} to become {status}")
    return await call(client, "get_message", {"id": task_id})


async def send_and_deliver(client: Any, fake: FakeTelegram, text: str) -> tuple[str, int]:
    """Queue a task and wait until the fake has it; returns the task id and its message id."""
    before = len(fake.sent)
    task_id = (await call(client, "send_message", {"message": text}))["id"]
    sent = await fake.wait_for_sent(before + 1)
    assert sent[-1].text.startswith(f"[task {short_id(task_id)}]")
    await wait_for(lambda: _delivered(client, task_id), what=f"task {task_id[:8]} marked delivered")
    return task_id, sent[-1].message_id


async def _delivered(client: Any, task_id: str) -> bool:
    detail = await call(client, "get_message", {"id": task_id})
    return detail["delivery"] is not None and detail["delivery"]["state"] == "delivered"


async def agent_updates(client: Any, task_id: str) -> list[str]:
    page = await call(client, "pull_updates", {"message_id": task_id})
    return [u["content"] for u in page["updates"] if u["kind"] == "agent"]


async def test_a_task_reaches_the_chat_as_plain_text_with_its_tag(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        text = "Fix the *DNS* record for nexus_mg [prod]\nthen restart `unbound`"
        task_id, message_id = await send_and_deliver(client, fake, text)
        sent = fake.sent[-1]
        assert sent.chat_id == CHAT
        assert sent.parse_mode is None
        assert sent.text == f"[task {short_id(task_id)}] @agent_bot\n{text}"
        detail = await call(client, "get_message", {"id": task_id})
        assert detail["delivery"]["telegram_message_ids"] == [message_id]
        assert detail["delivery"]["attempts"] == 1
        status = await call(client, "queue_status", {})
        assert status["transport"]["state"] == "polling"
        assert status["transport"]["poller"] == status["transport"]["this_process"]


async def test_an_urgent_task_is_marked_urgent_for_the_agent(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        sent = await call(client, "send_message", {"message": "stop the backup", "urgent": True})
        (message,) = await fake.wait_for_sent(1)
        assert message.text.startswith(f"URGENT [task {short_id(sent['id'])}]")


async def test_a_reply_to_the_task_message_drives_its_status(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id, message_id = await send_and_deliver(client, fake, "upgrade proxmox")
        fake.inject_message(CHAT, AGENT, "[Received] on it", reply_to_message_id=message_id)
        await wait_status(client, task_id, "acknowledged")
        fake.inject_message(
            CHAT, AGENT, "[Step 1] apt update ✅ done\nnext: reboot", reply_to_message_id=message_id
        )
        await wait_status(client, task_id, "in_progress")
        fake.inject_message(CHAT, AGENT, "[Done] upgraded", reply_to_message_id=message_id)
        detail = await wait_status(client, task_id, "complete")
        assert detail["ended_at"] is not None
        assert await agent_updates(client, task_id) == [
            "[Received] on it",
            "[Step 1] apt update ✅ done\nnext: reboot",
            "[Done] upgraded",
        ]


@pytest.mark.parametrize("tag_form", ["#{short}", "[task {short}]"])
async def test_a_task_tag_links_a_message_to_its_task(
    make_settings: Callable[..., Settings], tag_form: str
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        first, _ = await send_and_deliver(client, fake, "first task")
        second, _ = await send_and_deliver(client, fake, "second task")
        tag = tag_form.format(short=short_id(second))
        fake.inject_message(CHAT, AGENT, f"[Working] {tag} looking at it")
        await wait_status(client, second, "in_progress")
        assert await task_status(client, first) == "pending"
        assert await agent_updates(client, second) == [f"[Working] {tag} looking at it"]


async def test_a_responding_to_announcement_links_by_the_first_line(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        await send_and_deliver(client, fake, "Rotate the backups\nkeep 7 days")
        second, _ = await send_and_deliver(client, fake, "Renew the TLS certificate\nfor nexus")
        fake.inject_message(CHAT, AGENT, "[Responding to: Renew the TLS certificate]")
        await wait_status(client, second, "in_progress")


async def test_an_untagged_message_joins_the_task_in_progress_else_no_task(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        loose = fake.inject_message(CHAT, OWNER, "just saying hi")

        async def stored_without_task() -> bool:
            page = await call(client, "pull_updates", {"cursor": "0"})
            return any(
                u["content"] == "just saying hi" and u["message_id"] is None
                for u in page["updates"]
            )

        await wait_for(stored_without_task, what="the loose message in pull_updates")
        assert loose["message"]["text"] == "just saying hi"

        task_id, message_id = await send_and_deliver(client, fake, "check the UPS")
        fake.inject_message(CHAT, AGENT, "[Working]", reply_to_message_id=message_id)
        await wait_status(client, task_id, "in_progress")
        fake.inject_message(CHAT, AGENT, "battery at 97%")

        async def joined() -> bool:
            return "battery at 97%" in await agent_updates(client, task_id)

        await wait_for(joined, what="the untagged report to join the task in progress")


async def test_a_forbidden_transition_is_kept_as_text_only(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id, message_id = await send_and_deliver(client, fake, "finish early")
        fake.inject_message(CHAT, AGENT, "[Done]", reply_to_message_id=message_id)
        await wait_status(client, task_id, "complete")
        fake.inject_message(CHAT, AGENT, "[Received] oops", reply_to_message_id=message_id)

        async def recorded() -> bool:
            return "[Received] oops" in await agent_updates(client, task_id)

        await wait_for(recorded, what="the late message to be recorded")
        assert await task_status(client, task_id) == "complete"


async def test_a_question_is_answered_with_reply_to_task(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id, message_id = await send_and_deliver(client, fake, "resize the disk")
        question = fake.inject_message(
            CHAT, AGENT, "[Question] 50 or 100 GB?", reply_to_message_id=message_id
        )
        await wait_status(client, task_id, "input_required")
        status = await call(client, "queue_status", {})
        assert status["input_required"] == 1

        answered = await call(client, "reply_to_task", {"id": task_id, "text": "100 GB *please*"})
        assert answered["status"] == "in_progress"
        sent = await fake.wait_for_sent(2)
        assert sent[-1].text == f"[task {short_id(task_id)}] Answer @agent_bot\n100 GB *please*"
        assert sent[-1].reply_to_message_id == question["message"]["message_id"]
        history = await call(client, "pull_updates", {"message_id": task_id})
        assert [u["content"] for u in history["updates"] if u["kind"] == "client"] == [
            "100 GB *please*"
        ]
        refused = await call_error(client, "reply_to_task", {"id": task_id, "text": "again"})
        assert "not waiting for an answer" in refused


async def test_a_long_task_arrives_verbatim_in_ordered_parts(
    make_settings: Callable[..., Settings],
) -> None:
    lines = [f"line {i}: *bold* _under_ [link] `code` ✅" for i in range(260)]
    text = "\n".join(lines)
    assert len(text) > 10_000
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id = (await call(client, "send_message", {"message": text}))["id"]
        await wait_for(lambda: _delivered(client, task_id), what="all parts delivered")
        parts = [m for m in fake.sent if m.text.startswith(f"[task {short_id(task_id)}]")]
        assert len(parts) >= 3
        total = len(parts)
        for index, part in enumerate(parts, start=1):
            header, _, _chunk = part.text.partition("\n")
            assert header.endswith(f"({index}/{total})")
            assert len(part.text) <= 4096
        assert "".join(p.text.partition("\n")[2] for p in parts) == text
        detail = await call(client, "get_message", {"id": task_id})
        assert detail["delivery"]["telegram_message_ids"] == [p.message_id for p in parts]


async def test_a_429_storm_and_a_restart_deliver_exactly_once(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake)
        fake.fail_next("sendMessage", *[Fault.retry_after(1) for _ in range(3)])
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            task_id = (await call(client, "send_message", {"message": "through the storm"}))["id"]
            await fake.wait_for_call("sendMessage", 1)

            async def waiting() -> bool:
                detail = await call(client, "get_message", {"id": task_id})
                return "wait" in (detail["delivery"]["last_error"] or "")

            await wait_for(waiting, what="the 429 to be recorded")
        # Restarted mid-storm: the new process resumes the same delivery.
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            await wait_for(lambda: _delivered(client, task_id), what="delivery after the storm")
            detail = await call(client, "get_message", {"id": task_id})
        tagged = [m for m in fake.sent if m.text.startswith(f"[task {short_id(task_id)}]")]
        assert len(tagged) == 1
        assert detail["delivery"]["attempts"] == 4
        assert len(fake.calls_of("sendMessage")) == 4


@pytest.mark.parametrize("fault", [Fault.server_error(500), Fault.timeout(3)])
async def test_network_errors_and_5xx_are_retried(
    make_settings: Callable[..., Settings], fault: Fault
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        fake.fail_next("sendMessage", fault)
        task_id = (await call(client, "send_message", {"message": "retry me"}))["id"]
        await wait_for(lambda: _delivered(client, task_id), what="delivery after a retry")
        detail = await call(client, "get_message", {"id": task_id})
        assert detail["delivery"]["attempts"] == 2
        assert len([m for m in fake.sent if "retry me" in m.text]) == 1


async def test_a_403_ends_the_task_in_error_saying_why(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        fake.fail_next("sendMessage", Fault.forbidden("Forbidden: bot was kicked from the chat"))
        task_id = (await call(client, "send_message", {"message": "never arrives"}))["id"]
        detail = await wait_status(client, task_id, "error")
        assert "bot was kicked" in detail["status_reason"]
        assert detail["delivery"]["state"] == "failed"
        history = await call(client, "pull_updates", {"message_id": task_id})
        assert "bot was kicked" in history["updates"][-1]["content"]


async def test_messages_from_unknown_senders_are_ignored_and_counted(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id, message_id = await send_and_deliver(client, fake, "guarded task")
        fake.inject_message(
            CHAT, STRANGER, "[Done] secret-stranger-text", reply_to_message_id=message_id
        )
        fake.inject_message(-999, AGENT, "[Done] from another chat secret-other-chat")

        async def counted() -> bool:
            return (await call(client, "queue_status", {}))["ignored_messages"] == 2

        await wait_for(counted, what="both messages to be counted as ignored")
        assert await task_status(client, task_id) == "pending"
        assert await agent_updates(client, task_id) == []
    assert "secret-stranger-text" not in caplog.text
    assert "secret-other-chat" not in caplog.text
    assert f"ignored a message from user {STRANGER}" in caplog.text


async def test_a_redelivered_update_is_stored_once(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id, message_id = await send_and_deliver(client, fake, "count me once")
        update = fake.inject_message(
            CHAT, AGENT, "[Working] only once", reply_to_message_id=message_id
        )
        await wait_status(client, task_id, "in_progress")
        fake.requeue(update)
        marker = fake.inject_message(CHAT, AGENT, f"[Working] #{short_id(task_id)} later")

        async def later_seen() -> bool:
            return "[Working] #" + short_id(task_id) + " later" in await agent_updates(
                client, task_id
            )

        await wait_for(later_seen, what="the message after the redelivered one")
        assert (await agent_updates(client, task_id)).count("[Working] only once") == 1
        assert marker["update_id"] > update["update_id"]


async def test_without_a_token_tasks_wait_for_the_agent_and_status_says_why(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings()) as (url, _), mcp_client(url) as client:
        task_id = (await call(client, "send_message", {"message": "waits"}))["id"]
        status = await call(client, "queue_status", {})
        assert status["transport"]["state"] == "not configured"
        detail = await call(client, "get_message", {"id": task_id})
        assert detail["status"] == "pending"
        # No Telegram: the homelab target is served by the direct agent API; nothing to post.
        assert detail["delivery"] is None


async def test_the_bot_token_never_reaches_the_logs(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        fake.fail_next("sendMessage", Fault.server_error(502))
        task_id, message_id = await send_and_deliver(client, fake, "log safely")
        fake.inject_message(CHAT, AGENT, "[Done]", reply_to_message_id=message_id)
        await wait_status(client, task_id, "complete")
    assert caplog.records
    token_secret = fake.token.split(":", 1)[1]
    assert not re.search(re.escape(token_secret), caplog.text)


WEBHOOK_SECRET = "webhook-secret-" + "w" * 20


async def test_webhook_mode_registers_and_accepts_only_the_secret(
    make_settings: Callable[..., Settings],
) -> None:
    public = "https://bridge.example.net/telegram/webhook"
    async with running_fake_telegram() as fake:
        settings = telegram_settings(
            make_settings,
            fake,
            telegram_webhook_url=public,
            telegram_webhook_secret=WEBHOOK_SECRET,
        )
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            (registered,) = await fake.wait_for_call("setWebhook")
            assert registered["url"] == public
            assert registered["secret_token"] == WEBHOOK_SECRET
            task_id, message_id = await send_and_deliver(client, fake, "via webhook")
            assert not fake.calls_of("getUpdates")  # no polling in webhook mode

            update = fake.inject_message(
                CHAT, AGENT, "[Done] hooked", reply_to_message_id=message_id
            )
            hook = url.removesuffix("/mcp") + "/telegram/webhook"
            async with create_mcp_http_client() as http:
                for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong-" + "x" * 20}):
                    refused = await http.post(hook, json=update, headers=headers)
                    assert refused.status_code == 401
                assert await task_status(client, task_id) == "pending"
                good = {"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET}
                # JSON that is not an Update is the sender's mistake (400), not ours (500).
                for body in ([update], "update", 42, None, {}, {"update_id": 1, "message": 1}):
                    malformed = await http.post(hook, json=body, headers=good)
                    assert malformed.status_code == 400, (body, malformed.text)
                    assert "\n" not in malformed.json()["error"]
                for _ in range(2):  # Telegram may deliver the same update twice
                    accepted = await http.post(hook, json=update, headers=good)
                    assert accepted.status_code == 200
            await wait_status(client, task_id, "complete")
            assert await agent_updates(client, task_id) == ["[Done] hooked"]


async def test_cancelling_a_delivered_task_tells_the_agent_to_stop(
    make_settings: Callable[..., Settings],
) -> None:
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id, message_id = await send_and_deliver(client, fake, "long migration")
        await call(client, "cancel_message", {"id": task_id, "reason": "wrong server"})
        sent = await fake.wait_for_sent(2)
        assert sent[-1].text == (
            f"STOP [task {short_id(task_id)}] cancelled by the client @agent_bot\nwrong server"
        )
        assert sent[-1].reply_to_message_id == message_id
        # A task cancelled before it was posted is never posted, and needs no notice: hold its
        # delivery back with a 429 first, so the cancel surely comes before it. (The 429 holds
        # the whole chat back for its 2 s: the next task goes out after that.)
        fake.fail_next("sendMessage", Fault.retry_after(2))
        quiet = (await call(client, "send_message", {"message": "never mind"}))["id"]
        await fake.wait_for_call("sendMessage", 3)
        await call(client, "cancel_message", {"id": quiet})
        third = (await call(client, "send_message", {"message": "after"}))["id"]
        await fake.wait_for_sent(3)
        assert fake.sent[2].text.startswith(f"[task {short_id(third)}]")
        assert not any(short_id(quiet) in m.text for m in fake.sent)


async def test_a_hostile_agent_message_does_not_stall_the_bridge(
    make_settings: Callable[..., Settings],
) -> None:
    # '[Responding to:' and 4,000 spaces used to take about 30 s to parse, inside a write
    # transaction: the bridge answered nobody meanwhile. Now it is read in well under a second.
    async with bridge_with_telegram(make_settings) as (fake, client, _):
        task_id, _ = await send_and_deliver(client, fake, "check the UPS")
        start = time.monotonic()
        fake.inject_message(CHAT, AGENT, "[Responding to: " + " " * 4000 + "x")
        fake.inject_message(CHAT, AGENT, f"[Received] #{short_id(task_id)}")
        await wait_status(client, task_id, "acknowledged")
        queued = await call(client, "send_message", {"message": "and the generator"})
        assert queued["queued"] is True
        assert time.monotonic() - start < 10.0
