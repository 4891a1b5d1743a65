"""The direct agent API as a client: tool calls on a running bridge's ``/agent/mcp``.

Used by ``nexus-bridge agent …`` (one call per command) and by the agent runner (many calls,
over one HTTP connection pool). Each call is one MCP request of its own, so a bridge that
restarted between two calls costs nothing but that call.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, Self

from nexus_bridge import config
from nexus_bridge.constants import AGENT_MCP_PATH
from nexus_bridge.errors import (
    AgentTokenRefused,
    BridgeTroubled,
    BridgeUnreachable,
    NexusBridgeError,
    is_bridge_side,
)

REFUSED_STATUSES: Final = frozenset({401, 403})


class AgentClient:
    """Tool calls on the bridge at ``base_url`` with an agent token; use as an async context."""

    def __init__(self, base_url: str, token: str) -> None:
        from mcp.shared._httpx_utils import create_mcp_http_client

        self.base_url = base_url
        self._url = base_url.rstrip("/") + AGENT_MCP_PATH
        self._http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        # The SDK turns an HTTP 401 into a generic error: the status explains it.
        self._http.event_hooks = {"request": [], "response": [self._remember]}
        self._refused = False

    async def _remember(self, response: Any) -> None:
        if int(response.status_code) in REFUSED_STATUSES:
            self._refused = True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Call ``tool`` with ``arguments``; its structured result.

        Raises:
            AgentTokenRefused: the bridge answered 401/403.
            BridgeUnreachable: no answer (not running, network, timeout, a broken session).
            BridgeTroubled: the bridge could not do it on its side (its database is away,
                busy or full, an internal error): the same call may work later.
            NexusBridgeError: the tool refused the call (its message).
        """
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp_types import LATEST_PROTOCOL_VERSION, TextContent

        self._refused = False
        try:
            # Pinned to our own protocol version: one POST per call, no discovery round trip.
            transport = streamable_http_client(self._url, http_client=self._http)
            async with Client(transport, mode=LATEST_PROTOCOL_VERSION) as client:
                result = await client.call_tool(tool, arguments)
        except Exception as exc:  # noqa: BLE001 - the SDK wraps network errors variously
            if self._refused:
                raise AgentTokenRefused(
                    f"the bridge at {self.base_url} refused the agent token "
                    f"({config.ENV_PREFIX}AGENT_TOKEN)"
                ) from None
            detail = error_messages(exc)[-1]
            raise BridgeUnreachable(
                f"cannot reach the bridge at {self.base_url} ({config.ENV_PREFIX}URL): is it "
                f"running? ({detail})"
            ) from None
        if result.is_error:
            texts = [c.text for c in result.content if isinstance(c, TextContent)]
            message = texts[0] if texts else "the call failed"
            raise BridgeTroubled(message) if is_bridge_side(message) else NexusBridgeError(message)
        return dict(result.structured_content or {})


async def call_agent_tool(
    base_url: str, token: str, tool: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    """One call of ``tool`` (see :meth:`AgentClient.call`)."""
    async with AgentClient(base_url, token) as client:
        return await client.call(tool, arguments)


def error_messages(exc: BaseException) -> list[str]:
    """The messages of an exception and of everything inside it (groups, causes)."""
    found = [f"{type(exc).__name__}: {exc}"]
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found += error_messages(inner)
    if exc.__cause__ is not None:
        found += error_messages(exc.__cause__)
    return found
