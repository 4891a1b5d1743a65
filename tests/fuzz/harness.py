"""The fuzz harness: a real bridge that hypothesis examples call into, and what they check.

The bridge (uvicorn on an ephemeral loopback port, the fake Telegram Bot API, the SDK's own MCP
clients) runs in an event loop on its own thread, started once per test module; each example
calls it through an anyio blocking portal, so hypothesis drives plain synchronous test functions.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal
from mcp import Client
from mcp_types import CallToolResult

from nexus_bridge.config import Settings
from nexus_bridge.db import migrate
from tests.conftest import mcp_client, running_server, wait_for
from tests.e2e.test_agent_api import agent_client
from tests.fake_telegram import FakeTelegram, running_fake_telegram
from tests.fuzz.consistency import connect_read_only, problems

T = TypeVar("T")
_WEDGED: list[Any] = []  # bridges abandoned after a hang, kept referenced until exit


CALL_SECONDS = 3.0  # one tool call, however hostile its arguments, answers within this
HEALTH_SECONDS = 5.0
STOP_SECONDS = 30.0
MAX_WAIT_SECONDS = 0.2  # the server's cap on wait_seconds, so valid waits stay cheap
MAX_MESSAGE_CHARS = 4_000
MAX_ERROR_CHARS = 1_000  # a one-line error names the field; it need not echo 100k characters

CHAT = -100_777
AGENT_ID = 4242
STRANGER_ID = 666
TELEGRAM_TARGET = "homelab"
FELT = "nexus:felt"  # an agent target, tasks handed out as soon as asked
SENTRY = "nexus:sentry"  # an agent target, one task at a time
AGENT_TOKENS = {FELT: "felt-agent-token-" + "f" * 24, SENTRY: "sentry-agent-token-" + "s" * 24}
TARGETS = {TELEGRAM_TARGET: "telegram", FELT: "agent", SENTRY: "agent"}
CHATS = {CHAT: TELEGRAM_TARGET}


def short(value: Any, limit: int = 300) -> str:
    """A repr that fits in a failure message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


@dataclass
class Answer:
    """What a tool call returned: a result (``data``) or a tool error (``error``)."""

    tool: str
    arguments: dict[str, Any]
    data: dict[str, Any] | None
    error: str | None


@dataclass
class _Live:
    url: str
    client: Client
    agents: dict[str, Client]
    fake: FakeTelegram
    http: httpx.AsyncClient


