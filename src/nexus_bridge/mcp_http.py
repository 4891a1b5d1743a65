"""The HTTP layer around the two MCP endpoints (``/mcp`` and ``/agent/mcp``).

- Only ``POST``: the server is stateless and answers in plain JSON, so there is no event stream
  to open with ``GET`` (nor a session to ``DELETE``); anything else is ``405`` with
  ``Allow: POST``, as the Streamable HTTP transport says for a server without a GET stream.
- The client's disconnect is watched: once the request body is read, nobody else listens for
  ``http.disconnect``, so a tool waiting for work (``next_task``, ``pull_updates``) would go on
  and claim a task, or mark updates read, for a client that is gone. :func:`client_gone` gives
  the tool an event that is set when its HTTP client disconnects.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Final

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_CLIENT_GONE: Final[contextvars.ContextVar[asyncio.Event | None]] = contextvars.ContextVar(
    "nexus_bridge_client_gone", default=None
)


def client_gone() -> asyncio.Event | None:
    """Set once the HTTP client of the current request disconnects; None outside HTTP (stdio).

    The SDK runs a tool in a task started from the request's own context (or in the request's
    task itself), so the event reaches the tool through this context variable.
    """
    return _CLIENT_GONE.get()


class McpEndpoint:
    """Wraps an MCP endpoint: 405 for anything but POST, and the disconnect watch."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            response = JSONResponse(
                {
                    "error": "method not allowed",
                    "detail": "this MCP endpoint takes POST only (stateless, no event stream)",
                },
                status_code=405,
                headers={"Allow": "POST"},
            )
            await response(scope, receive, send)
            return
        await _watching_disconnect(self.app, scope, receive, send)


async def _watching_disconnect(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    gone = asyncio.Event()
    body_read = asyncio.Event()

    async def app_receive() -> Message:
        if body_read.is_set():
            # The body is in; the watcher owns the real receive. Answer as it would.
            await gone.wait()
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            body_read.set()
        elif not message.get("more_body", False):
            body_read.set()
        return message

    async def watch() -> None:
        await body_read.wait()
        while not gone.is_set():
            if (await receive())["type"] == "http.disconnect":
                gone.set()

    token = _CLIENT_GONE.set(gone)
    watcher = asyncio.create_task(watch(), name="mcp-disconnect-watch")
    try:
        await app(scope, app_receive, send)
    finally:
        watcher.cancel()
        _CLIENT_GONE.reset(token)
        await asyncio.gather(watcher, return_exceptions=True)
