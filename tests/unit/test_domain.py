"""The transition table and the small pure helpers of the domain."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest

from nexus_bridge.domain import (
    BRIDGE_TRANSITIONS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    TaskStatus,
    can_transition,
    check_transition,
    content_hash,
    first_line,
    normalize_content,
    parse_instant,
)
from nexus_bridge.errors import IllegalTransition, InvalidInput, TaskAlreadyEnded

# The forward order, written out independently of the module under test.
FORWARD = ["pending", "acknowledged", "in_progress"]
ENDINGS = {"complete", "error"}


def expected_legal(current: str, new: str) -> bool:
    if current in {"complete", "error", "cancelled"}:
        return False
    if new == "cancelled":
        return True
    if new in ENDINGS:
        return True
    if new == "input_required":  # a question may come at any open point
        return current != "input_required"
    if current == "input_required":  # an answer resumes the work
        return new == "in_progress"
    return new in FORWARD and FORWARD.index(new) > FORWARD.index(current)


@pytest.mark.parametrize(
    ("current", "new"), list(itertools.product(list(TaskStatus), list(TaskStatus)))
)
def test_transition_table_allows_exactly_forward_moves_and_cancel(
    current: TaskStatus, new: TaskStatus
) -> None:
    legal = expected_legal(current.value, new.value)
    assert can_transition(current, new) is legal
    if legal:
        check_transition(current, new)
    else:
        with pytest.raises(IllegalTransition) as info:
            check_transition(current, new)
        assert current.value in str(info.value)
        assert new.value in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("current", "new"), list(itertools.product(list(TaskStatus), list(TaskStatus)))
)
def test_the_one_move_backwards_is_a_lapsed_claim_and_only_the_bridge_makes_it(
    current: TaskStatus, new: TaskStatus
) -> None:
    """acknowledged -> pending, by the bridge alone; a task in progress is never sent back."""
    backwards = (current, new) == (TaskStatus.ACKNOWLEDGED, TaskStatus.PENDING)
    assert can_transition(current, new, by_bridge=True) is (
        backwards or expected_legal(current.value, new.value)
    )
    if backwards:
        assert not can_transition(current, new)  # never on an agent's or a client's request
        check_transition(current, new, by_bridge=True)
    assert {TaskStatus.ACKNOWLEDGED: frozenset({TaskStatus.PENDING})} == BRIDGE_TRANSITIONS


def test_statuses_are_stored_as_lowercase_words() -> None:
    assert [s.value for s in TaskStatus] == [
        "pending",
        "acknowledged",
        "in_progress",
        "input_required",
        "complete",
        "error",
        "cancelled",
    ]


def test_terminal_statuses_have_no_way_out_and_say_so() -> None:
    assert {s.value for s in TERMINAL_STATUSES} == {"complete", "error", "cancelled"}
    for status in TERMINAL_STATUSES:
        assert TRANSITIONS[status] == frozenset()
        with pytest.raises(TaskAlreadyEnded, match="already ended"):
            check_transition(status, TaskStatus.CANCELLED)


def test_content_is_trimmed_outside_and_kept_verbatim_inside() -> None:
    assert normalize_content("  \n fix *the* _DNS_ [record]\n\n ") == "fix *the* _DNS_ [record]"
    assert content_hash(normalize_content(" a ")) == content_hash("a")
    assert content_hash("a") != content_hash("a ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-30T01:00:00Z", datetime(2026, 3, 30, 1, tzinfo=UTC)),
        ("2026-03-30T01:00:00", datetime(2026, 3, 30, 1, tzinfo=UTC)),
        (
            "2026-03-30T03:00:00+02:00",
            datetime(2026, 3, 30, 3, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2026-03-30", datetime(2026, 3, 30, tzinfo=UTC)),
    ],
)
def test_parse_instant_reads_iso_8601_and_assumes_utc_without_offset(
    text: str, expected: datetime
) -> None:
    parsed = parse_instant(text, field="since")
    assert parsed == expected
    assert parsed.tzinfo is not None
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01T00:00:00Z", "12:00"])
def test_parse_instant_rejects_what_is_not_a_time_with_a_hint(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"since must be an ISO-8601 time"):
        parse_instant(text, field="since")


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59.999999-14:00"])
def test_parse_instant_refuses_a_time_utc_cannot_hold(text: str) -> None:
    with pytest.raises(InvalidInput, match="since is out of range"):
        parse_instant(text, field="since")


def test_first_line_skips_blank_lines_and_shortens() -> None:
    assert first_line("\n\n  hello  \nworld") == "hello"
    assert first_line("x" * 200, 10) == "x" * 9 + "…"
