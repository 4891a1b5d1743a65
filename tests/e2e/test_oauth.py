"""OAuth 2.1 as claude.ai uses it: discovery from the 401, dynamic registration, consent with
the owner's passphrase, PKCE code exchange, refresh rotation, revocation, and every refusal."""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx2
import pytest
from sqlalchemy import text

from nexus_bridge.config import Settings
from nexus_bridge.db.engine import create_engine
from tests.conftest import free_port, mcp_client, running_server
from tests.e2e.test_http import TOOLS, call

CALLBACK = "https://claude.ai/api/mcp/auth_callback"
PASSPHRASE = "correct horse battery staple"
STATIC_TOKEN = "static-token-" + "s" * 30


@dataclass
class Bridge:
    base: str
    public_url: str
    http: httpx2.AsyncClient
    settings: Settings


@asynccontextmanager
async def oauth_bridge(
    make_settings: Callable[..., Settings], **overrides: Any
) -> AsyncIterator[Bridge]:
    port = free_port()
    public = f"http://127.0.0.1:{port}/mcp"
    values: dict[str, Any] = {"public_url": public, "oauth_failure_delay_seconds": 0}
    values.update(overrides)
    settings = make_settings(**values)
    async with running_server(settings, port=port) as (_url, server):
        await server.bridge.oauth.set_passphrase(PASSPHRASE)  # type: ignore[union-attr]
        async with httpx2.AsyncClient(follow_redirects=False, timeout=20) as http:
            yield Bridge(f"http://127.0.0.1:{port}", public, http, settings)


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")


