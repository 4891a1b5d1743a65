"""What a new user of the command line meets: a follower that remembers where it stopped, the
revisions it can migrate to, ids that are too short, empty listings; real processes and files."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

EXE = str(Path(sys.executable).with_name("nexus-bridge"))


def run(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args],
        env=subprocess_env(url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
async def test_a_stopped_follower_keeps_its_place_so_nothing_is_shown_twice(
    migrated_sqlite_url: str, sig: signal.Signals, code: int
) -> None:
    follower = await asyncio.create_subprocess_exec(
        EXE,
        "updates",
        "--follow",
        "--json",
        env=subprocess_env(migrated_sqlite_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert follower.stdout is not None
    try:
        ids = []
        for text in ("first task", "second task"):
            sent = await asyncio.to_thread(run, migrated_sqlite_url, "send", text, "--json")
            assert sent.returncode == 0, sent.stderr
            ids.append(json.loads(sent.stdout)["id"])
        seen = [
            json.loads(await asyncio.wait_for(follower.stdout.readline(), timeout=20))["message_id"]
            for _ in ids
        ]
        assert seen == ids
    finally:
        follower.send_signal(sig)
        _out, err = await asyncio.wait_for(follower.communicate(), timeout=20)
    assert follower.returncode == code, err
    assert b"Traceback" not in err

    again = await asyncio.to_thread(run, migrated_sqlite_url, "updates")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "no new updates\n"


def test_db_history_lists_the_revisions_marking_the_head_and_the_database(
    migrated_sqlite_url: str, sqlite_url: str
) -> None:
    result = run(migrated_sqlite_url, "db", "history")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("0001  Initial schema")
    assert lines[-1].endswith("  (head, current)")
    assert all(line[:4].isdigit() for line in lines)

    run(migrated_sqlite_url, "db", "downgrade", "0001")
    lines = run(migrated_sqlite_url, "db", "history").stdout.splitlines()
    assert lines[0].endswith("  (current)")
    assert lines[-1].endswith("  (head)")

    unknown = run(migrated_sqlite_url, "db", "downgrade", "nonsense")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1].endswith("see: nexus-bridge db history")


def test_db_history_never_creates_a_database(tmp_path: Path) -> None:
    database = tmp_path / "none" / "bridge.db"
    result = run(f"sqlite+aiosqlite:///{database}", "db", "history")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[-1]
        == "the database is at no revision yet: nexus-bridge db upgrade"
    )
    assert not database.exists()


@pytest.mark.parametrize("command", ["show", "cancel"])
def test_an_id_shorter_than_8_characters_asks_for_more(
    migrated_sqlite_url: str, command: str
) -> None:
    task = json.loads(run(migrated_sqlite_url, "send", "a task", "--json").stdout)["id"]
    result = run(migrated_sqlite_url, command, task[:5])
    assert result.returncode == 2
    assert result.stderr == (
        f"nexus-bridge: error: id {task[:5]!r} is too short: give at least 8 characters of the "
        "task id (nexus-bridge list shows them)\n"
    )
    assert run(migrated_sqlite_url, "show", task[:8]).returncode == 0


def test_empty_listings_say_so(migrated_sqlite_url: str) -> None:
    expected = {
        ("list",): "no tasks\n",
        ("list", "--status", "complete", "--target", "homelab"): (
            "no tasks with status complete and target homelab\n"
        ),
        ("updates",): "no new updates\n",
        ("auth", "clients"): "no clients registered\n",
        ("auth", "tokens"): "no tokens issued\n",
    }
    for args, output in expected.items():
        result = run(migrated_sqlite_url, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout == output, args
    listed = run(migrated_sqlite_url, "list", "--json")
    assert json.loads(listed.stdout) == {"messages": [], "next_before": None}
    assert run(migrated_sqlite_url, "updates", "--json").stdout == ""
