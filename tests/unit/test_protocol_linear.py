"""The agent grammar on hostile input: every parse takes time linear in the text's length.

``parse_agent_message`` reads text an LLM wrote, which may echo anything. A regex with
competing quantifiers made some inputs cubic (``[Responding to:`` and 4,000 spaces took about
30 s), stalling the bridge. These tests time the parser on adversarial strings, up to Telegram's
4,096 characters and well beyond.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_bridge.domain import TaskStatus
from nexus_bridge.protocol import (
    MAX_OPENING_CHARS,
    TELEGRAM_MAX_CHARS,
    Marker,
    parse_agent_message,
)

# A parse may take this long per 10,000 characters (about 1 ms on an idle machine): generous
# for a loaded 2-core machine, far below what a super-linear parse needs at these lengths.
SECONDS_PER_10K: float = 0.05
LENGTHS = (TELEGRAM_MAX_CHARS, 10_000, 50_000)

# The pieces the grammar reacts to: marker fragments, brackets, spaces, tags, hex, line breaks.
FRAGMENTS = (
    "[",
    "]",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\u2028",
    "#",
    "@",
    "@bot",
    "[Responding to:",
    "Responding",
    "to:",
    "[Step",
    "Step",
    "1",
    "/",
    "of",
    "[task",
    "task",
    "3f2a9c1e",
    "0",
    "a",
    ":",
    ",",
    "-",
    "[x]",
    "[Done]",
    "✅",
    "\ufe0f",
)
OPENERS = ("", "[Responding to: ", "[Step 1", "[Step 1/", "#3f2a9c1e ", "[task ", "@bot ", "✅")


def parse_seconds(text: str) -> float:
    """The fastest of three parses: noise on a busy machine only ever adds time."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        parse_agent_message(text)
        best = min(best, time.perf_counter() - start)
    return best


def assert_linear(text: str) -> None:
    budget = SECONDS_PER_10K * max(1.0, len(text) / 10_000)
    elapsed = parse_seconds(text)
    assert elapsed < budget, f"{len(text)} characters parsed in {elapsed:.3f} s: {text[:60]!r}"


def repeat_to(pattern: str, length: int) -> str:
    return (pattern * (length // len(pattern) + 1))[:length]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize(
    "shape",
    [
        "[Responding to: {pad}x",  # the reported case: cubic before
        "[Responding to: {pad}x]",
        "[Responding to: [{pad}",
        "[Step 1{pad}x",
        "[Step 1 /{pad}x",
        "[ task {pad}3f2a9c1e{pad}",
        "#3f2a9c1e{pad}[Done]",
    ],
)
def test_known_worst_cases_parse_in_linear_time(shape: str, length: int) -> None:
    pad = " " * ((length - len(shape)) // shape.count("{pad}"))
    text = shape.format(pad=pad)
    assert len(text) <= length
    assert_linear(text)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("unit", ["[", "[ ", "[x]", "#", "@a ", "[task ", "#3f2a9c1e ", "\n "])
def test_repeated_fragments_parse_in_linear_time(unit: str, length: int) -> None:
    assert_linear("[Responding to: " + repeat_to(unit, length))
    assert_linear(repeat_to(unit, length))


@settings(
    max_examples=40,
    deadline=None,  # timed here, against a bound that scales with the length
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    opener=st.sampled_from(OPENERS),
    pieces=st.lists(
        st.tuples(st.sampled_from(FRAGMENTS), st.integers(min_value=1, max_value=3_000)),
        min_size=1,
        max_size=8,
    ),
    length=st.sampled_from(LENGTHS),
)
def test_parse_time_stays_linear_on_adversarial_text(
    opener: str, pieces: list[tuple[str, int]], length: int
) -> None:
    body = "".join(fragment * count for fragment, count in pieces)
    assert_linear(opener + repeat_to(body, length - len(opener)))


# --- what the bound on the scanned region means ----------------------------------------------


def test_a_marker_opening_a_very_long_first_line_is_still_read() -> None:
    text = "[Done] " + "x" * 60_000
    assert parse_agent_message(text).status is TaskStatus.COMPLETE


def test_a_quote_that_fits_a_telegram_message_is_read_whole() -> None:
    quote = "Fix " + "y" * (TELEGRAM_MAX_CHARS - 40)
    parsed = parse_agent_message(f"[Responding to: {quote}] #3f2a9c1e")
    assert parsed.status is TaskStatus.IN_PROGRESS
    assert parsed.responding_to == quote


def test_a_marker_closing_beyond_the_scanned_region_is_not_a_marker() -> None:
    parsed = parse_agent_message("[Responding to: " + "z" * MAX_OPENING_CHARS + "]")
    assert parsed.status is None
    assert parsed.responding_to is None


def test_tags_are_found_anywhere_even_far_beyond_the_scanned_region() -> None:
    text = "[Working]\n" + "filler line\n" * 5_000 + "#3f2a9c1e"
    assert parse_agent_message(text).task_tags == ("3f2a9c1e",)


def test_free_text_must_end_a_marker() -> None:
    with pytest.raises(ValueError, match="free text must end the marker"):
        _ = Marker("[Responding to: <line> now]", TaskStatus.IN_PROGRESS, "x").pattern
