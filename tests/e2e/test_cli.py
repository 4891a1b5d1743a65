"""The nexus-bridge command, run as a user would: a real process on a real database file."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_ENV, free_port, postgres_admin_url, subprocess_env

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


def test_send_prints_its_result_once_and_logs_it_only_when_asked(migrated_sqlite_url: str) -> None:
    """stdout says "queued <id>"; the queue's INFO line saying the same is a server's."""
    sent = run(migrated_sqlite_url, "send", "check the UPS battery")
    assert sent.stdout.startswith("queued ")
    assert sent.stderr == ""
    debug = subprocess.run(
        [EXE, "send", "check the UPS fan"],
        env=subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_LOG_LEVEL="DEBUG"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "nexus_bridge.queue: queued task" in debug.stderr


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
    assert run(url, "updates").stdout == "no new updates\n"  # the cli cursor moved on

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
        (("show", "nope"), "id 'nope' is too short: give at least 8 characters"),
        (("show", "12345678-nope"), "no task with id '12345678-nope'; nexus-bridge list shows"),
        (("updates", "--since", "soon"), "since must be an ISO-8601 time"),
        (("list", "--status", "finished"), "unknown status 'finished'"),
        (("agent", "next", "--wait", "nan"), "argument --wait: must be a finite number"),
        (("agent", "next", "--wait", "inf"), "argument --wait: must be a finite number"),
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


# --- mistakes a new user makes: one line naming the variable, exit 2, no traceback -----------


def run_env(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], env=env, capture_output=True, text=True, timeout=60, check=False, **kwargs
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("nexus-bridge: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def refusing_port() -> int:
    """A loopback port nothing listens on: connecting to it is refused at once."""
    return free_port()


BAD_SETTINGS = [
    # (environment, what the one line must name)
    ({"NEXUS_BRIDGE_LOG_LEVEL": "LOUD"}, ("NEXUS_BRIDGE_LOG_LEVEL", "DEBUG, INFO")),
    ({"NEXUS_BRIDGE_DATABASE_URL": "not a url"}, ("NEXUS_BRIDGE_DATABASE_URL", "sqlite+aiosqlite")),
    ({"NEXUS_BRIDGE_DATABASE_URL": "sqlite:///{tmp}/bridge.db"}, ("sqlite+aiosqlite:///",)),
    (
        {"NEXUS_BRIDGE_DATABASE_URL": "postgresql://nexus:hunter2-pw@127.0.0.1/nexus"},
        ("NEXUS_BRIDGE_DATABASE_URL", "postgresql+asyncpg://nexus:***@127.0.0.1/nexus"),
    ),
    ({"NEXUS_BRIDGE_DATABASE_URL": "mysql+aiomysql://u@127.0.0.1/x"}, ("unsupported database",)),
    (
        {"NEXUS_BRIDGE_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:{port}/nexus"},
        ("NEXUS_BRIDGE_DATABASE_URL", "cannot connect to the database", "Connection refused"),
    ),
    (
        {"NEXUS_BRIDGE_DATABASE_URL": "sqlite+aiosqlite:///{tmp}/a-file/bridge.db"},
        ("NEXUS_BRIDGE_DATABASE_URL", "a-file is not a directory"),
    ),
    (
        {"NEXUS_BRIDGE_DATABASE_URL": "sqlite+aiosqlite:///{tmp}/a-file/deeper/bridge.db"},
        ("NEXUS_BRIDGE_DATABASE_URL", "cannot create the database", "Not a directory"),
    ),
    (
        {"NEXUS_BRIDGE_DATABASE_URL": "sqlite+aiosqlite:///{tmp}"},
        ("NEXUS_BRIDGE_DATABASE_URL", "is a directory", "bridge.db"),
    ),
]
COMMANDS = [("serve", "--port", "0"), ("db", "upgrade"), ("send", "hello"), ("status",)]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
@pytest.mark.parametrize(("variables", "needles"), BAD_SETTINGS)
def test_a_bad_setting_is_one_line_naming_the_variable_with_exit_2(
    tmp_path: Path,
    command: tuple[str, ...],
    variables: dict[str, str],
    needles: tuple[str, ...],
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    port = refusing_port()
    env = subprocess_env(f"sqlite+aiosqlite:///{tmp_path}/bridge.db")
    env.update({k: v.format(tmp=tmp_path, port=port) for k, v in variables.items()})
    result = run_env(*command, env=env)
    assert_one_line_error(result, *needles)
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_an_unknown_postgresql_database_is_one_line_naming_the_variable(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    admin = postgres_admin_url()
    if admin is None:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    missing = make_url(admin).set(database=f"nexus_missing_{uuid.uuid4().hex[:8]}")
    url = missing.render_as_string(hide_password=False)
    env = subprocess_env(url, NEXUS_BRIDGE_AGENT_TOKEN_FILE=str(tmp_path / "agent-token"))
    result = run_env(*command, env=env)
    assert_one_line_error(
        result, "NEXUS_BRIDGE_DATABASE_URL", f'database "{missing.database}" does not exist'
    )


def test_a_dot_env_that_is_not_text_is_one_line_naming_it(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / ".env").write_bytes(b"\xff\xfe NEXUS_BRIDGE_PORT=1\n")
    result = run_env("status", env=subprocess_env(migrated_sqlite_url), cwd=workdir)
    assert_one_line_error(result, str(workdir / ".env"), "not UTF-8 text")


@pytest.mark.parametrize("action", ["upgrade", "downgrade"])
def test_db_with_an_unknown_revision_names_the_known_ones(
    migrated_sqlite_url: str, action: str
) -> None:
    result = run(migrated_sqlite_url, "db", action, "nonsense", ok=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("nexus-bridge: error: Can't locate revision identified by 'nonsense'")
    assert "knows revisions 0001, " in last


def test_downgrading_a_database_never_migrated_says_there_is_nothing_to_downgrade(
    sqlite_url: str,
) -> None:
    result = run(sqlite_url, "db", "downgrade", "0013", ok=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "nexus-bridge: error: the database is at no revision yet (never migrated): there is "
        "nothing to downgrade; nexus-bridge db upgrade creates its schema"
    ]


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_serve_on_a_port_out_of_range_is_one_line(migrated_sqlite_url: str, port: str) -> None:
    result = run(migrated_sqlite_url, "serve", "--port", port, ok=False)
    assert_one_line_error(result, "--port must be between 0 and 65535")


def test_set_passphrase_without_a_terminal_says_to_use_stdin(migrated_sqlite_url: str) -> None:
    result = run_env(
        "auth",
        "set-passphrase",
        env=subprocess_env(migrated_sqlite_url),
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal, as under cron or systemd
    )
    assert_one_line_error(result, "auth set-passphrase", "--stdin")


def test_an_agent_command_without_a_token_names_the_file_it_looked_for(
    migrated_sqlite_url: str,
) -> None:
    env = subprocess_env(migrated_sqlite_url)  # the token file beside the database: not made yet
    result = run_env("agent", "next", env=env)
    assert_one_line_error(
        result, "NEXUS_BRIDGE_AGENT_TOKEN_FILE", env["NEXUS_BRIDGE_AGENT_TOKEN_FILE"]
    )


def _on_a_terminal(url: str, keys: bytes, *args: str) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as its controlling terminal, type ``keys`` once it
    asks something, and return its exit code and everything it wrote to the terminal."""
    import os
    import pty
    import select
    import time

    pid, master = pty.fork()
    if pid == 0:  # the child: exec at once, nothing of pytest's runs here
        os.execve(EXE, [EXE, *args], subprocess_env(url))
    output = b""
    typed = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the child closed the terminal: it has ended
                break
            if not chunk:
                break
            output += chunk
            if not typed and b": " in output:
                os.write(master, keys)
                typed = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_set_passphrase_ended_with_ctrl_d_at_the_prompt_is_one_line(
    migrated_sqlite_url: str,
) -> None:
    code, written = _on_a_terminal(migrated_sqlite_url, b"\x04", "auth", "set-passphrase")
    assert code == 2, written
    assert "Traceback" not in written
    assert "nexus-bridge: error: no passphrase was typed; nothing was changed" in written