class LiveBridge:
    """A running bridge, called from the test's thread.

    If a call does not answer in time (the server may be wedged, a handler spinning forever) or
    the database is found inconsistent, the example fails and the next one gets a fresh bridge
    on a fresh database: one failure cannot fail every later example, nor mislead hypothesis
    while it shrinks.
    """

    def __init__(self, directory: Path, on_start: Callable[[LiveBridge], None]) -> None:
        self._root = directory
        self._on_start = on_start
        self._starts = 0
        self._spoiled = False
        self._wedged = False
        self._start()

    def _start(self) -> None:
        self._starts += 1
        directory = self._root / f"run-{self._starts}"
        directory.mkdir()
        self.database = directory / "bridge.db"
        migrate.upgrade(f"sqlite+aiosqlite:///{self.database}")  # alembic runs its own loop
        ready: queue.Queue[BlockingPortal] = queue.Queue()
        self._thread = threading.Thread(
            target=_event_loop, args=(ready,), name=f"fuzz-bridge-{self._starts}", daemon=True
        )
        self._thread.start()
        self._portal = ready.get(timeout=STOP_SECONDS)
        self._held, (self._live, self._stop) = self._portal.start_task(_hold, directory)
        self.fake = self._live.fake
        self._spoiled = self._wedged = False
        self._on_start(self)

    def close(self) -> None:
        """Stop the server (a wedged one is abandoned)."""
        if self._wedged:
            # Left running in its daemon thread until the process exits: tearing down a server
            # with a handler stuck in it takes long and leaks warnings into later tests.
            _WEDGED.append(self._live)
            return
        self._portal.call(self._stop.set)
        self._held.result(timeout=STOP_SECONDS)
        self._portal.call(self._portal.stop, True)
        self._thread.join(timeout=STOP_SECONDS)

    def _ensure_running(self) -> None:
        if self._spoiled:
            self.close()
            self._start()

    def run(self, make: Callable[[], Awaitable[T]], *, within: float, what: str) -> T:
        """Run ``make()`` in the bridge's loop; fail the example if it takes over ``within`` s.

        The deadline is kept from this thread, so it holds even if the server's loop is stuck.
        """
        self._ensure_running()

        async def call() -> T:
            return await make()

        future = self._portal.start_task_soon(call)
        try:
            return future.result(timeout=within)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._spoiled = self._wedged = True
            raise AssertionError(f"{what} did not answer within {within:g} s") from None

    def call(self, tool: str, arguments: dict[str, Any], *, agent: str | None = None) -> Answer:
        """Call ``tool`` on /mcp (or on /agent/mcp as the agent of ``agent``); check the shape."""
        client = self._live.client if agent is None else self._live.agents[agent]
        where = "/mcp" if agent is None else f"/agent/mcp as {agent}"
        what = f"{tool}({short(arguments, 160)}) on {where}"
        try:
            result: CallToolResult = self.run(
                lambda: client.call_tool(tool, arguments), within=CALL_SECONDS, what=what
            )
        except AssertionError:
            raise
        except Exception as exc:  # a protocol error instead of a tool result
            raise AssertionError(f"{what} raised {type(exc).__name__}: {short(str(exc))}") from exc
        return _check_answer(tool, arguments, result, what)

    def healthy(self) -> None:
        """The server still answers /healthz, promptly."""

        async def get() -> int:
            return (
                await self._live.http.get(self._live.url.removesuffix("/mcp") + "/healthz")
            ).status_code

        status = self.run(get, within=HEALTH_SECONDS, what="/healthz")
        assert status == 200, f"/healthz answered {status}"

    def consistent(self) -> None:
        """The database holds no half-written or contradictory row."""
        self._ensure_running()
        with connect_read_only(self.database) as db:
            found = problems(db, targets=TARGETS, chats=CHATS, max_message_chars=MAX_MESSAGE_CHARS)
        if found:
            self._spoiled = True  # later examples start over on a clean database
            raise AssertionError("the database is inconsistent:\n" + "\n".join(found[:20]))

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        self._ensure_running()
        return self._rows(sql, *params)

    def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with connect_read_only(self.database) as db:
            return list(db.execute(sql, params))

    def task_ids(self, target: str | None = None) -> list[str]:
        sql = "SELECT id FROM tasks" + (" WHERE target = ?" if target else "") + " ORDER BY id"
        return [row[0] for row in self.query(sql, *([target] if target else []))]

    def inject(self, text: str, *, sender: int, reply_to: int | None) -> tuple[int, int]:
        """An inbound Telegram message in the homelab chat; returns (chat, message id)."""

        async def inject() -> int:  # in the bridge's loop: the fake wakes its long polls
            update = self.fake.inject_message(CHAT, sender, text, reply_to_message_id=reply_to)
            return int(update["message"]["message_id"])

        return CHAT, self.run(inject, within=HEALTH_SECONDS, what="the fake Telegram")

    def processed(self, chat: int, message_id: int) -> None:
        """Wait until the bridge journaled and acted on an inbound message."""

        async def seen() -> bool:
            rows = self._rows(
                "SELECT processed_at, accepted FROM telegram_messages"
                " WHERE chat_id = ? AND telegram_message_id = ? AND direction = 'in'",
                chat,
                message_id,
            )
            return bool(rows) and (rows[0][0] is not None or not rows[0][1])

        self.run(
            lambda: wait_for(seen, deadline=CALL_SECONDS, what=f"message {message_id} processed"),
            within=CALL_SECONDS + 2,
            what=f"processing inbound message {message_id}",
        )


