"""The console's HTML, rendered on the server: plain string templates, every value escaped.

No inline script or style (the Content-Security-Policy allows only the bridge's own
``console.css`` and ``console.js``); every status is written out in words, colour only repeats it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import urlencode

from nexus_bridge.console.sessions import CSRF_FIELD
from nexus_bridge.constants import CONSOLE_PATH
from nexus_bridge.db.types import format_timestamp
from nexus_bridge.domain import TaskStatus, TaskUpdate, UpdateKind
from nexus_bridge.views import TargetOut, TaskOut, TransportOut

if TYPE_CHECKING:  # the OAuth server is loaded only with PUBLIC_URL (cold start)
    from nexus_bridge.oauth import OAuthClientView, TokenFamilyView

STATIC: Final = f"{CONSOLE_PATH}/static"
SIGN_IN_PATH: Final = f"{CONSOLE_PATH}/sign-in"
SIGN_OUT_PATH: Final = f"{CONSOLE_PATH}/sign-out"
TASKS_PATH: Final = f"{CONSOLE_PATH}/tasks"
ACCESS_PATH: Final = f"{CONSOLE_PATH}/access"
REVOKE_PATH: Final = f"{CONSOLE_PATH}/access/revoke"
OPEN_STATUS_NAMES: Final = ("pending", "acknowledged", "in_progress", "input_required")


def e(value: object) -> str:
    """Escaped for HTML text and double-quoted attributes."""
    return html.escape(str(value), quote=True)


def task_path(task_id: str) -> str:
    return f"{TASKS_PATH}/{task_id}"


def when(iso: str | None) -> str:
    """A timestamp as a ``<time>`` element, readable (UTC, to the second), or a dash.

    ``iso`` is the bridge's own fixed-width UTC form (``2026-11-29T22:34:49.123456+00:00``)."""
    if iso is None:
        return "—"
    return f'<time datetime="{e(iso)}">{e(iso[:10])} {e(iso[11:19])} UTC</time>'


def status_badge(status: str, *, element_id: str | None = None) -> str:
    ident = f' id="{e(element_id)}"' if element_id else ""
    return f'<span class="status status-{e(status)}"{ident}>{e(status.replace("_", " "))}</span>'


def csrf_input(csrf: str) -> str:
    return f'<input type="hidden" name="{CSRF_FIELD}" value="{e(csrf)}">'


def alert(error: str | None = None, notice: str | None = None) -> str:
    if error:
        return (
            f'<p class="alert error" role="alert" id="error"><strong>Error:</strong> {e(error)}</p>'
        )
    if notice:
        return f'<p class="alert notice" role="status" id="notice">{e(notice)}</p>'
    return ""


def layout(
    title: str,
    body: str,
    *,
    csrf: str | None = None,
    current: str | None = None,
    script: bool = False,
) -> str:
    """The page around ``body``; with ``csrf`` (signed in), the navigation and sign-out."""
    nav = ""
    if csrf is not None:
        links = []
        for path, label in (
            (CONSOLE_PATH, "Overview"),
            (TASKS_PATH, "Tasks"),
            (ACCESS_PATH, "Access"),
        ):
            mark = ' aria-current="page"' if path == current else ""
            links.append(f'<li><a href="{path}"{mark}>{label}</a></li>')
        nav = (
            '<nav aria-label="Console"><ul>' + "".join(links) + "</ul>"
            f'<form method="post" action="{SIGN_OUT_PATH}" class="sign-out">{csrf_input(csrf)}'
            '<button type="submit">Sign out</button></form></nav>'
        )
    js = f'<script src="{STATIC}/console.js" defer></script>' if script else ""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · nexus-bridge console</title>"
        f'<link rel="stylesheet" href="{STATIC}/console.css">{js}</head>'
        '<body><a class="skip" href="#main">Skip to content</a>'
        f'<header><p class="brand">nexus-bridge console</p>{nav}</header>'
        f'<main id="main"><h1>{e(title)}</h1>{body}</main></body></html>'
    )


# --- sign-in ------------------------------------------------------------------------------------


