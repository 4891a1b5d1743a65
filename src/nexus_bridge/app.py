"""Composition root: builds the store, the queue service and the MCP server, and serves them."""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlparse

import h11
import uvicorn
from mcp.server.auth.handlers.metadata import MetadataHandler
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend, RequireAuthMiddleware
from mcp.server.auth.routes import build_metadata, cors_middleware
from mcp.server.auth.settings import AuthSettings, ClientRegistrationOptions, RevocationOptions
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import RequestBodyLimitMiddleware, TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, request_response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from nexus_bridge import config
from nexus_bridge.agent_tools import agent_auth_settings, create_agent_server
from nexus_bridge.auth import AgentTokenVerifier, StaticTokenVerifier
from nexus_bridge.config import Settings
from nexus_bridge.console import console_deps, console_routes
from nexus_bridge.constants import (
    AGENT_MCP_PATH,
    AUTH_SERVER_METADATA_PATH,
    CONSENT_PATH,
    HEALTHZ_PATH,
    LOOPBACK_HOSTNAMES,
    LOOPBACK_HOSTS,
    MCP_PATH,
    READYZ_PATH,
    WILDCARD_HOSTS,
)
from nexus_bridge.db.engine import ServerLock, sqlite_file
from nexus_bridge.domain import TransportReport, TransportState
from nexus_bridge.errors import ConfigError, DatabaseBusy, DatabaseNotReady, InvalidInput
from nexus_bridge.mcp_http import McpEndpoint
from nexus_bridge.mcp_tools import create_mcp_server
from nexus_bridge.metrics import METRICS_PATH, metrics_endpoint
from nexus_bridge.owner import known_client_address
from nexus_bridge.relay import TelegramRelay
from nexus_bridge.runtime import Runtime, agent_tokens, open_runtime
from nexus_bridge.targets import Configuration
from nexus_bridge.views import TransportOut

# Only a configuration that uses them loads these (cold start): the Telegram library with a
# Telegram target, the OAuth authorization server with PUBLIC_URL.
if TYPE_CHECKING:
    from nexus_bridge.oauth import BridgeOAuthProvider, OAuthPolicy
    from nexus_bridge.transports.telegram import TelegramTransport

logger = logging.getLogger(__name__)

WEBHOOK_PATH = "/telegram/webhook"
# The OAuth endpoints and the consent form take small forms and JSON documents only.
OAUTH_BODY_PATHS: Final = frozenset({"/register", "/authorize", "/token", "/revoke", CONSENT_PATH})
MAX_OAUTH_BODY_BYTES: Final = 64 * 1024
TARGETS_PATH: Final = "/targets"


@dataclass
class Bridge(Runtime):
    """The running parts of one server process: the runtime, the MCP adapter, the transport."""

    mcp: MCPServer[Any]
    agent_mcp: MCPServer[Any]
    agent_verifier: AgentTokenVerifier
    transport: TelegramTransport | None = None
    oauth: BridgeOAuthProvider | None = None
    server_lock: ServerLock | None = None
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    def start_background(self) -> None:
        """The change watcher and, when configured, the transport."""
        if self._background:
            return
        self._background.append(
            asyncio.create_task(
                self.queue.watch_for_changes(self.settings.change_poll_seconds), name="watch"
            )
        )
        self._background.append(
            asyncio.create_task(
                self.queue.expire_claims_every(self.settings.change_poll_seconds),
                name="expire-claims",
            )
        )
        if self.settings.retention_days is not None:
            self._background.append(
                asyncio.create_task(
                    self.queue.prune_every(
                        timedelta(days=self.settings.retention_days),
                        config.RETENTION_INTERVAL_SECONDS,
                    ),
                    name="retention",
                )
            )
        if self.transport is not None:
            self._background.append(asyncio.create_task(self.transport.run(), name="transport"))

    async def stop_background(self) -> None:
        if self.transport is not None:
            await self.transport.stop()
        for task in self._background:
            if task.get_name() != "transport":
                task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()

    async def transport_report(self) -> TransportReport:
        return await report_transport(self.relay, self.transport)

    async def close(self) -> None:
        await self.stop_background()
        await super().close()
        if self.server_lock is not None:
            self.server_lock.release()


