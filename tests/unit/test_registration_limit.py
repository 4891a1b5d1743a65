"""The per-address limit on OAuth registrations: an hour's window, loopback exempt, bounded."""

from __future__ import annotations

from nexus_bridge.app import RegistrationLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_gets_its_hours_registrations_then_none_until_the_first_is_an_hour_old() -> None:
    clock = Clock()
    limiter = RegistrationLimiter(3, clock=clock)
    for _ in range(3):
        assert limiter.allow("203.0.113.7")
        clock.now += 60
    assert not limiter.allow("203.0.113.7")
    assert limiter.allow("198.51.100.9")  # another address is not held back
    clock.now = 1_000.0 + 3600  # the first registration is an hour old
    assert limiter.allow("203.0.113.7")
    assert not limiter.allow("203.0.113.7")


def test_loopback_and_unknown_clients_are_never_counted() -> None:
    limiter = RegistrationLimiter(1, clock=Clock())
    for address in ("127.0.0.1", "::1", "127.0.0.5", None):
        assert all(limiter.allow(address) for _ in range(5))


def test_the_addresses_remembered_are_bounded_oldest_forgotten_first() -> None:
    limiter = RegistrationLimiter(1, clock=Clock())
    first = "10.0.0.1"
    assert limiter.allow(first)
    for n in range(RegistrationLimiter.MAX_ADDRESSES):
        assert limiter.allow(f"10.1.{n // 250}.{n % 250}")
    assert limiter.allow(first)  # forgotten: the flood of new addresses pushed it out
    assert len(limiter) == RegistrationLimiter.MAX_ADDRESSES


def test_addresses_of_one_ipv6_64_count_as_one_client() -> None:
    limiter = RegistrationLimiter(2, clock=Clock())
    assert limiter.allow("2001:db8::1")
    assert limiter.allow("2001:db8::2")
    assert not limiter.allow("2001:db8::dead:beef")  # the same /64: the same client
    assert limiter.allow("2001:db8:0:1::1")  # the next /64 is another


def test_behind_an_untrusted_proxy_registrations_are_not_counted_by_address() -> None:
    """Every client would share the proxy's address: ten registrations an hour for everyone."""
    limiter = RegistrationLimiter(1, clock=Clock())
    assert all(limiter.allow("172.18.0.3", "203.0.113.7") for _ in range(5))
    assert len(limiter) == 0
