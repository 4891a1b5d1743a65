"""The agent runner (``nexus-bridge agent run``) as real processes: a real bridge, the runner as a
subprocess, the fake ``claude`` in tests/bin on its PATH, and an MCP client reading the task's
updates with pull_updates, as claude.ai would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from nexus_bridge.agent_client import call_agent_tool
from nexus_bridge.config import Settings
from nexus_bridge.runner import ENV_TASK_ID, ENV_TASK_TAG, ENV_TOKEN, ENV_URL
from tests.conftest import (
    REPO_ROOT,
    free_port,
    mcp_client,
    postgres_refuses_writes,
    running_server,
    subprocess_env,
    wait_for,
)
from tests.e2e.test_agent_api import FELT_TOKEN, two_targets
from tests.e2e.test_http import call

EXE = str(Path(sys.executable).with_name("nexus-bridge"))
FAKE_BIN = REPO_ROOT / "tests" / "bin"
TARGET = "nexus:felt"
DEADLINE = 30.0


class RunnerProcess:
    """``nexus-bridge agent run`` as a subprocess, its output in a log file."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)


def runner_env(base: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = subprocess_env(
        f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}",
        NEXUS_BRIDGE_URL=base,
        NEXUS_BRIDGE_AGENT_TOKEN=FELT_TOKEN,
        PATH=f"{FAKE_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        FAKE_CLAUDE_PIDS=str(tmp_path / "pids"),
        FAKE_CLAUDE_LOG=str(tmp_path / "claude.log"),
        **extra,
    )
    return env


def start_runner(base: str, tmp_path: Path, *args: str, name: str = "runner") -> RunnerProcess:
    log = tmp_path / f"{name}.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [EXE, "agent", "run", "--state-dir", str(tmp_path / "state"), *args],
            env=runner_env(base, tmp_path),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    return RunnerProcess(process, log)


@asynccontextmanager
async def runner(
    base: str, tmp_path: Path, *args: str, name: str = "runner"
) -> AsyncIterator[RunnerProcess]:
    proc = start_runner(base, tmp_path, *args, name=name)
    try:
        yield proc
    finally:
        proc.stop()
        # Waited for off the event loop: an in-process bridge must keep answering meanwhile.
        try:
            await asyncio.to_thread(proc.process.wait, DEADLINE)
        except subprocess.TimeoutExpired:
            proc.process.kill()
            proc.process.wait()


def claude(base: str, tmp_path: Path) -> Any:
    """The runner with --claude, the fake claude on its PATH."""
    return runner(base, tmp_path, "--claude")


@asynccontextmanager
async def bridge(
    make_settings: Callable[..., Settings], tmp_path: Path, **overrides: Any
) -> AsyncIterator[tuple[str, Client]]:
    """A real bridge with the agent target nexus:felt, and an MCP client on it."""
    settings = make_settings(config_file=two_targets(tmp_path), **overrides)
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        yield url.removesuffix("/mcp"), client


async def send(client: Client, text: str, **extra: Any) -> str:
    task = await call(client, "send_message", {"message": text, "target": TARGET, **extra})
    return str(task["id"])


async def wait_status(
    client: Client, task_id: str, *wanted: str, deadline: float = DEADLINE
) -> dict[str, Any]:
    """The task once it reaches one of ``wanted``; waits on pull_updates, never sleeps."""
    end = time.monotonic() + deadline
    cursor = None
    while True:
        task = await call(client, "get_message", {"id": task_id})
        if task["status"] in wanted:
            return task
        if time.monotonic() > end:
            raise AssertionError(f"task is {task['status']}, not {wanted}, after {deadline} s")
        arguments: dict[str, Any] = {"message_id": task_id, "wait_seconds": 1}
        if cursor is not None:
            arguments["cursor"] = cursor
        cursor = (await call(client, "pull_updates", arguments))["next_cursor"]


async def updates_of(client: Client, task_id: str) -> list[tuple[str, str]]:
    page = await call(client, "pull_updates", {"message_id": task_id, "limit": 200})
    return [(u["kind"], u["content"]) for u in page["updates"]]


def pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has yet to reap it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


# --- tests -----------------------------------------------------------------------------------


