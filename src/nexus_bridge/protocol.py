"""The agent protocol spoken over Telegram: how tasks are rendered, how agent replies are read.

No I/O here. The marker table ``MARKERS`` is the one definition of the protocol: the parser's
regexes and the agent's prompt are both built from it, so they cannot drift apart.

Messages are plain text (no ``parse_mode``), so task content goes out verbatim and needs no
escaping.

The agent's text is untrusted (an LLM may echo anything), so every pattern here runs in linear
time: no two quantifiers can match the same characters, and every repetition is possessive
(``*+``, ``++``), so the regex engine never backtracks into it. Only the first non-blank line,
capped at ``MAX_OPENING_CHARS``, is ever scanned for a marker.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from nexus_bridge.constants import SHORT_ID_CHARS
from nexus_bridge.domain import TaskStatus

TELEGRAM_MAX_CHARS: Final = 4096  # Telegram's limit, counted in UTF-16 code units
URGENT_PREFIX: Final = "URGENT"
ANSWER_WORD: Final = "Answer"


def short_id(task_id: str) -> str:
    """The task's short id: the first ``SHORT_ID_CHARS`` characters of its id, lowercase."""
    return task_id.strip()[:SHORT_ID_CHARS].lower()


def task_tag(task_id: str) -> str:
    """The header tag that names a task, e.g. ``[task 3f2a9c1e]``."""
    return f"[task {short_id(task_id)}]"


# --- the marker table ------------------------------------------------------------------------

# Placeholders a marker literal may contain: ``N`` stands for a step number (``2`` or ``2/5``),
# and a ``<...>`` phrase for free text, which the parser captures (``AgentMessage.responding_to``).
_NUMBER_PLACEHOLDER: Final = "N"
# Each token's pattern takes the whitespace after it, so no two quantifiers compete for the same
# characters; possessive repetition (Python 3.11) then makes backtracking impossible, not just
# pointless.
_SPACE: Final = r"\s*+"
_NUMBER_PATTERN: Final = rf"\d++{_SPACE}(?:(?:/|of){_SPACE}\d++{_SPACE})?+"
# Free text inside a marker may itself hold one level of brackets: "[Responding to: Fix [x]]".
# It runs to the closing bracket, trailing whitespace included (the parser strips it).
_TEXT_PATTERN: Final = r"(?P<text>(?:[^\[\]\n]|\[[^\[\]\n]*+\])*+)"
_TOKEN: Final = re.compile(r"<[^>]*>|\S+")
_EMOJI_VARIATION: Final = "\ufe0f"


@dataclass(frozen=True, slots=True)
class Marker:
    """One status marker: the literal as the agent writes it, the status it sets, and when."""

    literal: str
    status: TaskStatus
    meaning: str

    @property
    def pattern(self) -> str:
        """The regex source that recognises this marker at the start of a line."""
        if not self.literal.startswith("["):  # an emoji, maybe followed by the emoji selector
            return re.escape(self.literal) + f"{_EMOJI_VARIATION}?"
        tokens = _TOKEN.findall(self.literal[1:-1])
        parts: list[str] = []
        for index, token in enumerate(tokens):
            if token == _NUMBER_PLACEHOLDER:
                parts.append(_NUMBER_PATTERN)
            elif token.startswith("<"):
                if index != len(tokens) - 1:  # possessive free text would swallow what follows
                    raise ValueError(f"free text must end the marker: {self.literal!r}")
                parts.append(_TEXT_PATTERN)
            else:
                parts.append(re.escape(token) + _SPACE)
        return r"\[" + _SPACE + "".join(parts) + r"\]"


