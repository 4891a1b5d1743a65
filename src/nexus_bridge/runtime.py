"""The store and queue service of one process, built from its configuration; no MCP, HTTP or
Telegram.

The CLI uses this alone (fast start-up); the server adds the MCP adapter in ``app.py``.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from nexus_bridge.config import DEFAULT_TARGET, ENV_PREFIX, Settings
from nexus_bridge.constants import MIN_TOKEN_CHARS, PRIVATE_FILE_MODE
from nexus_bridge.db.engine import DATA_DIRECTORY_MODE, create_engine
from nexus_bridge.db.migrate import head_revisions
from nexus_bridge.db.store import Store
from nexus_bridge.domain import Transport
from nexus_bridge.errors import ConfigError, DatabaseNotReady
from nexus_bridge.queue import QueueService
from nexus_bridge.relay import TelegramRelay
from nexus_bridge.targets import Configuration, Target, configuration_of

TOKEN_FILE_VARIABLE: Final = f"{ENV_PREFIX}AGENT_TOKEN_FILE"


@dataclass
class Runtime:
    """The running parts every entry point shares."""

    configuration: Configuration
    store: Store
    queue: QueueService
    relay: TelegramRelay
    heads: tuple[str, ...]

    @property
    def settings(self) -> Settings:
        return self.configuration.settings

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.configuration.targets

    async def check_schema(self) -> None:
        """Raises DatabaseNotReady unless the database is reachable and migrated to head."""
        current = tuple(sorted(await self.queue.schema_revisions()))
        if current != tuple(sorted(self.heads)):
            at = ", ".join(current) or "no schema"
            raise DatabaseNotReady(
                f"the database is at {at}, not at the current schema "
                f"({', '.join(self.heads)}); run: nexus-bridge db upgrade"
            )

    async def database_id(self) -> str | None:
        """The database's own id (see ``database_identity``): which database this process reads,
        whatever URL or path it was reached by."""
        async with self.store.read() as tx:
            return await tx.database_id()

    async def close(self) -> None:
        self.queue.signal.close()
        await self.store.dispose()


def open_runtime(configuration: Configuration | Settings) -> Runtime:
    """Wire the store and the queue service; nothing connects until first use.

    Given settings rather than a loaded configuration, loads it (once) first.

    Raises:
        ConfigError: the targets file or the Telegram settings are wrong.
    """
    configuration = configuration_of(configuration)
    settings = configuration.settings
    store = Store(
        create_engine(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    )
    queue = QueueService(
        store,
        targets=configuration.policies,
        max_message_chars=settings.max_message_chars,
        max_wait_seconds=settings.max_wait_seconds,
        stall_seconds=settings.stall_seconds,
        claim_seconds=settings.agent_claim_seconds,
    )
    return Runtime(
        configuration=configuration,
        store=store,
        queue=queue,
        relay=TelegramRelay(store, queue),
        heads=head_revisions(),
    )


def agent_tokens(runtime: Runtime, *, create_default: bool) -> dict[str, str]:
    """Every agent token and its target. With no file and no tokens configured, the default
    homelab agent gets one, kept (0600) in ``AGENT_TOKEN_FILE`` so it survives restarts."""
    tokens = {token: t.name for t in runtime.targets for token in t.agent_tokens}
    # (load_configuration has refused a targets file with an agent target that has no tokens.)
    default = [
        t
        for t in runtime.targets
        if t.transport is Transport.AGENT and t.name == DEFAULT_TARGET and not t.agent_tokens
    ]
    if default and runtime.settings.config_file is None:
        token = read_or_create_token(runtime.settings.agent_token_file, create=create_default)
        if token:
            tokens[token] = DEFAULT_TARGET
    return tokens


def read_or_create_token(path: Path, *, create: bool) -> str | None:
    """The token stored in ``path``, created (random, mode 0600) if missing and allowed.

    Raises:
        ConfigError: the file is unreadable, empty, too short, or readable by other users.
    """
    try:
        return _read_token_file(path)
    except FileNotFoundError:
        if not create:
            return None
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(mode=DATA_DIRECTORY_MODE, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except OSError as exc:
        raise ConfigError(
            f"{TOKEN_FILE_VARIABLE}: cannot create {path}: {exc.strerror}; choose a path you "
            "can write"
        ) from None
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def _read_token_file(path: Path) -> str:
    """Raises FileNotFoundError when there is no file, ConfigError when it cannot be used."""
    remedy = f"delete it and `nexus-bridge serve` makes a new one, or set {TOKEN_FILE_VARIABLE}"
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read the agent token file {path}: {reason}; {remedy}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"the agent token file {path} is readable by other users (mode {mode:o}): "
            f"run chmod 600 {path}, or {remedy}"
        )
    if len(token) < MIN_TOKEN_CHARS:
        what = "empty" if not token else f"shorter than {MIN_TOKEN_CHARS} characters"
        raise ConfigError(f"the agent token file {path} is {what}: {remedy}")
    return token
