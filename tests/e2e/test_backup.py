"""``nexus-bridge backup`` and ``restore``: a live copy while a real server writes, a restore
that refuses while a server runs and leaves a database the server starts on."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import stat
import subprocess
import uuid
from pathlib import Path

from mcp import Client

from nexus_bridge.db import migrate
from tests.conftest import DEADLINE_SECONDS, subprocess_env, wait_for
from tests.e2e.test_cli import EXE, run
from tests.e2e.test_process import read_database, serve_process, sqlite_path

SENDERS = 3
MAX_SENDS_PER_SENDER = 2_000  # a bound, so a sender can never loop forever
ACKS_BEFORE_BACKUP = 30


async def run_async(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as a subprocess, without blocking the event loop the senders run on."""
    proc = await asyncio.create_subprocess_exec(
        EXE,
        *args,
        env=subprocess_env(url),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


def task_ids(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {str(row[0]) for row in conn.execute("SELECT id FROM tasks")}


async def test_backup_during_a_stream_of_sends_then_restore_keeps_every_acknowledged_task(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    url = migrated_sqlite_url
    database = sqlite_path(url)
    backup = tmp_path / "backups" / "bridge-backup.db"
    backup.parent.mkdir()
    run_id = uuid.uuid4().hex[:8]
    acked: list[str] = []
    stop = asyncio.Event()

    async with serve_process(url) as server:
        assert server.url is not None
        server_url = server.url

        async def sender(n: int) -> None:
            async with Client(server_url) as client:
                for i in range(MAX_SENDS_PER_SENDER):
                    if stop.is_set():
                        return
                    result = await client.call_tool(
                        "send_message", {"message": f"backup test {run_id} {n} {i}"}
                    )
                    assert not result.is_error, result
                    assert result.structured_content is not None
                    acked.append(result.structured_content["id"])

        senders = [asyncio.create_task(sender(n)) for n in range(SENDERS)]
        try:
            await wait_for(
                lambda: len(acked) >= ACKS_BEFORE_BACKUP or any(t.done() for t in senders),
                what=f"{ACKS_BEFORE_BACKUP} acknowledged sends",
            )
            assert not any(t.done() for t in senders), [t.exception() for t in senders]
            before_backup = set(acked)  # acknowledged before the backup started
            done = await run_async(url, "backup", str(backup))
            during = len(acked) - len(before_backup)
            assert not any(t.done() for t in senders)  # the server kept writing throughout
        finally:
            stop.set()
            await asyncio.wait_for(
                asyncio.gather(*senders, return_exceptions=True), timeout=DEADLINE_SECONDS
            )
        assert done.returncode == 0, done.stderr
        assert f"backed up {database} to {backup}" in done.stdout
        assert "integrity ok" in done.stdout
        assert f"schema {migrate.head_revisions()[0]} (current)" in done.stdout
        assert stat.S_IMODE(backup.stat().st_mode) == 0o600
        assert not list(backup.parent.glob(".*partial*"))  # no scratch file left behind
        integrity, _rows = read_database(backup)
        assert integrity == ["ok"]
        in_backup = task_ids(backup)
        assert before_backup <= in_backup
        assert in_backup <= set(acked)  # nothing made up

        # While the server runs, restore refuses and changes nothing.
        refused = await run_async(url, "restore", str(backup))
        assert refused.returncode == 2
        assert "a nexus-bridge server is running" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        server.proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0
    assert task_ids(database) == set(acked)
    print(f"{during} sends were acknowledged while the backup ran")

    restored = run(url, "restore", str(backup))
    assert f"restored {backup} to {database}" in restored.stdout
    aside = [
        p
        for p in database.parent.glob(f"{database.name}.replaced-*")
        if not p.name.endswith(("-wal", "-shm"))
    ]
    assert len(aside) == 1
    assert f"kept at {aside[0]}" in restored.stdout
    assert task_ids(aside[0]) == set(acked)  # the replaced database, whole
    assert task_ids(database) == in_backup
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert backup.exists()  # the backup itself is untouched

    # The server starts on the restored database and serves every task of the backup.
    async with serve_process(url) as server:
        assert server.url is not None
        async with Client(server.url) as client:
            for task_id in sorted(before_backup)[:10]:
                result = await client.call_tool("get_message", {"id": task_id})
                assert not result.is_error, result
            sent = await client.call_tool("send_message", {"message": "after the restore"})
            assert not sent.is_error, sent


def test_restore_moves_aside_a_stale_wal_and_upgrades_an_older_backup(
    sqlite_url: str, tmp_path: Path
) -> None:
    old = tmp_path / "old" / "bridge.db"
    old.parent.mkdir()
    old_url = f"sqlite+aiosqlite:///{old}"
    migrate.upgrade(old_url, "0005")
    backup = tmp_path / "old-backup.db"
    made = run(old_url, "backup", str(backup))
    assert "schema 0005 (older than this nexus-bridge's" in made.stdout

    migrate.upgrade(sqlite_url)
    database = sqlite_path(sqlite_url)
    # A write-ahead log left beside the database (a server killed mid-write): it must not be
    # read as the restored file's own.
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute(
        "INSERT INTO tasks (id, target, content, content_hash, status, urgent, created_at, "
        "updated_at) VALUES ('x', 'homelab', 'in the wal', 'h', 'pending', 0, "
        "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')"
    )
    conn.commit()
    try:
        restored = run(sqlite_url, "restore", str(backup))
        assert "schema 0005" in restored.stdout
    finally:
        conn.close()
    assert not database.with_name(database.name + "-wal").exists()
    assert task_ids(database) == set()
    (aside,) = [
        p
        for p in database.parent.glob(f"{database.name}.replaced-*")
        if not p.name.endswith(("-wal", "-shm"))
    ]
    assert task_ids(aside) == {"x"}  # the log was folded into the file kept aside
    with contextlib.closing(sqlite3.connect(database)) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert (revision,) == migrate.head_revisions()  # upgraded: the server starts on it
    assert "in the wal" not in run(sqlite_url, "list").stdout


def test_restore_refuses_a_file_that_is_not_a_backup_and_changes_nothing(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    run(migrated_sqlite_url, "send", "keep me")
    database = sqlite_path(migrated_sqlite_url)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    empty_db = tmp_path / "empty.db"
    sqlite3.connect(empty_db).close()
    for path, needle in ((junk, "not a SQLite database"), (empty_db, "not a nexus-bridge")):
        result = run(migrated_sqlite_url, "restore", str(path), ok=False)
        assert result.returncode == 2
        assert needle in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert len(task_ids(database)) == 1
    assert not list(database.parent.glob("*.replaced-*"))


def test_backup_refuses_to_overwrite_without_force(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    target = tmp_path / "b.db"
    run(migrated_sqlite_url, "backup", str(target))
    again = run(migrated_sqlite_url, "backup", str(target), ok=False)
    assert again.returncode == 2
    assert "--force" in again.stderr
    run(migrated_sqlite_url, "backup", "--force", str(target))


def test_backup_to_a_new_directory_named_with_a_slash_makes_it_and_dates_each_copy(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    """As the docs' daily job does on a fresh machine: the first run must not write a file
    named like the directory (the second run would then refuse)."""
    folder = tmp_path / "backups" / "nexus-bridge"
    first = run(migrated_sqlite_url, "backup", f"{folder}/")
    assert folder.is_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert f"made the directory {folder}" in first.stdout
    copies = list(folder.iterdir())
    assert len(copies) == 1
    assert copies[0].name.startswith(sqlite_path(migrated_sqlite_url).stem + "-")
    (folder / "not-a-folder").write_text("x")
    refused = run(migrated_sqlite_url, "backup", f"{folder}/not-a-folder/", ok=False)
    assert refused.returncode == 2
    assert "is not a directory" in refused.stderr
    beneath = run(migrated_sqlite_url, "backup", f"{folder}/not-a-folder/deeper/", ok=False)
    assert beneath.returncode == 2
    assert beneath.stderr.startswith("nexus-bridge: error: cannot make the directory ")
    assert len(beneath.stderr.splitlines()) == 1


def test_backup_and_restore_on_postgresql_name_pg_dump_and_pg_restore() -> None:
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    for command, tool in (("backup", "pg_dump"), ("restore", "pg_restore")):
        result = subprocess.run(
            [EXE, command, "/tmp/whatever.db"],
            env=subprocess_env(url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert tool in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