async def test_a_claude_task_streams_its_progress_to_the_client_and_completes(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--claude"),
    ):
        task_id = await send(client, "restart jellyfin please")
        task = await wait_status(client, task_id, "complete", "error")
        assert task["status"] == "complete"
        updates = await updates_of(client, task_id)
        agent_text = "\n".join(content for kind, content in updates if kind == "agent")
        assert "Looking into it." in agent_text
        assert "▸ Bash: systemctl restart jellyfin" in agent_text
        assert "secret reasoning" not in agent_text  # thinking left out
        assert "TOOL OUTPUT NOT SHOWN" not in agent_text  # tool results left out
        assert updates[-2] == ("agent", "Done: jellyfin restarted and healthy.")
        assert agent_text.count("Done: jellyfin") == 1  # the final answer once, as the summary
        statuses = [content for kind, content in updates if kind == "status"]
        assert any("in_progress" in s for s in statuses)


async def test_a_text_command_gets_the_task_on_stdin_and_its_ids_in_the_environment(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    script = (
        "import os, sys; text = sys.stdin.read(); "
        "print('got', text.upper()); "
        "print(os.environ['NEXUS_BRIDGE_TASK_ID'], os.environ['NEXUS_BRIDGE_TASK_TAG']); "
        "print('token' if os.environ['NEXUS_BRIDGE_AGENT_TOKEN'] else 'none')"
    )
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--", sys.executable, "-c", script),
    ):
        task_id = await send(client, "hello there")
        task = await wait_status(client, task_id, "complete", "error")
        assert task["status"] == "complete", task
        updates = await updates_of(client, task_id)
        texts = "\n".join(c for k, c in updates if k == "agent")
        assert "got HELLO THERE" in texts
        assert f"{task_id} {task_id[:8]}" in texts
        assert "token" in texts


async def test_a_failing_command_fails_the_task_with_its_exit_code_and_stderr(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--claude"),
    ):
        task_id = await send(client, "clean the disk fake:fail")
        task = await wait_status(client, task_id, "complete", "error")
        assert task["status"] == "error"
        error = (await updates_of(client, task_id))[-2][1]
        assert error.startswith("exit code 1")
        assert "I could not do it: the disk is full." in error
        assert "stderr:\nfake claude: something broke" in error


async def test_a_command_over_its_timeout_is_stopped_and_the_task_fails(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--timeout", "1", "--claude"),
    ):
        task_id = await send(client, "a long job fake:sleep=60 fake:ignore-term")
        task = await wait_status(client, task_id, "complete", "error")
        assert task["status"] == "error"
        assert task["status_reason"].startswith("timed out after 1 s")
        await wait_for(lambda: not any(alive(p) for p in pids(tmp_path)), what="the pids gone")


