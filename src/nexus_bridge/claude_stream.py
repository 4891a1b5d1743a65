"""Claude Code's ``--output-format stream-json`` events, read into what the runner reports.

No I/O here. Each stdout line of ``claude -p --output-format stream-json --verbose`` is one JSON
object: ``system``/``init`` (with the ``session_id``), ``assistant`` messages whose content
blocks are ``text``, ``tool_use`` or ``thinking``, ``user`` messages carrying ``tool_result``
blocks, and a final ``result`` (``subtype``, ``is_error``, ``result``, ``num_turns``,
``total_cost_usd``). What the client should read is kept: assistant text, and each tool use as
one short line. Thinking, tool results, unknown event types and lines that are not JSON are
ignored, never fatal.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, Final

TOOL_MARK: Final = "▸"
MAX_TOOL_LINE_CHARS: Final = 160
# The input field that says most about a tool use, for the tools Claude Code ships with; any
# other tool shows its first short string argument.
_TOOL_SUBJECT: Final = {
    "Bash": "command",
    "Read": "file_path",
    "Write": "file_path",
    "Edit": "file_path",
    "MultiEdit": "file_path",
    "NotebookEdit": "notebook_path",
    "Glob": "pattern",
    "Grep": "pattern",
    "WebFetch": "url",
    "WebSearch": "query",
    "Task": "description",
    "TodoWrite": "",
}


class EventKind(enum.StrEnum):
    INIT = "init"  # the session started; session_id is set
    TEXT = "text"  # assistant text, for the client
    TOOL = "tool"  # one tool use, as a short line in text
    RESULT = "result"  # the final answer


@dataclass(frozen=True, slots=True)
class ClaudeEvent:
    """One thing worth reporting from the stream."""

    kind: EventKind
    text: str = ""
    session_id: str | None = None
    is_error: bool = False
    subtype: str | None = None
    num_turns: int | None = None
    total_cost_usd: float | None = None


def parse_line(line: str) -> list[ClaudeEvent]:
    """The events one stream-json line carries (an assistant message may hold several); an
    empty list for anything else."""
    try:
        data = json.loads(line)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    kind = data.get("type")
    if kind == "system" and data.get("subtype") == "init":
        session = _text(data.get("session_id"))
        return [ClaudeEvent(EventKind.INIT, session_id=session)] if session else []
    if kind == "assistant":
        return _assistant(data.get("message"))
    if kind == "result":
        return [_result(data)]
    return []


def _assistant(message: Any) -> list[ClaudeEvent]:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return []
    events = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            text = _text(block.get("text")).strip()
            if text:
                events.append(ClaudeEvent(EventKind.TEXT, text=text))
        elif block.get("type") == "tool_use":
            events.append(ClaudeEvent(EventKind.TOOL, text=tool_line(block)))
    return events


def _result(data: dict[str, Any]) -> ClaudeEvent:
    turns = data.get("num_turns")
    cost = data.get("total_cost_usd")
    return ClaudeEvent(
        EventKind.RESULT,
        text=_text(data.get("result")).strip(),
        session_id=_text(data.get("session_id")) or None,
        is_error=data.get("is_error") is True or str(data.get("subtype", "")).startswith("error"),
        subtype=_text(data.get("subtype")) or None,
        num_turns=turns if isinstance(turns, int) and not isinstance(turns, bool) else None,
        total_cost_usd=float(cost)
        if isinstance(cost, int | float) and not isinstance(cost, bool)
        else None,
    )


def tool_line(block: dict[str, Any]) -> str:
    """``▸ Bash: systemctl restart jellyfin``: one line, at most ``MAX_TOOL_LINE_CHARS``."""
    name = _text(block.get("name")) or "tool"
    arguments = block.get("input")
    subject = ""
    if isinstance(arguments, dict):
        key = _TOOL_SUBJECT.get(name)
        if key is None:
            key = next((k for k, v in arguments.items() if isinstance(v, str) and v.strip()), "")
        subject = _text(arguments.get(key)) if key else ""
    subject = " ".join(subject.split())  # one line, whatever the command looked like
    line = f"{TOOL_MARK} {name}: {subject}" if subject else f"{TOOL_MARK} {name}"
    return line if len(line) <= MAX_TOOL_LINE_CHARS else line[: MAX_TOOL_LINE_CHARS - 1] + "…"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