async def report_transport(
    relay: TelegramRelay, transport: TelegramTransport | None
) -> TransportReport:
    """The transport's state in this process, and which process holds the poller lease.

    The poller reports on the Bot API from its own calls (an outage shows after one failed
    call); a standby process repeats what the poller last recorded on the lease.
    """
    if transport is None:
        return TransportReport(name="telegram", state=TransportState.NOT_CONFIGURED)
    status = transport.status
    lease = await relay.lease(config.POLLER_LEASE)
    polling_here = lease is not None and lease.holder == status.holder_id
    source = status if polling_here or lease is None else lease
    return TransportReport(
        name=status.name,
        state=status.state,
        detail=status.detail,
        poller=lease.holder if lease else None,
        this_process=status.holder_id,
        last_ok_at=source.last_ok_at,
        last_error=source.last_error,
        error_since=source.error_since,
    )


def build_bridge(
    configuration: Configuration | Settings, *, default_identity: str, http: bool
) -> Bridge:
    """Wire the parts together; nothing connects until first use.

    Given settings rather than a loaded configuration, loads it (once) first.

    Raises:
        ConfigError: the configuration is wrong (the message names the file, line and key).
    """
    runtime = open_runtime(configuration)
    settings = runtime.settings
    telegram = runtime.configuration.telegram
    routes = runtime.configuration.routes
    transport = None
    if telegram and routes:
        from nexus_bridge.transports.telegram import TelegramTransport

        transport = TelegramTransport(runtime.relay, telegram, routes=routes)
    static = (
        StaticTokenVerifier([t.get_secret_value() for t in settings.auth_tokens])
        if settings.auth_tokens
        else None
    )
    verifier: StaticTokenVerifier | None = None
    provider = oauth_provider(settings, runtime, static) if http else None
    auth = None
    if provider is not None:
        # claude.ai: nexus-bridge is its own authorization server; static tokens still work.
        auth = AuthSettings(
            issuer_url=AnyHttpUrl(provider.policy.issuer),
            resource_server_url=AnyHttpUrl(provider.policy.public_url),
            validate_token_resource=False,  # tokens are ours, issued for this one resource
            client_registration_options=ClientRegistrationOptions(enabled=True),
            revocation_options=RevocationOptions(enabled=True),
        )
    elif http and static is not None:
        verifier = static
        auth = AuthSettings(
            issuer_url=AnyHttpUrl(settings.listen_origin),
            resource_server_url=None,
        )
    server = create_mcp_server(
        runtime.queue,
        default_identity=default_identity,
        token_verifier=verifier,
        auth_server_provider=provider,
        auth=auth,
        transport_report=functools.partial(report_transport, runtime.relay, transport),
    )
    agent_verifier = AgentTokenVerifier(agent_tokens(runtime, create_default=http))
    agent_server = create_agent_server(
        runtime.queue, token_verifier=agent_verifier, auth=agent_auth_settings(settings)
    )
    # Held while this process runs: `nexus-bridge restore` refuses while any server holds it.
    lock = ServerLock.try_acquire(settings.database_url, exclusive=False)
    if lock is None:
        raise ConfigError(
            f"a restore is replacing the database {sqlite_file(settings.database_url)}; "
            "start the server once it has finished"
        )
    return Bridge(
        **vars(runtime),
        mcp=server,
        agent_mcp=agent_server,
        agent_verifier=agent_verifier,
        transport=transport,
        oauth=provider,
        server_lock=lock,
    )


def oauth_provider(
    settings: Settings, runtime: Runtime, static: StaticTokenVerifier | None
) -> BridgeOAuthProvider | None:
    """The OAuth authorization server, when PUBLIC_URL says where claude.ai reaches us."""
    if settings.public_url is None:
        return None
    from nexus_bridge.oauth import BridgeOAuthProvider, OAuthPolicy

    policy = OAuthPolicy(
        public_url=settings.public_url,
        access_token_seconds=settings.oauth_access_token_seconds,
        refresh_token_seconds=settings.oauth_refresh_token_seconds,
        max_failed_attempts=settings.oauth_max_failed_attempts,
        lockout_seconds=settings.oauth_lockout_seconds,
        failure_delay_seconds=settings.oauth_failure_delay_seconds,
        extra_redirect_uris=tuple(settings.oauth_redirect_uris),
        max_unused_clients=settings.oauth_max_unused_clients,
    )
    return BridgeOAuthProvider(runtime.store, policy, static_tokens=static)


