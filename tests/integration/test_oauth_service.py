"""The owner's view of OAuth in the provider, on SQLite and PostgreSQL: clients with their token
families, live-token counts, and revoking a client or one family, with tokens issued by the
provider's own register/authorize/approve/exchange flow."""

from __future__ import annotations

import base64
import hashlib
import secrets
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
from mcp.server.auth.provider import AuthorizationParams
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from pydantic import AnyUrl

from nexus_bridge.db.store import Store
from nexus_bridge.domain import utc_now
from nexus_bridge.oauth import (
    MAX_OAUTH_ID_CHARS,
    BridgeOAuthProvider,
    OAuthClientView,
    OAuthPolicy,
    Revocation,
    RevokedKind,
    TokenFamilyView,
    UnknownClientOrFamily,
)

PASSPHRASE = "a passphrase long enough"
CALLBACK = "http://127.0.0.1:9/callback"


@pytest.fixture
async def provider(store: Store) -> BridgeOAuthProvider:
    provider = BridgeOAuthProvider(
        store, OAuthPolicy(public_url="http://127.0.0.1/mcp", failure_delay_seconds=0)
    )
    await provider.set_passphrase(PASSPHRASE)
    return provider


async def register(provider: BridgeOAuthProvider, name: str) -> OAuthClientInformationFull:
    client = OAuthClientInformationFull(
        client_id=f"client-{name}",
        client_name=name,
        redirect_uris=[AnyUrl(CALLBACK)],
        token_endpoint_auth_method="none",
    )
    await provider.register_client(client)
    return client


async def consent(provider: BridgeOAuthProvider, client: OAuthClientInformationFull) -> OAuthToken:
    """One approved consent, exchanged for tokens: a new family."""
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = AuthorizationParams(
        state=None,
        scopes=None,
        code_challenge=challenge.decode().rstrip("="),
        redirect_uri=AnyUrl(CALLBACK),
        redirect_uri_provided_explicitly=True,
        resource=None,
    )
    consent_url = await provider.authorize(client, params)
    (request_id,) = parse_qs(urlparse(consent_url).query)["request"]
    redirect = await provider.approve(request_id, PASSPHRASE)
    (code,) = parse_qs(urlparse(redirect).query)["code"]
    loaded = await provider.load_authorization_code(client, code)
    assert loaded is not None
    return await provider.exchange_authorization_code(client, loaded)


async def test_clients_list_each_with_its_families_and_live_tokens(
    provider: BridgeOAuthProvider,
) -> None:
    assert await provider.clients() == []
    assert await provider.token_families() == []
    started = utc_now()
    alice = await register(provider, "alice")
    bob = await register(provider, "bob")
    first = await consent(provider, alice)
    await consent(provider, alice)
    await consent(provider, bob)
    # Refreshing rotates: the old refresh token is used (not live), a new pair is issued.
    assert first.refresh_token is not None
    refresh = await provider.load_refresh_token(alice, first.refresh_token)
    assert refresh is not None
    await provider.exchange_refresh_token(alice, refresh, [])

    families = await provider.token_families()
    clients = await provider.clients()

    assert [(f.client_id, f.issued, f.live) for f in families] == [
        ("client-alice", 4, 3),  # access, refresh (used), access, refresh
        ("client-alice", 2, 2),
        ("client-bob", 2, 2),
    ]
    assert all(f.last_issued_at >= started for f in families)
    assert families[0].last_issued_at > families[1].last_issued_at  # refreshed after the 2nd
    assert [(c.client_id, c.name, c.revoked_at) for c in clients] == [
        ("client-alice", "alice", None),
        ("client-bob", "bob", None),
    ]
    assert clients[0].families == tuple(families[:2])
    assert clients[1].families == (families[2],)
    assert all(isinstance(c, OAuthClientView) for c in clients)
    assert all(isinstance(f, TokenFamilyView) for f in families)


