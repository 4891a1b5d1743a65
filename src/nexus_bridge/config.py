"""Settings, built once from the environment (prefix ``NEXUS_BRIDGE_``) and an optional ``.env``.

This is the only module that reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Final
from urllib.parse import urlparse

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from nexus_bridge.constants import (
    GENERATE_TOKEN_COMMAND,
    LOOPBACK_HOSTNAMES,
    MCP_PATH,
    MIN_TOKEN_CHARS,
)
from nexus_bridge.errors import ConfigError

ENV_PREFIX: Final = "NEXUS_BRIDGE_"
ENV_FILE: Final = ".env"
# The standard configuration file every command reads, wherever it is run from: KEY=value lines
# as in .env (which overrides it, as real environment variables override both).
ENV_FILE_VARIABLE: Final = f"{ENV_PREFIX}ENV_FILE"
CONFIG_DIR_NAME: Final = "nexus-bridge"
STANDARD_ENV_FILE_NAME: Final = "env"
LOG_FORMATS: Final = ("text", "json")
SECRET_MASK: Final = "********"  # noqa: S105 - what a secret is shown as
DEFAULT_TARGET: Final = "homelab"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
MAX_PORT: Final = 65_535
# A duration setting past ten years is a typo, and one near the end of time overflows the
# datetime arithmetic it feeds (a token's expiry, a lease) into an internal error.
MAX_DURATION_SECONDS: Final = 10 * 365 * 24 * 3600
MAX_BUSY_TIMEOUT_MS: Final = 2**31 - 1  # SQLite keeps it in a C int
DEFAULT_MAX_MESSAGE_CHARS: Final = 32_000
DEFAULT_MAX_WAIT_SECONDS: Final = 55.0
DEFAULT_BUSY_TIMEOUT_MS: Final = 5_000
DEFAULT_PULL_LIMIT: Final = 100
MAX_PULL_LIMIT: Final = 1_000
DEFAULT_LIST_LIMIT: Final = 20
MAX_LIST_LIMIT: Final = 200
RECENT_UPDATES_IN_GET: Final = 20
DEFAULT_AGENT_CLAIM_SECONDS: Final = 120.0
# A task with the agent and no agent activity for this long counts as stalled.
DEFAULT_STALL_SECONDS: Final = 1800.0
MAX_TARGET_CHARS: Final = 100  # a target name, as targets.py allows it
MAX_REASON_CHARS: Final = 1_000  # cancel_message(reason=...)
MAX_RETENTION_DAYS: Final = 3650
RETENTION_INTERVAL_SECONDS: Final = 24 * 3600.0  # RETENTION_DAYS is applied this often
DEFAULT_TELEGRAM_BASE_URL: Final = "https://api.telegram.org/bot"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The async driver each supported database needs; the engine is async only.
ASYNC_DRIVERS: Final = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
DATABASE_URL_EXAMPLES: Final = (
    "sqlite+aiosqlite:////path/to/bridge.db or postgresql+asyncpg://user:pass@host:5432/db"
)
POLLER_LEASE: Final = "telegram-poller"  # the lease that elects the one Telegram poller
CREDENTIAL_KEYS: Final = {
    "token": "bot_token",
    "bot_token": "bot_token",
    "telegram_bot_token": "bot_token",
    "chat_id": "chat_id",
    "telegram_chat_id": "chat_id",
    "agent_ids": "agent_ids",
    "agent_username": "agent_username",
}


def default_data_dir() -> Path:
    """Where nexus-bridge keeps its files: ``$XDG_DATA_HOME/nexus-bridge`` (~/.local/share)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "nexus-bridge"


def standard_env_file() -> Path:
    """The configuration file every command reads: ``$NEXUS_BRIDGE_ENV_FILE``, else
    ``$XDG_CONFIG_HOME/nexus-bridge/env`` (``~/.config/nexus-bridge/env``)."""
    named = os.environ.get(ENV_FILE_VARIABLE)
    if named:
        return Path(named).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / CONFIG_DIR_NAME / STANDARD_ENV_FILE_NAME


def use_env_file(path: Path) -> None:
    """Make ``path`` the standard configuration file for this process (``--env-file``)."""
    os.environ[ENV_FILE_VARIABLE] = str(path)


