"""The whole configuration, resolved once: the credentials file read once, one target model from
which the queue's policy and the Telegram route are derived, and every mistake at file:line:key."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from nexus_bridge import config
from nexus_bridge.config import Settings
from nexus_bridge.domain import TargetPolicy, Transport
from nexus_bridge.errors import ConfigError
from nexus_bridge.targets import Configuration, TelegramRoute, load_configuration, load_targets

TOKEN_A = "a" * 32


@pytest.fixture(autouse=True)
def _no_bridge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables of the shell running the tests must not leak into these settings."""
    import os

    for name in os.environ:
        if name.startswith("NEXUS_BRIDGE_"):
            monkeypatch.delenv(name)


def settings(config_file: Path | None = None, **values: Any) -> Settings:
    base = Settings(_env_file=None, **values)
    return base.model_copy(update={"config_file": config_file})


def credentials(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "credentials"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


def targets_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(text, encoding="utf-8")
    return path


TWO_TELEGRAM_TARGETS = (
    "[targets.homelab]\n"  # 1
    'transport = "telegram"\n'  # 2
    "\n"  # 3
    "[targets.garden]\n"  # 4
    'transport = "telegram"\n'  # 5
    "chat_id = -1002\n"  # 6
    "agent_ids = [7]\n"  # 7
    "\n"  # 8
    '[targets."nexus:felt"]\n'  # 9
    'transport = "agent"\n'  # 10
    'dispatch = "one_at_a_time"\n'  # 11
    f'agent_tokens = ["{TOKEN_A}"]\n'  # 12
)


def count_credential_reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every read of a credentials file from now on (the real reader still does the work)."""
    reads: list[Path] = []
    real = config.read_credentials_file

    def counting(path: Path) -> Any:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(config, "read_credentials_file", counting)
    return reads


def test_the_credentials_file_is_read_once_however_many_telegram_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = credentials(tmp_path, "token=999:file-token\nchat_id=-1001\nagent_ids=1,2\n")
    reads = count_credential_reads(monkeypatch)
    loaded = load_configuration(
        settings(targets_file(tmp_path, TWO_TELEGRAM_TARGETS), telegram_credentials_file=creds)
    )
    assert reads == [creds]
    assert loaded.telegram is not None
    assert loaded.telegram.token == "999:file-token"


def test_loading_the_targets_reads_the_credentials_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each Telegram target used to resolve the Telegram settings again, re-reading the file.
    creds = credentials(tmp_path, "token=999:file-token\nchat_id=-1001\nagent_ids=1\n")
    reads = count_credential_reads(monkeypatch)
    load_targets(
        settings(targets_file(tmp_path, TWO_TELEGRAM_TARGETS), telegram_credentials_file=creds)
    )
    assert reads == [creds]


def test_a_loaded_configuration_does_not_change_when_the_files_do(tmp_path: Path) -> None:
    creds = credentials(tmp_path, "token=999:file-token\nchat_id=-1001\nagent_ids=1\n")
    path = targets_file(tmp_path, TWO_TELEGRAM_TARGETS)
    loaded = load_configuration(settings(path, telegram_credentials_file=creds))
    before = (loaded.telegram, loaded.targets, loaded.routes, loaded.policies)
    creds.write_text("token=111:other-token\nchat_id=-9\nagent_ids=9\n", encoding="utf-8")
    path.write_text('[targets.other]\ntransport = "agent"\n', encoding="utf-8")
    assert (loaded.telegram, loaded.targets, loaded.routes, loaded.policies) == before
    assert loaded.telegram is not None
    assert loaded.telegram.token == "999:file-token"
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.targets = ()  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        loaded.settings.port = 1  # type: ignore[misc]


def test_every_per_target_view_is_derived_from_the_one_target(tmp_path: Path) -> None:
    path = targets_file(tmp_path, TWO_TELEGRAM_TARGETS)
    loaded = load_configuration(
        settings(
            path,
            telegram_bot_token="123:abc",
            telegram_chat_id=-1001,
            telegram_agent_ids="1",
            telegram_agent_username="@lab_bot",
        )
    )
    assert isinstance(loaded, Configuration)
    # homelab takes the settings' chat, agents and username; garden has its own chat and agents.
    assert loaded.routes == (
        TelegramRoute("homelab", -1001, frozenset({1}), "lab_bot"),
        TelegramRoute("garden", -1002, frozenset({7}), "lab_bot"),
    )
    assert loaded.policies == (
        TargetPolicy("homelab", Transport.TELEGRAM, one_at_a_time=False, description=""),
        TargetPolicy("garden", Transport.TELEGRAM, one_at_a_time=False, description=""),
        TargetPolicy("nexus:felt", Transport.AGENT, one_at_a_time=True, description=""),
    )
    felt = loaded.target("nexus:felt")
    assert felt is not None
    assert felt.route is None
    assert all(t.policy == p for t, p in zip(loaded.targets, loaded.policies, strict=True))


def test_without_a_file_the_homelab_route_uses_the_telegram_settings() -> None:
    loaded = load_configuration(
        settings(telegram_bot_token="123:abc", telegram_chat_id=-5, telegram_agent_ids="3")
    )
    assert loaded.routes == (TelegramRoute("homelab", -5, frozenset({3}), None),)
    assert loaded.policies == (
        TargetPolicy("homelab", Transport.TELEGRAM, description="the agent"),
    )


def test_a_policy_transport_is_the_enum_and_nothing_else() -> None:
    assert TargetPolicy("felt", transport="agent").transport is Transport.AGENT  # type: ignore[arg-type]
    assert TargetPolicy("felt").uses_outbox
    with pytest.raises(ValueError, match="smoke"):
        TargetPolicy("felt", transport="smoke")  # type: ignore[arg-type]


def test_the_bot_token_from_the_credentials_file_is_among_the_secrets(tmp_path: Path) -> None:
    creds = credentials(tmp_path, "token=999:file-token\nchat_id=-1002\nagent_ids=7\n")
    loaded = load_configuration(settings(telegram_credentials_file=creds, auth_tokens=[TOKEN_A]))
    assert set(loaded.secrets()) == {"999:file-token", TOKEN_A}
    assert "999:file-token" not in loaded.settings.secrets()  # the environment's alone


# --- every mistake names the file, the line and the key ---------------------------------------


def test_an_agent_target_without_tokens_names_the_file_line_and_key(tmp_path: Path) -> None:
    path = targets_file(
        tmp_path,
        f'[targets.felt]\ntransport = "agent"\nagent_tokens = ["{TOKEN_A}"]\n\n'
        '[targets.silent]\ntransport = "agent"\ndescription = "never answers"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_configuration(settings(path))
    message = str(caught.value)
    assert message.startswith(f"{path}:5: targets.silent.agent_tokens: ")
    assert "silent have no agent_tokens" in message
    assert "NEXUS_BRIDGE_AGENT_TOKENS=silent:TOKEN" in message


def test_an_agent_token_from_the_environment_is_enough(tmp_path: Path) -> None:
    path = targets_file(tmp_path, '[targets.silent]\ntransport = "agent"\n')
    base = settings(path)
    with_token = base.model_copy(update={"agent_tokens": [SecretStr(f"silent:{TOKEN_A}")]})
    (target,) = load_configuration(with_token).targets
    assert target.agent_tokens == (TOKEN_A,)


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        pytest.param(
            '[targets.homelab]\ntransport = "telegram"\n\n[targets.lab2]\ntransport = "telegram"\n',
            4,
            "targets.lab2.chat_id",
            id="both on the settings' chat",
        ),
        pytest.param(
            '[targets.homelab]\ntransport = "telegram"\n\n'
            '[targets.lab2]\ntransport = "telegram"\nchat_id = -1001\n',
            6,
            "targets.lab2.chat_id",
            id="one names the settings' chat",
        ),
    ],
)
def test_two_targets_on_one_chat_name_the_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    path = targets_file(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_configuration(
            settings(
                path, telegram_bot_token="123:abc", telegram_chat_id=-1001, telegram_agent_ids="1"
            )
        )
    assert str(caught.value) == (
        f"{path}:{line}: {key}: targets 'homelab' and 'lab2' use the same Telegram chat -1001; "
        "give each Telegram target its own chat_id"
    )


@pytest.mark.parametrize(
    ("text", "line", "key", "problem"),
    [
        ("token=1:x\nchat_id=the lab\nagent_ids=1\n", 2, "chat_id", "must be a number"),
        ("# bot\ntoken=1:x\nchat_id=-1\nagent_ids=1,two\n", 4, "agent_ids", "must be numbers"),
        ("TOKEN=1:x\nexport TELEGRAM_CHAT_ID=x\nagent_ids=1\n", 2, "TELEGRAM_CHAT_ID", "must be a"),
    ],
)
def test_a_bad_credentials_file_value_names_the_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, problem: str
) -> None:
    creds = credentials(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_configuration(settings(telegram_credentials_file=creds))
    assert str(caught.value).startswith(f"{creds}:{line}: {key}: {problem}")


def test_a_credentials_file_that_is_not_text_names_the_file_and_line(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_bytes(b"token=1:x\nchat_id=\xff\n")
    with pytest.raises(ConfigError, match=rf"^{creds}:2: not UTF-8 text"):
        load_configuration(settings(telegram_credentials_file=creds))


def test_a_missing_chat_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^NEXUS_BRIDGE_TELEGRAM_CHAT_ID is required"):
        load_configuration(settings(telegram_bot_token="123:abc", telegram_agent_ids="1"))
