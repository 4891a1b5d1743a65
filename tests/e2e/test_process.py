"""The real ``nexus-bridge serve`` process: SIGKILL loses no acknowledged send, SIGTERM drains
waiting pulls and closes the database, and ``/mcp`` answers stateless calls with no session."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from sqlalchemy.engine import make_url

from nexus_bridge.config import Settings
from tests.conftest import (
    DEADLINE_SECONDS,
    mcp_client,
    running_server,
    subprocess_env,
    wait_for,
)
from tests.e2e.test_http import call

NEXUS_BRIDGE = str(Path(sys.executable).with_name("nexus-bridge"))
LISTENING = re.compile(r"nexus-bridge listening on (http://(?:127\.0\.0\.1|\[::1\]):\d+/mcp)")
# Logged at DEBUG by the queue service when a pull starts waiting: the pull is in flight.
PULL_WAITING = "waiting up to"
EXIT_DEADLINE_SECONDS = 15.0
SHUTDOWN_GRACE_SECONDS = 10.0
ACKS_BEFORE_KILL = 40
MAX_SENDS_PER_SENDER = 1_000  # a bound, so a sender can never loop forever
# Logged at DEBUG by the SQLite writer when one transaction committed several writes.
GROUP_COMMIT = re.compile(r"committed (\d+) writes of \d+ in one transaction")


class ServerProcess:
    """A ``nexus-bridge serve`` child; its stderr is read line by line as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.url: str | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            self.lines.append(text)
            if self.url is None and (match := LISTENING.search(text)):
                self.url = match.group(1)

    def count(self, needle: str) -> int:
        return sum(needle in line for line in self.lines)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_exit(self, deadline: float = EXIT_DEADLINE_SECONDS) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout=deadline)
        except TimeoutError:
            raise AssertionError(
                f"nexus-bridge did not exit within {deadline}s; its log:\n{self.log}"
            ) from None


