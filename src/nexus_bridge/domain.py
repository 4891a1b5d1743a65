"""Domain values of nexus-bridge: tasks, updates, statuses and the one transition table.

No I/O here: nothing in this module knows about SQL, MCP, HTTP or Telegram.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from nexus_bridge.errors import IllegalTransition, InvalidInput, TaskAlreadyEnded


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Stored as these lowercase words."""

    PENDING = "pending"
    ACKNOWLEDGED = "acknowledged"
    IN_PROGRESS = "in_progress"
    INPUT_REQUIRED = "input_required"  # the agent asked a question; the client answers
    COMPLETE = "complete"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


class UpdateKind(enum.StrEnum):
    """What an update row records."""

    STATUS = "status"  # a transition of the task, written by the bridge
    AGENT = "agent"  # text from the agent
    CLIENT = "client"  # the client's answer to the agent's question (reply_to_task)


TERMINAL_STATUSES: Final = frozenset({TaskStatus.COMPLETE, TaskStatus.ERROR, TaskStatus.CANCELLED})
OPEN_STATUSES: Final = tuple(s for s in TaskStatus if s not in TERMINAL_STATUSES)

# The one table that decides which status changes are legal. Moves go forward only; an agent may
# skip steps (one that says it is done is done); any open status may be cancelled. The agent may
# ask a question from any open status (input_required); an answer moves the task to in_progress.
TRANSITIONS: Final[Mapping[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.PENDING: frozenset(
        {TaskStatus.ACKNOWLEDGED, TaskStatus.IN_PROGRESS, TaskStatus.INPUT_REQUIRED}
        | TERMINAL_STATUSES
    ),
    TaskStatus.ACKNOWLEDGED: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.INPUT_REQUIRED} | TERMINAL_STATUSES
    ),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.INPUT_REQUIRED} | TERMINAL_STATUSES),
    TaskStatus.INPUT_REQUIRED: frozenset({TaskStatus.IN_PROGRESS} | TERMINAL_STATUSES),
    TaskStatus.COMPLETE: frozenset(),
    TaskStatus.ERROR: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}

# The one move backwards, made only by the bridge, never on anyone's request: a claim over the
# direct agent API is a lease, and a task claimed (acknowledged) but never started whose lease ran
# out goes back to pending, to be handed out again. A task in_progress is never re-run (its work
# may have had side effects): it stays put, and shows as stalled.
BRIDGE_TRANSITIONS: Final[Mapping[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.ACKNOWLEDGED: frozenset({TaskStatus.PENDING}),
}
CLAIM_EXPIRED_REASON: Final = "claim expired; back in the queue"


def can_transition(current: TaskStatus, new: TaskStatus, *, by_bridge: bool = False) -> bool:
    """Whether the transition table allows ``current`` → ``new`` (``by_bridge``: also the moves
    only the bridge itself makes, :data:`BRIDGE_TRANSITIONS`)."""
    if by_bridge and new in BRIDGE_TRANSITIONS.get(current, frozenset()):
        return True
    return new in TRANSITIONS[current]


def check_transition(current: TaskStatus, new: TaskStatus, *, by_bridge: bool = False) -> None:
    """Raise unless ``current`` → ``new`` is legal.

    Raises:
        TaskAlreadyEnded: the task is in a terminal status.
        IllegalTransition: the table forbids the move.
    """
    if current.is_terminal:
        raise TaskAlreadyEnded(
            f"the task already ended as {current.value}; it cannot become {new.value}"
        )
    if not can_transition(current, new, by_bridge=by_bridge):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current]))
        raise IllegalTransition(
            f"a task cannot go from {current.value} to {new.value}; from {current.value} it may "
            f"go to: {allowed}"
        )


# Which timestamp of a task a status change stamps, the first time the task reaches it.
STATUS_STAMPS: Final[Mapping[TaskStatus, str]] = {
    TaskStatus.ACKNOWLEDGED: "acknowledged_at",
    TaskStatus.IN_PROGRESS: "started_at",
    TaskStatus.COMPLETE: "ended_at",
    TaskStatus.ERROR: "ended_at",
    TaskStatus.CANCELLED: "ended_at",
}


