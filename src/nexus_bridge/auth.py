"""Bearer tokens configured by the operator: client tokens for ``/mcp`` (``AUTH_TOKENS``) and
agent tokens for ``/agent/mcp``, both checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from mcp.server.auth.provider import AccessToken, TokenVerifier

AGENT_PREFIX = "agent:"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_fingerprint(token: str) -> str:
    """A stable, non-secret name for a token: safe to log and to key a pull cursor on."""
    return "static-" + _digest(token).hex()[:12]


class _TokenTable(TokenVerifier):
    """Maps known tokens to client ids. Every entry is compared, so timing reveals nothing."""

    def __init__(self, client_ids: Mapping[str, str], scopes: Sequence[str]) -> None:
        self._entries = [(_digest(token), client_id) for token, client_id in client_ids.items()]
        self._scopes = list(scopes)

    async def verify_token(self, token: str) -> AccessToken | None:
        candidate = _digest(token)
        matched: str | None = None
        for digest, client_id in self._entries:
            if hmac.compare_digest(candidate, digest):
                matched = client_id
        if matched is None:
            return None
        return AccessToken(token=token, client_id=matched, scopes=list(self._scopes))


class StaticTokenVerifier(_TokenTable):
    """Accepts exactly the configured client tokens, each known by its fingerprint."""

    def __init__(self, tokens: Sequence[str]) -> None:
        super().__init__({t: token_fingerprint(t) for t in tokens}, scopes=[])


class AgentTokenVerifier(_TokenTable):
    """Agent tokens for ``/agent/mcp``, each scoped to one target."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        """``tokens`` maps each token to its target."""
        super().__init__(
            {token: AGENT_PREFIX + target for token, target in tokens.items()}, scopes=["agent"]
        )


def agent_target(client_id: str | None) -> str | None:
    """The target an authenticated agent token is scoped to."""
    if client_id is None or not client_id.startswith(AGENT_PREFIX):
        return None
    return client_id.removeprefix(AGENT_PREFIX)
