"""The agent runner: claims a target's tasks over the direct agent API and runs a command for each.

``nexus-bridge agent run -- COMMAND`` (or ``--claude`` for Claude Code) is a long-running loop:
claim a task (``next_task``, long-polling), start it, run COMMAND in its own process group with
the task text on stdin, turn its output into progress updates, and finish the task from the exit
status. A cancelled task's command is stopped (SIGTERM to the group, SIGKILL after a grace
period). With ``--format claude`` a final answer that opens with ``[Question]`` is asked, and the
client's answer resumes the same Claude session.

The runner talks to the bridge only through :func:`nexus_bridge.agent_client.call_agent_tool`;
the bridge being unreachable is retried with backoff, never fatal. The tasks it has in hand are
kept in a small state directory (one JSON file per task: its Claude session, the process group
running it), so a runner that restarts after a crash finds them; the Claude session is also kept
with the task on the bridge (``agent_session``), where a restarted runner finds it when its own
state lacks it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from nexus_bridge import config
from nexus_bridge.agent_client import AgentClient
from nexus_bridge.claude_stream import EventKind, parse_line
from nexus_bridge.constants import CLAUDE_PROGRAM, PRIVATE_DIRECTORY_MODE
from nexus_bridge.domain import TaskStatus
from nexus_bridge.errors import (
    AnotherTarget,
    BridgeTroubled,
    BridgeUnreachable,
    ConfigError,
    NexusBridgeError,
    TaskNotFound,
)
from nexus_bridge.protocol import parse_agent_message, short_id

logger = logging.getLogger("nexus_bridge.runner")

CLAUDE_COMMAND: Final = (CLAUDE_PROGRAM, "-p", "--output-format", "stream-json", "--verbose")
RESUME_FLAG: Final = "--resume"
CLAIM_WAIT_SECONDS: Final = 25.0  # one next_task long poll
WATCH_SECONDS: Final = 0.5  # how often a running task is checked for cancel (and kept alive)
ANSWER_POLL_SECONDS: Final = 2.0  # how often a task waiting for the client looks for its answer
KILL_GRACE_SECONDS: Final = 1.0  # SIGTERM → SIGKILL; with WATCH_SECONDS, a cancel stops in < 2 s
DRAIN_SECONDS: Final = 30.0  # on SIGTERM, how long running commands may still finish
COALESCE_SECONDS: Final = 2.0  # at most one progress update this often, per task
MAX_UPDATE_CHARS: Final = 3_000  # an update longer than this keeps its tail, with a note
MAX_SUMMARY_CHARS: Final = 3_000
MAX_LINE_BYTES: Final = 1 << 20  # a longer output line is cut (bounded memory)
STDERR_TAIL_LINES: Final = 20
MAX_STDERR_LINE_CHARS: Final = 500
SUMMARY_TAIL_LINES: Final = 20
READER_DRAIN_SECONDS: Final = 1.0  # a grandchild holding stdout open does not hold the task
BACKOFF_FIRST_SECONDS: Final = 0.5
BACKOFF_MAX_SECONDS: Final = 10.0
# Once the runner aborts, how long its task handlers get to stop their commands and try the
# bridge once more; the rest are cancelled (their state files stay for the next start).
ABORT_SECONDS: Final = 10.0
ENV_TASK_ID: Final = f"{config.ENV_PREFIX}TASK_ID"
ENV_TASK_TAG: Final = f"{config.ENV_PREFIX}TASK_TAG"
ENV_URL: Final = f"{config.ENV_PREFIX}URL"
ENV_TOKEN: Final = f"{config.ENV_PREFIX}AGENT_TOKEN"
RESTARTED_REASON: Final = "the runner restarted while this task ran"
STOPPED_REASON: Final = "the runner was stopped (SIGTERM) before the command finished"
RESUME_PROMPT: Final = (
    "The runner that ran you was restarted while you worked on this task. Check what was "
    "already done, then carry on and finish it."
)


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    CLAUDE = "claude"


@dataclass(frozen=True, slots=True)
class RunnerOptions:
    """What ``nexus-bridge agent run`` was asked to do."""

    command: tuple[str, ...]
    bridge_url: str
    token: str
    output: OutputFormat = OutputFormat.TEXT
    target: str | None = None
    concurrency: int = 1
    timeout: float | None = None
    workdir: Path | None = None
    state_dir: Path = field(default_factory=config.default_runner_state_dir)
    drain_seconds: float = DRAIN_SECONDS
    kill_grace: float = KILL_GRACE_SECONDS
    watch_seconds: float = WATCH_SECONDS
    answer_poll_seconds: float = ANSWER_POLL_SECONDS
    coalesce_seconds: float = COALESCE_SECONDS
    claim_wait: float = CLAIM_WAIT_SECONDS


class Ending(enum.Enum):
    DONE = "done"
    FAILED = "failed"
    QUESTION = "question"
    ENDED_ELSEWHERE = "ended elsewhere"  # cancelled by the client (or ended by someone else)
    ABORTED = "aborted"  # the runner is stopping


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of the command ended."""

    ending: Ending
    text: str = ""
    session_id: str | None = None


