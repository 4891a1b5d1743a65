"""nexus-bridge as its own OAuth 2.1 authorization server, for one owner.

claude.ai registers itself (RFC 7591), sends the owner to the consent page, and exchanges the
code (PKCE S256) for a short-lived access token and a rotating refresh token. Codes and tokens
are stored only as SHA-256 hashes; the owner's passphrase as a scrypt hash. The SDK's handlers do
the protocol; this module is the storage and the policy behind them.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final
from urllib.parse import urlencode, urlparse

from mcp.server.auth.provider import (
    AccessToken,
    AuthorizationCode,
    AuthorizationParams,
    AuthorizeError,
    RefreshToken,
    RegistrationError,
    TokenError,
)
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from mcp.shared.auth_utils import check_resource_allowed
from pydantic import AnyUrl

from nexus_bridge.auth import StaticTokenVerifier
from nexus_bridge.constants import CONSENT_PATH, LOOPBACK_HOSTNAMES
from nexus_bridge.db.oauth_store import OAuthStore, TokenKind, TokenRecord
from nexus_bridge.db.store import Store
from nexus_bridge.domain import utc_now
from nexus_bridge.errors import NexusBridgeError
from nexus_bridge.metrics import METRICS
from nexus_bridge.owner import ConsentRefused as ConsentRefused
from nexus_bridge.owner import NoPassphrase as NoPassphrase
from nexus_bridge.owner import OwnerGate as OwnerGate
from nexus_bridge.owner import OwnerLockedOut as OwnerLockedOut
from nexus_bridge.owner import hash_passphrase as hash_passphrase
from nexus_bridge.owner import verify_passphrase as verify_passphrase

logger = logging.getLogger(__name__)

CLAUDE_CALLBACKS: Final = (
    "https://claude.ai/api/mcp/auth_callback",
    "https://claude.com/api/mcp/auth_callback",
)
REQUEST_SECONDS: Final = 600
PRUNE_AFTER_DAYS: Final = 7  # expired codes and tokens are kept this long, then forgotten
# A rotated refresh token presented again this soon, while the refresh token its rotation gave
# out has not been used in turn, is taken as its client trying again after the answer was lost
# (a timeout, a reset, a paused server): it gets new tokens, and what the lost answer held is
# revoked, so that the sign-in never forks into two chains. Whoever did receive that answer and
# presents its (revoked) refresh token then revokes the whole family, as any reuse does. Later,
# or once the successor has been used, the old token is a copy in other hands: the family is
# revoked at once.
REFRESH_RETRY_SECONDS: Final = 60
# Anyone can register and start an authorization: every stored field is capped.
MAX_REGISTRATION_CHARS: Final = 16_384  # the whole registration, as stored
MAX_CLIENT_NAME_CHARS: Final = 200
MAX_REGISTRATION_FIELD_CHARS: Final = 4096  # any other registration field, as JSON
MAX_REGISTRATION_LIST_ITEMS: Final = 10  # redirect_uris, contacts, grant_types, ...
MAX_STATE_CHARS: Final = 1024
MAX_RESOURCE_CHARS: Final = 2048  # PUBLIC_URL, or a path below it, as a client names it
MAX_SCOPE_CHARS: Final = 1024  # the requested scopes (each one registered, but repeatable)
S256_CHALLENGE: Final = re.compile(r"[A-Za-z0-9_-]{43}")  # base64url of a SHA-256, unpadded
# Registrations one client address may make an hour (where the bridge knows the address: not
# loopback, i.e. straight from the network or named by the proxy's X-Forwarded-For). claude.ai
# registers once per connector; this only slows a flood from one address filling the unused
# clients' cap for everyone.
REGISTRATIONS_PER_ADDRESS_PER_HOUR: Final = 10
MAX_PENDING_REQUESTS_PER_CLIENT: Final = 10  # older consent requests of the client are dropped
UNUSED_CLIENT_SECONDS: Final = 3600  # then a client that got no code or token is forgotten
MAX_OAUTH_ID_CHARS: Final = 64  # the longest client id or token family id stored


class ConsentExpired(NexusBridgeError):
    """This authorization request has expired or was already used; start again from your client."""


class RegistrationsFull(NexusBridgeError):
    """Too many registered clients are still waiting for their first token; try again later."""


class UnknownClientOrFamily(NexusBridgeError):
    """No client or token family has that id."""

    def __init__(self, client_or_family_id: str) -> None:
        super().__init__(f"no client or token family {client_or_family_id!r}")
        self.client_or_family_id = client_or_family_id


@dataclass(frozen=True, slots=True)
class TokenFamilyView:
    """The tokens grown from one consent: how many were issued, how many can still be used."""

    family_id: str
    client_id: str
    issued: int
    live: int  # neither revoked, expired nor (a refresh token) rotated
    last_issued_at: datetime


@dataclass(frozen=True, slots=True)
class OAuthClientView:
    """A registered client as its owner sees it, with the token families it holds."""

    client_id: str
    name: str | None
    registered_at: datetime
    revoked_at: datetime | None
    families: tuple[TokenFamilyView, ...]


class RevokedKind(enum.StrEnum):
    """What :meth:`BridgeOAuthProvider.revoke` revoked."""

    CLIENT = "client"  # the client and every token of it; it has to register again
    FAMILY = "family"  # the tokens of one consent only


@dataclass(frozen=True, slots=True)
class Revocation:
    """What a revocation revoked."""

    kind: RevokedKind
    id: str

    @property
    def description(self) -> str:
        if self.kind is RevokedKind.CLIENT:
            return f"client {self.id} and all its tokens"
        return f"token family {self.id}"


@dataclass(frozen=True, slots=True)
class OAuthPolicy:
    """Lifetimes, limits and addresses, from settings."""

    public_url: str  # the MCP endpoint as claude.ai sees it, e.g. https://mcp.example.net/mcp
    access_token_seconds: int = 3600
    refresh_token_seconds: int = 30 * 24 * 3600
    code_seconds: int = 300
    max_failed_attempts: int = 5
    lockout_seconds: int = 900
    failure_delay_seconds: float = 1.0
    extra_redirect_uris: tuple[str, ...] = ()
    max_unused_clients: int = 100

    @property
    def issuer(self) -> str:
        parsed = urlparse(self.public_url)
        return f"{parsed.scheme}://{parsed.netloc}"

    def resource_allowed(self, resource: str | None) -> bool:
        """RFC 8707: a token may only be for this server, ``PUBLIC_URL`` (or a path below it on
        the same origin, as the SDK's check has it). None: the client named no resource, so
        this one."""
        if resource is None:
            return True
        return len(resource) <= MAX_RESOURCE_CHARS and check_resource_allowed(
            resource, self.public_url
        )

    def refuse_resource(self, resource: str | None) -> str | None:
        """The ``invalid_target`` description for a resource that is another server's (or too
        long to be this one's)."""
        if self.resource_allowed(resource):
            return None
        if resource is not None and len(resource) > MAX_RESOURCE_CHARS:
            return f"resource is longer than {MAX_RESOURCE_CHARS} characters"
        shown = resource if resource is not None and len(resource) <= 200 else "(too long)"
        return f"resource must be this server, {self.public_url}; refused: {shown}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def redirect_uri_allowed(uri: str, extra: tuple[str, ...] = ()) -> bool:
    """claude.ai's callback, loopback addresses (desktop clients), or an operator-listed URI."""
    if uri in CLAUDE_CALLBACKS or uri in extra:
        return True
    parsed = urlparse(uri)
    return parsed.scheme in ("http", "https") and (parsed.hostname or "") in LOOPBACK_HOSTNAMES


def registration_refused(client_info: OAuthClientInformationFull) -> str | None:
    """Why a registration cannot be stored (too large, or a NUL character, which PostgreSQL's
    text refuses), naming the field; None if it can."""
    fields = client_info.model_dump(mode="json", exclude_none=True)
    for name, value in fields.items():
        if _has_nul(value):
            return f"{name} contains a NUL character"
        if isinstance(value, list) and len(value) > MAX_REGISTRATION_LIST_ITEMS:
            return f"{name} has more than {MAX_REGISTRATION_LIST_ITEMS} entries"
        limit = MAX_CLIENT_NAME_CHARS if name == "client_name" else MAX_REGISTRATION_FIELD_CHARS
        size = len(value) if isinstance(value, str) else len(json.dumps(value))
        if size > limit:
            return f"{name} is longer than {limit} characters"
    if len(client_info.model_dump_json()) > MAX_REGISTRATION_CHARS:
        return f"the registration is longer than {MAX_REGISTRATION_CHARS} characters"
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    return False


def authorization_refused(
    params: AuthorizationParams, policy: OAuthPolicy
) -> AuthorizeError | None:
    """Why an authorization request cannot be parked, naming the parameter; None if it can."""
    if params.state is not None and len(params.state) > MAX_STATE_CHARS:
        return AuthorizeError(
            error="invalid_request",
            error_description=f"state is longer than {MAX_STATE_CHARS} characters",
        )
    if params.scopes is not None and len(" ".join(params.scopes)) > MAX_SCOPE_CHARS:
        return AuthorizeError(
            error="invalid_request",
            error_description=f"scope is longer than {MAX_SCOPE_CHARS} characters",
        )
    if not S256_CHALLENGE.fullmatch(params.code_challenge):
        return AuthorizeError(
            error="invalid_request",
            error_description="code_challenge must be 43 characters of base64url (S256)",
        )
    refused = policy.refuse_resource(params.resource)
    if refused is not None:
        return AuthorizeError(error="invalid_target", error_description=refused)
    return None


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


def _is_live(token: TokenRecord, now: datetime) -> bool:
    return token.revoked_at is None and token.expires_at > now and token.used_at is None


def token_families(tokens: Iterable[TokenRecord], now: datetime) -> list[TokenFamilyView]:
    """The families of these tokens (oldest first), in the order each family's first token
    was issued, counting the tokens still live at ``now``."""
    families: dict[str, TokenFamilyView] = {}
    for token in tokens:
        seen = families.get(token.family_id)
        families[token.family_id] = TokenFamilyView(
            family_id=token.family_id,
            client_id=token.client_id,
            issued=(seen.issued if seen else 0) + 1,
            live=(seen.live if seen else 0) + int(_is_live(token, now)),
            last_issued_at=token.created_at,
        )
    return list(families.values())


class BridgeOAuthProvider:
    """The SDK's ``OAuthAuthorizationServerProvider``, backed by the database."""

    def __init__(
        self,
        store: Store,
        policy: OAuthPolicy,
        *,
        static_tokens: StaticTokenVerifier | None = None,
    ) -> None:
        self._store = store
        self.policy = policy
        self._static = static_tokens
        self._now = utc_now
        self.owner_gate = OwnerGate(
            store,
            max_failed_attempts=policy.max_failed_attempts,
            lockout_seconds=policy.lockout_seconds,
            failure_delay_seconds=policy.failure_delay_seconds,
            clock=lambda: self._now(),
        )

    # --- clients -------------------------------------------------------------------------------

    async def get_client(self, client_id: str) -> OAuthClientInformationFull | None:
        if len(client_id) > MAX_OAUTH_ID_CHARS or "\x00" in client_id:
            return None  # no client has such an id; never sent to the database
        async with self._store.read() as tx:
            row = await tx.oauth.client(client_id)
        if row is None or row.revoked_at is not None:
            return None
        return OAuthClientInformationFull.model_validate_json(row.info)

    async def register_client(self, client_info: OAuthClientInformationFull) -> None:
        uris = [str(u) for u in client_info.redirect_uris or []]
        refused = [u for u in uris if not redirect_uri_allowed(u, self.policy.extra_redirect_uris)]
        if not uris or refused:
            raise RegistrationError(
                error="invalid_redirect_uri",
                error_description=(
                    "redirect URIs must be claude.ai's callback or a loopback address; "
                    f"refused: {', '.join(refused) or '(none given)'}"
                ),
            )
        if client_info.client_id is None:
            raise RegistrationError(error="invalid_client_metadata", error_description="no id")
        refused_field = registration_refused(client_info)
        if refused_field is not None:
            raise RegistrationError(
                error="invalid_client_metadata", error_description=refused_field
            )
        now = self._now()
        async with self._store.write() as tx:
            # Registering is open: forget clients that never got a token, and cap how many wait.
            await tx.oauth.prune_unused_clients(
                registered_before=now - timedelta(seconds=UNUSED_CLIENT_SECONDS), now=now
            )
            if await tx.oauth.count_unused_clients() >= self.policy.max_unused_clients:
                logger.warning("oauth: refused a registration: too many clients without a token")
                raise RegistrationsFull()
            await tx.oauth.insert_client(
                client_id=client_info.client_id,
                client_name=client_info.client_name,
                info=client_info.model_dump_json(),
                at=now,
            )
        logger.info(
            "oauth: registered client %s (%r)", client_info.client_id, client_info.client_name
        )

    # --- authorization -------------------------------------------------------------------------

    async def authorize(
        self, client: OAuthClientInformationFull, params: AuthorizationParams
    ) -> str:
        """Park the request and send the owner to the consent page."""
        if client.client_id is None:
            raise RegistrationError(error="invalid_client_metadata", error_description="no id")
        refused = authorization_refused(params, self.policy)
        if refused is not None:
            raise refused
        request_id = secrets.token_urlsafe(32)
        now = self._now()
        async with self._store.write() as tx:
            # Anyone can start an authorization: keep the tables from growing without bound.
            await tx.oauth.prune(now=now, keep_after=now - timedelta(days=PRUNE_AFTER_DAYS))
            await tx.oauth.keep_newest_requests(
                client.client_id, keep=MAX_PENDING_REQUESTS_PER_CLIENT - 1
            )
            await tx.oauth.insert_request(
                id_hash=token_hash(request_id),
                client_id=client.client_id,
                params=params.model_dump_json(),
                expires_at=now + timedelta(seconds=REQUEST_SECONDS),
                at=now,
            )
        return f"{self.policy.issuer}{CONSENT_PATH}?{urlencode({'request': request_id})}"

    async def pending_request(
        self, request_id: str
    ) -> tuple[OAuthClientInformationFull, AuthorizationParams]:
        """The client and parameters of a parked request, for the consent page.

        Raises:
            ConsentExpired: unknown, used or expired.
        """
        async with self._store.read() as tx:
            row = await tx.oauth.request(token_hash(request_id))
        if row is None or row.expires_at < self._now():
            raise ConsentExpired()
        client = await self.get_client(row.client_id)
        if client is None:
            raise ConsentExpired()
        return client, AuthorizationParams.model_validate_json(row.params)

    async def decline(self, request_id: str) -> str:
        """The owner said no: the redirect back to the client with access_denied."""
        _client, params = await self.pending_request(request_id)
        async with self._store.write() as tx:
            await tx.oauth.delete_request(token_hash(request_id))
        METRICS.oauth_refusals.labels("declined").inc()
        query = {"error": "access_denied", "error_description": "the owner declined"}
        if params.state is not None:
            query["state"] = params.state
        return _with_query(str(params.redirect_uri), query)

    async def approve(
        self,
        request_id: str,
        passphrase: str,
        address: str | None = None,
        forwarded_for: str | None = None,
    ) -> str:
        """Check the passphrase (sent from ``address``, the client's, with the request's
        X-Forwarded-For); on success issue a code and return the redirect to the client.

        Raises:
            ConsentExpired: the request is gone.
            NoPassphrase: none has been set.
            OwnerLockedOut: too many wrong attempts lately.
            ConsentRefused: wrong passphrase (the page never says more).
        """
        client, params = await self.pending_request(request_id)
        await self.owner_gate.check(passphrase, address, forwarded_for)
        now = self._now()
        code = secrets.token_urlsafe(32)
        async with self._store.write() as tx:
            if not await tx.oauth.delete_request(token_hash(request_id)):
                raise ConsentExpired()  # approved twice at once: only one wins
            await tx.oauth.insert_code(
                code_hash=token_hash(code),
                client_id=client.client_id,
                family_id=str(uuid.uuid4()),
                redirect_uri=str(params.redirect_uri),
                redirect_uri_explicit=params.redirect_uri_provided_explicitly,
                code_challenge=params.code_challenge,
                scopes=params.scopes or [],
                resource=params.resource,
                expires_at=now + timedelta(seconds=self.policy.code_seconds),
                at=now,
            )
        METRICS.oauth_logins.inc()
        logger.info("oauth: the owner approved client %s", client.client_id)
        query = {"code": code}
        if params.state is not None:
            query["state"] = params.state
        return _with_query(str(params.redirect_uri), query)

    async def set_passphrase(self, passphrase: str) -> None:
        await self.owner_gate.set_passphrase(passphrase)

    # --- codes and tokens ----------------------------------------------------------------------

    async def load_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: str
    ) -> AuthorizationCode | None:
        async with self._store.write() as tx:
            row = await tx.oauth.code(token_hash(authorization_code))
            if row is None or row.client_id != client.client_id:
                return None
            if row.used_at is not None:
                # A replayed code: whatever it produced is compromised (RFC 6749 §4.1.2).
                revoked = await tx.oauth.revoke_family(row.family_id, at=self._now())
                logger.warning("oauth: a used code was presented again; revoked %s tokens", revoked)
                return None
        return AuthorizationCode(
            code=authorization_code,
            scopes=list(row.scopes),
            expires_at=row.expires_at.timestamp(),
            client_id=row.client_id,
            code_challenge=row.code_challenge,
            redirect_uri=AnyUrl(row.redirect_uri),
            redirect_uri_provided_explicitly=row.redirect_uri_explicit,
            resource=row.resource,
        )

    async def exchange_authorization_code(
        self, client: OAuthClientInformationFull, authorization_code: AuthorizationCode
    ) -> OAuthToken:
        refused = self.policy.refuse_resource(authorization_code.resource)
        if refused is not None:  # a code parked before resources were checked
            raise TokenError(error="invalid_target", error_description=refused)
        hashed = token_hash(authorization_code.code)
        # The SDK's errors are frozen dataclasses, which cannot pass through the transaction's
        # context manager (it sets their __traceback__): decide inside, raise once committed.
        async with self._store.write() as tx:
            row = await tx.oauth.code(hashed)
            if row is not None and await tx.oauth.use_code(hashed, at=self._now()):
                return await self._issue(
                    tx.oauth,
                    client_id=row.client_id,
                    family_id=row.family_id,
                    scopes=authorization_code.scopes,
                    resource=authorization_code.resource,
                )
        raise TokenError(error="invalid_grant", error_description="code already used")

    async def load_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: str
    ) -> RefreshToken | None:
        async with self._store.write() as tx:
            row = await tx.oauth.token(token_hash(refresh_token))
            if (
                row is None
                or row.kind is not TokenKind.REFRESH
                or row.client_id != client.client_id
            ):
                return None
            now = self._now()
            if row.client_revoked_at is not None:
                return None
            if row.revoked_at is not None:
                # Revoked with its family (nothing more to do), or as the answer a retry
                # replaced: then someone holds an answer the client said it never got.
                revoked = await tx.oauth.revoke_family(row.family_id, at=now)
                if revoked:
                    logger.warning(
                        "oauth: a refresh token replaced by a retry was presented; revoked its "
                        "family (%s tokens)",
                        revoked,
                    )
                return None
            if row.used_at is not None and not await self._within_grace(tx.oauth, row, now):
                # Reuse of a rotated refresh token: someone has a copy. End the whole family.
                revoked = await tx.oauth.revoke_family(row.family_id, at=now)
                logger.warning(
                    "oauth: a rotated refresh token was reused; revoked its family (%s tokens)",
                    revoked,
                )
                return None
        return RefreshToken(
            token=refresh_token,
            client_id=row.client_id,
            scopes=list(row.scopes),
            expires_at=_epoch(row.expires_at),
            resource=row.resource,
        )

    async def exchange_refresh_token(
        self, client: OAuthClientInformationFull, refresh_token: RefreshToken, scopes: list[str]
    ) -> OAuthToken:
        refused = self.policy.refuse_resource(refresh_token.resource)
        if refused is not None:  # issued for another server before resources were checked
            raise TokenError(error="invalid_target", error_description=refused)
        hashed = token_hash(refresh_token.token)
        async with self._store.write() as tx:  # raise only once committed: see above
            now = self._now()
            # A client that only ever refreshes must not grow the table either.
            await tx.oauth.prune(now=now, keep_after=now - timedelta(days=PRUNE_AFTER_DAYS))
            row = await tx.oauth.token(hashed)
            if row is not None and (
                row.revoked_at is not None or row.client_revoked_at is not None
            ):
                row = None  # revoked since it was loaded (the owner, or a reuse detected)
            if row is not None and (
                await tx.oauth.use_token(hashed, at=now) or await self._retried(tx.oauth, row, now)
            ):
                return await self._issue(
                    tx.oauth,
                    client_id=row.client_id,
                    family_id=row.family_id,
                    scopes=scopes,
                    resource=refresh_token.resource,
                )
            if row is not None:  # used twice at once: the family is compromised
                await tx.oauth.revoke_family(row.family_id, at=now)
        raise TokenError(error="invalid_grant", error_description="refresh token reused")

    async def _within_grace(self, oauth: OAuthStore, row: TokenRecord, now: datetime) -> bool:
        """Whether ``row``, a refresh token already rotated, may be its client trying again (see
        REFRESH_RETRY_SECONDS): rotated that recently, and what the rotation gave out unused."""
        if row.used_at is None or now - row.used_at > timedelta(seconds=REFRESH_RETRY_SECONDS):
            return False
        return not await oauth.rotation_taken_up(row.family_id, rotated_at=row.used_at)

    async def _retried(self, oauth: OAuthStore, row: TokenRecord, now: datetime) -> bool:
        """Whether ``row``, a refresh token already rotated, is its client trying again; if so,
        what the answer it did not get held is revoked."""
        if row.used_at is None or not await self._within_grace(oauth, row, now):
            return False
        replaced = await oauth.revoke_issued_since(row.family_id, row.used_at, at=now)
        logger.info(
            "oauth: a refresh token was presented again %.1f s after its rotation (its answer "
            "lost on the way?): revoked the %s tokens of that answer, issued new ones",
            (now - row.used_at).total_seconds(),
            replaced,
        )
        return True

    async def _issue(
        self,
        oauth: OAuthStore,
        *,
        client_id: str,
        family_id: str,
        scopes: list[str],
        resource: str | None,
    ) -> OAuthToken:
        now = self._now()
        access = "nba_" + secrets.token_urlsafe(32)
        refresh = "nbr_" + secrets.token_urlsafe(32)
        for token, kind, seconds in (
            (access, TokenKind.ACCESS, self.policy.access_token_seconds),
            (refresh, TokenKind.REFRESH, self.policy.refresh_token_seconds),
        ):
            await oauth.insert_token(
                token_hash=token_hash(token),
                kind=kind,
                client_id=client_id,
                family_id=family_id,
                scopes=scopes,
                resource=resource,
                expires_at=now + timedelta(seconds=seconds),
                at=now,
            )
        return OAuthToken(
            access_token=access,
            token_type="Bearer",  # noqa: S106 - the token type's name, not a secret
            expires_in=self.policy.access_token_seconds,
            refresh_token=refresh,
            scope=" ".join(scopes) or None,
        )

    async def load_access_token(self, token: str) -> AccessToken | None:
        if self._static is not None:
            static = await self._static.verify_token(token)
            if static is not None:
                return static
        async with self._store.read() as tx:
            row = await tx.oauth.token(token_hash(token))
        if row is None or row.kind is not TokenKind.ACCESS:
            return None
        if row.revoked_at is not None or row.client_revoked_at is not None:
            return None
        if row.expires_at <= self._now():
            return None
        if not self.policy.resource_allowed(row.resource):
            return None  # its audience is another server (RFC 8707)
        return AccessToken(
            token=token,
            client_id=row.client_id,
            scopes=list(row.scopes),
            expires_at=_epoch(row.expires_at),
            resource=row.resource,
        )

    async def revoke_token(self, token: AccessToken | RefreshToken) -> None:
        async with self._store.write() as tx:
            row = await tx.oauth.token(token_hash(token.token))
            if row is not None:
                await tx.oauth.revoke_family(row.family_id, at=self._now())

    # --- the owner's view: clients, token families, revocation -------------------------------

    async def clients(self) -> list[OAuthClientView]:
        """Every registered client, oldest first, each with its token families."""
        async with self._store.read() as tx:
            clients = await tx.oauth.clients()
            families = token_families(await tx.oauth.tokens(), self._now())
        return [
            OAuthClientView(
                client_id=c.client_id,
                name=c.client_name,
                registered_at=c.created_at,
                revoked_at=c.revoked_at,
                families=tuple(f for f in families if f.client_id == c.client_id),
            )
            for c in clients
        ]

    async def token_families(self) -> list[TokenFamilyView]:
        """Every token family, in the order each was first issued."""
        async with self._store.read() as tx:
            tokens = await tx.oauth.tokens()
        return token_families(tokens, self._now())

    async def revoke(self, client_or_family_id: str) -> Revocation:
        """Revoke a client and all its tokens, or, given a family's id, the tokens of that one
        consent. Takes effect on the next request of any process on the database.

        Raises:
            UnknownClientOrFamily: neither a client nor a token family has that id.
        """
        if len(client_or_family_id) > MAX_OAUTH_ID_CHARS or "\x00" in client_or_family_id:
            raise UnknownClientOrFamily(client_or_family_id)  # never sent to the database
        now = self._now()
        async with self._store.write() as tx:
            if await tx.oauth.client(client_or_family_id) is not None:
                await tx.oauth.revoke_client(client_or_family_id, at=now)
                revocation = Revocation(RevokedKind.CLIENT, client_or_family_id)
            elif await tx.oauth.family_exists(client_or_family_id):
                await tx.oauth.revoke_family(client_or_family_id, at=now)
                revocation = Revocation(RevokedKind.FAMILY, client_or_family_id)
            else:
                raise UnknownClientOrFamily(client_or_family_id)
        return revocation

    async def exchange_identity_assertion(self, *args: object, **kwargs: object) -> OAuthToken:
        raise TokenError(error="unsupported_grant_type", error_description="not supported")


def _with_query(uri: str, query: dict[str, str]) -> str:
    separator = "&" if urlparse(uri).query else "?"
    return f"{uri}{separator}{urlencode(query)}"
