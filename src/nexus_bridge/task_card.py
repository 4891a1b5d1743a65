"""The live task card: an MCP Apps (``io.modelcontextprotocol/ui``) view of one task.

A host that renders MCP Apps (claude.ai, Claude Desktop, VS Code, Goose, ...) shows the
``ui://nexus-bridge/task`` resource in a sandboxed frame under a call to a tool that points at it
(``_meta.ui.resourceUri``), hands the frame that call's result, and proxies the frame's own tool
calls to this server. The card (task_card.html, next to this module: one self-contained document,
no build step) then follows the task with ``pull_updates`` and ``get_message``, answers a question
with ``reply_to_task`` and cancels with ``cancel_message``.

A client that did not negotiate the extension sees exactly the tools and resources it saw before
the card existed: ``tools_for_client`` takes the card's ``_meta`` off the tools and drops the tools
that exist only for the card, ``resources_for_client`` the card's resource.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Final

from mcp.server.apps import APP_MIME_TYPE, EXTENSION_ID, Apps
from mcp_types import Resource, Tool

TASK_CARD_URI: Final = "ui://nexus-bridge/task"
TASK_CARD_FILE: Final = "task_card.html"
# What a tool carries to have its result shown on the card: ``_meta.ui.resourceUri`` and, as the
# ext-apps package's registerAppTool also writes it for hosts that read the older form, the flat
# ``_meta["ui/resourceUri"]``.
LEGACY_RESOURCE_URI_KEY: Final = "ui/resourceUri"
TASK_CARD_META: Final[dict[str, Any]] = {
    "ui": {"resourceUri": TASK_CARD_URI},
    LEGACY_RESOURCE_URI_KEY: TASK_CARD_URI,
}
_CARD_META_KEYS: Final = frozenset({"ui", LEGACY_RESOURCE_URI_KEY})
# Tools that exist only for hosts that render the card (the model asks for the card with it).
CARD_ONLY_TOOLS: Final = frozenset({"watch_task"})

# The settings a client advertises under capabilities.extensions to negotiate the card.
CLIENT_SETTINGS: Final[dict[str, Any]] = {"mimeTypes": [APP_MIME_TYPE]}


def task_card_html() -> str:
    """The card's HTML document, as the package ships it."""
    return resources.files("nexus_bridge").joinpath(TASK_CARD_FILE).read_text(encoding="utf-8")


def task_card_extension() -> Apps:
    """The MCP Apps extension with the card's resource, for ``MCPServer(extensions=[...])``."""
    apps = Apps()
    apps.add_html_resource(
        TASK_CARD_URI,
        task_card_html(),
        name="task-card",
        title="nexus-bridge task",
        description="A live card of one task: status, the agent's updates, answer, cancel.",
        prefers_border=True,
    )
    return apps


def tools_for_client(tools: list[Tool], *, renders_card: bool) -> list[Tool]:
    """``tools`` as a client sees them: unchanged for one that negotiated the card; for any other,
    without the card-only tools and without the card's ``_meta`` keys."""
    if renders_card:
        return tools
    return [_without_ui(tool) for tool in tools if tool.name not in CARD_ONLY_TOOLS]


def resources_for_client(listed: list[Resource], *, renders_card: bool) -> list[Resource]:
    """``listed`` without the card's resource for a client that did not negotiate the card."""
    if renders_card:
        return listed
    return [r for r in listed if not str(r.uri).startswith("ui://")]


def _without_ui(tool: Tool) -> Tool:
    if not tool.meta or not _CARD_META_KEYS & set(tool.meta):
        return tool
    rest = {key: value for key, value in tool.meta.items() if key not in _CARD_META_KEYS}
    return tool.model_copy(update={"meta": rest or None})


__all__ = [
    "APP_MIME_TYPE",
    "CARD_ONLY_TOOLS",
    "CLIENT_SETTINGS",
    "EXTENSION_ID",
    "TASK_CARD_META",
    "TASK_CARD_URI",
    "resources_for_client",
    "task_card_extension",
    "task_card_html",
    "tools_for_client",
]