def agent_route(bridge: Bridge, settings: Settings) -> Route:
    """/agent/mcp, authenticated by agent tokens only (client tokens are refused there)."""
    agent_app = bridge.agent_mcp.streamable_http_app(
        streamable_http_path=AGENT_MCP_PATH,
        stateless_http=True,
        json_response=True,
        transport_security=transport_security(settings),
        host=settings.host,
    )
    (endpoint,) = [
        r.endpoint for r in agent_app.routes if isinstance(r, Route) and r.path == AGENT_MCP_PATH
    ]
    guarded = AuthenticationMiddleware(
        AuthContextMiddleware(mcp_endpoint(endpoint)),
        backend=BearerAuthBackend(bridge.agent_verifier),
    )
    return Route(AGENT_MCP_PATH, endpoint=guarded)


def mcp_endpoint(endpoint: Any) -> Any:
    """The SDK's MCP endpoint behind :class:`McpEndpoint` (POST only, disconnects watched),
    placed inside the SDK's token check so a request without a token still gets its 401."""
    if isinstance(endpoint, RequireAuthMiddleware):
        endpoint.app = McpEndpoint(endpoint.app)
        return endpoint
    return McpEndpoint(endpoint)


def targets_route(bridge: Bridge, mcp_route: Any) -> Route:
    """GET /targets: each target and the transport this server delivers it over, and the id of
    the database it reads, so a CLI with another configuration or another database can tell
    before queueing a task nothing would deliver. It asks for the same credentials as ``/mcp``
    (``mcp_route``'s token check, when there is one)."""

    async def targets(_request: Request) -> Response:
        try:
            database: str | None = await bridge.database_id()
        except (DatabaseNotReady, DatabaseBusy):  # nothing to compare with now; the rest holds
            database = None
        return JSONResponse(
            {
                "targets": [
                    {"name": t.name, "transport": t.transport.value} for t in bridge.targets
                ],
                "database": database,
            }
        )

    endpoint: Any = targets
    if isinstance(mcp_route, RequireAuthMiddleware):
        endpoint = RequireAuthMiddleware(
            request_response(targets), mcp_route.required_scopes, mcp_route.resource_metadata_url
        )
    return Route(TARGETS_PATH, endpoint, methods=["GET"])


def webhook_route(transport: TelegramTransport) -> Route:
    """POST /telegram/webhook: Telegram's updates, checked against the secret token header."""
    secret = (transport.webhook_secret or "").encode()

    async def webhook(request: Request) -> Response:
        given = request.headers.get("x-telegram-bot-api-secret-token", "").encode()
        if not secret or not hmac.compare_digest(given, secret):
            logger.warning("telegram webhook: refused a request without the right secret token")
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            payload = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid JSON"}, status_code=400)
        try:
            accepted = await transport.accept_webhook(payload)
        except InvalidInput as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not accepted:
            # Not journaled: a non-2xx answer makes Telegram deliver it again.
            return JSONResponse({"error": "try again"}, status_code=503)
        return JSONResponse({"ok": True})

    return Route(WEBHOOK_PATH, webhook, methods=["POST"])


def allowed_host_names(settings: Settings) -> list[str]:
    """The Host names the bridge answers to: loopback names, the bind address, ``PUBLIC_URL``'s
    and ``TELEGRAM_WEBHOOK_URL``'s hosts, and ``ALLOWED_HOSTS``."""
    hosts = list(LOOPBACK_HOSTS)
    if settings.host not in WILDCARD_HOSTS and settings.host not in hosts:
        hosts.append(f"[{settings.host}]" if ":" in settings.host else settings.host)
    hosts.extend(settings.allowed_hosts)
    for url in (settings.public_url, settings.telegram_webhook_url):
        if url:
            public = urlparse(url).netloc
            if public and public not in hosts:
                hosts.append(public)
    return hosts


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection: the allowed host names, with any port unless one is given."""
    allowed_hosts: list[str] = []
    allowed_origins: list[str] = []
    for host in allowed_host_names(settings):
        has_port = host.rsplit("]", 1)[-1].count(":") == 1
        allowed_hosts.append(host)
        if not has_port:
            allowed_hosts.append(f"{host}:*")
        for scheme in ("http", "https"):
            allowed_origins.append(f"{scheme}://{host}")
            if not has_port:
                allowed_origins.append(f"{scheme}://{host}:*")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=allowed_hosts,
        allowed_origins=allowed_origins,
    )


def host_allowed(host: str | None, allowed: tuple[str, ...]) -> bool:
    """The rule /mcp's transport security applies: an exact match, or ``name:*`` and a port."""
    if not host:
        return False
    host = host.lower()
    name, _, port = host.rpartition(":")
    for pattern in allowed:
        pattern = pattern.lower()
        if host == pattern or (pattern.endswith(":*") and name == pattern[:-2] and port.isdigit()):
            return True
    return False


