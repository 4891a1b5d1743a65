"""The poller lease on real databases: epochs, takeover from a dead holder, timestamps, and a
doubled delivery detected by its epochs."""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from nexus_bridge.db.store import Store
from nexus_bridge.domain import OutboxKind
from nexus_bridge.queue import QueueService
from nexus_bridge.relay import Delivery, TelegramRelay

LEASE = "telegram-poller"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 19, 3, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(store: Store, clock: Clock) -> QueueService:
    return QueueService(store, clock=clock)


@pytest.fixture
def leases(store: Store, service: QueueService) -> TelegramRelay:
    return TelegramRelay(store, service)


async def test_the_epoch_grows_only_when_another_holder_takes_the_lease(
    leases: TelegramRelay, clock: Clock
) -> None:
    assert await leases.acquire_lease(LEASE, "a", seconds=10) == 1
    clock.advance(3)
    assert await leases.acquire_lease(LEASE, "a", seconds=10) == 1  # a renewal
    assert await leases.acquire_lease(LEASE, "b", seconds=10) is None  # a holds it
    clock.advance(11)
    assert await leases.acquire_lease(LEASE, "b", seconds=10) == 2  # a's expired
    await leases.release_lease(LEASE, "b")
    clock.advance(0.001)
    assert await leases.acquire_lease(LEASE, "c", seconds=10) == 3  # released, epoch kept


async def test_a_dead_holder_is_replaced_at_once_but_only_by_one_process(
    leases: TelegramRelay,
) -> None:
    assert await leases.acquire_lease(LEASE, "dead", seconds=60) == 1
    assert await leases.acquire_lease(LEASE, "b", seconds=60, replacing="dead") == 2
    # A second process that also saw "dead" is too late: the lease is b's now.
    assert await leases.acquire_lease(LEASE, "c", seconds=60, replacing="dead") is None
    lease = await leases.lease(LEASE)
    assert lease is not None
    assert (lease.holder, lease.epoch) == ("b", 2)


async def test_acquired_at_is_stored_as_iso_8601_utc_with_offset_on_takeover(
    leases: TelegramRelay, store: Store, clock: Clock
) -> None:
    await leases.acquire_lease(LEASE, "a", seconds=1)
    clock.advance(2)
    await leases.acquire_lease(LEASE, "b", seconds=1)  # takes it over: an UPDATE
    async with store.engine.connect() as conn:
        stored = (await conn.execute(text("SELECT acquired_at, expires_at FROM leases"))).one()
    assert ISO_UTC.match(stored.acquired_at), stored.acquired_at
    assert ISO_UTC.match(stored.expires_at), stored.expires_at
    lease = await leases.lease_row(LEASE)
    assert lease is not None
    assert lease.acquired_at == clock.now


async def test_a_part_posted_under_two_epochs_is_detected_and_logged(
    leases: TelegramRelay, service: QueueService, caplog: pytest.LogCaptureFixture
) -> None:
    task = (await service.enqueue("posted twice")).task
    delivery = await leases.next_delivery()
    assert delivery is not None
    assert delivery.item.kind is OutboxKind.TASK
    first = await leases.record_part_sent(
        delivery, part=0, chat_id=-1, telegram_message_id=10, lease_epoch=1
    )
    assert first == []
    stale = Delivery(item=delivery.item, task=task)  # the stalled holder's copy
    with caplog.at_level(logging.WARNING, logger="nexus_bridge.relay"):
        second = await leases.record_part_sent(
            stale, part=0, chat_id=-1, telegram_message_id=11, lease_epoch=2
        )
    assert second == [1]
    assert "was posted twice" in caplog.text
    assert "epoch 2" in caplog.text
    assert "already posted under epoch 1" in caplog.text


async def test_journaling_the_same_post_again_is_not_reported_as_posted_twice(
    leases: TelegramRelay, service: QueueService, caplog: pytest.LogCaptureFixture
) -> None:
    """The transport journals a post again when it could not tell whether the first try was
    committed (the database went away as it answered): the same Telegram message, not a
    second copy of the part."""
    await service.enqueue("journaled twice, posted once")
    delivery = await leases.next_delivery()
    assert delivery is not None
    first = await leases.record_part_sent(
        delivery, part=0, chat_id=-1, telegram_message_id=10, lease_epoch=1
    )
    with caplog.at_level(logging.WARNING, logger="nexus_bridge.relay"):
        again = await leases.record_part_sent(
            delivery, part=0, chat_id=-1, telegram_message_id=10, lease_epoch=1
        )
    assert (first, again) == ([], [])
    assert "posted twice" not in caplog.text


async def test_a_journaled_message_is_acted_on_once_however_often_it_is_processed(
    leases: TelegramRelay,
    service: QueueService,
) -> None:
    task = (await service.enqueue("process me once")).task
    journal_id = await leases.journal_inbound(
        chat_id=-1,
        telegram_message_id=5,
        from_id=1,
        text=f"[Done] #{task.id[:8]}",
        reply_to_telegram_id=None,
        accepted=True,
    )
    assert journal_id is not None
    first = await leases.process_inbound(journal_id, target=task.target)
    again = await leases.process_inbound(journal_id, target=task.target)
    assert (first.task_id, first.applied) == (task.id, True)
    assert (again.task_id, again.applied) == (None, False)
    detail = await service.get(task.id)
    assert [u.content for u in detail.recent_updates if u.kind.value == "agent"] == [
        f"[Done] #{task.id[:8]}"
    ]
    assert await leases.unprocessed_inbound() == []


async def test_a_reply_that_overtakes_the_journal_entry_of_its_post_waits_for_it(
    leases: TelegramRelay, service: QueueService, clock: Clock
) -> None:
    task = (await service.enqueue("answered very fast")).task
    delivery = await leases.next_delivery()
    assert delivery is not None
    # The agent's answer to Telegram message 10 is journaled before the post itself is.
    reply = await leases.journal_inbound(
        chat_id=-1,
        telegram_message_id=11,
        from_id=1,
        text="[Done] quick",
        reply_to_telegram_id=10,
        accepted=True,
    )
    assert reply is not None
    early = await leases.process_inbound(reply, target=task.target)
    assert early.deferred
    assert await leases.unprocessed_inbound() == [(reply, -1)]
    await leases.record_part_sent(delivery, part=0, chat_id=-1, telegram_message_id=10)
    later = await leases.process_inbound(reply, target=task.target)
    assert (later.task_id, later.applied) == (task.id, True)


async def test_a_reply_to_an_unknown_message_is_correlated_without_it_after_a_while(
    leases: TelegramRelay, service: QueueService, clock: Clock
) -> None:
    task = (await service.enqueue("tagged answer")).task
    reply = await leases.journal_inbound(
        chat_id=-1,
        telegram_message_id=11,
        from_id=1,
        text=f"[Done] #{task.id[:8]}",
        reply_to_telegram_id=3,  # a message from before the bridge: never journaled
        accepted=True,
    )
    assert reply is not None
    assert (await leases.process_inbound(reply, target=task.target)).deferred
    clock.advance(31)
    result = await leases.process_inbound(reply, target=task.target)
    assert (result.task_id, result.applied, result.deferred) == (task.id, True, False)
