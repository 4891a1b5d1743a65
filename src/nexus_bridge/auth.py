"""Static bearer tokens for ``/mcp`` (``NEXUS_BRIDGE_AUTH_TOKENS``), checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from mcp.server.auth.provider import AccessToken, TokenVerifier


def token_fingerprint(token: str) -> str:
    """A stable, non-secret name for a token: safe to log and to key a pull cursor on."""
    return "static-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


class StaticTokenVerifier(TokenVerifier):
    """Accepts exactly the configured tokens. Every entry is compared, so timing reveals nothing."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._entries = [
            (hashlib.sha256(t.encode("utf-8")).digest(), token_fingerprint(t)) for t in tokens
        ]

    async def verify_token(self, token: str) -> AccessToken | None:
        candidate = hashlib.sha256(token.encode("utf-8")).digest()
        matched: str | None = None
        for digest, client_id in self._entries:
            if hmac.compare_digest(candidate, digest):
                matched = client_id
        if matched is None:
            return None
        return AccessToken(token=token, client_id=matched, scopes=[])


AGENT_PREFIX = "agent:"


class AgentTokenVerifier(TokenVerifier):
    """Agent tokens for ``/agent/mcp``, each scoped to one target; compared in constant time."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        """``tokens`` maps each token to its target."""
        self._entries = [
            (hashlib.sha256(token.encode("utf-8")).digest(), target)
            for token, target in tokens.items()
        ]

    async def verify_token(self, token: str) -> AccessToken | None:
        candidate = hashlib.sha256(token.encode("utf-8")).digest()
        matched: str | None = None
        for digest, target in self._entries:
            if hmac.compare_digest(candidate, digest):
                matched = target
        if matched is None:
            return None
        return AccessToken(token=token, client_id=AGENT_PREFIX + matched, scopes=["agent"])


def agent_target(client_id: str | None) -> str | None:
    """The target an authenticated agent token is scoped to."""
    if client_id is None or not client_id.startswith(AGENT_PREFIX):
        return None
    return client_id.removeprefix(AGENT_PREFIX)