class HostGuard:
    """Around the whole app, so no route can forget it: a ``Host`` the bridge does not answer to
    gets 421 (DNS rebinding), and the OAuth endpoints' bodies are capped."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self._allowed = tuple(allowed_hosts)
        self._limited = RequestBodyLimitMiddleware(app, MAX_OAUTH_BODY_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host")
        if not host_allowed(host, self._allowed):
            logger.warning("refused a request for Host %.100r: not an allowed host name", host)
            await PlainTextResponse("Invalid Host header", status_code=421)(scope, receive, send)
            return
        inner = self._limited if scope["path"] in OAUTH_BODY_PATHS else self.app
        await inner(scope, receive, send)


def token_resource_guard(inner: ASGIApp, policy: OAuthPolicy) -> ASGIApp:
    """POST /token: a ``resource`` that is another server's is ``invalid_target`` (RFC 8707).
    The SDK's handler does not hand it to the provider, so it is checked here. (Only in a
    urlencoded form, as RFC 6749 sends it; whatever is sent, the token is issued for the resource
    the code or refresh token carries, which the provider checks too.)"""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await inner(scope, receive, send)
            return
        body = bytearray()  # bounded by HostGuard's body limit
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        for resource in parse_qs(body.decode("utf-8", "replace")).get("resource", []):
            refused = policy.refuse_resource(resource)
            if refused is not None:
                response = JSONResponse(
                    {"error": "invalid_target", "error_description": refused},
                    status_code=400,
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
                )
                await response(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await inner(scope, replay, send)

    return guarded


def registrations_full_guard(inner: ASGIApp) -> ASGIApp:
    """POST /register: 429 while too many registered clients wait for their first token."""

    from nexus_bridge.oauth import RegistrationsFull

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await inner(scope, receive, send)
        except RegistrationsFull as exc:
            response = JSONResponse(
                {"error": "temporarily_unavailable", "error_description": str(exc)},
                status_code=429,
                headers={"Retry-After": "600", "Cache-Control": "no-store"},
            )
            await response(scope, receive, send)

    return guarded


class RegistrationLimiter:
    """At most ``per_hour`` registrations an hour from one client address, in this process.

    Loopback addresses are not counted: there the real client is unknown (a local proxy that
    names none), and the unused clients' cap applies alone. The addresses remembered are
    bounded: the oldest is forgotten first.
    """

    MAX_ADDRESSES: Final = 10_000

    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_hour = per_hour
        self._clock = clock
        self._seen: collections.OrderedDict[str, collections.deque[float]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        """How many addresses are remembered."""
        return len(self._seen)

    def allow(self, address: str | None, forwarded_for: str | None = None) -> bool:
        """Count one registration from ``address`` (as :func:`known_client_address` takes it,
        with the request's X-Forwarded-For); False if it is one too many."""
        address = known_client_address(address, forwarded_for)
        if address is None:
            return True
        now = self._clock()
        times = self._seen.pop(address, None) or collections.deque()
        while times and times[0] <= now - 3600:
            times.popleft()
        self._seen[address] = times  # now the newest
        while len(self._seen) > self.MAX_ADDRESSES:
            self._seen.popitem(last=False)
        if len(times) >= self._per_hour:
            return False
        times.append(now)
        return True


def registration_rate_guard(inner: ASGIApp, limiter: RegistrationLimiter) -> ASGIApp:
    """POST /register: 429 for an address that registered too often this hour."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        address = client[0] if client else None
        forwarded_for = Headers(scope=scope).get("x-forwarded-for")
        if scope.get("method") == "POST" and not limiter.allow(address, forwarded_for):
            logger.warning("oauth: refused a registration: too many from one address this hour")
            response = JSONResponse(
                {
                    "error": "temporarily_unavailable",
                    "error_description": "too many registrations from this address; try again "
                    "in an hour",
                },
                status_code=429,
                headers={"Retry-After": "3600", "Cache-Control": "no-store"},
            )
            await response(scope, receive, send)
            return
        await inner(scope, receive, send)

    return guarded


def no_store(inner: ASGIApp) -> ASGIApp:
    """``Cache-Control: no-store`` on every response that does not set its own: for POST
    /register, whose answer carries the client's secret (RFC 7591 §3.2.1, as RFC 6749 §5.1 has
    it for tokens)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await inner(scope, receive, send_no_store)

    return guarded


