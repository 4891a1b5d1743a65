"""The fake Bot API server, driven by the real python-telegram-bot client (nothing patched)."""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from telegram import Bot, Update
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, NetworkError, RetryAfter
from telegram.error import TimedOut as PTBTimedOut
from telegram.request import HTTPXRequest

from tests.fake_telegram import FakeTelegram, Fault, SentMessage, running_fake_telegram

CHAT = -1001234567890
AGENT = 4242


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with running_fake_telegram() as server:
        yield server


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(fake.token, base_url=fake.base_url) as client:
        yield client


async def test_get_me_through_ptb(fake: FakeTelegram, bot: Bot) -> None:
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert fake.base_url.endswith("/bot")
    me = await bot.get_me()
    assert me.id == 1000
    assert me.is_bot
    assert me.username == "bridge_bot"
    assert bot.username == "bridge_bot"  # cached by `async with bot` (initialize -> getMe)
    assert fake.calls[0] == ("getMe", {})


async def test_send_message_records_exact_text(fake: FakeTelegram, bot: Bot) -> None:
    text = "Result: *bold* _under_ [link\nsecond line\n\n  indented `code` \\ done"
    message = await bot.send_message(CHAT, text)
    assert message.text == text
    assert message.chat.id == CHAT
    assert message.chat.type == "supergroup"
    assert message.from_user is not None
    assert message.from_user.id == 1000
    assert isinstance(message.date, dtm.datetime)

    [sent] = await fake.wait_for_sent(1)
    assert sent == SentMessage(
        chat_id=CHAT,
        text=text,
        message_id=message.message_id,
        reply_to_message_id=None,
        parse_mode=None,
        params=sent.params,
    )
    # PTB posts form fields: strings as they are, everything else JSON-encoded.
    assert sent.params["chat_id"] == str(CHAT)
    assert sent.params["text"] == text


async def test_parse_mode_and_reply_round_trip(fake: FakeTelegram, bot: Bot) -> None:
    update = fake.inject_message(CHAT, AGENT, "question?")
    asked = update["message"]["message_id"]

    answer = await bot.send_message(CHAT, "answer", reply_to_message_id=asked, parse_mode="HTML")
    assert answer.reply_to_message is not None
    assert answer.reply_to_message.message_id == asked
    assert answer.reply_to_message.text == "question?"
    assert answer.reply_to_message.from_user is not None
    assert answer.reply_to_message.from_user.id == AGENT
    assert answer.message_id != asked  # one id counter per chat for both directions

    [sent] = fake.sent
    assert sent.reply_to_message_id == asked
    assert sent.parse_mode == "HTML"
    # PTB turns reply_to_message_id into the JSON-encoded reply_parameters form field.
    assert f'"message_id": {asked}' in sent.params["reply_parameters"]

    # An agent replying to the bot's message: reply_to_message.from is the bot.
    reply = fake.inject_message(CHAT, AGENT, "thanks", reply_to_message_id=answer.message_id)
    parsed = Update.de_json(reply, bot)
    assert parsed.message is not None
    assert parsed.message.reply_to_message is not None
    assert parsed.message.reply_to_message.from_user is not None
    assert parsed.message.reply_to_message.from_user.id == 1000
    assert parsed.message.message_id == answer.message_id + 1


async def test_retry_after(fake: FakeTelegram, bot: Bot, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without PTB_TIMEDELTA, RetryAfter warns (PTBDeprecationWarning) on construction.
    monkeypatch.setenv("PTB_TIMEDELTA", "true")
    fake.fail_next("sendMessage", Fault.retry_after(7))
    with pytest.raises(RetryAfter) as caught:
        await bot.send_message(CHAT, "hello")
    assert caught.value.retry_after == dtm.timedelta(seconds=7)
    assert fake.sent == []
    await bot.send_message(CHAT, "hello")  # the fault was used up
    assert [m.text for m in fake.sent] == ["hello"]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.server_error(), NetworkError),
        (Fault.server_error(502), NetworkError),
        (Fault.bad_request(), BadRequest),
        (Fault.forbidden(), Forbidden),
    ],
)
async def test_error_faults(
    fake: FakeTelegram, bot: Bot, fault: Fault, error: type[Exception]
) -> None:
    fake.fail_next("sendMessage", fault)
    with pytest.raises(error) as caught:
        await bot.send_message(CHAT, "hello")
    assert fault.body is not None
    if fault.status < 500:
        # PTB drops a leading "Bad Request: " and capitalises what is left.
        description = fault.body["description"].removeprefix("Bad Request: ")
        assert str(caught.value) == description[0].upper() + description[1:]
    assert fake.sent == []


async def test_faults_are_consumed_in_order(fake: FakeTelegram, bot: Bot) -> None:
    fake.fail_next("sendMessage", Fault.server_error(), Fault.forbidden())
    with pytest.raises(NetworkError):
        await bot.send_message(CHAT, "one")
    with pytest.raises(Forbidden):
        await bot.send_message(CHAT, "two")
    await bot.send_message(CHAT, "three")
    assert [m.text for m in fake.sent] == ["three"]


