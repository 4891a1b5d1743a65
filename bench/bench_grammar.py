"""5. The agent grammar on 10,000-character inputs vs ``str.splitlines()`` on the same input.

``parse_agent_message`` reads text an LLM wrote, so any input must parse fast. Every input here is
exactly 10,000 characters: ordinary agent reports, and adversarial strings built from the
grammar's own pieces (among them ``[Responding to:`` and a run of spaces, which once took
minutes at this length). The row reports the worst input, by median (a p95 on a shared machine
measures its neighbours as much as the parser); the target is absolute (median < 10 ms), and the
baseline is a plain ``str.splitlines()`` of that same input, the least any reading of it costs.
"""

from __future__ import annotations

from benchlib import Case, Report, Row, Sample, fmt_seconds, measure, progress

from nexus_bridge.protocol import parse_agent_message

LENGTH = 10_000
TARGET_SECONDS = 0.010


def _exactly(text: str, length: int = LENGTH) -> str:
    """``text`` repeated and cut to ``length`` characters."""
    return (text * (length // len(text) + 1))[:length]


def _padded(head: str, pad: str, tail: str) -> str:
    """``head``, then ``pad`` repeated, then ``tail``: ``LENGTH`` characters in all."""
    return head + _exactly(pad, LENGTH - len(head) - len(tail)) + tail


INPUTS: dict[str, str] = {
    "ordinary step report": _exactly(
        "[Step 2/5] #3f2a9c1e configured the router\n✅ backups verified\n"
        "checked the disks: sda healthy, sdb at 71% (see [task 0badc0de])\n"
    ),
    "ordinary start": _padded(
        "[Responding to: Fix the DNS record for nexus] #3f2a9c1e\n",
        "Looked at the zone file and found the stale A record; fixing it now. ",
        "",
    ),
    "responding-to + spaces": _padded("[Responding to: ", " ", "x"),
    "responding-to + '[ '": _padded("[Responding to: ", "[ ", ""),
    "responding-to + '[x]'": _padded("[Responding to: ", "[x] ", ""),
    "step + spaces": _padded("[Step 1", " ", "x"),
    "task header + spaces": _padded("[ task ", " ", "3f2a9c1e x"),
    "tags only": _exactly("#3f2a9c1e "),
    "'[task ' repeated": _exactly("[task "),
    "mentions": _padded("", "@bot ", "x"),
    "brackets": _exactly("["),
    "blank lines": _padded("", "\n \t", "[Done]"),
}


async def run(report: Report, *, iterations: int, warmup: int) -> None:
    progress(f"5. agent grammar: {len(INPUTS)} inputs of {LENGTH} characters, {iterations} rounds")
    for name, text in INPUTS.items():
        assert len(text) == LENGTH, (name, len(text))

    def case(name: str, text: str, parse: bool) -> Case:
        async def call() -> None:
            if parse:
                parse_agent_message(text)
            else:
                text.splitlines()

        return Case(f"{'parse' if parse else 'lines'}:{name}", call)

    cases = [case(name, text, parse) for name, text in INPUTS.items() for parse in (True, False)]
    samples = await measure(cases, iterations=iterations, warmup=warmup, label="grammar")
    parsed: dict[str, Sample] = {name: samples[f"parse:{name}"] for name in INPUTS}
    worst = max(parsed, key=lambda name: parsed[name].median)
    sample, baseline = parsed[worst], samples[f"lines:{worst}"]
    report.rows.append(
        Row(
            section="5",
            name=f"agent grammar, worst of {len(INPUTS)} inputs of 10k chars ({worst})",
            measured=sample.describe(),
            baseline=f"splitlines {baseline.describe()}",
            ratio=sample.median / baseline.median,
            target_text=f"median < {fmt_seconds(TARGET_SECONDS)}",
            passed=sample.median < TARGET_SECONDS,
        )
    )
    report.notes.append(
        "5: parse_agent_message on 10,000-character inputs, ordinary and adversarial; the worst "
        f"input's time (slowest median of {len(INPUTS)}) against str.splitlines() on that input"
    )
