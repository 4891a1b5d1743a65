"""The Telegram relay on real databases: how an agent's chat message finds its task (and never
another target's), and that reading it never holds the write lock."""

from __future__ import annotations

import pytest

from nexus_bridge.db.store import Store
from nexus_bridge.domain import TaskStatus, UpdateKind
from nexus_bridge.errors import TaskNotFound
from nexus_bridge.protocol import AgentMessage
from nexus_bridge.queue import QueueService
from nexus_bridge.relay import TelegramRelay


async def test_responding_to_matches_first_lines_without_loose_short_prefixes(
    queue: QueueService, relay: TelegramRelay
) -> None:
    short = (await queue.enqueue("Fix")).task
    long = (await queue.enqueue("Fix the DNS record for nexus\nand check TTLs")).task

    async def correlate(text: str, task_id: int) -> str | None:
        journal_id = await relay.journal_inbound(
            chat_id=-1,
            telegram_message_id=task_id,
            from_id=7,
            text=text,
            reply_to_telegram_id=None,
            accepted=True,
        )
        assert journal_id is not None
        return (await relay.process_inbound(journal_id, target="homelab")).task_id

    # "Fix t" is too short to claim the long task by prefix, and is not "Fix" exactly (and no
    # task is in progress yet to fall back on).
    assert await correlate("[Responding to: Fix t]", 1) is None
    assert await correlate("[Responding to: Fix the DNS record]", 2) == long.id
    assert await correlate("[Responding to: fix]", 3) == short.id


# --- an agent touches only its own target's tasks ------------------------------------------------

HOMELAB_CHAT = -1


class AgentChat:
    """The homelab agent's chat: each message is journaled, then processed for ``homelab``."""

    def __init__(self, store: Store, queue: QueueService) -> None:
        self.relay = TelegramRelay(store, queue)
        self.next_message_id = 100

    async def says(self, text: str, *, reply_to: int | None = None) -> str | None:
        self.next_message_id += 1
        journal_id = await self.relay.journal_inbound(
            chat_id=HOMELAB_CHAT,
            telegram_message_id=self.next_message_id,
            from_id=7,
            text=text,
            reply_to_telegram_id=reply_to,
            accepted=True,
        )
        assert journal_id is not None
        return (await self.relay.process_inbound(journal_id, target="homelab")).task_id


def three_targets(store: Store) -> QueueService:
    from nexus_bridge.domain import TargetPolicy

    return QueueService(
        store,
        targets=[
            TargetPolicy("homelab"),
            TargetPolicy("lab2"),
            TargetPolicy("felt", transport="agent"),
        ],
    )


async def test_an_agent_message_never_moves_another_targets_task_on_any_path(
    store: Store,
) -> None:
    queue = three_targets(store)
    felt = (await queue.enqueue("Re-index the felt catalogue", "felt")).task
    assert await queue.claim_next("felt") is not None
    lab2 = (await queue.enqueue("Rotate the lab2 backups", "lab2")).task
    await queue.agent_report("lab2", lab2.id, status=TaskStatus.IN_PROGRESS)
    # A chat message linked to felt's task (as the tag path used to link one): replying to it.
    async with store.write() as tx:
        await tx.journal_telegram_message(
            chat_id=HOMELAB_CHAT,
            telegram_message_id=50,
            direction="in",
            accepted=True,
            at=queue.now(),
            task_id=felt.id,
            text="[Working] on it",
        )
    chat = AgentChat(store, queue)

    for message in (
        f"[Done] #{felt.id[:8]} finished",
        f"[task {felt.id[:8]}] [Error] failed",
        f"[Done] #{lab2.id[:8]}",
        f"[Error] [TASK {lab2.id[:8].upper()}]",
        "[Responding to: Rotate the lab2 backups]",
        "[Done] all good",  # no link at all: lab2's task in progress is not homelab's
    ):
        assert await chat.says(message) is None, message
    assert await chat.says("[Done] replied", reply_to=50) is None

    assert (await queue.get(felt.id)).task.status is TaskStatus.ACKNOWLEDGED
    assert (await queue.get(lab2.id)).task.status is TaskStatus.IN_PROGRESS
    for task in (felt, lab2):
        updates = (await queue.get(task.id, recent=50)).recent_updates
        assert [u for u in updates if u.kind is UpdateKind.AGENT] == []

    # The same paths still find homelab's own task.
    own = (await queue.enqueue("Rotate the homelab backups", "homelab")).task
    assert await chat.says(f"[Received] #{own.id[:8]}") == own.id
    assert await chat.says("[Responding to: Rotate the homelab backups]") == own.id
    assert await chat.says("[Step 1] untagged") == own.id
    assert (await queue.get(own.id)).task.status is TaskStatus.IN_PROGRESS


