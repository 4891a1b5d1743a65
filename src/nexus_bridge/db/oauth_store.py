"""The OAuth half of the store: registered clients, parked consent requests, codes, tokens and
the owner. Every query takes named, typed arguments and returns a frozen record, so a renamed
column fails at type-check time. Reach it from a transaction as ``tx.oauth``."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Row, delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from nexus_bridge.db.models import (
    oauth_clients,
    oauth_codes,
    oauth_requests,
    oauth_tokens,
    owner,
)

_OWNER_ID: Final = 1  # the owner table has one row


class TokenKind(enum.StrEnum):
    """What a stored token is for."""

    ACCESS = "access"
    REFRESH = "refresh"


@dataclass(frozen=True, slots=True)
class OAuthClientRecord:
    """A registered client. ``info`` is its registration as JSON, as the SDK validates it."""

    client_id: str
    client_name: str | None
    info: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class AuthorizationRequestRecord:
    """An authorization request parked for the owner's consent; ``params`` is JSON."""

    id_hash: str
    client_id: str
    params: str
    expires_at: datetime
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AuthorizationCodeRecord:
    """An authorization code, by its hash; single use, bound to client, redirect and PKCE."""

    code_hash: str
    client_id: str
    family_id: str
    redirect_uri: str
    redirect_uri_explicit: bool
    code_challenge: str
    scopes: tuple[str, ...]
    resource: str | None
    expires_at: datetime
    created_at: datetime
    used_at: datetime | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An access or refresh token, by its hash, with whether its client has been revoked."""

    token_hash: str
    kind: TokenKind
    client_id: str
    family_id: str
    scopes: tuple[str, ...]
    resource: str | None
    expires_at: datetime
    created_at: datetime
    used_at: datetime | None
    revoked_at: datetime | None
    client_revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    """The owner: the consent passphrase's scrypt hash and the wrong-passphrase count."""

    passphrase_hash: str | None
    failed_attempts: int
    locked_until: datetime | None
    updated_at: datetime


def _scopes(stored: str | None) -> tuple[str, ...]:
    return tuple(stored.split()) if stored else ()