def status_line(old: TaskStatus | None, new: TaskStatus, reason: str | None) -> str:
    """The text of the ``status`` update that records a change (``old`` None: a new task)."""
    line = f"status: {new.value}" if old is None else f"status: {old.value} → {new.value}"
    return f"{line} ({reason})" if reason else line


def normalize_content(text: str) -> str:
    """The task text as stored: outer whitespace trimmed, inner text verbatim."""
    return text.strip()


def content_hash(normalized: str) -> str:
    """SHA-256 of the normalized text: the dedup key (with the target)."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


MAX_INSTANT_CHARS: Final = 64
MAX_ID_CHARS: Final = 36  # a task id is a UUID
MAX_AGENT_SESSION_CHARS: Final = 200  # messages.agent_session (migration 0009)
AGENT_SESSION_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.:"
)
MAX_SHOWN_CHARS: Final = 40


def parse_instant(text: str, *, field: str) -> datetime:
    """Parse an ISO-8601 time; no offset means UTC.

    Raises:
        InvalidInput: the text is not an ISO-8601 time, or not one a UTC time can hold.
    """
    example = "2026-03-30T01:00:00Z"
    if len(text) > MAX_INSTANT_CHARS:
        raise InvalidInput(
            f"{field} must be an ISO-8601 time such as {example}, not {len(text)} characters"
        )
    candidate = text.strip()
    if candidate.endswith(("Z", "z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        value = datetime.fromisoformat(candidate)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except ValueError:
        raise InvalidInput(
            f"{field} must be an ISO-8601 time such as {example}, got {shown(text)}"
        ) from None
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise InvalidInput(f"{field} is out of range: {shown(text)} is not a time in UTC") from None


def shown(value: object) -> str:
    """``repr(value)``, cut short: how an error message quotes what it was given."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 1] + "…"


def check_storable(text: str, field: str) -> str:
    """``text`` if every database can store it: no NUL character, no lone surrogate.

    Raises:
        InvalidInput: naming ``field``.
    """
    if "\x00" in text:
        raise InvalidInput(f"{field} contains a NUL character (\\u0000); remove it")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{field} is not valid Unicode (it contains a lone surrogate); send plain text"
        ) from None
    return text


def check_task_id(value: str, field: str) -> str:
    """A task id as given (full, or its first 8+ characters), of a sane length.

    Raises:
        InvalidInput: empty, or longer than a task id.
    """
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidInput(
            f"{field} must be a task id ({MAX_ID_CHARS} characters) or its first 8 or more, "
            f"got {len(value)} characters"
        )
    return value


def check_agent_session(value: str, field: str = "session") -> str:
    """An agent's session id (e.g. Claude Code's): 1 to 200 of ``A-Z a-z 0-9 - _ . :``.

    Raises:
        InvalidInput: empty, too long, or another character.
    """
    if not value or len(value) > MAX_AGENT_SESSION_CHARS:
        raise InvalidInput(
            f"{field} must be 1 to {MAX_AGENT_SESSION_CHARS} characters, got {len(value)}"
        )
    if not AGENT_SESSION_CHARS.issuperset(value):
        raise InvalidInput(f"{field} may hold only letters, digits and - _ . :")
    return value


def first_line(text: str, max_chars: int = 120) -> str:
    """The first non-blank line of ``text``, shortened for summaries."""
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= max_chars else line[: max_chars - 1] + "…"
    return ""


@dataclass(frozen=True, slots=True)
class Task:
    """A task queued for an agent (a row of ``messages``)."""

    id: str
    target: str
    content: str
    status: TaskStatus
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    status_reason: str | None
    urgent: bool = False
    # While acknowledged through an agent-API claim: when the claim lapses (BRIDGE_TRANSITIONS).
    claim_expires_at: datetime | None = None
    # The agent's session for the task (Claude Code's session id), so another runner can resume.
    agent_session: str | None = None


