"""The owner's passphrase: its hash (scrypt), and the gate every page that asks for it goes
through (the OAuth consent page and the console), with one count of wrong guesses and one
lockout for all of them (which a browser that entered the right passphrase before may pass).

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


# Addresses that entered the right passphrase, remembered in memory: during a lockout each may
# still try, with a count of its own, so a stranger's wrong guesses cannot keep the owner out.
TRUSTED_ADDRESS_DAYS: Final = 30
IPV6_CLIENT_PREFIX: Final = 64  # one client's share of IPv6: a /64
MAX_TRUSTED_ADDRESSES: Final = 100


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


def known_client_address(address: str | None, forwarded_for: str | None = None) -> str | None:
    """The client's address if it tells one client from another, else None.

    ``address`` is uvicorn's (which reads ``X-Forwarded-For`` only from a proxy it trusts:
    loopback by default); ``forwarded_for`` is the request's ``X-Forwarded-For``, if any. None
    for loopback (a proxy on this machine that names no client, or the owner on this machine),
    for a proxy uvicorn does not trust (the header names clients, but the address is not one of
    them: it is the proxy's, shared by every client behind it), and for no address at all. An
    IPv6 address stands for its /64, which one client holds whole (and can pick any address of):
    ``2001:db8::/64``."""
    if address is None:
        return None
    if forwarded_for is not None and address not in _forwarded_hosts(forwarded_for):
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


def _forwarded_hosts(forwarded_for: str) -> set[str]:
    """The hosts an ``X-Forwarded-For`` names, without ports or brackets."""
    hosts = set()
    for entry in forwarded_for.split(","):
        entry = entry.strip()
        if entry.startswith("["):
            entry = entry[1:].partition("]")[0]
        elif entry.count(":") == 1:
            entry = entry.partition(":")[0]
        hosts.add(entry)
    return hosts


class OwnerGate:
    """The owner's passphrase and its wrong-guess lockout, one for every page that asks for it
    (the consent page and the console): the attempts count against the same owner row, shared
    by every process, whatever address they come from (so guessing from many addresses is no
    faster).

    The one way past a lockout, besides ``auth set-passphrase``: an address that entered the
    right passphrase in the last ``TRUSTED_ADDRESS_DAYS`` days (the client's, as the proxy names
    it; remembered by this process) may still try, its own wrong guesses locking only itself.
    A stranger's wrong guesses lock the page for everyone else, not for the owner's browser.
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
        # Trusted address -> when it last entered the right passphrase, and its own guesses.
        self._trusted: collections.OrderedDict[str, tuple[datetime, _Guesses]] = (
            collections.OrderedDict()
        )

    async def has_passphrase(self) -> bool:
        async with self._store.read() as tx:
            owner = await tx.oauth.owner()
        return owner is not None and bool(owner.passphrase_hash)

    async def check(
        self, passphrase: str, address: str | None = None, forwarded_for: str | None = None
    ) -> None:
        """Pass if ``passphrase`` is the owner's; a success clears the count of wrong ones.
        ``address`` and ``forwarded_for``: the client's, as :func:`known_client_address` takes.

        Raises:
            NoPassphrase: none has been set.
            OwnerLockedOut: too many wrong attempts lately.
            ConsentRefused: wrong passphrase (the page never says more).
        """
        now = self._now()
        known = known_client_address(address, forwarded_for)
        # Count the attempt before checking it, in one serialised write: parallel guesses
        # cannot all slip in under the limit.
        async with self._store.write() as tx:
            owner = await tx.oauth.owner()
            if owner is None or not owner.passphrase_hash:
                raise NoPassphrase()
            stored_hash = owner.passphrase_hash
            trusted: _Guesses | None = None
            locked_until: datetime | None = None
            if owner.locked_until is not None and owner.locked_until > now:
                trusted = self._trusted_guesses(known, now)
                if trusted is None:
                    METRICS.oauth_refusals.labels("locked_out").inc()
                    raise OwnerLockedOut()
            else:
                attempts = self._recent_failures(owner.failed_attempts, owner.updated_at, now) + 1
                if attempts >= self.max_failed_attempts:
                    locked_until = now + timedelta(seconds=self.lockout_seconds)
                await tx.oauth.save_owner_attempts(
                    failed_attempts=attempts, locked_until=locked_until, at=now
                )
        if trusted is not None:
            await self._check_trusted(trusted, passphrase, stored_hash, now)
        else:
            await self._check_counted(passphrase, stored_hash, locked_until)
        async with self._store.write() as tx:
            await tx.oauth.save_owner_attempts(failed_attempts=0, locked_until=None, at=now)
        if known is not None:
            self._trust(known, now)

    async def _check_counted(
        self, passphrase: str, stored_hash: str, locked_until: datetime | None
    ) -> None:
        ok = await asyncio.to_thread(verify_passphrase, passphrase, stored_hash)
        if ok:
            return
        METRICS.oauth_refusals.labels("wrong_passphrase").inc()
        await asyncio.sleep(self.failure_delay_seconds)  # throttle guessing
        if locked_until is not None:
            logger.warning(
                "owner passphrase: locked for %s s after wrong passphrases", self.lockout_seconds
            )
            raise OwnerLockedOut()
        raise ConsentRefused()

    async def _check_trusted(
        self, guesses: _Guesses, passphrase: str, stored_hash: str, now: datetime
    ) -> None:
        """During a lockout, from an address that signed in before: its own count decides."""
        if guesses.locked(now):
            METRICS.oauth_refusals.labels("locked_out").inc()
            raise OwnerLockedOut()
        window = timedelta(seconds=self.lockout_seconds)
        locked = guesses.count(now, self.max_failed_attempts, window)  # before the check
        if await asyncio.to_thread(verify_passphrase, passphrase, stored_hash):
            guesses.clear()
            return
        METRICS.oauth_refusals.labels("wrong_passphrase").inc()
        await asyncio.sleep(self.failure_delay_seconds)
        if locked:
            raise OwnerLockedOut()
        raise ConsentRefused()

    def _trusted_guesses(self, address: str | None, now: datetime) -> _Guesses | None:
        """The guesses of ``address`` if it entered the right passphrase lately, else None."""
        entry = self._trusted.get(address) if address is not None else None
        if entry is None or now - entry[0] > timedelta(days=TRUSTED_ADDRESS_DAYS):
            return None
        return entry[1]

    def _trust(self, address: str, now: datetime) -> None:
        _since, guesses = self._trusted.pop(address, (now, _Guesses()))
        self._trusted[address] = (now, guesses)  # the newest
        while len(self._trusted) > MAX_TRUSTED_ADDRESSES:
            self._trusted.popitem(last=False)

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
