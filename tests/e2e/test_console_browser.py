"""The owner's console in a real browser (Debian's Chromium, driven by Playwright, as the consent
page's test does): sign in, follow a task sent over MCP as the agent works on it (the timeline
grows live, without a reload), answer its question, cancel another, refuse a form without its
CSRF token, revoke a client's tokens, and sign out. axe-core (pinned in tests/ts) checks every
page in the browser, at phone and desktop widths, and each page is saved as a screenshot in
test-artifacts/console/ to look at.

Nothing leaves the machine: only the bridge on loopback is reachable (see test_consent_browser).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from nexus_bridge.config import Settings
from tests.conftest import REPO_ROOT, mcp_client, running_server
from tests.e2e.test_agent_api import FELT_TOKEN, agent_client, two_targets
from tests.e2e.test_consent_browser import (
    PNG_SIGNATURE,
    REQUIRE_BROWSER_ENV,
    TIMEOUT_MS,
    chromium_args,
    chromium_or_skip,
)
from tests.e2e.test_http import call, call_error
from tests.e2e.test_oauth import PASSPHRASE, STATIC_TOKEN, mcp_status, oauth_bridge, signed_in

AXE = REPO_ROOT / "tests" / "ts" / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "console"
WIDTHS = {"phone": {"width": 375, "height": 812}, "desktop": {"width": 1280, "height": 900}}
AXE_MISSING = f"{AXE} is missing (install the tests' npm packages: make node-deps)"
RUN_AXE = """async () => {
  const result = await axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => n.target.join(" "))}));
}"""


def axe_source() -> str | None:
    """axe-core's script, or None where npm could not install it (then fails if required)."""
    if AXE.is_file():
        return AXE.read_text()
    if os.environ.get(REQUIRE_BROWSER_ENV):
        pytest.fail(f"{AXE_MISSING} ({REQUIRE_BROWSER_ENV} is set, so this is an error)")
    return None


