"""The OAuth half of the store (``tx.oauth``) on SQLite and PostgreSQL: typed records, single-use
codes and tokens, revocation, the owner row, and the housekeeping that keeps open registration
bounded."""

from __future__ import annotations

from datetime import timedelta

from nexus_bridge.db.oauth_store import (
    AuthorizationCodeRecord,
    AuthorizationRequestRecord,
    OAuthClientRecord,
    OwnerRecord,
    TokenKind,
    TokenRecord,
)
from nexus_bridge.db.store import Store
from nexus_bridge.domain import utc_now


async def test_abandoned_clients_are_pruned_and_used_or_waiting_ones_kept(store: Store) -> None:
    now = utc_now()
    old = now - timedelta(days=1)
    async with store.write() as tx:
        for client_id in ("abandoned", "with-token", "with-code", "waiting", "revoked", "new"):
            at = now if client_id == "new" else old
            await tx.oauth.insert_client(client_id=client_id, client_name=None, info="{}", at=at)
        await tx.oauth.revoke_client("revoked", at=old)
        await tx.oauth.insert_token(
            token_hash="t" * 64,
            kind=TokenKind.REFRESH,
            client_id="with-token",
            family_id="f1",
            scopes=(),
            resource=None,
            expires_at=now + timedelta(days=1),
            at=old,
        )
        await tx.oauth.insert_code(
            code_hash="c" * 64,
            client_id="with-code",
            family_id="f2",
            redirect_uri="http://127.0.0.1/cb",
            redirect_uri_explicit=True,
            code_challenge="x" * 43,
            scopes=(),
            resource=None,
            expires_at=now,
            at=old,
        )
        await tx.oauth.insert_request(
            id_hash="r" * 64,
            client_id="waiting",
            params="{}",
            expires_at=now + timedelta(minutes=5),
            at=now,
        )
        assert await tx.oauth.count_unused_clients() == 4  # abandoned, with-code, waiting, new
        pruned = await tx.oauth.prune_unused_clients(
            registered_before=now - timedelta(hours=1), now=now
        )
        assert pruned == 1
        kept = {row.client_id for row in await tx.oauth.clients()}
    assert kept == {"with-token", "with-code", "waiting", "revoked", "new"}


async def test_only_a_clients_newest_consent_requests_are_kept(store: Store) -> None:
    now = utc_now()
    async with store.write() as tx:
        for client_id in ("a", "b"):
            await tx.oauth.insert_client(client_id=client_id, client_name=None, info="{}", at=now)
        for i in range(5):
            for client_id in ("a", "b"):
                await tx.oauth.insert_request(
                    id_hash=f"{client_id}{i}".ljust(64, "0"),
                    client_id=client_id,
                    params="{}",
                    expires_at=now + timedelta(minutes=10),
                    at=now + timedelta(seconds=i),
                )
        await tx.oauth.keep_newest_requests("a", keep=2)
        left_a = [await tx.oauth.request(f"a{i}".ljust(64, "0")) for i in range(5)]
        left_b = [await tx.oauth.request(f"b{i}".ljust(64, "0")) for i in range(5)]
    assert [row is not None for row in left_a] == [False, False, False, True, True]
    assert all(row is not None for row in left_b)


async def test_records_come_back_typed_as_they_were_stored(store: Store) -> None:
    now = utc_now()
    async with store.write() as tx:
        await tx.oauth.insert_client(client_id="c", client_name="Claude", info='{"a":1}', at=now)
        await tx.oauth.insert_request(
            id_hash="r" * 64, client_id="c", params="{}", expires_at=now, at=now
        )
        await tx.oauth.insert_code(
            code_hash="k" * 64,
            client_id="c",
            family_id="f",
            redirect_uri="http://127.0.0.1/cb",
            redirect_uri_explicit=False,
            code_challenge="x" * 43,
            scopes=("read", "write"),
            resource="http://127.0.0.1/mcp",
            expires_at=now + timedelta(minutes=5),
            at=now,
        )
        await tx.oauth.insert_token(
            token_hash="a" * 64,
            kind=TokenKind.ACCESS,
            client_id="c",
            family_id="f",
            scopes=(),
            resource=None,
            expires_at=now + timedelta(hours=1),
            at=now,
        )
    async with store.read() as tx:
        client = await tx.oauth.client("c")
        request = await tx.oauth.request("r" * 64)
        code = await tx.oauth.code("k" * 64)
        token = await tx.oauth.token("a" * 64)
        missing = (
            await tx.oauth.client("nope"),
            await tx.oauth.request("nope"),
            await tx.oauth.code("nope"),
            await tx.oauth.token("nope"),
            await tx.oauth.owner(),
        )
    assert client == OAuthClientRecord(
        client_id="c", client_name="Claude", info='{"a":1}', created_at=now, revoked_at=None
    )
    assert request == AuthorizationRequestRecord(
        id_hash="r" * 64, client_id="c", params="{}", expires_at=now, created_at=now
    )
    assert code == AuthorizationCodeRecord(
        code_hash="k" * 64,
        client_id="c",
        family_id="f",
        redirect_uri="http://127.0.0.1/cb",
        redirect_uri_explicit=False,
        code_challenge="x" * 43,
        scopes=("read", "write"),
        resource="http://127.0.0.1/mcp",
        expires_at=now + timedelta(minutes=5),
        created_at=now,
        used_at=None,
    )
    assert token == TokenRecord(
        token_hash="a" * 64,
        kind=TokenKind.ACCESS,
        client_id="c",
        family_id="f",
        scopes=(),
        resource=None,
        expires_at=now + timedelta(hours=1),
        created_at=now,
        used_at=None,
        revoked_at=None,
        client_revoked_at=None,
    )
    assert missing == (None, None, None, None, None)