def sign_in_page(csrf: str, error: str | None = None) -> str:
    body = (
        alert(error)
        + f'<form method="post" action="{SIGN_IN_PATH}" class="card">{csrf_input(csrf)}'
        '<label for="passphrase">Owner passphrase</label>'
        '<input type="password" id="passphrase" name="passphrase" required '
        'autocomplete="current-password" autofocus>'
        '<button type="submit" class="primary">Sign in</button></form>'
        '<p class="note">The passphrase is the one <code>nexus-bridge auth set-passphrase</code> '
        "set for the consent page.</p>"
    )
    return layout("Sign in", body)


def console_off_page() -> str:
    body = (
        '<p id="console-off">The console is off: no owner passphrase has been set yet.</p>'
        "<p>Set one on the bridge's machine, then reload this page:</p>"
        "<pre><code>nexus-bridge auth set-passphrase</code></pre>"
        '<p class="note">In a clone of nexus-bridge, at its top: '
        "<code>.venv/bin/nexus-bridge auth set-passphrase</code></p>"
    )
    return layout("Console off", body)


def message_page(title: str, message: str, *, csrf: str | None = None) -> str:
    back = f'<p><a href="{CONSOLE_PATH}">Back to the overview</a></p>' if csrf else ""
    return layout(title, f'<p id="message">{e(message)}</p>{back}', csrf=csrf)


# --- overview -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """A Telegram target's deliveries due now or failed (from the outbox)."""

    due: int
    failed: int


Fact = tuple[str, str]  # a label and its value (HTML, escaped already)


def _cards(list_id: str, items: Iterable[tuple[str, Sequence[Fact], str]]) -> str:
    """One card per item (a heading, its facts, an action): readable at any width, unlike a
    wide table."""
    cards = []
    for title, facts, action in items:
        dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
        cards.append(f'<li class="item"><h3>{title}</h3><dl class="facts">{dl}</dl>{action}</li>')
    return f'<ul class="items" id="{list_id}">{"".join(cards)}</ul>'


def _yes_no(value: bool) -> str:
    return '<span class="yes">yes</span>' if value else '<span class="no">no</span>'


def overview_page(
    *,
    csrf: str,
    targets: Sequence[TargetOut],
    figures: dict[str, object],
    transport: TransportOut,
    deliveries: dict[str, Delivery],
    form: SendForm,
) -> str:
    cards = []
    for t in targets:
        link = f'<a href="{TASKS_PATH}?{urlencode({"target": t.name})}">{e(t.name)}</a>'
        tasks = (
            f"{t.pending} pending · {t.acknowledged} acknowledged · {t.in_progress} in progress · "
            f"{t.input_required} waiting for an answer · {t.stalled} stalled"
        )
        facts = [
            ("Transport", e(t.transport)),
            ("Dispatch", e(t.dispatch.replace("_", " "))),
            ("Reachable", _yes_no(t.reachable)),
            ("Last seen", when(t.last_seen_at)),
            ("Tasks", tasks),
        ]
        cards.append((link, facts, ""))
    targets_html = _cards("targets", cards)
    counts = "".join(
        f"<div><dt>{e(s.value.replace('_', ' '))}</dt><dd>{e(figures.get(s.value, 0))}</dd></div>"
        for s in TaskStatus
    )
    counts += f"<div><dt>stalled</dt><dd>{e(figures.get('stalled', 0))}</dd></div>"
    telegram_cards = [
        (e(name), [("Deliveries due now", str(d.due)), ("Deliveries failed", str(d.failed))], "")
        for name, d in sorted(deliveries.items())
    ]
    telegram = (
        f'<p id="transport-state">Telegram: <strong>{e(transport.state)}</strong>'
        + (f" — {e(transport.detail)}" if transport.detail else "")
        + "</p>"
    )
    if transport.last_error:
        telegram += f"<p>Failing since {when(transport.error_since)}: {e(transport.last_error)}</p>"
    if transport.last_ok_at:
        telegram += f"<p>Last Bot API call that worked: {when(transport.last_ok_at)}</p>"
    if telegram_cards:
        telegram += _cards("deliveries", telegram_cards)
    body = (
        '<section aria-labelledby="targets-h"><h2 id="targets-h">Targets</h2>'
        + targets_html
        + "</section>"
        + '<section aria-labelledby="queue-h"><h2 id="queue-h">Tasks by status</h2>'
        + f'<dl class="figures" id="figures">{counts}</dl></section>'
        + '<section aria-labelledby="telegram-h"><h2 id="telegram-h">Telegram delivery</h2>'
        + telegram
        + "</section>"
        + send_form(csrf, [t.name for t in targets], form)
    )
    return layout("Overview", body, csrf=csrf, current=CONSOLE_PATH)


@dataclass(frozen=True, slots=True)
class SendForm:
    """What the send form shows (again, after an error)."""

    target: str = ""
    text: str = ""
    urgent: bool = False


def send_form(csrf: str, targets: Sequence[str], form: SendForm) -> str:
    options = "".join(
        f'<option value="{e(name)}"{" selected" if name == form.target else ""}>{e(name)}</option>'
        for name in targets
    )
    checked = " checked" if form.urgent else ""
    return (
        '<section aria-labelledby="send-h"><h2 id="send-h">Send a task</h2>'
        f'<form method="post" action="{TASKS_PATH}" class="card" id="send-form">{csrf_input(csrf)}'
        '<label for="send-target">Target</label>'
        f'<select id="send-target" name="target">{options}</select>'
        '<label for="send-text">Task</label>'
        '<textarea id="send-text" name="text" rows="4" required>'
        f"{e(form.text)}</textarea>"
        f'<label class="check"><input type="checkbox" name="urgent" value="1"{checked}>'
        " Urgent</label>"
        '<button type="submit" class="primary">Send</button></form></section>'
    )


# --- tasks --------------------------------------------------------------------------------------


def tasks_page(
    *,
    csrf: str,
    tasks: Sequence[TaskOut],
    targets: Sequence[str],
    target: str | None,
    status: str | None,
    next_before: str | None,
    first_page: bool,
    form: SendForm,
    error: str | None = None,
) -> str:
    target_options = '<option value="">all targets</option>' + "".join(
        f'<option value="{e(n)}"{" selected" if n == target else ""}>{e(n)}</option>'
        for n in targets
    )
    status_options = '<option value="">any status</option>' + "".join(
        f'<option value="{s.value}"{" selected" if s.value == status else ""}>'
        f"{s.value.replace('_', ' ')}</option>"
        for s in TaskStatus
    )
    filters = (
        f'<form method="get" action="{TASKS_PATH}" class="filters" id="filters">'
        '<div><label for="f-target">Target</label>'
        f'<select id="f-target" name="target">{target_options}</select></div>'
        '<div><label for="f-status">Status</label>'
        f'<select id="f-status" name="status">{status_options}</select></div>'
        '<button type="submit">Filter</button></form>'
    )
    items = []
    for t in tasks:
        stalled = ' <span class="status status-stalled">stalled</span>' if t.stalled else ""
        urgent = ' <span class="urgent">urgent</span>' if t.urgent else ""
        items.append(
            f'<li class="task"><a href="{task_path(t.id)}">{e(_first_line(t.content))}</a>'
            f'<p class="meta">{status_badge(t.status)}{stalled}{urgent} · {e(t.target)} · '
            f"queued {when(t.created_at)} · <code>{e(t.id[:8])}</code></p></li>"
        )
    listing = (
        f'<ul class="tasks" id="task-list">{"".join(items)}</ul>'
        if items
        else '<p id="task-list-empty">No tasks match.</p>'
    )
    pages = []
    keep = {k: v for k, v in (("target", target), ("status", status)) if v}
    if not first_page:
        pages.append(f'<a href="{TASKS_PATH}?{urlencode(keep)}" id="newest-page">Newest</a>')
    if next_before:
        query = urlencode({**keep, "before": next_before})
        pages.append(f'<a href="{TASKS_PATH}?{query}" id="older-page" rel="next">Older tasks</a>')
    pager = f'<nav aria-label="Pages" class="pager">{" ".join(pages)}</nav>' if pages else ""
    body = alert(error) + filters + listing + pager + send_form(csrf, targets, form)
    return layout("Tasks", body, csrf=csrf, current=TASKS_PATH)


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "(empty)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass(frozen=True, slots=True)
class DeliveryShown:
    state: str
    attempts: int
    last_error: str | None
    delivered_at: str | None
    telegram_message_ids: Sequence[int]