@dataclass(slots=True)
class TaskState:
    """What the runner keeps on disk about a task in hand."""

    task_id: str
    runner_pid: int = field(default_factory=os.getpid)
    runner_started: str | None = field(default_factory=lambda: _process_started(os.getpid()))
    session_id: str | None = None
    pgid: int | None = None
    pgid_started: str | None = None
    waiting_cursor: str | None = None  # set while the task waits for the client's answer
    # Once the command has ended, how (an Ending's value) and its summary or error, until the
    # bridge has been told: a runner that could not tell it leaves this for the next one.
    ending: str | None = None
    summary: str = ""


# --- the bridge, with retries --------------------------------------------------------------


# Whether a call's first try, unanswered, was carried out: judged from the task as it is now.
Landed = Callable[[dict[str, Any]], bool]


class Bridge:
    """Tool calls on ``/agent/mcp``; an unreachable bridge, or one in trouble on its side (its
    database away, busy or full), is retried with backoff until ``give_up`` is set."""

    def __init__(self, client: AgentClient, give_up: asyncio.Event | None = None) -> None:
        self._client = client
        self._give_up = give_up or asyncio.Event()

    async def call(
        self, tool: str, *, landed: Landed | None = None, **arguments: Any
    ) -> dict[str, Any]:
        """The tool's result, once the bridge answers (however long that takes).

        A try whose answer never came may still have been carried out (the answer lost on the
        way back: a proxy's timeout, a reset): the call is tried again, and a move of the task
        that the first try made is then refused. ``landed`` tells, from the task as it is now
        (``id``'s), that the first try made it: the call then returns that task.

        Raises:
            NexusBridgeError: the tool refused the call.
            AgentTokenRefused: the token is wrong (retrying would not help).
            BridgeUnreachable, BridgeTroubled: the last failure, once ``give_up`` is set.
        """
        delay = BACKOFF_FIRST_SECONDS
        unanswered = False
        while True:
            try:
                return await self._client.call(tool, arguments)
            except (BridgeUnreachable, BridgeTroubled) as exc:
                if self._give_up.is_set():
                    raise
                unanswered = True
                logger.warning("%s: %s; retrying in %.1f s", tool, exc, delay)
            except NexusBridgeError:
                if unanswered and landed is not None:
                    task = await self.task(str(arguments["id"]))
                    if task is not None and landed(task):
                        logger.info("%s: done by the try whose answer was lost", tool)
                        return task
                raise
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._give_up.wait()  # a last try at once, then it raises
            delay = min(delay * 2, BACKOFF_MAX_SECONDS)

    async def task(self, task_id: str, **arguments: Any) -> dict[str, Any] | None:
        """The task as its agent sees it (a heartbeat, which also keeps its claim; with
        ``session=...`` it records the Claude session); None if unknown."""
        try:
            return await self.call("heartbeat", id=task_id, **arguments)
        except NexusBridgeError as exc:
            if _NOT_FOUND in str(exc):  # another target's task, or gone
                return None
            raise

    async def status(self, task_id: str) -> TaskStatus | None:
        """The task's status (a heartbeat, which also keeps its claim); None if unknown."""
        task = await self.task(task_id)
        return TaskStatus(task["status"]) if task is not None else None


