"""A minimal MCP Apps host for the task card, in Debian's Chromium (driven by playwright-core),
shared by tests/e2e/test_task_card_browser.py and bench/bench_card.py.

The host page does what claude.ai does for a ``ui://`` resource, no more: it puts the card's HTML
(as the server's ``resources/read`` returned it) into an ``<iframe sandbox="allow-scripts">`` (an
opaque origin: no cookies, no storage, no access to the page), answers ``ui/initialize`` with its
context (theme, safe-area insets, platform), hands over the tool's input and result, follows
``ui/notifications/size-changed``, and proxies every ``tools/call`` from the card to nexus-bridge
through the real MCP client in this Python process, recording each call. The page's own
Content-Security-Policy (which the srcdoc frame inherits) allows inline script and style and
nothing else, and every request the browser makes except the host page itself is aborted and
recorded, so a card that fetched anything from outside would be caught.

Two hosts speak the protocol: ``"minimal"``, written here from the MCP Apps specification and the
``@modelcontextprotocol/ext-apps`` package's schema (needs no Node.js), and ``"ext-apps"``, the
package's own ``AppBridge`` and ``PostMessageTransport`` (tests/card-host, pinned with its
package-lock.json, installed by ``make node-deps``), bundled with esbuild into the page.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp import Client

from tests.conftest import REPO_ROOT, free_port

CHROMIUM = Path("/usr/bin/chromium")
HOST_URL = "http://card-host.test/"
TIMEOUT_MS = 10_000
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# A phone's home indicator: the host tells the card to keep clear of it.
PHONE_INSETS = {"top": 0, "right": 0, "bottom": 34, "left": 0}
NO_INSETS = {"top": 0, "right": 0, "bottom": 0, "left": 0}
HOST_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"
HOSTS = ("minimal", "ext-apps")
CARD_HOST_DIR = REPO_ROOT / "tests" / "card-host"
ESBUILD = CARD_HOST_DIR / "node_modules" / ".bin" / "esbuild"
BUILD_TIMEOUT_SECONDS = 60

MINIMAL_HOST = """const send = (message) => frame.contentWindow.postMessage(message, "*");
host.setContext = (changed) => {
  Object.assign(host.context, changed);
  if (changed.theme) document.body.className = changed.theme;
  send({ jsonrpc: "2.0", method: "ui/notifications/host-context-changed", params: changed });
};
window.addEventListener("message", async (event) => {
  if (event.source !== frame.contentWindow) return;
  const m = event.data;
  host.log.push(m && m.method ? m.method : "response");
  if (!m || m.jsonrpc !== "2.0") return;
  if (m.method === "ui/initialize") {
    send({ jsonrpc: "2.0", id: m.id, result: {
      protocolVersion: m.params.protocolVersion,
      hostInfo: { name: "nexus-bridge test host", version: "1" },
      hostCapabilities: { serverTools: {} },
      hostContext: host.context,
    } });
  } else if (m.method === "ui/notifications/initialized") {
    host.initialized = true;
    send({ jsonrpc: "2.0", method: "ui/notifications/tool-input",
           params: { arguments: SETUP.input } });
    send({ jsonrpc: "2.0", method: "ui/notifications/tool-result", params: SETUP.result });
  } else if (m.method === "ui/notifications/size-changed") {
    if (m.params && m.params.height > 0) frame.style.height = m.params.height + "px";
  } else if (m.method === "tools/call") {
    const result = await proxy(m.params.name, m.params.arguments);
    send(result.__error
      ? { jsonrpc: "2.0", id: m.id, error: { code: -32603, message: result.__error } }
      : { jsonrpc: "2.0", id: m.id, result });
  } else if (m.id !== undefined && m.method !== undefined) {
    send({ jsonrpc: "2.0", id: m.id, error: { code: -32601, message: "Method not found" } });
  }
});"""
EXT_APPS_HOST = """const { AppBridge, PostMessageTransport } = window.ExtAppsHost;
const bridge = new AppBridge(
  null,
  { name: "nexus-bridge test host (ext-apps AppBridge)", version: "1" },
  { serverTools: {} },
  { hostContext: { ...host.context } },
);
bridge.oncalltool = async (params) => {
  host.log.push("tools/call");
  const result = await proxy(params.name, params.arguments);
  if (result.__error) throw new Error(result.__error);
  return result;
};
bridge.onsizechange = ({ height }) => {
  host.log.push("ui/notifications/size-changed");
  if (height > 0) frame.style.height = height + "px";
};
bridge.oninitialized = () => {
  host.initialized = true;
  bridge.sendToolInput({ arguments: SETUP.input });
  bridge.sendToolResult(SETUP.result);
};
host.setContext = (changed) => {
  Object.assign(host.context, changed);
  if (changed.theme) document.body.className = changed.theme;
  bridge.setHostContext({ ...host.context });
};
const transport = new PostMessageTransport(frame.contentWindow, frame.contentWindow);
host.connected = bridge.connect(transport);"""

_HOST_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { margin: 0; padding: 16px; font: 14px system-ui, sans-serif; }
  body.light { background: #f5f4ef; } body.dark { background: #262624; }
  .turn { max-width: 760px; margin: 0 auto; }
  iframe { display: block; width: 100%; height: 120px; border: 1px solid #8884;
           border-radius: 12px; background: transparent; }
</style></head>
<body><div class="turn" id="turn"></div>
__PRELUDE__
<script>
"use strict";
const SETUP = __SETUP__;
const frame = document.createElement("iframe");
frame.setAttribute("sandbox", "allow-scripts");
frame.setAttribute("title", "nexus-bridge task");
frame.srcdoc = SETUP.html;
document.body.className = SETUP.context.theme;
document.getElementById("turn").appendChild(frame);
const host = window.cardHost = { log: [], inFlight: 0, initialized: false, context: SETUP.context };
async function proxy(name, args) {
  host.inFlight += 1;
  try {
    return await window.nexusBridgeProxyToolCall(name, args || {});
  } finally {
    host.inFlight -= 1;
  }
}
__HOST__
</script></body></html>
"""


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    started: float
    finished: float | None = None


