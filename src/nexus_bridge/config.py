"""Settings, built once from the environment (prefix ``NEXUS_BRIDGE_``) and an optional ``.env``.

This is the only module that reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Final

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nexus_bridge.errors import ConfigError

ENV_PREFIX: Final = "NEXUS_BRIDGE_"
DEFAULT_TARGET: Final = "homelab"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
DEFAULT_MAX_MESSAGE_CHARS: Final = 32_000
DEFAULT_MAX_WAIT_SECONDS: Final = 55.0
DEFAULT_BUSY_TIMEOUT_MS: Final = 5_000
DEFAULT_PULL_LIMIT: Final = 100
MAX_PULL_LIMIT: Final = 1_000
DEFAULT_LIST_LIMIT: Final = 20
MAX_LIST_LIMIT: Final = 200
RECENT_UPDATES_IN_GET: Final = 20
MCP_PATH: Final = "/mcp"


def default_database_url() -> str:
    """The embedded SQLite file under the XDG data directory (``~/.local/share/nexus-bridge``)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite+aiosqlite:///{Path(data_home) / 'nexus-bridge' / 'bridge.db'}"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of nexus-bridge; see the README's Configuration table."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
    )

    database_url: str = Field(default_factory=default_database_url)
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65_535)
    auth_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    allow_unauthenticated: bool = False
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_message_chars: int = Field(default=DEFAULT_MAX_MESSAGE_CHARS, ge=1)
    max_wait_seconds: float = Field(default=DEFAULT_MAX_WAIT_SECONDS, ge=0)
    sqlite_busy_timeout_ms: int = Field(default=DEFAULT_BUSY_TIMEOUT_MS, ge=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"

    @field_validator("auth_tokens", "allowed_hosts", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _check_tokens(self) -> Settings:
        for token in self.auth_tokens:
            if len(token.get_secret_value()) < 16:
                raise ValueError(
                    "every NEXUS_BRIDGE_AUTH_TOKENS entry must be at least 16 characters; make "
                    "one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def binds_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def check_serve_security(self) -> None:
        """Refuse to expose an unauthenticated bridge beyond this machine.

        Raises:
            ConfigError: a non-loopback HOST with no AUTH_TOKENS and no explicit opt-out.
        """
        if not self.binds_loopback and not self.auth_tokens and not self.allow_unauthenticated:
            raise ConfigError(
                f"refusing to listen on {self.host} without authentication: set "
                f"{ENV_PREFIX}AUTH_TOKENS (comma-separated bearer tokens), or set "
                f"{ENV_PREFIX}ALLOW_UNAUTHENTICATED=true if something in front of the bridge "
                "authenticates every request"
            )


def load_settings(**overrides: object) -> Settings:
    """Build the settings once, at start-up.

    Raises:
        ConfigError: a variable has a value that cannot be used; the message names it.
    """
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            if err["loc"]
            else err["msg"]
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc
