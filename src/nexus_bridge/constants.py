"""Protocol-level constants, each named once: the URL paths the bridge serves, the names that
mean "this machine", and the lengths every adapter agrees on. No imports, so any layer may use it.

Defaults of settings live in ``config.py``; this module holds what is not configurable.
"""

from __future__ import annotations

from typing import Final

MCP_PATH: Final = "/mcp"  # the client MCP endpoint (OAuth or static tokens)
AGENT_MCP_PATH: Final = "/agent/mcp"  # the direct agent API (agent tokens only)
HEALTHZ_PATH: Final = "/healthz"
READYZ_PATH: Final = "/readyz"
AUTH_SERVER_METADATA_PATH: Final = "/.well-known/oauth-authorization-server"  # RFC 8414

# The host names of this machine, as a URL's hostname gives them (IPv6 without brackets) ...
LOOPBACK_HOSTNAMES: Final = ("127.0.0.1", "localhost", "::1")
# ... and as a Host header carries them (IPv6 in brackets).
LOOPBACK_HOSTS: Final = tuple(f"[{h}]" if ":" in h else h for h in LOOPBACK_HOSTNAMES)
# Bind addresses that listen on every interface; a client reaches them on loopback.
WILDCARD_HOSTS: Final = ("0.0.0.0", "::", "")  # noqa: S104 - names them, binds nothing

# A task's short id (its tag in chat, ``#abcd1234``) is this many characters of its id, and a
# task id prefix given to a command must be at least this long.
SHORT_ID_CHARS: Final = 8

# What the bridge writes that holds tasks or secrets (the database, the agent token, the
# runner's state) is for its owner only.
PRIVATE_FILE_MODE: Final = 0o600
PRIVATE_DIRECTORY_MODE: Final = 0o700

# Every bearer token (client, agent, target) is at least this long.
MIN_TOKEN_CHARS: Final = 16
GENERATE_TOKEN_COMMAND: Final = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105

# Group commit: a SQLite write transaction takes at most this many waiting writes before it
# commits; the rest go into the next one. Bounds one transaction's time.
MAX_WRITES_PER_COMMIT: Final = 256

# SQLite's write-ahead log. Readers that never stop (a busy server's pulls) keep SQLite's own
# checkpoints from ever restarting the log, and its file then grows without bound: 105 MB for a
# 5 MB database after 90 s of 12 busy clients. Past this size the writer checkpoints it and
# truncates it, waiting at most WAL_CHECKPOINT_WAIT_MS for the readers of the moment to finish
# (writes queue meanwhile); if they do not, it tries again WAL_CHECKPOINT_RETRY_SECONDS later.
# Every connection also truncates the log to this size whenever SQLite restarts it.
WAL_LIMIT_BYTES: Final = 16 * 1024 * 1024
WAL_CHECKPOINT_WAIT_MS: Final = 100
WAL_CHECKPOINT_RETRY_SECONDS: Final = 1.0

# An agent's presence (when it was last seen) is written at most this often: its runner's
# heartbeat every half second would otherwise be a disk write every half second (1.3 GB a day
# of WAL on an SD card while a task runs). "Last seen" is this much stale at most.
PRESENCE_RESOLUTION_SECONDS: Final = 5.0

# The owner's console (the web pages under this path), and how long one sign-in lasts.
CONSOLE_PATH: Final = "/console"
CONSOLE_SESSION_SECONDS: Final = 12 * 3600

# The owner's consent form of the OAuth authorization server (when PUBLIC_URL is set).
CONSENT_PATH: Final = "/consent"

# The program `nexus-bridge agent run --claude` runs (Claude Code's CLI), found on PATH.
CLAUDE_PROGRAM: Final = "claude"