async def check_page(page: Any, axe: str | None, name: str) -> None:
    """axe-core finds no violation at either width; a screenshot of each is saved."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, size in WIDTHS.items():
        await page.set_viewport_size(size)
        if axe is not None:
            if not await page.evaluate("typeof axe !== 'undefined'"):
                await page.evaluate(axe)
            violations = await page.evaluate(RUN_AXE)
            assert violations == [], f"{name} at {width} width: {violations}"
        # Nothing wider than the screen: a phone needs no sideways scrolling (tables scroll in
        # their own region).
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} at {width} width is {overflow} px too wide"
        shot = ARTIFACTS / f"{name}-{width}.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes().startswith(PNG_SIGNATURE)
    await page.set_viewport_size(WIDTHS["desktop"])


async def test_the_console_in_chromium_from_sign_in_to_sign_out(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    executable = chromium_or_skip()
    axe = axe_source()
    from playwright.async_api import Route, async_playwright

    overrides = {"config_file": two_targets(tmp_path), "auth_tokens": [STATIC_TOKEN]}
    async with (
        oauth_bridge(make_settings, **overrides) as b,
        mcp_client(b.public_url, STATIC_TOKEN) as client,
        agent_client(b.base, FELT_TOKEN) as agent,
    ):
        _client_id, tokens = await signed_in(b)  # a registered client with a token family
        bridge = urlparse(b.base)
        blocked: list[str] = []
        errors: list[str] = []

        async def only_loopback(route: Route) -> None:
            target = urlparse(route.request.url)
            if (target.scheme, target.netloc) == (bridge.scheme, bridge.netloc):
                await route.continue_()
            else:
                blocked.append(route.request.url)
                await route.abort()

        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, args=chromium_args(), timeout=TIMEOUT_MS
            )
            try:
                context = await browser.new_context(viewport=WIDTHS["desktop"])
                await context.route("**/*", only_loopback)
                page = await context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                # A CSP violation or a script error shows in the console: there must be none.
                page.on(
                    "console",
                    lambda m: errors.append(m.text) if m.type == "error" else None,
                )
                page.on("pageerror", lambda exc: errors.append(str(exc)))

                # Not signed in: the console sends the browser to the sign-in page.
                await page.goto(b.base + "/console")
                assert page.url == b.base + "/console/sign-in"
                await check_page(page, axe, "sign-in")

                # A wrong passphrase is refused, with the consent page's words.
                await page.fill("#passphrase", "not the passphrase")
                async with page.expect_response(lambda r: r.request.method == "POST") as info:
                    await page.get_by_role("button", name="Sign in").click()
                assert (await info.value).status == 401
                assert "That did not work" in await page.locator("#error").inner_text()
                # From the keyboard: the passphrase field has the focus; Enter sends the form.
                # (autofocus lands when the page first renders: wait for it, not past it.)
                await page.wait_for_function("document.activeElement?.id === 'passphrase'")
                await page.keyboard.type(PASSPHRASE)
                await page.keyboard.press("Enter")
                await page.wait_for_url(b.base + "/console")
                assert "nexus:felt" in await page.locator("#targets").inner_text()
                await check_page(page, axe, "overview")

                # A task sent over MCP is on the list.
                task = await call(
                    client, "send_message", {"message": "Resize the photos", "target": "nexus:felt"}
                )
                await page.get_by_role("link", name="Tasks", exact=True).click()
                await page.wait_for_url(b.base + "/console/tasks")
                await page.get_by_role("link", name="Resize the photos").wait_for()
                await check_page(page, axe, "tasks")

                # Its timeline grows live as the agent reports: no reload.
                await page.get_by_role("link", name="Resize the photos").click()
                await page.wait_for_url(f"{b.base}/console/tasks/{task['id']}")
                await page.evaluate("window.stillTheSamePage = true")
                await page.locator("#live-state").filter(has_text="Live").wait_for()
                await call(agent, "next_task", {})
                await call(agent, "start_task", {"id": task["id"]})
                await call(agent, "post_update", {"id": task["id"], "text": "[Step 1] looked"})
                timeline = page.locator("#timeline")
                await timeline.get_by_text("[Step 1] looked").wait_for()
                await call(agent, "ask_question", {"id": task["id"], "text": "50 or 100?"})
                await timeline.get_by_text("50 or 100?").wait_for()
                await page.locator("#task-status").filter(has_text="input required").wait_for()
                await page.locator("#reply-form").wait_for(state="visible")
                assert await page.evaluate("window.stillTheSamePage === true")
                await check_page(page, axe, "task")

                # The answer from the console resumes the task; the agent reads it.
                await page.fill("#reply-text", "100")
                await page.get_by_role("button", name="Send answer").click()
                await page.locator("#notice").wait_for()
                assert "in progress" in await page.locator("#task-status").inner_text()
                replies = await call(agent, "get_replies", {"id": task["id"]})
                assert [r["content"] for r in replies["replies"]] == ["100"]

                # A form without its CSRF token is refused, and changes nothing.
                await page.evaluate(
                    "document.querySelector('#cancel-form input[name=csrf]').remove()"
                )
                async with page.expect_response(lambda r: r.request.method == "POST") as info:
                    await page.get_by_role("button", name="Cancel task").click()
                assert (await info.value).status == 403
                assert "refused" in await page.locator("#message").inner_text()
                detail = await call(client, "get_message", {"id": task["id"]})
                assert detail["status"] == "in_progress"

                # Cancelling from the console ends the task, and the agent is told so.
                await page.goto(f"{b.base}/console/tasks/{task['id']}")
                await page.fill("#cancel-reason", "not needed any more")
                await page.get_by_role("button", name="Cancel task").click()
                await page.locator("#notice").wait_for()
                assert "cancelled" in await page.locator("#task-status").inner_text()
                refused = await call_error(agent, "complete_task", {"id": task["id"]})
                assert "cancelled" in refused
                detail = await call(client, "get_message", {"id": task["id"]})
                assert (detail["status"], detail["status_reason"]) == (
                    "cancelled",
                    "not needed any more",
                )

                # Access: the client's token family, revoked from the console.
                await page.get_by_role("link", name="Access").click()
                await page.wait_for_url(b.base + "/console/access")
                await check_page(page, axe, "access")
                assert await mcp_status(b, tokens["access_token"]) == 200
                await page.locator("#families").get_by_role("button", name="Revoke").click()
                await page.locator("#notice").wait_for()
                assert await mcp_status(b, tokens["access_token"]) == 401

                # Sign out: the console is closed again.
                await page.get_by_role("button", name="Sign out").click()
                await page.wait_for_url(b.base + "/console/sign-in")
                await page.goto(b.base + "/console/tasks")
                assert page.url == b.base + "/console/sign-in"
            finally:
                await browser.close()

        assert blocked == [], f"the pages tried to reach other hosts: {blocked}"
        # The refused passphrase (401) and the refused form (403) are the only failed loads.
        expected = [
            f"Failed to load resource: the server responded with a status of {status} ({text})"
            for status, text in ((401, "Unauthorized"), (403, "Forbidden"))
        ]
        assert errors == expected, f"the browser reported errors: {errors}"
    if axe is None:
        pytest.skip(f"the flow passed, but accessibility was not checked: {AXE_MISSING}")


async def test_the_console_off_page_says_how_to_turn_it_on(
    make_settings: Callable[..., Settings],
) -> None:
    executable = chromium_or_skip()
    axe = axe_source()
    from playwright.async_api import async_playwright

    async with running_server(make_settings()) as (url, _server):
        base = url.removesuffix("/mcp")
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=executable, args=chromium_args(), timeout=TIMEOUT_MS
            )
            try:
                page = await browser.new_page(viewport=WIDTHS["desktop"])
                page.set_default_timeout(TIMEOUT_MS)
                await page.goto(base + "/console")
                assert page.url == base + "/console/sign-in"
                assert "no owner passphrase" in await page.locator("#console-off").inner_text()
                assert "nexus-bridge auth set-passphrase" in await page.locator("pre").inner_text()
                await check_page(page, axe, "console-off")
            finally:
                await browser.close()
    if axe is None:
        pytest.skip(f"the page passed, but accessibility was not checked: {AXE_MISSING}")
