"""The owner's consent page: which client asks, for what, and a passphrase to say yes."""

from __future__ import annotations

import html
import re
from typing import Final
from urllib.parse import urlparse

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from nexus_bridge.constants import CONSENT_PATH
from nexus_bridge.errors import NexusBridgeError
from nexus_bridge.oauth import (
    BridgeOAuthProvider,
    ConsentExpired,
    ConsentRefused,
    NoPassphrase,
    OwnerLockedOut,
)

_CSP: Final = (
    "default-src 'none'; style-src 'unsafe-inline'; form-action {form_action}; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_CSP_ORIGIN: Final = re.compile(r"[a-z][a-z0-9+.-]*://[A-Za-z0-9.:\[\]-]+")

SECURITY_HEADERS: Final = {
    "Content-Security-Policy": _CSP.format(form_action="'self'"),
    "X-Frame-Options": "DENY",
    # Not no-referrer: under it browsers send the form with ``Origin: null``, which says nothing
    # about which site sent it. same-origin still sends no Referer to the client's site.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>nexus-bridge: allow access?</title>
<style>
 body {{ font: 16px/1.5 system-ui, sans-serif; background: #f4f5f7; color: #1d2330;
        display: flex; justify-content: center; padding: 6vh 1rem; margin: 0; }}
 main {{ background: #fff; max-width: 28rem; width: 100%; padding: 2rem; border-radius: 12px;
        box-shadow: 0 2px 12px rgba(0,0,0,.08); }}
 h1 {{ font-size: 1.25rem; margin: 0 0 1rem; }}
 dl {{ display: grid; grid-template-columns: auto 1fr; gap: .25rem 1rem; margin: 0 0 1.25rem; }}
 dt {{ color: #5b6475; }} dd {{ margin: 0; word-break: break-all; }}
 label {{ display: block; margin-bottom: .25rem; font-weight: 600; }}
 input[type=password] {{ width: 100%; box-sizing: border-box; padding: .6rem; font-size: 1rem;
        border: 1px solid #c5cad3; border-radius: 8px; }}
 .buttons {{ display: flex; gap: .75rem; margin-top: 1.25rem; }}
 button {{ flex: 1; padding: .65rem; font-size: 1rem; border-radius: 8px; border: 0;
        cursor: pointer; }}
 .allow {{ background: #2458d6; color: #fff; }} .deny {{ background: #e6e8ec; color: #1d2330; }}
 .error {{ background: #fdecec; color: #8a1c1c; padding: .6rem .8rem; border-radius: 8px; }}
 .note {{ color: #5b6475; font-size: .9rem; margin-top: 1rem; }}
</style></head>
<body><main>
<h1>Allow {client} to use nexus-bridge?</h1>
{error}
<dl>
 <dt>Client</dt><dd id="client-name">{client}</dd>
 <dt>Returns to</dt><dd id="redirect-host">{redirect_host}</dd>
 <dt>Access</dt><dd>send tasks to your agent, read its updates, cancel tasks</dd>
</dl>
<form method="post" action="{action}">
 <input type="hidden" name="request" value="{request_id}">
 <label for="passphrase">Owner passphrase</label>
 <input type="password" id="passphrase" name="passphrase" autocomplete="current-password"
        autofocus>
 <div class="buttons">
  <button class="allow" type="submit" name="action" value="approve">Allow</button>
  <button class="deny" type="submit" name="action" value="deny">Deny</button>
 </div>
</form>
<p class="note">Only allow clients you started yourself just now.</p>
</main></body></html>
"""

_MESSAGE_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>nexus-bridge</title>
<style>body {{ font: 16px/1.5 system-ui, sans-serif; padding: 6vh 1rem; text-align: center; }}
</style></head><body><p id="message">{message}</p></body></html>
"""


def _form_headers(redirect_uri: str) -> dict[str, str]:
    """The form's 303 goes to the client's redirect URI, and browsers apply form-action to every
    hop of a form's redirects (Chromium blocks the redirect otherwise): allow that origin too."""
    parsed = urlparse(redirect_uri)
    origin = f"{parsed.scheme}://{parsed.netloc}"
    if not _CSP_ORIGIN.fullmatch(origin):
        return SECURITY_HEADERS
    csp = _CSP.format(form_action=f"'self' {origin}")
    return {**SECURITY_HEADERS, "Content-Security-Policy": csp}


def _page(
    *, client: str, redirect_uri: str, request_id: str, error: str | None, status: int
) -> HTMLResponse:
    redirect_host = urlparse(redirect_uri).netloc
    body = _PAGE.format(
        client=html.escape(client),
        redirect_host=html.escape(redirect_host),
        request_id=html.escape(request_id, quote=True),
        action=CONSENT_PATH,
        error=f'<p class="error" id="error">{html.escape(error)}</p>' if error else "",
    )
    return HTMLResponse(body, status_code=status, headers=_form_headers(redirect_uri))


def _message(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(
        _MESSAGE_PAGE.format(message=html.escape(message)),
        status_code=status,
        headers=SECURITY_HEADERS,
    )


def consent_routes(provider: BridgeOAuthProvider) -> list[Route]:
    """GET shows the request; POST approves (with the passphrase) or declines it."""

    async def show(request: Request, error: str | None = None, status: int = 200) -> Response:
        request_id = str(request.query_params.get("request", ""))
        try:
            client, params = await provider.pending_request(request_id)
        except ConsentExpired as exc:
            return _message(str(exc), 400)
        return _page(
            client=client.client_name or client.client_id or "an unnamed client",
            redirect_uri=str(params.redirect_uri),
            request_id=request_id,
            error=error,
            status=status,
        )

    async def consent_get(request: Request) -> Response:
        return await show(request)

    async def consent_post(request: Request) -> Response:
        # A browser always sends Origin with a form; "null" (a sandboxed frame, a data: page)
        # is not the bridge's page. Without Origin, it is not a browser: no CSRF to fear.
        origin = request.headers.get("origin")
        if origin is not None and origin != provider.policy.issuer:
            return _message("This form must be sent from the bridge's own page.", 403)
        form = await request.form()
        request_id = str(form.get("request", ""))
        try:
            if form.get("action") == "deny":
                target = await provider.decline(request_id)
            else:
                target = await provider.approve(
                    request_id,
                    str(form.get("passphrase", "")),
                    request.client.host if request.client else None,
                    request.headers.get("x-forwarded-for"),
                )
        except ConsentExpired as exc:
            return _message(str(exc), 400)
        except NoPassphrase as exc:
            return _message(str(exc), 503)
        except (ConsentRefused, OwnerLockedOut) as exc:
            status = 429 if isinstance(exc, OwnerLockedOut) else 401
            retry = await _show_again(request_id)
            if retry is None:
                return _message(str(exc), status)
            client, redirect_uri = retry
            return _page(
                client=client,
                redirect_uri=redirect_uri,
                request_id=request_id,
                error=str(exc),
                status=status,
            )
        except NexusBridgeError as exc:
            return _message(str(exc), 400)
        return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)

    async def _show_again(request_id: str) -> tuple[str, str] | None:
        try:
            client, params = await provider.pending_request(request_id)
        except ConsentExpired:
            return None
        name = client.client_name or client.client_id or "an unnamed client"
        return name, str(params.redirect_uri)

    return [
        Route(CONSENT_PATH, consent_get, methods=["GET"]),
        Route(CONSENT_PATH, consent_post, methods=["POST"]),
    ]
