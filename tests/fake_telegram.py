"""A fake Telegram Bot API server for tests that drive the real python-telegram-bot (PTB) client.

Nothing in PTB is patched: point PTB's own HTTP client at the fake with ``base_url``::

    async with running_fake_telegram() as fake:
        async with telegram.Bot(fake.token, base_url=fake.base_url) as bot:
            ...

The fake speaks the Bot API's HTTP shape: ``POST {base_url}{token}/{method}`` with the
parameters form-encoded (every value a string; non-strings JSON-encoded, which is what PTB
sends), as a JSON body, or as query parameters. Answers are ``{"ok": true, "result": ...}`` or
``{"ok": false, "error_code": N, "description": "..."}`` with the same HTTP status, so PTB maps
them to its own exceptions (401 -> InvalidToken, 400 -> BadRequest, 403 -> Forbidden,
409 -> Conflict, 429 with ``parameters.retry_after`` -> RetryAfter, others -> NetworkError).

It models the parts of Telegram the bridge relies on: ``getUpdates`` long polling with offset
confirmation and the 409 Conflict when a second poller appears, ``sendMessage`` with its
4096-character limit, per-chat message ids shared by both directions, and queued faults.
Every wait inside it is an ``asyncio.Condition`` or ``asyncio.Event`` with a deadline; the server
runs in the test's own event loop and only listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_TOKEN = "123456:TEST-TOKEN"
MAX_MESSAGE_LENGTH = 4096
MAX_UPDATES_LIMIT = 100
CONFLICT_DESCRIPTION = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)

JSONDict = dict[str, Any]


@dataclass(frozen=True)
class Fault:
    """One injected failure for one call of a method; build it with the class methods."""

    status: int
    body: JSONDict | None = None
    delay: float = 0.0
    deliver: bool = False
    drop: bool = False
    gate: asyncio.Event | None = None

    @classmethod
    def held(cls, gate: asyncio.Event) -> Fault:
        """The call waits until ``gate`` is set, then runs and answers as usual (a test acts
        while Telegram is busy accepting it)."""
        return cls(200, None, gate=gate)

    @classmethod
    def dropped(cls) -> Fault:
        """The connection breaks mid-answer: headers, part of a body, then nothing (PTB raises
        NetworkError). The method does not run."""
        return cls(200, None, drop=True)

    @classmethod
    def retry_after(cls, seconds: int) -> Fault:
        """429 Too Many Requests with ``parameters.retry_after`` (PTB raises RetryAfter)."""
        return cls(
            429,
            {
                "ok": False,
                "error_code": 429,
                "description": f"Too Many Requests: retry after {seconds}",
                "parameters": {"retry_after": seconds},
            },
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """A 5xx answer (PTB raises NetworkError)."""
        return cls(
            status, {"ok": False, "error_code": status, "description": "Internal Server Error"}
        )

    @classmethod
    def bad_request(cls, description: str = "Bad Request: chat not found") -> Fault:
        """400 (PTB raises BadRequest)."""
        return cls(400, {"ok": False, "error_code": 400, "description": description})

    @classmethod
    def forbidden(cls, description: str = "Forbidden: bot was kicked from the group chat") -> Fault:
        """403 (PTB raises Forbidden)."""
        return cls(403, {"ok": False, "error_code": 403, "description": description})

    @classmethod
    def timeout(cls, seconds: float, deliver: bool = False) -> Fault:
        """Hold the request for ``seconds`` so the client's read timeout fires first.

        Afterwards, if ``deliver`` is true, the method really runs (for sendMessage the message
        counts as sent: Telegram accepted it, the answer was lost). Otherwise nothing happens
        and the late answer, should anyone still be listening, is a 504.
        """
        return cls(
            504,
            {"ok": False, "error_code": 504, "description": "Gateway Timeout"},
            delay=seconds,
            deliver=deliver,
        )


@dataclass
class SentMessage:
    """A message the bot sent with sendMessage and the fake accepted."""

    chat_id: int
    text: str
    message_id: int
    reply_to_message_id: int | None
    parse_mode: str | None
    params: JSONDict = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic, compare=False)  # when it was accepted


class ApiError(Exception):
    """An error answer of the Bot API, raised inside a method handler."""

    def __init__(self, status: int, description: str, parameters: JSONDict | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def body(self) -> JSONDict:
        body: JSONDict = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _dropped() -> Response:
    """An answer that breaks off: it promises a body it never finishes sending."""

    async def body() -> AsyncIterator[bytes]:
        yield b'{"ok": tr'
        raise ConnectionResetError("the fake Bot API dropped the connection")

    return StreamingResponse(body(), status_code=200, headers={"content-type": "application/json"})


def _ok(result: Any) -> JSONResponse:
    return JSONResponse({"ok": True, "result": result})


def _error(status: int, description: str) -> JSONResponse:
    return JSONResponse(
        {"ok": False, "error_code": status, "description": description}, status_code=status
    )


def _decode_json(value: Any) -> Any:
    """A form value is a JSON-encoded string unless it was a string to begin with."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _int_param(params: JSONDict, name: str, default: int | None = None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return int(_decode_json(value))
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"Bad Request: invalid {name} specified") from exc


