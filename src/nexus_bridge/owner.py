"""The owner's passphrase: its hash (scrypt), and the gate every page that asks for it goes
through (the OAuth consent page and the console), with one count of wrong guesses and one
lockout for all of them, per client address where the address is known.

It needs neither the MCP SDK nor the OAuth server: the console works without ``PUBLIC_URL``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
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


# Wrong passphrases from all known addresses together that lock every known address out, as a
# multiple of the per-address limit: guessing from many addresses is bounded too.
ALL_ADDRESSES_FACTOR: Final = 10
IPV6_CLIENT_PREFIX: Final = 64  # one client's share of IPv6: a /64
MAX_ADDRESSES: Final = 10_000  # addresses whose wrong guesses are remembered; oldest forgotten


@dataclass(slots=True)
class _Guesses:
    """Wrong passphrases from one source, kept in memory: they decay as the owner row's do."""

    failures: int = 0
    last: datetime | None = None
    locked_until: datetime | None = None

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now

    def count(self, now: datetime, limit: int, window: timedelta) -> bool:
        """Count one attempt before it is checked; True if it reaches ``limit`` (locked)."""
        if self.failures >= limit or (self.last is not None and now - self.last >= window):
            self.failures = 0  # a lockout that ran out, or guesses older than the window
        self.failures += 1
        self.last = now
        if self.failures >= limit:
            self.locked_until = now + window
            return True
        return False

    def clear(self) -> None:
        self.failures, self.last, self.locked_until = 0, None, None


def known_client_address(address: str | None) -> str | None:
    """The client's address if it tells one client from another: not loopback (a proxy on this
    machine that names no client, or the owner on this machine), and an address at all. An
    IPv6 address stands for its /64, which one client holds whole (and can pick any address
    of): ``2001:db8::/64``."""
    if address is None:
        return None
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return None
    if parsed.is_loopback:
        return None
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_CLIENT_PREFIX}", strict=False))
    return str(parsed)


class OwnerGate:
    """The owner's passphrase and its wrong-guess lockout, one for every page that asks for it
    (the consent page and the console).

    Wrong guesses from a known client address (one the proxy names in X-Forwarded-For, or a
    direct one) lock that address out, and ``ALL_ADDRESSES_FACTOR`` times as many from all of
    them lock every known address out, in this process's memory: a stranger cannot lock the
    owner out from elsewhere. Guesses with no known address (loopback) count against the owner
    row, shared by every process, as one source.
    """

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
        self._by_address: collections.OrderedDict[str, _Guesses] = collections.OrderedDict()
        self._all_addresses = _Guesses()

    async def has_passphrase(self) -> bool:
        async with self._store.read() as tx:
            owner = await tx.oauth.owner()
        return owner is not None and bool(owner.passphrase_hash)

    async def check(self, passphrase: str, address: str | None = None) -> None:
        """Pass if ``passphrase`` is the owner's; a success clears the count of wrong ones.
        ``address`` is the client's (uvicorn's, after the proxy's X-Forwarded-For).

        Raises:
            NoPassphrase: none has been set.
            OwnerLockedOut: too many wrong attempts lately (from this address, if known).
            ConsentRefused: wrong passphrase (the page never says more).
        """
        known = known_client_address(address)
        if known is not None:
            await self._check_from(known, passphrase)
            return
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

    async def _check_from(self, address: str, passphrase: str) -> None:
        """:meth:`check` for a known address: its own count, and the count of all of them."""
        now = self._now()
        async with self._store.read() as tx:
            owner = await tx.oauth.owner()
        if owner is None or not owner.passphrase_hash:
            raise NoPassphrase()
        guesses = self._by_address.pop(address, None) or _Guesses()
        self._by_address[address] = guesses  # now the newest
        while len(self._by_address) > MAX_ADDRESSES:
            self._by_address.popitem(last=False)
        if guesses.locked(now) or self._all_addresses.locked(now):
            METRICS.oauth_refusals.labels("locked_out").inc()
            raise OwnerLockedOut()
        # Counted before the check, with no await in between: parallel guesses cannot all slip
        # in under the limit.
        window = timedelta(seconds=self.lockout_seconds)
        locked = guesses.count(now, self.max_failed_attempts, window)
        limit_all = self.max_failed_attempts * ALL_ADDRESSES_FACTOR
        locked = self._all_addresses.count(now, limit_all, window) or locked
        ok = await asyncio.to_thread(verify_passphrase, passphrase, owner.passphrase_hash)
        if ok:
            guesses.clear()
            self._all_addresses.clear()
            return
        METRICS.oauth_refusals.labels("wrong_passphrase").inc()
        await asyncio.sleep(self.failure_delay_seconds)  # throttle guessing
        if locked:
            logger.warning(
                "owner passphrase: %s locked for %s s after wrong passphrases",
                "every address" if self._all_addresses.locked(now) else address,
                self.lockout_seconds,
            )
            raise OwnerLockedOut()
        raise ConsentRefused()

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
