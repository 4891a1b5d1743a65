"""The task card's server side (MCP Apps, ``io.modelcontextprotocol/ui``) over real HTTP with the
SDK's own client: a client that negotiates the extension sees ``_meta.ui`` on the tools that show
the card and can read the card; one that does not sees exactly the tools, resources and results
it saw before the card existed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp import Client
from mcp.client.extension import advertise
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from nexus_bridge.config import Settings
from nexus_bridge.task_card import (
    APP_MIME_TYPE,
    CLIENT_SETTINGS,
    EXTENSION_ID,
    TASK_CARD_URI,
    task_card_html,
)
from tests.conftest import mcp_client, running_server
from tests.e2e.test_http import TOOLS, call

CARD_TOOLS = {"send_message", "get_message", "watch_task"}


@asynccontextmanager
async def apps_client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    """The SDK's client, advertising MCP Apps as a host that renders the card does."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with (
        create_mcp_http_client(headers=headers) as http,
        Client(
            streamable_http_client(url, http_client=http),
            extensions=[advertise(EXTENSION_ID, CLIENT_SETTINGS)],
        ) as client,
    ):
        yield client


def wire(tool: Any) -> dict[str, Any]:
    dumped: dict[str, Any] = tool.model_dump(by_alias=True, exclude_none=True, mode="json")
    return dumped


async def test_a_client_that_negotiates_apps_sees_the_card_on_three_tools_and_reads_it(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings()) as (url, _), apps_client(url) as client:
        tools = {t.name: wire(t) for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS | {"watch_task"}
        for name, tool in tools.items():
            meta = tool.get("_meta", {})
            if name in CARD_TOOLS:
                assert meta["ui"] == {"resourceUri": TASK_CARD_URI}, name
                assert meta["ui/resourceUri"] == TASK_CARD_URI, name  # the older, flat form
            else:
                assert "ui" not in meta, name
                assert "ui/resourceUri" not in meta, name

        listed = (await client.list_resources()).resources
        assert [(str(r.uri), r.mime_type) for r in listed] == [(TASK_CARD_URI, APP_MIME_TYPE)]
        read = await client.read_resource(TASK_CARD_URI)
        (content,) = read.contents
        assert content.mime_type == APP_MIME_TYPE
        html = getattr(content, "text", "")
        assert html == task_card_html()
        assert html.lstrip().lower().startswith("<!doctype html>")

        sent = await call(client, "send_message", {"message": "show me on a card"})
        watched = await call(client, "watch_task", {"id": sent["id"]})
        assert watched == await call(client, "get_message", {"id": sent["id"]})
        assert watched["content"] == "show me on a card"


async def test_a_client_without_apps_sees_exactly_what_it_saw_before_the_card(
    make_settings: Callable[..., Settings],
) -> None:
    async with (
        running_server(make_settings()) as (url, _),
        mcp_client(url) as plain,
        apps_client(url) as apps,
    ):
        plain_tools = [wire(t) for t in (await plain.list_tools()).tools]
        apps_tools = [wire(t) for t in (await apps.list_tools()).tools]
        assert {t["name"] for t in plain_tools} == TOOLS
        assert all(not {"ui", "ui/resourceUri"} & set(t.get("_meta", {})) for t in plain_tools)
        # The same tools, word for word, once the card's additions are taken away.
        stripped = []
        for tool in apps_tools:
            if tool["name"] == "watch_task":
                continue
            meta = {
                k: v for k, v in tool.get("_meta", {}).items() if k not in {"ui", "ui/resourceUri"}
            }
            tool = {k: v for k, v in tool.items() if k != "_meta"} | (
                {"_meta": meta} if meta else {}
            )
            stripped.append(tool)
        assert plain_tools == stripped

        assert (await plain.list_resources()).resources == []

        # The tool the card adds is unknown to this client, as any unknown tool is.
        refused = await plain.call_tool("watch_task", {"id": "anything"})
        assert refused.is_error
        unknown = await plain.call_tool("no_such_tool", {})
        assert refused.content[0].text == unknown.content[0].text.replace(
            "no_such_tool", "watch_task"
        )

        # Results are the same for both clients.
        sent = await plain.call_tool("send_message", {"message": "same result for both"})
        again = await apps.call_tool("send_message", {"message": "same result for both"})
        assert json.loads(sent.content[0].text)["id"] == json.loads(again.content[0].text)["id"]
        assert sent.structured_content == {
            "queued": True,
            "id": sent.structured_content["id"],
            "status": "pending",
            "reason": None,
        }
        assert again.structured_content == {
            **sent.structured_content,
            "queued": False,
            "reason": "duplicate",
        }
        detail_plain = await plain.call_tool("get_message", {"id": sent.structured_content["id"]})
        detail_apps = await apps.call_tool("get_message", {"id": sent.structured_content["id"]})
        assert detail_plain.structured_content == detail_apps.structured_content
        assert detail_plain.meta == detail_apps.meta
