"""The one status change: every service that moves a task calls :func:`apply_transition` inside
its own write transaction, so a move and what caused it (an answer, an agent's message, a claim)
commit together or not at all.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from nexus_bridge.db.store import StoreTransaction
from nexus_bridge.domain import (
    STATUS_STAMPS,
    Task,
    TaskStatus,
    UpdateKind,
    check_transition,
    status_line,
)
from nexus_bridge.errors import IllegalTransition


async def apply_transition(
    tx: StoreTransaction,
    task: Task,
    new_status: TaskStatus,
    reason: str | None,
    *,
    now: datetime,
    by_bridge: bool = False,
    lease_seconds: float | None = None,
) -> Task:
    """Move ``task`` to ``new_status`` and record the move as a ``status`` update.

    ``by_bridge``: the move may be one only the bridge makes (a lapsed claim back to pending);
    ``lease_seconds``: the move is a claim with a lease of that length.

    Raises:
        TaskAlreadyEnded: the task already ended.
        IllegalTransition: the transition table forbids the move.
    """
    check_transition(task.status, new_status, by_bridge=by_bridge)
    claim_until = now + timedelta(seconds=lease_seconds) if lease_seconds is not None else None
    stamps: dict[str, datetime] = {}
    column = STATUS_STAMPS.get(new_status)
    if column is not None and getattr(task, column) is None:
        stamps[column] = now
    if not await tx.set_status(
        task, new_status, at=now, reason=reason, stamps=stamps, claim_expires_at=claim_until
    ):
        # Inside a write transaction the row cannot change under us; this is a safety net.
        raise IllegalTransition(f"task {task.id} changed concurrently; try again")
    await tx.insert_update(
        task_id=task.id,
        kind=UpdateKind.STATUS,
        status=new_status,
        content=status_line(task.status, new_status, reason),
        at=now,
    )
    return await tx.get_task(task.id)