def env_files() -> tuple[Path, ...]:
    """The files settings are read from, weakest first: the standard file, then ``./.env``.

    Raises:
        ConfigError: ``NEXUS_BRIDGE_ENV_FILE`` names a file that does not exist.
    """
    standard = standard_env_file()
    if os.environ.get(ENV_FILE_VARIABLE) and not standard.is_file():
        raise ConfigError(
            f"{ENV_FILE_VARIABLE} (or --env-file): {standard} does not exist; create it "
            "(KEY=value lines) or leave it unset to use the standard location"
        )
    return (standard, Path(ENV_FILE))


def default_runner_state_dir() -> Path:
    """Where ``nexus-bridge agent run`` keeps the tasks it has in hand (``…/nexus-bridge/runner``),
    so that a runner that restarts finds them."""
    return default_data_dir() / "runner"


def child_environment(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a command the agent runner starts: this process's, plus ``extra``."""
    return {**os.environ, **extra}


def default_database_url() -> str:
    """The embedded SQLite file under the XDG data directory (``~/.local/share/nexus-bridge``)."""
    return f"sqlite+aiosqlite:///{default_data_dir() / 'bridge.db'}"


def check_database_url(value: str) -> None:
    """Raises ValueError, saying what to write instead, unless ``value`` names a supported
    database with its async driver. The message never repeats a password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value.strip())
    except (ArgumentError, ValueError):
        raise ValueError(f"not a database URL; write {DATABASE_URL_EXAMPLES}") from None
    backend, driver = url.get_backend_name(), url.get_driver_name()
    wanted = ASYNC_DRIVERS.get(backend)
    if wanted is None:
        raise ValueError(
            f"unsupported database {backend!r}; nexus-bridge works with {DATABASE_URL_EXAMPLES}"
        )
    if driver != wanted:
        fixed = url.set(drivername=f"{backend}+{wanted}").render_as_string(hide_password=True)
        raise ValueError(
            f"{url.drivername!r} is not an async driver; nexus-bridge needs {backend}+{wanted}: "
            f"{fixed}"
        )
    if backend == "sqlite" and not url.database:
        raise ValueError(f"names no database file; write {DATABASE_URL_EXAMPLES}")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of nexus-bridge; see the Configuration table in docs/configuration.md."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        populate_by_name=True,
        env_file=ENV_FILE,
        env_file_encoding="utf-8",
        extra="ignore",
        # "inf" would make a wait, a lease or a grace period endless (and int(inf) raises).
        allow_inf_nan=False,
        # Read once at start and never changed: a variant is a model_copy (serve --port).
        frozen=True,
    )

    database_url: str = Field(default_factory=default_database_url)
    host: str = DEFAULT_HOST
    port: int = Field(default=DEFAULT_PORT, ge=0, le=MAX_PORT)
    auth_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    allow_unauthenticated: bool = False
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_message_chars: int = Field(default=DEFAULT_MAX_MESSAGE_CHARS, ge=1)
    max_wait_seconds: float = Field(default=DEFAULT_MAX_WAIT_SECONDS, ge=0, le=MAX_DURATION_SECONDS)
    sqlite_busy_timeout_ms: int = Field(
        default=DEFAULT_BUSY_TIMEOUT_MS, ge=0, le=MAX_BUSY_TIMEOUT_MS
    )
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=MAX_DURATION_SECONDS)
    change_poll_seconds: float = Field(default=1.0, gt=0, le=MAX_DURATION_SECONDS)
    log_level: str = "INFO"
    log_format: str = "text"
    retention_days: int | None = Field(default=None, ge=1, le=MAX_RETENTION_DAYS)
    metrics_token: SecretStr | None = None

    config_file: Path | None = Field(
        default=None, validation_alias=AliasChoices(f"{ENV_PREFIX}CONFIG")
    )
    agent_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    agent_token_file: Path = Field(default_factory=lambda: default_data_dir() / "agent-token")
    stall_seconds: float = Field(default=DEFAULT_STALL_SECONDS, gt=0, le=MAX_DURATION_SECONDS)
    agent_claim_seconds: float = Field(
        default=DEFAULT_AGENT_CLAIM_SECONDS, gt=0, le=MAX_DURATION_SECONDS
    )
    bridge_url: str = Field(
        default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
        validation_alias=AliasChoices(f"{ENV_PREFIX}URL"),
    )
    agent_token: SecretStr | None = None

    public_url: str | None = None
    oauth_access_token_seconds: int = Field(default=3600, ge=60, le=MAX_DURATION_SECONDS)
    oauth_refresh_token_seconds: int = Field(
        default=30 * 24 * 3600, ge=3600, le=MAX_DURATION_SECONDS
    )
    oauth_max_failed_attempts: int = Field(default=5, ge=1)
    oauth_lockout_seconds: int = Field(default=900, ge=1, le=MAX_DURATION_SECONDS)
    oauth_failure_delay_seconds: float = Field(default=1.0, ge=0, le=MAX_DURATION_SECONDS)
    oauth_redirect_uris: Annotated[list[str], NoDecode] = Field(default_factory=list)
    oauth_max_unused_clients: int = Field(default=100, ge=1)

    telegram_bot_token: SecretStr | None = None
    telegram_chat_id: int | None = None
    telegram_agent_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    telegram_agent_username: str | None = None
    telegram_base_url: str = DEFAULT_TELEGRAM_BASE_URL
    telegram_credentials_file: Path | None = None
    telegram_poll_timeout: int = Field(default=25, ge=0, le=50)
    telegram_lease_seconds: float = Field(default=15.0, gt=0, le=MAX_DURATION_SECONDS)
    telegram_min_send_interval: float = Field(default=1.0, ge=0, le=MAX_DURATION_SECONDS)
    telegram_request_timeout: float = Field(default=20.0, gt=0, le=MAX_DURATION_SECONDS)
    telegram_retry_base_seconds: float = Field(default=1.0, gt=0, le=MAX_DURATION_SECONDS)
    telegram_retry_max_seconds: float = Field(default=300.0, gt=0, le=MAX_DURATION_SECONDS)
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: SecretStr | None = None

    @field_validator(
        "auth_tokens",
        "allowed_hosts",
        "telegram_agent_ids",
        "oauth_redirect_uris",
        "agent_tokens",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parsed = urlparse(value.strip())
        if parsed.scheme not in ("https", "http") or not parsed.netloc:
            raise ValueError("must be the full URL of the MCP endpoint, e.g. https://host/mcp")
        local = parsed.hostname in LOOPBACK_HOSTNAMES
        if parsed.scheme != "https" and not local:
            raise ValueError("must use https (claude.ai only connects over TLS)")
        if parsed.path.rstrip("/") != MCP_PATH or parsed.query or parsed.fragment:
            raise ValueError(
                f"must end in {MCP_PATH} with no query, e.g. https://mcp.example.net{MCP_PATH}: "
                "the bridge serves MCP there and OAuth at the root of the host"
            )
        return value.strip().rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, not {value!r}")
        return level

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        fmt = value.strip().lower()
        if fmt not in LOG_FORMATS:
            raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
        return fmt

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        check_database_url(value)
        return value

    @model_validator(mode="after")
    def _check_tokens(self) -> Settings:
        for token in self.auth_tokens:
            if len(token.get_secret_value()) < MIN_TOKEN_CHARS:
                raise ValueError(
                    f"every NEXUS_BRIDGE_AUTH_TOKENS entry must be at least {MIN_TOKEN_CHARS} "
                    f"characters; make one with: {GENERATE_TOKEN_COMMAND}"
                )
        return self

    @property
    def listen_origin(self) -> str:
        """``http://HOST:PORT`` as configured, with an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def binds_loopback(self) -> bool:
        return _is_loopback_name(self.host)

    def exposure(self) -> str | None:
        """How the bridge is reachable from beyond this machine, in words, or None: a
        non-loopback HOST, or (on loopback) a name other machines reach it by through a reverse
        proxy or tunnel: one in ALLOWED_HOSTS, or TELEGRAM_WEBHOOK_URL's host."""
        if not self.binds_loopback:
            return f"listen on {self.host}"
        for name in self.allowed_hosts:
            if not _is_loopback_name(_without_port(name)):
                return f"answer to {name} ({ENV_PREFIX}ALLOWED_HOSTS)"
        webhook_host = urlparse(self.telegram_webhook_url or "").hostname
        if webhook_host and not _is_loopback_name(webhook_host):
            return f"answer to {webhook_host} ({ENV_PREFIX}TELEGRAM_WEBHOOK_URL)"
        return None

    def check_serve_security(self) -> None:
        """Refuse to expose an unauthenticated bridge beyond this machine: by the address it
        listens on, or by the public names a proxy in front of it reaches it by.

        Raises:
            ConfigError: exposed (see :meth:`exposure`) with no AUTH_TOKENS, no PUBLIC_URL (OAuth)
                and no explicit opt-out.
        """
        authenticated = bool(self.auth_tokens) or self.public_url is not None
        exposure = self.exposure()
        if exposure is not None and not authenticated and not self.allow_unauthenticated:
            raise ConfigError(
                f"refusing to {exposure} without authentication: /mcp would take tasks from "
                f"anyone. Set {ENV_PREFIX}AUTH_TOKENS (comma-separated bearer tokens) or "
                f"{ENV_PREFIX}PUBLIC_URL (OAuth for claude.ai), or set "
                f"{ENV_PREFIX}ALLOW_UNAUTHENTICATED=true if something in front of the bridge "
                "authenticates every request or forwards only /telegram/webhook"
            )

    def secrets(self) -> list[str]:
        """Every secret value set in the environment or an env file, so logging can redact them
        wherever they appear (a bot token from the credentials file is added by
        ``targets.Configuration.secrets``)."""
        values = [t.get_secret_value() for t in self.auth_tokens]
        values += [t.get_secret_value().rpartition(":")[2] for t in self.agent_tokens]
        if self.agent_token is not None:
            values.append(self.agent_token.get_secret_value())
        if self.telegram_bot_token is not None:
            values.append(self.telegram_bot_token.get_secret_value())
        if self.metrics_token is not None:
            values.append(self.metrics_token.get_secret_value())
        if self.telegram_webhook_secret is not None:
            values.append(self.telegram_webhook_secret.get_secret_value())
        return sorted({v for v in values if v})


@dataclass(frozen=True, slots=True)
class TelegramSettings:
    """What the Telegram transport needs, resolved from the environment and credentials file."""

    token: str = field(repr=False)
    chat_id: int | None
    agent_ids: frozenset[int]
    agent_username: str | None
    base_url: str
    poll_timeout: int
    lease_seconds: float
    min_send_interval: float
    request_timeout: float
    retry_base_seconds: float
    retry_max_seconds: float
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    warnings: tuple[str, ...] = ()


def resolve_telegram(settings: Settings) -> TelegramSettings | None:
    """The Telegram transport's settings, or None when no bot token is configured.

    Reads ``TELEGRAM_CREDENTIALS_FILE`` (values from the environment win over it). Called once,
    by ``targets.load_configuration``; everything else reads ``Configuration.telegram``.

    Raises:
        ConfigError: a token without a chat or agent ids (naming the variable), or a
            credentials file that cannot be read or holds a bad value (naming file, line, key).
    """
    found: dict[str, Credential] = {}
    warnings: list[str] = []
    if settings.telegram_credentials_file is not None:
        found, warnings = read_credentials_file(settings.telegram_credentials_file)
    token = (
        settings.telegram_bot_token.get_secret_value()
        if settings.telegram_bot_token
        else _value(found, "bot_token")
    )
    if not token:
        return None
    chat = settings.telegram_chat_id
    if chat is None and "chat_id" in found:
        chat = found["chat_id"].integer()
    per_target = settings.config_file is not None  # targets may name their own chats
    if chat is None and not per_target:
        raise ConfigError(
            f"{ENV_PREFIX}TELEGRAM_CHAT_ID is required with a bot token: the chat where the "
            "agent's bot listens (docs/telegram.md, step 4 finds its id)"
        )
    agents = list(settings.telegram_agent_ids)
    if not agents and "agent_ids" in found:
        agents = found["agent_ids"].integers()
    if not agents and not per_target:
        raise ConfigError(
            f"{ENV_PREFIX}TELEGRAM_AGENT_IDS is required with a bot token: the Telegram user "
            "ids whose messages count as the agent's (the agent bot, optionally you)"
        )
    username = settings.telegram_agent_username or _value(found, "agent_username")
    webhook_secret = (
        settings.telegram_webhook_secret.get_secret_value()
        if settings.telegram_webhook_secret
        else None
    )
    if settings.telegram_webhook_url and not webhook_secret:
        raise ConfigError(
            f"{ENV_PREFIX}TELEGRAM_WEBHOOK_SECRET is required with TELEGRAM_WEBHOOK_URL: "
            "Telegram sends it with every update, so nobody else can post to the webhook"
        )
    if webhook_secret and not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", webhook_secret):
        raise ConfigError(
            f"{ENV_PREFIX}TELEGRAM_WEBHOOK_SECRET must be 16-256 characters of A-Z, a-z, "
            "0-9, _ and -"
        )
    return TelegramSettings(
        token=token,
        chat_id=chat,
        agent_ids=frozenset(agents),
        agent_username=username.lstrip("@") if username else None,
        base_url=settings.telegram_base_url,
        poll_timeout=settings.telegram_poll_timeout,
        lease_seconds=settings.telegram_lease_seconds,
        min_send_interval=settings.telegram_min_send_interval,
        request_timeout=settings.telegram_request_timeout,
        retry_base_seconds=settings.telegram_retry_base_seconds,
        retry_max_seconds=settings.telegram_retry_max_seconds,
        webhook_url=settings.telegram_webhook_url or None,
        webhook_secret=webhook_secret,
        warnings=tuple(warnings),
    )


@dataclass(frozen=True, slots=True)
class Credential:
    """One value of the credentials file, and where it was written (for error messages)."""

    value: str = field(repr=False)
    path: Path
    line: int
    key: str  # as written in the file, e.g. chat_id or TELEGRAM_CHAT_ID

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"{self.path}:{self.line}: {self.key}: {message}")

    def integer(self) -> int:
        try:
            return int(self.value.strip())
        except ValueError:
            raise self.error(f"must be a number, got {self.value!r}") from None

    def integers(self) -> list[int]:
        try:
            return [int(v) for v in self.value.split(",") if v.strip()]
        except ValueError:
            raise self.error(f"must be numbers separated by commas, got {self.value!r}") from None


