"""The database's invariants, checked over the real SQLite file (read-only, beside the server).

Derived from db/models.py and queue.py: every write of the queue service is one transaction, so
whatever a call did or refused, these hold after it. ``problems`` lists every violation, each a
line naming the table and row, so a fuzz failure says what was half-written.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from nexus_bridge.domain import (
    AGENT_SESSION_CHARS,
    MAX_AGENT_SESSION_CHARS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    TaskStatus,
    UpdateKind,
)

# The one move backwards, made only by the bridge: a claim whose lease expired goes back to the
# queue (issue 8, finding 6). Allowed here so the check holds before and after that change.
_BRIDGE_MOVES = {(TaskStatus.ACKNOWLEDGED, TaskStatus.PENDING)}
# Each status's timestamp column, stamped the first time the status is reached.
_STAMP_OF = {
    TaskStatus.ACKNOWLEDGED: "acknowledged_at",
    TaskStatus.IN_PROGRESS: "started_at",
}


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the live database (WAL: it never blocks the server)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def problems(
    db: sqlite3.Connection,
    *,
    targets: dict[str, str],
    chats: dict[int, str],
    max_message_chars: int,
) -> list[str]:
    """Every violated invariant, as lines; ``targets`` maps each target to its transport and
    ``chats`` each Telegram chat to its target."""
    db.row_factory = sqlite3.Row
    found: list[str] = []
    # One read transaction, so one snapshot for every query: the server goes on writing while
    # this runs, and a transition committed between two reads is not damage.
    db.execute("BEGIN")
    try:
        found += _task_problems(db, targets, max_message_chars)
        found += _update_problems(db)
        found += _outbox_problems(db, targets)
        found += _journal_problems(db, chats)
        found += _cursor_problems(db)
        found += [
            f"agent_presence: unknown target {row['target']!r}"
            for row in db.execute("SELECT target FROM agent_presence")
            if row["target"] not in targets
        ]
    finally:
        db.rollback()
    return found


def _task_problems(
    db: sqlite3.Connection, targets: dict[str, str], max_message_chars: int
) -> Iterable[str]:
    statuses = {row["id"]: row for row in db.execute("SELECT * FROM tasks")}
    history: dict[str, list[sqlite3.Row]] = {}
    for row in db.execute(
        "SELECT * FROM updates WHERE task_id IS NOT NULL AND kind = 'status' ORDER BY seq"
    ):
        history.setdefault(row["task_id"], []).append(row)
    open_keys: dict[tuple[str, str], str] = {}
    for task_id, task in statuses.items():
        where = f"messages {task_id}"
        status = TaskStatus(task["status"])
        content = task["content"]
        if task["target"] not in targets:
            yield f"{where}: unknown target {task['target']!r}"
        if not content or content != content.strip() or len(content) > max_message_chars:
            yield f"{where}: content not normalized or over the limit ({len(content)} chars)"
        if task["content_hash"] != hashlib.sha256(content.encode()).hexdigest():
            yield f"{where}: content_hash does not match the content"
        if (task["ended_at"] is not None) != (status in TERMINAL_STATUSES):
            yield f"{where}: status {status.value} but ended_at={task['ended_at']}"
        session = task["agent_session"]
        if session is not None and not (
            0 < len(session) <= MAX_AGENT_SESSION_CHARS and AGENT_SESSION_CHARS.issuperset(session)
        ):
            yield f"{where}: agent_session {session[:50]!r} is not a valid session id"
        column = _STAMP_OF.get(status)
        if column is not None and task[column] is None:
            yield f"{where}: status {status.value} but {column} is not set"
        stamps = ("acknowledged_at", "started_at", "ended_at", "updated_at")
        for stamp in stamps:
            if task[stamp] is not None and task[stamp] < task["created_at"]:
                yield f"{where}: {stamp} {task[stamp]} before created_at {task['created_at']}"
        if status not in TERMINAL_STATUSES:
            key = (task["target"], task["content_hash"])
            if key in open_keys:
                yield f"{where}: a second open task with the content of {open_keys[key]}"
            open_keys[key] = task_id
        moves = history.get(task_id, [])
        if not moves or moves[0]["status"] != TaskStatus.PENDING.value:
            yield f"{where}: no initial 'pending' status update"
            continue
        if moves[-1]["status"] != status.value:
            yield (
                f"{where}: status {status.value} but its last status update says "
                f"{moves[-1]['status']}"
            )
        for before, after in itertools.pairwise(moves):
            old, new = TaskStatus(before["status"]), TaskStatus(after["status"])
            if new not in TRANSITIONS[old] and (old, new) not in _BRIDGE_MOVES:
                yield f"{where}: illegal move {old.value} -> {new.value} (update {after['seq']})"


def _update_problems(db: sqlite3.Connection) -> Iterable[str]:
    for row in db.execute(
        "SELECT u.seq, u.kind, u.status, u.content, u.task_id, m.id AS task"
        " FROM updates u LEFT JOIN tasks m ON m.id = u.task_id"
    ):
        where = f"updates {row['seq']}"
        if row["task_id"] is not None and row["task"] is None:
            yield f"{where}: names task {row['task_id']} that does not exist"
        kind = UpdateKind(row["kind"])
        if (kind is UpdateKind.STATUS) != (row["status"] is not None):
            yield f"{where}: kind {kind.value} with status {row['status']!r}"
        if kind is not UpdateKind.AGENT and row["task_id"] is None:
            yield f"{where}: a {kind.value} update without a task"
        if kind is UpdateKind.CLIENT and not row["content"].strip():
            yield f"{where}: an empty client answer"


def _outbox_problems(db: sqlite3.Connection, targets: dict[str, str]) -> Iterable[str]:
    per_task: dict[str, int] = {}
    for row in db.execute(
        "SELECT o.*, m.id AS task, m.target FROM outbox o LEFT JOIN tasks m ON m.id = o.task_id"
    ):
        where = f"outbox {row['id']}"
        if row["task"] is None:
            yield f"{where}: names task {row['task_id']} that does not exist"
            continue
        if targets.get(row["target"]) != "telegram":
            yield f"{where}: a {row['kind']} delivery for {row['target']}, not a Telegram target"
        if row["attempts"] < 0 or row["parts_sent"] < 0:
            yield f"{where}: negative attempts or parts_sent"
        if (row["state"] == "delivered") != (row["delivered_at"] is not None):
            yield f"{where}: state {row['state']} but delivered_at={row['delivered_at']}"
        if row["kind"] == "task":
            per_task[row["task_id"]] = per_task.get(row["task_id"], 0) + 1
    for row in db.execute("SELECT id, target FROM tasks"):
        expected = 1 if targets.get(row["target"]) == "telegram" else 0
        if per_task.get(row["id"], 0) != expected:
            yield (
                f"messages {row['id']}: {per_task.get(row['id'], 0)} task deliveries in the "
                f"outbox, expected {expected} for a {targets.get(row['target'])} target"
            )


def _journal_problems(db: sqlite3.Connection, chats: dict[int, str]) -> Iterable[str]:
    for row in db.execute(
        "SELECT j.*, m.id AS task, m.target, o.id AS delivery FROM telegram_messages j"
        " LEFT JOIN tasks m ON m.id = j.task_id LEFT JOIN outbox o ON o.id = j.outbox_id"
    ):
        where = f"telegram_messages {row['id']}"
        if row["task_id"] is not None and row["task"] is None:
            yield f"{where}: names task {row['task_id']} that does not exist"
        if row["task"] is not None and row["target"] != chats.get(row["chat_id"]):
            # An agent may only ever touch tasks of its own target (issue 8, finding 1).
            yield (
                f"{where}: a message in the chat of {chats.get(row['chat_id'])!r} was linked to "
                f"task {row['task']} of target {row['target']!r}"
            )
        if row["outbox_id"] is not None and row["delivery"] is None:
            yield f"{where}: names outbox {row['outbox_id']} that does not exist"
        if not row["accepted"] and row["text"] is not None:
            yield f"{where}: kept the text of a message that was not accepted"


def _cursor_problems(db: sqlite3.Connection) -> Iterable[str]:
    # AUTOINCREMENT: sqlite_sequence remembers the highest seq ever issued, even if deleted.
    highest = db.execute(
        "SELECT max(coalesce((SELECT max(seq) FROM sqlite_sequence WHERE name = 'updates'), 0),"
        " coalesce((SELECT max(seq) FROM updates), 0))"
    ).fetchone()[0]
    for row in db.execute("SELECT identity, position FROM pull_cursors"):
        if not 0 <= row["position"] <= highest:
            yield (
                f"pull_cursors {row['identity']!r}: position {row['position']} outside 0..{highest}"
            )
