"""Soak: the Telegram transport under faults for a few minutes (``make soak``, not ``make test``).

Two real ``nexus-bridge serve`` processes share one SQLite file and one fake Bot API server
(``tests/fake_telegram.py``, in this process). Tasks are queued at a steady rate; a simulated
agent answers every task it sees in the chat with ``[Done] #<tag>``, as a Telegram reply to it
(the tag too, as the agent prompt suggests: the first copy of a post doubled by a ``kill -9`` is
one the bridge never journaled, so a bare reply to it would join no task). Meanwhile, round after
round, one fault at a time:

* a 429 flood on the chat (``retry_after``), a burst of 502s, dropped connections;
* a hung ``getUpdates``;
* ``kill -9`` of the process that polls, restarted at once (as systemd would);
* SIGSTOP of the process that polls for longer than its lease, then SIGCONT.

Then the faults stop, and the bridge gets a bounded time to catch up. Counted at the end:

* lost: a queued task that never reached the chat;
* stuck: a task that reached the chat but is not complete (its reply was lost or never acted
  on), or whose delivery is still pending;
* duplicated: a task posted more than once, split into those explained by a ``kill -9`` within
  a second of the first copy (the documented window: Telegram accepted it, the journal commit
  died with the process) and the rest.

Exits 1 on any lost or stuck task. ``--seconds`` bounds the fault phase (default 180).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# The fake Bot API server lives with the tests: import it from the repository root.
sys.path.append(str(Path(__file__).resolve().parents[1]))

from nexus_bridge.db import migrate
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.errors import DatabaseBusy
from nexus_bridge.protocol import short_id
from nexus_bridge.queue import QueueService
from tests.fake_telegram import FakeTelegram, Fault, running_fake_telegram

NEXUS_BRIDGE = str(Path(sys.executable).with_name("nexus-bridge"))
CHAT = -100777
AGENT = 4242
LEASE_SECONDS = 3.0
ROUND_SECONDS = 4.0
TASKS_PER_SECOND = 4.0
DRAIN_SECONDS = 90.0  # after the faults stop, the bound on catching up
FAULTS = ("flood", "5xx", "drops", "hung poll", "kill -9", "sigstop", "calm")


def bridge_env(fake: FakeTelegram, database_url: str, directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_BRIDGE_")}
    env.update(
        {
            "NEXUS_BRIDGE_DATABASE_URL": database_url,
            "NEXUS_BRIDGE_AGENT_TOKEN_FILE": str(directory / "agent-token"),
            "NEXUS_BRIDGE_LOG_LEVEL": "WARNING",
            "NEXUS_BRIDGE_TELEGRAM_BOT_TOKEN": fake.token,
            "NEXUS_BRIDGE_TELEGRAM_CHAT_ID": str(CHAT),
            "NEXUS_BRIDGE_TELEGRAM_AGENT_IDS": str(AGENT),
            "NEXUS_BRIDGE_TELEGRAM_BASE_URL": fake.base_url,
            "NEXUS_BRIDGE_TELEGRAM_POLL_TIMEOUT": "1",
            "NEXUS_BRIDGE_TELEGRAM_LEASE_SECONDS": str(LEASE_SECONDS),
            "NEXUS_BRIDGE_TELEGRAM_REQUEST_TIMEOUT": "2",
            "NEXUS_BRIDGE_TELEGRAM_MIN_SEND_INTERVAL": "0.05",
            "NEXUS_BRIDGE_TELEGRAM_RETRY_BASE_SECONDS": "0.2",
            "NEXUS_BRIDGE_TELEGRAM_RETRY_MAX_SECONDS": "3",
        }
    )
    return env


@dataclass
class Soak:
    fake: FakeTelegram
    database_url: str
    env: dict[str, str]
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    queued: dict[str, str] = field(default_factory=dict)  # task id -> its text
    kills: list[float] = field(default_factory=list)  # time.monotonic() of each kill -9
    faults: Counter[str] = field(default_factory=Counter)
    busy_retries: int = 0

    async def start(self) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            NEXUS_BRIDGE,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.processes.append(proc)
        return proc

    def poller_pid(self) -> int | None:
        """The pid in the poller lease's holder id (``host:pid:...``), if the lease is live."""
        path = self.database_url.split("///", 1)[1]
        with contextlib.closing(sqlite3.connect(path, timeout=10)) as conn:
            row = conn.execute(
                "SELECT holder, expires_at > strftime('%Y-%m-%dT%H:%M:%f', 'now') "
                "FROM leases WHERE name = 'telegram-poller'"
            ).fetchone()
        if row is None or not row[1]:
            return None
        return int(row[0].split(":")[1])

    def poller(self) -> asyncio.subprocess.Process | None:
        pid = self.poller_pid()
        return next((p for p in self.processes if p.pid == pid and p.returncode is None), None)

    async def enqueue(self, queue: QueueService, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            text = f"soak task {n}"
            try:
                self.queued[(await queue.enqueue(text)).task.id] = text
                n += 1
            except DatabaseBusy:  # a process stopped inside a write: retry, as a client would
                self.busy_retries += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / TASKS_PER_SECOND)

    async def agent(self) -> None:
        """Answer each task posted to the chat once, with a reply to its message."""
        answered: set[str] = set()
        seen = 0
        while True:
            for message in self.fake.sent[seen:]:
                tag = message.text.split("]", 1)[0]
                if tag.startswith("[task ") and tag not in answered:
                    answered.add(tag)
                    # A reply to the message, with the tag too (as the agent prompt suggests):
                    # the first copy of a doubled post may be one the bridge never journaled.
                    self.fake.inject_message(
                        CHAT,
                        AGENT,
                        f"[Done] #{tag.removeprefix('[task ')} ok",
                        reply_to_message_id=message.message_id,
                    )
            seen = len(self.fake.sent)
            await asyncio.sleep(0.05)

    async def fault(self, name: str) -> None:
        self.faults[name] += 1
        fake = self.fake
        if name == "flood":
            fake.rate_limit_chat(CHAT, 2)
            await asyncio.sleep(ROUND_SECONDS)
        elif name in ("5xx", "drops"):
            fake.outage = Fault.server_error(502) if name == "5xx" else Fault.dropped()
            await asyncio.sleep(1.5)
            fake.outage = None
            await asyncio.sleep(ROUND_SECONDS - 1.5)
        elif name == "hung poll":
            fake.fail_next("getUpdates", Fault.timeout(10))
            await asyncio.sleep(ROUND_SECONDS)
        elif name == "kill -9":
            victim = self.poller()
            if victim is not None:
                self.kills.append(time.monotonic())
                victim.kill()
                await victim.wait()
                await self.start()  # at once, as systemd would
            await asyncio.sleep(ROUND_SECONDS)
        elif name == "sigstop":
            victim = self.poller()
            if victim is not None:
                victim.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(LEASE_SECONDS + 1.5)
                finally:
                    victim.send_signal(signal.SIGCONT)
            await asyncio.sleep(ROUND_SECONDS)
        else:
            await asyncio.sleep(ROUND_SECONDS)