def _check_answer(
    tool: str, arguments: dict[str, Any], result: CallToolResult, what: str
) -> Answer:
    assert len(result.content) == 1, f"{what}: {len(result.content)} content blocks"
    text = getattr(result.content[0], "text", None)
    assert isinstance(text, str), f"{what}: content is not text: {short(result.content[0])}"
    if result.is_error:
        assert "\n" not in text, f"{what}: a multi-line error: {short(text)}"
        assert "internal error" not in text, f"{what}: {text}"
        assert "Traceback" not in text, f"{what}: {short(text)}"
        assert text.strip(), f"{what}: an empty error"
        assert len(text) <= MAX_ERROR_CHARS, f"{what}: a {len(text)}-char error: {short(text)}"
        return Answer(tool, arguments, None, text)
    data = result.structured_content
    assert isinstance(data, dict), f"{what}: no structured content: {short(text)}"
    assert json.loads(text) == data, f"{what}: the text differs from the structured content"
    return Answer(tool, arguments, dict(data), None)


def _targets_file(path: Path) -> Path:
    path.write_text(
        f"[targets.{TELEGRAM_TARGET}]\n"
        'transport = "telegram"\n'
        f"chat_id = {CHAT}\n"
        f"agent_ids = [{AGENT_ID}]\n"
        'agent_username = "agent_bot"\n'
        "\n"
        f'[targets."{FELT}"]\n'
        'transport = "agent"\n'
        f'agent_tokens = ["{AGENT_TOKENS[FELT]}"]\n'
        "\n"
        f'[targets."{SENTRY}"]\n'
        'transport = "agent"\n'
        'dispatch = "one_at_a_time"\n'
        f'agent_tokens = ["{AGENT_TOKENS[SENTRY]}"]\n'
    )
    return path


def _event_loop(ready: queue.Queue[BlockingPortal]) -> None:
    """The bridge's thread: an asyncio loop serving a portal until it is stopped."""

    async def main() -> None:
        async with BlockingPortal() as portal:
            ready.put(portal)
            await portal.sleep_until_stopped()

    asyncio.run(main())


async def _hold(directory: Path, *, task_status: TaskStatus[tuple[_Live, anyio.Event]]) -> None:
    """Serve until told to stop (started() hands over the live bridge and the stop event)."""
    stop = anyio.Event()
    async with _serve(directory) as live:
        task_status.started((live, stop))
        await stop.wait()


@asynccontextmanager
async def _serve(directory: Path) -> AsyncIterator[_Live]:
    url = f"sqlite+aiosqlite:///{directory / 'bridge.db'}"
    async with AsyncExitStack() as stack:
        fake = await stack.enter_async_context(running_fake_telegram())
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=url,
            config_file=_targets_file(directory / "targets.toml"),
            agent_token_file=directory / "agent-token",
            max_wait_seconds=MAX_WAIT_SECONDS,
            max_message_chars=MAX_MESSAGE_CHARS,
            telegram_bot_token=fake.token,
            telegram_chat_id=CHAT,
            telegram_base_url=fake.base_url,
            telegram_poll_timeout=1,
            telegram_min_send_interval=0,
            telegram_retry_base_seconds=0.05,
            telegram_request_timeout=2,
            shutdown_grace_seconds=1,
            change_poll_seconds=0.2,
        )
        mcp_url, _ = await stack.enter_async_context(running_server(settings))
        base = mcp_url.removesuffix("/mcp")
        client = await stack.enter_async_context(mcp_client(mcp_url))
        agents = {
            target: await stack.enter_async_context(agent_client(base, token))
            for target, token in AGENT_TOKENS.items()
        }
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=HEALTH_SECONDS))
        yield _Live(url=mcp_url, client=client, agents=agents, fake=fake, http=http)


@contextmanager
def live_bridge(directory: Path, on_start: Callable[[LiveBridge], None]) -> Iterator[LiveBridge]:
    """Start the bridge in a background event loop (``on_start`` seeds it); stop it at the end."""
    bridge = LiveBridge(directory, on_start)
    try:
        yield bridge
    finally:
        bridge.close()