@dataclass
class CardHost:
    page: Any  # playwright.async_api.Page
    calls: list[ToolCall] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    @property
    def card(self) -> Any:
        """The card's frame (a FrameLocator) for locators."""
        return self.page.frame_locator("iframe")

    async def frame(self) -> Any:
        """The card's frame (a Frame) for evaluate."""
        handle = await self.page.wait_for_selector("iframe")
        frame = await handle.content_frame()
        assert frame is not None
        return frame

    async def card_state(self) -> dict[str, Any]:
        frame = await self.frame()
        state: dict[str, Any] = await frame.evaluate(
            "() => ({following: window.nexusBridgeCard.following,"
            " stopped: window.nexusBridgeCard.stopped, toolCalls: window.nexusBridgeCard.toolCalls,"
            " status: window.nexusBridgeCard.task && window.nexusBridgeCard.task.status})"
        )
        return state

    async def in_flight(self) -> int:
        return int(await self.page.evaluate("() => window.cardHost.inFlight"))

    async def set_context(self, **changed: Any) -> None:
        await self.page.evaluate("(changed) => window.cardHost.setContext(changed)", changed)

    async def settle(self) -> None:
        """Two animation frames in the card and the page: the card has drawn and resized."""
        frame = await self.frame()
        script = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        await frame.evaluate(script)
        await self.page.evaluate(script)


def chromium_args() -> list[str]:
    # A proxy on a closed loopback port: whatever the routing does not see goes nowhere.
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--proxy-server=http://127.0.0.1:{free_port()}",
    ]


def host_page(setup: dict[str, Any], bundle: str | None = None) -> str:
    """The host page: the minimal host, or (with ``bundle``) the ext-apps AppBridge host."""
    page = _HOST_PAGE.replace("__HOST__", MINIMAL_HOST if bundle is None else EXT_APPS_HOST)
    # The bundle in its own script element, before the host's; no "</script" inside ends it.
    safe = "" if bundle is None else bundle.replace("</script", "<\\/script")
    prelude = "" if bundle is None else f"<script>{safe}</script>"
    # JSON in a script element: "<" escaped so that no "</script>" in the card's HTML ends it.
    return page.replace("__PRELUDE__", prelude).replace(
        "__SETUP__", json.dumps(setup).replace("<", "\\u003c")
    )


def ext_apps_bundle() -> str | None:
    """``AppBridge`` and ``PostMessageTransport`` of the pinned ``@modelcontextprotocol/ext-apps``,
    bundled by the pinned esbuild; None where tests/card-host/node_modules is missing."""
    if not ESBUILD.is_file():
        return None
    built = subprocess.run(
        [str(ESBUILD), "host.mjs", "--bundle", "--minify", "--format=iife", "--log-level=error"],
        cwd=CARD_HOST_DIR,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")},
    )
    if built.returncode != 0:
        raise AssertionError(f"esbuild failed to bundle the ext-apps host: {built.stderr}")
    return built.stdout


@asynccontextmanager
async def card_host(
    executable: str,
    client: Client,
    *,
    html: str,
    tool_input: dict[str, Any],
    tool_result: dict[str, Any],
    theme: str = "light",
    viewport: dict[str, int] = PHONE,
    insets: dict[str, int] = PHONE_INSETS,
    bundle: str | None = None,
) -> AsyncIterator[CardHost]:
    """Chromium showing the host page with the card; the card's tool calls go to ``client``."""
    from playwright.async_api import Route, async_playwright

    setup = {
        "html": html,
        "input": tool_input,
        "result": tool_result,
        "context": {
            "theme": theme,
            "platform": "mobile" if viewport["width"] < 600 else "web",
            "safeAreaInsets": insets,
            "displayMode": "inline",
            "locale": "en-GB",
        },
    }
    page_html = host_page(setup, bundle)

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, args=chromium_args(), timeout=TIMEOUT_MS
        )
        try:
            context = await browser.new_context(viewport=viewport)  # type: ignore[arg-type]
            page = await context.new_page()
            host = CardHost(page=page)

            async def only_the_host_page(route: Route) -> None:
                if route.request.url == HOST_URL:
                    await route.fulfill(
                        status=200,
                        content_type="text/html",
                        headers={"Content-Security-Policy": HOST_CSP},
                        body=page_html,
                    )
                else:
                    host.blocked.append(route.request.url)
                    await route.abort()

            async def proxy(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
                call = ToolCall(name=name, arguments=arguments, started=time.monotonic())
                host.calls.append(call)
                try:
                    result = await client.call_tool(name, arguments)
                except Exception as exc:  # the host answers the card with a JSON-RPC error
                    return {"__error": f"{type(exc).__name__}: {exc}"}
                finally:
                    call.finished = time.monotonic()
                dumped: dict[str, Any] = result.model_dump(
                    by_alias=True, mode="json", exclude_none=True
                )
                return dumped

            await context.route("**/*", only_the_host_page)
            await page.expose_function("nexusBridgeProxyToolCall", proxy)
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda message: host.console.append(message.text))
            page.on("pageerror", lambda error: host.console.append(f"pageerror: {error}"))
            shown = await page.goto(HOST_URL)
            assert shown is not None
            assert shown.status == 200
            yield host
        finally:
            await browser.close()