async def register(b: Bridge, redirect: str = CALLBACK) -> dict[str, Any]:
    response = await b.http.post(
        b.base + "/register",
        json={
            "redirect_uris": [redirect],
            "client_name": "Claude",
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"  # it holds the client's secret
    return dict(response.json())


async def start_authorization(
    b: Bridge, client_id: str, challenge: str, redirect: str = CALLBACK
) -> str:
    """GET /authorize; returns the consent page URL it redirects to."""
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "xyz-state",
        "resource": b.public_url,
    }
    response = await b.http.get(b.base + "/authorize?" + urlencode(query))
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(b.base + "/consent?request=")
    return location


async def submit_consent(
    b: Bridge, consent_url: str, passphrase: str, action: str = "approve"
) -> httpx2.Response:
    request_id = parse_qs(urlparse(consent_url).query)["request"][0]
    page = await b.http.get(consent_url)
    assert page.status_code == 200
    return await b.http.post(
        b.base + "/consent",
        data={"request": request_id, "passphrase": passphrase, "action": action},
    )


async def authorize(
    b: Bridge,
    client_id: str,
    challenge: str,
    redirect: str = CALLBACK,
    passphrase: str = PASSPHRASE,
) -> str:
    """The whole front channel; returns the authorization code."""
    consent_url = await start_authorization(b, client_id, challenge, redirect)
    response = await submit_consent(b, consent_url, passphrase)
    assert response.status_code == 303, response.text
    target = urlparse(response.headers["location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == redirect
    query = parse_qs(target.query)
    assert query["state"] == ["xyz-state"]
    return query["code"][0]


async def token_request(b: Bridge, **form: str) -> httpx2.Response:
    return await b.http.post(b.base + "/token", data=form)


async def exchange(b: Bridge, client_id: str, code: str, verifier: str) -> dict[str, Any]:
    response = await token_request(
        b,
        grant_type="authorization_code",
        code=code,
        redirect_uri=CALLBACK,
        code_verifier=verifier,
        client_id=client_id,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def refresh(b: Bridge, client_id: str, token: str) -> httpx2.Response:
    return await token_request(
        b, grant_type="refresh_token", refresh_token=token, client_id=client_id
    )


async def mcp_status(b: Bridge, token: str) -> int:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = await b.http.post(
        b.public_url,
        json=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
        },
    )
    return response.status_code


async def signed_in(b: Bridge) -> tuple[str, dict[str, Any]]:
    client = await register(b)
    verifier, challenge = pkce()
    code = await authorize(b, client["client_id"], challenge)
    return client["client_id"], await exchange(b, client["client_id"], code, verifier)


async def test_claude_ai_flow_from_the_401_to_a_tool_call_and_across_a_restart(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        unauthorized = await b.http.post(b.public_url, json={})
        assert unauthorized.status_code == 401
        challenge_header = unauthorized.headers["www-authenticate"]
        assert challenge_header.startswith("Bearer")
        metadata_url = challenge_header.split('resource_metadata="')[1].split('"')[0]
        resource = (await b.http.get(metadata_url)).json()
        assert resource["resource"] == b.public_url
        (issuer,) = resource["authorization_servers"]
        server_meta = (
            await b.http.get(issuer.rstrip("/") + "/.well-known/oauth-authorization-server")
        ).json()
        assert server_meta["code_challenge_methods_supported"] == ["S256"]
        assert server_meta["registration_endpoint"] == b.base + "/register"
        assert server_meta["revocation_endpoint"] == b.base + "/revoke"

        client_id, tokens = await signed_in(b)
        assert tokens["token_type"] == "Bearer"
        assert tokens["expires_in"] == 3600
        async with mcp_client(b.public_url, tokens["access_token"]) as client:
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            sent = await call(client, "send_message", {"message": "from claude.ai"})
            assert sent["queued"]

        rotated = await refresh(b, client_id, tokens["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()
        assert new["refresh_token"] != tokens["refresh_token"]
        assert await mcp_status(b, new["access_token"]) == 200
        settings = b.settings

    # A restart keeps claude.ai connected: tokens and clients live in the database.
    port = urlparse(b.public_url).port
    assert port is not None
    async with (
        running_server(settings, port=port),
        httpx2.AsyncClient(timeout=20) as http,
    ):
        b2 = Bridge(b.base, b.public_url, http, settings)
        assert await mcp_status(b2, new["access_token"]) == 200
        again = await refresh(b2, client_id, new["refresh_token"])
        assert again.status_code == 200, again.text


async def test_static_tokens_keep_working_beside_oauth(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings, auth_tokens=[STATIC_TOKEN]) as b:
        assert await mcp_status(b, STATIC_TOKEN) == 200
        assert await mcp_status(b, "nope-" + "x" * 30) == 401


async def test_a_wrong_pkce_verifier_is_refused(make_settings: Callable[..., Settings]) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        _verifier, challenge = pkce()
        code = await authorize(b, client["client_id"], challenge)
        response = await token_request(
            b,
            grant_type="authorization_code",
            code=code,
            redirect_uri=CALLBACK,
            code_verifier=pkce()[0],
            client_id=client["client_id"],
        )
        assert response.status_code == 400
        assert response.json() == {
            "error": "invalid_grant",
            "error_description": "incorrect code_verifier",
        }


async def test_a_replayed_code_is_refused_and_revokes_what_it_gave(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        verifier, challenge = pkce()
        code = await authorize(b, client["client_id"], challenge)
        tokens = await exchange(b, client["client_id"], code, verifier)
        replay = await token_request(
            b,
            grant_type="authorization_code",
            code=code,
            redirect_uri=CALLBACK,
            code_verifier=verifier,
            client_id=client["client_id"],
        )
        assert replay.status_code == 400
        assert replay.json()["error"] == "invalid_grant"
        assert await mcp_status(b, tokens["access_token"]) == 401


async def test_a_code_only_works_for_its_client_and_redirect_uri(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        owner_client = await register(b)
        other_client = await register(b)
        verifier, challenge = pkce()
        code = await authorize(b, owner_client["client_id"], challenge)
        stolen = await token_request(
            b,
            grant_type="authorization_code",
            code=code,
            redirect_uri=CALLBACK,
            code_verifier=verifier,
            client_id=other_client["client_id"],
        )
        assert stolen.status_code == 400
        assert stolen.json()["error"] == "invalid_grant"
        elsewhere = await token_request(
            b,
            grant_type="authorization_code",
            code=code,
            redirect_uri="http://127.0.0.1:9/callback",
            code_verifier=verifier,
            client_id=owner_client["client_id"],
        )
        assert elsewhere.status_code == 400
        assert elsewhere.json()["error"] == "invalid_request"
        assert "redirect_uri did not match" in elsewhere.json()["error_description"]


@pytest.mark.parametrize(
    "redirect", ["https://evil.example/callback", "http://192.0.2.1/cb", "https://claude.ai/other"]
)
async def test_registration_refuses_redirects_to_other_hosts(
    make_settings: Callable[..., Settings], redirect: str
) -> None:
    async with oauth_bridge(make_settings) as b:
        response = await b.http.post(
            b.base + "/register",
            json={"redirect_uris": [redirect], "token_endpoint_auth_method": "none"},
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_redirect_uri"


async def test_authorize_refuses_an_unregistered_redirect_uri(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        _verifier, challenge = pkce()
        query = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": "http://127.0.0.1:1234/not-registered",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "s",
        }
        response = await b.http.get(b.base + "/authorize?" + urlencode(query))
        assert response.status_code == 400
        assert "location" not in response.headers


async def test_wrong_passphrases_are_refused_alike_then_locked_out(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings, oauth_max_failed_attempts=3) as b:
        client = await register(b)
        _verifier, challenge = pkce()
        consent_url = await start_authorization(b, client["client_id"], challenge)
        for attempt in ("wrong", "", "correct horse battery stapl"):
            refused = await submit_consent(b, consent_url, attempt)
            assert refused.status_code in (401, 429)
            assert "location" not in refused.headers
        assert refused.status_code == 429
        assert "Too many wrong attempts" in refused.text
        # Locked: even the right passphrase does not work now, and says only that.
        locked = await submit_consent(b, consent_url, PASSPHRASE)
        assert locked.status_code == 429
        assert "location" not in locked.headers
        first = await submit_consent(
            b, await start_authorization(b, client["client_id"], challenge), "nope"
        )
        assert "That did not work" in first.text or "Too many" in first.text
        assert "passphrase is wrong" not in first.text.lower()


async def test_the_owner_can_deny(make_settings: Callable[..., Settings]) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        _verifier, challenge = pkce()
        consent_url = await start_authorization(b, client["client_id"], challenge)
        denied = await submit_consent(b, consent_url, "", action="deny")
        assert denied.status_code == 303
        query = parse_qs(urlparse(denied.headers["location"]).query)
        assert query["error"] == ["access_denied"]
        assert "code" not in query


async def test_a_reused_refresh_token_revokes_the_whole_family(
    make_settings: Callable[..., Settings],
) -> None:
    """Its client has moved on (it refreshed with the token it got in exchange): a copy of the
    old one is in other hands."""
    async with oauth_bridge(make_settings) as b:
        client_id, tokens = await signed_in(b)
        rotated = (await refresh(b, client_id, tokens["refresh_token"])).json()
        moved_on = (await refresh(b, client_id, rotated["refresh_token"])).json()
        reuse = await refresh(b, client_id, tokens["refresh_token"])
        assert reuse.status_code == 400
        assert reuse.json()["error"] == "invalid_grant"
        assert await mcp_status(b, moved_on["access_token"]) == 401
        assert (await refresh(b, client_id, moved_on["refresh_token"])).status_code == 400


async def test_a_refresh_tried_again_soon_gets_tokens_and_one_tried_late_revokes_the_family(
    make_settings: Callable[..., Settings],
) -> None:
    """The answer to a refresh lost on the way (a timeout, a reset, a paused server): the client
    sends the same refresh token again. Within a minute, and while the token that answer held
    is unused, it gets working tokens; it used to lose its whole sign-in ("refresh token does
    not exist") and claude.ai had to be connected again. A minute later it is a reuse."""
    async with oauth_bridge(make_settings) as b:
        client_id, tokens = await signed_in(b)
        lost = await refresh(b, client_id, tokens["refresh_token"])  # the client never saw it
        assert lost.status_code == 200
        again = await refresh(b, client_id, tokens["refresh_token"])
        assert again.status_code == 200, again.text
        retried = again.json()
        assert await mcp_status(b, retried["access_token"]) == 200
        assert await mcp_status(b, lost.json()["access_token"]) == 401  # replaced
        assert (await refresh(b, client_id, retried["refresh_token"])).status_code == 200

        late_client, other = await signed_in(b)
        assert (await refresh(b, late_client, other["refresh_token"])).status_code == 200
        engine = create_engine(b.settings.database_url)
        async with engine.begin() as conn:  # that rotation was a minute and more ago
            await conn.execute(
                text(
                    "UPDATE oauth_tokens SET used_at = '2000-01-01T00:00:00.000000+00:00' "
                    "WHERE used_at IS NOT NULL"
                )
            )
        await engine.dispose()
        late = await refresh(b, late_client, other["refresh_token"])
        assert late.status_code == 400
        assert late.json()["error"] == "invalid_grant"


async def test_expired_and_revoked_access_tokens_are_refused(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        _client_id, tokens = await signed_in(b)
        assert await mcp_status(b, tokens["access_token"]) == 200
        engine = create_engine(b.settings.database_url)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE oauth_tokens SET expires_at = '2000-01-01T00:00:00.000000+00:00' "
                    "WHERE kind = 'access'"
                )
            )
        await engine.dispose()
        assert await mcp_status(b, tokens["access_token"]) == 401

        client_id, fresh = await signed_in(b)
        assert await mcp_status(b, fresh["access_token"]) == 200
        revoked = await b.http.post(
            b.base + "/revoke",
            # The SDK's revocation form requires the client_secret field, empty for a public
            # client.
            data={"token": fresh["access_token"], "client_id": client_id, "client_secret": ""},
        )
        assert revoked.status_code == 200
        assert await mcp_status(b, fresh["access_token"]) == 401
        assert (await refresh(b, client_id, fresh["refresh_token"])).status_code == 400


async def test_a_token_in_the_query_string_is_not_accepted(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        _client_id, tokens = await signed_in(b)
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
        response = await b.http.post(
            f"{b.public_url}?access_token={tokens['access_token']}",
            json=body,
            headers={"Accept": "application/json, text/event-stream"},
        )
        assert response.status_code == 401


async def test_codes_and_tokens_are_stored_only_as_hashes(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        _client_id, tokens = await signed_in(b)
        engine = create_engine(b.settings.database_url)
        rows: list[str] = []
        async with engine.connect() as conn:
            for table in ("oauth_tokens", "oauth_codes", "owner"):
                rows.extend(str(r) for r in (await conn.execute(text(f"SELECT * FROM {table}"))))
        dump = " ".join(rows)
        await engine.dispose()
        assert tokens["access_token"] not in dump
        assert tokens["refresh_token"] not in dump
        assert PASSPHRASE not in dump
        assert "scrypt$" in dump


async def test_an_expired_code_is_refused(make_settings: Callable[..., Settings]) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        verifier, challenge = pkce()
        code = await authorize(b, client["client_id"], challenge)
        engine = create_engine(b.settings.database_url)
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE oauth_codes SET expires_at = '2000-01-01T00:00:00.000000+00:00'")
            )
        await engine.dispose()
        response = await token_request(
            b,
            grant_type="authorization_code",
            code=code,
            redirect_uri=CALLBACK,
            code_verifier=verifier,
            client_id=client["client_id"],
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"


async def test_only_s256_pkce_is_accepted(make_settings: Callable[..., Settings]) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        verifier, _challenge = pkce()
        query = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": CALLBACK,
            "code_challenge": verifier,
            "code_challenge_method": "plain",
            "state": "s",
        }
        response = await b.http.get(b.base + "/authorize?" + urlencode(query))
        assert response.status_code in (302, 400)
        if response.status_code == 302:
            location = response.headers["location"]
            assert location.startswith(CALLBACK)
            assert "error=invalid_request" in location
        assert "/consent" not in response.headers.get("location", "")


async def test_public_url_not_the_host_header_decides_every_absolute_url(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings, allowed_hosts=["proxy.internal"]) as b:
        forged = {"Host": "proxy.internal"}
        meta = await b.http.get(b.base + "/.well-known/oauth-authorization-server", headers=forged)
        assert meta.status_code == 200
        for key in ("issuer", "authorization_endpoint", "token_endpoint", "registration_endpoint"):
            assert meta.json()[key].startswith(b.base), key
        unauthorized = await b.http.post(b.public_url, json={}, headers=forged)
        assert unauthorized.status_code == 401
        assert b.base in unauthorized.headers["www-authenticate"]
        assert "proxy.internal" not in unauthorized.headers["www-authenticate"]
        client = await register(b)
        _verifier, challenge = pkce()
        query = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": CALLBACK,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": "s",
        }
        consent = await b.http.get(b.base + "/authorize?" + urlencode(query), headers=forged)
        assert consent.headers["location"].startswith(b.base + "/consent")


async def test_parallel_guesses_cannot_outrun_the_lockout(
    make_settings: Callable[..., Settings],
) -> None:
    import asyncio

    async with oauth_bridge(make_settings, oauth_max_failed_attempts=3) as b:
        client = await register(b)
        _verifier, challenge = pkce()
        consent_url = await start_authorization(b, client["client_id"], challenge)
        results = await asyncio.gather(
            *(submit_consent(b, consent_url, f"guess {i}") for i in range(12))
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses.count(401) <= 2  # the third wrong attempt already locks
        assert statuses.count(429) >= 10
        locked = await submit_consent(b, consent_url, PASSPHRASE)
        assert locked.status_code == 429


async def test_expired_consents_codes_and_tokens_are_forgotten(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        _client_id, _tokens = await signed_in(b)
        client = await register(b)
        await start_authorization(b, client["client_id"], pkce()[1])
        engine = create_engine(b.settings.database_url)
        long_ago = "'2000-01-01T00:00:00.000000+00:00'"
        async with engine.begin() as conn:
            for table in ("oauth_requests", "oauth_codes", "oauth_tokens"):
                await conn.execute(text(f"UPDATE {table} SET expires_at = {long_ago}"))
        await start_authorization(b, client["client_id"], pkce()[1])  # a new request prunes
        async with engine.connect() as conn:
            counts = {
                table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar()
                for table in ("oauth_requests", "oauth_codes", "oauth_tokens")
            }
        await engine.dispose()
        assert counts == {"oauth_requests": 1, "oauth_codes": 0, "oauth_tokens": 0}


# --- hostile input: unauthenticated growth (issue 8, finding 3) --------------------------------


async def table_counts(b: Bridge, *tables: str) -> dict[str, int]:
    engine = create_engine(b.settings.database_url)
    async with engine.connect() as conn:
        counts = {
            t: (await conn.execute(text(f"SELECT count(*) FROM {t}"))).scalar() for t in tables
        }
    await engine.dispose()
    return {t: int(c or 0) for t, c in counts.items()}


async def execute(b: Bridge, sql: str) -> None:
    engine = create_engine(b.settings.database_url)
    async with engine.begin() as conn:
        await conn.execute(text(sql))
    await engine.dispose()


REGISTRATION = {
    "redirect_uris": [CALLBACK],
    "client_name": "Claude",
    "token_endpoint_auth_method": "none",
}


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("client_name", "n" * 201, "client_name is longer than 200 characters"),
        ("redirect_uris", [CALLBACK] * 11, "redirect_uris has more than 10 entries"),
        ("client_uri", "https://example.net/" + "p" * 5000, "client_uri is longer than 4096"),
        ("jwks", {"keys": ["k" * 5000]}, "jwks is longer than 4096 characters"),
        ("contacts", ["c" * 500] * 8, "the registration is longer than 16384 characters"),
    ],
)
async def test_an_oversized_registration_is_refused_naming_the_field(
    make_settings: Callable[..., Settings], field: str, value: Any, named: str
) -> None:
    long_uri = "https://example.net/" + "p" * 4000  # each field fits; all of them do not
    many = {key: long_uri for key in ("client_uri", "logo_uri", "tos_uri", "policy_uri")}
    body = {**REGISTRATION, field: value}
    if named.startswith("the registration"):
        body.update(many)
    async with oauth_bridge(make_settings) as b:
        response = await b.http.post(b.base + "/register", json=body)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_client_metadata"
        assert named in response.json()["error_description"]
        assert await table_counts(b, "oauth_clients") == {"oauth_clients": 0}


async def test_a_multi_megabyte_body_is_refused_before_it_is_read(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        huge = {**REGISTRATION, "software_id": "x" * 3_000_000}
        assert (await b.http.post(b.base + "/register", json=huge)).status_code == 413
        for path in ("/token", "/revoke", "/authorize", "/consent"):
            response = await b.http.post(b.base + path, data={"state": "s" * 100_000})
            assert response.status_code == 413, path
        assert await table_counts(b, "oauth_clients", "oauth_requests") == {
            "oauth_clients": 0,
            "oauth_requests": 0,
        }


@pytest.mark.parametrize(
    ("param", "value", "named"),
    [
        ("state", "s" * 1025, "state is longer than 1024 characters"),
        ("scope", " ".join(["tasks"] * 200), "scope is longer than 1024 characters"),
        ("code_challenge", "c" * 44, "code_challenge must be 43 characters"),
        ("code_challenge", "c" * 42 + "!", "code_challenge must be 43 characters"),
        ("code_challenge", "c" * 20_000, "code_challenge must be 43 characters"),
    ],
)
async def test_an_oversized_authorization_parameter_is_refused_naming_it(
    make_settings: Callable[..., Settings], param: str, value: str, named: str
) -> None:
    async with oauth_bridge(make_settings) as b:
        registered = await b.http.post(
            b.base + "/register", json={**REGISTRATION, "scope": "tasks"}
        )
        client = registered.json()
        query = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": CALLBACK,
            "code_challenge": pkce()[1],
            "code_challenge_method": "S256",
            "state": "s",
            "resource": b.public_url,
            param: value,
        }
        response = await b.http.post(b.base + "/authorize", data=query)
        assert response.status_code == 302, response.text
        error = parse_qs(urlparse(response.headers["location"]).query)
        assert error["error"] == ["invalid_request"]
        assert named in error["error_description"][0]
        assert await table_counts(b, "oauth_requests") == {"oauth_requests": 0}


async def stored_bytes(b: Bridge) -> int:
    engine = create_engine(b.settings.database_url)
    async with engine.connect() as conn:
        clients = (await conn.execute(text("SELECT sum(length(info)) FROM oauth_clients"))).scalar()
        params = (
            await conn.execute(text("SELECT sum(length(params)) FROM oauth_requests"))
        ).scalar()
    await engine.dispose()
    return int(clients or 0) + int(params or 0)


async def test_hostile_registrations_and_authorizations_leave_the_tables_bounded(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings, oauth_max_unused_clients=4) as b:
        owner_client, _tokens = await signed_in(b)  # the owner's connector: never pruned
        # As large as a registration may be, and then some, sent again and again.
        biggest = {**REGISTRATION, "client_name": "n" * 200, "software_id": "s" * 4000}
        biggest["contacts"] = ["c" * 1000] * 3
        clients = [(await b.http.post(b.base + "/register", json=biggest)).json() for _ in range(4)]
        for _ in range(10):
            refused = await b.http.post(b.base + "/register", json=biggest)
            assert refused.status_code == 429
            assert refused.json()["error"] == "temporarily_unavailable"
            assert "waiting for their first token" in refused.json()["error_description"]
            huge = {**biggest, "software_id": "s" * 3_000_000}
            assert (await b.http.post(b.base + "/register", json=huge)).status_code == 413
        for client in clients:
            for _ in range(15):  # each client keeps only its newest 10 consent requests
                query = {
                    "response_type": "code",
                    "client_id": client["client_id"],
                    "redirect_uri": CALLBACK,
                    "code_challenge": pkce()[1],
                    "state": "s" * 1024,
                    "resource": b.public_url,
                }
                response = await b.http.post(b.base + "/authorize", data=query)
                assert "/consent?request=" in response.headers["location"]
        counts = await table_counts(b, "oauth_clients", "oauth_requests")
        assert counts == {"oauth_clients": 5, "oauth_requests": 40}
        assert await stored_bytes(b) < 5 * 16_384 + 40 * 4096

        # An hour on, the clients that never got a token are abandoned: the next registration
        # forgets them (their requests expired too), and the owner's client stays.
        await execute(b, "UPDATE oauth_clients SET created_at = '2000-01-01T00:00:00.000000+00:00'")
        await execute(
            b, "UPDATE oauth_requests SET expires_at = '2000-01-01T00:00:00.000000+00:00'"
        )
        fresh = await register(b)
        engine = create_engine(b.settings.database_url)
        async with engine.connect() as conn:
            ids = {r[0] for r in await conn.execute(text("SELECT client_id FROM oauth_clients"))}
        await engine.dispose()
        assert ids == {owner_client, fresh["client_id"]}
        assert await table_counts(b, "oauth_requests") == {"oauth_requests": 0}


async def test_a_client_with_a_consent_open_is_not_pruned(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        verifier, challenge = pkce()
        consent_url = await start_authorization(b, client["client_id"], challenge)
        await execute(b, "UPDATE oauth_clients SET created_at = '2000-01-01T00:00:00.000000+00:00'")
        await register(b)  # prunes abandoned clients: this one is not abandoned
        response = await submit_consent(b, consent_url, PASSPHRASE)
        assert response.status_code == 303
        code = parse_qs(urlparse(response.headers["location"]).query)["code"][0]
        assert (await exchange(b, client["client_id"], code, verifier))["access_token"]


# --- token audience, RFC 8707 (finding 4) ------------------------------------------------------

OTHER_RESOURCE = "https://other.example/mcp"


@pytest.mark.parametrize("below_this_server", [False, True])
async def test_authorize_refuses_a_resource_that_is_another_server_or_too_long(
    make_settings: Callable[..., Settings], below_this_server: bool
) -> None:
    async with oauth_bridge(make_settings) as b:
        resource = b.public_url + "/" + "a" * 5_000 if below_this_server else OTHER_RESOURCE
        client = await register(b)
        query = {
            "response_type": "code",
            "client_id": client["client_id"],
            "redirect_uri": CALLBACK,
            "code_challenge": pkce()[1],
            "code_challenge_method": "S256",
            "state": "s",
            "resource": resource,
        }
        response = await b.http.get(b.base + "/authorize?" + urlencode(query))
        assert response.status_code == 302
        error = parse_qs(urlparse(response.headers["location"]).query)
        assert error["error"] == ["invalid_target"]
        expected = "longer than 2048 characters" if below_this_server else b.public_url
        assert expected in error["error_description"][0]
        assert await table_counts(b, "oauth_requests") == {"oauth_requests": 0}


async def test_token_refuses_a_resource_that_is_another_server(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        verifier, challenge = pkce()
        code = await authorize(b, client["client_id"], challenge)
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
            "client_id": client["client_id"],
        }
        refused = await token_request(b, **form, resource=OTHER_RESOURCE)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_target"
        accepted = await token_request(b, **form, resource=b.public_url)
        assert accepted.status_code == 200, accepted.text
        tokens = accepted.json()
        again = await token_request(
            b,
            grant_type="refresh_token",
            refresh_token=tokens["refresh_token"],
            client_id=client["client_id"],
            resource=OTHER_RESOURCE,
        )
        assert again.status_code == 400
        assert again.json()["error"] == "invalid_target"
        assert (await refresh(b, client["client_id"], tokens["refresh_token"])).status_code == 200


async def test_a_token_whose_audience_is_another_server_is_refused_on_mcp(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        client_id, tokens = await signed_in(b)
        assert await mcp_status(b, tokens["access_token"]) == 200
        await execute(b, f"UPDATE oauth_tokens SET resource = '{OTHER_RESOURCE}'")
        assert await mcp_status(b, tokens["access_token"]) == 401
        rotated = await refresh(b, client_id, tokens["refresh_token"])
        assert rotated.status_code == 400
        assert rotated.json()["error"] == "invalid_target"


# --- the consent lockout ends (finding 7) ------------------------------------------------------


async def test_a_lockout_ends_for_good_when_it_expires(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings, oauth_max_failed_attempts=3) as b:
        client = await register(b)
        consent_url = await start_authorization(b, client["client_id"], pkce()[1])
        for attempt in ("one", "two", "three"):
            refused = await submit_consent(b, consent_url, attempt)
        assert refused.status_code == 429
        # The lockout runs out; one wrong guess afterwards must not lock the owner out again.
        long_ago = "'2000-01-01T00:00:00.000000+00:00'"
        await execute(b, f"UPDATE owner SET locked_until = {long_ago}, updated_at = {long_ago}")
        wrong = await submit_consent(b, consent_url, "one more")
        assert wrong.status_code == 401
        assert "That did not work" in wrong.text
        verifier, challenge = pkce()
        code = await authorize(b, client["client_id"], challenge)
        assert (await exchange(b, client["client_id"], code, verifier))["access_token"]


async def test_wrong_passphrases_older_than_the_window_are_not_counted(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings, oauth_max_failed_attempts=3) as b:
        client = await register(b)
        consent_url = await start_authorization(b, client["client_id"], pkce()[1])
        for attempt in ("one", "two"):
            assert (await submit_consent(b, consent_url, attempt)).status_code == 401
        await execute(b, "UPDATE owner SET updated_at = '2000-01-01T00:00:00.000000+00:00'")
        assert (await submit_consent(b, consent_url, "three")).status_code == 401
        assert (await submit_consent(b, consent_url, "four")).status_code == 401
        assert (await submit_consent(b, consent_url, "five")).status_code == 429


# --- Host on every route, Origin on the consent form (finding 8) -------------------------------

WEBHOOK_SECRET = "webhook-secret-" + "w" * 20
ROUTES = [
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/mcp"),
    ("POST", "/agent/mcp"),
    ("GET", "/.well-known/oauth-authorization-server"),
    ("GET", "/.well-known/oauth-protected-resource/mcp"),
    ("POST", "/register"),
    ("GET", "/authorize"),
    ("GET", "/consent"),
    ("POST", "/consent"),
    ("POST", "/token"),
    ("POST", "/revoke"),
    ("POST", "/telegram/webhook"),
    ("GET", "/targets"),
    # The owner's console (tests/e2e/test_console.py checks each refuses without a session).
    ("GET", "/console"),
    ("GET", "/console/sign-in"),
    ("POST", "/console/sign-in"),
    ("POST", "/console/sign-out"),
    ("GET", "/console/tasks"),
    ("POST", "/console/tasks"),
    ("GET", "/console/tasks/{task_id}"),
    ("GET", "/console/tasks/{task_id}/events"),
    ("POST", "/console/tasks/{task_id}/reply"),
    ("POST", "/console/tasks/{task_id}/cancel"),
    ("GET", "/console/access"),
    ("POST", "/console/access/revoke"),
    ("GET", "/console/static/{name}"),
]


@asynccontextmanager
async def every_route(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Bridge, Any]]:
    """OAuth, the agent API and the Telegram webhook all on: every route the bridge has."""
    from tests.e2e.test_telegram import telegram_settings
    from tests.fake_telegram import running_fake_telegram

    port = free_port()
    async with running_fake_telegram() as fake:
        settings = telegram_settings(
            make_settings,
            fake,
            public_url=f"http://127.0.0.1:{port}/mcp",
            telegram_webhook_url="https://hook.example.net/telegram/webhook",
            telegram_webhook_secret=WEBHOOK_SECRET,
        )
        async with (
            running_server(settings, port=port) as (_url, server),
            httpx2.AsyncClient(follow_redirects=False, timeout=20) as http,
        ):
            yield (
                Bridge(f"http://127.0.0.1:{port}", settings.public_url or "", http, settings),
                server,
            )


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_refuses_a_host_that_is_not_allowed(
    make_settings: Callable[..., Settings], method: str, path: str
) -> None:
    async with every_route(make_settings) as (b, _server):
        refused = await b.http.request(method, b.base + path, headers={"Host": "evil.example"})
        assert refused.status_code == 421
        allowed = await b.http.request(method, b.base + path)
        assert allowed.status_code != 421
        hook_host = {"Host": "hook.example.net"}  # TELEGRAM_WEBHOOK_URL's host is allowed
        assert (await b.http.request(method, b.base + path, headers=hook_host)).status_code != 421


async def test_the_host_check_list_names_every_route(
    make_settings: Callable[..., Settings],
) -> None:
    async with every_route(make_settings) as (_b, server):
        paths = {route.path for route in server.config.app.router.routes}
    assert paths <= {path for _method, path in ROUTES}


@pytest.mark.parametrize("origin", ["null", "https://evil.example"])
async def test_the_consent_form_refuses_a_foreign_or_null_origin(
    make_settings: Callable[..., Settings], origin: str
) -> None:
    async with oauth_bridge(make_settings) as b:
        client = await register(b)
        consent_url = await start_authorization(b, client["client_id"], pkce()[1])
        request_id = parse_qs(urlparse(consent_url).query)["request"][0]
        form = {"request": request_id, "passphrase": PASSPHRASE, "action": "approve"}
        refused = await b.http.post(b.base + "/consent", data=form, headers={"Origin": origin})
        assert refused.status_code == 403
        assert "location" not in refused.headers
        own = await b.http.post(b.base + "/consent", data=form, headers={"Origin": b.base})
        assert own.status_code == 303


async def test_the_metadata_advertises_public_clients(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        meta = (await b.http.get(b.base + "/.well-known/oauth-authorization-server")).json()
        assert "none" in meta["token_endpoint_auth_methods_supported"]
        assert "client_secret_post" in meta["token_endpoint_auth_methods_supported"]
        client = await register(b)
        assert client["token_endpoint_auth_method"] == "none"
        assert "client_secret" not in client


async def test_parallel_refreshes_with_one_token_leave_one_chain_and_no_server_error(
    make_settings: Callable[..., Settings],
) -> None:
    """Each later one is taken for a retry (within the minute, nothing refreshed in turn): it
    gets tokens and replaces the one before, so one answer's tokens work in the end."""
    import asyncio

    async with oauth_bridge(make_settings) as b:
        client_id, tokens = await signed_in(b)
        results = await asyncio.gather(
            *(refresh(b, client_id, tokens["refresh_token"]) for _ in range(6))
        )
        assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
        working = [
            answer
            for answer in results
            if await mcp_status(b, answer.json()["access_token"]) == 200
        ]
        assert len(working) == 1


async def test_a_nul_character_in_an_oauth_field_is_refused_in_one_line_never_a_500(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    await _nul_characters_are_refused(make_settings, caplog)


@pytest.mark.postgres
async def test_on_postgresql_a_nul_character_in_an_oauth_field_never_reaches_the_database(
    make_settings: Callable[..., Settings],
    migrated_postgres_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _nul_characters_are_refused(make_settings, caplog, database_url=migrated_postgres_url)


async def _nul_characters_are_refused(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture, **overrides: Any
) -> None:
    """PostgreSQL refuses NUL in text: such a value must never reach it, on any open endpoint;
    each is refused as a client error, and no SQL (nor its parameters) reaches the log."""
    caplog.set_level(logging.DEBUG)
    async with oauth_bridge(make_settings, **overrides) as b:
        client = await register(b)
        registration = {"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}
        named = await b.http.post(
            b.base + "/register", json={**registration, "client_name": "a\0b"}
        )
        assert named.status_code == 400, named.text
        assert "client_name" in named.json()["error_description"]
        _verifier, challenge = pkce()
        query = {
            "response_type": "code",
            "client_id": "a\0b",
            "redirect_uri": CALLBACK,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        authorize = await b.http.get(b.base + "/authorize?" + urlencode(query))
        assert authorize.status_code == 400, authorize.text
        for form in (
            {"grant_type": "authorization_code", "client_id": "a\0b", "code": "x"},
            {
                "grant_type": "refresh_token",
                "client_id": client["client_id"],
                "refresh_token": "\0",
            },
        ):
            token = await b.http.post(b.base + "/token", data={**form, "code_verifier": "y" * 43})
            assert token.status_code in (400, 401), token.text
        revoke = await b.http.post(b.base + "/revoke", data={"client_id": "a\0b", "token": "x"})
        assert revoke.status_code in (200, 400, 401), revoke.text
        assert (await b.http.get(b.base + "/healthz")).status_code == 200
    assert "Traceback" not in caplog.text
    assert "[parameters:" not in caplog.text


async def test_one_address_registering_again_and_again_is_slowed_and_no_other(
    make_settings: Callable[..., Settings],
) -> None:
    """A flood from one address cannot fill the unused clients' cap for everyone; the address
    is the one the proxy names (uvicorn trusts X-Forwarded-For from loopback)."""
    async with oauth_bridge(make_settings) as b:
        flood = {"X-Forwarded-For": "203.0.113.7"}
        for _ in range(10):
            accepted = await b.http.post(b.base + "/register", json=REGISTRATION, headers=flood)
            assert accepted.status_code == 201, accepted.text
        refused = await b.http.post(b.base + "/register", json=REGISTRATION, headers=flood)
        assert refused.status_code == 429
        assert refused.json()["error"] == "temporarily_unavailable"
        assert "from this address" in refused.json()["error_description"]
        other = {"X-Forwarded-For": "198.51.100.9"}
        assert (
            await b.http.post(b.base + "/register", json=REGISTRATION, headers=other)
        ).is_success
        # Straight from loopback the client is unknown: only the cap on unused clients applies.
        assert (await b.http.post(b.base + "/register", json=REGISTRATION)).is_success
        assert await table_counts(b, "oauth_clients") == {"oauth_clients": 12}


async def test_a_strangers_wrong_guesses_lock_everyone_out_but_the_owners_browser(
    make_settings: Callable[..., Settings],
) -> None:
    """One count for every address (guessing from many is no faster), but an address that
    entered the right passphrase before may still try during a lockout, with a count of its
    own: a stranger cannot keep the owner from connecting claude.ai."""
    async with oauth_bridge(make_settings, oauth_max_failed_attempts=3) as b:
        client = await register(b)

        async def attempt(passphrase: str, address: str) -> httpx2.Response:
            consent_url = await start_authorization(b, client["client_id"], pkce()[1])
            request_id = parse_qs(urlparse(consent_url).query)["request"][0]
            return await b.http.post(
                b.base + "/consent",
                data={"request": request_id, "passphrase": passphrase, "action": "approve"},
                headers={"X-Forwarded-For": address, "Origin": b.base},
            )

        owner, stranger = "198.51.100.9", "203.0.113.7"
        assert (await attempt(PASSPHRASE, owner)).status_code == 303
        # Guesses from ever new addresses share one count: the third locks.
        spread = [(await attempt("guess", f"192.0.2.{n}")).status_code for n in range(4)]
        assert spread == [401, 401, 429, 429]
        assert (await attempt(PASSPHRASE, stranger)).status_code == 429
        # The owner's browser still gets in, and that ends the lockout.
        assert (await attempt(PASSPHRASE, owner)).status_code == 303
        assert (await attempt(PASSPHRASE, stranger)).status_code == 303
        # Locked again, the owner's address has only its own few guesses.
        for n in range(3):
            await attempt(f"guess {n}", "192.0.2.77")
        mine = [(await attempt(f"mine {n}", owner)).status_code for n in range(3)]
        assert mine == [401, 401, 429]
        assert (await attempt(PASSPHRASE, owner)).status_code == 429


async def test_a_refresh_forgets_long_expired_tokens_and_long_revoked_clients(
    make_settings: Callable[..., Settings],
) -> None:
    """A connected claude.ai only ever refreshes (two new rows each time, about 48 a day): the
    tables were pruned only when someone authorized again."""
    async with oauth_bridge(make_settings) as b:
        expired_client, _ = await signed_in(b)
        revoked_client, _ = await signed_in(b)
        client_id, tokens = await signed_in(b)
        long_ago = "2000-01-01T00:00:00.000000+00:00"
        engine = create_engine(b.settings.database_url)
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE oauth_tokens SET expires_at = :t WHERE client_id = :c"),
                {"t": long_ago, "c": expired_client},
            )
            await conn.execute(
                text("UPDATE oauth_clients SET revoked_at = :t WHERE client_id = :c"),
                {"t": long_ago, "c": revoked_client},
            )
        assert (await refresh(b, client_id, tokens["refresh_token"])).status_code == 200
        async with engine.connect() as conn:
            left = dict(
                (
                    await conn.execute(
                        text("SELECT client_id, count(*) FROM oauth_tokens GROUP BY client_id")
                    )
                ).all()
            )
            clients = set(
                (await conn.execute(text("SELECT client_id FROM oauth_clients"))).scalars()
            )
        await engine.dispose()
        assert set(left) == {client_id}, left
        assert revoked_client not in clients
        assert {client_id, expired_client} <= clients
