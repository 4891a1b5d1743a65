"""What a command reads from the other side of HTTP: the running bridge's ``GET /targets`` (for
``send`` and ``doctor``), a tool error naming another target, and the task a runner fetches to
tell whether its unanswered call went through. Any JSON, any text: an answer or None, never an
exception (a proxy, an older or a broken bridge may answer anything)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nexus_bridge.doctor import ServerView, parse_server_view
from nexus_bridge.errors import AnotherTarget
from nexus_bridge.runner import _started_by

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(JSON)
def test_any_targets_answer_is_a_view_or_nothing(body: Any) -> None:
    view = parse_server_view(body)
    assert view is None or isinstance(view, ServerView)


def test_a_targets_answer_is_read_and_an_old_bridges_has_no_database() -> None:
    targets = [{"name": "homelab", "transport": "agent"}]
    assert parse_server_view({"targets": targets, "database": "d"}) == ServerView(
        {"homelab": "agent"}, "d"
    )
    assert parse_server_view({"targets": targets}) == ServerView({"homelab": "agent"}, None)
    assert parse_server_view({"targets": targets, "database": 7}) == ServerView(
        {"homelab": "agent"}, None
    )


@given(st.text(max_size=300))
def test_any_tool_error_text_names_a_target_or_nothing(text: str) -> None:
    found = AnotherTarget.target_in(text)
    assert found is None or isinstance(found, str)


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_another_targets_error_names_the_tokens_target(mine: str, named: str) -> None:
    message = "Error executing tool next_task: " + str(AnotherTarget(mine, named))
    found = AnotherTarget.target_in(message)
    assert found is not None
    if ", not " not in repr(mine):  # target names never hold it; arbitrary text may
        assert found == repr(mine)


@given(st.sampled_from(["in_progress", "pending", 3]), JSON, JSON)
def test_any_task_answer_says_whether_the_start_landed_without_raising(
    status: Any, started_at: Any, claim_expires_at: Any
) -> None:
    task = {"status": status, "started_at": started_at}
    assert _started_by(claim_expires_at)(task) in (True, False)


def test_a_start_before_the_claim_lapsed_landed_and_one_after_did_not() -> None:
    until = "2026-11-30T12:02:00.000000+00:00"
    started = {"status": "in_progress", "started_at": "2026-11-30T12:00:01.000000+00:00"}
    assert _started_by(until)(started)
    assert not _started_by(until)({**started, "started_at": "2026-11-30T12:02:01.000000+00:00"})
    assert not _started_by(until)({**started, "status": "acknowledged"})