def _value(found: dict[str, Credential], name: str) -> str | None:
    credential = found.get(name)
    return credential.value if credential is not None else None


def read_credentials_file(path: Path) -> tuple[dict[str, Credential], list[str]]:
    """Read ``key=value`` lines (``token=...``, ``chat_id=...``) as the homelab setup keeps them.

    Returns the known keys found, each with its line, and warnings (a file readable by others).

    Raises:
        ConfigError: the file cannot be read, or is not UTF-8 text.
    """
    try:
        data = path.expanduser().read_bytes()
        mode = path.expanduser().stat().st_mode
    except OSError as exc:
        raise ConfigError(
            f"cannot read {ENV_PREFIX}TELEGRAM_CREDENTIALS_FILE {path}: {exc.strerror}"
        ) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{where}: not UTF-8 text ({exc.reason})") from None
    warnings = []
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{path} is readable by other users (mode {stat.S_IMODE(mode):o}); "
            f"it holds a bot token: chmod 600 {path}"
        )
    found: dict[str, Credential] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        written = key.strip().removeprefix("export ").strip()
        known = CREDENTIAL_KEYS.get(written.lower())
        if known:
            found[known] = Credential(value.strip().strip("\"'"), path, number, written)
    return found, warnings


def _message(pydantic_message: str) -> str:
    """A validator's own words, without the prefix pydantic puts before them."""
    return pydantic_message.removeprefix("Value error, ")


