"""Settings: defaults, parsing, and the refusal to expose an open bridge."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus_bridge.config import Settings, load_settings, resolve_telegram
from nexus_bridge.errors import ConfigError
from nexus_bridge.targets import load_configuration

TOKEN = "t" * 32


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def test_defaults_are_a_local_sqlite_bridge_on_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    s = settings()
    assert s.host == "127.0.0.1"
    assert s.port == 8765
    assert s.max_message_chars == 32_000
    assert s.max_wait_seconds == 55
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path}/nexus-bridge/bridge.db"
    assert s.auth_tokens == []


def test_environment_variables_are_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEXUS_BRIDGE_AUTH_TOKENS", f" {TOKEN} , {'u' * 20},")
    monkeypatch.setenv("NEXUS_BRIDGE_ALLOWED_HOSTS", "mcp.example.net,bridge.lan:8443")
    monkeypatch.setenv("NEXUS_BRIDGE_PORT", "9000")
    s = load_settings(_env_file=None)
    assert [t.get_secret_value() for t in s.auth_tokens] == [TOKEN, "u" * 20]
    assert s.allowed_hosts == ["mcp.example.net", "bridge.lan:8443"]
    assert s.port == 9000


def test_tokens_never_show_in_the_settings_repr() -> None:
    s = settings(auth_tokens=[TOKEN])
    assert TOKEN not in repr(s)
    assert TOKEN not in str(s.model_dump())


def test_a_bad_value_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NEXUS_BRIDGE_PORT", "eighty")
    with pytest.raises(ConfigError, match="NEXUS_BRIDGE_PORT"):
        load_settings(_env_file=None)


@pytest.mark.parametrize(
    "variable",
    [
        "MAX_WAIT_SECONDS",
        "CHANGE_POLL_SECONDS",
        "STALL_SECONDS",
        "AGENT_CLAIM_SECONDS",
        "SHUTDOWN_GRACE_SECONDS",
        "TELEGRAM_LEASE_SECONDS",
        "OAUTH_FAILURE_DELAY_SECONDS",
    ],
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Infinity"])
def test_a_number_that_is_not_finite_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """NaN slips past every bound (nan > 0 is false, so is nan < 0), and inf waits forever."""
    monkeypatch.setenv(f"NEXUS_BRIDGE_{variable}", value)
    with pytest.raises(ConfigError, match=f"NEXUS_BRIDGE_{variable}: Input should be a finite"):
        load_settings(_env_file=None)


def test_the_claim_lease_defaults_to_two_minutes() -> None:
    assert settings().agent_claim_seconds == 120


def test_short_tokens_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings(_env_file=None, auth_tokens=["short"])


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "bridge.lan"])
def test_non_loopback_without_auth_refuses_to_start(host: str) -> None:
    with pytest.raises(ConfigError, match="NEXUS_BRIDGE_AUTH_TOKENS"):
        settings(host=host).check_serve_security()


@pytest.mark.parametrize(
    "values",
    [
        {"host": "0.0.0.0", "auth_tokens": [TOKEN]},
        {"host": "0.0.0.0", "allow_unauthenticated": True},
        {"host": "127.0.0.1"},
        {"host": "::1"},
        {"host": "localhost"},
    ],
)
def test_loopback_or_authenticated_or_opted_out_may_start(values: dict[str, object]) -> None:
    settings(**values).check_serve_security()


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"allowed_hosts": ["mcp.example.net"]}, "mcp.example.net (NEXUS_BRIDGE_ALLOWED_HOSTS)"),
        ({"allowed_hosts": ["localhost", "bridge.lan:8443"]}, "bridge.lan:8443"),
        ({"allowed_hosts": ["192.0.2.10"]}, "192.0.2.10"),
        (
            {"telegram_webhook_url": "https://bot.example.net/telegram/webhook"},
            "bot.example.net (NEXUS_BRIDGE_TELEGRAM_WEBHOOK_URL)",
        ),
    ],
)
def test_on_loopback_behind_a_public_name_without_auth_refuses_to_start(
    values: dict[str, object], named: str
) -> None:
    """A reverse proxy or tunnel reaches a loopback bridge by a public name: the bind address
    alone does not make it private."""
    with pytest.raises(ConfigError, match="NEXUS_BRIDGE_AUTH_TOKENS") as refused:
        settings(host="127.0.0.1", **values).check_serve_security()
    assert named in str(refused.value)
    assert "NEXUS_BRIDGE_ALLOW_UNAUTHENTICATED=true" in str(refused.value)


@pytest.mark.parametrize(
    "values",
    [
        {"allowed_hosts": ["localhost:8443", "127.0.0.1", "[::1]:9000", "::1"]},
        {"allowed_hosts": ["mcp.example.net"], "auth_tokens": [TOKEN]},
        {"allowed_hosts": ["mcp.example.net"], "public_url": "https://mcp.example.net/mcp"},
        {"allowed_hosts": ["mcp.example.net"], "allow_unauthenticated": True},
        {"telegram_webhook_url": "https://bot.example.net/hook", "allow_unauthenticated": True},
        {"telegram_webhook_url": "https://bot.example.net/hook", "auth_tokens": [TOKEN]},
    ],
)
def test_behind_a_public_name_with_auth_or_opted_out_may_start(values: dict[str, object]) -> None:
    settings(host="127.0.0.1", **values).check_serve_security()


def test_without_a_bot_token_the_telegram_transport_is_off() -> None:
    assert resolve_telegram(settings()) is None


def test_telegram_settings_come_from_the_environment() -> None:
    telegram = resolve_telegram(
        settings(
            telegram_bot_token="123:abc",
            telegram_chat_id=-1001,
            telegram_agent_ids="42, 43",
            telegram_agent_username="@agent_bot",
        )
    )
    assert telegram is not None
    assert telegram.token == "123:abc"
    assert telegram.chat_id == -1001
    assert telegram.agent_ids == frozenset({42, 43})
    assert telegram.agent_username == "agent_bot"
    assert "123:abc" not in repr(telegram)


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({"telegram_agent_ids": "42"}, "TELEGRAM_CHAT_ID"),
        ({"telegram_chat_id": -1}, "TELEGRAM_AGENT_IDS"),
    ],
)
def test_a_token_without_chat_or_agents_is_a_clear_error(
    values: dict[str, object], missing: str
) -> None:
    with pytest.raises(ConfigError, match=missing):
        resolve_telegram(settings(telegram_bot_token="123:abc", **values))


def test_the_homelab_credentials_file_is_read_and_loose_permissions_warned(
    tmp_path: Path,
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("# homelab bot\ntoken=999:file-token\nchat_id = -1002\nagent_ids=7\n")
    creds.chmod(0o644)
    telegram = resolve_telegram(settings(telegram_credentials_file=creds))
    assert telegram is not None
    assert telegram.token == "999:file-token"
    assert telegram.chat_id == -1002
    assert telegram.agent_ids == frozenset({7})
    assert any("chmod 600" in w for w in telegram.warnings)
    creds.chmod(0o600)
    quiet = resolve_telegram(settings(telegram_credentials_file=creds))
    assert quiet is not None
    assert quiet.warnings == ()


def test_the_environment_wins_over_the_credentials_file(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("token=999:file-token\nchat_id=-1002\n")
    creds.chmod(0o600)
    telegram = resolve_telegram(
        settings(telegram_credentials_file=creds, telegram_chat_id=-5, telegram_agent_ids="1")
    )
    assert telegram is not None
    assert telegram.chat_id == -5


def test_an_unreadable_credentials_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TELEGRAM_CREDENTIALS_FILE"):
        resolve_telegram(settings(telegram_credentials_file=tmp_path / "nope"))


def test_secrets_lists_every_token() -> None:
    s = settings(auth_tokens=[TOKEN], telegram_bot_token="123:abc")
    assert set(s.secrets()) == {TOKEN, "123:abc"}


def test_a_token_from_the_credentials_file_is_a_secret_too(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("token=999:file-token\nchat_id=-1002\nagent_ids=7\n")
    creds.chmod(0o600)
    loaded = load_configuration(settings(telegram_credentials_file=creds))
    assert "999:file-token" in loaded.secrets()


@pytest.mark.parametrize(
    ("secret", "error"),
    [(None, "TELEGRAM_WEBHOOK_SECRET is required"), ("short", "16-256 characters")],
)
def test_webhook_mode_needs_a_proper_secret(secret: str | None, error: str) -> None:
    values: dict[str, object] = {
        "telegram_bot_token": "123:abc",
        "telegram_chat_id": -1,
        "telegram_agent_ids": "1",
        "telegram_webhook_url": "https://bridge.example.net/telegram/webhook",
    }
    if secret is not None:
        values["telegram_webhook_secret"] = secret
    with pytest.raises(ConfigError, match=error):
        resolve_telegram(settings(**values))


@pytest.mark.parametrize(
    "url", ["https://mcp.example.net/", "https://mcp.example.net/x/mcp", "https://h/mcp?x=1"]
)
def test_public_url_must_be_the_mcp_endpoint(url: str) -> None:
    with pytest.raises(ConfigError, match="must end in /mcp"):
        load_settings(_env_file=None, public_url=url)


def test_public_url_counts_as_authentication_for_a_public_bind() -> None:
    settings(host="0.0.0.0", public_url="https://mcp.example.net/mcp").check_serve_security()


def test_an_unknown_log_level_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"NEXUS_BRIDGE_LOG_LEVEL: must be one of DEBUG, INFO"):
        load_settings(_env_file=None, log_level="LOUD")
    assert load_settings(_env_file=None, log_level=" debug ").log_level == "DEBUG"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "not a database URL"),
        ("bridge.db", "not a database URL"),
        ("sqlite:///x.db", "needs sqlite+aiosqlite: sqlite+aiosqlite:///x.db"),
        ("postgresql://u:pw-secret@db/q", "postgresql+asyncpg://u:***@db/q"),
        ("postgresql+psycopg://u@db/q", "needs postgresql+asyncpg"),
        ("mysql+aiomysql://u@db/q", "unsupported database 'mysql'"),
        ("sqlite+aiosqlite://", "names no database file"),
    ],
)
def test_a_database_url_nexus_bridge_cannot_use_is_refused_saying_what_to_write(
    url: str, says: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(_env_file=None, database_url=url)
    message = str(refused.value)
    assert message.startswith("invalid configuration: NEXUS_BRIDGE_DATABASE_URL: ")
    assert says in message
    assert "Value error" not in message
    assert "pw-secret" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["sqlite+aiosqlite:////var/lib/nexus/bridge.db", "postgresql+asyncpg://u:p@db:5432/q"]
)
def test_supported_database_urls_are_accepted(url: str) -> None:
    assert load_settings(_env_file=None, database_url=url).database_url == url


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("STALL_SECONDS", "inf", "finite number"),
        ("SHUTDOWN_GRACE_SECONDS", "Infinity", "finite number"),
        ("MAX_WAIT_SECONDS", "1e400", "finite number"),
        ("CHANGE_POLL_SECONDS", "nan", "finite number"),
        ("OAUTH_LOCKOUT_SECONDS", "1" + "0" * 20, "less than or equal to"),
        ("TELEGRAM_LEASE_SECONDS", "1e300", "less than or equal to"),
        ("SQLITE_BUSY_TIMEOUT_MS", "1" + "0" * 20, "less than or equal to"),
    ],
)
def test_an_endless_or_absurd_duration_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(f"NEXUS_BRIDGE_{variable}", value)
    with pytest.raises(ConfigError, match=f"NEXUS_BRIDGE_{variable}: .*{says}"):
        load_settings(_env_file=None)
