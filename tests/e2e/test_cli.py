"""The nexus-bridge command, run as a user would: a real process on a real database file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

EXE = str(Path(sys.executable).with_name("nexus-bridge"))


def run(url: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [EXE, *args],
        env=subprocess_env(url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def test_a_task_sent_from_the_shell_can_be_followed_and_cancelled(
    migrated_sqlite_url: str,
) -> None:
    url = migrated_sqlite_url
    sent = json.loads(run(url, "send", "--json", "check the UPS battery").stdout)
    assert sent["queued"] is True
    task_id = sent["id"]

    dup = run(url, "send", "  check the UPS battery ").stdout
    assert f"duplicate of open task {task_id}" in dup

    status = json.loads(run(url, "status", "--json").stdout)
    assert status["pending"] == 1
    assert status["total_updates"] == 1

    listed = run(url, "list").stdout
    assert task_id in listed
    assert "check the UPS battery" in listed

    shown = json.loads(run(url, "show", "--json", task_id[:8]).stdout)
    assert shown["id"] == task_id
    assert shown["updates"][0]["content"] == "status: pending (queued)"

    first = run(url, "updates", "--json").stdout.splitlines()
    assert [json.loads(line)["message_id"] for line in first] == [task_id]
    assert run(url, "updates").stdout == ""  # the cli cursor moved on

    assert f"cancelled {task_id}" in run(url, "cancel", task_id, "--reason", "done by hand").stdout
    again = run(url, "cancel", task_id, ok=False)
    assert again.returncode != 0
    assert "already ended as cancelled" in again.stderr
    assert "Traceback" not in again.stderr

    history = run(url, "updates", "--message-id", task_id).stdout
    assert "pending → cancelled (done by hand)" in history


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("send", "   "), "message is empty"),
        (("show", "nope"), "no task with id 'nope'"),
        (("updates", "--since", "soon"), "since must be an ISO-8601 time"),
        (("list", "--status", "finished"), "unknown status 'finished'"),
        (("agent", "next", "--wait", "nan"), "argument --wait: must be a finite number"),
        (("agent", "next", "--wait", "inf"), "argument --wait: must be a finite number"),
        (("serve", "--port", "99999"), "argument --port: must be 0-65535"),
        (("updates", "--limit", "0"), "argument --limit: must be 1 or more"),
        (("updates", "--cursor", "²"), "cursor must be a next_cursor value"),
        (("updates", "--since", "0001-01-01T00:00:00+14:00"), "since is out of range"),
        (("show", "a" * 5_000), "id must be a task id"),
        (("cancel", "3f2a9c1e", "--reason", "r" * 2_000), "reason is 2000 characters"),
    ],
)
def test_errors_go_to_stderr_with_a_nonzero_exit(
    migrated_sqlite_url: str, args: tuple[str, ...], message: str
) -> None:
    result = run(migrated_sqlite_url, *args, ok=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_commands_refuse_an_unmigrated_database_and_say_what_to_run(sqlite_url: str) -> None:
    result = run(sqlite_url, "status", ok=False)
    assert result.returncode == 2
    assert "run: nexus-bridge db upgrade" in result.stderr


async def test_list_and_show_flag_stalled_tasks(migrated_sqlite_url: str) -> None:
    import asyncio

    from nexus_bridge.db.engine import create_engine
    from nexus_bridge.db.store import Store
    from nexus_bridge.domain import TargetPolicy
    from nexus_bridge.queue import QueueService

    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(store, targets=[TargetPolicy("homelab", transport="agent")])
    task = (await queue.enqueue("taken and forgotten")).task
    assert await queue.claim_next("homelab") is not None
    await store.dispose()

    def stalled_run(*args: str) -> dict[str, object]:
        result = subprocess.run(
            [EXE, *args, "--json"],
            env=subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_STALL_SECONDS="0.001"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    listed = await asyncio.to_thread(stalled_run, "list")
    (entry,) = listed["messages"]  # type: ignore[misc]
    assert entry["stalled"] is True
    assert entry["idle_seconds"] >= 0
    shown = await asyncio.to_thread(stalled_run, "show", task.id)
    assert shown["stalled"] is True
