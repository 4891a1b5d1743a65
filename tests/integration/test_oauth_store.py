"""The OAuth housekeeping queries that keep open registration bounded, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from nexus_bridge.db.oauth_store import TokenKind
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