async def insert_twins(store: Store, queue: QueueService, ids: dict[str, str]) -> None:
    """One pending task per target, with the ids given (sharing their first 8 characters)."""
    from nexus_bridge.db.store import NewTask
    from nexus_bridge.domain import content_hash

    async with store.write() as tx:
        for target, task_id in ids.items():
            await tx.insert_task(
                NewTask(
                    id=task_id,
                    target=target,
                    content=f"{target} job",
                    content_hash=content_hash(f"{target} job"),
                    created_at=queue.now(),
                    urgent=False,
                )
            )


async def test_a_tag_shared_with_another_targets_task_still_finds_the_own_task(
    store: Store,
) -> None:
    queue = three_targets(store)
    ids = {"homelab": "0badc0de-0000-4000-8000-000000000001", "lab2": "0badc0de-ffff-4000-8000-0"}
    await insert_twins(store, queue, ids)
    assert await AgentChat(store, queue).says("[Received] #0badc0de") == ids["homelab"]
    assert (await queue.get(ids["homelab"])).task.status is TaskStatus.ACKNOWLEDGED
    assert (await queue.get(ids["lab2"])).task.status is TaskStatus.PENDING


async def test_an_api_agent_finds_its_task_by_a_short_id_another_target_shares(
    store: Store,
) -> None:
    queue = three_targets(store)
    ids = {"felt": "0badc0de-0000-4000-8000-000000000001", "homelab": "0badc0de-ffff-4000-8000-0"}
    await insert_twins(store, queue, ids)
    claimed = await queue.claim_next("felt")
    assert claimed is not None
    assert claimed.id == ids["felt"]
    started = await queue.agent_report("felt", "0badc0de", status=TaskStatus.IN_PROGRESS)
    assert started.id == ids["felt"]
    for other in (ids["homelab"], "0badc0de-ffff"):  # by full id or a longer prefix
        with pytest.raises(TaskNotFound):
            await queue.agent_report("felt", other, text="mine now")
    assert (await queue.get(ids["homelab"])).task.status is TaskStatus.PENDING
    assert (await queue.get(ids["homelab"], recent=50)).recent_updates == []


async def test_an_agent_message_is_parsed_while_the_database_stays_writable(
    migrated_sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However long the grammar takes on some input, it must not hold the write lock meanwhile:
    # another process (the CLI, a second server) writes while a message is being read.
    import sqlite3

    import nexus_bridge.relay
    from nexus_bridge.db.engine import create_engine

    path = migrated_sqlite_url.removeprefix("sqlite+aiosqlite:///")
    real_parse = nexus_bridge.relay.parse_agent_message
    writable: list[bool] = []

    def parse_and_probe(text: str) -> AgentMessage:
        other = sqlite3.connect(path, timeout=0)  # no busy wait: a held write lock fails at once
        try:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            writable.append(True)
        except sqlite3.OperationalError:
            writable.append(False)
        finally:
            other.close()
        return real_parse(text)

    monkeypatch.setattr(nexus_bridge.relay, "parse_agent_message", parse_and_probe)
    store = Store(create_engine(migrated_sqlite_url))
    try:
        queue = QueueService(store)
        task = (await queue.enqueue("Rotate the backups")).task
        assert await AgentChat(store, queue).says(f"[Done] #{task.id[:8]}") == task.id
    finally:
        await store.dispose()
    assert writable == [True]
