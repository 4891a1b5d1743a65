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
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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

from nexus_bridge.config import POLLER_LEASE, TelegramSettings
from nexus_bridge.domain import OutboxKind, TransportState
from nexus_bridge.errors import DatabaseUnwritable, InvalidInput
from nexus_bridge.holders import holder_is_dead, lease_clock, make_holder_id
from nexus_bridge.logs import RepeatedFailure, quiet_noisy_loggers
from nexus_bridge.metrics import METRICS
from nexus_bridge.protocol import render_cancel, render_reply, render_task
from nexus_bridge.relay import Delivery, TelegramRelay
from nexus_bridge.targets import TelegramRoute

logger = logging.getLogger(__name__)

__all__ = ["POLLER_LEASE", "TelegramRoute", "TelegramTransport", "TransportState"]

# Enqueues (in this process or, through the change watcher, any other) wake the worker at once;
# this only bounds how long it sleeps with nothing to do.
IDLE_DELIVERY_CHECK_SECONDS: Final = 60.0
MAX_POLL_BACKOFF_SECONDS: Final = 30.0
# The lease is renewed every third of its length. A holder trusts it for two thirds of its
# length after a renewal began (by its own clock), so one renewal can be late or lost, and it
# stops sending a third of the lease before any other process may take over.
RENEWALS_PER_LEASE: Final = 3
FENCE_FRACTION: Final = 2 / 3


# A post Telegram accepted but the database did not journal: the first pause before trying the
# journal again, and the longest.
JOURNAL_RETRY_SECONDS: Final = (0.2, 10.0)


class LeaseLost(Exception):
    """This process can no longer be sure it holds the poller lease: stop before sending."""


@dataclass(frozen=True, slots=True)
class TransportStatus:
    name: str
    state: str
    detail: str | None
    holder_id: str | None
    last_ok_at: datetime | None = None
    last_error: str | None = None
    error_since: datetime | None = None


def _describe(exc: TelegramError) -> str:
    return exc.message or type(exc).__name__


