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
import pwd
import re
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from nexus_bridge import config
from nexus_bridge.config import Settings
from nexus_bridge.constants import CLAUDE_PROGRAM
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

POSTGRES_HINTS: Final = {
    "backup": "the database is PostgreSQL: back it up with pg_dump (e.g. pg_dump -Fc -f "
    "bridge.dump DBNAME); nexus-bridge backup works on SQLite files only",
    "restore": "the database is PostgreSQL: restore it with pg_restore, with the server stopped "
    "(e.g. pg_restore --clean -d DBNAME bridge.dump); nexus-bridge restore works on SQLite "
    "files only",
}
# The companions SQLite keeps beside a database file; a restore moves them aside with it.
SQLITE_COMPANIONS: Final = ("-wal", "-shm", "-journal")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _sqlite_database(settings: Settings, command: str) -> Path:
    """The SQLite file of the configured database.

    Raises:
        ConfigError: PostgreSQL (use its own tools), or an in-memory database.
    """
    path = sqlite_file(settings.database_url)
    if path is not None:
        return path
    if settings.database_url.startswith("postgresql"):
        raise ConfigError(POSTGRES_HINTS[command])
    raise ConfigError(f"{config.ENV_PREFIX}DATABASE_URL names no database file for {command}")


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
    source = _sqlite_database(settings, "backup")
    if not source.is_file():
        raise ConfigError(f"there is no database at {source} to back up")
    destination = Path(args.path).expanduser()
    if args.path.endswith(("/", os.sep)):  # a directory, made if it is not there yet
        if destination.exists() and not destination.is_dir():
            raise ConfigError(f"{destination} is not a directory")
        if not destination.exists():
            try:
                destination.mkdir(mode=DATA_DIRECTORY_MODE, parents=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot make the directory {destination}: {exc.strerror or exc}"
                ) from None
            print(f"made the directory {destination} (mode {DATA_DIRECTORY_MODE:o})")
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


# --- systemd-unit ----------------------------------------------------------------------------

SYSTEM_ENV_FILE: Final = "/etc/nexus-bridge/env"
USER_ENV_FILE: Final = "%h/.config/nexus-bridge/env"
# Lines that need mount namespaces: an LXC container without nesting fails them (226/NAMESPACE).
NAMESPACE_NOTE: Final = (
    "# The lines below need mount namespaces: in an LXC container without nesting the\n"
    "# service fails with status=226/NAMESPACE. Enable nesting, or delete them."
)


def _executable() -> Path:
    """The absolute path of this nexus-bridge command (the one beside this Python first)."""
    beside = Path(sys.executable).with_name("nexus-bridge")
    if beside.is_file():
        return beside
    found = shutil.which("nexus-bridge")
    if found is None:
        raise ConfigError("cannot find the nexus-bridge command on PATH; pass --exe")
    return Path(found).resolve()


def _writable_paths(settings: Settings) -> list[Path]:
    """The directories the bridge writes: the database's and the agent token's."""
    paths = [settings.agent_token_file.expanduser().parent]
    database = sqlite_file(settings.database_url)
    if database is not None:
        paths.insert(0, database.parent)
    return list(dict.fromkeys(p.resolve() for p in paths))


def _under_home(path: Path) -> bool:
    return path.is_relative_to("/home") or path.is_relative_to("/root")


def _quoted(path: Path | str) -> str:
    """A path as systemd reads it in ExecStart= (quoted if it has spaces, % doubled)."""
    text = str(path).replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def bridge_unit(settings: Settings, *, user_mode: bool, exe: Path, env_file: str) -> str:
    """The unit that runs ``nexus-bridge serve``: migrated first, sandboxed, restarted."""
    writable = _writable_paths(settings)
    home = any(_under_home(p) for p in [*writable, exe])
    lines = [
        "# nexus-bridge: written by `nexus-bridge systemd-unit"
        + (" --user" if user_mode else "")
        + "`",
        "[Unit]",
        "Description=nexus-bridge MCP server and task queue",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
    ]
    if not user_mode:
        lines.append(f"User={_service_user()}")
    lines += [
        "# Settings (NEXUS_BRIDGE_...=value lines); the unit runs without the file too.",
        f"EnvironmentFile=-{env_file}",
        f"ExecStartPre={_quoted(exe)} db upgrade",
        f"ExecStart={_quoted(exe)} serve",
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM drains: waiting pulls answer, requests finish (SHUTDOWN_GRACE_SECONDS).",
        f"TimeoutStopSec={int(settings.shutdown_grace_seconds) + 20}",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "SystemCallArchitectures=native",
    ]
    if not user_mode:
        lines += [
            "# Every connection is an open file: room for many more than the soft limit's 1024.",
            "LimitNOFILE=65536",
            "CapabilityBoundingSet=",
            NAMESPACE_NOTE,
            "# Everything read-only but the data directory (and the token file's).",
            "ProtectSystem=strict",
            *(f"ReadWritePaths=-{_quoted(p)}" for p in writable),
            "ProtectHome=" + ("read-only" if home else "yes"),
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "ProtectKernelTunables=yes",
            "ProtectKernelModules=yes",
            "ProtectControlGroups=yes",
        ]
    lines += ["", "[Install]", f"WantedBy={'default' if user_mode else 'multi-user'}.target", ""]
    return "\n".join(lines)


