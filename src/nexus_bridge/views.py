"""The wire shapes of tasks, updates, targets, the transport, the queue figures and the OAuth
clients and token families: one view per shape, shared by the MCP tools, the CLI (its --json
output and its lines) and ``/readyz``."""

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, Field

from nexus_bridge.db.types import format_timestamp
from nexus_bridge.domain import QueueCounts, Task, TaskStatus, TaskUpdate, TransportReport
from nexus_bridge.queue import TargetSummary

if TYPE_CHECKING:  # oauth imports the MCP SDK, which the CLI loads only for its auth commands
    from nexus_bridge.oauth import OAuthClientView, TokenFamilyView

StatusName = Literal[
    "pending", "acknowledged", "in_progress", "input_required", "complete", "error", "cancelled"
]


def _iso(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


class UpdateOut(BaseModel):
    """One entry of the update stream."""

    seq: int = Field(description="Position in the stream; pass it as cursor to continue after it.")
    message_id: str | None = Field(description="The task this update belongs to, if any.")
    kind: Literal["status", "agent", "client"] = Field(
        description=(
            "status: the task changed status; agent: text the agent reported; client: an "
            "answer sent to the agent's question with reply_to_task."
        )
    )
    content: str
    created_at: str = Field(description="ISO-8601 UTC time with offset.")

    @classmethod
    def of(cls, update: TaskUpdate) -> Self:
        return cls(
            seq=update.seq,
            message_id=update.task_id,
            kind=update.kind.value,
            content=update.content,
            created_at=format_timestamp(update.created_at),
        )


class TaskOut(BaseModel):
    """A task and where it is in its life."""

    id: str
    target: str
    content: str
    status: StatusName
    status_reason: str | None = Field(description="Why it reached its status, when known.")
    urgent: bool
    stalled: bool = Field(
        default=False,
        description="With the agent (acknowledged/in_progress) but no agent activity for long.",
    )
    idle_seconds: float | None = Field(
        default=None, description="How long a stalled task has seen no agent activity."
    )
    created_at: str
    updated_at: str
    acknowledged_at: str | None
    started_at: str | None
    ended_at: str | None
    claim_expires_at: str | None = Field(
        default=None,
        description=(
            "While acknowledged through next_task: when the claim lapses and the task goes back "
            "to the queue, unless the agent calls again on it (start_task, post_update, "
            "ask_question, heartbeat, ...) first."
        ),
    )

    @classmethod
    def of(cls, task: Task, idle_seconds: float | None = None) -> Self:
        return cls(
            stalled=idle_seconds is not None,
            idle_seconds=round(idle_seconds, 1) if idle_seconds is not None else None,
            id=task.id,
            target=task.target,
            content=task.content,
            status=task.status.value,
            status_reason=task.status_reason,
            urgent=task.urgent,
            created_at=format_timestamp(task.created_at),
            updated_at=format_timestamp(task.updated_at),
            acknowledged_at=_iso(task.acknowledged_at),
            started_at=_iso(task.started_at),
            ended_at=_iso(task.ended_at),
            claim_expires_at=_iso(task.claim_expires_at),
        )


class AgentTaskOut(TaskOut):
    """A task as its agent sees it (the direct agent API): with the agent's own session."""

    agent_session: str | None = Field(
        default=None,
        description=(
            "The session you recorded for this task (heartbeat's session argument), e.g. Claude "
            "Code's session id, so whoever takes the task over can resume it; null if none."
        ),
    )

    @classmethod
    def of(cls, task: Task, idle_seconds: float | None = None) -> Self:
        base = TaskOut.of(task, idle_seconds)
        return cls(**base.model_dump(), agent_session=task.agent_session)


class TransportOut(BaseModel):
    name: str
    state: str = Field(
        description="not configured, starting, polling, unreachable or degraded (polling, but "
        "the Bot API fails or refuses calls), standby (another process polls), error."
    )
    detail: str | None
    poller: str | None = Field(description="The bridge process that polls Telegram, if any.")
    this_process: str | None
    last_ok_at: str | None = Field(
        default=None, description="When the poller's last Bot API call succeeded."
    )
    last_error: str | None = Field(
        default=None, description="The Bot API failure going on since error_since, if any."
    )
    error_since: str | None = None

    @classmethod
    def of(cls, report: TransportReport) -> Self:
        return cls(
            name=report.name,
            state=report.state,
            detail=report.detail,
            poller=report.poller,
            this_process=report.this_process,
            last_ok_at=report.last_ok_at.isoformat() if report.last_ok_at else None,
            last_error=report.last_error,
            error_since=report.error_since.isoformat() if report.error_since else None,
        )


class TargetOut(BaseModel):
    name: str
    description: str
    transport: Literal["telegram", "agent"]
    dispatch: Literal["immediate", "one_at_a_time"]
    reachable: bool = Field(description="Its agent was seen recently (a message or an API call).")
    last_seen_at: str | None
    pending: int
    acknowledged: int
    in_progress: int
    input_required: int
    stalled: int

    @classmethod
    def of(cls, summary: TargetSummary) -> Self:
        counts = summary.by_status
        return cls(
            name=summary.policy.name,
            description=summary.policy.description,
            transport="agent" if summary.policy.transport == "agent" else "telegram",
            dispatch="one_at_a_time" if summary.policy.one_at_a_time else "immediate",
            reachable=summary.reachable,
            last_seen_at=format_timestamp(summary.last_seen_at) if summary.last_seen_at else None,
            pending=counts[TaskStatus.PENDING],
            acknowledged=counts[TaskStatus.ACKNOWLEDGED],
            in_progress=counts[TaskStatus.IN_PROGRESS],
            input_required=counts[TaskStatus.INPUT_REQUIRED],
            stalled=summary.stalled,
        )


def queue_figures(counts: QueueCounts, summaries: list[TargetSummary]) -> dict[str, Any]:
    """The queue at a glance, as ``queue_status`` and ``nexus-bridge status`` both show it: tasks
    per status, total updates, ignored messages, the task in progress and the stalled tasks of
    the targets in ``summaries``."""
    current = counts.current_task
    figures: dict[str, Any] = {status.value: counts.by_status[status] for status in TaskStatus}
    figures["total_updates"] = counts.total_updates
    figures["ignored_messages"] = counts.ignored_messages
    figures["current_task"] = current.content if current else None
    figures["current_task_id"] = current.id if current else None
    figures["stalled"] = sum(s.stalled for s in summaries)
    return figures


def target_row(summary: TargetSummary) -> dict[str, Any]:
    """A target as ``nexus-bridge status`` shows it: ``TargetOut``'s figures, with the tasks the
    agent holds (acknowledged, in progress, waiting on an answer) summed as ``with_agent``."""
    out = TargetOut.of(summary)
    return {
        "name": out.name,
        "transport": out.transport,
        "dispatch": out.dispatch,
        "pending": out.pending,
        "with_agent": out.acknowledged + out.in_progress + out.input_required,
        "stalled": out.stalled,
        "last_seen_at": summary.last_seen_at.isoformat() if summary.last_seen_at else None,
    }


def oauth_client_row(client: "OAuthClientView") -> dict[str, Any]:
    """A registered OAuth client as ``nexus-bridge auth clients`` shows it."""
    return {
        "client_id": client.client_id,
        "name": client.name,
        "registered": client.registered_at.isoformat(),
        "revoked": client.revoked_at.isoformat() if client.revoked_at else None,
    }


def token_family_row(family: "TokenFamilyView") -> dict[str, Any]:
    """A token family as ``nexus-bridge auth tokens`` shows it."""
    return {
        "family_id": family.family_id,
        "client_id": family.client_id,
        "issued": family.issued,
        "live": family.live,
        "last_issued": family.last_issued_at.isoformat(),
    }
