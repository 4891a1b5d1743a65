"""The owner's passphrase: its hash (scrypt), and the gate every page that asks for it goes
through (the OAuth consent page and the console), with one count of wrong guesses and one
lockout for all of them.

It needs neither the MCP SDK nor the OAuth server: the console works without ``PUBLIC_URL``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

from nexus_bridge.db.store import Store
from nexus_bridge.domain import utc_now
from nexus_bridge.errors import NexusBridgeError
from nexus_bridge.metrics import METRICS

logger = logging.getLogger(__name__)

_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1


class ConsentRefused(NexusBridgeError):
    """That did not work. Check the passphrase and try again."""


class OwnerLockedOut(NexusBridgeError):
    """Too many wrong attempts. Try again later."""


class NoPassphrase(NexusBridgeError):
    """The owner has not set a passphrase yet: run nexus-bridge auth set-passphrase"""


def hash_passphrase(passphrase: str) -> str:
    """A scrypt hash with its parameters and salt, for storing."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        passphrase.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    parts = [
        "scrypt",
        str(_SCRYPT_N),
        str(_SCRYPT_R),
        str(_SCRYPT_P),
        base64.b64encode(salt).decode(),
        base64.b64encode(digest).decode(),
    ]
    return "$".join(parts)


def verify_passphrase(passphrase: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    digest = hashlib.scrypt(
        passphrase.encode("utf-8"),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=32,
    )
    return hmac.compare_digest(digest, base64.b64decode(expected))


class OwnerGate:
    """The owner's passphrase and its wrong-guess lockout, one for every page that asks for it
    (the consent page and the console): the attempts count against the same owner row."""

    def __init__(
        self,
        store: Store,
        *,
        max_failed_attempts: int,
        lockout_seconds: int,
        failure_delay_seconds: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self.max_failed_attempts = max_failed_attempts
        self.lockout_seconds = lockout_seconds
        self.failure_delay_seconds = failure_delay_seconds
        self._now = clock

    async def has_passphrase(self) -> bool:
        async with self._store.read() as tx:
            owner = await tx.oauth.owner()
        return owner is not None and bool(owner.passphrase_hash)

    async def check(self, passphrase: str) -> None:
        """Pass if ``passphrase`` is the owner's; a success clears the count of wrong ones.

        Raises:
            NoPassphrase: none has been set.
            OwnerLockedOut: too many wrong attempts lately.
            ConsentRefused: wrong passphrase (the page never says more).
        """
        now = self._now()
        # Count the attempt before checking it, in one serialised write: parallel guesses
        # cannot all slip in under the limit.
        async with self._store.write() as tx:
            owner = await tx.oauth.owner()
            if owner is None or not owner.passphrase_hash:
                raise NoPassphrase()
            if owner.locked_until is not None and owner.locked_until > now:
                METRICS.oauth_refusals.labels("locked_out").inc()
                raise OwnerLockedOut()
            attempts = self._recent_failures(owner.failed_attempts, owner.updated_at, now) + 1
            locked_until = None
            if attempts >= self.max_failed_attempts:
                locked_until = now + timedelta(seconds=self.lockout_seconds)
            await tx.oauth.save_owner_attempts(
                failed_attempts=attempts, locked_until=locked_until, at=now
            )
            stored_hash = owner.passphrase_hash
        ok = await asyncio.to_thread(verify_passphrase, passphrase, stored_hash)
        if not ok:
            METRICS.oauth_refusals.labels("wrong_passphrase").inc()
            await asyncio.sleep(self.failure_delay_seconds)  # throttle guessing
            if locked_until is not None:
                logger.warning(
                    "owner passphrase: locked for %s s after wrong passphrases",
                    self.lockout_seconds,
                )
                raise OwnerLockedOut()
            raise ConsentRefused()
        async with self._store.write() as tx:
            await tx.oauth.save_owner_attempts(failed_attempts=0, locked_until=None, at=now)

    def _recent_failures(self, failures: int, last_change: datetime, now: datetime) -> int:
        """Wrong passphrases still counted: failures decay. They count only within a window of
        ``lockout_seconds`` from the last one, and a lockout that has run out ends for good (a
        single wrong guess after it does not lock again; it takes the full count anew)."""
        if failures >= self.max_failed_attempts:
            return 0  # the lockout these earned is over (check() saw locked_until)
        if now - last_change >= timedelta(seconds=self.lockout_seconds):
            return 0
        return failures

    async def set_passphrase(self, passphrase: str) -> None:
        hashed = await asyncio.to_thread(hash_passphrase, passphrase)
        async with self._store.write() as tx:
            await tx.oauth.save_owner_passphrase(passphrase_hash=hashed, at=self._now())
            # A new passphrase ends every console session signed in with the old one.
            await tx.console_end_all_sessions()
