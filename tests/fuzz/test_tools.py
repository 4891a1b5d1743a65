"""Fuzzing every MCP tool (client side /mcp, agent side /agent/mcp) and the Telegram inbound path
against one real bridge: whatever the input, the answer is a result or a one-line tool error,
the server stays up, and the database holds no half-written or contradictory row."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_bridge.domain import AGENT_SESSION_CHARS, MAX_AGENT_SESSION_CHARS
from tests.fuzz import strategies as fz
from tests.fuzz.harness import (
    AGENT_ID,
    FELT,
    SENTRY,
    STRANGER_ID,
    TARGETS,
    TELEGRAM_TARGET,
    LiveBridge,
    live_bridge,
)

Fields = dict[str, Callable[[LiveBridge], st.SearchStrategy[Any]]]


def _targets(_: LiveBridge) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(sorted(TARGETS)), st.sampled_from(["", "HOMELAB", "nexus"]))


def _ids(bridge: LiveBridge) -> st.SearchStrategy[Any]:
    return fz.task_ids(bridge.task_ids())


def _cursor(bridge: LiveBridge) -> st.SearchStrategy[Any]:
    highest = bridge.query("SELECT coalesce(max(seq), 0) FROM updates")[0][0]
    return fz.cursors(int(highest))


def _limits(_: LiveBridge) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(min_value=-2, max_value=1_002), st.sampled_from(["5", "5.0", 5.0, 5.5])
    )


def _before(bridge: LiveBridge) -> st.SearchStrategy[Any]:
    return st.one_of(_ids(bridge), _cursor(bridge), fz.instants())


def _text(_: LiveBridge) -> st.SearchStrategy[Any]:
    return fz.messages()


def _optional_text(_: LiveBridge) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), fz.messages())


def _session(_: LiveBridge) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.text(alphabet=sorted(AGENT_SESSION_CHARS), min_size=1, max_size=MAX_AGENT_SESSION_CHARS),
    )


CLIENT_TOOLS: dict[str, Fields] = {
    "send_message": {"message": _text, "target": _targets, "urgent": lambda _: st.booleans()},
    "pull_updates": {
        "since": lambda _: fz.instants(),
        "cursor": _cursor,
        "message_id": _ids,
        "limit": _limits,
        "wait_seconds": lambda _: fz.waits(),
    },
    "queue_status": {"target": _targets},
    "list_targets": {},
    "reply_to_task": {"id": _ids, "text": _text},
    "get_message": {"id": _ids},
    "list_messages": {
        "status": lambda _: fz.statuses(),
        "target": _targets,
        "limit": _limits,
        "before": _before,
    },
    "cancel_message": {"id": _ids, "reason": _optional_text},
}
AGENT_TOOLS: dict[str, Fields] = {
    "next_task": {"wait_seconds": lambda _: fz.waits(), "target": _targets},
    "start_task": {"id": _ids},
    "heartbeat": {"id": _ids, "session": _session},
    "post_update": {"id": _ids, "text": _text},
    "ask_question": {"id": _ids, "text": _text},
    "get_replies": {"id": _ids, "cursor": _cursor},
    "complete_task": {"id": _ids, "summary": _optional_text},
    "fail_task": {"id": _ids, "error": _text},
}


def draw_arguments(data: st.DataObject, bridge: LiveBridge, fields: Fields) -> dict[str, Any]:
    """Each argument valid-ish, hostile or absent; sometimes an argument nobody declared."""
    arguments: dict[str, Any] = {}
    for name, valid in fields.items():
        mode = data.draw(
            st.sampled_from(["valid", "valid", "hostile", "absent", "absent"]), label=name
        )
        if mode == "valid":
            arguments[name] = data.draw(valid(bridge), label=name)
        elif mode == "hostile":
            arguments[name] = data.draw(fz.hostile(), label=name)
    if data.draw(st.integers(min_value=0, max_value=9), label="extra") == 0:
        arguments[data.draw(st.text(max_size=10), label="extra name")] = data.draw(fz.json_values())
    return arguments


def seed(bridge: LiveBridge) -> None:
    """Tasks in every state the happy paths need: pending, claimed, started, asking."""
    for target in TARGETS:
        for n in range(3):
            bridge.call(
                "send_message", {"message": f"seed task {n} for {target}", "target": target}
            )
    for target in (FELT, SENTRY):
        claimed = bridge.call("next_task", {}, agent=target).data
        assert claimed is not None, f"seeding: next_task failed for {target}"
        assert claimed["task"] is not None, f"seeding: nothing to claim for {target}"
        task_id = claimed["task"]["id"]
        bridge.call("start_task", {"id": task_id}, agent=target)
        bridge.call("ask_question", {"id": task_id, "text": "which one?"}, agent=target)
    bridge.consistent()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBridge]:
    with live_bridge(tmp_path_factory.mktemp("fuzz"), on_start=seed) as live:
        yield live


def after_each_call(bridge: LiveBridge) -> None:
    bridge.healthy()
    bridge.consistent()


@pytest.mark.parametrize("tool", sorted(CLIENT_TOOLS))
@given(data=st.data())
def test_a_client_tool_answers_any_arguments_with_a_result_or_one_line_error(
    bridge: LiveBridge, tool: str, data: st.DataObject
) -> None:
    bridge.call(tool, draw_arguments(data, bridge, CLIENT_TOOLS[tool]))
    after_each_call(bridge)


@pytest.mark.parametrize("tool", sorted(AGENT_TOOLS))
@given(data=st.data())
def test_an_agent_tool_answers_any_arguments_with_a_result_or_one_line_error(
    bridge: LiveBridge, tool: str, data: st.DataObject
) -> None:
    agent = data.draw(st.sampled_from([FELT, SENTRY]), label="agent")
    bridge.call(tool, draw_arguments(data, bridge, AGENT_TOOLS[tool]), agent=agent)
    after_each_call(bridge)


def _protocol_pieces(bridge: LiveBridge) -> list[str]:
    """Tags and quotes of real tasks (of every target), so correlation paths are exercised."""
    pieces = []
    for task_id, content in bridge.query("SELECT id, content FROM tasks ORDER BY id"):
        pieces += [f"#{task_id[:8]}", f"[task {task_id[:8]}]", f"[Responding to: {content[:60]}]"]
    return pieces


@given(data=st.data())
def test_any_agent_message_in_the_chat_is_recorded_whole_and_moves_only_its_targets_tasks(
    bridge: LiveBridge, data: st.DataObject
) -> None:
    text = data.draw(fz.agent_texts(_protocol_pieces(bridge), max_chars=4_096), label="text")
    text = text if text.strip() else "."  # Telegram never delivers an empty text message
    posted = [row[0] for row in bridge.query("SELECT telegram_message_id FROM telegram_messages")]
    reply_to = data.draw(
        st.one_of(st.none(), fz.pick(posted, fallback=1), st.integers(-5, 10**6)),
        label="reply_to",
    )
    sender = data.draw(st.sampled_from([AGENT_ID, AGENT_ID, STRANGER_ID]), label="sender")
    others = "SELECT id, status, updated_at FROM tasks WHERE target != ? ORDER BY id"
    before = bridge.query(others, TELEGRAM_TARGET)
    chat, message_id = bridge.inject(text, sender=sender, reply_to=reply_to)
    bridge.processed(chat, message_id)
    after_each_call(bridge)
    if sender == AGENT_ID:
        kept = "SELECT count(*) FROM updates WHERE kind = 'agent' AND content = ?"
        assert bridge.query(kept, text)[0][0] >= 1, "the agent's message was not kept whole"
    assert bridge.query(others, TELEGRAM_TARGET) == before, (
        "a message in the homelab chat changed another target's task"
    )


# Values that broke a tool before (issue 8) or plausibly could: each one, in every argument of
# every tool, on every run, whatever hypothesis happens to draw.
KNOWN_HOSTILE: list[Any] = [
    "nan",
    "inf",
    "-inf",
    "1e309",
    "²",
    "9" * 30,
    10**30,
    -1,
    "a" * 50_000,
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "",
    None,
    [],
    {},
]


def _baseline(bridge: LiveBridge, tool: str, argument: str, agent: str | None) -> dict[str, Any]:
    """Valid values for the other arguments, so the hostile one is actually reached (and a
    wait actually waits: nothing new after the cursor, nothing the agent may claim)."""
    values: dict[str, Any] = {"text": "an answer", "error": "it broke", "message": "x y"}
    fields = AGENT_TOOLS[tool] if agent else CLIENT_TOOLS[tool]
    if "id" in fields and argument != "id":
        target = agent or TELEGRAM_TARGET
        sent = bridge.call("send_message", {"message": f"sweep {uuid.uuid4()}", "target": target})
        assert sent.data is not None, sent.error
        values["id"] = sent.data["id"]
    if tool == "pull_updates" and argument not in ("since", "cursor"):
        values["cursor"] = str(10**6)
    return {name: values[name] for name in fields if name in values and name != argument}


SWEEP = [(None, tool, arg) for tool, fields in CLIENT_TOOLS.items() for arg in fields] + [
    # SENTRY takes one task at a time and already has one: next_task finds nothing and waits.
    (SENTRY, tool, arg)
    for tool, fields in AGENT_TOOLS.items()
    for arg in fields
]


@pytest.mark.parametrize(("agent", "tool", "argument"), SWEEP)
def test_known_hostile_values_get_a_result_or_one_line_error(
    bridge: LiveBridge, agent: str | None, tool: str, argument: str
) -> None:
    failures = []
    for value in KNOWN_HOSTILE:
        arguments = _baseline(bridge, tool, argument, agent) | {argument: value}
        try:
            bridge.call(tool, arguments, agent=agent)
            after_each_call(bridge)
        except AssertionError as failure:
            failures.append(str(failure).splitlines()[0][:400])
    assert not failures, f"{len(failures)} of {len(KNOWN_HOSTILE)} values failed:\n" + "\n".join(
        failures
    )