@asynccontextmanager
async def serve_process(
    database_url: str,
    host: str = "127.0.0.1",
    *,
    max_file_bytes: int | None = None,
    **env: str,
) -> AsyncIterator[ServerProcess]:
    """``nexus-bridge serve --port 0`` on loopback, up and listening; killed on the way out.
    ``max_file_bytes``: no file the server writes may grow past it (``RLIMIT_FSIZE``), as on a
    full disk."""

    def limit_files() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.RLIM_INFINITY))

    proc = await asyncio.create_subprocess_exec(
        NEXUS_BRIDGE,
        "serve",
        "--host",
        host,
        "--port",
        "0",
        env=subprocess_env(database_url, **{"NEXUS_BRIDGE_LOG_LEVEL": "INFO", **env}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit_files if max_file_bytes is not None else None,
    )
    server = ServerProcess(proc)
    try:
        await wait_for(
            lambda: server.url is not None or server.reader.done(),
            what="nexus-bridge to log its listening URL",
        )
        if server.url is None:
            raise AssertionError(f"nexus-bridge exited before listening:\n{server.log}")
        yield server
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.wait_for(proc.wait(), timeout=DEADLINE_SECONDS)
        await asyncio.wait_for(server.reader, timeout=DEADLINE_SECONDS)


def sqlite_path(database_url: str) -> Path:
    database = make_url(database_url).database
    assert database
    return Path(database)


def read_database(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """``PRAGMA integrity_check``, and every (id, content) in ``messages``, read from the file."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        integrity = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        rows = [(str(i), str(c)) for i, c in conn.execute("SELECT id, content FROM tasks")]
    return integrity, rows


def wal_size(path: Path) -> int | None:
    wal = path.with_name(path.name + "-wal")
    return wal.stat().st_size if wal.exists() else None


async def list_all_messages(client: Client) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    before: str | None = None
    while True:
        args: dict[str, Any] = {"limit": 200}
        if before is not None:
            args["before"] = before
        result = await client.call_tool("list_messages", args)
        assert not result.is_error, result
        assert result.structured_content is not None
        messages.extend(result.structured_content["messages"])
        before = result.structured_content["next_before"]
        if before is None:
            return messages


def group_commits(server: ServerProcess) -> int:
    """How many transactions committed two writes or more (the writer's DEBUG lines)."""
    return sum(
        int(match.group(1)) >= 2 for line in server.lines if (match := GROUP_COMMIT.search(line))
    )


@pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux's prlimit")
async def test_when_the_disk_refuses_writes_sends_fail_in_one_line_and_work_again_once_it_is_fixed(
    migrated_sqlite_url: str,
) -> None:
    """A disk that fills up under a bridge left running for months (here: a file size limit the
    database reaches). Every send it refuses says so in one line, the owner gets one log line,
    not a traceback per call; reads go on; once there is room again sends work, with no
    restart, and every acknowledged send is on disk."""
    path = sqlite_path(migrated_sqlite_url)
    limit = path.stat().st_size + 1024 * 1024
    acked: list[str] = []
    refused: list[str] = []
    async with serve_process(migrated_sqlite_url, max_file_bytes=limit) as server:
        assert server.url is not None
        async with Client(server.url) as client:
            for i in range(1_000):  # about 250 fill the log
                text = f"disk-full test {i:04d} " + "x" * 4_000
                result = await client.call_tool("send_message", {"message": text})
                if result.is_error:
                    refused.append(result.content[0].text)  # type: ignore[union-attr]
                    if len(refused) == 5:
                        break
                else:
                    assert result.structured_content is not None
                    acked.append(result.structured_content["id"])
            assert len(refused) == 5, "the file limit was never reached"
            assert acked, "not one send fit under the limit"
            for message in refused:
                assert "\n" not in message
                assert "the database cannot be written (disk I/O error)" in message, message
                assert "nothing of this call was written" in message
            status = await call(client, "queue_status", {})  # reads go on
            assert status["pending"] == len(acked)
            failures = [line for line in server.lines if "refused a write" in line]
            assert len(failures) == 1, server.log
            assert " ERROR " in failures[0]
            assert "Traceback" not in server.log
            assert "internal error" not in server.log

            unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, unlimited)
            after = await call(client, "send_message", {"message": "after the disk was fixed"})
            assert after["queued"]
            acked.append(after["id"])
        server.proc.send_signal(signal.SIGKILL)
        await server.wait_exit()

    integrity, rows = await asyncio.to_thread(read_database, path)
    assert integrity == ["ok"]
    assert sorted(i for i, _content in rows) == sorted(acked)


@pytest.mark.parametrize("senders", [4, 32])
async def test_sigkill_loses_no_acknowledged_send_and_duplicates_none(
    migrated_sqlite_url: str, senders: int
) -> None:
    """With 32 senders the kill lands while writes are being committed in groups (the test
    waits until the server has logged group commits): still nothing acknowledged is lost."""
    path = sqlite_path(migrated_sqlite_url)
    acks_before_kill = max(ACKS_BEFORE_KILL, 4 * senders)
    run = uuid.uuid4().hex[:8]
    acked: dict[str, str] = {}  # id -> text, for every send answered queued=true
    attempted: set[str] = set()
    tool_errors: list[str] = []
    stopped_by: dict[int, BaseException | None] = {}

    async with serve_process(migrated_sqlite_url, NEXUS_BRIDGE_LOG_LEVEL="DEBUG") as server:
        assert server.url is not None
        url = server.url

        async def sender(n: int) -> None:
            try:
                async with Client(url) as client:
                    for i in range(MAX_SENDS_PER_SENDER):
                        text = f"crash-test {run} sender {n} message {i}"
                        attempted.add(text)
                        result = await client.call_tool("send_message", {"message": text})
                        if result.is_error or result.structured_content is None:
                            tool_errors.append(f"{text}: {result}")
                            break
                        if result.structured_content["queued"]:
                            acked[result.structured_content["id"]] = text
            except Exception as exc:  # the server died under us: what this test is about
                stopped_by[n] = exc
            else:
                stopped_by[n] = None

        tasks = [asyncio.create_task(sender(n)) for n in range(senders)]
        grouped = (lambda: group_commits(server) > 0) if senders > 1 else (lambda: True)
        try:
            await wait_for(
                lambda: (
                    (len(acked) >= acks_before_kill and grouped()) or any(t.done() for t in tasks)
                ),
                what=f"{acks_before_kill} acknowledged sends, some committed together",
            )
            assert not any(t.done() for t in tasks), (tool_errors, stopped_by, server.log)
            server.proc.send_signal(signal.SIGKILL)  # mid-stream: the senders are still sending
            assert await server.wait_exit() == -signal.SIGKILL
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=DEADLINE_SECONDS)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    assert not tool_errors, tool_errors
    assert len(stopped_by) == senders
    assert all(exc is not None for exc in stopped_by.values()), "a sender outlived the server"
    assert len(acked) >= acks_before_kill

    # Restart on the same file: every acknowledged send is there, exactly once, with its text.
    async with serve_process(migrated_sqlite_url) as server:
        assert server.url is not None
        async with Client(server.url) as client:
            for task_id, text in acked.items():
                result = await client.call_tool("get_message", {"id": task_id})
                assert not result.is_error, (task_id, result)
                assert result.structured_content is not None
                assert result.structured_content["id"] == task_id
                assert result.structured_content["content"] == text
                assert result.structured_content["status"] == "pending"
            listed = await list_all_messages(client)
        server.proc.send_signal(signal.SIGTERM)
        await server.wait_exit()

    by_id = {m["id"]: m["content"] for m in listed}
    assert len(by_id) == len(listed)
    assert {i: by_id.get(i) for i in acked} == acked
    assert [t for t, n in Counter(by_id.values()).items() if n > 1] == []
    assert set(by_id.values()) <= attempted  # nothing was made up or mangled

    integrity, rows = await asyncio.to_thread(read_database, path)
    assert integrity == ["ok"]
    assert dict(rows) == by_id
    assert [t for t, n in Counter(c for _, c in rows).items() if n > 1] == []


async def test_sigterm_wakes_a_waiting_pull_and_exits_0_with_the_database_closed(
    migrated_sqlite_url: str,
) -> None:
    path = sqlite_path(migrated_sqlite_url)
    async with serve_process(
        migrated_sqlite_url,
        NEXUS_BRIDGE_SHUTDOWN_GRACE_SECONDS=str(SHUTDOWN_GRACE_SECONDS),
        NEXUS_BRIDGE_LOG_LEVEL="DEBUG",
    ) as server:
        assert server.url is not None
        # The handshake-era client, as claude.ai connects.
        async with Client(server.url, mode="legacy") as client:
            await client.list_tools()  # so the client sends nothing more before the pull
            warm = await client.call_tool("queue_status", {})
            assert not warm.is_error, warm
            waiting = server.count(PULL_WAITING)
            pull = asyncio.create_task(client.call_tool("pull_updates", {"wait_seconds": 30}))
            try:
                await wait_for(
                    lambda: server.count(PULL_WAITING) > waiting or pull.done(),
                    what="the server to take the waiting pull",
                )
                assert not pull.done(), pull.result()
                server.proc.send_signal(signal.SIGTERM)
                signalled = time.monotonic()
                result = await asyncio.wait_for(pull, timeout=DEADLINE_SECONDS)
                took = time.monotonic() - signalled
            finally:
                pull.cancel()
                await asyncio.gather(pull, return_exceptions=True)
        code = await server.wait_exit()

    assert not result.is_error, result
    assert result.structured_content == {"updates": [], "next_cursor": "0", "has_more": False}
    # Woken by the shutdown, not by its own 30 s, nor cut off after the grace period.
    assert took < SHUTDOWN_GRACE_SECONDS / 2, took
    assert code == 0, f"exit code {code}; the log:\n{server.log}"
    assert "Application shutdown complete" in server.log
    assert not wal_size(path), "the WAL was not checkpointed and removed: the db was not closed"
    integrity, _rows = await asyncio.to_thread(read_database, path)
    assert integrity == ["ok"]


def sse_or_json_messages(response: httpx2.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a Streamable HTTP response, SSE or plain JSON."""
    if response.headers["content-type"].startswith("text/event-stream"):
        return [
            json.loads(line.removeprefix("data:").strip())
            for line in response.text.splitlines()
            if line.startswith("data:") and line.removeprefix("data:").strip()
        ]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    return body if isinstance(body, list) else [body]


@pytest.mark.parametrize("protocol_version", [None, "2025-06-18", "2025-11-25"])
async def test_tools_call_without_session_or_initialize_succeeds(
    make_settings: Callable[..., Settings], protocol_version: str | None
) -> None:
    """claude.ai never sends Mcp-Session-Id back: each POST must stand on its own."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if protocol_version is not None:
        headers["MCP-Protocol-Version"] = protocol_version

    async def call(http: httpx2.AsyncClient, url: str, rpc_id: int, tool: str, args: Any) -> Any:
        request = {
            "jsonrpc": "2.0",
            "id": rpc_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": args},
        }
        response = await http.post(url, json=request, headers=headers)
        assert response.status_code == 200, response.text
        assert "mcp-session-id" not in response.headers
        replies = [m for m in sse_or_json_messages(response) if m.get("id") == rpc_id]
        assert len(replies) == 1, response.text
        assert "error" not in replies[0], replies[0]
        result = replies[0]["result"]
        assert result.get("isError") is not True, result
        return result["structuredContent"]

    async with (
        running_server(make_settings()) as (url, _server),
        httpx2.AsyncClient(timeout=DEADLINE_SECONDS) as http,
    ):
        sent = await call(http, url, 1, "send_message", {"message": "stateless hello"})
        assert sent["queued"] is True
        status = await call(http, url, 2, "queue_status", {})
        assert status["pending"] == 1
        assert status["total_updates"] == 1


async def test_while_serving_the_collector_walks_only_what_came_after_start_up(
    make_settings: Callable[..., Settings],
) -> None:
    """The start-up heap (libraries, app, bridge) is frozen out of the cyclic garbage collector
    while the server runs, so a full collection does not walk it again and again; at shutdown
    it is handed back, so an embedding process (this one) keeps nothing frozen."""
    assert gc.get_freeze_count() == 0
    alive_before = len(gc.get_objects())
    async with running_server(make_settings()) as (url, _server), mcp_client(url) as client:
        frozen = gc.get_freeze_count()
        assert frozen >= alive_before  # everything alive at start-up, this process's included
        sent = await call(client, "send_message", {"message": "after start-up"})
        assert sent["queued"] is True
        walked = len(gc.get_objects())  # the generations a collection walks, not the frozen one
        assert walked < frozen / 4, (walked, frozen)
    assert gc.get_freeze_count() == 0
    assert len(gc.get_objects()) > frozen / 2  # back in the generations a collection walks


# --- secrets at rest and in logs -------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_database_its_wal_and_its_directory_are_private(tmp_path: Path) -> None:
    data = tmp_path / "new" / "nexus-bridge"
    path = data / "bridge.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade = await asyncio.create_subprocess_exec(
        NEXUS_BRIDGE, "db", "upgrade", env=subprocess_env(url), stderr=asyncio.subprocess.PIPE
    )
    _out, err = await asyncio.wait_for(upgrade.communicate(), timeout=DEADLINE_SECONDS)
    assert upgrade.returncode == 0, err.decode()
    async with serve_process(url) as server:
        assert server.url is not None
        async with Client(server.url) as client:
            sent = await client.call_tool("send_message", {"message": "kept private"})
            assert not sent.is_error, sent
        # The server holds its connection open: the WAL and shared-memory files exist now.
        files = [path, path.with_name("bridge.db-wal"), path.with_name("bridge.db-shm")]
        assert all(f.exists() for f in files), list(data.iterdir())
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
        assert _mode(data) == 0o700


async def test_the_access_log_never_records_a_query_string(migrated_sqlite_url: str) -> None:
    secret = f"query-secret-{uuid.uuid4().hex}"
    async with serve_process(migrated_sqlite_url) as server:
        assert server.url is not None
        base = server.url.removesuffix("/mcp")
        async with httpx2.AsyncClient() as http:
            response = await http.get(f"{base}/healthz", params={"access_token": secret})
            assert response.status_code == 200
        await wait_for(
            lambda: server.count('"GET /healthz HTTP/1.1" 200'),
            what="the access log line of the request",
        )
    assert secret not in server.log
    assert "access_token" not in server.log


async def test_debug_logging_shows_no_task_text_or_sql_parameters(
    migrated_sqlite_url: str,
) -> None:
    text = f"private task text {uuid.uuid4().hex}"
    async with serve_process(migrated_sqlite_url, NEXUS_BRIDGE_LOG_LEVEL="DEBUG") as server:
        assert server.url is not None
        async with Client(server.url) as client:
            sent = await client.call_tool("send_message", {"message": text})
            assert not sent.is_error, sent
            listed = await client.call_tool("list_messages", {})
            assert text in str(listed.structured_content)
        await wait_for(
            lambda: server.count('"POST /mcp HTTP/1.1" 200') >= 2,
            what="the access log lines of the calls",
        )
    assert text not in server.log
    assert " aiosqlite: " not in server.log
    assert "DEBUG" in server.log  # the bridge's own debug lines are still there


async def test_the_generated_agent_token_is_printed_once_on_a_terminal_then_only_its_file(
    migrated_sqlite_url: str,
) -> None:
    token_file = sqlite_path(migrated_sqlite_url).parent / "agent-token"
    first = await asyncio.to_thread(_start_on_a_terminal, migrated_sqlite_url)
    token = token_file.read_text().strip()
    assert first.count(token) == 1  # shown to the operator on the start that made it
    async with serve_process(migrated_sqlite_url) as second:
        assert token_file.read_text().strip() == token
        assert second.count(f'NEXUS_BRIDGE_AGENT_TOKEN="$(cat {token_file})"') == 1
    assert token not in second.log


async def test_a_first_start_whose_stderr_is_not_a_terminal_never_prints_the_token(
    migrated_sqlite_url: str,
) -> None:
    """Under systemd, stderr is journald: the token would be kept there for good."""
    token_file = sqlite_path(migrated_sqlite_url).parent / "agent-token"
    assert not token_file.exists()
    async with serve_process(migrated_sqlite_url) as first:
        token = token_file.read_text().strip()
        assert first.count(f'NEXUS_BRIDGE_AGENT_TOKEN="$(cat {token_file})"') == 1
    assert token not in first.log


def _start_on_a_terminal(database_url: str) -> str:
    """``nexus-bridge serve`` with its stderr on a pseudo-terminal: what it printed up to the
    line saying it listens (then SIGTERM)."""
    import pty
    import select

    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [NEXUS_BRIDGE, "serve", "--host", "127.0.0.1", "--port", "0"],
        env=subprocess_env(database_url, NEXUS_BRIDGE_LOG_LEVEL="INFO"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    ) as process:
        os.close(terminal)
        output = b""
        deadline = time.monotonic() + DEADLINE_SECONDS
        try:
            while LISTENING.search(output.decode(errors="replace")) is None:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"serve did not say it listens:\n{output.decode()}"
                if select.select([controller], [], [], remaining)[0]:
                    try:
                        output += os.read(controller, 65536)
                    except OSError:  # the process closed its side: it ended
                        break
        finally:
            process.terminate()
            process.wait(timeout=EXIT_DEADLINE_SECONDS)
            os.close(controller)
    return output.decode(errors="replace")


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_serve_on_the_ipv6_loopback_starts_and_answers(migrated_sqlite_url: str) -> None:
    async with serve_process(migrated_sqlite_url, host="::1") as server:
        assert server.url is not None
        assert server.url.startswith("http://[::1]:")
        async with httpx2.AsyncClient() as http:
            response = await http.get(server.url.removesuffix("/mcp") + "/healthz")
        assert response.status_code == 200


async def test_serve_on_a_busy_port_is_one_line_naming_the_port(migrated_sqlite_url: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            NEXUS_BRIDGE,
            "serve",
            "--port",
            str(port),
            env=subprocess_env(migrated_sqlite_url),
            stderr=asyncio.subprocess.PIPE,
        )
        _out, err = await asyncio.wait_for(proc.communicate(), timeout=DEADLINE_SECONDS)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, lines
    assert lines == [
        f"nexus-bridge: error: NEXUS_BRIDGE_PORT: 127.0.0.1:{port} is already in use (another "
        "nexus-bridge?); stop it, or choose another port with --port or NEXUS_BRIDGE_PORT"
    ]


@pytest.mark.parametrize("on_path", [False, True], ids=["make-run", "venv-on-path"])
async def test_the_banners_agent_commands_work_when_pasted(
    migrated_sqlite_url: str, on_path: bool
) -> None:
    # After `make run` the command is .venv/bin/nexus-bridge and .venv/bin is not on PATH: the
    # banner must then name it by its path, or its lines are `command not found` when pasted.
    bin_dir = str(Path(NEXUS_BRIDGE).parent)
    rest = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and d != bin_dir]
    path = os.pathsep.join([bin_dir, *rest] if on_path else rest)
    async with serve_process(migrated_sqlite_url, PATH=path) as server:
        lines = [line.strip() for line in server.lines if "agent next --wait" in line]
    assert len(lines) == 1, server.log
    command = shlex.split(lines[0], comments=True)[0]
    assert command == ("nexus-bridge" if on_path else NEXUS_BRIDGE)
    assert shutil.which(command, path=path) is not None


async def test_out_of_open_files_the_log_says_so_once_not_thousands_of_times(
    migrated_sqlite_url: str,
) -> None:
    """asyncio logs a failed accept() once per waiting connection (up to the backlog of 2048)
    every second while the process has no file left: megabytes of log a minute, on disk."""
    status, log = await asyncio.to_thread(_flood_a_server_with_few_files, migrated_sqlite_url)
    assert status == 200  # it still answers once the connections are gone
    lines = log.count("socket.accept() out of system resource")
    assert lines == 1, log[-2000:]


def _flood_a_server_with_few_files(database_url: str) -> tuple[int, str]:
    """``serve`` limited to 64 open files, 200 idle connections held for two seconds, then a
    request once they are closed: its answer's status and what the server logged."""
    import resource

    def few_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    with subprocess.Popen(
        [NEXUS_BRIDGE, "serve", "--host", "127.0.0.1", "--port", "0"],
        env=subprocess_env(database_url, NEXUS_BRIDGE_LOG_LEVEL="INFO"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=few_files,
    ) as process:
        assert process.stderr is not None
        log = ""
        while (match := LISTENING.search(log)) is None:
            line = process.stderr.readline().decode(errors="replace")
            assert line, f"serve exited:\n{log}"
            log += line
        port = int(match.group(1).rsplit(":", 1)[1].split("/")[0])
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
        # Read what it logs while they are held: asyncio retries accept() every second, so
        # 2.5 s see the first failures and two retries (each thousands of lines, unfiltered).
        log += _read_for(process.stderr, seconds=2.5)
        for sock in sockets:
            sock.close()
        status = 0
        for _ in range(50):  # the server frees the closed connections' files as it sees them go
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                    probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    status = int(probe.recv(64).split(b" ")[1])
                    break
            except (OSError, IndexError, ValueError):
                continue
        process.terminate()
        _, rest = process.communicate(timeout=EXIT_DEADLINE_SECONDS)
        return status, log + rest.decode(errors="replace")


def _read_for(stream: Any, seconds: float) -> str:
    """Everything ``stream`` (a pipe) gives within ``seconds``."""
    import select

    data = b""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        if select.select([stream], [], [], remaining)[0]:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")
