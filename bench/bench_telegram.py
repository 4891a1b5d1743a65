"""4. An agent's Telegram reply reaching a client that is already waiting in ``pull_updates``.

Everything runs in one event loop on 127.0.0.1: the fake Bot API server from the tests
(``tests/fake_telegram.py``), the real server with its Telegram transport (unpatched
python-telegram-bot, long polling ``getUpdates``), and the MCP SDK client.

One task is sent over MCP, delivered to the fake chat and moved to ``in_progress`` by a
``[Working]`` reply. Then every sample:

1. waits until the transport's poller is parked in a long ``getUpdates`` (steady state);
2. starts ``pull_updates(cursor=<latest next_cursor>, wait_seconds=10)`` and waits until the
   server's pull is really waiting: the queue logs "waiting up to" at DEBUG right before it
   waits, and a logging handler turns that into an event (no fixed sleep);
3. starts the clock and wakes the pull, and stops the clock when ``pull_updates`` returns:

   * measured: the fake injects the agent's reply (a Telegram reply to the task's message);
     the poller's pending ``getUpdates`` answers at once, the transport journals the message
     and turns it into an update, which wakes the pull;
   * baseline: ``QueueService.agent_report`` on the same server's queue (one write
     transaction, then the in-process wake-up).

The two kinds alternate (the order flips every round). Target: p99 of the measured path under
100 ms; the ratio column is p99 / baseline p99.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The fake Bot API server lives with the tests: import it from the repository root.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from benchlib import (
    Report,
    Row,
    Sample,
    fmt_seconds,
    progress,
    running_bridge,
    server_settings,
    sqlite_url,
)
from mcp import Client

from nexus_bridge.queue import QueueService
from tests.fake_telegram import FakeTelegram, running_fake_telegram

TARGET_P99 = 0.100  # seconds, absolute
WAIT_SECONDS = 10  # the client's wait_seconds: far longer than any sample
POLL_TIMEOUT = 10  # the transport's getUpdates long-poll timeout
STEP_DEADLINE = 20.0  # for any single set-up step or sample: beyond it, something is broken
CHAT = -1001234
AGENT = 4242
QUEUE_LOGGER = "nexus_bridge.queue"
WAITING_MARK = "waiting up to"  # QueueService.pull logs this at DEBUG right before it waits


class _PullWaiting(logging.Handler):
    """Sets ``event`` whenever a pull in this process is about to wait for an update."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if WAITING_MARK in str(record.msg):
            self.event.set()