def _wrap_route(app: Starlette, path: str, wrap: Callable[[ASGIApp], ASGIApp]) -> None:
    for route in app.router.routes:
        if isinstance(route, Route) and route.path == path:
            route.app = wrap(route.app)


def adapt_oauth_routes(
    app: Starlette, server: MCPServer[Any], provider: BridgeOAuthProvider
) -> None:
    """The SDK's OAuth routes, with this bridge's policy where the SDK has no hook for it."""
    from nexus_bridge.oauth import REGISTRATIONS_PER_ADDRESS_PER_HOUR

    _wrap_route(app, "/token", lambda inner: token_resource_guard(inner, provider.policy))
    limiter = RegistrationLimiter(REGISTRATIONS_PER_ADDRESS_PER_HOUR)
    _wrap_route(
        app,
        "/register",
        lambda inner: no_store(registration_rate_guard(registrations_full_guard(inner), limiter)),
    )
    auth = server.settings.auth
    if auth is None:
        return
    metadata = build_metadata(
        auth.issuer_url,
        auth.service_documentation_url,
        auth.client_registration_options or ClientRegistrationOptions(),
        auth.revocation_options or RevocationOptions(),
    )
    # Public clients (token_endpoint_auth_method "none") are accepted: say so.
    methods = [*(metadata.token_endpoint_auth_methods_supported or []), "none"]
    metadata = metadata.model_copy(update={"token_endpoint_auth_methods_supported": methods})
    handler = cors_middleware(MetadataHandler(metadata).handle, ["GET", "OPTIONS"])
    _wrap_route(app, AUTH_SERVER_METADATA_PATH, lambda _sdk: handler)


def create_app(settings: Settings, bridge: Bridge | None = None) -> Starlette:
    """The ASGI app: ``/mcp`` (stateless Streamable HTTP), ``/healthz`` and ``/readyz``."""
    bridge = bridge or build_bridge(settings, default_identity="anonymous", http=True)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> Response:
        try:
            await bridge.check_schema()
            report = await bridge.transport_report()
        except DatabaseNotReady as exc:
            return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
        except Exception:
            logger.exception("readiness check failed")
            return JSONResponse(
                {"status": "not ready", "reason": "the database check failed; see the log"},
                status_code=503,
            )
        return JSONResponse(
            {
                "status": "ready",
                "transport": TransportOut.of(report).model_dump(),
            }
        )

    app = bridge.mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=True,
        json_response=True,  # plain JSON answers: nothing to cut off at shutdown
        transport_security=transport_security(settings),
        host=settings.host,
    )
    app.router.routes[:] = [
        Route(MCP_PATH, endpoint=mcp_endpoint(r.endpoint))
        if isinstance(r, Route) and r.path == MCP_PATH
        else r
        for r in app.router.routes
    ]
    metrics_token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    app.router.routes.extend(
        [
            Route(HEALTHZ_PATH, healthz, methods=["GET"]),
            Route(READYZ_PATH, readyz, methods=["GET"]),
            Route(
                METRICS_PATH,
                metrics_endpoint(bridge.queue, metrics_token, sqlite_file(settings.database_url)),
                methods=["GET"],
            ),
        ]
    )
    if bridge.oauth is not None:
        from nexus_bridge.consent import consent_routes

        adapt_oauth_routes(app, bridge.mcp, bridge.oauth)
        app.router.routes.extend(consent_routes(bridge.oauth))
    app.router.routes.append(agent_route(bridge, settings))
    (mcp_route,) = [
        r.endpoint for r in app.router.routes if isinstance(r, Route) and r.path == MCP_PATH
    ]
    app.router.routes.append(targets_route(bridge, mcp_route))
    if bridge.transport is not None and bridge.transport.webhook_secret is not None:
        app.router.routes.append(webhook_route(bridge.transport))
    # The owner's console (/console): its own sign-in with the owner passphrase.
    console = console_deps(
        settings,
        store=bridge.store,
        queue=bridge.queue,
        oauth=bridge.oauth,
        transport_report=bridge.transport_report,
    )
    app.router.routes.extend(console_routes(console))

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await bridge.check_schema()
        bridge.start_background()
        try:
            async with bridge.mcp.session_manager.run(), bridge.agent_mcp.session_manager.run():
                yield
        finally:
            await bridge.close()

    app.router.lifespan_context = lifespan
    app.add_middleware(HostGuard, allowed_hosts=transport_security(settings).allowed_hosts)
    app.state.bridge = bridge
    return app