def load_settings(**overrides: object) -> Settings:
    """Build the settings once, at start-up.

    Raises:
        ConfigError: a variable has a value that cannot be used; the message names it.
    """
    from pydantic import ValidationError

    files: object = overrides.pop("_env_file") if "_env_file" in overrides else env_files()
    for path in files if isinstance(files, tuple) else ():
        _check_readable(path)
    try:
        return Settings(_env_file=files, **overrides)  # type: ignore[arg-type]
    except (UnicodeDecodeError, OSError) as exc:  # reading an env file
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise ConfigError(
            f"cannot read {Path.cwd() / ENV_FILE}: {reason}; fix it or remove it"
        ) from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {_message(err['msg'])}"
            if err["loc"]
            else _message(err["msg"])
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from exc


def _check_readable(path: Path) -> None:
    """Raises ConfigError naming ``path`` when it exists but is not UTF-8 text or unreadable."""
    try:
        path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise ConfigError(f"cannot read {path.absolute()}: it is a directory") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"cannot read {path.absolute()}: not UTF-8 text; fix it or remove it"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path.absolute()}: {exc.strerror}; fix it or remove it"
        ) from None


@dataclass(frozen=True, slots=True)
class EffectiveValue:
    """One setting as a command sees it, and where its value came from."""

    variable: str
    value: str
    source: str  # "environment", the path of the file it came from, or "default"