async def test_revoking_a_family_ends_only_that_consent(provider: BridgeOAuthProvider) -> None:
    alice = await register(provider, "alice")
    kept = await consent(provider, alice)
    ended = await consent(provider, alice)
    family_of_ended = (await provider.token_families())[1].family_id

    revocation = await provider.revoke(family_of_ended)

    assert revocation == Revocation(RevokedKind.FAMILY, family_of_ended)
    assert revocation.description == f"token family {family_of_ended}"
    assert await provider.load_access_token(ended.access_token) is None
    assert await provider.load_access_token(kept.access_token) is not None
    assert [f.live for f in await provider.token_families()] == [2, 0]
    assert (await provider.clients())[0].revoked_at is None
    # Revoking it again names the same family: it is known, its tokens stay revoked.
    assert await provider.revoke(family_of_ended) == revocation


async def test_revoking_a_client_ends_every_family_and_the_client(
    provider: BridgeOAuthProvider,
) -> None:
    alice = await register(provider, "alice")
    bob = await register(provider, "bob")
    tokens = [await consent(provider, alice), await consent(provider, alice)]
    bobs = await consent(provider, bob)
    before = utc_now()

    revocation = await provider.revoke("client-alice")

    assert revocation == Revocation(RevokedKind.CLIENT, "client-alice")
    assert revocation.description == "client client-alice and all its tokens"
    for issued in tokens:
        assert await provider.load_access_token(issued.access_token) is None
    assert await provider.load_access_token(bobs.access_token) is not None
    assert await provider.get_client("client-alice") is None
    alice_view, bob_view = await provider.clients()
    assert alice_view.revoked_at is not None
    assert alice_view.revoked_at - before < timedelta(minutes=1)
    assert [f.live for f in alice_view.families] == [0, 0]
    assert bob_view.revoked_at is None
    assert [f.live for f in bob_view.families] == [2]


@pytest.mark.parametrize(
    "unknown", ["no-such-thing", "", "x" * (MAX_OAUTH_ID_CHARS + 1), "nul\x00byte", "%", "client-%"]
)
async def test_revoking_an_unknown_id_names_it_and_changes_nothing(
    provider: BridgeOAuthProvider, unknown: str
) -> None:
    alice = await register(provider, "alice")
    issued = await consent(provider, alice)
    before = await provider.clients()

    with pytest.raises(UnknownClientOrFamily) as raised:
        await provider.revoke(unknown)

    assert str(raised.value) == f"no client or token family {unknown!r}"
    assert raised.value.client_or_family_id == unknown
    assert await provider.clients() == before
    assert await provider.load_access_token(issued.access_token) is not None


async def test_a_family_revoked_while_a_refresh_is_under_way_issues_nothing(
    provider: BridgeOAuthProvider,
) -> None:
    """The SDK loads the refresh token, then exchanges it: the owner's revocation (or reuse
    detection) committed in between must hold."""
    from mcp.server.auth.provider import TokenError

    alice = await register(provider, "alice")
    tokens = await consent(provider, alice)
    assert tokens.refresh_token is not None
    loaded = await provider.load_refresh_token(alice, tokens.refresh_token)
    assert loaded is not None
    (family,) = await provider.token_families()
    await provider.revoke(family.family_id)
    with pytest.raises(TokenError):
        await provider.exchange_refresh_token(alice, loaded, [])
    assert [f.live for f in await provider.token_families()] == [0]


async def test_a_copy_refreshed_within_the_grace_cuts_off_whoever_holds_the_other_answer(
    provider: BridgeOAuthProvider,
) -> None:
    """The grace for a lost answer must not fork a sign-in into chains nobody can tell apart:
    the retry revokes what the first answer gave out, and that revoked refresh token, presented
    later by whoever did receive it, revokes the whole family."""
    alice = await register(provider, "alice")
    tokens = await consent(provider, alice)
    assert tokens.refresh_token is not None

    async def refresh(token: str) -> OAuthToken | None:
        loaded = await provider.load_refresh_token(alice, token)
        return None if loaded is None else await provider.exchange_refresh_token(alice, loaded, [])

    received = await refresh(tokens.refresh_token)  # the client got this answer...
    copy = await refresh(tokens.refresh_token)  # ...and a copy of the old token is replayed
    assert received is not None
    assert copy is not None
    assert received.refresh_token is not None
    assert await provider.load_access_token(received.access_token) is None
    assert await provider.load_access_token(copy.access_token) is not None
    assert await refresh(received.refresh_token) is None  # the client refreshes: detected
    assert await provider.load_access_token(copy.access_token) is None
    assert [f.live for f in await provider.token_families()] == [0]