async def test_timeout_fault(fake: FakeTelegram) -> None:
    request = HTTPXRequest(read_timeout=0.3)
    async with Bot(fake.token, base_url=fake.base_url, request=request) as bot:
        fake.fail_next("sendMessage", Fault.timeout(5))
        with pytest.raises(PTBTimedOut):
            await bot.send_message(CHAT, "lost")
        # Per-call read timeout, and this time Telegram did accept the message.
        fake.fail_next("sendMessage", Fault.timeout(0.6, deliver=True))
        with pytest.raises(PTBTimedOut):
            await bot.send_message(CHAT, "accepted", read_timeout=0.2)
        [sent] = await fake.wait_for_sent(1, timeout=5)
        assert sent.text == "accepted"


async def test_long_poll_returns_injected_update_promptly(fake: FakeTelegram, bot: Bot) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await fake.wait_for_call("getUpdates")
    injected = fake.inject_message(CHAT, AGENT, "task done", from_username="agent_bot")
    updates = await asyncio.wait_for(poll, 3)
    assert time.monotonic() - started < 2

    [update] = updates
    assert update.update_id == injected["update_id"]
    assert update.message is not None
    assert update.message.text == "task done"
    assert update.message.chat.id == CHAT
    assert update.message.from_user is not None
    assert update.message.from_user.id == AGENT
    assert update.message.from_user.is_bot
    assert update.message.from_user.username == "agent_bot"
    assert fake.conflicts == 0


async def test_long_poll_times_out_empty(fake: FakeTelegram, bot: Bot) -> None:
    started = time.monotonic()
    assert await bot.get_updates(timeout=1) == ()
    assert 0.9 <= time.monotonic() - started < 3
    assert await bot.get_updates(timeout=0) == ()


async def test_offset_confirms_and_requeue_redelivers(fake: FakeTelegram, bot: Bot) -> None:
    first = fake.inject_message(CHAT, AGENT, "one")
    second = fake.inject_message(CHAT, AGENT, "two", chat_type="group")
    private = fake.inject_message(AGENT, AGENT, "dm", from_is_bot=False, from_username=None)

    got = await bot.get_updates(limit=2)
    assert [u.update_id for u in got] == [first["update_id"], second["update_id"]]
    assert got[1].message is not None
    assert got[1].message.chat.type == "group"
    # Unconfirmed: the same updates come back.
    assert [u.update_id for u in await bot.get_updates()] == [
        first["update_id"],
        second["update_id"],
        private["update_id"],
    ]

    got = await bot.get_updates(offset=second["update_id"] + 1)
    [dm] = got
    assert dm.message is not None
    assert dm.message.chat.type == "private"
    assert dm.message.from_user is not None
    assert not dm.message.from_user.is_bot
    assert dm.message.from_user.username is None
    assert fake.pending_updates() == [private]

    # Confirmed updates are gone for good, even for a lower offset.
    assert [u.update_id for u in await bot.get_updates(offset=1)] == [private["update_id"]]

    # A restart without confirmation: Telegram hands the update out again, unchanged.
    fake.requeue(second)
    got = await bot.get_updates(offset=second["update_id"])
    assert [u.update_id for u in got] == [second["update_id"], private["update_id"]]
    assert got[0].to_dict() == Update.de_json(second, bot).to_dict()
    assert await bot.get_updates(offset=private["update_id"] + 1) == ()
    assert fake.pending_updates() == []


async def test_second_poller_conflicts_the_first(fake: FakeTelegram, bot: Bot) -> None:
    first = asyncio.create_task(bot.get_updates(timeout=5))
    await fake.wait_for_call("getUpdates")
    async with Bot(fake.token, base_url=fake.base_url) as other:
        assert await other.get_updates(timeout=0) == ()
    with pytest.raises(Conflict, match="terminated by other getUpdates request"):
        await asyncio.wait_for(first, 3)
    assert fake.conflicts == 1