MARKERS: Final[tuple[Marker, ...]] = (
    Marker("[Received]", TaskStatus.ACKNOWLEDGED, "you have the task and will start on it"),
    Marker(
        "[Responding to: <first line of the task>]",
        TaskStatus.IN_PROGRESS,
        "you are starting the task whose first line you quote",
    ),
    Marker("[Working]", TaskStatus.IN_PROGRESS, "a progress report"),
    Marker(
        "[Step N]", TaskStatus.IN_PROGRESS, "step N is done or under way; [Step 2/5] also works"
    ),
    Marker(
        "[Question]", TaskStatus.INPUT_REQUIRED, "you need an answer from the client; then wait"
    ),
    Marker("[Done]", TaskStatus.COMPLETE, "the task is finished; say what you did"),
    Marker("✅", TaskStatus.COMPLETE, "the same as [Done]"),
    Marker("[Error]", TaskStatus.ERROR, "the task failed or cannot be done; say why"),
    Marker("❌", TaskStatus.ERROR, "the same as [Error]"),
)

_MARKER_REGEXES: Final = tuple(
    (marker, re.compile(marker.pattern, re.IGNORECASE)) for marker in MARKERS
)

# A tag names a task anywhere in a message: "#3f2a9c1e" (exactly eight hex digits, not glued to a
# longer word) or the header form "[task 3f2a9c1e]".
_TAG: Final = re.compile(
    rf"(?<![\w#])#(?P<hash>[0-9a-f]{{{SHORT_ID_CHARS}}})(?!\w)"
    rf"|\[\s*+task\s++(?P<header>[0-9a-f]{{{SHORT_ID_CHARS}}})\s*+\]",
    re.IGNORECASE,
)
# What may precede the marker on the first line: tags and @mentions, with light punctuation.
# One item per match, in a loop (not a repeated group), so each character is read once.
_LEADING_ITEM: Final = re.compile(
    rf"(?:{_TAG.pattern}|@\w++)[\s:,.\-–—]*+",
    re.IGNORECASE,
)
# How much of the first line is scanned for a marker. Telegram delivers at most this many
# characters, so no real message is cut; longer input is read only this far.
MAX_OPENING_CHARS: Final = TELEGRAM_MAX_CHARS


@dataclass(frozen=True, slots=True)
class AgentMessage:
    """What a message from the agent says, by the protocol."""

    status: TaskStatus | None  # the status the opening marker asks for, if any
    marker: str | None  # the marker as written, e.g. "[Done]"
    task_tags: tuple[str, ...]  # short ids found anywhere in the text, lowercase, in order
    responding_to: str | None  # X in "[Responding to: X]" (stripped), when that is the marker


def parse_agent_message(text: str) -> AgentMessage:
    """Read a message from the agent: the marker that opens it, and the tasks it names.

    Only the first non-blank line can carry a marker, at its start (after any leading task tags
    or @mentions), so a ✅ inside a later step report does not end the task. Linear in the
    length of ``text``; the marker is looked for in the first ``MAX_OPENING_CHARS`` characters
    of that line only.
    """
    tags = tuple(
        dict.fromkeys((m.group("hash") or m.group("header")).lower() for m in _TAG.finditer(text))
    )
    opening = _opening_line(text)
    start = 0
    while (item := _LEADING_ITEM.match(opening, start)) is not None and item.end() > start:
        start = item.end()
    opening = opening[start:]
    for marker, regex in _MARKER_REGEXES:
        match = regex.match(opening)
        if match is not None:
            quoted = match.groupdict().get("text")
            return AgentMessage(
                status=marker.status,
                marker=match.group(0),
                task_tags=tags,
                responding_to=quoted.strip() if quoted is not None else None,
            )
    return AgentMessage(status=None, marker=None, task_tags=tags, responding_to=None)


def _opening_line(text: str) -> str:
    """The first non-blank line, stripped, read no further than ``MAX_OPENING_CHARS``."""
    # Every line break str.splitlines knows is whitespace, so after lstrip the first line is
    # the first non-blank one.
    head = text.lstrip()[:MAX_OPENING_CHARS]
    return head.splitlines()[0].strip() if head else ""


# --- rendering ---------------------------------------------------------------------------------