def _float_param(params: JSONDict, name: str, default: float) -> float:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        return float(_decode_json(value))
    except (TypeError, ValueError) as exc:
        raise ApiError(400, f"Bad Request: invalid {name} specified") from exc


def _bool_param(params: JSONDict, name: str) -> bool:
    value = _decode_json(params.get(name))
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


class FakeTelegram:
    """The fake's state and its Bot API methods; get one from ``running_fake_telegram``."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        bot_id: int = 1000,
        bot_username: str = "bridge_bot",
        base_url: str = "",
    ) -> None:
        self.token = token
        self.base_url = base_url
        self.bot_user: JSONDict = {
            "id": bot_id,
            "is_bot": True,
            "first_name": "Bridge Bot",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }
        self.webhook_url = ""
        # chat_id -> user id -> (chat member status, the user); see add_member
        self.chats: dict[int, dict[int, tuple[str, JSONDict]]] = {}
        self.sent: list[SentMessage] = []
        self.calls: list[tuple[str, JSONDict]] = []
        self.call_times: list[tuple[str, float]] = []  # (method, time.monotonic()) per call
        self.conflicts = 0
        # Fault switches, on until switched off (unlike fail_next, which is one call each).
        self.outage: Fault | None = None  # every method answers this (a 5xx, a drop)
        self.rate_limited: dict[int, float] = {}  # chat id -> until (monotonic): sends get 429
        self.refused: list[tuple[int, float]] = []  # (chat id, monotonic) of each 429 answered

        self._pending: list[JSONDict] = []  # unconfirmed updates, ascending update_id
        self._next_update_id = 1
        self._next_message_ids: defaultdict[int, int] = defaultdict(lambda: 1)
        self._messages: dict[tuple[int, int], JSONDict] = {}  # (chat_id, message_id) -> minimal
        self._faults: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self._poll_seq = 0  # bumped by every getUpdates; a long poll with an older seq lost
        # A condition variable without a lock: _notify() sets this event and replaces it.
        self._changed = asyncio.Event()
        self._closing = False
        self._methods: dict[str, tuple[str, Callable[[JSONDict, Request], Any]]] = {
            name.lower(): (name, handler)
            for name, handler in {
                "getMe": self._get_me,
                "deleteWebhook": self._delete_webhook,
                "setWebhook": self._set_webhook,
                "getChat": self._get_chat,
                "getChatMember": self._get_chat_member,
                "getWebhookInfo": self._get_webhook_info,
                "close": self._true,
                "logOut": self._true,
                "getUpdates": self._get_updates,
                "sendMessage": self._send_message,
            }.items()
        }

    # ----------------------------------------------------------------- test-facing helpers

    @property
    def bot_from(self) -> JSONDict:
        """The bot as the ``from`` of its messages (a plain User, without the getMe extras)."""
        return {key: self.bot_user[key] for key in ("id", "is_bot", "first_name", "username")}

    def add_member(
        self,
        chat_id: int,
        user_id: int,
        status: str = "member",
        *,
        is_bot: bool = False,
        username: str | None = None,
    ) -> None:
        """Make ``chat_id`` exist for getChat and put a user in it with a chat member status
        (``creator``, ``administrator``, ``member``, ``left`` or ``kicked``)."""
        user: JSONDict = {"id": user_id, "is_bot": is_bot, "first_name": username or "User"}
        if username is not None:
            user["username"] = username
        if user_id == self.bot_user["id"]:
            user = dict(self.bot_from)
        self.chats.setdefault(chat_id, {})[user_id] = (status, user)

    def rate_limit_chat(self, chat_id: int, seconds: float) -> None:
        """Telegram's flood control: every sendMessage to ``chat_id`` in the next ``seconds``
        gets a 429 whose ``retry_after`` is the time left (rounded up)."""
        self.rate_limited[chat_id] = time.monotonic() + seconds

    def fail_next(self, method: str, *faults: Fault) -> None:
        """Queue faults for ``method``; each later call of it consumes one, in order."""
        self._faults[self._canonical(method)].extend(faults)

    def inject_message(
        self,
        chat_id: int,
        from_id: int,
        text: str,
        *,
        from_is_bot: bool = True,
        from_username: str | None = "agent_bot",
        reply_to_message_id: int | None = None,
        chat_type: str | None = None,
    ) -> JSONDict:
        """Queue an Update carrying a message someone else sent in ``chat_id``; returns it."""
        sender: JSONDict = {"id": from_id, "is_bot": from_is_bot, "first_name": "Agent"}
        if from_username is not None:
            sender["username"] = from_username
            sender["first_name"] = from_username
        message = self._new_message(chat_id, sender, text, reply_to_message_id, chat_type)
        update = {"update_id": self._next_update_id, "message": message}
        self._next_update_id += 1
        self._pending.append(copy.deepcopy(update))
        self._notify()
        return update

    def requeue(self, update: JSONDict) -> None:
        """Put a delivered update back, as Telegram redelivers one that was never confirmed.

        It keeps its update_id and message, so a getUpdates whose offset is at most that id
        returns it again (one with a larger offset confirms it away once more).
        """
        update_id = update["update_id"]
        if any(pending["update_id"] == update_id for pending in self._pending):
            return
        self._pending.append(copy.deepcopy(update))
        self._pending.sort(key=lambda pending: pending["update_id"])
        self._next_update_id = max(self._next_update_id, update_id + 1)
        self._notify()

    def pending_updates(self) -> list[JSONDict]:
        """Updates not yet confirmed by a getUpdates offset, oldest first."""
        return copy.deepcopy(self._pending)

    def calls_of(self, method: str) -> list[JSONDict]:
        """The parameters of every call of ``method`` so far, in order."""
        name = self._canonical(method)
        return [params for called, params in self.calls if called == name]

    async def wait_for_sent(
        self,
        count: int,
        timeout: float = 10,  # noqa: ASYNC109 - a deadline for the assertion, by design
    ) -> list[SentMessage]:
        """Wait until at least ``count`` messages were sent; AssertionError after ``timeout``."""
        if not await self._wait_until(lambda: len(self.sent) >= count, timeout):
            texts = [message.text[:80] for message in self.sent]
            raise AssertionError(
                f"expected at least {count} sent message(s) within {timeout}s, "
                f"got {len(self.sent)}: {texts!r}"
            ) from None
        return list(self.sent)

    async def wait_for_call(
        self,
        method: str,
        count: int = 1,
        timeout: float = 10,  # noqa: ASYNC109 - a deadline for the assertion, by design
    ) -> list[JSONDict]:
        """Wait until ``method`` was called ``count`` times; returns the calls' parameters."""
        name = self._canonical(method)
        if not await self._wait_until(lambda: len(self.calls_of(name)) >= count, timeout):
            seen = [called for called, _ in self.calls]
            raise AssertionError(
                f"expected at least {count} call(s) of {name} within {timeout}s, "
                f"got {len(self.calls_of(name))}; all calls: {seen!r}"
            ) from None
        return self.calls_of(name)

    # --------------------------------------------------------------------------- internals

    def _canonical(self, method: str) -> str:
        known = self._methods.get(method.lower())
        return known[0] if known else method

    def _notify(self) -> None:
        """Wake every waiter (long polls, held faults, wait_for_*) to re-check its condition."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], within: float) -> bool:
        """Wait (no polling) until ``predicate()`` holds; False if ``within`` s pass first."""
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    await self._changed.wait()
        except TimeoutError:
            return predicate()
        return True

    async def _close(self) -> None:
        """Release every held request (long polls, timeout faults) so the server can stop."""
        self._closing = True
        self._notify()

    def _chat(self, chat_id: int, chat_type: str | None) -> JSONDict:
        kind = chat_type or ("supergroup" if chat_id < 0 else "private")
        chat: JSONDict = {"id": chat_id, "type": kind}
        if kind == "private":
            chat["first_name"] = f"User {chat_id}"
        else:
            chat["title"] = f"Chat {chat_id}"
        return chat

    def _new_message(
        self,
        chat_id: int,
        sender: JSONDict,
        text: str,
        reply_to_message_id: int | None,
        chat_type: str | None,
    ) -> JSONDict:
        message_id = self._next_message_ids[chat_id]
        self._next_message_ids[chat_id] += 1
        message: JSONDict = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": self._chat(chat_id, chat_type),
            "from": sender,
            "text": text,
        }
        self._messages[(chat_id, message_id)] = copy.deepcopy(message)
        if reply_to_message_id is not None:
            replied = self._messages.get((chat_id, reply_to_message_id))
            if replied is None:  # not one the fake knows: still a valid minimal message
                replied = {
                    "message_id": reply_to_message_id,
                    "date": message["date"],
                    "chat": message["chat"],
                }
            message["reply_to_message"] = copy.deepcopy(replied)
        return message

    # ------------------------------------------------------------------------------ HTTP

    async def handle(self, request: Request) -> Response:
        token = request.path_params["token"]
        method = self._canonical(request.path_params["method"])
        try:
            params = await self._read_params(request)
        except ApiError as exc:
            params = {}
            self.calls.append((method, params))
            self._notify()
            return JSONResponse(exc.body(), status_code=exc.status)
        self.calls.append((method, params))
        self.call_times.append((method, time.monotonic()))
        self._notify()
        if token != self.token:
            return _error(401, "Unauthorized")
        known = self._methods.get(method.lower())
        if known is None:
            return _error(404, "Not Found")
        handler = known[1]
        queued = self._faults.get(method)
        fault = queued.popleft() if queued else self.outage
        try:
            if fault is not None and fault.drop:
                return _dropped()
            if fault is not None and fault.gate is not None:
                await fault.gate.wait()
                fault = None
            if fault is not None:
                if not fault.delay:
                    return JSONResponse(fault.body, status_code=fault.status)
                await self._wait_until(lambda: self._closing, fault.delay)
                if self._closing or not fault.deliver:
                    return JSONResponse(fault.body, status_code=fault.status)
            result = handler(params, request)
            if asyncio.iscoroutine(result):
                result = await result
        except ApiError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        if isinstance(result, JSONResponse):
            return result
        return _ok(result)

    async def _read_params(self, request: Request) -> JSONDict:
        params: JSONDict = dict(request.query_params)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json":
            body = await request.body()
            if body.strip():
                try:
                    decoded = json.loads(body)
                except ValueError as exc:
                    raise ApiError(400, "Bad Request: invalid JSON body") from exc
                if not isinstance(decoded, dict):
                    raise ApiError(400, "Bad Request: JSON body must be an object")
                params.update(decoded)
        elif content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            async with request.form() as form:
                for key, value in form.multi_items():
                    params[key] = value.filename if isinstance(value, UploadFile) else value
        return params

    # --------------------------------------------------------------------------- methods

    def _true(self, params: JSONDict, request: Request) -> bool:
        return True

    def _get_me(self, params: JSONDict, request: Request) -> JSONDict:
        return dict(self.bot_user)

    def _delete_webhook(self, params: JSONDict, request: Request) -> bool:
        self.webhook_url = ""
        if _bool_param(params, "drop_pending_updates"):
            self._pending.clear()
        return True

    def _set_webhook(self, params: JSONDict, request: Request) -> bool:
        self.webhook_url = str(params.get("url") or "")
        return True

    def _known_chat(self, params: JSONDict) -> int:
        chat_id = _int_param(params, "chat_id")
        if chat_id is None or chat_id not in self.chats:
            raise ApiError(400, "Bad Request: chat not found")
        return chat_id

    def _get_chat(self, params: JSONDict, request: Request) -> JSONDict:
        """A ChatFullInfo: the chat's id, type and title (and the colour PTB requires)."""
        chat_id = self._known_chat(params)
        return {**self._chat(chat_id, None), "accent_color_id": 0, "max_reaction_count": 11}

    def _get_chat_member(self, params: JSONDict, request: Request) -> JSONDict:
        """The member's status; a user the chat never had is ``left``, as Telegram answers."""
        chat_id = self._known_chat(params)
        user_id = _int_param(params, "user_id")
        if user_id is None:
            raise ApiError(400, "Bad Request: user_id is empty")
        status, user = self.chats[chat_id].get(
            user_id, ("left", {"id": user_id, "is_bot": False, "first_name": "User"})
        )
        member: JSONDict = {"status": status, "user": user}
        if status == "kicked":
            member["until_date"] = 0
        if status == "administrator":
            member.update(
                {
                    name: name in ("can_manage_chat", "can_delete_messages")
                    for name in (
                        "can_be_edited",
                        "is_anonymous",
                        "can_manage_chat",
                        "can_delete_messages",
                        "can_manage_video_chats",
                        "can_restrict_members",
                        "can_promote_members",
                        "can_change_info",
                        "can_invite_users",
                        "can_post_stories",
                        "can_edit_stories",
                        "can_delete_stories",
                    )
                }
            )
        if status == "creator":
            member["is_anonymous"] = False
        return member

    def _get_webhook_info(self, params: JSONDict, request: Request) -> JSONDict:
        return {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._pending),
        }

    async def _get_updates(self, params: JSONDict, request: Request) -> Any:
        offset = _int_param(params, "offset", 0) or 0
        limit = _int_param(params, "limit", MAX_UPDATES_LIMIT) or MAX_UPDATES_LIMIT
        limit = max(1, min(limit, MAX_UPDATES_LIMIT))
        timeout = max(0.0, _float_param(params, "timeout", 0.0))

        # Any getUpdates ends a long poll still in flight (it then answers 409 Conflict).
        self._poll_seq += 1
        seq = self._poll_seq
        self._notify()

        if offset > 0:  # confirms every update before it, for good
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        elif offset < 0:  # the last -offset updates; everything before them is forgotten
            self._pending = self._pending[offset:]
        if self._pending or timeout == 0:
            return copy.deepcopy(self._pending[:limit])

        await self._wait_until(
            lambda: bool(self._pending) or self._poll_seq != seq or self._closing, timeout
        )
        if self._poll_seq != seq and not self._closing:
            # Superseded. A poller whose client already hung up is not a second bot instance.
            if not await request.is_disconnected():
                self.conflicts += 1
            return _error(409, CONFLICT_DESCRIPTION)
        # Updates that arrived during the wait are all >= offset (ids only grow; a requeued
        # one below the offset is confirmed right away, as the next call would do).
        if offset > 0:
            self._pending = [u for u in self._pending if u["update_id"] >= offset]
        return copy.deepcopy(self._pending[:limit])

    def _send_message(self, params: JSONDict, request: Request) -> JSONDict:
        raw_chat_id = _decode_json(params.get("chat_id"))
        if raw_chat_id is None or raw_chat_id == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        try:
            chat_id = int(raw_chat_id)
        except (TypeError, ValueError) as exc:
            raise ApiError(400, "Bad Request: chat not found") from exc
        left = self.rate_limited.get(chat_id, 0.0) - time.monotonic()
        if left > 0:
            self.refused.append((chat_id, time.monotonic()))
            self._notify()
            wait = math.ceil(left)
            raise ApiError(429, f"Too Many Requests: retry after {wait}", {"retry_after": wait})
        text = params.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_MESSAGE_LENGTH:
            raise ApiError(400, "Bad Request: message is too long")

        reply_to = _int_param(params, "reply_to_message_id")
        reply_parameters = _decode_json(params.get("reply_parameters"))
        if isinstance(reply_parameters, dict) and reply_parameters.get("message_id") is not None:
            reply_to = int(reply_parameters["message_id"])
        parse_mode = params.get("parse_mode")

        message = self._new_message(chat_id, self.bot_from, text, reply_to, None)
        self.sent.append(
            SentMessage(
                chat_id=chat_id,
                text=text,
                message_id=message["message_id"],
                reply_to_message_id=reply_to,
                parse_mode=str(parse_mode) if parse_mode is not None else None,
                params=dict(params),
            )
        )
        self._notify()
        return message


