"""Claude Code's stream-json events: what the runner reports, what it leaves out, and that no
line, however odd, is fatal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nexus_bridge.claude_stream import MAX_TOOL_LINE_CHARS, ClaudeEvent, EventKind, parse_line


def line(event: dict[str, Any]) -> str:
    return json.dumps(event)


def assistant(*blocks: dict[str, Any]) -> str:
    return line({"type": "assistant", "message": {"role": "assistant", "content": list(blocks)}})


def test_init_gives_the_session_id() -> None:
    event = {"type": "system", "subtype": "init", "session_id": "abc-123", "tools": []}
    assert parse_line(line(event)) == [ClaudeEvent(EventKind.INIT, session_id="abc-123")]


def test_assistant_text_and_tool_use_are_reported_thinking_is_not() -> None:
    events = parse_line(
        assistant(
            {"type": "thinking", "thinking": "private"},
            {"type": "text", "text": "  Restarting it.  "},
            {"type": "tool_use", "name": "Bash", "input": {"command": "systemctl restart x"}},
        )
    )
    assert [(e.kind, e.text) for e in events] == [
        (EventKind.TEXT, "Restarting it."),
        (EventKind.TOOL, "▸ Bash: systemctl restart x"),
    ]


@pytest.mark.parametrize(
    ("block", "shown"),
    [
        ({"name": "Read", "input": {"file_path": "/etc/hosts"}}, "▸ Read: /etc/hosts"),
        ({"name": "Bash", "input": {"command": "a\n  && b"}}, "▸ Bash: a && b"),
        ({"name": "mcp__x__y", "input": {"n": 1, "q": "disk"}}, "▸ mcp__x__y: disk"),
        ({"name": "TodoWrite", "input": {"todos": []}}, "▸ TodoWrite"),
        ({"input": "not a dict"}, "▸ tool"),
    ],
)
def test_a_tool_use_is_one_short_line(block: dict[str, Any], shown: str) -> None:
    [event] = parse_line(assistant({"type": "tool_use", **block}))
    assert event.text == shown


def test_a_long_tool_line_is_cut() -> None:
    [event] = parse_line(
        assistant({"type": "tool_use", "name": "Bash", "input": {"command": "x" * 999}})
    )
    assert len(event.text) == MAX_TOOL_LINE_CHARS
    assert event.text.endswith("…")


def test_the_result_carries_the_answer_and_its_accounting() -> None:
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "result": "Done.",
        "num_turns": 4,
        "total_cost_usd": 0.5,
        "session_id": "abc",
    }
    assert parse_line(line(result)) == [
        ClaudeEvent(
            EventKind.RESULT,
            text="Done.",
            session_id="abc",
            subtype="success",
            num_turns=4,
            total_cost_usd=0.5,
        )
    ]
    for failed in ({"is_error": True}, {"subtype": "error_max_turns"}):
        [event] = parse_line(line({**result, **failed}))
        assert event.is_error


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1, 2]",
        "null",
        line({"type": "user", "message": {"content": [{"type": "tool_result", "content": "x"}]}}),
        line({"type": "stream_event", "event": {}}),
        line({"type": "system", "subtype": "compact_boundary"}),
        line({"type": "system", "subtype": "init"}),  # no session id
        line({"type": "assistant", "message": None}),
        line({"type": "assistant", "message": {"content": [None, 3, {"type": "image"}]}}),
        line({"type": "result", "result": 7, "num_turns": True, "total_cost_usd": "1"})[:-1],
    ],
)
def test_anything_else_is_ignored_never_fatal(text: str) -> None:
    assert parse_line(text) == []


def test_odd_result_fields_are_dropped_not_trusted() -> None:
    [event] = parse_line(
        line({"type": "result", "result": 7, "num_turns": True, "total_cost_usd": "1"})
    )
    assert event == ClaudeEvent(EventKind.RESULT)
