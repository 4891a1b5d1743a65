"""The operator's commands: ``backup``, ``restore``, ``prune`` and ``systemd-unit``.

Kept out of ``cli.py`` (which registers them with :func:`add_commands`): they work on the
database file and the service, not on the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from nexus_bridge import config
from nexus_bridge.config import Settings
from nexus_bridge.db import migrate
from nexus_bridge.db.engine import (
    DATA_DIRECTORY_MODE,
    DATABASE_FILE_MODE,
    ServerLock,
    sqlite_file,
)
from nexus_bridge.db.store import SqliteFileCheck, sqlite_check, sqlite_checkpoint, sqlite_copy
from nexus_bridge.domain import PruneReport
from nexus_bridge.errors import ConfigError

POSTGRES_BACKUP_HINT: Final = (
    "the database is PostgreSQL: {action} it with {tool} (e.g. {example}); "
    "nexus-bridge {action} works on SQLite files only"
)
# The companions SQLite keeps beside a database file; a restore moves them aside with it.
SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _sqlite_database(settings: Settings, action: str) -> Path:
    """The SQLite file of the configured database.

    Raises:
        ConfigError: PostgreSQL (use its own tools), or an in-memory database.
    """
    path = sqlite_file(settings.database_url)
    if path is not None:
        return path
    if settings.database_url.startswith("postgresql"):
        tool, example = (
            ("pg_dump", "pg_dump -Fc -f bridge.dump DBNAME")
            if action == "back up"
            else ("pg_restore", "pg_restore --clean -d DBNAME bridge.dump, with the server stopped")
        )
        raise ConfigError(POSTGRES_BACKUP_HINT.format(action=action, tool=tool, example=example))
    raise ConfigError(f"{config.ENV_PREFIX}DATABASE_URL names no database file to {action}")


def _new_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (never readable by others, not even for a moment).

    Raises:
        ConfigError: it cannot be created; the message names it.
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, DATABASE_FILE_MODE))
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _scratch(path: Path) -> Iterator[Path]:
    """A new private file to fill; removed unless the block renamed it away."""
    _new_private_file(path)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _copy_checked(source: Path, destination: Path, settings: Settings) -> SqliteFileCheck:
    """Copy ``source`` into the empty ``destination`` and check the copy.

    Raises:
        ConfigError: the source is not a nexus-bridge database, or the copy fails its check.
    """
    try:
        sqlite_copy(source, destination, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
        with open(destination, "rb+") as handle:
            os.fsync(handle.fileno())
        check = sqlite_check(destination)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot copy {source}: {exc}") from None
    _check_copy(source, check)
    return check


def _check_copy(source: Path, check: SqliteFileCheck) -> None:
    """Raises ConfigError unless the check found an intact nexus-bridge database at a revision
    this nexus-bridge knows."""
    if not check.ok:
        raise ConfigError(
            f"{source}: integrity_check failed ({'; '.join(check.integrity[:3])}); nothing written"
        )
    if not check.revisions:
        raise ConfigError(f"{source} is not a nexus-bridge database (no schema); nothing written")
    known = migrate.known_revisions()
    unknown = [r for r in check.revisions if r not in known]
    if unknown:
        raise ConfigError(
            f"{source} is at schema {', '.join(unknown)}, which this nexus-bridge does not know "
            "(it was written by a newer one); upgrade nexus-bridge first"
        )


def _schema_note(check: SqliteFileCheck) -> str:
    heads = migrate.head_revisions()
    at = ", ".join(check.revisions)
    if sorted(check.revisions) == sorted(heads):
        return f"schema {at} (current)"
    return f"schema {at} (older than this nexus-bridge's {', '.join(heads)})"


# --- backup ----------------------------------------------------------------------------------


def cmd_backup(settings: Settings, args: argparse.Namespace) -> int:
    """A consistent copy of the live database, checked, written atomically, mode 0600."""
    source = _sqlite_database(settings, "back up")
    if not source.is_file():
        raise ConfigError(f"there is no database at {source} to back up")
    destination = Path(args.path).expanduser()
    if destination.is_dir():
        destination = destination / f"{source.stem}-{_stamp()}{source.suffix or '.db'}"
    if destination.exists() and not args.force:
        raise ConfigError(f"{destination} exists; choose another path, or pass --force")
    if not destination.parent.is_dir():
        raise ConfigError(f"{destination.parent} is not a directory")
    if destination.resolve() == source.resolve():
        raise ConfigError("the backup must go to another file than the database itself")
    scratch = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    with _scratch(scratch):
        check = _copy_checked(source, scratch, settings)
        os.replace(scratch, destination)  # a crash leaves the old backup or the new, never half
    _fsync_directory(destination.parent)
    size = destination.stat().st_size
    print(
        f"backed up {source} to {destination}: {size} bytes, {check.tasks} tasks, "
        f"{_schema_note(check)}, integrity ok"
    )
    return 0


# --- restore ---------------------------------------------------------------------------------


def cmd_restore(settings: Settings, args: argparse.Namespace) -> int:
    """Replace the database with a backup, with every server stopped; the old file kept aside."""
    database = _sqlite_database(settings, "restore")
    source = Path(args.path).expanduser()
    if not source.is_file():
        raise ConfigError(f"there is no backup file at {source}")
    try:
        _check_copy(source, sqlite_check(source))
    except sqlite3.Error as exc:
        raise ConfigError(f"{source} is not a SQLite database: {exc}") from None
    if database.exists() and source.resolve() == database.resolve():
        raise ConfigError(f"{source} is the database itself; name a backup file")
    lock = ServerLock.try_acquire(settings.database_url, exclusive=True)
    if lock is None:
        raise ConfigError(
            f"a nexus-bridge server is running on {database} (it holds {database}.lock); stop "
            "it first (e.g. systemctl stop nexus-bridge), then restore"
        )
    try:
        database.parent.mkdir(mode=DATA_DIRECTORY_MODE, parents=True, exist_ok=True)
        scratch = database.with_name(f".{database.name}.restoring-{os.getpid()}")
        with _scratch(scratch):
            check = _copy_checked(source, scratch, settings)  # the backup itself stays as it is
            aside = _move_aside(database, settings)
            os.replace(scratch, database)
        _fsync_directory(database.parent)
        if sorted(check.revisions) != sorted(migrate.head_revisions()):
            migrate.upgrade(settings.database_url)
    finally:
        lock.release()
    kept = f"; the database it replaced is kept at {aside}" if aside else ""
    print(f"restored {source} to {database}: {check.tasks} tasks, {_schema_note(check)}{kept}")
    return 0


def _move_aside(database: Path, settings: Settings) -> Path | None:
    """Rename the current database (and its -wal, -shm) to ``NAME.replaced-TIME``; its
    write-ahead log is folded in first where it can be, so the file kept aside is whole."""
    if not database.exists():
        return None
    with contextlib.suppress(sqlite3.Error):
        sqlite_checkpoint(database, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    aside = database.with_name(f"{database.name}.replaced-{_stamp()}")
    os.replace(database, aside)
    for suffix in SQLITE_COMPANIONS:
        companion = database.with_name(database.name + suffix)
        if companion.exists():
            # A stale -wal or -shm beside the restored file would be read as its own.
            os.replace(companion, aside.with_name(aside.name + suffix))
    return aside


# --- prune -----------------------------------------------------------------------------------

_DURATION: Final = re.compile(r"([1-9][0-9]{0,6})([dh])")
_UNIT_HOURS: Final = {"d": 24, "h": 1}


def older_than(value: str) -> timedelta:
    """``90d`` or ``36h`` (argparse type): at least an hour, at most MAX_RETENTION_DAYS."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"must be a number of days or hours, like 90d or 36h; got {value!r}"
        )
    hours = int(match.group(1)) * _UNIT_HOURS[match.group(2)]
    if hours > config.MAX_RETENTION_DAYS * 24:
        raise argparse.ArgumentTypeError(f"at most {config.MAX_RETENTION_DAYS}d; got {value!r}")
    return timedelta(hours=hours)


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    """Delete ended tasks older than --older-than, with everything that belongs to them."""
    from nexus_bridge.runtime import open_runtime

    async def work() -> PruneReport:
        runtime = open_runtime(settings)
        try:
            await runtime.check_schema()
            return await runtime.queue.prune(args.older_than, dry_run=args.dry_run)
        finally:
            await runtime.close()

    report = asyncio.run(work())
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, **dataclasses.asdict(report)}))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"{verb} {report.tasks} ended tasks older than {_days(args.older_than)}, "
        f"{report.updates} updates, {report.deliveries} deliveries and {report.journal} "
        "Telegram journal rows; open tasks are never removed"
    )
    return 0


def _days(delta: timedelta) -> str:
    hours = int(delta.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"


# --- registration ----------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the operator's commands on the ``nexus-bridge`` parser."""
    backup = sub.add_parser(
        "backup", help="copy the live SQLite database, checked (PostgreSQL: use pg_dump)"
    )
    backup.add_argument("path", help="the backup file, or a directory to put a dated one in")
    backup.add_argument("--force", action="store_true", help="replace an existing file")
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser(
        "restore", help="replace the database with a backup (the server must be stopped)"
    )
    restore.add_argument("path", help="a file written by nexus-bridge backup")
    restore.set_defaults(func=cmd_restore)

    prune = sub.add_parser(
        "prune", help="delete ended tasks older than a given age, with their updates"
    )
    prune.add_argument(
        "--older-than", type=older_than, required=True, metavar="AGE", help="e.g. 90d or 36h"
    )
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.add_argument("--json", action="store_true", help="print JSON")
    prune.set_defaults(func=cmd_prune)