SECRET_FIELDS: Final = frozenset(
    {"auth_tokens", "agent_tokens", "agent_token", "telegram_bot_token", "telegram_webhook_secret"}
)


def _variable(name: str, info: object) -> str:
    alias = getattr(info, "validation_alias", None)
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        if isinstance(first, str):
            return first
    return f"{ENV_PREFIX}{name.upper()}"


def _shown(name: str, value: object, database: bool) -> str:
    if value is None:
        return "-"
    if name in SECRET_FIELDS:
        return SECRET_MASK if value else "-"
    if database and isinstance(value, str):
        from sqlalchemy.engine import make_url

        return make_url(value).render_as_string(hide_password=True)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def effective_configuration(settings: Settings) -> list[EffectiveValue]:
    """Every setting's value (secrets masked) and its source: the environment, ``./.env``, the
    standard file, or the default; in that order of precedence, as ``load_settings`` reads."""
    from dotenv import dotenv_values

    files = [p for p in reversed(env_files()) if p.is_file()]  # strongest first
    read = {p: {k.upper(): v for k, v in dotenv_values(p).items()} for p in files}
    environment = {k.upper() for k in os.environ}
    values = []
    for name, info in Settings.model_fields.items():
        variable = _variable(name, info)
        if variable.upper() in environment:
            source = "environment"
        else:
            source = next(
                (str(p.absolute()) for p in files if variable.upper() in read[p]), "default"
            )
        shown = _shown(name, getattr(settings, name), database=name == "database_url")
        values.append(EffectiveValue(variable, shown, source))
    return _with_credentials_file(settings, values)