def task_page(
    *,
    csrf: str,
    task: TaskOut,
    delivery: DeliveryShown | None,
    updates: Sequence[TaskUpdate],
    earlier_before: int | None,
    window_before: int | None,
    events_url: str | None,
    error: str | None = None,
    notice: str | None = None,
    reply_text: str = "",
    cancel_reason: str = "",
) -> str:
    path = task_path(task.id)
    facts = [
        (
            "Status",
            status_badge(task.status, element_id="task-status")
            + (
                f' <span id="task-reason">({e(task.status_reason)})</span>'
                if task.status_reason
                else ""
            ),
        ),
        ("Target", e(task.target)),
        ("Urgent", "yes" if task.urgent else "no"),
        ("Id", f"<code>{e(task.id)}</code>"),
        ("Queued", when(task.created_at)),
        ("Acknowledged", _live("acknowledged_at", task.acknowledged_at)),
        ("Started", _live("started_at", task.started_at)),
        ("Ended", _live("ended_at", task.ended_at)),
        ("Last change", _live("updated_at", task.updated_at)),
    ]
    if task.stalled:
        facts.append(("Stalled", f"no agent activity for {e(int(task.idle_seconds or 0))} s"))
    if delivery is None:
        facts.append(("Delivery", "taken over the agent API (no chat delivery)"))
    else:
        shown = f"{e(delivery.state)}, {e(delivery.attempts)} attempt(s)"
        if delivery.delivered_at:
            shown += f", delivered {when(delivery.delivered_at)}"
        if delivery.last_error:
            shown += f"; last error: {e(delivery.last_error)}"
        if delivery.telegram_message_ids:
            shown += "; Telegram message " + ", ".join(
                str(i) for i in delivery.telegram_message_ids
            )
        facts.append(("Delivery", shown))
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    ended = task.status in ("complete", "error", "cancelled")
    reply = (
        f'<form method="post" action="{path}/reply" class="card" id="reply-form"'
        f"{'' if task.status == 'input_required' else ' hidden'}>{csrf_input(csrf)}"
        '<label for="reply-text">Your answer to the agent\'s question</label>'
        f'<textarea id="reply-text" name="text" rows="3" required>{e(reply_text)}</textarea>'
        '<button type="submit" class="primary">Send answer</button></form>'
    )
    cancel = (
        f'<form method="post" action="{path}/cancel" class="card" id="cancel-form"'
        f"{' hidden' if ended else ''}>{csrf_input(csrf)}"
        '<label for="cancel-reason">Reason for cancelling (optional)</label>'
        f'<input type="text" id="cancel-reason" name="reason" value="{e(cancel_reason)}">'
        '<button type="submit" class="danger">Cancel task</button></form>'
    )
    items = "".join(timeline_item(u) for u in updates)
    nav = []
    if earlier_before is not None:
        nav.append(f'<a href="{path}?before={earlier_before}" id="earlier">Earlier updates</a>')
    if window_before is not None:
        nav.append(f'<a href="{path}" id="latest">Latest updates</a>')
    pager = f'<nav aria-label="Timeline pages" class="pager">{" ".join(nav)}</nav>' if nav else ""
    live_attr = f' data-events="{e(events_url)}"' if events_url else ""
    live = (
        '<p id="live-state" role="status" class="note">Live: new updates appear here as they '
        "happen.</p>"
        if events_url
        else '<p class="note">An earlier part of the history; the latest updates are live.</p>'
    )
    body = (
        alert(error, notice) + f'<section aria-labelledby="text-h"><h2 id="text-h">Task</h2>'
        f'<div class="content" id="task-content">{e(task.content)}</div>'
        f'<dl class="facts" id="task-facts">{dl}</dl></section>'
        + f'<section aria-labelledby="actions-h"><h2 id="actions-h">Actions</h2>{reply}{cancel}'
        + ('<p id="no-actions" class="note">The task has ended.</p>' if ended else "")
        + "</section>"
        + '<section aria-labelledby="timeline-h"><h2 id="timeline-h">History</h2>'
        + pager
        + live
        + f'<ol class="timeline" id="timeline"{live_attr}>{items}</ol>'
        + "</section>"
    )
    return layout(
        f"Task {task.id[:8]}", body, csrf=csrf, current=None, script=events_url is not None
    )