async def main(seconds: float) -> int:
    with tempfile.TemporaryDirectory(prefix="nexus-soak-") as tmp:
        directory = Path(tmp)
        database_url = f"sqlite+aiosqlite:///{directory / 'soak.db'}"
        await asyncio.to_thread(migrate.upgrade, database_url)  # alembic runs its own loop
        async with running_fake_telegram() as fake:
            # The fake logs a traceback for each connection it drops on purpose: not news here.
            logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
            soak = Soak(fake, database_url, bridge_env(fake, database_url, directory))
            store = Store(create_engine(database_url))
            queue = QueueService(store)
            stop = asyncio.Event()
            agent = asyncio.create_task(soak.agent())
            try:
                await soak.start()
                await soak.start()
                enqueuer = asyncio.create_task(soak.enqueue(queue, stop))
                end = time.monotonic() + seconds
                round_no = 0
                while time.monotonic() < end:
                    name = FAULTS[round_no % len(FAULTS)]
                    print(f"soak: {time.monotonic() - end + seconds:5.0f}s  {name}", flush=True)
                    await soak.fault(name)
                    round_no += 1
                stop.set()
                await enqueuer
                fake.outage = None
                fake.rate_limited.clear()
                print(f"soak: faults over; {len(soak.queued)} tasks queued; draining", flush=True)
                drained = time.monotonic() + DRAIN_SECONDS
                while time.monotonic() < drained:
                    counts = (await queue.status()).by_status
                    if sum(n for s, n in counts.items() if not s.is_terminal) == 0:
                        break
                    await asyncio.sleep(0.5)
                details = {i: await queue.get(i) for i in soak.queued}
                path = database_url.split("///", 1)[1]
                with contextlib.closing(sqlite3.connect(path)) as conn:
                    unlinked, unprocessed = conn.execute(
                        "SELECT (SELECT count(*) FROM updates WHERE kind = 'agent' "
                        "AND task_id IS NULL), (SELECT count(*) FROM telegram_messages "
                        "WHERE direction = 'in' AND processed_at IS NULL)"
                    ).fetchone()
            finally:
                agent.cancel()
                for proc in soak.processes:
                    if proc.returncode is None:
                        with contextlib.suppress(ProcessLookupError):
                            proc.send_signal(signal.SIGCONT)
                            proc.kill()
                        await proc.wait()
                await store.dispose()

            copies: dict[str, list[float]] = {}
            for message in fake.sent:
                tag = message.text.split("]", 1)[0].removeprefix("[task ")
                copies.setdefault(tag, []).append(message.at)
            lost = [i for i in soak.queued if short_id(i) not in copies]
            stuck = [
                i
                for i, detail in details.items()
                if short_id(i) in copies and detail.task.status.value != "complete"
            ]
            doubled = {tag: at for tag, at in copies.items() if len(at) > 1}
            by_kill = [
                tag for tag, at in doubled.items() if any(0 <= k - at[0] < 1.0 for k in soak.kills)
            ]
            print()
            print(
                f"soak: {seconds:.0f}s of faults {dict(soak.faults)}; "
                f"{len(soak.queued)} tasks, {len(fake.sent)} messages posted, "
                f"{len(fake.refused)} sends refused with 429, "
                f"{soak.busy_retries} enqueues retried on a busy database"
            )
            print(
                f"soak: lost {len(lost)}, stuck {len(stuck)}, duplicated {len(doubled)} "
                f"({len(by_kill)} within 1 s before a kill -9, "
                f"{len(doubled) - len(by_kill)} otherwise)"
            )
            print(
                f"soak: {unlinked} agent replies linked to no task, "
                f"{unprocessed} journaled replies never acted on"
            )
            for task_id in (lost + stuck)[:10]:
                detail = details[task_id]
                delivery = detail.delivery
                print(
                    f"  {task_id[:8]} {detail.task.status.value} "
                    f"delivery={delivery.state.value if delivery else None} "
                    f"error={delivery.last_error if delivery else None}"
                )
            return 1 if lost or stuck else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the fault phase")
    sys.exit(asyncio.run(main(parser.parse_args().seconds)))