async def test_codes_and_refresh_tokens_are_used_once_and_revoking_reaches_every_token(
    store: Store,
) -> None:
    now = utc_now()
    later = now + timedelta(seconds=1)
    async with store.write() as tx:
        for client_id in ("c", "other"):
            await tx.oauth.insert_client(client_id=client_id, client_name=None, info="{}", at=now)
        for token, client_id, family_id in (("1", "c", "f"), ("2", "c", "f"), ("3", "c", "g")):
            await tx.oauth.insert_token(
                token_hash=token * 64,
                kind=TokenKind.REFRESH,
                client_id=client_id,
                family_id=family_id,
                scopes=(),
                resource=None,
                expires_at=now + timedelta(days=1),
                at=now,
            )
        await tx.oauth.insert_code(
            code_hash="k" * 64,
            client_id="c",
            family_id="f",
            redirect_uri="http://127.0.0.1/cb",
            redirect_uri_explicit=True,
            code_challenge="x" * 43,
            scopes=(),
            resource=None,
            expires_at=now,
            at=now,
        )
        assert [await tx.oauth.use_code("k" * 64, at=later) for _ in range(2)] == [True, False]
        assert [await tx.oauth.use_token("1" * 64, at=later) for _ in range(2)] == [True, False]
        assert await tx.oauth.family_exists("f")
        assert not await tx.oauth.family_exists("c")  # a client's id is not a family's
        assert await tx.oauth.revoke_family("f", at=later) == 2
        assert await tx.oauth.revoke_family("f", at=later) == 0
        assert await tx.oauth.family_exists("f")  # revoked, still known
        assert await tx.oauth.revoke_client("c", at=later)
        assert not await tx.oauth.revoke_client("c", at=later)  # already revoked
        assert not await tx.oauth.revoke_client("unknown", at=later)
    async with store.read() as tx:
        code = await tx.oauth.code("k" * 64)
        tokens = await tx.oauth.tokens()
        clients = await tx.oauth.clients()
    assert code is not None
    assert code.used_at == later
    assert [(t.token_hash[0], t.used_at, t.revoked_at, t.client_revoked_at) for t in tokens] == [
        ("1", later, later, later),
        ("2", None, later, later),
        ("3", None, later, later),  # the client's revocation reached its other family too
    ]
    assert [(c.client_id, c.revoked_at) for c in clients] == [("c", later), ("other", None)]


async def test_the_owner_row_is_created_then_updated_by_named_fields(store: Store) -> None:
    now = utc_now()
    later = now + timedelta(minutes=1)
    async with store.write() as tx:
        await tx.oauth.save_owner_passphrase(passphrase_hash="scrypt$1", at=now)
    async with store.read() as tx:
        assert await tx.oauth.owner() == OwnerRecord(
            passphrase_hash="scrypt$1", failed_attempts=0, locked_until=None, updated_at=now
        )
    async with store.write() as tx:
        await tx.oauth.save_owner_attempts(failed_attempts=3, locked_until=later, at=later)
    async with store.read() as tx:
        assert await tx.oauth.owner() == OwnerRecord(
            passphrase_hash="scrypt$1", failed_attempts=3, locked_until=later, updated_at=later
        )
    async with store.write() as tx:
        await tx.oauth.save_owner_passphrase(passphrase_hash="scrypt$2", at=later)
    async with store.read() as tx:
        assert await tx.oauth.owner() == OwnerRecord(
            passphrase_hash="scrypt$2", failed_attempts=0, locked_until=None, updated_at=later
        )


async def test_attempts_recorded_before_any_passphrase_leave_it_unset(store: Store) -> None:
    now = utc_now()
    async with store.write() as tx:
        await tx.oauth.save_owner_attempts(failed_attempts=1, locked_until=None, at=now)
    async with store.read() as tx:
        assert await tx.oauth.owner() == OwnerRecord(
            passphrase_hash=None, failed_attempts=1, locked_until=None, updated_at=now
        )