class OutboxKind(enum.StrEnum):
    """What an outbox entry posts to the agent's chat."""

    TASK = "task"
    REPLY = "reply"
    CANCEL = "cancel"  # tells the agent to stop work on a task the client cancelled


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    SKIPPED = "skipped"  # the task ended before it was delivered


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One thing to post to the agent, with its delivery state."""

    id: int
    task_id: str
    kind: OutboxKind
    body: str
    reply_to_telegram_id: int | None
    state: OutboxState
    attempts: int
    parts_sent: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message received in the agent's chat, as journaled."""

    id: int
    chat_id: int
    telegram_message_id: int
    from_id: int | None
    reply_to_telegram_id: int | None
    text: str | None
    processed_at: datetime | None = None
    created_at: datetime | None = None  # when it was journaled


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds a singleton job, and until when."""

    name: str
    holder: str
    acquired_at: datetime
    expires_at: datetime
    epoch: int = 0
    health: str | None = None  # the holder's report on the service it talks to
    last_ok_at: datetime | None = None
    last_error: str | None = None
    error_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """One entry of the update stream; ``seq`` is its cursor position."""

    seq: int
    task_id: str | None
    kind: UpdateKind
    content: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """How many tasks are in each status, and what the agent is working on."""

    by_status: Mapping[TaskStatus, int]
    total_updates: int
    current_task: Task | None
    ignored_messages: int = 0


class Transport(enum.StrEnum):
    """How tasks reach a target's agent."""

    TELEGRAM = "telegram"  # posted through the outbox to the target's chat
    AGENT = "agent"  # claimed by the agent over the direct agent API


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """What the queue needs to know about a target: how its tasks leave, and how fast.

    Configuration builds it (``targets.Target.policy``); the domain only defines it.
    """

    name: str
    transport: Transport = Transport.TELEGRAM
    one_at_a_time: bool = False  # hand over the next task only when the current one ended
    description: str = ""

    def __post_init__(self) -> None:
        # A plain "telegram"/"agent" becomes the enum member; anything else is refused here.
        object.__setattr__(self, "transport", Transport(self.transport))

    @property
    def uses_outbox(self) -> bool:
        return self.transport is Transport.TELEGRAM


HANDED_OVER_STATUSES: Final = frozenset(
    {TaskStatus.ACKNOWLEDGED, TaskStatus.IN_PROGRESS, TaskStatus.INPUT_REQUIRED}
)


class TransportState:
    """What ``queue_status`` and ``/readyz`` say about the transport in this process."""

    NOT_CONFIGURED: Final = "not configured"
    STARTING: Final = "starting"
    POLLING: Final = "polling"  # this process holds the lease: it polls and delivers
    STANDBY: Final = "standby"  # another process polls; this one serves MCP only
    ERROR: Final = "error"
    STOPPED: Final = "stopped"
    # While polling: the last Bot API call failed (a network error, a timeout, a 5xx) ...
    UNREACHABLE: Final = "unreachable"
    # ... or Telegram refused it for a while (429) or another program polls the bot (409).
    DEGRADED: Final = "degraded"


@dataclass(frozen=True, slots=True)
class TransportReport:
    """How tasks reach the agent, as ``queue_status`` and ``/readyz`` report it."""

    name: str
    state: str  # "not configured", "starting", "polling", "standby", "error", "stopped"
    detail: str | None = None
    poller: str | None = None  # the process that holds the poller lease, if any
    this_process: str | None = None
    last_ok_at: datetime | None = None  # the last Bot API call that succeeded
    last_error: str | None = None  # the failure that has lasted since error_since, if any
    error_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    """The outcome of a send: a new task, or the open task it duplicates."""

    queued: bool
    task: Task


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a retention pass removed (or, on a dry run, would remove)."""

    tasks: int = 0
    updates: int = 0
    deliveries: int = 0
    journal: int = 0

    def __add__(self, other: PruneReport) -> PruneReport:
        return PruneReport(
            tasks=self.tasks + other.tasks,
            updates=self.updates + other.updates,
            deliveries=self.deliveries + other.deliveries,
            journal=self.journal + other.journal,
        )
