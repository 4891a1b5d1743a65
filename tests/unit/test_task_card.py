"""The task card's document on its own: self-contained (a host blocks every other origin), small,
and calling only tools the server has, with the arguments those tools take."""

from __future__ import annotations

import re

from nexus_bridge.queue import QueueService
from nexus_bridge.task_card import (
    CARD_ONLY_TOOLS,
    TASK_CARD_META,
    TASK_CARD_URI,
    task_card_extension,
    task_card_html,
)

HTML = task_card_html()
MAX_CARD_BYTES = 64 * 1024
NAMED = re.compile(r'callTool\("([a-z_]+)"')
INLINE = re.compile(r'callTool\("([a-z_]+)", \{([^}]*)\}')
PULL_ARGS = re.compile(r"var args = \{([^}]*)\};")


def test_the_card_fetches_nothing_and_loads_nothing_from_outside() -> None:
    lowered = HTML.lower()
    for needle in (
        "src=",
        "href=",
        "@import",
        "url(",
        "fetch(",
        "xmlhttprequest",
        "websocket",
        "eventsource",
        "import(",
        "sendbeacon",
        "http://",
        "https://",
        "//cdn",
    ):
        assert needle not in lowered, needle
    assert lowered.count("<script>") == 1  # one inline script, no external one
    assert lowered.count("<style>") == 1


def test_the_card_is_small() -> None:
    assert len(HTML.encode()) < MAX_CARD_BYTES


def test_the_card_talks_only_to_its_parent_window() -> None:
    assert "window.parent.postMessage(" in HTML
    assert "event.source !== window.parent" in HTML
    assert "localStorage" not in HTML  # a sandboxed frame has no storage
    assert "confirm(" not in HTML.replace("cancel-", "")  # no modal dialogs in a sandbox


async def test_the_card_calls_only_tools_the_server_has_with_their_arguments(
    queue: QueueService,
) -> None:
    from nexus_bridge.mcp_tools import create_mcp_server

    server = create_mcp_server(queue, default_identity="local")
    schemas = {t.name: t.input_schema for t in await server.list_tools()}
    assert set(NAMED.findall(HTML)) == {
        "pull_updates",
        "get_message",
        "reply_to_task",
        "cancel_message",
    }
    # The arguments: written inline, or (pull_updates) built in `args` first.
    called = {name: set(re.findall(r"([a-z_]+):", body)) for name, body in INLINE.findall(HTML)}
    built = PULL_ARGS.search(HTML)
    assert built is not None
    called["pull_updates"] = set(re.findall(r"([a-z_]+):", built.group(1))) | {"cursor"}
    assert "args.cursor = " in HTML
    assert set(called) == set(NAMED.findall(HTML))
    for name, keys in called.items():
        assert keys <= set(schemas[name]["properties"]), (name, keys)
        assert set(schemas[name].get("required", [])) <= keys, name


def test_the_extension_serves_the_card_under_the_uri_the_tools_name() -> None:
    (binding,) = task_card_extension().resources()
    assert str(binding.resource.uri) == TASK_CARD_URI == TASK_CARD_META["ui"]["resourceUri"]
    assert binding.resource.mime_type == "text/html;profile=mcp-app"
    assert "watch_task" in CARD_ONLY_TOOLS
