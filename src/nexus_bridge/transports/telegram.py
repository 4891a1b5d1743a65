"""The Telegram transport: post tasks into the agent's chat, turn the agent's replies into updates.

A python-telegram-bot ``Application`` shares the server's event loop. One process at a time
polls (a lease in the database elects it); the others serve MCP only and take over when the
holder stops renewing.

Inbound updates are fetched with ``getUpdates`` and confirmed (by the next call's offset) only
after they were journaled, so an update is never lost, and a redelivered one is stored once.
Outbound messages come from the outbox, which ``send_message`` commits with the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from telegram import Message, ReplyParameters, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, ApplicationBuilder, ContextTypes, MessageHandler, filters
from telegram.request import HTTPXRequest

from nexus_bridge.config import DEFAULT_TARGET, TelegramSettings
from nexus_bridge.domain import OutboxKind
from nexus_bridge.errors import InvalidInput
from nexus_bridge.logs import quiet_noisy_loggers
from nexus_bridge.metrics import METRICS
from nexus_bridge.protocol import render_cancel, render_reply, render_task
from nexus_bridge.queue import Delivery, QueueService

logger = logging.getLogger(__name__)

POLLER_LEASE: Final = "telegram-poller"
# Enqueues (in this process or, through the change watcher, any other) wake the worker at once;
# this only bounds how long it sleeps with nothing to do.
IDLE_DELIVERY_CHECK_SECONDS: Final = 60.0
MAX_POLL_BACKOFF_SECONDS: Final = 30.0


class TransportState:
    """What ``queue_status`` and ``/readyz`` say about the transport in this process."""

    NOT_CONFIGURED: Final = "not configured"
    STARTING: Final = "starting"
    POLLING: Final = "polling"  # this process holds the lease: it polls and delivers
    STANDBY: Final = "standby"  # another process polls; this one serves MCP only
    ERROR: Final = "error"
    STOPPED: Final = "stopped"


@dataclass(frozen=True, slots=True)
class TelegramRoute:
    """One target on this bot: its chat, whose messages count as its agent's, whom to mention."""

    target: str
    chat_id: int
    agent_ids: frozenset[int]
    agent_username: str | None


@dataclass(frozen=True, slots=True)
class TransportStatus:
    name: str
    state: str
    detail: str | None
    holder_id: str | None


