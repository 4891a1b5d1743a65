"""The live task card in Debian's Chromium, in a minimal MCP Apps host (tests/card_host.py): the
card is the real server's ``resources/read``, it gets a real ``send_message`` result, and its tool
calls go through the SDK's real MCP client to the real server, while a real agent works the task
through the agent API (/agent/mcp).

Checked: the card shows the task; an agent's update appears on it within two seconds; a question
shows the answer box, and the answer typed there reaches the agent; cancel (after confirming) ends
the task; once the task has ended the card makes no more tool calls; it fits a phone's width and
keeps clear of the host's safe-area insets; light and dark follow the host. Screenshots at phone
and desktop widths, light and dark, go to tests/artifacts/task-card/ (git-ignored).

Needs /usr/bin/chromium and the playwright module (dev extra); without them the test skips,
unless NEXUS_BRIDGE_REQUIRE_BROWSER is set, in which case it fails.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexus_bridge.config import Settings
from nexus_bridge.task_card import TASK_CARD_URI
from tests.card_host import (
    DESKTOP,
    HOSTS,
    NO_INSETS,
    PHONE,
    PHONE_INSETS,
    CardHost,
    card_host,
    ext_apps_bundle,
)
from tests.conftest import REPO_ROOT, running_server, wait_for
from tests.e2e.test_agent_api import agent_client
from tests.e2e.test_consent_browser import PNG_SIGNATURE, chromium_or_skip
from tests.e2e.test_http import call
from tests.e2e.test_task_card import apps_client

AGENT_TOKEN = "card-agent-token-" + "k" * 24
TARGET = "nexus:felt"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts" / "task-card"
REQUIRE_NODE_ENV = "NEXUS_BRIDGE_REQUIRE_NODE"
SHOWN_WITHIN_SECONDS = 2.0
TASK_TEXT = (
    "Resize the product photos in /srv/shop/images to 1200 px wide and re-run the thumbnail "
    "job.\nKeep the originals.\nTell me how many files changed."
)


def agent_target(tmp_path: Path) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(
        f'[targets."{TARGET}"]\n'
        'transport = "agent"\n'
        'description = "The shop server"\n'
        f'agent_tokens = ["{AGENT_TOKEN}"]\n'
    )
    path.chmod(0o600)
    return path


async def card_text(host: CardHost, selector: str) -> str:
    text: str = await host.card.locator(selector).inner_text()
    return text


async def shown_within(host: CardHost, selector: str, text: str, seconds: float) -> float:
    """Seconds until ``selector`` on the card contains ``text``; fails after ``seconds``."""
    start = time.monotonic()
    await host.card.locator(selector, has_text=text).first.wait_for(
        state="visible", timeout=seconds * 1000
    )
    return time.monotonic() - start


def bundle_for(kind: str) -> str | None:
    """The page's host: None for the minimal one; the ext-apps bundle (or a skip) for AppBridge."""
    if kind == "minimal":
        return None
    bundle = ext_apps_bundle()
    if bundle is None:
        message = "tests/card-host/node_modules is missing; run: make node-deps"
        if os.environ.get(REQUIRE_NODE_ENV):
            pytest.fail(f"{message} ({REQUIRE_NODE_ENV} is set, so this is an error)")
        pytest.skip(message)
    return bundle


