"""The wire shapes of tasks and updates, shared by the MCP tools and the CLI's --json output."""

from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, Field

from nexus_bridge.db.types import format_timestamp
from nexus_bridge.domain import Task, Update

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
    def of(cls, update: Update) -> Self:
        return cls(
            seq=update.seq,
            message_id=update.message_id,
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