async def test_abandoned_poll_is_not_a_conflict(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await fake.wait_for_call("getUpdates")
    poll.cancel()
    with pytest.raises(asyncio.CancelledError):
        await poll
    await bot.get_updates(timeout=0)
    assert fake.conflicts == 0


async def test_wrong_token(fake: FakeTelegram) -> None:
    with pytest.raises(InvalidToken):
        async with Bot("999:WRONG", base_url=fake.base_url):
            pass


async def test_message_length_limit(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(BadRequest, match="Message is too long"):
        await bot.send_message(CHAT, "x" * 4097)
    with pytest.raises(BadRequest, match="Message text is empty"):
        await bot.send_message(CHAT, " ")
    await bot.send_message(CHAT, "x" * 4096)
    assert [len(m.text) for m in fake.sent] == [4096]


async def test_other_methods_and_http_shapes(fake: FakeTelegram, bot: Bot) -> None:
    assert await bot.delete_webhook()
    info = await bot.get_webhook_info()
    assert info.url == ""
    fake.inject_message(CHAT, AGENT, "stale")
    assert await bot.delete_webhook(drop_pending_updates=True)
    assert fake.pending_updates() == []

    async with httpx.AsyncClient() as client:
        url = f"{fake.base_url}{fake.token}"
        response = await client.get(f"{url}/getMe")
        assert response.json()["result"]["username"] == "bridge_bot"
        response = await client.post(f"{url}/sendMessage", json={"chat_id": 5, "text": "json"})
        assert response.json()["result"]["chat"] == {
            "id": 5,
            "type": "private",
            "first_name": "User 5",
        }
        response = await client.get(f"{url}/sendMessage", params={"chat_id": "5", "text": "q"})
        assert response.json()["ok"] is True
        response = await client.post(f"{url}/noSuchMethod")
        assert response.status_code == 404
        assert response.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        response = await client.post(f"{fake.base_url}1:BAD/getMe")
        assert response.status_code == 401
        assert response.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert [(m.chat_id, m.text, m.message_id) for m in fake.sent] == [(5, "json", 1), (5, "q", 2)]


async def test_wait_helpers_fail_clearly(fake: FakeTelegram) -> None:
    with pytest.raises(AssertionError, match="expected at least 1 sent message"):
        await fake.wait_for_sent(1, timeout=0.05)
    with pytest.raises(AssertionError, match="call"):
        await fake.wait_for_call("sendMessage", timeout=0.05)


async def test_shutdown_releases_held_requests() -> None:
    async with running_fake_telegram() as fake:
        bot = Bot(fake.token, base_url=fake.base_url)
        await bot.initialize()
        poll = asyncio.create_task(bot.get_updates(timeout=30))
        fake.fail_next("sendMessage", Fault.timeout(30, deliver=True))
        send = asyncio.create_task(bot.send_message(CHAT, "held", read_timeout=60))
        await fake.wait_for_call("getUpdates")
        await fake.wait_for_call("sendMessage")
        started = time.monotonic()
        # Leaving the block stops the server while both requests are still held.
    assert time.monotonic() - started < 3
    try:
        polled, sent = await asyncio.gather(poll, send, return_exceptions=True)
    finally:
        await bot.shutdown()
    assert polled == ()
    assert isinstance(sent, NetworkError)
    assert fake.sent == []  # the held send was abandoned, not delivered


async def test_chats_members_and_webhooks_through_ptb(fake: FakeTelegram, bot: Bot) -> None:
    from telegram import ChatMemberAdministrator, ChatMemberLeft, ChatMemberMember

    with pytest.raises(BadRequest, match=r"[Cc]hat not found"):
        await bot.get_chat(CHAT)
    fake.add_member(CHAT, 1000, "administrator")
    fake.add_member(CHAT, AGENT, "member", is_bot=True, username="agent_bot")
    chat = await bot.get_chat(CHAT)
    assert (chat.id, chat.type, chat.title) == (CHAT, "supergroup", f"Chat {CHAT}")

    me = await bot.get_chat_member(CHAT, 1000)
    assert isinstance(me, ChatMemberAdministrator)
    assert me.user.username == "bridge_bot"
    agent = await bot.get_chat_member(CHAT, AGENT)
    assert isinstance(agent, ChatMemberMember)
    assert agent.user.is_bot
    assert agent.user.username == "agent_bot"
    stranger = await bot.get_chat_member(CHAT, 77)
    assert isinstance(stranger, ChatMemberLeft)
    with pytest.raises(BadRequest, match=r"[Cc]hat not found"):
        await bot.get_chat_member(-5, AGENT)

    assert await bot.set_webhook("https://elsewhere.example/hook")
    assert (await bot.get_webhook_info()).url == "https://elsewhere.example/hook"
    assert await bot.delete_webhook()
    assert (await bot.get_webhook_info()).url == ""


async def test_a_rate_limited_chat_answers_429_with_the_time_left(
    fake: FakeTelegram, bot: Bot
) -> None:
    fake.rate_limit_chat(CHAT, 5)
    with pytest.raises(RetryAfter) as refused:
        await bot.send_message(CHAT, "flood")
    assert 4 <= refused.value.retry_after.total_seconds() <= 5
    assert [chat for chat, _ in fake.refused] == [CHAT]
    other = await bot.send_message(CHAT + 1, "another chat is not limited")
    assert other.chat.id == CHAT + 1
    assert [m.chat_id for m in fake.sent] == [CHAT + 1]


async def test_an_outage_switch_fails_every_call_until_switched_off(
    fake: FakeTelegram, bot: Bot
) -> None:
    fake.outage = Fault.dropped()
    with pytest.raises(NetworkError):
        await bot.send_message(CHAT, "dropped")
    fake.outage = Fault.server_error(502)
    with pytest.raises(NetworkError):
        await bot.get_updates(timeout=0)
    fake.outage = None
    assert (await bot.send_message(CHAT, "back")).text == "back"
    assert [m.text for m in fake.sent] == ["back"]
