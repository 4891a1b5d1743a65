"""Hypothesis strategies: hostile values for any argument, and valid-ish ones per field."""

from __future__ import annotations

from typing import Any, TypeVar

from hypothesis import strategies as st

from nexus_bridge.domain import TaskStatus

T = TypeVar("T")

# Draws that depend on the live database (its task ids, its cursor) pick by index, so the shape
# of the draw never changes between examples (hypothesis requires that to replay and shrink).
_INDEX = st.integers(min_value=0, max_value=2**20)


def pick(items: list[T], *, fallback: T) -> st.SearchStrategy[T]:
    """One of ``items`` (a snapshot of live state), or ``fallback`` when there are none."""
    return _INDEX.map(lambda i: items[i % len(items)] if items else fallback)


# Values that broke, or could break, a parser of numbers, ids, cursors and times.
NUMBER_WORDS = [
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "-Infinity",
    "1e309",
    "-0",
    "1e-400",
]
ODD_DIGITS = ["²", "٣", "１２", "0x10", "1_000", " 7 ", "+5", "-1", "007", "1.0", "", " "]
ODD_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "0001-01-01",
    "9999-12-31T23:59:59.999999Z",
    "2026-02-30T00:00:00Z",
    "2026-03-30T25:00:00",
    "2026-03-30T23:59:60Z",
    "2026-W13-1",
    "2026-03-30T01:00:00z",
    "2026-03-30T01:00:00+24:00",
    "2026-03-30 01:00",
    "20260330T010000Z",
    "Z",
    "now",
]


def huge_text() -> st.SearchStrategy[str]:
    """Up to 100,000 characters, built by repetition so generation stays cheap."""
    return st.builds(
        lambda unit, times: (unit * times)[:100_000],
        st.text(min_size=1, max_size=4),
        st.integers(min_value=1_000, max_value=100_000),
    )


def odd_text() -> st.SearchStrategy[str]:
    """Short strings with unicode oddities: controls, bidi, combining marks, astral planes."""
    alphabet = st.characters(codec="utf-8", exclude_categories=["Cs"])
    return st.one_of(
        st.text(alphabet, max_size=40),
        st.sampled_from(["\x00", "\u202e", "\u200d", "e\u0301", "🏳️‍🌈", "\ufeff", "\r\n", "\t"]),
    )


def hostile_numbers() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, -1, 2**31, 2**63, -(2**63), 10**30, 10**100]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(NUMBER_WORDS),
    )


def digit_strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD_DIGITS),
        st.integers(min_value=1, max_value=40).map(lambda n: "9" * n),
        st.from_regex(r"\A[0-9]{1,30}\Z"),
    )


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, nested two deep (and NaN and infinities, which JSON cannot carry)."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        hostile_numbers(),
        odd_text(),
        digit_strings(),
        st.sampled_from(ODD_TIMES),
    )
    nested = st.one_of(
        scalars,
        st.lists(scalars, max_size=4),
        st.dictionaries(st.text(max_size=8), scalars, max_size=4),
    )
    return st.one_of(
        nested,
        st.lists(nested, max_size=3),
        st.dictionaries(st.text(max_size=8), nested, max_size=3),
    )


def hostile() -> st.SearchStrategy[Any]:
    """A value for any argument: wrong types, huge strings, oddities."""
    return st.one_of(json_values(), huge_text())


def task_ids(known: list[str]) -> st.SearchStrategy[Any]:
    """Ids as a client or agent might pass them: whole, a prefix, cased, padded, or wrong."""
    made_up = st.one_of(
        st.uuids().map(str),
        st.from_regex(r"\A[0-9a-f]{8,12}\Z"),
        st.integers(min_value=40_000, max_value=60_000).map(lambda n: "a" * n),
        st.sampled_from(["", "%", "_", "%%%%%%%%", "________", "' OR 1=1 --", "*"]),
    )
    real = pick(known, fallback="00000000-0000-4000-8000-000000000000")
    return st.one_of(
        real,
        real,
        st.builds(lambda i, n: i[:n], real, st.integers(min_value=1, max_value=36)),
        real.map(str.upper),
        real.map(lambda i: f"  {i}\n"),
        real.map(lambda i: i[:8] + "%"),
        made_up,
    )


