"""The consent page in a real browser: headless Chromium, driven by Playwright, renders the page,
refuses a wrong passphrase, then follows the bridge's redirect back to claude.ai with a code that
the test exchanges (with its PKCE verifier) for a token that works on /mcp.

Nothing leaves the machine: every request the page makes is routed, loopback requests to the
bridge go through, the claude.ai callback is answered locally, anything else is aborted (and fails
the test); Chromium also gets a proxy on a closed loopback port, so even a request the routing
does not see cannot reach the network.

Needs Debian's ``chromium`` (/usr/bin/chromium) and the ``playwright`` module (dev extra); never
``playwright install``. Without them the test skips, unless NEXUS_BRIDGE_REQUIRE_BROWSER is set,
in which case it fails.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from nexus_bridge.config import Settings
from tests.conftest import free_port
from tests.e2e.test_oauth import (
    CALLBACK,
    PASSPHRASE,
    exchange,
    mcp_status,
    oauth_bridge,
    pkce,
    register,
    start_authorization,
)

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_BROWSER_ENV = "NEXUS_BRIDGE_REQUIRE_BROWSER"
TIMEOUT_MS = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def chromium_or_skip() -> str:
    """Chromium's path; skips (or fails, if required) when Chromium or Playwright is missing."""
    if not CHROMIUM.is_file():
        problem = f"{CHROMIUM} is missing; install Debian's package: apt-get install chromium"
    elif importlib.util.find_spec("playwright") is None:
        problem = "the playwright module is missing; install the dev extra: make install"
    else:
        return str(CHROMIUM)
    message = f"the browser consent test cannot run: {problem}"
    if os.environ.get(REQUIRE_BROWSER_ENV):
        pytest.fail(f"{message} ({REQUIRE_BROWSER_ENV} is set, so this is an error)")
    pytest.skip(message)


def chromium_args() -> list[str]:
    # Playwright's launch() gives Chromium a new, empty --user-data-dir of its own (it refuses
    # one in args). A proxy on a closed loopback port: whatever the routing below does not see
    # goes nowhere. Loopback itself is never proxied: the bridge on 127.0.0.1 is reached directly.
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


async def test_consent_page_in_headless_chromium_from_wrong_passphrase_to_token(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    executable = chromium_or_skip()
    from playwright.async_api import Route, async_playwright

    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        verifier, challenge = pkce()
        consent_url = await start_authorization(b, client["client_id"], challenge)
        bridge = urlparse(b.base)

        callbacks: list[str] = []
        blocked: list[str] = []
        console: list[str] = []

        async def only_loopback(route: Route) -> None:
            url = route.request.url
            target = urlparse(url)
            if (target.scheme, target.netloc) == (bridge.scheme, bridge.netloc):
                await route.continue_()
            elif url.split("?", 1)[0] == CALLBACK:
                callbacks.append(url)
                await route.fulfill(
                    status=200, content_type="text/html", body="<p>callback captured</p>"
                )
            else:
                blocked.append(url)
                await route.abort()

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable,
                args=chromium_args(),
                timeout=TIMEOUT_MS,
            )
            try:
                context = await browser.new_context()
                await context.route("**/*", only_loopback)
                page = await context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                page.on("console", lambda message: console.append(message.text))

                # The page says who asks and where the browser will go back to.
                shown = await page.goto(consent_url)
                assert shown is not None
                assert shown.status == 200
                # The form's 303 leaves for claude.ai: form-action must allow it, or Chromium
                # blocks the redirect (it applies form-action to every hop).
                csp = await shown.header_value("content-security-policy")
                assert csp is not None
                assert "form-action 'self' https://claude.ai;" in csp
                assert (await page.locator("#client-name").inner_text()) == "Claude"
                assert (await page.locator("#redirect-host").inner_text()) == "claude.ai"
                assert "Allow Claude to use nexus-bridge?" in await page.locator("h1").inner_text()
                screenshot = tmp_path / "consent.png"
                await page.screenshot(path=str(screenshot), full_page=True)
                data = screenshot.read_bytes()
                assert data.startswith(PNG_SIGNATURE)
                assert len(data) > 1_000

                # A wrong passphrase: the same page again with the generic error, no redirect.
                await page.fill("#passphrase", "not the passphrase")
                async with page.expect_response(
                    lambda r: r.request.method == "POST" and r.url.startswith(b.base)
                ) as refused_info:
                    await page.get_by_role("button", name="Allow").click()
                refused = await refused_info.value
                assert refused.status == 401
                error = page.locator("#error")
                await error.wait_for()
                assert "That did not work" in await error.inner_text()
                assert "passphrase is wrong" not in (await page.content()).lower()
                assert callbacks == []
                assert urlparse(page.url).netloc == bridge.netloc

                # The right passphrase: a 303 to claude.ai's callback, which the browser follows.
                await page.fill("#passphrase", PASSPHRASE)
                await page.get_by_role("button", name="Allow").click()
                try:
                    await page.wait_for_url(CALLBACK + "?**", wait_until="commit")
                except Exception as exc:
                    raise AssertionError(
                        f"the browser did not reach {CALLBACK} (now at {page.url}); "
                        f"console: {console}"
                    ) from exc
                assert "callback captured" in await page.content()
            finally:
                await browser.close()

        assert blocked == [], f"the page tried to reach other hosts: {blocked}"
        (callback,) = callbacks
        query = parse_qs(urlparse(callback).query)
        assert query["state"] == ["xyz-state"]
        (code,) = query["code"]
        tokens: dict[str, Any] = await exchange(b, client["client_id"], code, verifier)
        assert tokens["token_type"] == "Bearer"
        assert await mcp_status(b, tokens["access_token"]) == 200