_NOT_FOUND: Final = str(TaskNotFound("x")).partition("'")[0]  # "no task with id "


def _started_by(claim_expires_at: Any) -> Landed:
    """Whether a task was started under the claim that lapses at ``claim_expires_at``: started
    before then (another agent can claim it only once that claim has lapsed)."""

    def landed(task: dict[str, Any]) -> bool:
        started, until = task.get("started_at"), claim_expires_at
        if task.get("status") != TaskStatus.IN_PROGRESS.value or not started or not until:
            return False
        try:
            return datetime.fromisoformat(str(started)) < datetime.fromisoformat(str(until))
        except (ValueError, TypeError):  # not two aware times: it cannot be told, so not ours
            return False

    return landed


# --- state on disk ---------------------------------------------------------------------------


class StateDir:
    """One JSON file per task in hand; written whole, by rename, so a crash never halves one."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, state: TaskState) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIRECTORY_MODE)
        final = self.path / f"{state.task_id}.json"
        partial = final.with_suffix(".tmp")
        partial.write_text(json.dumps(dataclasses.asdict(state)))
        partial.replace(final)

    def remove(self, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / f"{task_id}.json").unlink()

    def load_all(self) -> list[TaskState]:
        states = []
        for file in sorted(self.path.glob("*.json")) if self.path.is_dir() else []:
            try:
                data = json.loads(file.read_text())
                states.append(TaskState(**data))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("ignoring the runner state file %s: %s", file, exc)
        return states


def _process_started(pid: int) -> str | None:
    """The process's start time (Linux ``/proc``), so a recorded pid is never mistaken for a
    later process that reused it; None when there is no such live process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    if fields[0] == "Z":  # dead, not yet reaped by its parent
        return None
    return fields[19]  # field 22 of proc(5), counting from the state (field 3)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- output ----------------------------------------------------------------------------------


class Progress:
    """Progress lines, coalesced into updates: at most one every ``interval`` seconds (the first
    at once), each at most ``MAX_UPDATE_CHARS`` (a longer one keeps its tail, with a note)."""

    def __init__(self, post: Callable[[str], Awaitable[None]], interval: float) -> None:
        self._post = post
        self._interval = interval
        self._lines: list[str] = []
        self._chars = 0
        self._dropped = 0
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._last = -interval
        self._task = asyncio.create_task(self._run())

    def add(self, line: str) -> None:
        if len(line) > MAX_UPDATE_CHARS:
            line = line[: MAX_UPDATE_CHARS - 1] + "…"
        self._lines.append(line)
        self._chars += len(line) + 1
        # Bounded memory: whatever would be trimmed anyway is dropped now.
        while self._chars > MAX_UPDATE_CHARS and len(self._lines) > 1:
            self._chars -= len(self._lines.pop(0)) + 1
            self._dropped += 1
        self._wake.set()

    def unsay(self, line: str) -> None:
        """Take back ``line`` if it is the last one and not posted yet."""
        if self._lines and self._lines[-1] == line:
            self._chars -= len(self._lines.pop()) + 1

    def drop(self) -> None:
        """Forget what is not posted yet."""
        self._lines, self._chars, self._dropped = [], 0, 0

    async def close(self) -> None:
        """Post what is left, then stop."""
        self._closing.set()
        self._wake.set()
        await self._task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            wait = self._last + self._interval - loop.time()
            if wait > 0 and not self._closing.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), wait)
            if self._lines:
                text = self._take()
                self._last = loop.time()
                try:
                    await self._post(text)
                except NexusBridgeError as exc:  # e.g. the task was cancelled meanwhile
                    logger.info("progress update not posted: %s", exc)
            if self._closing.is_set() and not self._lines:
                return

    def _take(self) -> str:
        text = "\n".join(self._lines)
        if len(text) > MAX_UPDATE_CHARS:
            text = "…" + text[-(MAX_UPDATE_CHARS - 1) :]
        if self._dropped:
            text = f"… ({self._dropped} earlier lines left out)\n{text}"
        self._lines, self._chars, self._dropped = [], 0, 0
        return text


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """The stream's lines, decoded; a line longer than ``MAX_LINE_BYTES`` is cut there."""
    buffer = b""
    skipping = False
    while chunk := await stream.read(1 << 16):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for raw in complete:
            if skipping:
                skipping = False
                continue
            yield raw.decode("utf-8", "replace").rstrip("\r")
        if len(buffer) > MAX_LINE_BYTES:
            if not skipping:
                yield buffer[:MAX_LINE_BYTES].decode("utf-8", "replace")
            buffer, skipping = b"", True
    if buffer and not skipping:
        yield buffer.decode("utf-8", "replace")