def _client(row: Row[Any]) -> OAuthClientRecord:
    return OAuthClientRecord(
        client_id=row.client_id,
        client_name=row.client_name,
        info=row.info,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _request(row: Row[Any]) -> AuthorizationRequestRecord:
    return AuthorizationRequestRecord(
        id_hash=row.id_hash,
        client_id=row.client_id,
        params=row.params,
        expires_at=row.expires_at,
        created_at=row.created_at,
    )


def _code(row: Row[Any]) -> AuthorizationCodeRecord:
    return AuthorizationCodeRecord(
        code_hash=row.code_hash,
        client_id=row.client_id,
        family_id=row.family_id,
        redirect_uri=row.redirect_uri,
        redirect_uri_explicit=bool(row.redirect_uri_explicit),
        code_challenge=row.code_challenge,
        scopes=_scopes(row.scopes),
        resource=row.resource,
        expires_at=row.expires_at,
        created_at=row.created_at,
        used_at=row.used_at,
    )


def _token(row: Row[Any]) -> TokenRecord:
    return TokenRecord(
        token_hash=row.token_hash,
        kind=TokenKind(row.kind),
        client_id=row.client_id,
        family_id=row.family_id,
        scopes=_scopes(row.scopes),
        resource=row.resource,
        expires_at=row.expires_at,
        created_at=row.created_at,
        used_at=row.used_at,
        revoked_at=row.revoked_at,
        client_revoked_at=row.client_revoked_at,
    )


def _owner(row: Row[Any]) -> OwnerRecord:
    return OwnerRecord(
        passphrase_hash=row.passphrase_hash,
        failed_attempts=int(row.failed_attempts),
        locked_until=row.locked_until,
        updated_at=row.updated_at,
    )


# Tokens with their client's revocation, which every reader of a token needs.
_TOKENS_WITH_CLIENT: Final = select(
    oauth_tokens, oauth_clients.c.revoked_at.label("client_revoked_at")
).join(oauth_clients, oauth_clients.c.client_id == oauth_tokens.c.client_id)


class OAuthStore:
    """The OAuth queries of one transaction: ``tx.oauth`` of a :class:`StoreTransaction`."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._conn = connection

    # --- clients -------------------------------------------------------------------------------

    async def insert_client(
        self, *, client_id: str, client_name: str | None, info: str, at: datetime
    ) -> None:
        await self._conn.execute(
            insert(oauth_clients).values(
                client_id=client_id, client_name=client_name, info=info, created_at=at
            )
        )

    async def client(self, client_id: str) -> OAuthClientRecord | None:
        row = (
            await self._conn.execute(
                select(oauth_clients).where(oauth_clients.c.client_id == client_id)
            )
        ).first()
        return _client(row) if row is not None else None

    async def clients(self) -> list[OAuthClientRecord]:
        """Every client, oldest registration first."""
        rows = await self._conn.execute(
            select(oauth_clients).order_by(oauth_clients.c.created_at, oauth_clients.c.client_id)
        )
        return [_client(row) for row in rows.all()]

    async def revoke_client(self, client_id: str, *, at: datetime) -> bool:
        """Revoke the client and every token of it; False if it was already revoked (or is
        unknown). Its tokens are revoked either way."""
        result = await self._conn.execute(
            update(oauth_clients)
            .where(oauth_clients.c.client_id == client_id, oauth_clients.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        await self._conn.execute(
            update(oauth_tokens)
            .where(oauth_tokens.c.client_id == client_id, oauth_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return bool(result.rowcount)

    async def prune_unused_clients(self, *, registered_before: datetime, now: datetime) -> int:
        """Forget clients registered before then that never got a code or token and have no
        consent request open (their rows cascade)."""
        no_token = ~exists().where(oauth_tokens.c.client_id == oauth_clients.c.client_id)
        no_code = ~exists().where(oauth_codes.c.client_id == oauth_clients.c.client_id)
        no_request = ~exists().where(
            oauth_requests.c.client_id == oauth_clients.c.client_id,
            oauth_requests.c.expires_at >= now,
        )
        result = await self._conn.execute(
            delete(oauth_clients).where(
                oauth_clients.c.created_at < registered_before,
                oauth_clients.c.revoked_at.is_(None),
                no_token,
                no_code,
                no_request,
            )
        )
        return int(result.rowcount)

    async def count_unused_clients(self) -> int:
        """Clients (not revoked) that have never been issued a token."""
        no_token = ~exists().where(oauth_tokens.c.client_id == oauth_clients.c.client_id)
        query = select(func.count()).where(oauth_clients.c.revoked_at.is_(None), no_token)
        return int((await self._conn.execute(query.select_from(oauth_clients))).scalar_one())

    # --- consent requests ----------------------------------------------------------------------

    async def insert_request(
        self, *, id_hash: str, client_id: str, params: str, expires_at: datetime, at: datetime
    ) -> None:
        await self._conn.execute(
            insert(oauth_requests).values(
                id_hash=id_hash,
                client_id=client_id,
                params=params,
                expires_at=expires_at,
                created_at=at,
            )
        )

    async def request(self, id_hash: str) -> AuthorizationRequestRecord | None:
        row = (
            await self._conn.execute(
                select(oauth_requests).where(oauth_requests.c.id_hash == id_hash)
            )
        ).first()
        return _request(row) if row is not None else None

    async def delete_request(self, id_hash: str) -> bool:
        """Forget a parked request; False if it was already gone."""
        result = await self._conn.execute(
            delete(oauth_requests).where(oauth_requests.c.id_hash == id_hash)
        )
        return bool(result.rowcount)

    async def keep_newest_requests(self, client_id: str, *, keep: int) -> None:
        """Drop all but the client's newest ``keep`` consent requests."""
        newest = (
            select(oauth_requests.c.id_hash)
            .where(oauth_requests.c.client_id == client_id)
            .order_by(oauth_requests.c.created_at.desc())
            .limit(keep)
        )
        await self._conn.execute(
            delete(oauth_requests).where(
                oauth_requests.c.client_id == client_id,
                oauth_requests.c.id_hash.not_in(newest.scalar_subquery()),
            )
        )

    async def prune(self, *, now: datetime, keep_after: datetime) -> None:
        """Forget consents and codes that have expired, tokens expired before keep_after, and
        clients revoked before then (with what is left of theirs)."""
        await self._conn.execute(delete(oauth_requests).where(oauth_requests.c.expires_at < now))
        await self._conn.execute(delete(oauth_codes).where(oauth_codes.c.expires_at < keep_after))
        await self._conn.execute(delete(oauth_tokens).where(oauth_tokens.c.expires_at < keep_after))
        revoked = select(oauth_clients.c.client_id).where(oauth_clients.c.revoked_at < keep_after)
        for table in (oauth_requests, oauth_codes, oauth_tokens):  # not every database cascades
            await self._conn.execute(delete(table).where(table.c.client_id.in_(revoked)))
        await self._conn.execute(
            delete(oauth_clients).where(oauth_clients.c.revoked_at < keep_after)
        )

    # --- codes ---------------------------------------------------------------------------------

    async def insert_code(
        self,
        *,
        code_hash: str,
        client_id: str,
        family_id: str,
        redirect_uri: str,
        redirect_uri_explicit: bool,
        code_challenge: str,
        scopes: Sequence[str],
        resource: str | None,
        expires_at: datetime,
        at: datetime,
    ) -> None:
        await self._conn.execute(
            insert(oauth_codes).values(
                code_hash=code_hash,
                client_id=client_id,
                family_id=family_id,
                redirect_uri=redirect_uri,
                redirect_uri_explicit=redirect_uri_explicit,
                code_challenge=code_challenge,
                scopes=" ".join(scopes),
                resource=resource,
                expires_at=expires_at,
                created_at=at,
            )
        )

    async def code(self, code_hash: str) -> AuthorizationCodeRecord | None:
        row = (
            await self._conn.execute(
                select(oauth_codes).where(oauth_codes.c.code_hash == code_hash)
            )
        ).first()
        return _code(row) if row is not None else None

    async def use_code(self, code_hash: str, *, at: datetime) -> bool:
        """Mark a code used; False if it already was (a replay)."""
        result = await self._conn.execute(
            update(oauth_codes)
            .where(oauth_codes.c.code_hash == code_hash, oauth_codes.c.used_at.is_(None))
            .values(used_at=at)
        )
        return bool(result.rowcount == 1)

    # --- tokens --------------------------------------------------------------------------------

    async def insert_token(
        self,
        *,
        token_hash: str,
        kind: TokenKind,
        client_id: str,
        family_id: str,
        scopes: Sequence[str],
        resource: str | None,
        expires_at: datetime,
        at: datetime,
    ) -> None:
        await self._conn.execute(
            insert(oauth_tokens).values(
                token_hash=token_hash,
                kind=kind.value,
                client_id=client_id,
                family_id=family_id,
                scopes=" ".join(scopes),
                resource=resource,
                expires_at=expires_at,
                created_at=at,
            )
        )

    async def token(self, token_hash: str) -> TokenRecord | None:
        row = (
            await self._conn.execute(
                _TOKENS_WITH_CLIENT.where(oauth_tokens.c.token_hash == token_hash)
            )
        ).first()
        return _token(row) if row is not None else None

    async def tokens(self) -> list[TokenRecord]:
        """Every stored token, oldest first."""
        rows = await self._conn.execute(
            _TOKENS_WITH_CLIENT.order_by(oauth_tokens.c.created_at, oauth_tokens.c.token_hash)
        )
        return [_token(row) for row in rows.all()]

    async def use_token(self, token_hash: str, *, at: datetime) -> bool:
        """Mark a refresh token used (rotated); False if it already was (a reuse)."""
        result = await self._conn.execute(
            update(oauth_tokens)
            .where(oauth_tokens.c.token_hash == token_hash, oauth_tokens.c.used_at.is_(None))
            .values(used_at=at)
        )
        return bool(result.rowcount == 1)

    async def rotation_taken_up(self, family_id: str, *, rotated_at: datetime) -> bool:
        """Whether a refresh token the family got at or after ``rotated_at`` was used since."""
        query = select(
            exists().where(
                oauth_tokens.c.family_id == family_id,
                oauth_tokens.c.kind == "refresh",
                oauth_tokens.c.created_at >= rotated_at,
                oauth_tokens.c.used_at.is_not(None),
            )
        )
        return bool((await self._conn.execute(query)).scalar_one())

    async def revoke_issued_since(self, family_id: str, since: datetime, *, at: datetime) -> int:
        """Revoke the family's tokens issued at or after ``since``; how many were live."""
        result = await self._conn.execute(
            update(oauth_tokens)
            .where(
                oauth_tokens.c.family_id == family_id,
                oauth_tokens.c.created_at >= since,
                oauth_tokens.c.revoked_at.is_(None),
            )
            .values(revoked_at=at)
        )
        return int(result.rowcount)

    async def family_exists(self, family_id: str) -> bool:
        """Whether any stored token belongs to this family (revoked or not)."""
        query = select(exists().where(oauth_tokens.c.family_id == family_id))
        return bool((await self._conn.execute(query)).scalar_one())

    async def revoke_family(self, family_id: str, *, at: datetime) -> int:
        """Revoke every token of the family; how many were not revoked yet."""
        result = await self._conn.execute(
            update(oauth_tokens)
            .where(oauth_tokens.c.family_id == family_id, oauth_tokens.c.revoked_at.is_(None))
            .values(revoked_at=at)
        )
        return int(result.rowcount)

    # --- the owner -----------------------------------------------------------------------------

    async def owner(self) -> OwnerRecord | None:
        """The owner, or None before a passphrase or an attempt was ever recorded."""
        row = (await self._conn.execute(select(owner).where(owner.c.id == _OWNER_ID))).first()
        return _owner(row) if row is not None else None

    async def save_owner_passphrase(self, *, passphrase_hash: str, at: datetime) -> None:
        """Set the passphrase's hash and clear wrong attempts and any lockout."""
        await self._save_owner(
            passphrase_hash=passphrase_hash, failed_attempts=0, locked_until=None, updated_at=at
        )

    async def save_owner_attempts(
        self, *, failed_attempts: int, locked_until: datetime | None, at: datetime
    ) -> None:
        """Record the count of recent wrong passphrases and the lockout they earned, if any."""
        await self._save_owner(
            failed_attempts=failed_attempts, locked_until=locked_until, updated_at=at
        )

    async def _save_owner(self, **columns: object) -> None:
        """Create or update the single owner row (callers above name every column)."""
        changed = await self._conn.execute(
            update(owner).where(owner.c.id == _OWNER_ID).values(**columns)
        )
        if changed.rowcount == 0:
            await self._conn.execute(insert(owner).values(id=_OWNER_ID, **columns))
