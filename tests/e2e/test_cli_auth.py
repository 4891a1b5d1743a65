"""The owner's OAuth commands, run as the operator would, against a live bridge's database."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from nexus_bridge.config import Settings
from tests.conftest import subprocess_env
from tests.e2e.test_oauth import (
    authorize,
    exchange,
    mcp_status,
    oauth_bridge,
    pkce,
    register,
    signed_in,
)

EXE = str(Path(sys.executable).with_name("nexus-bridge"))


def auth(url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "auth", *args],
        env=subprocess_env(url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_clients_tokens_and_revoke_from_the_command_line(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        client_id, tokens = await signed_in(b)
        url = b.settings.database_url

        listed = auth(url, "clients", "--json")
        assert listed.returncode == 0, listed.stderr
        clients = json.loads(listed.stdout)
        assert [(c["client_id"], c["name"], c["revoked"]) for c in clients] == [
            (client_id, "Claude", None)
        ]
        families = json.loads(auth(url, "tokens", "--json").stdout)
        assert len(families) == 1
        assert families[0]["client_id"] == client_id
        assert families[0]["live"] == 2

        revoked = auth(url, "revoke", client_id)
        assert revoked.returncode == 0, revoked.stderr
        assert await mcp_status(b, tokens["access_token"]) == 401
        unknown = auth(url, "revoke", "no-such-thing")
        assert unknown.returncode == 2
        assert "no client or token family" in unknown.stderr


async def test_set_passphrase_from_stdin_replaces_the_old_one(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        url = b.settings.database_url
        short = auth(url, "set-passphrase", "--stdin", stdin="short\n")
        assert short.returncode == 2
        assert "at least 12 characters" in short.stderr
        new = "a much better passphrase"
        done = auth(url, "set-passphrase", "--stdin", stdin=new + "\n")
        assert done.returncode == 0, done.stderr
        assert new not in done.stderr

        client = await register(b)
        verifier, challenge = pkce()
        code = await authorize(b, client["client_id"], challenge, passphrase=new)
        tokens = await exchange(b, client["client_id"], code, verifier)
        assert await mcp_status(b, tokens["access_token"]) == 200