# The settings a TELEGRAM_CREDENTIALS_FILE may give (where the environment and files do not).
_CREDENTIAL_SETTINGS: Final = {
    "bot_token": "telegram_bot_token",
    "chat_id": "telegram_chat_id",
    "agent_ids": "telegram_agent_ids",
    "agent_username": "telegram_agent_username",
}


def _with_credentials_file(
    settings: Settings, values: list[EffectiveValue]
) -> list[EffectiveValue]:
    """``values`` with the Telegram settings the credentials file gives, as the transport reads
    them: a setting left at its default takes the file's value, its source ``file:line``. A file
    that cannot be read changes nothing here (``serve`` and ``doctor`` report it)."""
    if settings.telegram_credentials_file is None:
        return values
    try:
        found, _warnings = read_credentials_file(settings.telegram_credentials_file)
    except ConfigError:
        return values
    by_variable = {v.variable: i for i, v in enumerate(values)}
    for key, name in _CREDENTIAL_SETTINGS.items():
        credential = found.get(key)
        variable = _variable(name, Settings.model_fields[name])
        index = by_variable.get(variable)
        if credential is None or index is None or values[index].source != "default":
            continue
        shown = SECRET_MASK if name in SECRET_FIELDS else credential.value.strip()
        source = f"{credential.path.expanduser().absolute()}:{credential.line}"
        values[index] = EffectiveValue(variable, shown, source)
    return values


def _is_loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address (an IPv6 one with or without brackets)."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def _without_port(host: str) -> str:
    """``name`` of ``name:port``, ``[v6]`` of ``[v6]:port``; a bare IPv6 address unchanged."""
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host