async def test_a_command_that_cannot_start_fails_the_task_saying_why(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A command that is gone by the time a task comes (one that is missing at start-up stops
    the runner at once: test_bad_runner_arguments_are_one_line_naming_the_option)."""
    vanishing = tmp_path / "vanishing-command"
    vanishing.write_text("#!/bin/sh\nexit 0\n")
    vanishing.chmod(0o755)
    missing = str(vanishing)
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, missing) as started,
    ):
        await wait_for(lambda: "agent runner:" in started.output(), what="the runner to start")
        vanishing.unlink()
        task_id = await send(client, "anything")
        task = await wait_status(client, task_id, "complete", "error")
        assert task["status"] == "error"
        assert task["status_reason"] == f"cannot start {missing!r}: No such file or directory"


async def test_cancel_stops_the_whole_process_group_within_two_seconds(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--claude"),
    ):
        # It ignores SIGTERM (so only SIGKILL stops it) and has a child of its own.
        task_id = await send(client, "fake:sleep=60 fake:ignore-term fake:child")
        await wait_for(lambda: len(pids(tmp_path)) == 2, what="the command and its child")
        await wait_status(client, task_id, "in_progress")
        started = pids(tmp_path)
        assert all(alive(p) for p in started)
        await call(client, "cancel_message", {"id": task_id, "reason": "changed my mind"})
        cancelled = time.monotonic()
        await wait_for(lambda: not any(alive(p) for p in started), what="every pid gone")
        assert time.monotonic() - cancelled < 2.5  # 2 s, and some slack for a busy machine
        assert (await call(client, "get_message", {"id": task_id}))["status"] == "cancelled"


async def test_a_question_is_asked_and_the_answer_resumes_the_same_claude_session(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--claude"),
    ):
        task_id = await send(client, "restart jellyfin fake:question")
        await wait_status(client, task_id, "input_required")
        assert ("agent", "[Question] Restart jellyfin now, or tonight?") in await updates_of(
            client, task_id
        )
        await call(client, "reply_to_task", {"id": task_id, "text": "tonight"})
        await wait_status(client, task_id, "complete")
        updates = await updates_of(client, task_id)
        assert ("agent", "Resuming with: tonight") in updates
        assert updates[-2] == ("agent", "Done: went ahead with 'tonight'.")
    runs = [json.loads(line) for line in (tmp_path / "claude.log").read_text().splitlines()]
    assert len(runs) == 2
    assert "--resume" not in runs[0]["argv"]
    assert runs[1]["argv"][runs[1]["argv"].index("--resume") + 1] == runs[0]["session"]
    assert runs[1]["prompt"] == "tonight"


async def test_concurrency_two_runs_two_tasks_at_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--concurrency", "2", "--claude"),
    ):
        first = await send(client, "one fake:sleep=60")
        second = await send(client, "two fake:sleep=60")
        await wait_for(lambda: len(pids(tmp_path)) == 2, what="two commands at once")
        assert all(alive(p) for p in pids(tmp_path))
        for task_id in (first, second):
            assert (await call(client, "get_message", {"id": task_id}))["status"] == "in_progress"
            await call(client, "cancel_message", {"id": task_id})
        await wait_for(lambda: not any(alive(p) for p in pids(tmp_path)), what="both stopped")


async def test_a_chatty_command_is_coalesced_into_few_trimmed_updates(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    script = "for i in range(5000): print('line', i)"
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        runner(base, tmp_path, "--", sys.executable, "-c", script),
    ):
        task_id = await send(client, "be chatty")
        await wait_status(client, task_id, "complete")
        agent = [c for k, c in await updates_of(client, task_id) if k == "agent"]
        assert len(agent) <= 4  # progress (at most one per 2 s) and the summary
        assert any("earlier lines left out" in text for text in agent)
        assert agent[-1].endswith("line 4999")
        assert all(len(text) <= 3_100 for text in agent)


async def test_a_restarted_runner_fails_the_task_it_left_and_stops_its_command(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    pid_file = tmp_path / "pids"
    script = (
        "import os, time; "
        f"open({str(pid_file)!r}, 'a').write(f'{{os.getpid()}}\\n'); "
        "print('working', flush=True); time.sleep(60)"
    )
    command = ("--", sys.executable, "-c", script)
    async with bridge(make_settings, tmp_path) as (base, client):
        first = start_runner(base, tmp_path, *command, name="first")
        task_id = await send(client, "a long job")
        await wait_for(lambda: pids(tmp_path), what="the command")
        await wait_status(client, task_id, "in_progress")
        first.stop(signal.SIGKILL)  # a crash: no chance to clean up
        await asyncio.to_thread(first.process.wait)
        assert alive(pids(tmp_path)[0])  # its own process group outlived the runner
        async with runner(base, tmp_path, *command):
            task = await wait_status(client, task_id, "error")
            assert task["status_reason"] == "the runner restarted while this task ran"
            await wait_for(lambda: not alive(pids(tmp_path)[0]), what="the old command gone")


async def test_a_restarted_runner_resumes_the_claude_session_it_left(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with bridge(make_settings, tmp_path) as (base, client):
        first = start_runner(base, tmp_path, "--claude", name="first")
        task_id = await send(client, "a long job fake:sleep=60")
        await wait_for(lambda: pids(tmp_path), what="claude")
        await wait_status(client, task_id, "in_progress")

        async def streaming() -> bool:  # its first text comes after init named the session
            return ("agent", "Looking into it.") in await updates_of(client, task_id)

        await wait_for(streaming, what="the first text")
        first.stop(signal.SIGKILL)
        await asyncio.to_thread(first.process.wait)
        async with claude(base, tmp_path):
            await wait_status(client, task_id, "complete")
            await wait_for(lambda: not alive(pids(tmp_path)[0]), what="the old claude gone")
    runs = [json.loads(line) for line in (tmp_path / "claude.log").read_text().splitlines()]
    assert len(runs) == 2
    assert runs[1]["argv"][runs[1]["argv"].index("--resume") + 1] == runs[0]["session"]
    assert "restarted" in runs[1]["prompt"]


async def test_a_restarted_runner_resumes_the_session_the_bridge_kept_when_its_state_lost_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with bridge(make_settings, tmp_path) as (base, client):
        first = start_runner(base, tmp_path, "--claude", name="first")
        task_id = await send(client, "a long job fake:sleep=60")
        await wait_for(lambda: (tmp_path / "claude.log").exists(), what="claude")
        session = json.loads((tmp_path / "claude.log").read_text())["session"]

        async def kept_on_the_bridge() -> bool:  # recorded as soon as init named it
            task = await call_agent_tool(base, FELT_TOKEN, "heartbeat", {"id": task_id})
            return bool(task["agent_session"] == session)

        await wait_for(kept_on_the_bridge, what="the session kept with the task")
        first.stop(signal.SIGKILL)
        await asyncio.to_thread(first.process.wait)
        # The runner's own record lost the session (an older runner's file, a failed write).
        state_file = tmp_path / "state" / f"{task_id}.json"
        state = json.loads(state_file.read_text())
        state["session_id"] = None
        state_file.write_text(json.dumps(state))
        async with claude(base, tmp_path):
            await wait_status(client, task_id, "complete")
    runs = [json.loads(line) for line in (tmp_path / "claude.log").read_text().splitlines()]
    assert len(runs) == 2
    assert runs[1]["argv"][runs[1]["argv"].index("--resume") + 1] == session


async def test_a_runner_rides_out_a_bridge_restart(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    # shutdown_grace_seconds: the runner's long poll need not hold up the bridge's shutdown.
    settings = make_settings(config_file=two_targets(tmp_path), shutdown_grace_seconds=0.5)
    base = f"http://127.0.0.1:{port}"
    proc = start_runner(base, tmp_path, "--claude")
    try:
        async with running_server(settings, port=port) as (url, _), mcp_client(url) as client:
            task_id = await send(client, "restart jellyfin fake:sleep=2")
            await wait_status(client, task_id, "in_progress")
        await wait_for(
            lambda: "cannot reach the bridge" in proc.output(), what="the runner to retry"
        )
        assert proc.process.poll() is None  # retried, not crashed
        async with running_server(settings, port=port) as (url, _), mcp_client(url) as client:
            await wait_status(client, task_id, "complete")
            later = await send(client, "and the next one")
            await wait_status(client, later, "complete")
    finally:
        proc.stop(signal.SIGKILL)
        await asyncio.to_thread(proc.process.wait)


async def test_sigterm_lets_running_commands_finish_within_the_grace_then_fails_the_rest(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with bridge(make_settings, tmp_path) as (base, client):
        proc = start_runner(base, tmp_path, "--concurrency", "2", "--grace", "2", "--claude")
        quick = await send(client, "quick fake:sleep=1")
        slow = await send(client, "slow fake:sleep=60 fake:ignore-term")
        await wait_for(lambda: len(pids(tmp_path)) == 2, what="both commands")
        proc.stop()
        assert await asyncio.to_thread(proc.process.wait, DEADLINE) == 0
        assert (await call(client, "get_message", {"id": quick}))["status"] == "complete"
        failed = await call(client, "get_message", {"id": slow})
        assert failed["status"] == "error"
        assert failed["status_reason"] == (
            "the runner was stopped (SIGTERM) before the command finished"
        )
        assert not any(alive(p) for p in pids(tmp_path))


def test_agent_prompt_teaches_a_command_what_the_runner_gives_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    env = subprocess_env(settings.database_url, NEXUS_BRIDGE_CONFIG=str(settings.config_file))
    result = subprocess.run(
        [EXE, "agent-prompt", "--target", TARGET],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    section = result.stdout.partition("### When `nexus-bridge agent run` runs you")[2]
    for name in (ENV_TASK_ID, ENV_TASK_TAG, ENV_URL, ENV_TOKEN):
        assert f"`{name}`" in section
    assert "`[Question]`" in section


async def test_a_refused_token_or_another_targets_task_stops_the_runner_with_one_line(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with bridge(make_settings, tmp_path) as (base, client):
        env = runner_env(base, tmp_path)
        env["NEXUS_BRIDGE_AGENT_TOKEN"] = "not-a-token-" + "x" * 30
        refused = await asyncio.to_thread(
            subprocess.run,
            [EXE, "agent", "run", "--state-dir", str(tmp_path / "state"), "--", "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines()[-1] == (
            f"nexus-bridge: error: the bridge at {base} refused the agent token "
            "(NEXUS_BRIDGE_AGENT_TOKEN)"
        )
        waiting = await send(client, "for felt")
        proc = start_runner(base, tmp_path, "--target", "nexus:sentry", "--", "true")
        assert await asyncio.to_thread(proc.process.wait, DEADLINE) == 2
        assert proc.output().strip().splitlines()[-1] == (
            "nexus-bridge: error: --target is 'nexus:sentry' but the agent token "
            "(NEXUS_BRIDGE_AGENT_TOKEN) is for target 'nexus:felt'"
        )
        # Found before claiming: the task is not left acknowledged until the claim lapses.
        assert (await call(client, "get_message", {"id": waiting}))["status"] == "pending"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "agent run needs a command: nexus-bridge agent run -- COMMAND [ARG...], or --claude"),
        (["--timeout", "0", "--", "true"], "--timeout must be more than 0 seconds"),
        (["--workdir", "/no/such/dir", "--", "true"], "--workdir /no/such/dir is not a directory"),
        (
            ["--", "no-such-agent-command"],
            "cannot run 'no-such-agent-command': it is not on PATH; install it, or give its full "
            "path",
        ),
        (
            ["--", "/no/such/agent"],
            "cannot run '/no/such/agent': there is no executable file at /no/such/agent",
        ),
    ],
)
def test_bad_runner_arguments_are_one_line_naming_the_option(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = subprocess.run(
        [EXE, "agent", "run", *arguments],
        env=runner_env("http://127.0.0.1:9", tmp_path),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"nexus-bridge: error: {message}")


async def test_an_urgent_task_is_run_before_older_ones(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with bridge(make_settings, tmp_path) as (base, client), claude(base, tmp_path):
        busy = await send(client, "busy fake:sleep=60")
        await wait_for(lambda: pids(tmp_path), what="the first command")
        older = await send(client, "older")
        urgent = await send(client, "urgent", urgent=True)
        await call(client, "cancel_message", {"id": busy})
        await wait_status(client, older, "complete")
        await wait_status(client, urgent, "complete")
    runs = [json.loads(line) for line in (tmp_path / "claude.log").read_text().splitlines()]
    assert [run["prompt"] for run in runs] == ["busy fake:sleep=60", "urgent", "older"]


async def test_a_database_that_refuses_writes_for_a_while_holds_the_runner_up_not_stops_it(
    make_settings: Callable[..., Settings], tmp_path: Path, migrated_postgres_url: str
) -> None:
    """The database under the bridge turns read-only while a command runs (as a full disk, or a
    PostgreSQL failover, would): the runner keeps trying its calls instead of exiting, and the
    task completes once writes work again; so does the next one."""
    settings = make_settings(config_file=two_targets(tmp_path), database_url=migrated_postgres_url)
    async with (
        running_server(settings) as (url, _),
        mcp_client(url) as client,
        claude(url.removesuffix("/mcp"), tmp_path) as proc,
    ):
        task_id = await send(client, "restart jellyfin fake:sleep=2")
        await wait_status(client, task_id, "in_progress")
        await postgres_refuses_writes(migrated_postgres_url)
        await wait_for(
            lambda: (
                "the database cannot be written" in proc.output()
                and pids(tmp_path)
                and not any(alive(p) for p in pids(tmp_path))
            ),
            what="the command to end while the runner's calls are refused",
        )
        assert proc.process.poll() is None, proc.output()
        await postgres_refuses_writes(migrated_postgres_url, refuse=False)
        finished = await wait_status(client, task_id, "complete", "error")
        assert finished["status"] == "complete", finished
        later = await send(client, "and the next one")
        await wait_status(client, later, "complete")
        assert proc.process.poll() is None, proc.output()


@asynccontextmanager
async def answer_lost_once(upstream: str, tool: str) -> AsyncIterator[tuple[str, list[str]]]:
    """A proxy in front of the bridge at ``upstream`` (``http://host:port``) that hands every
    request on, and relays every answer but one: that to the first call of ``tool``, which the
    bridge carries out and whose answer it throws away, closing the connection (a reverse
    proxy's timeout, a reset). Yields its own URL, and a list that gets ``tool`` once dropped."""
    host, port = upstream.removeprefix("http://").rsplit(":", 1)
    dropped: list[str] = []

    async def read_request(reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        lines = []
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
            if line and not line.lower().startswith(b"connection:"):
                lines.append(line)
        body = await reader.readexactly(length) if length else b""
        return b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body

    handlers: set[asyncio.Task[Any]] = set()

    async def handle(client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        assert current is not None
        handlers.add(current)
        writers = [client_out]
        try:
            request = await read_request(client_in)
            bridge_in, bridge_out = await asyncio.open_connection(host, int(port))
            writers.append(bridge_out)
            bridge_out.write(request)
            await bridge_out.drain()
            answer = await bridge_in.read()  # to the end: the bridge closes (Connection: close)
            if f'"{tool}"'.encode() in request and not dropped:
                dropped.append(tool)  # carried out; its answer is lost on the way back
            else:
                client_out.write(answer)
                await client_out.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            handlers.discard(current)
            for writer in writers:
                writer.close()
                with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                    await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", dropped
    finally:
        server.close()
        for handler in set(handlers):  # a long poll still waiting on the bridge
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.parametrize("tool", ["start_task", "ask_question"])
async def test_a_call_done_by_the_bridge_whose_answer_was_lost_is_not_done_twice_or_dropped(
    make_settings: Callable[..., Settings], tmp_path: Path, tool: str
) -> None:
    """The runner tries the call again; the bridge refuses the move the first try made ("from
    in_progress to in_progress"). The runner carried on only if the task had been its own
    start: otherwise it dropped the task, or crashed its handler, and the task stayed
    in_progress for good."""
    async with (
        bridge(make_settings, tmp_path) as (base, client),
        answer_lost_once(base, tool) as (proxy, dropped),
        runner(proxy, tmp_path, "--claude") as proc,
    ):
        task_id = await send(client, "restart jellyfin fake:question")
        await wait_status(client, task_id, "input_required")
        assert dropped == [tool]
        # The runner has tried again (and been refused) before the client answers.
        await wait_for(
            lambda: "waiting for the answer" in proc.output() or "Traceback" in proc.output(),
            what="the runner waiting for the answer",
        )
        await call(client, "reply_to_task", {"id": task_id, "text": "tonight"})
        await wait_status(client, task_id, "complete")
        updates = await updates_of(client, task_id)
        assert ("agent", "Resuming with: tonight") in updates
        assert updates.count(("agent", "[Question] Restart jellyfin now, or tonight?")) == 1
    runs = [json.loads(line) for line in (tmp_path / "claude.log").read_text().splitlines()]
    assert len(runs) == 2  # the question's run, then the answer's: nothing run twice
    assert "done by the try whose answer was lost" in proc.output()
    assert "Traceback" not in proc.output()


async def test_stopped_while_the_bridge_is_away_the_runner_exits_and_its_next_start_reports(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A command finishes while the bridge is down; the runner is told to stop (systemd): it
    exits instead of retrying for ever, and its next start reports the task complete, not
    "the runner restarted while this task ran"."""
    port = free_port()
    settings = make_settings(config_file=two_targets(tmp_path), shutdown_grace_seconds=0.5)
    base = f"http://127.0.0.1:{port}"
    proc = start_runner(base, tmp_path, "--claude", "--grace", "1")
    try:
        async with running_server(settings, port=port) as (url, _), mcp_client(url) as client:
            task_id = await send(client, "restart jellyfin fake:sleep=2")
            await wait_status(client, task_id, "in_progress")
        await wait_for(
            lambda: pids(tmp_path) and not any(alive(p) for p in pids(tmp_path)),
            what="the command to finish while the bridge is away",
        )
        proc.stop()
        assert await asyncio.to_thread(proc.process.wait, DEADLINE) == 0, proc.output()
        assert "not reported yet" in proc.output()
    finally:
        proc.stop(signal.SIGKILL)
        await asyncio.to_thread(proc.process.wait)
    async with (
        running_server(settings, port=port) as (url, _),
        mcp_client(url) as client,
        runner(base, tmp_path, "--claude", name="again") as again,
    ):
        finished = await wait_status(client, task_id, "complete", "error")
        assert finished["status"] == "complete", (finished, again.output())
        assert "reporting how it ended before the restart" in again.output()