@pytest.mark.parametrize(
    ("content", "mode", "needles"),
    [
        ("", 0o600, ("is empty", "delete it")),
        ("short\n", 0o600, ("shorter than 16 characters", "delete it")),
        ("t" * 43 + "\n", 0o644, ("readable by other users", "chmod 600")),
    ],
    ids=["empty", "too-short", "world-readable"],
)
@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("agent", "next")], ids=str)
def test_an_unusable_agent_token_file_is_refused_saying_what_to_do(
    migrated_sqlite_url: str,
    tmp_path: Path,
    command: tuple[str, ...],
    content: str,
    mode: int,
    needles: tuple[str, ...],
) -> None:
    token_file = tmp_path / "agent-token"
    token_file.write_text(content)
    token_file.chmod(mode)
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_URL="http://127.0.0.1:9")
    result = run_env(*command, env=env)
    assert_one_line_error(result, str(token_file), *needles)
    assert token_file.read_text() == content  # never overwritten


def test_a_new_database_and_its_directory_are_private(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "nexus-bridge"
    url = f"sqlite+aiosqlite:///{data / 'bridge.db'}"
    run(url, "db", "upgrade")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "bridge.db").stat().st_mode) == 0o600


def test_a_database_others_can_read_is_warned_about(migrated_sqlite_url: str) -> None:
    path = Path(make_url(migrated_sqlite_url).database or "")
    path.chmod(0o644)
    result = run(migrated_sqlite_url, "status")
    assert f"{path} is readable by other users (mode 644)" in result.stderr
    assert f"chmod 600 {path}" in result.stderr


def test_debug_logging_never_shows_sql_parameters(migrated_sqlite_url: str) -> None:
    text = f"task text that stays private {uuid.uuid4().hex}"
    result = subprocess.run(
        [EXE, "send", text],
        env=subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_LOG_LEVEL="DEBUG"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert text not in result.stderr
    assert " aiosqlite: " not in result.stderr


async def test_output_cut_short_by_its_reader_ends_quietly(migrated_sqlite_url: str) -> None:
    """``nexus-bridge list --json | head``: no traceback, the shell's SIGPIPE status."""
    import asyncio

    from nexus_bridge.db.engine import create_engine
    from nexus_bridge.db.store import Store
    from nexus_bridge.queue import QueueService

    store = Store(create_engine(migrated_sqlite_url))
    queue = QueueService(store)
    for n in range(40):  # ~160 KB of JSON: more than a pipe holds, so writing must fail
        await queue.enqueue(f"task {n}: " + "x" * 4_000)
    await store.dispose()

    status, stderr = await asyncio.to_thread(_read_one_line_then_hang_up, migrated_sqlite_url)
    assert status == 141, stderr
    assert "Traceback" not in stderr, stderr
    assert "BrokenPipeError" not in stderr


def _read_one_line_then_hang_up(url: str) -> tuple[int, str]:
    """``nexus-bridge list --json | head -1``: its exit status and stderr."""
    with subprocess.Popen(
        [EXE, "list", "--json", "--limit", "200"],
        env=subprocess_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        assert process.stdout.readline().strip() == b"{"
        process.stdout.close()
        stderr = process.stderr.read().decode()
        return process.wait(timeout=60), stderr