# Characters that belong to the character before them; a cut just before one would break a
# grapheme (an accent, an emoji variant, a ZWJ emoji sequence, a skin tone).
_ZERO_WIDTH_JOINER: Final = "\u200d"
_CLINGING: Final = frozenset({_ZERO_WIDTH_JOINER, _EMOJI_VARIATION, "\ufe0e"}) | frozenset(
    chr(c) for c in range(0x1F3FB, 0x1F400)
)
_LINE: Final = re.compile(r"[^\n]*\n|[^\n]+")


def render_task(
    task_id: str,
    content: str,
    *,
    agent_username: str | None,
    urgent: bool,
    limit: int = TELEGRAM_MAX_CHARS,
) -> list[str]:
    """The Telegram message(s) that deliver a task: a header line, then the content verbatim.

    The header is ``[URGENT ][task 3f2a9c1e][ @agent_bot][ (i/n)]``; the counter appears only
    when the content needs more than one message. Every message fits ``limit`` in UTF-16 code
    units (as Telegram counts); the content is cut at line ends where possible.

    Raises:
        ValueError: ``limit`` leaves no room for content after the header.
    """
    prefix = f"{URGENT_PREFIX} " if urgent else ""
    header = f"{prefix}{task_tag(task_id)}{_mention(agent_username)}"
    return _render(header, content, limit)


def render_reply(
    task_id: str,
    text: str,
    *,
    agent_username: str | None,
    limit: int = TELEGRAM_MAX_CHARS,
) -> list[str]:
    """The message(s) that carry the client's answer to the agent's question.

    Header ``[task 3f2a9c1e] Answer[ @agent_bot][ (i/n)]``, then the text verbatim, split as
    ``render_task`` splits.

    Raises:
        ValueError: ``limit`` leaves no room for text after the header.
    """
    header = f"{task_tag(task_id)} {ANSWER_WORD}{_mention(agent_username)}"
    return _render(header, text, limit)


STOP_WORD: Final = "STOP"


def render_cancel(
    task_id: str,
    reason: str | None,
    *,
    agent_username: str | None,
    limit: int = TELEGRAM_MAX_CHARS,
) -> list[str]:
    """The message that tells the agent a task it has was cancelled: ``STOP [task …]``, so the
    halt-on-STOP rule of the agent prompt applies."""
    header = f"{STOP_WORD} {task_tag(task_id)} cancelled by the client{_mention(agent_username)}"
    return _render(header, reason or "(no reason given)", limit)


def _mention(username: str | None) -> str:
    name = (username or "").strip().lstrip("@")
    return f" @{name}" if name else ""


def _utf16_len(text: str) -> int:
    # surrogatepass: a lone surrogate (possible in decoded JSON) still counts as one unit
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _render(header: str, content: str, limit: int) -> list[str]:
    chunks = _split(content, _budget(header, limit))
    if len(chunks) == 1:
        return [f"{header}\n{content}"]
    # The counter lengthens the header, which shrinks the budget, which may add parts: size the
    # counter for the widest "(n/n)" and grow it until the part count fits its width.
    digits = len(str(len(chunks)))
    while True:
        widest = "9" * digits
        chunks = _split(content, _budget(f"{header} ({widest}/{widest})", limit))
        if len(str(len(chunks))) <= digits:
            break
        digits = len(str(len(chunks)))
    total = len(chunks)
    return [f"{header} ({i}/{total})\n{chunk}" for i, chunk in enumerate(chunks, start=1)]


def _budget(header: str, limit: int) -> int:
    """UTF-16 units left for content once the header and its newline are counted."""
    budget = limit - _utf16_len(header) - 1
    if budget < 2:  # a character outside the BMP takes two units
        raise ValueError(f"a limit of {limit} leaves no room for content after {header!r}")
    return budget


