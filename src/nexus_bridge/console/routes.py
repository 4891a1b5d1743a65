"""The console's routes: sign-in and sign-out, the overview, tasks (with a live timeline over
server-sent events), and OAuth access. Every action goes through :class:`QueueService`, so its
validation and error messages are the MCP tools' own."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final
from urllib.parse import urlparse

from mcp.server.transport_security import RequestBodyLimitMiddleware
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route, request_response
from starlette.types import ASGIApp

from nexus_bridge.config import Settings
from nexus_bridge.console import pages
from nexus_bridge.console.pages import Delivery, DeliveryShown, SendForm
from nexus_bridge.console.sessions import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    ConsoleSessions,
    csrf_token,
    new_token,
    same_token,
)
from nexus_bridge.constants import CONSOLE_PATH
from nexus_bridge.db.store import Store
from nexus_bridge.domain import Task, TaskStatus, TransportReport
from nexus_bridge.errors import (
    DatabaseBusy,
    DatabaseNotReady,
    DatabaseUnwritable,
    InvalidInput,
    NexusBridgeError,
    TaskNotFound,
)
from nexus_bridge.owner import ConsentRefused, NoPassphrase, OwnerGate, OwnerLockedOut
from nexus_bridge.queue import QueueService
from nexus_bridge.views import TargetOut, TaskOut, TransportOut, UpdateOut, queue_figures

if TYPE_CHECKING:  # the OAuth server is loaded only with PUBLIC_URL (cold start)
    from nexus_bridge.oauth import BridgeOAuthProvider

logger = logging.getLogger(__name__)

TASKS_PER_PAGE: Final = 25
TIMELINE_WINDOW: Final = 100  # updates on one timeline page; older ones a link away
SIGN_IN_MAX_BODY: Final = 16 * 1024
EVENTS_BATCH: Final = 200  # updates per wake-up of the live timeline
SSE_IDENTITY: Final = "console"  # pull's identity (for its log lines; no durable cursor is used)
_SEQ: Final = re.compile(r"[0-9]{1,18}")
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
_STATIC_TYPES: Final = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
_NOTICES: Final = {
    "duplicate": "An identical task is still open, so nothing new was queued: this is that task.",
    "answered": "Your answer was sent; the task is back in progress.",
    "cancelled": "The task was cancelled.",
}


@dataclass(frozen=True, slots=True)
class ConsoleDeps:
    """What the console needs from the running bridge."""

    queue: QueueService
    store: Store
    gate: OwnerGate
    sessions: ConsoleSessions
    transport_report: Callable[[], Awaitable[TransportReport]]
    secure_cookies: bool  # PUBLIC_URL is https: the cookies only travel over https
    public_host: str | None  # PUBLIC_URL's host (and port), where the owner's browser is
    oauth: BridgeOAuthProvider | None  # None: OAuth is off (no PUBLIC_URL)


def _static(name: str) -> bytes:
    return resources.files("nexus_bridge.console").joinpath("static", name).read_bytes()


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def _see(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303, headers=HEADERS)


def _status_of(exc: NexusBridgeError) -> int:
    if isinstance(exc, TaskNotFound):
        return 404
    if isinstance(exc, InvalidInput):
        return 400
    if isinstance(exc, DatabaseBusy | DatabaseUnwritable | DatabaseNotReady):
        return 503  # the bridge's side: the same request may work later
    return 409  # the task is not in a state for it (ended, not waiting for an answer)


def _field(form: FormData, name: str) -> str:
    """A text field of the form; a missing one, or a file sent in its place, is empty."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _same_origin(request: Request, public_host: str | None) -> bool:
    """A browser sends Origin with every POST form: it must be this page's own host (as the
    request names it, or PUBLIC_URL's, for a proxy that passes another Host on). Without Origin
    it is not a browser, and not a cross-site forgery either."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = urlparse(origin).netloc
    return host == request.headers.get("host", "") or (
        public_host is not None and host == public_host
    )


Handler = Callable[[Request, str], Awaitable[Response]]
FormHandler = Callable[[Request, str, FormData], Awaitable[Response]]


class Console:
    """The handlers, over :class:`ConsoleDeps`."""

    def __init__(self, deps: ConsoleDeps) -> None:
        self.d = deps
        self._max_body = deps.queue.max_message_chars * 12 + 16_384  # %-encoded UTF-8, and more

    # --- the session and the forms' CSRF token ---------------------------------------------------

    def _cookie(self, response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=CONSOLE_PATH,
            secure=self.d.secure_cookies,
            httponly=True,
            samesite="strict",
        )

    def _forget(self, response: Response, name: str) -> None:
        self._cookie(response, name, "", max_age=0)

    async def _session(self, request: Request) -> str | None:
        token = request.cookies.get(SESSION_COOKIE)
        return token if token and await self.d.sessions.valid(token) else None

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A page for the signed-in owner; anyone else goes to the sign-in page."""

        async def endpoint(request: Request) -> Response:
            token = await self._session(request)
            if token is None:
                return _see(pages.SIGN_IN_PATH)
            return await handler(request, csrf_token(token))

        return endpoint

    def action(self, handler: FormHandler) -> ASGIApp:
        """A form post of the signed-in owner: refused without the session, the form's CSRF token
        or from another site's page. The body is capped before it is read."""

        async def endpoint(request: Request) -> Response:
            token = await self._session(request)
            if token is None:
                return _page(
                    pages.message_page("Signed out", "Sign in again: your session has ended."), 403
                )
            csrf = csrf_token(token)
            async with request.form() as form:  # closes any file sent with it
                if not _same_origin(request, self.d.public_host) or not same_token(
                    _field(form, CSRF_FIELD), csrf
                ):
                    logger.warning("console: refused a form without its CSRF token")
                    message = "This form was refused: it did not come from this console's page."
                    return _page(pages.message_page("Refused", message, csrf=csrf), 403)
                return await handler(request, csrf, form)

        return RequestBodyLimitMiddleware(request_response(endpoint), self._max_body)

    # --- sign-in ---------------------------------------------------------------------------------

    async def sign_in_get(self, request: Request) -> Response:
        if not await self.d.gate.has_passphrase():
            return _page(pages.console_off_page(), 503)
        if await self._session(request) is not None:
            return _see(CONSOLE_PATH)
        return self._sign_in_form()

    def _sign_in_form(self, error: str | None = None, status: int = 200) -> Response:
        token = new_token()
        response = _page(pages.sign_in_page(token, error), status)
        self._cookie(response, SIGN_IN_COOKIE, token, max_age=3600)
        return response

    async def sign_in_post(self, request: Request) -> Response:
        async with request.form() as form:
            return await self._sign_in(request, form)

    async def _sign_in(self, request: Request, form: FormData) -> Response:
        if not _same_origin(request, self.d.public_host) or not same_token(
            _field(form, CSRF_FIELD), request.cookies.get(SIGN_IN_COOKIE)
        ):
            logger.warning("console: refused a sign-in without its CSRF token")
            return self._sign_in_form("The form expired or came from elsewhere; try again.", 403)
        try:
            address = request.client.host if request.client else None
            forwarded_for = request.headers.get("x-forwarded-for")
            await self.d.gate.check(_field(form, "passphrase"), address, forwarded_for)
        except NoPassphrase:
            return _page(pages.console_off_page(), 503)
        except OwnerLockedOut as exc:
            return self._sign_in_form(str(exc), 429)
        except ConsentRefused as exc:
            return self._sign_in_form(str(exc), 401)
        token = await self.d.sessions.start()
        logger.info("console: the owner signed in")
        response = _see(CONSOLE_PATH)
        self._cookie(response, SESSION_COOKIE, token, max_age=self.d.sessions.lifetime_seconds)
        self._forget(response, SIGN_IN_COOKIE)
        return response

    async def sign_out(self, request: Request, _csrf: str, _form: FormData) -> Response:
        token = request.cookies.get(SESSION_COOKIE)
        if token:
            await self.d.sessions.end(token)
        response = _see(pages.SIGN_IN_PATH)
        self._forget(response, SESSION_COOKIE)
        return response

    # --- overview --------------------------------------------------------------------------------

    async def overview(self, _request: Request, csrf: str) -> Response:
        queue = self.d.queue
        metrics = await queue.metrics_snapshot()  # the targets' summaries and their outboxes
        summaries = metrics.targets
        figures = queue_figures(await queue.status(), summaries)
        deliveries = {
            s.policy.name: Delivery(
                due=metrics.deliveries_due.get(s.policy.name, 0),
                failed=metrics.deliveries_failed.get(s.policy.name, 0),
            )
            for s in summaries
            if s.policy.uses_outbox
        }
        body = pages.overview_page(
            csrf=csrf,
            targets=[TargetOut.of(s) for s in summaries],
            figures=figures,
            transport=TransportOut.of(await self.d.transport_report()),
            deliveries=deliveries,
            form=SendForm(target=queue.targets[0]),
        )
        return _page(body)

    # --- tasks -----------------------------------------------------------------------------------

    async def tasks(
        self,
        request: Request,
        csrf: str,
        form: SendForm | None = None,
        failed: NexusBridgeError | None = None,
    ) -> Response:
        """The task list; after a send that ``failed``, with its error and the form as sent."""
        queue = self.d.queue
        target = request.query_params.get("target") or None
        status = request.query_params.get("status") or None
        before = request.query_params.get("before") or None
        error = str(failed) if failed is not None else None
        status_code = _status_of(failed) if failed is not None else 200
        try:
            page = await queue.list_tasks(
                status=status, target=target, limit=TASKS_PER_PAGE, before=before
            )
            stalled = await queue.stalls(page.tasks)
            shown = [TaskOut.of(t, stalled.get(t.id)) for t in page.tasks]
            next_before = page.next_before
        except NexusBridgeError as exc:
            shown, next_before, error, status_code = [], None, str(exc), _status_of(exc)
        body = pages.tasks_page(
            csrf=csrf,
            tasks=shown,
            targets=queue.targets,
            target=target,
            status=status,
            next_before=next_before,
            first_page=before is None,
            form=form or SendForm(target=target or queue.targets[0]),
            error=error,
        )
        return _page(body, status_code)

    async def send(self, request: Request, csrf: str, form: FormData) -> Response:
        sent = SendForm(
            target=_field(form, "target"),
            text=_field(form, "text"),
            urgent=form.get("urgent") is not None,
        )
        try:
            result = await self.d.queue.enqueue(sent.text, sent.target, urgent=sent.urgent)
        except NexusBridgeError as exc:
            return await self.tasks(request, csrf, sent, exc)
        path = pages.task_path(result.task.id)
        return _see(path if result.queued else f"{path}?notice=duplicate")

    async def task(
        self,
        request: Request,
        csrf: str,
        *,
        error: NexusBridgeError | None = None,
        reply_text: str = "",
        cancel_reason: str = "",
    ) -> Response:
        task_id = request.path_params["task_id"]
        raw_before = request.query_params.get("before")
        if raw_before is not None and not _SEQ.fullmatch(raw_before):
            message = "before must be an update's seq (digits), as the Earlier link gives it"
            return _page(pages.message_page("Refused", message, csrf=csrf), 400)
        before = int(raw_before) if raw_before is not None else None
        try:
            detail = await self.d.queue.get(task_id, recent=TIMELINE_WINDOW + 1, before_seq=before)
        except NexusBridgeError as exc:
            return _page(pages.message_page("Not found", str(exc), csrf=csrf), _status_of(exc))
        updates = list(detail.recent_updates)
        earlier = None
        if len(updates) > TIMELINE_WINDOW:
            updates = updates[1:]
            earlier = updates[0].seq
        idle = await self.d.queue.stalled_seconds(detail.task)
        delivery = detail.delivery
        notice = _NOTICES.get(request.query_params.get("notice", ""))
        last_seq = updates[-1].seq if updates else 0
        body = pages.task_page(
            csrf=csrf,
            task=TaskOut.of(detail.task, idle),
            delivery=DeliveryShown(
                state=delivery.state.value,
                attempts=delivery.attempts,
                last_error=delivery.last_error,
                delivered_at=delivery.delivered_at.isoformat() if delivery.delivered_at else None,
                telegram_message_ids=delivery.telegram_message_ids,
            )
            if delivery is not None
            else None,
            updates=updates,
            earlier_before=earlier,
            window_before=before,
            events_url=None
            if before is not None
            else f"{pages.task_path(detail.task.id)}/events?after={last_seq}",
            error=str(error) if error else None,
            notice=None if error else notice,
            reply_text=reply_text,
            cancel_reason=cancel_reason,
        )
        return _page(body, _status_of(error) if error else 200)

    async def reply(self, request: Request, csrf: str, form: FormData) -> Response:
        task_id = request.path_params["task_id"]
        text = _field(form, "text")
        try:
            task = await self.d.queue.reply(task_id, text)
        except TaskNotFound as exc:
            return _page(pages.message_page("Not found", str(exc), csrf=csrf), 404)
        except NexusBridgeError as exc:
            return await self.task(request, csrf, error=exc, reply_text=text)
        return _see(f"{pages.task_path(task.id)}?notice=answered")

    async def cancel(self, request: Request, csrf: str, form: FormData) -> Response:
        task_id = request.path_params["task_id"]
        reason = _field(form, "reason")
        try:
            task = await self.d.queue.cancel(task_id, reason or None)
        except TaskNotFound as exc:
            return _page(pages.message_page("Not found", str(exc), csrf=csrf), 404)
        except NexusBridgeError as exc:
            return await self.task(request, csrf, error=exc, cancel_reason=reason)
        return _see(f"{pages.task_path(task.id)}?notice=cancelled")

    async def events(self, request: Request) -> Response:
        """The task's new updates as server-sent events, each sent once it is committed: the
        stream waits in ``QueueService.pull``, woken by the signal that wakes ``pull_updates``."""
        token = await self._session(request)
        if token is None:
            return Response("sign in first", status_code=401, headers=HEADERS)
        task_id = request.path_params["task_id"]
        after = request.headers.get("last-event-id") or request.query_params.get("after", "0")
        if not _SEQ.fullmatch(after):
            return Response("after must be an update's seq", status_code=400, headers=HEADERS)
        try:
            task_id = (await self.d.queue.get(task_id, recent=0)).task.id
        except NexusBridgeError as exc:
            return Response(str(exc), status_code=_status_of(exc), headers=HEADERS)
        if self.d.queue.max_wait_seconds <= 0:
            # MAX_WAIT_SECONDS=0: no waiting anywhere, so no live stream (it would spin); 204
            # tells the browser not to reconnect, and the page says it is not live.
            return Response(status_code=204, headers=HEADERS)
        return StreamingResponse(
            self._stream(task_id, int(after), token),
            media_type="text/event-stream",
            headers={**HEADERS, "X-Accel-Buffering": "no"},
        )

    async def _stream(self, task_id: str, after: int, token: str) -> AsyncIterator[str]:
        queue = self.d.queue
        cursor = after
        yield "retry: 2000\n\n"
        while not queue.signal.closed:
            try:
                page = await queue.pull(
                    SSE_IDENTITY,
                    task_id=task_id,
                    cursor=str(cursor),
                    limit=EVENTS_BATCH,
                    wait_seconds=queue.max_wait_seconds,
                )
                task = (await queue.get(task_id, recent=0)).task if page.updates else None
            except TaskNotFound:
                return  # pruned meanwhile
            for update in page.updates:
                data = json.dumps(UpdateOut.of(update).model_dump())
                yield f"id: {update.seq}\nevent: update\ndata: {data}\n\n"
            if task is not None:
                yield f"event: task\ndata: {json.dumps(_task_event(task))}\n\n"
            else:
                yield ": still here\n\n"  # finds a closed connection, and keeps proxies open
            cursor = int(page.next_cursor)
            if not await self.d.sessions.valid(token):
                yield "event: signed-out\ndata: {}\n\n"
                return

    # --- access ----------------------------------------------------------------------------------

    async def access(
        self,
        _request: Request,
        csrf: str,
        error: str | None = None,
        notice: str | None = None,
    ) -> Response:
        oauth = self.d.oauth
        clients = await oauth.clients() if oauth is not None else []
        families = await oauth.token_families() if oauth is not None else []
        body = pages.access_page(
            csrf=csrf,
            clients=clients,
            families=families,
            oauth_enabled=oauth is not None,
            error=error,
            notice=notice,
        )
        return _page(body, 404 if error else 200)

    async def revoke(self, request: Request, csrf: str, form: FormData) -> Response:
        access_id = _field(form, "id")
        if self.d.oauth is None:  # OAuth is off: nothing was ever issued
            unknown = f"no client or token family {access_id!r}"
            return await self.access(request, csrf, error=f"{unknown} ({access_id[:100]!r})")
        try:
            what = (await self.d.oauth.revoke(access_id)).description
        except NexusBridgeError as exc:
            return await self.access(request, csrf, error=f"{exc} ({access_id[:100]!r})")
        logger.info("console: the owner revoked %s", what)
        return await self.access(request, csrf, notice=f"Revoked {what}.")

    # --- static files ----------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC_TYPES:
            return Response("not found", status_code=404, headers=HEADERS)
        headers = {**HEADERS, "Cache-Control": "no-cache"}
        return Response(_static(name), media_type=_STATIC_TYPES[name], headers=headers)