class TelegramTransport:
    """Runs the poller and the delivery worker while this process holds the poller lease."""

    def __init__(
        self,
        relay: TelegramRelay,
        settings: TelegramSettings,
        *,
        routes: Sequence[TelegramRoute],
        holder_id: str | None = None,
    ) -> None:
        """``routes``: one per Telegram target, as ``Configuration.routes`` derives them."""
        self._relay = relay
        self._settings = settings
        self._by_chat = {route.chat_id: route for route in routes}
        self._by_target = {route.target: route for route in routes}
        self.holder_id = holder_id or make_holder_id()
        self._state = TransportState.STARTING
        self._detail: str | None = None
        self._stopping = asyncio.Event()
        self._inbound_failed = False
        self._unprocessed = False  # a journaled message failed to process: retry it
        # Reading or renewing the poller lease, every renewal while the database is away.
        self._lease_failures = RepeatedFailure(
            logger, "telegram transport: could not read or renew the poller lease"
        )
        self._last_send = 0.0
        # The fence: until when (lease_clock) this process may call the Bot API, and the epoch
        # of the lease its workers were started under.
        self._fence_until = 0.0
        self._epoch: int | None = None
        self._held_epoch: int | None = None  # the epoch of the last renewal, if it succeeded
        self._wake = asyncio.Event()  # the fence lapsed: renew now rather than at the next tick
        # Telegram's 429s: until when (lease_clock) a chat, or (key None) the whole bot, waits.
        self._blocked_until: dict[int | None, float] = {}
        # Health: how the last Bot API calls went.
        self._health = TransportState.POLLING
        self._last_ok_at: datetime | None = None
        self._last_error: str | None = None
        self._error_since: datetime | None = None
        self._health_recorded: tuple[object, ...] | None = None
        quiet_noisy_loggers()  # before PTB builds its bot: it logs the URL, token included
        self._application = self._build_application()

    # --- status ------------------------------------------------------------------------------

    @property
    def status(self) -> TransportStatus:
        state, detail = self._state, self._detail
        if state == TransportState.POLLING and self._error_since is not None:
            state, detail = self._health, self._last_error
        return TransportStatus(
            name="telegram",
            state=state,
            detail=detail,
            holder_id=self.holder_id,
            last_ok_at=self._last_ok_at,
            last_error=self._last_error,
            error_since=self._error_since,
        )

    def _call_ok(self) -> None:
        """A Bot API call succeeded."""
        self._last_ok_at = self._relay.now()
        if self._error_since is not None:
            logger.info("telegram transport: the Bot API answers again")
        self._health, self._last_error, self._error_since = TransportState.POLLING, None, None

    def _call_failed(self, what: str, exc: BaseException, *, refused: bool = False) -> None:
        """A Bot API call failed: unreachable (network, timeout, 5xx) or ``refused`` (429, 409).
        ``/readyz`` and ``queue_status`` say so at once; other processes at the next renewal."""
        reason = _describe(exc) if isinstance(exc, TelegramError) else type(exc).__name__
        self._last_error = f"{what}: {reason}"
        self._health = TransportState.DEGRADED if refused else TransportState.UNREACHABLE
        if self._error_since is None:
            self._error_since = self._relay.now()
            self._wake.set()  # record it for `nexus-bridge status` without waiting a renewal

    async def _record_health(self) -> None:
        """Put this holder's view of the Bot API on the lease row (for other processes)."""
        health = self._health if self._error_since is not None else TransportState.POLLING
        values = (health, self._last_ok_at, self._last_error, self._error_since)
        if values == self._health_recorded:
            return
        try:
            await self._relay.record_lease_health(
                POLLER_LEASE,
                self.holder_id,
                health=health,
                last_ok_at=self._last_ok_at,
                last_error=self._last_error,
                error_since=self._error_since,
            )
        except Exception:  # a report: the next renewal tries again
            logger.warning("telegram transport: could not record its health", exc_info=True)
            return
        self._health_recorded = values

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
        # Long polls hold the connection for poll_timeout seconds. PTB adds getUpdates' own
        # timeout to this read timeout, so a hung long poll is given up after
        # request_timeout + poll_timeout (adding it here too would double it).
        polling = HTTPXRequest(
            connect_timeout=timeout,
            read_timeout=timeout,
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
        renew_every = self._settings.lease_seconds / RENEWALS_PER_LEASE
        initialized = False
        try:
            while not self._stopping.is_set():
                if not initialized:
                    initialized = await self._initialize()
                    if not initialized:
                        await self._pause(renew_every)
                        continue
                epoch = await self._try_lease()
                if workers and epoch != self._epoch:
                    # Another process held the lease in between (or holds it now): whatever
                    # the workers were doing may be its work. Stop them before they send more.
                    if epoch is None:
                        logger.warning("telegram transport: lost the poller lease; standing by")
                    else:
                        logger.warning(
                            "telegram transport: the poller lease changed hands while this "
                            "process was not renewing it (epoch %s -> %s); starting afresh",
                            self._epoch,
                            epoch,
                        )
                    await self._cancel(workers)
                    workers = []
                if epoch is not None and not workers:
                    self._epoch = epoch
                    self._health_recorded = None  # a new holder's row starts without a report
                    await self._recover_inbound()
                    webhook = self._settings.webhook_url
                    inbound = self._register_webhook(webhook) if webhook else self._poll_loop()
                    workers = [
                        asyncio.create_task(inbound, name="telegram-inbound"),
                        asyncio.create_task(self._delivery_loop(), name="telegram-deliver"),
                    ]
                    self._set_state(TransportState.POLLING)
                elif epoch is None:
                    await self._report_standby()
                if epoch is not None:
                    await self._record_health()
                    if workers:
                        # A message journaled but not acted on (the worker that journaled it
                        # was cancelled, or processing failed) is not left for the next holder.
                        await self._recover_inbound_safely()
                if any(worker.done() for worker in workers):
                    # A worker died (a database error, say): restart both at the next renewal
                    # rather than stay silently stopped. A rejected token ends the transport.
                    failures = [w.exception() for w in workers if w.done() and not w.cancelled()]
                    await self._cancel(workers)
                    workers = []
                    lapsed = any(isinstance(f, LeaseLost) for f in failures)
                    for failure in failures:
                        if isinstance(failure, InvalidToken):
                            raise failure
                        if failure is not None and not isinstance(
                            failure,
                            LeaseLost | DatabaseUnwritable,  # the store logs that
                        ):
                            logger.error(
                                "telegram transport: a worker stopped (%s); restarting", failure
                            )
                    if lapsed:
                        continue  # renew (or stand by) at once
                    self._set_state(TransportState.ERROR, "restarting after an error")
                await self._pause(renew_every)
        except InvalidToken as exc:
            METRICS.telegram_error(exc)  # counted once, wherever it was raised: it is final
            self._set_state(TransportState.ERROR, "Telegram rejected the bot token")
            logger.error("telegram transport: the bot token was rejected; it stays off")  # noqa: TRY400
        finally:
            self._fence_until = 0.0
            await self._cancel(workers)
            with contextlib.suppress(Exception):
                await self._relay.release_lease(POLLER_LEASE, self.holder_id)
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
        """Wait until the next renewal: ``seconds``, or sooner if a worker needs one now."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                stopping = asyncio.ensure_future(self._stopping.wait())
                woken = asyncio.ensure_future(self._wake.wait())
                try:
                    await asyncio.wait({stopping, woken}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    woken.cancel()
        self._wake.clear()

    async def _initialize(self) -> bool:
        """getMe: checks the token and reachability. InvalidToken propagates (it is final)."""
        try:
            await self._application.initialize()
        except InvalidToken:
            raise
        except TelegramError as exc:
            METRICS.telegram_error(exc)
            self._call_failed("getMe", exc)
            self._set_state(TransportState.ERROR, f"cannot reach Telegram: {_describe(exc)}")
            return False
        self._call_ok()
        return True

    async def _report_standby(self) -> None:
        try:
            lease = await self._relay.lease(POLLER_LEASE)
        except Exception as exc:  # noqa: BLE001 - logged; the next renewal tries again
            self._lease_failures.failed(exc)
            return
        self._lease_failures.succeeded()
        self._set_state(TransportState.STANDBY, f"polled by {lease.holder}" if lease else None)

    async def _try_lease(self) -> int | None:
        """Take or renew the poller lease: its epoch if held (and the fence moved on), else None.

        A holder on this host whose process is gone (``kill -9``, a crash) is replaced at once.
        """
        began = lease_clock()
        seconds = self._settings.lease_seconds
        try:
            epoch = await self._relay.acquire_lease(POLLER_LEASE, self.holder_id, seconds=seconds)
            if epoch is None:
                lease = await self._relay.lease_row(POLLER_LEASE)
                if lease is not None and holder_is_dead(lease.holder):
                    logger.info(
                        "telegram transport: the poller %s is no longer running; taking over",
                        lease.holder,
                    )
                    epoch = await self._relay.acquire_lease(
                        POLLER_LEASE, self.holder_id, seconds=seconds, replacing=lease.holder
                    )
        except DatabaseUnwritable:
            epoch = None  # the store says so in the log, once a minute
        except Exception as exc:  # noqa: BLE001 - logged; the next renewal tries again
            self._lease_failures.failed(exc)
            epoch = None
        else:
            self._lease_failures.succeeded()
        self._held_epoch = epoch
        self._fence_until = 0.0 if epoch is None else began + seconds * FENCE_FRACTION
        return epoch

    async def _fence(self) -> None:
        """Before any Bot API call that delivers or confirms: make sure the lease is still ours.

        By this process's own clock since its last successful renewal began; if that is too long
        ago (the process stalled: SIGSTOP, a GC pause, a frozen VM), renew first. Raises
        LeaseLost, sending nothing, if another process holds (or has held) the lease since.
        """
        if lease_clock() < self._fence_until and self._held_epoch == self._epoch:
            return
        epoch = await self._try_lease()
        if epoch is None or epoch != self._epoch:
            self._fence_until = 0.0
            self._wake.set()
            raise LeaseLost(f"the poller lease is no longer this process's (epoch {epoch})")

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
            await self._fence()
            try:
                await self._application.bot.set_webhook(
                    url=url,
                    secret_token=self._settings.webhook_secret,
                    allowed_updates=[Update.MESSAGE],
                )
                self._call_ok()
                break
            except InvalidToken:
                raise
            except TelegramError as exc:
                METRICS.telegram_error(exc)
                self._call_failed("setWebhook", exc)
                logger.warning("telegram transport: setWebhook failed: %s", _describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
        logger.info("telegram transport: webhook set; Telegram posts updates to the bridge")
        await asyncio.Event().wait()  # until cancelled with the lease

    async def _poll_loop(self) -> None:
        bot = self._application.bot
        offset: int | None = None
        backoff = 1.0
        await self._fence()
        with contextlib.suppress(TelegramError):
            await bot.delete_webhook()  # a webhook would make getUpdates fail with 409
        while True:
            if self._unprocessed:
                self._unprocessed = False
                await self._recover_inbound()
            await self._fence()  # the offset confirms updates: only the lease's holder may
            try:
                updates = await bot.get_updates(
                    offset=offset,
                    timeout=self._settings.poll_timeout,
                    allowed_updates=[Update.MESSAGE],
                )
            except RetryAfter as exc:
                METRICS.telegram_error(exc)
                wait = _seconds(exc.retry_after)
                self._call_failed("getUpdates", exc, refused=True)
                self._block(None, wait)  # not a chat's limit: the whole bot waits
                await asyncio.sleep(wait)
                continue
            except Conflict as exc:
                METRICS.telegram_error(exc)
                self._call_failed("getUpdates", exc, refused=True)
                logger.warning(
                    "telegram transport: another program is polling this bot token; the bridge "
                    "needs a bot of its own (see docs/telegram.md, step 1)"
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
                continue
            except InvalidToken:
                raise
            except NetworkError as exc:
                METRICS.telegram_error(exc)
                self._call_failed("getUpdates", exc)
                logger.warning("telegram transport: getUpdates failed: %s", _describe(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_POLL_BACKOFF_SECONDS)
                continue
            self._call_ok()
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

    def _reply_target(self, message: Message, route: TelegramRoute | None) -> int | None:
        """The message ``message`` answers, when that can link a task: a post of the bridge's
        bot or a message of the target's agent (only those are journaled with a task). A reply to
        anyone else's message links nothing, so it must not wait for a journal entry of it."""
        replied = message.reply_to_message
        if replied is None or replied.from_user is None:
            return None
        author = replied.from_user.id
        if author == self._application.bot.id or (route is not None and author in route.agent_ids):
            return replied.message_id
        return None

    async def accept(self, update: Update) -> bool:
        """Journal (and act on) one update; False only if journaling failed (so retry it)."""
        message = update.effective_message
        if message is None:
            return True
        sender = message.from_user.id if message.from_user else None
        route = self._by_chat.get(message.chat.id)
        accepted = route is not None and sender in route.agent_ids
        try:
            journal_id = await self._relay.journal_inbound(
                chat_id=message.chat.id,
                telegram_message_id=message.message_id,
                from_id=sender,
                text=_text_of(message),
                reply_to_telegram_id=self._reply_target(message, route),
                accepted=accepted,
            )
        except DatabaseUnwritable:
            return False  # the store says so in the log, once a minute
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
            await self._relay.touch_presence(target)
            result = await self._relay.process_inbound(journal_id, target=target)
        except Exception as exc:
            # Journaled but not acted on: the poll loop retries it before its next getUpdates.
            if not isinstance(exc, DatabaseUnwritable):  # the store logs that, once a minute
                logger.exception("telegram transport: could not process journaled message")
            self._unprocessed = True
            return
        if result.deferred:
            logger.info(
                "telegram transport: an agent message answers a post not journaled yet; "
                "acted on at the next lease renewal"
            )
            return
        logger.info(
            "telegram transport: agent message -> task %s%s",
            result.task_id or "(none)",
            f", status {result.status.value}" if result.status and result.applied else "",
            extra={"task_id": result.task_id, "target": target},
        )

    async def _recover_inbound_safely(self) -> None:
        try:
            await self._recover_inbound()
        except Exception:
            logger.exception("telegram transport: could not look for unprocessed messages")

    async def _recover_inbound(self) -> None:
        for journal_id, chat_id in await self._relay.unprocessed_inbound():
            route = self._by_chat.get(chat_id)
            if route is not None:
                await self._process(journal_id, route.target)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """One error handler for the bot: log first."""
        logger.error("telegram transport: error handling an update: %s", context.error)

    # --- outbound ------------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        while True:
            generation = self._relay.signal.generation()
            delivery = await self._relay.next_delivery()
            if delivery is not None:
                await self._deliver(delivery)
                continue
            due = await self._relay.next_delivery_due_at()
            wait = IDLE_DELIVERY_CHECK_SECONDS
            if due is not None:
                wait = max(0.0, min(wait, (due - self._relay.now()).total_seconds()))
            await self._relay.signal.wait(generation, wait)

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

    def _block(self, chat_id: int | None, seconds: float) -> None:
        """Telegram's 429: nothing more goes to ``chat_id`` (None: the bot) for ``seconds``."""
        until = lease_clock() + seconds
        self._blocked_until[chat_id] = max(self._blocked_until.get(chat_id, 0.0), until)

    def _blocked_for(self, chat_id: int) -> float:
        """Seconds until sends to ``chat_id`` may resume (0 if they may now)."""
        until = max(self._blocked_until.get(chat_id, 0.0), self._blocked_until.get(None, 0.0))
        return max(0.0, until - lease_clock())

    async def _deliver(self, delivery: Delivery) -> None:
        route = self._by_target.get(delivery.task.target)
        if route is None:  # pragma: no cover - the queue only makes outbox rows for our targets
            await self._relay.mark_failed(delivery, error="no Telegram chat for this target")
            return
        parts = self._render(delivery, route)
        bot = self._application.bot
        for index in range(delivery.item.parts_sent, len(parts)):
            await self._pace()
            blocked = self._blocked_for(route.chat_id)
            if blocked > 0:
                # Telegram asked this chat (or the bot) to wait: every send now would be
                # refused again. Wait with the whole chat, without calling Telegram.
                await self._relay.postpone(
                    delivery,
                    reason=f"Telegram asked the chat to wait {blocked:.0f} s",
                    until=self._relay.now() + timedelta(seconds=blocked),
                )
                return
            reply_to = delivery.item.reply_to_telegram_id if index == 0 else None
            await self._fence()
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
                self._call_failed("sendMessage", exc, refused=True)
                self._block(route.chat_id, wait)
                logger.warning(
                    "telegram transport: Telegram asked chat %s to wait %g s; nothing is sent "
                    "to it until then",
                    route.chat_id,
                    wait,
                )
                await self._relay.mark_retry(
                    delivery, error=f"Telegram asked to wait {wait:g} s", delay_seconds=wait
                )
                return
            except (Forbidden, BadRequest, ChatMigrated) as exc:
                METRICS.telegram_error(exc)
                self._call_ok()  # Telegram answered: it is reachable
                logger.error(  # noqa: TRY400 - the refusal is the message; no traceback needed
                    "telegram transport: task %s refused: %s",
                    delivery.task.id,
                    _describe(exc),
                    extra={"task_id": delivery.task.id, "target": delivery.task.target},
                )
                await self._relay.mark_failed(delivery, error=_describe(exc))
                return
            except InvalidToken:
                raise
            except NetworkError as exc:  # also TimedOut and 5xx
                METRICS.telegram_error(exc)
                self._call_failed("sendMessage", exc)
                delay = self._backoff(delivery.item.attempts + 1)
                logger.warning(
                    "telegram transport: posting task %s failed (%s); retry in %.1f s",
                    delivery.task.id,
                    _describe(exc),
                    delay,
                    extra={"task_id": delivery.task.id, "target": delivery.task.target},
                )
                await self._relay.mark_retry(delivery, error=_describe(exc), delay_seconds=delay)
                return
            self._call_ok()
            await self._journal_post(delivery, index, sent.chat.id, sent.message_id)
        await self._relay.mark_delivered(delivery)

    async def _journal_post(
        self, delivery: Delivery, part: int, chat_id: int, telegram_message_id: int
    ) -> None:
        """Journal a part Telegram has accepted. Until it is journaled, a worker started after
        this one would post it again, so a failure (the database away, full or read-only) is
        tried again, with growing pauses, until it is journaled or the worker is stopped."""
        failures = RepeatedFailure(
            logger, f"telegram transport: could not journal the post of task {delivery.task.id}"
        )
        pause = JOURNAL_RETRY_SECONDS[0]
        while True:
            try:
                await self._relay.record_part_sent(
                    delivery,
                    part=part,
                    chat_id=chat_id,
                    telegram_message_id=telegram_message_id,
                    lease_epoch=self._epoch,
                )
            except Exception as exc:  # noqa: BLE001 - logged; tried again
                if not isinstance(exc, DatabaseUnwritable):  # the store logs that one
                    failures.failed(exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, JOURNAL_RETRY_SECONDS[1])
                continue
            failures.succeeded()
            return

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
