"""Settings: defaults, parsing, and the refusal to expose an open bridge."""

from __future__ import annotations

import pytest

from nexus_bridge.config import Settings, load_settings
from nexus_bridge.errors import ConfigError

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