def _split(content: str, budget: int) -> list[str]:
    """Greedy: as many whole lines per chunk as fit; a longer line is cut on its own."""
    chunks: list[str] = []
    current, used = "", 0
    for line in _LINE.findall(content):
        size = _utf16_len(line)
        if used + size <= budget:
            current, used = current + line, used + size
            continue
        if current:
            chunks.append(current)
        while size > budget:
            piece = _cut(line, budget)
            chunks.append(piece)
            line = line[len(piece) :]
            size = _utf16_len(line)
        current, used = line, size
    if current or not chunks:
        chunks.append(current)
    return chunks


def _cut(line: str, budget: int) -> str:
    """The longest head of ``line`` within ``budget``, ending at whitespace when that is close."""
    end, used = 0, 0
    while end < len(line):
        size = 2 if ord(line[end]) > 0xFFFF else 1
        if used + size > budget:
            break
        end, used = end + 1, used + size
    window = line[:end]
    space = max(window.rfind(" "), window.rfind("\t"))
    if space + 1 > end // 2:  # break after the space, unless that wastes half the message
        return window[: space + 1]
    cut = end
    while cut > 1 and _clings(line, cut):
        cut -= 1
    return line[: cut if cut > 1 else end]


def _clings(line: str, index: int) -> bool:
    """Whether a cut before ``line[index]`` would split a grapheme."""
    char = line[index]
    return (
        char in _CLINGING
        or line[index - 1] == _ZERO_WIDTH_JOINER
        or unicodedata.combining(char) != 0
    )


# --- the agent's instructions -----------------------------------------------------------------


def agent_prompt(*, agent_username: str | None = None, bridge_username: str | None = None) -> str:
    """The Markdown section for the agent's CLAUDE.md that teaches it this protocol."""
    bridge = _mention(bridge_username).strip() or "the bridge bot"
    you = _mention(agent_username).strip()
    tag = f"[task {'x' * SHORT_ID_CHARS}]"
    hashtag = f"#{'x' * SHORT_ID_CHARS}"
    example = "#3f2a9c1e"
    rows = "\n".join(f"| `{m.literal}` | {m.status.value} | {m.meaning} |" for m in MARKERS)
    addressed = f" addressed to {you}" if you else ""
    return f"""\
## Tasks over Telegram (nexus-bridge protocol)

Tasks reach you in the Telegram chat from {bridge}{addressed}. Write plain text there; no
Markdown formatting is needed.

### How a task arrives
- A task is a message whose first line is a header `{tag}`; `xxxxxxxx` is the task's short id.
  The task text follows on the next lines, verbatim.
- The header may start with `{URGENT_PREFIX}` and may end with a counter such as `(1/3)`: a long
  task comes in parts. Wait for all parts and read them, in order, as one text.

### How to reply
- Open every message about a task with exactly one marker, at the very start of its first line:

| Marker | Status | Meaning |
|---|---|---|
{rows}

- Only the marker that opens the first line changes the status. Markers further down are just
  text: a ✅ inside a step report is fine, but open a message with one only when the whole task
  is finished.
- Link each message to its task, one of these ways:
  1. send it as a Telegram reply to the task's message;
  2. put the task's tag `{hashtag}` in it, e.g. `[Done] {example} DNS fixed`;
  3. open it with `[Responding to: <first line of the task>]`.
  A message with none of these is attributed to the task in progress.
- When you start a task, announce which message you are responding to, e.g.
  `[Responding to: <first line of the task>] {hashtag}`, then report steps with
  `[Step N]` or `[Working]`, and end with `[Done]` or `[Error]`.

### Questions
- When you need a decision, send `[Question] {hashtag}` with the question, then stop working on
  that task and wait.
- The answer arrives as a reply whose first line starts with `{tag} {ANSWER_WORD}`. Continue with
  `[Working]` or `[Step N]`.

### URGENT and STOP
- When a message contains the word {URGENT_PREFIX} or STOP (in capitals), halt immediately: run
  no further commands for the current task and report where you stopped
  (`[Working] {hashtag} halted at ...`).
- On {URGENT_PREFIX}, handle that message next; on STOP, wait for instructions.

### Order
- Work on one task at a time. After the current task, take the queued tasks in the order they
  arrived, oldest first.
"""