# What systemd gives a service that sets no PATH.
SYSTEMD_DEFAULT_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def runner_unit(settings: Settings, *, user_mode: bool, exe: Path, env_file: str) -> str:
    """The unit that runs the agent runner (``nexus-bridge agent run --claude``)."""
    lines = [
        "# nexus-bridge agent runner: written by `nexus-bridge systemd-unit --runner"
        + (" --user" if user_mode else "")
        + "`",
        "# It takes tasks from the bridge at NEXUS_BRIDGE_URL with NEXUS_BRIDGE_AGENT_TOKEN (set",
        "# both in the environment file) and hands each to Claude Code in WorkingDirectory.",
        "# See `nexus-bridge agent run --help` for its options.",
        "[Unit]",
        "Description=nexus-bridge agent runner (Claude Code)",
        "Wants=network-online.target",
        "After=network-online.target" + ("" if user_mode else " nexus-bridge.service"),
        "",
        "[Service]",
        "Type=simple",
    ]
    if not user_mode:
        lines.append(f"User={_service_user()}")
    claude = shutil.which(CLAUDE_PROGRAM)
    if claude is not None:
        # A service's PATH is systemd's short default, which misses ~/.local/bin and the like.
        where = str(Path(claude).parent.absolute()).replace("%", "%%")
        lines.append(f'Environment="PATH={where}:{SYSTEMD_DEFAULT_PATH}"')
    else:
        lines.append(
            f"# {CLAUDE_PROGRAM} was not on PATH where this unit was printed: put its directory"
            f' in Environment="PATH=…:{SYSTEMD_DEFAULT_PATH}", or the runner will not start.'
        )
    lines += [
        f"EnvironmentFile=-{env_file}",
        "# The agent works here: its project, its CLAUDE.md (where this unit was printed).",
        f"WorkingDirectory={_working_directory()}",
        f"ExecStart={_quoted(exe)} agent run --claude",
        # SIGTERM to the runner only: it stops its commands itself after --grace (30 s).
        "KillMode=mixed",
        "TimeoutStopSec=45",
        "Restart=on-failure",
        "RestartSec=10",
        # The agent edits files and runs tools as its user: lighter sandboxing than the bridge.
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ]
    if not user_mode:
        lines += [NAMESPACE_NOTE, "ProtectSystem=full", "PrivateTmp=yes"]
    lines += ["", "[Install]", f"WantedBy={'default' if user_mode else 'multi-user'}.target", ""]
    return "\n".join(lines)


def _working_directory() -> str:
    """The current directory as ``WorkingDirectory=`` takes it: as it is (systemd wants no
    quotes there, a space is part of the path), ``%`` doubled.

    Raises:
        ConfigError: a directory name the unit file cannot say (see below).
    """
    here = str(Path.cwd())
    if any(c in here for c in "\n\r") or here != here.strip() or here.endswith("\\"):
        # systemd would cut the line there, strip the spaces, or join the next line to it.
        raise ConfigError(
            f"systemd cannot name the directory {here!r} in WorkingDirectory= (a line break, a "
            "space at an end, or a backslash at the end); print the unit from another one"
        )
    return here.replace("%", "%%")


def _service_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


def cmd_systemd_unit(settings: Settings, args: argparse.Namespace) -> int:
    """Print a unit file for the bridge (or, with --runner, for the agent runner)."""
    exe = Path(args.exe).expanduser().resolve() if args.exe else _executable()
    if not args.user and not args.runner:
        for directory in _writable_paths(settings):
            if not directory.is_dir():
                # ProtectSystem=strict keeps the service from creating it.
                print(
                    f"nexus-bridge: warning: {directory} does not exist yet; create it before "
                    f"starting the unit (nexus-bridge db upgrade does, run as {_service_user()})",
                    file=sys.stderr,
                )
    env_file = args.unit_env_file or (USER_ENV_FILE if args.user else SYSTEM_ENV_FILE)
    if args.runner and shutil.which(CLAUDE_PROGRAM) is None:
        print(
            f"nexus-bridge: warning: {CLAUDE_PROGRAM} is not on PATH here; the unit says where to "
            "put its directory (the runner refuses to start without it)",
            file=sys.stderr,
        )
    build = runner_unit if args.runner else bridge_unit
    sys.stdout.write(build(settings, user_mode=args.user, exe=exe, env_file=env_file))
    return 0


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

    unit = sub.add_parser(
        "systemd-unit",
        help="print a systemd unit for the bridge (or --runner: the agent runner)",
    )
    unit.add_argument("--runner", action="store_true", help="the unit for nexus-bridge agent run")
    unit.add_argument(
        "--user", action="store_true", help="a user unit (~/.config/systemd/user), no root needed"
    )
    unit.add_argument(  # its own dest: `nexus-bridge --env-file` is the configuration to read
        "--env-file",
        dest="unit_env_file",
        metavar="PATH",
        help=(  # argparse %-formats help: systemd's %h must be written %%h
            f"the EnvironmentFile (default {SYSTEM_ENV_FILE}, with --user "
            f"{USER_ENV_FILE.replace('%', '%%')})"
        ),
    )
    unit.add_argument("--exe", help="the nexus-bridge command to run (default: this one)")
    unit.set_defaults(func=cmd_systemd_unit)
