"""The direct agent API as a client: one tool call on a running bridge's ``/agent/mcp``.

Used by ``nexus-bridge agent …`` (one call per command) and by the agent runner (many calls).
Each call opens its own MCP session, so a bridge that restarted between two calls costs nothing
but that call.
"""

from __future__ import annotations

from typing import Any, Final

from nexus_bridge import config
from nexus_bridge.errors import AgentTokenRefused, BridgeUnreachable, NexusBridgeError

AGENT_MCP_PATH: Final = "/agent/mcp"


async def call_agent_tool(
    base_url: str, token: str, tool: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    """Call ``tool`` with ``arguments`` on the bridge at ``base_url``; its structured result.

    Raises:
        AgentTokenRefused: the bridge answered 401/403.
        BridgeUnreachable: no answer (not running, network, timeout, a broken session).
        NexusBridgeError: the tool refused the call (its message).
    """
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp_types import TextContent

    url = base_url.rstrip("/") + AGENT_MCP_PATH
    statuses: list[int] = []

    async def remember(response: Any) -> None:
        statuses.append(int(response.status_code))

    try:
        async with create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http:
            # The SDK turns an HTTP 401 into a generic error: keep the status to explain it.
            http.event_hooks = {"request": [], "response": [remember]}
            async with Client(streamable_http_client(url, http_client=http)) as client:
                result = await client.call_tool(tool, arguments)
    except Exception as exc:  # noqa: BLE001 - the SDK wraps network errors variously
        if 401 in statuses or 403 in statuses:
            raise AgentTokenRefused(
                f"the bridge at {base_url} refused the agent token ({config.ENV_PREFIX}AGENT_TOKEN)"
            ) from None
        detail = error_messages(exc)[-1]
        raise BridgeUnreachable(
            f"cannot reach the bridge at {base_url} ({config.ENV_PREFIX}URL): is it running? "
            f"({detail})"
        ) from None
    if result.is_error:
        texts = [c.text for c in result.content if isinstance(c, TextContent)]
        raise NexusBridgeError(texts[0] if texts else "the call failed")
    return dict(result.structured_content or {})


def error_messages(exc: BaseException) -> list[str]:
    """The messages of an exception and of everything inside it (groups, causes)."""
    found = [f"{type(exc).__name__}: {exc}"]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found += error_messages(inner)
    if exc.__cause__ is not None:
        found += error_messages(exc.__cause__)
    return found