class _Server(uvicorn.Server):
    """uvicorn inside a test: no signal handlers, reports startup, stops on ``stop()``."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self.should_exit = True
        self._stop.set()

    async def main_loop(self) -> None:
        # uvicorn's own loop re-checks should_exit every 0.1 s; wait on an event instead.
        await self.on_tick(0)  # sets the default response headers
        await self._stop.wait()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process keeps its own SIGINT/SIGTERM handlers

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@asynccontextmanager
async def running_fake_telegram(
    token: str = DEFAULT_TOKEN, *, bot_id: int = 1000, bot_username: str = "bridge_bot"
) -> AsyncIterator[FakeTelegram]:
    """Serve a FakeTelegram on 127.0.0.1 (a free port) in the current event loop."""
    fake = FakeTelegram(token, bot_id=bot_id, bot_username=bot_username)
    app = Starlette(routes=[Route("/bot{token}/{method}", fake.handle, methods=["GET", "POST"])])
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        lifespan="off",
        ws="none",
        http="h11",
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    try:
        await asyncio.wait({serving, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if not server.ready.is_set():
            if serving.done():
                serving.result()  # re-raise why it stopped
            raise AssertionError("the fake Telegram server did not start within 10s")
        port = server.servers[0].sockets[0].getsockname()[1]
        fake.base_url = f"http://127.0.0.1:{port}/bot"
        yield fake
    finally:
        ready.cancel()
        await fake._close()
        server.stop()
        if not serving.done():
            await serving