def _live(field: str, iso: str | None) -> str:
    """A timestamp that the live timeline's script keeps up to date."""
    return f'<span id="task-{field.replace("_", "-")}">{when(iso)}</span>'


_KIND_LABELS: Final = {
    UpdateKind.STATUS: "status",
    UpdateKind.AGENT: "agent",
    UpdateKind.CLIENT: "you",
}


def timeline_item(u: TaskUpdate) -> str:
    """One update of the timeline (built from the domain value: a long page renders many)."""
    kind = u.kind.value
    return (
        f'<li class="update kind-{kind}" id="u-{u.seq}" data-seq="{u.seq}">'
        f'<p class="meta"><span class="kind">{_KIND_LABELS[u.kind]}</span> · '
        f"{when(format_timestamp(u.created_at))}</p>"
        f'<div class="content">{e(u.content)}</div></li>'
    )


# --- access -------------------------------------------------------------------------------------


def _revoke_button(csrf: str, access_id: str, label: str) -> str:
    return (
        f'<form method="post" action="{REVOKE_PATH}" class="inline">{csrf_input(csrf)}'
        f'<input type="hidden" name="id" value="{e(access_id)}">'
        f'<button type="submit" class="danger" aria-label="Revoke {e(label)}">Revoke</button>'
        "</form>"
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def access_page(
    *,
    csrf: str,
    clients: Sequence[OAuthClientView],
    families: Sequence[TokenFamilyView],
    oauth_enabled: bool,
    error: str | None = None,
    notice: str | None = None,
) -> str:
    client_cards = [
        (
            e(c.name or "(no name)"),
            [
                ("Client id", f"<code>{e(c.client_id)}</code>"),
                ("Registered", when(_iso(c.registered_at))),
                ("State", f"revoked {when(_iso(c.revoked_at))}" if c.revoked_at else "active"),
            ],
            ""
            if c.revoked_at
            else _revoke_button(csrf, c.client_id, f"client {c.name or c.client_id}"),
        )
        for c in clients
    ]
    family_cards = [
        (
            f"Family <code>{e(f.family_id[:8])}</code>",
            [
                ("Family id", f"<code>{e(f.family_id)}</code>"),
                ("Client id", f"<code>{e(f.client_id)}</code>"),
                ("Tokens", f"{f.live} live of {f.issued} issued"),
                ("Last issued", when(_iso(f.last_issued_at))),
            ],
            _revoke_button(csrf, f.family_id, f"token family {f.family_id}") if f.live else "",
        )
        for f in families
    ]
    off = (
        ""
        if oauth_enabled
        else '<p class="note">OAuth is off on this server (no PUBLIC_URL): no client can '
        "register or sign in; anything listed here is from an earlier configuration.</p>"
    )
    body = (
        alert(error, notice)
        + off
        + '<section aria-labelledby="clients-h"><h2 id="clients-h">Registered clients</h2>'
        + (
            _cards("clients", client_cards)
            if client_cards
            else '<p id="no-clients">No client has registered.</p>'
        )
        + "</section>"
        + '<section aria-labelledby="families-h"><h2 id="families-h">Token families</h2>'
        + '<p class="note">A family is one sign-in of a client: its access and refresh tokens.</p>'
        + (
            _cards("families", family_cards)
            if family_cards
            else '<p id="no-families">No tokens have been issued.</p>'
        )
        + "</section>"
    )
    return layout("Access", body, csrf=csrf, current=ACCESS_PATH)