def _task_event(task: Task) -> dict[str, object]:
    out = TaskOut.of(task)
    return {
        "status": out.status,
        "status_reason": out.status_reason,
        "ended": TaskStatus(out.status).is_terminal,
        "acknowledged_at": out.acknowledged_at,
        "started_at": out.started_at,
        "ended_at": out.ended_at,
        "updated_at": out.updated_at,
    }


def console_routes(deps: ConsoleDeps) -> list[Route]:
    """Every route of the console, under ``/console``."""
    c = Console(deps)
    task = f"{pages.TASKS_PATH}/{{task_id}}"
    return [
        Route(CONSOLE_PATH, c.page(c.overview), methods=["GET"]),
        Route(pages.SIGN_IN_PATH, c.sign_in_get, methods=["GET"]),
        Route(
            pages.SIGN_IN_PATH,
            RequestBodyLimitMiddleware(request_response(c.sign_in_post), SIGN_IN_MAX_BODY),
            methods=["POST"],
        ),
        Route(pages.SIGN_OUT_PATH, c.action(c.sign_out), methods=["POST"]),
        Route(pages.TASKS_PATH, c.page(c.tasks), methods=["GET"]),
        Route(pages.TASKS_PATH, c.action(c.send), methods=["POST"]),
        Route(task, c.page(c.task), methods=["GET"]),
        Route(f"{task}/events", c.events, methods=["GET"]),
        Route(f"{task}/reply", c.action(c.reply), methods=["POST"]),
        Route(f"{task}/cancel", c.action(c.cancel), methods=["POST"]),
        Route(pages.ACCESS_PATH, c.page(c.access), methods=["GET"]),
        Route(pages.REVOKE_PATH, c.action(c.revoke), methods=["POST"]),
        Route(f"{pages.STATIC}/{{name}}", c.static, methods=["GET"]),
    ]


def console_deps(
    settings: Settings,
    *,
    store: Store,
    queue: QueueService,
    oauth: BridgeOAuthProvider | None,
    transport_report: Callable[[], Awaitable[TransportReport]],
) -> ConsoleDeps:
    """The console's parts: the consent page's passphrase gate (one lockout for both), or the
    same gate from the settings when OAuth is off (no PUBLIC_URL)."""
    gate = (
        oauth.owner_gate
        if oauth is not None
        else OwnerGate(
            store,
            max_failed_attempts=settings.oauth_max_failed_attempts,
            lockout_seconds=settings.oauth_lockout_seconds,
            failure_delay_seconds=settings.oauth_failure_delay_seconds,
        )
    )
    return ConsoleDeps(
        queue=queue,
        store=store,
        gate=gate,
        sessions=ConsoleSessions(store),
        transport_report=transport_report,
        secure_cookies=(settings.public_url or "").startswith("https://"),
        public_host=urlparse(settings.public_url).netloc if settings.public_url else None,
        oauth=oauth,
    )