@dataclass(slots=True)
class Transcript:
    """What one run of the command said, read as ``output`` says."""

    output: OutputFormat
    progress: Progress
    on_session: Callable[[str], None]  # the session id, as soon as it is known
    session_id: str | None = None
    result_text: str | None = None
    result_error: bool = False
    last_text: str = ""
    stdout_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=SUMMARY_TAIL_LINES)
    )
    stderr_tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=STDERR_TAIL_LINES)
    )

    def stdout(self, line: str) -> None:
        if self.output is OutputFormat.TEXT:
            if line.strip():
                self.progress.add(line)
                self.stdout_tail.append(line[:MAX_SUMMARY_CHARS])
            return
        for event in parse_line(line):
            if event.kind is EventKind.INIT:
                self.session_id = event.session_id
                if event.session_id:
                    self.on_session(event.session_id)
            elif event.kind is EventKind.TEXT:
                self.progress.add(event.text)
                self.last_text = event.text
            elif event.kind is EventKind.TOOL:
                self.progress.add(event.text)
            else:
                self.progress.unsay(event.text)  # the final answer comes as the summary
                self.result_text = event.text
                self.result_error = event.is_error
                self.session_id = event.session_id or self.session_id

    def stderr(self, line: str) -> None:
        self.stderr_tail.append(line[:MAX_STDERR_LINE_CHARS])

    def summary(self) -> str:
        if self.output is OutputFormat.CLAUDE:
            text = self.result_text or self.last_text
        else:
            text = "\n".join(self.stdout_tail)
        return _clip(text.strip()) or "done (the command printed nothing)"

    def failure(self, what: str) -> str:
        parts = [what]
        if self.result_error and self.result_text:
            parts.append(self.result_text)
        if self.stderr_tail:
            parts.append("stderr:\n" + "\n".join(self.stderr_tail))
        return _clip("\n".join(parts))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_SUMMARY_CHARS else "…" + text[-(MAX_SUMMARY_CHARS - 1) :]


# --- the runner ------------------------------------------------------------------------------


class _Shelved(Exception):
    """The runner stops while the task waits for the client: its state stays on disk."""