async def screenshots(host: CardHost, stage: str) -> list[Path]:
    """The card in its host page at phone and desktop widths, light and dark (the page cut to
    the card and a margin); checks that it fits and follows the theme."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    saved = []
    for width_name, viewport, insets in (
        ("phone", PHONE, PHONE_INSETS),
        ("desktop", DESKTOP, NO_INSETS),
    ):
        await host.page.set_viewport_size(viewport)
        await host.set_context(safeAreaInsets=insets)
        for theme in ("light", "dark"):
            await host.set_context(theme=theme)
            await host.settle()
            frame = await host.frame()
            look: dict[str, Any] = await frame.evaluate(
                "() => ({theme: document.documentElement.dataset.theme,"
                " background: getComputedStyle(document.body).backgroundColor,"
                " overflow: document.documentElement.scrollWidth - window.innerWidth})"
            )
            assert look["theme"] == theme
            channels = [int(c) for c in look["background"].strip("rgba()").split(",")[:3]]
            assert (sum(channels) / 3 < 80) == (theme == "dark"), look
            assert look["overflow"] <= 0, f"the card is wider than the {width_name}: {look}"

            # The host sized the frame to the card, as the card asked (size-changed).
            async def fitted(frame: Any = frame) -> bool:
                heights = await frame.evaluate(
                    "() => [Math.ceil(document.body.getBoundingClientRect().height),"
                    " window.innerHeight]"
                )
                return bool(abs(heights[0] - heights[1]) <= 1)

            await wait_for(fitted, what=f"the frame to fit the card ({width_name}, {theme})")
            path = ARTIFACTS / f"{stage}-{width_name}-{theme}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            box = await host.page.locator("#turn").bounding_box()
            assert box is not None
            margin = 16
            clip = {
                "x": max(0, box["x"] - margin),
                "y": max(0, box["y"] - margin),
                "width": box["width"] + 2 * margin,
                "height": box["height"] + 2 * margin,
            }
            await host.page.screenshot(path=str(path), clip=clip)  # type: ignore[arg-type]
            assert path.read_bytes().startswith(PNG_SIGNATURE)
            saved.append(path)
    await host.page.set_viewport_size(PHONE)
    await host.set_context(theme="light", safeAreaInsets=PHONE_INSETS)
    return saved


@pytest.mark.parametrize("kind", HOSTS)
async def test_the_task_card_follows_a_task_answers_the_agent_and_cancels_it(
    make_settings: Callable[..., Settings], tmp_path: Path, kind: str
) -> None:
    executable = chromium_or_skip()
    bundle = bundle_for(kind)
    settings = make_settings(config_file=agent_target(tmp_path))
    async with running_server(settings) as (url, _), apps_client(url) as client:
        base = url.removesuffix("/mcp")
        (resource,) = (await client.read_resource(TASK_CARD_URI)).contents
        html = getattr(resource, "text", "")
        arguments = {"message": TASK_TEXT, "target": TARGET}
        sent = await client.call_tool("send_message", arguments)
        assert not sent.is_error
        task_id = sent.structured_content["id"]
        result = sent.model_dump(by_alias=True, mode="json", exclude_none=True)

        async with (
            card_host(
                executable,
                client,
                html=html,
                tool_input=arguments,
                tool_result=result,
                bundle=bundle,
            ) as host,
            agent_client(base, AGENT_TOKEN) as agent,
        ):
            # The card shows the task: its first lines, its status, whom it is for.
            await shown_within(host, "#task", "Resize the product photos", 5)
            await shown_within(host, "#status", "Pending", 5)
            await shown_within(host, "#ident", TARGET, 5)
            assert task_id[:8] in await card_text(host, "#ident")
            frame = await host.frame()
            insets = await frame.evaluate("() => getComputedStyle(document.body).paddingBottom")
            assert insets == "46px"  # 12 px of its own + the host's 34 px inset

            # The agent takes the task and reports: on the card within two seconds.
            await call(agent, "next_task", {})
            await call(agent, "start_task", {"id": task_id})
            await shown_within(host, "#status", "In progress", SHOWN_WITHIN_SECONDS)
            await call(agent, "post_update", {"id": task_id, "text": "[Step 1] 214 photos found"})
            await shown_within(host, "#timeline", "214 photos found", SHOWN_WITHIN_SECONDS)

            # A question: the answer box, with the question; the typed answer reaches the agent.
            await call(agent, "ask_question", {"id": task_id, "text": "Overwrite thumbnails?"})
            await shown_within(host, "#question", "Overwrite thumbnails?", SHOWN_WITHIN_SECONDS)
            await shown_within(host, "#status", "Waiting for you", SHOWN_WITHIN_SECONDS)
            saved = await screenshots(host, f"{kind}/question")

            await host.card.locator("#answer").fill("Yes, overwrite them")
            await host.card.locator("#send").click()

            async def answered() -> bool:
                replies = await call(agent, "get_replies", {"id": task_id})
                return [r["content"] for r in replies["replies"]] == ["Yes, overwrite them"]

            await wait_for(answered, what="the answer typed on the card to reach the agent")
            await shown_within(host, "#status", "In progress", SHOWN_WITHIN_SECONDS)
            await shown_within(host, "#timeline", "Yes, overwrite them", SHOWN_WITHIN_SECONDS)
            assert await host.card.locator("#ask").is_hidden()

            # Cancel asks first; "Keep it" keeps the task.
            await host.card.locator("#cancel").click()
            await host.card.locator("#cancel-no").click()
            assert (await call(client, "get_message", {"id": task_id}))["status"] == "in_progress"
            await host.card.locator("#cancel").click()
            await host.card.locator("#cancel-yes").click()

            async def cancelled() -> bool:
                detail = await call(client, "get_message", {"id": task_id})
                return bool(detail["status"] == "cancelled")

            await wait_for(cancelled, what="the card's cancel to end the task")
            await shown_within(host, "#status", "Cancelled", SHOWN_WITHIN_SECONDS)
            await shown_within(host, "#following", "no longer follows", SHOWN_WITHIN_SECONDS)

            # Once the task has ended, the card's loop is over and no call is left in flight ...
            async def stopped_following() -> bool:
                state = await host.card_state()
                return not state["following"] and await host.in_flight() == 0

            await wait_for(stopped_following, what="the card to stop following the ended task")
            ended_at_calls = len(host.calls)
            # ... and it stays quiet, though the agent's late word lands in the task's stream
            # and would have woken a follower at once.
            await call(agent, "post_update", {"id": task_id, "text": "a late word"})
            stream = await call(client, "pull_updates", {"message_id": task_id})
            assert stream["updates"][-1]["content"] == "a late word"
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                assert len(host.calls) == ended_at_calls, host.calls[ended_at_calls:]
                await host.page.wait_for_timeout(100)
            saved += await screenshots(host, f"{kind}/cancelled")

            names = [c.name for c in host.calls]
            assert set(names) <= {"pull_updates", "get_message", "reply_to_task", "cancel_message"}
            assert names.count("reply_to_task") == 1
            assert names.count("cancel_message") == 1
            for c in host.calls:
                if c.name == "pull_updates":
                    assert c.arguments["message_id"] == task_id
                    assert c.arguments["wait_seconds"] <= 20
            assert (await host.card_state())["toolCalls"] == len(host.calls)
            assert host.blocked == []
            assert not [line for line in host.console if "pageerror" in line], host.console
        assert len(saved) == 8


async def test_a_card_for_a_task_that_is_gone_says_so_and_stops(
    make_settings: Callable[..., Settings],
) -> None:
    executable = chromium_or_skip()
    async with running_server(make_settings()) as (url, _), apps_client(url) as client:
        (resource,) = (await client.read_resource(TASK_CARD_URI)).contents
        gone = str(uuid.uuid4())
        result = {
            "content": [{"type": "text", "text": json.dumps({"id": gone, "status": "pending"})}],
            "structuredContent": {"id": gone, "status": "pending", "queued": True},
            "isError": False,
        }
        async with card_host(
            executable,
            client,
            html=getattr(resource, "text", ""),
            tool_input={"message": "pruned since"},
            tool_result=result,
        ) as host:
            await shown_within(host, "#error", "no task with id", 5)

            async def stopped() -> bool:
                state = await host.card_state()
                return bool(state["stopped"]) and await host.in_flight() == 0

            await wait_for(stopped, what="the card to give up on a task that does not exist")
            assert [c.name for c in host.calls] == ["get_message"]
            assert "Stopped following" in await card_text(host, "#following")
