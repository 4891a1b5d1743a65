"""The Telegram agent protocol: rendering tasks and answers, reading the agent's replies."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nexus_bridge.domain import TaskStatus
from nexus_bridge.protocol import (
    MARKERS,
    TELEGRAM_MAX_CHARS,
    URGENT_PREFIX,
    Marker,
    agent_prompt,
    parse_agent_message,
    render_reply,
    render_task,
    short_id,
    task_tag,
)

TASK_ID = "3F2A9C1E-1234-4abc-8def-0123456789ab"
TAG = "[task 3f2a9c1e]"


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_part(part: str) -> tuple[str, str]:
    header, _, chunk = part.partition("\n")
    return header, chunk


def example_of(marker: Marker) -> str:
    """A concrete instance of a marker literal, with its placeholders filled in."""
    return marker.literal.replace("<first line of the task>", "Fix the DNS").replace("N", "2")


# --- ids and tags -------------------------------------------------------------------------------


def test_short_id_is_the_first_eight_characters_lowercased() -> None:
    assert short_id(TASK_ID) == "3f2a9c1e"


def test_task_tag_wraps_the_short_id() -> None:
    assert task_tag(TASK_ID) == TAG


# --- render_task ----------------------------------------------------------------------------------


def test_short_task_is_one_message_with_header_and_verbatim_content() -> None:
    content = "Restart *nginx* on host_1 [prod] `now` 🚀"
    parts = render_task(TASK_ID, content, agent_username=None, urgent=False)
    assert parts == [f"{TAG}\n{content}"]


def test_urgent_task_header_starts_with_the_urgent_prefix() -> None:
    parts = render_task(TASK_ID, "Stop the backup", agent_username=None, urgent=True)
    assert parts == [f"{URGENT_PREFIX} {TAG}\nStop the backup"]


@pytest.mark.parametrize("username", ["agent_bot", "@agent_bot", "@@agent_bot", " @agent_bot "])
def test_agent_username_is_mentioned_with_exactly_one_at_sign(username: str) -> None:
    parts = render_task(TASK_ID, "hello", agent_username=username, urgent=True)
    assert parts == [f"URGENT {TAG} @agent_bot\nhello"]


@pytest.mark.parametrize("username", [None, "", "@"])
def test_no_mention_without_an_agent_username(username: str | None) -> None:
    parts = render_task(TASK_ID, "hello", agent_username=username, urgent=False)
    assert parts == [f"{TAG}\nhello"]


def test_long_task_splits_at_line_ends_into_numbered_parts_that_rejoin_exactly() -> None:
    lines = [f"line {i:04d}: *bold* _under_ [link] `code` {'x' * (i % 40)}\n" for i in range(240)]
    content = "".join(lines)[:10_000]
    assert len(content) == 10_000

    parts = render_task(TASK_ID, content, agent_username="agent_bot", urgent=False)

    assert len(parts) == 3
    chunks = []
    for i, part in enumerate(parts, start=1):
        assert len(part) <= TELEGRAM_MAX_CHARS
        assert utf16_len(part) <= TELEGRAM_MAX_CHARS
        header, chunk = split_part(part)
        assert header == f"{TAG} @agent_bot ({i}/3)"
        chunks.append(chunk)
    assert "".join(chunks) == content
    for chunk in chunks[:-1]:
        assert chunk.endswith("\n")  # each cut falls at a line end


def test_splitting_is_greedy_by_whole_lines() -> None:
    content = "".join(f"{i:03d}\n" for i in range(100))  # 400 characters, 4 per line
    parts = render_task(TASK_ID, content, agent_username=None, urgent=False, limit=150)
    assert len(parts) > 1
    for part in parts[:-1]:
        # Each part ends at a line end, and a whole further line would not have fitted.
        assert part.endswith("\n")
        assert len(part) <= 150 < len(part) + 4
    assert "".join(split_part(p)[1] for p in parts) == content


def test_single_line_longer_than_a_message_still_splits_and_rejoins_exactly() -> None:
    content = "".join(chr(ord("a") + i % 26) for i in range(9_000))  # no whitespace at all
    parts = render_task(TASK_ID, content, agent_username=None, urgent=False)
    assert len(parts) == 3
    assert all(len(p) <= TELEGRAM_MAX_CHARS for p in parts)
    assert "".join(split_part(p)[1] for p in parts) == content


def test_long_line_is_cut_after_whitespace_when_possible() -> None:
    words = " ".join(f"word{i}" for i in range(2_000))  # one line, about 17,000 characters
    parts = render_task(TASK_ID, words, agent_username=None, urgent=False)
    chunks = [split_part(p)[1] for p in parts]
    assert all(utf16_len(p) <= TELEGRAM_MAX_CHARS for p in parts)
    assert all(chunk.endswith(" ") for chunk in chunks[:-1])
    assert "".join(chunks) == words


def test_emoji_content_stays_within_telegrams_utf16_budget() -> None:
    content = "😀" * 5_000  # 5,000 characters but 10,000 UTF-16 code units
    parts = render_task(TASK_ID, content, agent_username=None, urgent=False)
    assert len(parts) == 3
    assert all(utf16_len(p) <= TELEGRAM_MAX_CHARS for p in parts)
    assert "".join(split_part(p)[1] for p in parts) == content


def test_cut_does_not_separate_an_emoji_from_its_modifier() -> None:
    content = "👍🏽" * 100  # thumbs up + skin tone: 4 UTF-16 units per pair
    parts = render_task(TASK_ID, content, agent_username=None, urgent=False, limit=60)
    chunks = [split_part(p)[1] for p in parts]
    assert all(utf16_len(p) <= 60 for p in parts)
    assert all(chunk.startswith("👍") for chunk in chunks)
    assert "".join(chunks) == content


def test_counter_width_is_reserved_when_parts_reach_two_digits() -> None:
    content = "".join(f"{i:05d}\n" for i in range(400))
    parts = render_task(TASK_ID, content, agent_username=None, urgent=False, limit=100)
    assert len(parts) >= 10
    assert all(utf16_len(p) <= 100 for p in parts)
    assert split_part(parts[-1])[0] == f"{TAG} ({len(parts)}/{len(parts)})"
    assert "".join(split_part(p)[1] for p in parts) == content


def test_limit_too_small_for_the_header_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        render_task(TASK_ID, "hello", agent_username="agent_bot", urgent=True, limit=20)


# --- render_reply ------------------------------------------------------------------------------


def test_reply_header_names_the_task_and_says_answer() -> None:
    parts = render_reply(TASK_ID, "Use *8.8.8.8*", agent_username="@agent_bot")
    assert parts == [f"{TAG} Answer @agent_bot\nUse *8.8.8.8*"]


def test_long_reply_splits_like_a_task() -> None:
    text = "yes\n" * 3_000
    parts = render_reply(TASK_ID, text, agent_username=None)
    assert len(parts) == 3
    assert [split_part(p)[0] for p in parts] == [f"{TAG} Answer ({i}/3)" for i in (1, 2, 3)]
    assert all(len(p) <= TELEGRAM_MAX_CHARS for p in parts)
    assert "".join(split_part(p)[1] for p in parts) == text


# --- parse_agent_message -----------------------------------------------------------------------


@pytest.mark.parametrize("marker", MARKERS, ids=[m.literal for m in MARKERS])
@pytest.mark.parametrize("case", [str, str.lower, str.upper, str.title])
def test_every_marker_sets_its_status_in_any_case(
    marker: Marker, case: Callable[[str], str]
) -> None:
    written = case(example_of(marker))
    parsed = parse_agent_message(f"{written} details follow\nmore lines")
    assert parsed.status is marker.status
    assert parsed.marker == written


@pytest.mark.parametrize("text", ["[Step 3]", "[Step 2/5]", "[ step 2 / 5 ]", "[Step 2 of 5]"])
def test_step_markers_accept_a_number_or_a_fraction(text: str) -> None:
    assert parse_agent_message(f"{text} configured the router").status is TaskStatus.IN_PROGRESS


@pytest.mark.parametrize("text", ["[Step]", "[Step two]", "[Stepped]", "[Done already]"])
def test_near_miss_markers_are_not_markers(text: str) -> None:
    assert parse_agent_message(text).status is None


def test_marker_on_a_later_line_does_not_change_the_status() -> None:
    text = "Checked the disks\n\n✅ sda healthy\n[Done] with sdb"
    parsed = parse_agent_message(text)
    assert parsed.status is None
    assert parsed.marker is None


def test_marker_must_open_the_line() -> None:
    assert parse_agent_message("All good ✅").status is None


def test_blank_lines_before_the_marker_are_skipped() -> None:
    assert parse_agent_message("\n  \n  [Done] all good").status is TaskStatus.COMPLETE


def test_step_report_with_checkmarks_inside_keeps_the_task_in_progress() -> None:
    text = "[Step 2/5] #3f2a9c1e\n✅ backups verified\n✅ disk space ok"
    assert parse_agent_message(text).status is TaskStatus.IN_PROGRESS


@pytest.mark.parametrize(
    "text",
    [
        "[task 3f2a9c1e] [Done] fixed",
        "#3f2a9c1e [Done] fixed",
        "#3F2A9C1E: [done] fixed",
        "[task 3f2a9c1e] #0badc0de ✅ fixed",
        "@bridge_bot #3f2a9c1e [Done] fixed",
    ],
)
def test_leading_tags_before_the_marker_are_skipped(text: str) -> None:
    assert parse_agent_message(text).status is TaskStatus.COMPLETE


def test_tags_anywhere_are_found_lowercased_in_order_without_repeats() -> None:
    text = (
        "[Working] on #ABCDEF01\nsee also [TASK 3f2a9c1e] and #abcdef01 again,\nthen (#0badc0de)."
    )
    assert parse_agent_message(text).task_tags == ("abcdef01", "3f2a9c1e", "0badc0de")


@pytest.mark.parametrize(
    "text",
    [
        "#3f2a9c1e0",  # nine hex digits
        "#3f2a9c1g",  # not hex
        "#3f2a9c1",  # seven
        "#3f2a9c1e_x",  # glued to a word
        "page#3f2a9c1e",  # inside a word
        "##3f2a9c1e",
        "[task 3f2a9c1]",
        "[task 3f2a9c1e0]",
    ],
)
def test_near_miss_tags_are_not_tags(text: str) -> None:
    assert parse_agent_message(f"[Working] {text}").task_tags == ()


def test_responding_to_gives_the_quoted_first_line() -> None:
    parsed = parse_agent_message("[Responding to:   Fix the DNS  ] #3f2a9c1e\nstarting now")
    assert parsed.status is TaskStatus.IN_PROGRESS
    assert parsed.responding_to == "Fix the DNS"
    assert parsed.task_tags == ("3f2a9c1e",)


def test_responding_to_keeps_brackets_inside_the_quote() -> None:
    parsed = parse_agent_message("[Responding to: Restart [prod] nginx] starting")
    assert parsed.responding_to == "Restart [prod] nginx"


def test_responding_to_is_none_for_other_markers() -> None:
    assert parse_agent_message("[Done] Responding to: nothing").responding_to is None


def test_text_without_a_marker_has_no_status() -> None:
    parsed = parse_agent_message("just chatting about #3f2a9c1e")
    assert parsed.status is None
    assert parsed.marker is None
    assert parsed.responding_to is None
    assert parsed.task_tags == ("3f2a9c1e",)


def test_empty_text_has_no_status_and_no_tags() -> None:
    assert parse_agent_message("") == parse_agent_message("  \n ")
    assert parse_agent_message("").status is None
    assert parse_agent_message("").task_tags == ()


# --- agent_prompt --------------------------------------------------------------------------------


def test_prompt_teaches_every_marker_in_the_table() -> None:
    prompt = agent_prompt()
    for marker in MARKERS:
        row = next(line for line in prompt.splitlines() if f"`{marker.literal}`" in line)
        assert marker.status.value in row
        assert marker.meaning in row


def test_every_marker_literal_in_the_prompt_parses_to_its_status() -> None:
    # The prompt and the parser come from the same table: what the prompt shows, the parser reads.
    for marker in MARKERS:
        assert parse_agent_message(example_of(marker)).status is marker.status


def test_prompt_states_the_urgent_and_stop_rule() -> None:
    prompt = agent_prompt()
    assert "URGENT or STOP" in prompt
    assert "halt immediately" in prompt


def test_prompt_mentions_the_bots_when_given() -> None:
    prompt = agent_prompt(agent_username="agent_bot", bridge_username="@bridge_bot")
    assert "@bridge_bot" in prompt
    assert "@agent_bot" in prompt
    assert "@@" not in prompt


def test_prompt_explains_parts_tags_and_answers() -> None:
    prompt = agent_prompt()
    assert "[task xxxxxxxx]" in prompt
    assert "(1/3)" in prompt
    assert "#xxxxxxxx" in prompt
    assert "[task xxxxxxxx] Answer" in prompt
    assert "[Responding to: <first line of the task>]" in prompt


def test_prompt_is_concise() -> None:
    assert 35 <= len(agent_prompt().splitlines()) <= 65