class BridgeServer(uvicorn.Server):
    """uvicorn, plus: announce the real address, keep the start-up heap out of the garbage
    collector's way, and wake long pulls when asked to stop."""

    def __init__(
        self,
        config_: uvicorn.Config,
        bridge: Bridge,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(config_)
        self._bridge = bridge
        self._on_listening = on_listening
        self.bound_port: int | None = None

    @property
    def bridge(self) -> Bridge:
        return self._bridge

    async def serve(self, sockets: list[Any] | None = None) -> None:
        try:
            await super().serve(sockets)
        finally:
            gc.unfreeze()  # what start-up froze is the collector's again (and collectable)

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            _freeze_startup_heap()
        if self.servers and self.servers[0].sockets:
            self.bound_port = int(self.servers[0].sockets[0].getsockname()[1])
            url = mcp_url(self._bridge.settings, self.bound_port)
            if self._on_listening is not None:
                self._on_listening(url)
            logger.info("nexus-bridge listening on %s", url)

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Called from the signal handler: hand the wake-up to the loop, then let uvicorn drain.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            loop.call_soon_threadsafe(self._bridge.queue.signal.close)
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # uvicorn re-raises the signals it caught once it has shut down, so a drained, cleanly
            # closed server would still die of SIGTERM (status -15) instead of exiting 0. SIGTERM
            # is how a service is stopped: it has been handled. (SIGINT still ends in 130.)
            captured: list[int] = getattr(self, "_captured_signals", [])
            captured[:] = [s for s in captured if s != signal.SIGTERM]


def _freeze_startup_heap() -> None:
    """Move every object alive now (the imported libraries, the app, the bridge: about 150,000)
    out of the cyclic garbage collector's reach. A full collection then walks only what was
    made since: on a 2-core machine under 32 clients it went from 60-220 ms a pause, 20% of the
    loop's time, to a few ms. Objects are still freed by reference counting; only a cycle among
    them that dies later waits for :func:`gc.unfreeze` (at shutdown) to be collected."""
    gc.freeze()
    logger.debug(
        "froze %d start-up objects out of the garbage collector's way", gc.get_freeze_count()
    )


class BridgeHttpProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, plus: a request must arrive whole (head and body) within
    :attr:`REQUEST_SECONDS` of the connection opening or of its own first byte, or the
    connection is closed. uvicorn waits for ever for a first request, for the rest of a head and
    for a body, so idle or crawling sockets (slowloris) could hold every open file the process
    may have. An idle kept-alive connection keeps uvicorn's own keep-alive timeout; a response
    may take as long as it takes (a long-polling pull)."""

    REQUEST_SECONDS: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._request_timer: asyncio.TimerHandle | None = None
        self._arm_request_timer()  # the first request's head is owed from now

    def handle_events(self) -> None:
        # Where h11's state moves: bytes came in, or a response ended and a pipelined request
        # (already received in part) begins.
        super().handle_events()
        owed = self._request_owed()
        if owed and self._request_timer is None:
            self._arm_request_timer()  # a request has begun to arrive
        elif not owed and self._request_timer is not None:
            self._request_timer.cancel()  # it arrived whole: the app answers in its own time
            self._request_timer = None

    def _request_owed(self) -> bool:
        """Whether the client owes the rest of a request: a body, the first head, or a next
        head it has begun (a kept-alive connection with nothing sent is uvicorn's to time)."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return True
        if state is h11.IDLE:
            return self.cycle is None or bool(self.conn.trailing_data[0])
        return False

    def _arm_request_timer(self) -> None:
        self._request_timer = self.loop.call_later(self.REQUEST_SECONDS, self._close_if_owed)

    def _close_if_owed(self) -> None:
        self._request_timer = None
        if self._request_owed() and not self.transport.is_closing():
            logger.debug("closed a connection whose request did not arrive whole in time")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
        super().connection_lost(exc)


def mcp_url(settings: Settings, port: int | None = None) -> str:
    host = settings.host
    if host in WILDCARD_HOSTS:
        host = LOOPBACK_HOSTNAMES[0]
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port if port is not None else settings.port}{MCP_PATH}"


def make_server(
    configuration: Configuration | Settings, on_listening: Callable[[str], None] | None = None
) -> BridgeServer:
    bridge = build_bridge(configuration, default_identity="anonymous", http=True)
    settings = bridge.settings
    app = create_app(settings, bridge)
    uv_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        server_header=False,
        http=BridgeHttpProtocol,
    )
    return BridgeServer(uv_config, bridge, on_listening)