def make_holder_id() -> str:
    """A name for this process in the lease table: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _describe(exc: TelegramError) -> str:
    return exc.message or type(exc).__name__


class TelegramTransport:
    """Runs the poller and the delivery worker while this process holds the poller lease."""

    def __init__(
        self,
        queue: QueueService,
        settings: TelegramSettings,
        *,
        routes: Sequence[TelegramRoute] | None = None,
        holder_id: str | None = None,
    ) -> None:
        self._queue = queue
        self._settings = settings
        if routes is None:
            if settings.chat_id is None:
                raise ValueError("a chat id is needed: in the settings or in routes")
            routes = [
                TelegramRoute(
                    DEFAULT_TARGET, settings.chat_id, settings.agent_ids, settings.agent_username
                )
            ]
        self._by_chat = {route.chat_id: route for route in routes}
        self._by_target = {route.target: route for route in routes}
        self.holder_id = holder_id or make_holder_id()
        self._state = TransportState.STARTING
        self._detail: str | None = None
        self._stopping = asyncio.Event()
        self._inbound_failed = False
        self._unprocessed = False  # a journaled message failed to process: retry it
        self._last_send = 0.0
        quiet_noisy_loggers()  # before PTB builds its bot: it logs the URL, token included
        self._application = self._build_application()

    # --- status ------------------------------------------------------------------------------

    @property
    def status(self) -> TransportStatus:
        return TransportStatus(
            name="telegram", state=self._state, detail=self._detail, holder_id=self.holder_id
        )

    def _set_state(self, state: str, detail: str | None = None) -> None:
        if (state, detail) != (self._state, self._detail):
            logger.info("telegram transport: %s%s", state, f" ({detail})" if detail else "")
        self._state, self._detail = state, detail

    # --- wiring --------------------------------------------------------------------------------

    def _build_application(self) -> Application[Any, Any, Any, Any, Any, Any]:
        timeout = self._settings.request_timeout
        request = HTTPXRequest(
            connection_pool_size=4,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            pool_timeout=timeout,
        )
        # Long polls hold the connection for poll_timeout seconds: give them that much more.
        polling = HTTPXRequest(
            connect_timeout=timeout,
            read_timeout=self._settings.poll_timeout + timeout,
            write_timeout=timeout,
            pool_timeout=timeout,
        )
        self._requests = (request, polling)
        application = (
            ApplicationBuilder()
            .token(self._settings.token)
            .base_url(self._settings.base_url)
            .request(request)
            .get_updates_request(polling)
            .updater(None)
            .build()
        )
        application.add_handler(MessageHandler(filters.ALL, self.on_message))
        application.add_error_handler(self.on_error)
        return application

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Until :meth:`stop`: hold (or wait for) the lease, and poll and deliver while held."""
        for warning in self._settings.warnings:
            logger.warning("%s", warning)
        workers: list[asyncio.Task[None]] = []
        renew_every = self._settings.lease_seconds / 3
        initialized = False
        try:
            while not self._stopping.is_set():
                if not initialized:
                    initialized = await self._initialize()
                    if not initialized:
                        await self._pause(renew_every)
                        continue
                held = await self._try_lease()
                if held and not workers:
                    await self._recover_inbound()
                    webhook = self._settings.webhook_url
                    inbound = self._register_webhook(webhook) if webhook else self._poll_loop()
                    workers = [
                        asyncio.create_task(inbound, name="telegram-inbound"),
                        asyncio.create_task(self._delivery_loop(), name="telegram-deliver"),
                    ]
                    self._set_state(TransportState.POLLING)
                elif not held:
                    if workers:
                        logger.warning("telegram transport: lost the poller lease; standing by")
                        await self._cancel(workers)
                        workers = []
                    await self._report_standby()
                if any(worker.done() for worker in workers):
                    # A worker died (a database error, say): restart both at the next renewal
                    # rather than stay silently stopped. A rejected token ends the transport.
                    failures = [w.exception() for w in workers if w.done() and not w.cancelled()]
                    await self._cancel(workers)
                    workers = []
                    for failure in failures:
                        if isinstance(failure, InvalidToken):
                            raise failure
                        if failure is not None:
                            logger.error(
                                "telegram transport: a worker stopped (%s); restarting", failure
                            )
                    self._set_state(TransportState.ERROR, "restarting after an error")
                await self._pause(renew_every)
        except InvalidToken as exc:
            METRICS.telegram_error(exc)  # counted once, wherever it was raised: it is final
            self._set_state(TransportState.ERROR, "Telegram rejected the bot token")
            logger.error("telegram transport: the bot token was rejected; it stays off")  # noqa: TRY400
        finally:
            await self._cancel(workers)
            with contextlib.suppress(Exception):
                await self._queue.release_lease(POLLER_LEASE, self.holder_id)
            with contextlib.suppress(Exception):
                await self._application.shutdown()
            # An application whose getMe failed (a rejected token) was never initialised, so its
            # shutdown above does nothing: close the connections its bot opened all the same.
            for request in self._requests:
                with contextlib.suppress(Exception):
                    await request.shutdown()
            if self._state != TransportState.ERROR:
                self._set_state(TransportState.STOPPED)

    async def stop(self) -> None:
        self._stopping.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _initialize(self) -> bool:
        """getMe: checks the token and reachability. InvalidToken propagates (it is final)."""
        try:
            await self._application.initialize()
        except InvalidToken:
            raise
        except TelegramError as exc:
            METRICS.telegram_error(exc)
            self._set_state(TransportState.ERROR, f"cannot reach Telegram: {_describe(exc)}")
            return False
        return True

    async def _report_standby(self) -> None:
        try:
            lease = await self._queue.lease(POLLER_LEASE)
        except Exception:
            logger.exception("telegram transport: could not read the poller lease")
            return
        self._set_state(TransportState.STANDBY, f"polled by {lease.holder}" if lease else None)

    async def _try_lease(self) -> bool:
        try:
            return await self._queue.acquire_lease(
                POLLER_LEASE, self.holder_id, seconds=self._settings.lease_seconds
            )
        except Exception:
            logger.exception("telegram transport: could not renew the poller lease")
            return False

    @staticmethod
    async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- inbound -------------------------------------------------------------------------------

    async def _register_webhook(self, url: str) -> None:
        """Webhook mode: tell Telegram where to post (with the secret), then wait; any process
        behind the URL journals what arrives."""
        backoff = 1.0
        while True:
            try:
                await self._application.bot.set_webhook(
                    url=url,
                    secret_token=self._settings.webhook_secret,
                    allowed_updates=[Update.MESSAGE],
                )
                break
            except InvalidToken:
                raise
            except TelegramError as exc:
                METRICS.telegram_error(exc)
                logger.warning("telegram transport: setWebhook failed: %s", _describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
        logger.info("telegram transport: webhook set; Telegram posts updates to the bridge")
        await asyncio.Event().wait()  # until cancelled with the lease

    async def _poll_loop(self) -> None:
        bot = self._application.bot
        offset: int | None = None
        backoff = 1.0
        with contextlib.suppress(TelegramError):
            await bot.delete_webhook()  # a webhook would make getUpdates fail with 409
        while True:
            if self._unprocessed:
                self._unprocessed = False
                await self._recover_inbound()
            try:
                updates = await bot.get_updates(
                    offset=offset,
                    timeout=self._settings.poll_timeout,
                    allowed_updates=[Update.MESSAGE],
                )
            except RetryAfter as exc:
                METRICS.telegram_error(exc)
                await asyncio.sleep(_seconds(exc.retry_after))
                continue
            except Conflict as exc:
                METRICS.telegram_error(exc)
                logger.warning(
                    "telegram transport: another program is polling this bot token; the bridge "
                    "needs a bot of its own (see the README)"
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
                continue
            except InvalidToken:
                raise
            except NetworkError as exc:
                METRICS.telegram_error(exc)
                logger.warning("telegram transport: getUpdates failed: %s", _describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
                continue
            backoff = 1.0
            for update in updates:
                self._inbound_failed = False
                await self._application.process_update(update)
                if self._inbound_failed:
                    # Not journaled: do not confirm it, so Telegram gives it to us again.
                    await asyncio.sleep(backoff)
                    break
                offset = update.update_id + 1

    async def on_message(self, update: Update, _context: ContextTypes.DEFAULT_TYPE) -> None:
        """Journal a message from the chat, then let the queue act on it if it is the agent's."""
        if not await self.accept(update):
            self._inbound_failed = True

    async def accept_webhook(self, payload: object) -> bool:
        """An update Telegram posted to the webhook; False if it could not be journaled.

        Raises:
            InvalidInput: the payload is not a Telegram Update.
        """
        if not isinstance(payload, dict):
            raise InvalidInput("the body must be a JSON object: a Telegram Update")
        try:
            update = Update.de_json(payload, self._application.bot)
        except (TypeError, KeyError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"the body is not a Telegram Update ({exc})") from None
        if self._unprocessed:
            self._unprocessed = False
            await self._recover_inbound()
        if update is None:
            return True
        return await self.accept(update)

    async def accept(self, update: Update) -> bool:
        """Journal (and act on) one update; False only if journaling failed (so retry it)."""
        message = update.effective_message
        if message is None:
            return True
        sender = message.from_user.id if message.from_user else None
        route = self._by_chat.get(message.chat.id)
        accepted = route is not None and sender in route.agent_ids
        try:
            journal_id = await self._queue.journal_inbound(
                chat_id=message.chat.id,
                telegram_message_id=message.message_id,
                from_id=sender,
                text=_text_of(message),
                reply_to_telegram_id=(
                    message.reply_to_message.message_id if message.reply_to_message else None
                ),
                accepted=accepted,
            )
        except Exception:
            logger.exception("telegram transport: could not journal message %s", update.update_id)
            return False
        if not accepted:
            logger.info(
                "telegram transport: ignored a message from user %s in chat %s (not the agent's)",
                sender,
                message.chat.id,
            )
            return True
        if journal_id is None:
            logger.info("telegram transport: message %s already stored", message.message_id)
            return True
        assert route is not None  # accepted implies a route
        await self._process(journal_id, route.target)
        return True

    @property
    def webhook_secret(self) -> str | None:
        return self._settings.webhook_secret

    async def _process(self, journal_id: int, target: str) -> None:
        try:
            await self._queue.touch_presence(target)
            result = await self._queue.process_inbound(journal_id, target=target)
        except Exception:
            # Journaled but not acted on: the poll loop retries it before its next getUpdates.
            logger.exception("telegram transport: could not process journaled message")
            self._unprocessed = True
            return
        logger.info(
            "telegram transport: agent message -> task %s%s",
            result.task_id or "(none)",
            f", status {result.status.value}" if result.status and result.applied else "",
            extra={"task_id": result.task_id, "target": target},
        )

    async def _recover_inbound(self) -> None:
        for journal_id, chat_id in await self._queue.unprocessed_inbound():
            route = self._by_chat.get(chat_id)
            if route is not None:
                await self._process(journal_id, route.target)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """One error handler for the bot: log first."""
        logger.error("telegram transport: error handling an update: %s", context.error)

    # --- outbound ------------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        while True:
            generation = self._queue.signal.generation()
            delivery = await self._queue.next_delivery()
            if delivery is not None:
                await self._deliver(delivery)
                continue
            due = await self._queue.next_delivery_due_at()
            wait = IDLE_DELIVERY_CHECK_SECONDS
            if due is not None:
                wait = max(0.0, min(wait, (due - self._queue.now()).total_seconds()))
            await self._queue.signal.wait(generation, wait)

    def _render(self, delivery: Delivery, route: TelegramRoute) -> list[str]:
        if delivery.item.kind is OutboxKind.CANCEL:
            return render_cancel(
                delivery.task.id,
                delivery.item.body or None,
                agent_username=route.agent_username,
            )
        if delivery.item.kind is OutboxKind.REPLY:
            return render_reply(
                delivery.task.id,
                delivery.item.body,
                agent_username=route.agent_username,
            )
        return render_task(
            delivery.task.id,
            delivery.item.body,
            agent_username=route.agent_username,
            urgent=delivery.task.urgent,
        )

    async def _deliver(self, delivery: Delivery) -> None:
        route = self._by_target.get(delivery.task.target)
        if route is None:  # pragma: no cover - the queue only makes outbox rows for our targets
            await self._queue.mark_failed(delivery, error="no Telegram chat for this target")
            return
        parts = self._render(delivery, route)
        bot = self._application.bot
        for index in range(delivery.item.parts_sent, len(parts)):
            await self._pace()
            reply_to = delivery.item.reply_to_telegram_id if index == 0 else None
            try:
                sent = await bot.send_message(
                    chat_id=route.chat_id,
                    text=parts[index],
                    reply_parameters=(
                        ReplyParameters(reply_to, allow_sending_without_reply=True)
                        if reply_to
                        else None
                    ),
                    disable_web_page_preview=True,
                )
            except RetryAfter as exc:
                METRICS.telegram_error(exc)
                wait = _seconds(exc.retry_after)
                await self._queue.mark_retry(
                    delivery, error=f"Telegram asked to wait {wait:g} s", delay_seconds=wait
                )
                return
            except (Forbidden, BadRequest, ChatMigrated) as exc:
                METRICS.telegram_error(exc)
                logger.error(  # noqa: TRY400 - the refusal is the message; no traceback needed
                    "telegram transport: task %s refused: %s",
                    delivery.task.id,
                    _describe(exc),
                    extra={"task_id": delivery.task.id, "target": delivery.task.target},
                )
                await self._queue.mark_failed(delivery, error=_describe(exc))
                return
            except InvalidToken:
                raise
            except NetworkError as exc:  # also TimedOut and 5xx
                METRICS.telegram_error(exc)
                delay = self._backoff(delivery.item.attempts + 1)
                logger.warning(
                    "telegram transport: posting task %s failed (%s); retry in %.1f s",
                    delivery.task.id,
                    _describe(exc),
                    delay,
                    extra={"task_id": delivery.task.id, "target": delivery.task.target},
                )
                await self._queue.mark_retry(delivery, error=_describe(exc), delay_seconds=delay)
                return
            await self._queue.record_part_sent(
                delivery,
                part=index,
                chat_id=sent.chat.id,
                telegram_message_id=sent.message_id,
            )
        await self._queue.mark_delivered(delivery)

    async def _pace(self) -> None:
        """About one message a second into a chat, as Telegram asks."""
        loop = asyncio.get_running_loop()
        wait = self._last_send + self._settings.min_send_interval - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        self._last_send = loop.time()

    def _backoff(self, attempt: int) -> float:
        base: float = self._settings.retry_base_seconds * 2.0 ** min(attempt - 1, 16)
        jitter = random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not cryptography
        return float(min(self._settings.retry_max_seconds, base) * jitter)


def _seconds(value: object) -> float:
    total = getattr(value, "total_seconds", None)
    return float(total()) if callable(total) else float(value)  # type: ignore[arg-type]


def _text_of(message: Message) -> str:
    """The text (or caption); a message with neither is recorded as what it was."""
    if message.text or message.caption:
        return message.text or message.caption or ""
    return "(a message without text)"
