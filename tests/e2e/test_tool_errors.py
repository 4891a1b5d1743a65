"""Tool errors stay one short line whatever the arguments echo (found by tests/fuzz)."""

from __future__ import annotations

from collections.abc import Callable

from nexus_bridge.config import Settings
from tests.conftest import mcp_client, running_server
from tests.e2e.test_http import call_error


async def test_an_error_that_echoes_a_huge_argument_stays_short_and_keeps_its_advice(
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
            assert "unknown" in text
            assert "…" in text
        text = await call_error(client, "queue_status", {"target": "x" * 100_000})
        assert text.endswith("known targets: homelab")
