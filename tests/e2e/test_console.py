"""The owner's console over plain HTTP (a real server, no browser): off until a passphrase is set,
nothing without a session, CSRF tokens on every form, the consent page's lockout, sessions that
sign-out and a new passphrase end, the same errors as the MCP tools, the live timeline's events
and the windowed history. The browser test (test_console_browser.py) drives the pages."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from nexus_bridge.config import Settings
from nexus_bridge.oauth import OwnerGate
from tests.conftest import (
    mcp_client,
    postgres_refuses_writes,
    running_server,
    subprocess_env,
    wait_for,
)
from tests.e2e.test_agent_api import FELT_TOKEN, agent_client, two_targets
from tests.e2e.test_http import call, call_error

PASSPHRASE = "console passphrase 1234"
EXE = str(Path(sys.executable).with_name("nexus-bridge"))
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
TASK_ID = "00000000-0000-4000-8000-000000000000"
# Every console route: method, path, and what it answers without a session.
CONSOLE_ROUTES = [
    ("GET", "/console", 303),
    ("GET", "/console/tasks", 303),
    ("POST", "/console/tasks", 403),
    ("GET", f"/console/tasks/{TASK_ID}", 303),
    ("GET", f"/console/tasks/{TASK_ID}/events", 401),
    ("POST", f"/console/tasks/{TASK_ID}/reply", 403),
    ("POST", f"/console/tasks/{TASK_ID}/cancel", 403),
    ("GET", "/console/access", 303),
    ("POST", "/console/access/revoke", 403),
    ("POST", "/console/sign-out", 403),
]


@dataclass
class Console:
    base: str
    http: httpx2.AsyncClient
    server: Any
    settings: Settings

    async def csrf(self, path: str = "/console") -> str:
        page = await self.http.get(self.base + path)
        assert page.status_code == 200, page.text
        found = CSRF.search(page.text)
        assert found is not None
        return found.group(1)

    async def sign_in(self, passphrase: str = PASSPHRASE) -> httpx2.Response:
        form = await self.http.get(self.base + "/console/sign-in")
        found = CSRF.search(form.text)
        assert found is not None, form.text
        return await self.http.post(
            self.base + "/console/sign-in",
            data={"csrf": found.group(1), "passphrase": passphrase},
        )


def gate_of(server: Any, settings: Settings) -> OwnerGate:
    return OwnerGate(
        server.bridge.store,
        max_failed_attempts=settings.oauth_max_failed_attempts,
        lockout_seconds=settings.oauth_lockout_seconds,
        failure_delay_seconds=0,
    )


@asynccontextmanager
async def console(
    make_settings: Callable[..., Settings], *, passphrase: bool = True, **overrides: Any
) -> AsyncIterator[Console]:
    values: dict[str, Any] = {"oauth_failure_delay_seconds": 0}
    values.update(overrides)
    settings = make_settings(**values)
    async with running_server(settings) as (url, server):
        if passphrase:
            await gate_of(server, settings).set_passphrase(PASSPHRASE)
        async with httpx2.AsyncClient(follow_redirects=False, timeout=20) as http:
            yield Console(url.removesuffix("/mcp"), http, server, settings)


async def test_the_console_is_off_until_a_passphrase_is_set_then_signs_in(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings, passphrase=False) as c:
        off = await c.http.get(c.base + "/console/sign-in")
        assert off.status_code == 503
        assert "nexus-bridge auth set-passphrase" in off.text
        assert (await c.http.get(c.base + "/console")).headers["location"] == "/console/sign-in"
        # The command the page names, as the owner runs it.
        done = await asyncio.to_thread(
            subprocess.run,
            [EXE, "auth", "set-passphrase", "--stdin"],
            input=PASSPHRASE + "\n",
            env=subprocess_env(c.settings.database_url),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        signed = await c.sign_in()
        assert signed.status_code == 303
        assert signed.headers["location"] == "/console"
        cookie = signed.headers["set-cookie"]
        assert "nexus_console=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert "Secure" not in cookie  # plain http on loopback: a Secure cookie would be dropped
        overview = await c.http.get(c.base + "/console")
        assert overview.status_code == 200
        assert "Targets" in overview.text


async def test_a_wrong_passphrase_is_refused_and_gives_no_session(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings) as c:
        refused = await c.sign_in("not the passphrase")
        assert refused.status_code == 401
        assert "That did not work" in refused.text
        assert "nexus_console=" not in refused.headers.get("set-cookie", "")
        assert (await c.http.get(c.base + "/console")).status_code == 303


@pytest.mark.parametrize(("method", "path", "status"), CONSOLE_ROUTES)
async def test_nothing_reaches_the_console_without_a_session(
    make_settings: Callable[..., Settings], method: str, path: str, status: int
) -> None:
    async with console(make_settings) as c:
        answer = await c.http.request(method, c.base + path, data={"text": "x"})
        assert answer.status_code == status
        if status == 303:
            assert answer.headers["location"] == "/console/sign-in"
        # A made-up cookie is no session either.
        c.http.cookies.set("nexus_console", "made-up-" + "x" * 35)
        forged = await c.http.request(method, c.base + path, data={"text": "x"})
        assert forged.status_code == status
        async with c.server.bridge.store.read() as tx:
            assert not any((await tx.count_by_status(None)).values())  # nothing was queued


@pytest.mark.parametrize(
    "path", ["/console/tasks", f"/console/tasks/{TASK_ID}/cancel", "/console/sign-out"]
)
async def test_a_form_without_its_csrf_token_is_refused(
    make_settings: Callable[..., Settings], path: str
) -> None:
    async with console(make_settings) as c:
        assert (await c.sign_in()).status_code == 303
        form = {"target": "homelab", "text": "forged", "reason": "forged"}
        for sent in ({}, {"csrf": "0" * 64}):
            refused = await c.http.post(c.base + path, data={**form, **sent})
            assert refused.status_code == 403
            assert "refused" in refused.text
        # From another site's page, even with the token.
        token = await c.csrf()
        foreign = await c.http.post(
            c.base + path, data={**form, "csrf": token}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        page = await c.http.get(c.base + "/console/tasks")
        assert "forged" not in page.text
        assert (await c.http.get(c.base + "/console")).status_code == 200  # still signed in


async def test_the_sign_in_form_needs_its_own_token(make_settings: Callable[..., Settings]) -> None:
    async with console(make_settings) as c:
        refused = await c.http.post(
            c.base + "/console/sign-in", data={"csrf": "x" * 43, "passphrase": PASSPHRASE}
        )
        assert refused.status_code == 403
        assert "nexus_console=" not in refused.headers.get("set-cookie", "")


async def test_console_and_consent_page_share_one_lockout(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings, oauth_max_failed_attempts=3) as c:
        statuses = [(await c.sign_in(f"wrong {n}")).status_code for n in range(3)]
        assert statuses == [401, 401, 429]
        locked = await c.sign_in()
        assert locked.status_code == 429
        assert "Too many wrong attempts" in locked.text
        # The consent page's gate counts against the same owner row.
        async with c.server.bridge.store.read() as tx:
            owner = await tx.oauth.owner()
        assert owner.locked_until is not None


async def test_sign_out_and_a_new_passphrase_end_sessions(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings) as c:
        assert (await c.sign_in()).status_code == 303
        session = c.http.cookies.get("nexus_console")
        signed_out = await c.http.post(c.base + "/console/sign-out", data={"csrf": await c.csrf()})
        assert signed_out.status_code == 303
        c.http.cookies.set("nexus_console", session or "", path="/console")
        assert (await c.http.get(c.base + "/console")).status_code == 303  # replay: refused

        c.http.cookies.clear()
        assert (await c.sign_in()).status_code == 303
        assert (await c.http.get(c.base + "/console")).status_code == 200
        await gate_of(c.server, c.settings).set_passphrase("another passphrase 5678")
        assert (await c.http.get(c.base + "/console")).status_code == 303


async def test_the_secure_flag_is_set_behind_https(make_settings: Callable[..., Settings]) -> None:
    async with console(make_settings, public_url="https://bridge.example.net/mcp") as c:
        headers = {"Host": "bridge.example.net"}
        form = await c.http.get(c.base + "/console/sign-in", headers=headers)
        assert "Secure" in form.headers["set-cookie"]
        found = CSRF.search(form.text)
        assert found is not None
        signed = await c.http.post(
            c.base + "/console/sign-in",
            data={"csrf": found.group(1), "passphrase": PASSPHRASE},
            headers={**headers, "Cookie": f"nexus_console_sign_in={found.group(1)}"},
        )
        assert signed.status_code == 303
        assert "Secure" in signed.headers["set-cookie"]


async def test_actions_give_the_mcp_tools_errors(
    make_settings: Callable[..., Settings],
) -> None:
    async with (
        console(make_settings, max_message_chars=50) as c,
        mcp_client(c.base + "/mcp") as mcp,
    ):
        assert (await c.sign_in()).status_code == 303
        token = await c.csrf()
        for text, target in (("", "homelab"), ("x" * 51, "homelab"), ("ok", "nowhere")):
            page = await c.http.post(
                c.base + "/console/tasks", data={"csrf": token, "target": target, "text": text}
            )
            assert page.status_code == 400
            tool = await call_error(mcp, "send_message", {"message": text, "target": target})
            assert tool.split(": ", 1)[-1] in page.text.replace("&#x27;", "'")
        task = await call(mcp, "send_message", {"message": "running", "target": "homelab"})
        answer = await c.http.post(
            c.base + f"/console/tasks/{task['id']}/reply", data={"csrf": token, "text": "yes"}
        )
        assert answer.status_code == 409
        tool = await call_error(mcp, "reply_to_task", {"id": task["id"], "text": "yes"})
        assert "is not waiting for an answer" in tool
        assert "is not waiting for an answer" in answer.text
        huge = await c.http.post(
            c.base + "/console/tasks", data={"csrf": token, "text": "x" * 2_000_000}
        )
        assert huge.status_code == 413


async def test_the_timeline_is_a_window_with_earlier_pages(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings) as c:
        queue = c.server.bridge.queue
        task = (await queue.enqueue("long history")).task
        assert await queue.claim_next(task.target) is not None  # the agent has it
        for n in range(250):
            await queue.agent_report(task.target, task.id, text=f"line {n}")
        assert (await c.sign_in()).status_code == 303
        latest = await c.http.get(c.base + f"/console/tasks/{task.id}")
        assert latest.status_code == 200
        assert latest.text.count('class="update ') == 100
        assert "line 249" in latest.text
        assert "line 149" not in latest.text
        earlier = re.search(r'href="([^"]+)" id="earlier"', latest.text)
        assert earlier is not None
        older = await c.http.get(c.base + earlier.group(1))
        assert older.text.count('class="update ') == 100
        assert "line 149" in older.text
        assert "line 150" not in older.text
        assert "data-events" not in older.text  # only the latest window is live
        bad = await c.http.get(c.base + f"/console/tasks/{task.id}?before=abc")
        assert bad.status_code == 400


async def test_the_events_stream_sends_each_new_update_when_it_is_committed(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with console(make_settings, config_file=two_targets(tmp_path)) as c:
        queue = c.server.bridge.queue
        task = (await queue.enqueue("watch me", "nexus:felt")).task
        assert (await c.sign_in()).status_code == 303
        page = await c.http.get(c.base + f"/console/tasks/{task.id}")
        events = re.search(r'data-events="([^"]+)"', page.text)
        assert events is not None
        url = c.base + events.group(1).replace("&amp;", "&")
        async with (
            c.http.stream("GET", url, timeout=30) as stream,
            agent_client(c.base, FELT_TOKEN) as agent,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.aiter_lines()
            await call(agent, "next_task", {})
            await call(agent, "post_update", {"id": task.id, "text": "half way"})
            seen: list[dict[str, Any]] = []
            with anyio.fail_after(20):
                async for line in lines:
                    if line.startswith("data: ") and '"seq"' in line:
                        seen.append(json.loads(line.removeprefix("data: ")))
                    if any(u["content"] == "half way" for u in seen):
                        break
            assert [u["kind"] for u in seen][-1] == "agent"


async def test_the_session_check_list_names_every_console_route(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings) as c:
        routes = c.server.config.app.router.routes
        served = {
            (method, route.path)
            for route in routes
            if route.path.startswith("/console")
            for method in route.methods or ()
            if method != "HEAD"
        }
    checked = {(m, p.replace(TASK_ID, "{task_id}")) for m, p, _status in CONSOLE_ROUTES}
    public = {
        ("GET", "/console/sign-in"),
        ("POST", "/console/sign-in"),
        ("GET", "/console/static/{name}"),  # the style sheet and the script, the same for all
    }
    assert served == checked | public


async def test_the_static_files_are_the_bridges_own(make_settings: Callable[..., Settings]) -> None:
    async with console(make_settings) as c:
        css = await c.http.get(c.base + "/console/static/console.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")
        js = await c.http.get(c.base + "/console/static/console.js")
        assert js.headers["content-type"].startswith("text/javascript")
        assert "EventSource" in js.text
        assert "setInterval" not in js.text  # woken by the server's events, never a poll loop
        for name in ("../oauth.py", "nope.js", "%2e%2e%2fsessions.py"):
            assert (await c.http.get(c.base + "/console/static/" + name)).status_code == 404
        page = await c.http.get(c.base + "/console/sign-in")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "<script>" not in page.text
        assert " style=" not in page.text


async def test_hostile_text_is_shown_as_text(make_settings: Callable[..., Settings]) -> None:
    async with console(make_settings) as c:
        hostile = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
        queue = c.server.bridge.queue
        task = (await queue.enqueue(hostile)).task
        assert await queue.claim_next(task.target) is not None  # the agent has it
        await queue.agent_report(task.target, task.id, text=hostile)
        assert (await c.sign_in()).status_code == 303
        for path in ("/console/tasks", f"/console/tasks/{task.id}"):
            page = await c.http.get(c.base + path)
            assert "<script>alert" not in page.text
            assert "<img src=x" not in page.text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        # A file sent in place of a text field is no text.
        sent = await c.http.post(
            c.base + "/console/tasks",
            data={"csrf": await c.csrf(), "target": "homelab"},
            files={"text": ("x.txt", b"file body")},
        )
        assert sent.status_code == 400
        assert "message is empty" in sent.text


async def test_the_task_list_pages_and_filters(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with console(make_settings, config_file=two_targets(tmp_path)) as c:
        queue = c.server.bridge.queue
        for n in range(30):
            await queue.enqueue(f"felt task {n}", "nexus:felt")
        sentry = (await queue.enqueue("the sentry task", "nexus:sentry")).task
        await queue.cancel(sentry.id, "not needed")
        assert (await c.sign_in()).status_code == 303
        first = await c.http.get(c.base + "/console/tasks")
        assert first.text.count('class="task"') == 25
        assert first.text.index("the sentry task") < first.text.index("felt task 29")  # newest
        older = re.search(r'href="([^"]+)" id="older-page"', first.text)
        assert older is not None
        second = await c.http.get(c.base + older.group(1).replace("&amp;", "&"))
        assert second.text.count('class="task"') == 6
        assert "felt task 0<" in second.text
        assert 'id="older-page"' not in second.text
        only = await c.http.get(
            c.base + "/console/tasks", params={"target": "nexus:sentry", "status": "cancelled"}
        )
        assert only.text.count('class="task"') == 1
        assert "the sentry task" in only.text
        for params, error in (
            ({"status": "lost"}, "unknown status 'lost'"),
            ({"target": "nowhere"}, "unknown target 'nowhere'"),
            ({"target": "x" * 5000}, "target must be at most"),
        ):
            refused = await c.http.get(c.base + "/console/tasks", params=params)
            assert refused.status_code == 400
            assert error in refused.text.replace("&#x27;", "'")


async def test_the_overview_shows_telegram_delivery(make_settings: Callable[..., Settings]) -> None:
    from tests.e2e.test_telegram import telegram_settings
    from tests.fake_telegram import running_fake_telegram

    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, oauth_failure_delay_seconds=0)
        async with (
            running_server(settings) as (_url, server),
            httpx2.AsyncClient(follow_redirects=False, timeout=20) as http,
        ):
            base = f"http://127.0.0.1:{server.bound_port}"
            c = Console(base, http, server, settings)
            await gate_of(server, settings).set_passphrase(PASSPHRASE)
            assert (await c.sign_in()).status_code == 303

            async def polling() -> bool:
                page = await http.get(base + "/console")
                return "Telegram: <strong>polling</strong>" in page.text

            await wait_for(polling, what="the overview to show Telegram polling")
            page = await http.get(base + "/console")
            assert 'id="deliveries"' in page.text
            assert "Deliveries due now" in page.text
            assert "telegram" in page.text


async def test_a_proxy_that_passes_another_host_still_takes_the_forms(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings, public_url="https://bridge.example.net/mcp") as c:
        # The proxy reaches the bridge as 127.0.0.1; the browser is at PUBLIC_URL's origin. The
        # cookies are Secure, which this plain-http client would not send back: send them here.
        form = await c.http.get(c.base + "/console/sign-in")
        found = CSRF.search(form.text)
        assert found is not None
        own = {"Origin": "https://bridge.example.net"}
        signed = await c.http.post(
            c.base + "/console/sign-in",
            data={"csrf": found.group(1), "passphrase": PASSPHRASE},
            headers={**own, "Cookie": f"nexus_console_sign_in={found.group(1)}"},
        )
        assert signed.status_code == 303
        session = re.search(r"nexus_console=([^;]+)", signed.headers["set-cookie"])
        assert session is not None
        cookie = {"Cookie": f"nexus_console={session.group(1)}"}
        page = await c.http.get(c.base + "/console/tasks", headers=cookie)
        token = CSRF.search(page.text)
        assert token is not None
        sent = await c.http.post(
            c.base + "/console/tasks",
            data={"csrf": token.group(1), "target": "homelab", "text": "via the proxy"},
            headers={**own, **cookie},
        )
        assert sent.status_code == 303, sent.text
        other = await c.http.post(
            c.base + "/console/tasks",
            data={"csrf": token.group(1), "target": "homelab", "text": "from elsewhere"},
            headers={"Origin": "https://evil.example", **cookie},
        )
        assert other.status_code == 403


async def test_without_waiting_allowed_the_timeline_is_not_streamed(
    make_settings: Callable[..., Settings],
) -> None:
    async with console(make_settings, max_wait_seconds=0) as c:
        task = (await c.server.bridge.queue.enqueue("no waiting here")).task
        assert (await c.sign_in()).status_code == 303
        events = await c.http.get(c.base + f"/console/tasks/{task.id}/events?after=0")
        assert events.status_code == 204


async def test_a_database_that_refuses_writes_is_a_503_with_its_reason_not_a_409(
    make_settings: Callable[..., Settings], migrated_postgres_url: str
) -> None:
    """The bridge's side, not the task's state: the owner may try the same form again later."""
    async with console(make_settings, database_url=migrated_postgres_url) as c:
        assert (await c.sign_in()).status_code == 303
        token = await c.csrf()
        await postgres_refuses_writes(migrated_postgres_url)
        page = await c.http.post(
            c.base + "/console/tasks", data={"csrf": token, "target": "homelab", "text": "ok"}
        )
        assert page.status_code == 503, page.text
        assert "the database cannot be written" in page.text
        assert "read-only transaction" in page.text
