"""Wrong passphrases from one address: counted, locked at the limit, decayed like the owner
row's (older than the window: forgotten; a lockout that ran out: a fresh start)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from nexus_bridge.owner import _Guesses, known_client_address

WINDOW = timedelta(minutes=15)
START = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_the_limit_locks_for_the_window_and_then_counting_starts_anew() -> None:
    guesses = _Guesses()
    assert not guesses.count(START, 3, WINDOW)
    assert not guesses.count(START + timedelta(minutes=1), 3, WINDOW)
    assert guesses.count(START + timedelta(minutes=2), 3, WINDOW)  # the third locks
    assert guesses.locked(START + timedelta(minutes=16))
    after = START + timedelta(minutes=17, seconds=1)
    assert not guesses.locked(after)
    assert not guesses.count(after, 3, WINDOW)  # one wrong guess after it does not lock again
    assert guesses.failures == 1


def test_guesses_older_than_the_window_are_forgotten() -> None:
    guesses = _Guesses()
    guesses.count(START, 3, WINDOW)
    guesses.count(START + timedelta(minutes=1), 3, WINDOW)
    assert not guesses.count(START + timedelta(minutes=17), 3, WINDOW)
    assert guesses.failures == 1
    guesses.clear()
    assert (guesses.failures, guesses.locked_until) == (0, None)


def test_only_an_address_that_tells_clients_apart_is_known() -> None:
    assert known_client_address("203.0.113.7") == "203.0.113.7"
    # One client can pick any address of its IPv6 /64: the /64 is the client.
    assert known_client_address("2001:db8::1") == "2001:db8::/64"
    assert known_client_address("2001:db8::ffff:1234") == "2001:db8::/64"
    assert known_client_address("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert known_client_address("::ffff:203.0.113.7") == "203.0.113.7"  # IPv4 on a v6 socket
    for unknown in ("127.0.0.1", "::1", None, "not an address", ""):
        assert known_client_address(unknown) is None


def test_behind_a_proxy_uvicorn_does_not_trust_no_client_is_known() -> None:
    """uvicorn takes X-Forwarded-For only from a proxy it trusts; from any other, its client
    address is the proxy's, shared by every client behind it (a container network's proxy)."""
    assert known_client_address("203.0.113.7", "203.0.113.7") == "203.0.113.7"
    assert known_client_address("203.0.113.7", "10.1.1.1, 203.0.113.7") == "203.0.113.7"
    assert known_client_address("203.0.113.7", "203.0.113.7:5555") == "203.0.113.7"
    assert known_client_address("2001:db8::5", "[2001:db8::5]:443") == "2001:db8::/64"
    assert known_client_address("172.18.0.3", "203.0.113.7") is None  # the proxy, untrusted


@given(
    address=st.one_of(st.none(), st.text(max_size=60)),
    forwarded=st.one_of(st.none(), st.text(max_size=300)),
)
def test_any_address_and_forwarded_header_give_a_client_or_none_never_an_error(
    address: str | None, forwarded: str | None
) -> None:
    """Both come from the network (the header as a client or proxy wrote it)."""
    known = known_client_address(address, forwarded)
    assert known is None or (isinstance(known, str) and known)


@given(a=st.integers(0, 2**32 - 1), others=st.lists(st.ip_addresses(v=4), max_size=5))
def test_an_ipv4_client_named_anywhere_in_the_header_is_known(a: int, others: list[Any]) -> None:
    assume(not ipaddress.IPv4Address(a).is_loopback)
    address = str(ipaddress.IPv4Address(a))
    chain = ", ".join([*map(str, others), address])
    assert known_client_address(address, chain) == address
