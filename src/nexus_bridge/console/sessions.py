"""The console's sign-in sessions and the CSRF tokens of its forms.

A session is a random token in an ``HttpOnly``, ``SameSite=Strict`` cookie; the database keeps
only its SHA-256 and its expiry (table ``console_sessions``). Kept server-side rather than as a
signed token: signing out, or setting a new passphrase, ends a session at once, on every server
process that shares the database, and the bridge needs no signing key of its own to keep secret.

A form's CSRF token is derived from the session token (an HMAC of it), so it needs no storage and
cannot be computed by a page that does not hold the cookie. The sign-in form, before any session,
uses a double-submit token: a random value in its own ``SameSite=Strict`` cookie, repeated in the
form.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from nexus_bridge.constants import CONSOLE_SESSION_SECONDS
from nexus_bridge.db.store import Store
from nexus_bridge.domain import utc_now

SESSION_COOKIE: Final = "nexus_console"
SIGN_IN_COOKIE: Final = "nexus_console_sign_in"
CSRF_FIELD: Final = "csrf"
_TOKEN_BYTES: Final = 32
_MAX_COOKIE_CHARS: Final = 100  # a token is 43 characters; anything far longer is not ours


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def csrf_token(session_token: str) -> str:
    """The CSRF token of every form shown in this session."""
    return hmac.new(session_token.encode("utf-8"), b"console-csrf", hashlib.sha256).hexdigest()


def same_token(given: str | None, expected: str | None) -> bool:
    """Constant-time equality of two tokens, neither of them missing or empty."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class ConsoleSessions:
    """Sign-in sessions of the owner's console, in the database."""

    def __init__(
        self,
        store: Store,
        *,
        lifetime_seconds: int = CONSOLE_SESSION_SECONDS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._lifetime = timedelta(seconds=lifetime_seconds)
        self._clock = clock

    @property
    def lifetime_seconds(self) -> int:
        return int(self._lifetime.total_seconds())

    async def start(self) -> str:
        """A new session; returns its token (for the cookie)."""
        token = new_token()
        now = self._clock()
        async with self._store.write() as tx:
            await tx.console_insert_session(_hash(token), at=now, expires_at=now + self._lifetime)
        return token

    async def valid(self, token: str | None) -> bool:
        if not token or len(token) > _MAX_COOKIE_CHARS:
            return False
        async with self._store.read() as tx:
            return await tx.console_session_valid(_hash(token), now=self._clock())

    async def end(self, token: str) -> None:
        async with self._store.write() as tx:
            await tx.console_end_session(_hash(token))