def cursors(highest: int) -> st.SearchStrategy[Any]:
    """Cursor positions: real ones (as strings and integers), beyond the end, and malformed."""
    return st.one_of(
        _INDEX.map(lambda i: str(i % (max(highest, 0) + 6))),
        _INDEX.map(lambda i: i % (max(highest, 0) + 6)),
        digit_strings(),
    )


def instants() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ODD_TIMES),
        st.datetimes().map(lambda d: d.isoformat()),
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    )


def statuses() -> st.SearchStrategy[str]:
    names = [s.value for s in TaskStatus]
    return st.one_of(st.sampled_from(names), st.sampled_from(names).map(str.upper))


def waits() -> st.SearchStrategy[Any]:
    """wait_seconds: small valid waits (the server caps them), and every hostile number."""
    return st.one_of(
        st.just(0),
        st.floats(min_value=0, max_value=0.3),
        st.sampled_from(["0", "0.1"]),
        hostile_numbers(),
    )


def messages() -> st.SearchStrategy[str]:
    """Task and answer texts: plain, empty, whitespace, long, protocol-looking."""
    return st.one_of(
        st.text(min_size=1, max_size=200),
        st.sampled_from(["", "   ", "\n\t", "[Done]", "✅ done", "[task deadbeef] hi"]),
        st.integers(min_value=3_990, max_value=4_010).map(lambda n: "x" * n),
        odd_text(),
    )


# --- the agent grammar ---------------------------------------------------------------------------

GRAMMAR_PIECES = [
    "[",
    "]",
    "[[",
    "]]",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "[Responding to: ",
    "Responding to:",
    "[Received]",
    "[Working]",
    "[Step ",
    "1",
    "2/5",
    " of ",
    "/",
    "[Question]",
    "[Done]",
    "[Error]",
    "✅",
    "❌",
    "\ufe0f",
    "#",
    "#deadbeef",
    "[task ",
    "deadbeef",
    "abcd1234",
    "@agent_bot",
    "@",
    ":",
    ",",
    "-",
    "—",
    "x",
    "é",
]


def agent_texts(
    extra_pieces: list[str] | None = None, max_chars: int = 10_000
) -> st.SearchStrategy[str]:
    """Agent messages built from the grammar's own pieces (adversarial), or any text."""
    pieces = GRAMMAR_PIECES + (extra_pieces or [])
    built = st.lists(
        st.tuples(pick(pieces, fallback="x"), st.integers(min_value=1, max_value=2_000)),
        min_size=1,
        max_size=6,
    ).map(lambda parts: "".join(piece * times for piece, times in parts)[:max_chars])
    return st.one_of(
        built,
        adversarial(max_chars),
        st.text(max_size=300),
        st.lists(pick(pieces, fallback="x"), max_size=60).map("".join),
    )


# The shape that makes a backtracking regex slow: an opening, one filler many times, an ending
# that does not match ("[Responding to: " + 4000 spaces + "x" took 30 s before issue 8).
_OPENINGS = ["[Responding to: ", "[Responding to:", "[Step ", "[task ", "[", "#", "@a ", "✅", ""]
_FILLERS = [" ", "\t", "[x]", "[", "]", "@a ", "#abcd1234 ", "[task abcd1234] ", "1 ", "/ ", "x"]
_ENDINGS = ["x", "", "]", "\n", "[", "]]", " of", "@"]


def adversarial(max_chars: int) -> st.SearchStrategy[str]:
    return st.builds(
        lambda opening, filler, times, ending: (opening + filler * times + ending)[:max_chars],
        st.sampled_from(_OPENINGS),
        st.sampled_from(_FILLERS),
        st.one_of(
            st.sampled_from([1_000, 4_096, 10_000]), st.integers(min_value=0, max_value=max_chars)
        ),
        st.sampled_from(_ENDINGS),
    )