@contextmanager
def _watch_waiting_pulls() -> Iterator[_PullWaiting]:
    """Enable the queue's DEBUG records for the handler only; restore the logger afterwards."""
    logger = logging.getLogger(QUEUE_LOGGER)
    handler = _PullWaiting()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # the DEBUG records are for the handler, not for any root handler
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool} failed: {result.content}")
    return dict(result.structured_content or {})


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Set-up only: poll ``check`` every 10 ms until it holds, within STEP_DEADLINE."""
    deadline = time.monotonic() + STEP_DEADLINE
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {STEP_DEADLINE:g}s waiting for {what}")
        await asyncio.sleep(0.01)


async def _latest_cursor(client: Client) -> str:
    cursor = "0"
    while True:
        page = await _call(client, "pull_updates", {"cursor": cursor, "limit": 500})
        cursor = str(page["next_cursor"])
        if not page["has_more"]:
            return cursor


class _Replies:
    """The running set-up: one task in progress, a cursor at the end of the stream."""

    def __init__(
        self,
        fake: FakeTelegram,
        client: Client,
        queue: QueueService,
        waiting: _PullWaiting,
        task_id: str,
        task_message: int,
        cursor: str,
    ) -> None:
        self._fake = fake
        self._client = client
        self._queue = queue
        self._waiting = waiting
        self._task_id = task_id
        self._task_message = task_message
        self._cursor = cursor
        self._numbers = itertools.count(1)
        self._run_id = uuid.uuid4().hex[:6]
        # The getUpdates call that is (or soon will be) parked waiting for the next message.
        self._parked_poll = len(fake.calls_of("getUpdates"))

    async def sample(self, via_telegram: bool) -> float:
        """One waiting pull woken by one new agent update; seconds from wake-up to return."""
        fake = self._fake
        # 1. The poller is parked in a long getUpdates (its call arrived and nothing is pending).
        await fake.wait_for_call("getUpdates", self._parked_poll, timeout=STEP_DEADLINE)
        text = f"bench {self._run_id} report {next(self._numbers)}: disk check passed"
        # 2. A pull that is waiting on the server.
        self._waiting.event.clear()
        pull = asyncio.create_task(
            self._client.call_tool(
                "pull_updates", {"cursor": self._cursor, "wait_seconds": WAIT_SECONDS}
            )
        )
        await self._until_waiting(pull)
        # 3. Wake it, and time until the client has the answer.
        if via_telegram:
            self._parked_poll = len(fake.calls_of("getUpdates")) + 1
            start = time.perf_counter()
            fake.inject_message(CHAT, AGENT, text, reply_to_message_id=self._task_message)
        else:
            target = (await self._queue.get(self._task_id)).task.target
            start = time.perf_counter()
            await self._queue.agent_report(target, self._task_id, text=text)
        result = await pull
        elapsed = time.perf_counter() - start
        self._check(result, text)
        return elapsed

    async def _until_waiting(self, pull: asyncio.Task[Any]) -> None:
        ready = asyncio.create_task(self._waiting.event.wait())
        done, _ = await asyncio.wait(
            {pull, ready}, timeout=STEP_DEADLINE, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            return
        ready.cancel()
        if pull in done:
            raise RuntimeError(f"pull_updates returned before it waited: {pull.result()}")
        pull.cancel()
        raise RuntimeError(f"pull_updates did not start waiting within {STEP_DEADLINE:g}s")

    def _check(self, result: Any, text: str) -> None:
        if result.is_error:
            raise RuntimeError(f"pull_updates failed: {result.content}")
        page = result.structured_content or {}
        updates = page.get("updates", [])
        got = [(u["kind"], u["message_id"], u["content"]) for u in updates]
        if got != [("agent", self._task_id, text)]:
            raise RuntimeError(f"expected exactly the agent's update {text!r}, got {got!r}")
        self._cursor = str(page["next_cursor"])


async def _set_up(fake: FakeTelegram, client: Client) -> tuple[str, int]:
    """One task, delivered and in progress; returns its id and its Telegram message id."""
    sent = await _call(client, "send_message", {"message": "bench: watch the nightly backups"})
    task_id = str(sent["id"])

    async def delivered() -> bool:
        detail = await _call(client, "get_message", {"id": task_id})
        return bool(detail["delivery"]) and detail["delivery"]["state"] == "delivered"

    await _until(delivered, "the task to be delivered to the fake chat")
    detail = await _call(client, "get_message", {"id": task_id})
    task_message = int(detail["delivery"]["telegram_message_ids"][0])

    fake.inject_message(CHAT, AGENT, "[Working] on it", reply_to_message_id=task_message)

    async def in_progress() -> bool:
        return (await _call(client, "get_message", {"id": task_id}))["status"] == "in_progress"

    await _until(in_progress, "the task to be in_progress")
    return task_id, task_message


async def run(report: Report, database: Path, *, replies: int, warmup: int) -> None:
    # python-telegram-bot warns about int retry_after unless opted in to its timedelta form.
    os.environ.setdefault("PTB_TIMEDELTA", "true")
    progress(
        f"4. Telegram reply -> waiting pull_updates: fake Bot API, live server on {database.name}"
    )
    samples: dict[bool, list[float]] = {True: [], False: []}
    with _watch_waiting_pulls() as waiting:
        async with running_fake_telegram() as fake:
            settings = server_settings(
                sqlite_url(database),
                telegram_bot_token=fake.token,
                telegram_chat_id=CHAT,
                telegram_agent_ids=[AGENT],
                telegram_agent_username="agent_bot",
                telegram_base_url=fake.base_url,
                telegram_poll_timeout=POLL_TIMEOUT,
                telegram_min_send_interval=0,
                telegram_retry_base_seconds=0.05,
            )
            async with running_bridge(settings) as (url, server), Client(url) as client:
                queue = server._bridge.queue
                task_id, task_message = await _set_up(fake, client)
                cursor = await _latest_cursor(client)
                progress(
                    f"  server at {url}, fake Bot API at {fake.base_url.rsplit('/', 1)[0]}; "
                    f"task {task_id[:8]} in progress, cursor {cursor}"
                )
                bench = _Replies(fake, client, queue, waiting, task_id, task_message, cursor)
                for i in range(warmup):
                    for via_telegram in (i % 2 == 0, i % 2 == 1):
                        await bench.sample(via_telegram)
                gc.collect()
                report_every = max(1, replies // 4)
                for i in range(replies):
                    for via_telegram in (i % 2 == 0, i % 2 == 1):
                        samples[via_telegram].append(await bench.sample(via_telegram))
                    if (i + 1) % report_every == 0 and i + 1 < replies:
                        progress(f"  Telegram / service wake-ups: {i + 1}/{replies} rounds")
                polls = len(fake.calls_of("getUpdates"))

    telegram, service = Sample(samples[True]), Sample(samples[False])
    report.rows.append(
        Row(
            section="4",
            name="Telegram reply -> waiting pull_updates vs service-layer insert",
            measured=_describe(telegram),
            baseline=f"agent_report {_describe(service)}",
            ratio=telegram.p99 / service.p99,
            target_text=f"p99 < {fmt_seconds(TARGET_P99)}",
            passed=telegram.p99 < TARGET_P99,
        )
    )
    report.notes.append(
        "4: one MCP client waits in pull_updates(cursor, wait_seconds="
        f"{WAIT_SECONDS}) and is woken by an agent reply injected into the fake Bot API "
        f"(getUpdates long polling, timeout {POLL_TIMEOUT}s, poller parked) or, baseline, by "
        "QueueService.agent_report on the same server; time from the wake-up to the tool's "
        "return; kinds alternate; ratio = Telegram p99 / baseline p99 "
        f"(p50s: {telegram.p50 / service.p50:.2f}x); the target is absolute, not a ratio."
    )
    progress(f"  Telegram reply {_describe(telegram)}")
    progress(f"  agent_report {_describe(service)}")
    progress(f"  {polls} getUpdates calls in all")


def _describe(sample: Sample) -> str:
    return f"p50 {fmt_seconds(sample.p50)}, p99 {fmt_seconds(sample.p99)} (n={len(sample.times)})"