class Runner:
    """Claims tasks and runs the command for each, up to ``concurrency`` at once."""

    def __init__(self, options: RunnerOptions) -> None:
        self.options = options
        self._client = AgentClient(options.bridge_url, options.token)
        self._stop = asyncio.Event()
        self._abort = asyncio.Event()
        # Once the runner aborts (stopping, past the drain), an absent bridge is not waited for.
        self.bridge = Bridge(self._client, give_up=self._abort)
        state_dir = options.state_dir / options.target if options.target else options.state_dir
        self.states = StateDir(state_dir)
        self._slots = asyncio.Semaphore(options.concurrency)
        self._slot_wanted = asyncio.Event()
        self._slot_waiters = 0
        self._handlers: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Take tasks until ``stop`` is set; then let running commands finish for up to
        ``drain_seconds``, and fail what is left.

        Raises:
            AgentTokenRefused: the bridge refuses the token.
        """
        async with self._client:
            self._stop = stop
            try:
                await self._until_stop(self.recover())  # it may wait for an absent bridge
                await self._take_tasks()
            except BaseException:
                stop.set()
                self._abort.set()  # a fatal error: stop the commands now, leave nothing running
                raise
            finally:
                await self._drain()
                for recording in set(self._background):  # the bridge may be gone for good
                    recording.cancel()
                await asyncio.gather(*self._background, return_exceptions=True)

    async def _take_tasks(self) -> None:
        stop = self._stop
        while not stop.is_set():
            if not await self._until_stop(self._slots.acquire()):
                break
            # A task to resume (its question answered, or left by a restart) gets the slot
            # first, rather than wait out a long poll.
            self._slot_wanted.clear()
            if self._slot_waiters:
                self._slots.release()
                await asyncio.sleep(0)  # the waiter (first in line) takes it
                continue
            task = await self._until_stop(self._claim(), also=self._slot_wanted)
            if not task or task.get("task") is None:
                self._slots.release()
                continue
            self._check_target(task["task"])
            self._spawn(self._begin(task["task"]))

    async def _claim(self) -> dict[str, Any]:
        """``next_task``; with ``--target``, naming it, so that a token for another target
        claims nothing and stops the runner at once.

        Raises:
            ConfigError: the agent token is for another target than ``--target``.
        """
        arguments: dict[str, Any] = {"wait_seconds": self.options.claim_wait}
        if self.options.target is not None:
            arguments["target"] = self.options.target
        try:
            return await self.bridge.call("next_task", **arguments)
        except NexusBridgeError as exc:
            theirs = AnotherTarget.target_in(str(exc))
            if theirs is None:
                raise
            raise ConfigError(self._another_target(theirs)) from None

    def _check_target(self, task: dict[str, Any]) -> None:
        """Refuse to run another target's tasks (its claim lapses back to the queue): a bridge
        too old to check ``next_task``'s ``target`` itself."""
        if self.options.target is not None and task["target"] != self.options.target:
            raise ConfigError(self._another_target(repr(task["target"])))

    def _another_target(self, theirs: str) -> str:
        return (
            f"--target is {self.options.target!r} but the agent token ({ENV_TOKEN}) is for "
            f"target {theirs}"
        )

    async def _until_stop(self, work: Awaitable[Any], also: asyncio.Event | None = None) -> Any:
        """``work``'s result, or None once the runner is told to stop (or ``also`` is set):
        ``work`` is then cancelled (an abandoned next_task claims nothing)."""
        job = asyncio.ensure_future(work)
        interrupts = [asyncio.ensure_future(self._stop.wait())]
        if also is not None:
            interrupts.append(asyncio.ensure_future(also.wait()))
        await asyncio.wait({job, *interrupts}, return_when=asyncio.FIRST_COMPLETED)
        for interrupt in interrupts:
            interrupt.cancel()
        if job.done():
            return job.result()
        job.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job
        return None

    def _spawn(self, work: Awaitable[None]) -> None:
        handler = asyncio.ensure_future(work)
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        handler.add_done_callback(_log_crash)

    async def _drain(self) -> None:
        if self._handlers:
            logger.info(
                "stopping: %d task(s) in hand; running commands get %.0f s to finish",
                len(self._handlers),
                self.options.drain_seconds,
            )
            _, left = await asyncio.wait(set(self._handlers), timeout=self.options.drain_seconds)
            if left:
                self._abort.set()  # commands are stopped; the bridge is tried once more
                _, left = await asyncio.wait(left, timeout=ABORT_SECONDS)
                for handler in left:  # its state file stays: the next runner sees to it
                    handler.cancel()
                await asyncio.gather(*left, return_exceptions=True)

    # --- one task --------------------------------------------------------------------------

    async def _begin(self, task: dict[str, Any]) -> None:
        state = TaskState(task_id=task["id"])
        self.states.save(state)  # before start_task: a crash after it leaves a record
        try:
            await self.bridge.call(
                "start_task", id=state.task_id, landed=_started_by(task.get("claim_expires_at"))
            )
        except NexusBridgeError as exc:
            logger.warning("could not start task %s: %s", state.task_id, exc)
            self.states.remove(state.task_id)
            self._slots.release()
            return
        logger.info("task %s: started", state.task_id)
        await self._work(state, task["content"], slot_held=True)

    async def _work(self, state: TaskState, prompt: str | None, *, slot_held: bool) -> None:
        """Run the command for the task until it ends (answering questions on the way).
        ``prompt`` None: the task first waits for the client's answer."""
        keep_state = False
        try:
            while True:
                if prompt is None:
                    prompt = await self._wait_for_answer(state)
                    if prompt is None:
                        return
                if not slot_held:
                    await self._take_slot()
                try:
                    outcome = await self._run_command(state, prompt)
                finally:
                    self._slots.release()
                    slot_held = False
                state.session_id = outcome.session_id or state.session_id
                if outcome.ending is Ending.QUESTION:
                    await self._ask(state, outcome.text)
                    prompt = None
                    continue
                state.ending, state.summary = outcome.ending.value, outcome.text
                self.states.save(state)  # the command's result outlives this runner
                keep_state = not await self._finish(state.task_id, outcome)
                return
        except _Shelved:
            keep_state = True
            logger.info("task %s waits for an answer; a restarted runner resumes it", state.task_id)
        except asyncio.CancelledError:
            keep_state = True  # cut short as the runner stops: its next start sees to the task
            raise
        finally:
            if slot_held:
                self._slots.release()
            if not keep_state:
                self.states.remove(state.task_id)

    async def _take_slot(self) -> None:
        """Wait for a free slot (``concurrency``).

        Raises:
            _Shelved: the runner is stopping.
        """
        self._slot_waiters += 1
        self._slot_wanted.set()
        try:
            if not await self._until_stop(self._slots.acquire()):
                raise _Shelved
        finally:
            self._slot_waiters -= 1

    async def _finish(self, task_id: str, outcome: Outcome) -> bool:
        """Tell the bridge how the task ended; False if it could not be told (the runner is
        stopping and the bridge is away or in trouble): the next runner tells it."""
        try:
            if outcome.ending is Ending.DONE:
                await self.bridge.call("complete_task", id=task_id, summary=outcome.text)
            elif outcome.ending in (Ending.FAILED, Ending.ABORTED):
                await self.bridge.call("fail_task", id=task_id, error=outcome.text)
        except (BridgeUnreachable, BridgeTroubled) as exc:
            logger.warning(
                "task %s: %s, not reported yet (%s); the runner's next start reports it",
                task_id,
                outcome.ending.value,
                exc,
            )
            return False
        except NexusBridgeError as exc:  # e.g. cancelled just as the command finished
            logger.info("task %s: not finished by the runner: %s", task_id, exc)
            return True
        logger.info("task %s: %s", task_id, outcome.ending.value)
        return True

    async def _ask(self, state: TaskState, question: str) -> None:
        replies = await self.bridge.call("get_replies", id=state.task_id)
        state.waiting_cursor = str(replies["next_cursor"])
        await self.bridge.call(
            "ask_question",
            id=state.task_id,
            text=question,
            landed=lambda now: now["status"] == TaskStatus.INPUT_REQUIRED.value,
        )
        self.states.save(state)
        logger.info("task %s: asked the client; waiting for the answer", state.task_id)

    async def _wait_for_answer(self, state: TaskState) -> str | None:
        """The client's answer, or None once the task ended (cancelled).

        Raises:
            _Shelved: the runner is stopping.
        """
        while True:
            if self._stop.is_set():
                raise _Shelved
            status = await self.bridge.status(state.task_id)
            if status is None or status.is_terminal:
                return None
            arguments: dict[str, Any] = {"id": state.task_id}
            if state.waiting_cursor is not None:
                arguments["cursor"] = state.waiting_cursor
            page = await self.bridge.call("get_replies", **arguments)
            answers = [str(r["content"]) for r in page["replies"]]
            if answers:
                state.waiting_cursor = None
                self.states.save(state)
                return "\n\n".join(answers)
            await self._until_stop(asyncio.sleep(self.options.answer_poll_seconds))

    # --- one run of the command ------------------------------------------------------------

    def _argv(self, state: TaskState) -> list[str]:
        argv = list(self.options.command)
        if self.options.output is OutputFormat.CLAUDE and state.session_id:
            argv += [RESUME_FLAG, state.session_id]
        return argv

    async def _run_command(self, state: TaskState, prompt: str) -> Outcome:
        argv = self._argv(state)
        env = config.child_environment(
            {
                ENV_TASK_ID: state.task_id,
                ENV_TASK_TAG: short_id(state.task_id),
                ENV_URL: self.options.bridge_url,
                ENV_TOKEN: self.options.token,
            }
        )
        pipe = asyncio.subprocess.PIPE
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=pipe,
                stdout=pipe,
                stderr=pipe,
                cwd=self.options.workdir,
                env=env,
                start_new_session=True,  # its own process group: a cancel stops all of it
            )
        except OSError as exc:
            return Outcome(Ending.FAILED, f"cannot start {argv[0]!r}: {exc.strerror or exc}")
        state.pgid, state.pgid_started = process.pid, _process_started(process.pid)
        self.states.save(state)
        logger.info("task %s: running %s (pid %d)", state.task_id, argv[0], process.pid)

        async def post(text: str) -> None:
            await self.bridge.call("post_update", id=state.task_id, text=text)

        def keep_session(session_id: str) -> None:  # a restarted runner can resume it
            state.session_id = session_id
            self.states.save(state)
            recording = asyncio.ensure_future(self._record_session(state.task_id, session_id))
            self._background.add(recording)
            recording.add_done_callback(self._background.discard)
            recording.add_done_callback(_log_crash)

        progress = Progress(post, self.options.coalesce_seconds)
        transcript = Transcript(self.options.output, progress, keep_session)
        readers = [
            asyncio.create_task(_feed(process, prompt)),
            asyncio.create_task(_read(process.stdout, transcript.stdout)),
            asyncio.create_task(_read(process.stderr, transcript.stderr)),
        ]
        stopped = await self._supervise(state.task_id, process)
        _, stuck = await asyncio.wait(readers, timeout=READER_DRAIN_SECONDS)
        if stuck:  # something it started still holds its output open
            _kill_group(process.pid, signal.SIGKILL)
            await asyncio.wait(stuck)
        if stopped == "ended":
            progress.drop()  # the client cancelled: what the command said since is not news
        await progress.close()
        state.pgid = state.pgid_started = None
        return self._outcome(process.returncode, stopped, transcript)

    async def _record_session(self, task_id: str, session_id: str) -> None:
        """Keep the Claude session with the task on the bridge too (``agent_session``), so a
        runner that lost this one's state directory can still resume it."""
        try:
            await self.bridge.task(task_id, session=session_id)
        except NexusBridgeError as exc:
            logger.warning("task %s: could not record its Claude session: %s", task_id, exc)

    async def _supervise(self, task_id: str, process: asyncio.subprocess.Process) -> str | None:
        """Wait for the command to exit; stop it on cancel, timeout or runner abort. What
        stopped it, if anything."""
        exited = asyncio.create_task(process.wait())
        ended = asyncio.create_task(self._until_ended(task_id))
        aborted = asyncio.create_task(self._abort.wait())
        await asyncio.wait(
            {exited, ended, aborted}, timeout=self.options.timeout, return_when="FIRST_COMPLETED"
        )
        for watcher in (ended, aborted):
            watcher.cancel()
        if exited.done():
            return None
        reason = "ended" if ended.done() else "aborted" if aborted.done() else "timeout"
        logger.info("task %s: stopping its command (%s)", task_id, reason)
        _kill_group(process.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), self.options.kill_grace)
        # The leader may be gone while others of its group linger: they go too.
        _kill_group(process.pid, signal.SIGKILL)
        await exited
        return reason

    async def _until_ended(self, task_id: str) -> None:
        """Return once the task has ended without us (the client cancelled it); heartbeats on
        the way keep it alive."""
        while True:
            await asyncio.sleep(self.options.watch_seconds)
            try:
                status = await self.bridge.status(task_id)
            except NexusBridgeError as exc:
                logger.warning("task %s: heartbeat refused: %s", task_id, exc)
                continue
            if status is None or status.is_terminal:
                return

    def _outcome(self, code: int | None, stopped: str | None, transcript: Transcript) -> Outcome:
        session = transcript.session_id
        if stopped == "ended":
            return Outcome(Ending.ENDED_ELSEWHERE, session_id=session)
        if stopped == "aborted":
            return Outcome(Ending.ABORTED, transcript.failure(STOPPED_REASON), session)
        if stopped == "timeout":
            what = f"timed out after {self.options.timeout:g} s; the command was stopped"
            return Outcome(Ending.FAILED, transcript.failure(what), session)
        if code != 0:
            return Outcome(Ending.FAILED, transcript.failure(f"exit code {code}"), session)
        if transcript.result_error:
            return Outcome(
                Ending.FAILED, transcript.failure("Claude Code reported an error"), session
            )
        summary = transcript.summary()
        if (
            self.options.output is OutputFormat.CLAUDE
            and session
            and parse_agent_message(summary).status is TaskStatus.INPUT_REQUIRED
        ):
            return Outcome(Ending.QUESTION, summary, session)
        return Outcome(Ending.DONE, summary, session)

    # --- after a restart -------------------------------------------------------------------

    async def recover(self) -> None:
        """Find the tasks a previous runner left in hand: resume the Claude sessions, fail the
        rest with ``RESTARTED_REASON``."""
        for state in self.states.load_all():
            other = state.runner_pid != os.getpid()
            if other and _process_started(state.runner_pid) == state.runner_started:
                continue  # a live runner's own task
            if state.pgid and _process_started(state.pgid) == state.pgid_started:
                _kill_group(state.pgid, signal.SIGKILL)  # what the crashed runner left running
            state.pgid = state.pgid_started = None
            task = await self.bridge.task(state.task_id)
            if task is None:
                continue  # not this token's task
            status = TaskStatus(task["status"])
            if status.is_terminal:
                self.states.remove(state.task_id)
                continue
            state.runner_pid, state.runner_started = os.getpid(), _process_started(os.getpid())
            if state.ending is not None:
                # Its command had ended; only the report was missing: make it now.
                self.states.save(state)
                logger.info("task %s: reporting how it ended before the restart", state.task_id)
                if await self._finish(state.task_id, Outcome(Ending(state.ending), state.summary)):
                    self.states.remove(state.task_id)
                continue
            # The local state may have lost it (or never saved it): the bridge keeps it too.
            state.session_id = state.session_id or task.get("agent_session")
            self.states.save(state)
            if self.options.output is OutputFormat.CLAUDE and state.session_id:
                waiting = status is TaskStatus.INPUT_REQUIRED or state.waiting_cursor is not None
                logger.info("task %s: resuming its Claude session after a restart", state.task_id)
                self._spawn(self._work(state, None if waiting else RESUME_PROMPT, slot_held=False))
                continue
            await self._finish(state.task_id, Outcome(Ending.FAILED, RESTARTED_REASON))
            self.states.remove(state.task_id)


async def _feed(process: asyncio.subprocess.Process, prompt: str) -> None:
    """The task text on the command's stdin, then end of file."""
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(prompt.encode())
        await process.stdin.drain()
        process.stdin.close()


async def _read(stream: asyncio.StreamReader | None, sink: Callable[[str], None]) -> None:
    assert stream is not None
    async for line in _lines(stream):
        sink(line)


def _log_crash(handler: asyncio.Task[None]) -> None:
    if not handler.cancelled() and handler.exception() is not None:
        exc = handler.exception()
        logger.error("a task handler failed: %s", exc, exc_info=exc)
