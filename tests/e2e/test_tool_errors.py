"""Tool errors stay one short line whatever the arguments echo (found by tests/fuzz)."""

from __future__ import annotations

from collections.abc import Callable

from nexus_bridge.config import Settings
from nexus_bridge.mcp_tools import MAX_ERROR_CHARS, bounded
from tests.conftest import mcp_client, running_server
from tests.e2e.test_http import call_error


async def test_an_error_about_a_huge_argument_is_one_short_line_naming_it(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings()) as (url, _), mcp_client(url) as client:
        for tool, args in (
            ("queue_status", {"target": "x" * 100_000}),
            ("send_message", {"message": "hello", "target": "y" * 50_000}),
            ("list_messages", {"target": "z" * 50_000}),
        ):
            text = await call_error(client, tool, args)
            assert len(text) <= 600, (tool, len(text))
            assert "\n" not in text
            assert "target" in text
        text = await call_error(client, "queue_status", {"target": "nope"})
        assert text.endswith("known targets: homelab")


def test_a_long_or_multiline_message_becomes_one_line_cut_in_the_middle_keeping_its_advice() -> (
    None
):
    assert bounded("short") == "short"
    assert bounded("two\nlines") == "two lines"
    message = "unknown target '" + "x" * 100_000 + "'; known targets: homelab"
    line = bounded(message)
    assert len(line) <= MAX_ERROR_CHARS
    assert line.startswith("unknown target 'xxx")
    assert " … " in line
    assert line.endswith("known targets: homelab")
