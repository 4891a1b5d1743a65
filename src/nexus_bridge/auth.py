"""Static bearer tokens for ``/mcp`` (``NEXUS_BRIDGE_AUTH_TOKENS``), checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

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
