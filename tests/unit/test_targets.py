"""Targets: the default homelab target, the NEXUS_BRIDGE_CONFIG file, and agent tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from nexus_bridge.config import Settings
from nexus_bridge.errors import ConfigError
from nexus_bridge.targets import TARGET_NAME, Dispatch, Target, Transport, load_targets

TELEGRAM: dict[str, Any] = {
    "telegram_bot_token": "123:abc",
    "telegram_chat_id": -1,
    "telegram_agent_ids": "1",
}
TOKEN_A = "a" * 32
TOKEN_B = "b" * 32
TWO_TARGETS = """\
# the agents this bridge serves
[targets.homelab]
transport = "telegram"          # uses the TELEGRAM_* settings
description = "Homelab management agent on mgmt"

[targets."nexus:felt"]
transport = "agent"
dispatch = "one_at_a_time"
agent_tokens = ["{token}"]
""".replace("{token}", TOKEN_A)


@pytest.fixture(autouse=True)
def _no_bridge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Variables of the shell running the tests must not leak into these settings."""
    import os

    for name in os.environ:
        if name.startswith("NEXUS_BRIDGE_"):
            monkeypatch.delenv(name)


def settings(
    config: Path | None = None, *, agent_tokens: tuple[str, ...] = (), **values: Any
) -> Settings:
    base = Settings(_env_file=None, **values)
    # model_copy sets the fields whether or not Settings declares them yet.
    return base.model_copy(
        update={"config_file": config, "agent_tokens": [SecretStr(t) for t in agent_tokens]}
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_without_a_file_or_telegram_the_homelab_target_uses_the_agent_api() -> None:
    assert load_targets(settings()) == [
        Target(
            name="homelab",
            transport=Transport.AGENT,
            description="the agent",
            dispatch=Dispatch.IMMEDIATE,
            chat_id=None,
            agent_ids=frozenset(),
            agent_username=None,
        )
    ]


def test_without_a_file_but_with_a_bot_token_the_homelab_target_uses_telegram() -> None:
    (target,) = load_targets(settings(**TELEGRAM))
    assert target.name == "homelab"
    assert target.transport is Transport.TELEGRAM
    assert target.dispatch is Dispatch.IMMEDIATE
    assert (target.chat_id, target.agent_ids, target.agent_username) == (None, frozenset(), None)


def test_without_a_file_environment_tokens_belong_to_homelab() -> None:
    (target,) = load_targets(settings(agent_tokens=(f"homelab:{TOKEN_A}",)))
    assert target.agent_tokens == (TOKEN_A,)
    assert TOKEN_A not in repr(target)


def test_without_a_file_a_token_for_another_target_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_targets(settings(agent_tokens=(f"nexus:felt:{TOKEN_A}",)))
    message = str(caught.value)
    assert message.startswith("NEXUS_BRIDGE_AGENT_TOKENS: a token for unknown target 'nexus:felt'")
    assert "NEXUS_BRIDGE_CONFIG" in message
    assert TOKEN_A not in message


def test_a_file_with_two_targets_is_read_exactly(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_TARGETS)
    assert load_targets(settings(path, **TELEGRAM)) == [
        Target(
            name="homelab",
            transport=Transport.TELEGRAM,
            description="Homelab management agent on mgmt",
            dispatch=Dispatch.IMMEDIATE,
            chat_id=None,
            agent_ids=frozenset(),
            agent_username=None,
        ),
        Target(
            name="nexus:felt",
            transport=Transport.AGENT,
            description="",
            dispatch=Dispatch.ONE_AT_A_TIME,
            chat_id=None,
            agent_ids=frozenset(),
            agent_username=None,
            agent_tokens=(TOKEN_A,),
        ),
    ]


def test_an_agent_only_file_needs_no_telegram_settings(tmp_path: Path) -> None:
    path = write(tmp_path, '[targets."nexus:felt"]\ntransport = "agent"\n')
    assert [t.name for t in load_targets(settings(path))] == ["nexus:felt"]


def test_a_telegram_target_may_name_its_own_chat_and_agents(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[targets.homelab]\n"
        'transport = "telegram"\n'
        "[targets.garden]\n"
        'transport = "telegram"\n'
        "chat_id = -1002\n"
        "agent_ids = [7, 8]\n"
        'agent_username = "@garden_bot"\n',
    )
    homelab, garden = load_targets(settings(path, **TELEGRAM))
    assert (homelab.chat_id, homelab.agent_ids, homelab.agent_username) == (
        None,
        frozenset(),
        None,
    )
    assert garden.chat_id == -1002
    assert garden.agent_ids == frozenset({7, 8})
    assert garden.agent_username == "garden_bot"


def test_environment_tokens_are_merged_with_the_file_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_TARGETS)
    env = (f"nexus:felt:{TOKEN_B}", f"homelab:{'c' * 20}", f"nexus:felt:{TOKEN_A}")
    homelab, felt = load_targets(settings(path, agent_tokens=env, **TELEGRAM))
    assert homelab.agent_tokens == ("c" * 20,)
    assert felt.agent_tokens == (TOKEN_A, TOKEN_B)


def test_a_missing_file_names_the_variable_and_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"NEXUS_BRIDGE_CONFIG {path}: No such file"):
        load_targets(settings(path))


def test_a_key_is_found_under_a_quoted_header_with_spaces(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[targets.homelab]\ntransport = "agent"\n'
        '[ targets . "nexus:felt" ]   # the felt agent\n'
        'transport = "agent"\n'
        'description = """\n[not.a.header]\ndispatch = 1\n"""\n'
        'dispatch   = "later"\n',
    )
    with pytest.raises(ConfigError) as caught:
        load_targets(settings(path))
    assert str(caught.value) == (
        f"{path}:9: targets.\"nexus:felt\".dispatch: unknown dispatch 'later'; "
        "use immediate or one_at_a_time"
    )


def test_an_agent_token_that_is_also_an_auth_token_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TWO_TARGETS)
    with pytest.raises(ConfigError, match="also in NEXUS_BRIDGE_AUTH_TOKENS"):
        load_targets(settings(path, auth_tokens=[TOKEN_A], **TELEGRAM))


BAD_FILES = [
    pytest.param(
        '[targets.homelab]\ntransport = "agent"\ncolour = "blue"\n',
        {},
        3,
        "targets.homelab.colour",
        "unknown key 'colour'; use one of transport, description, dispatch, chat_id, "
        "agent_ids, agent_username, agent_tokens",
        id="unknown key",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "agent"\n\n[targets."nexus:felt"]\n'
        'description = "felt"\ntransport = "smoke signals"\n',
        {},
        6,
        'targets."nexus:felt".transport',
        "unknown transport 'smoke signals'; use telegram or agent",
        id="unknown transport",
    ),
    pytest.param(
        '[targets.homelab]\ndescription = "x"\n',
        {},
        1,
        "targets.homelab.transport",
        "missing; use telegram or agent",
        id="missing transport",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "agent"\ndispatch = "whenever"\n',
        {},
        3,
        "targets.homelab.dispatch",
        "unknown dispatch 'whenever'; use immediate or one_at_a_time",
        id="unknown dispatch",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "telegram"\n',
        {"telegram_bot_token": "123:abc", "telegram_agent_ids": "1"},
        1,
        "targets.homelab.chat_id",
        "telegram target needs a chat_id (or NEXUS_BRIDGE_TELEGRAM_CHAT_ID)",
        id="telegram without chat",
    ),
    pytest.param(
        '\n[targets.homelab]\ntransport = "telegram"\nchat_id = -5\n',
        {},
        3,
        "targets.homelab.transport",
        "a telegram target needs NEXUS_BRIDGE_TELEGRAM_BOT_TOKEN",
        id="telegram without token",
    ),
    pytest.param(
        '[targets.Homelab]\ntransport = "agent"\n',
        {},
        1,
        "targets.Homelab",
        "bad target name 'Homelab'",
        id="bad name",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "agent"\n[targets.Homelab]\ntransport = "agent"\n',
        {},
        3,
        "targets.Homelab",
        "duplicate target name: 'Homelab' and 'homelab' differ only in case",
        id="names differing in case",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "telegram"\nchat_id = "the lab"\n',
        TELEGRAM,
        3,
        "targets.homelab.chat_id",
        "must be an integer (a Telegram id), got a string",
        id="wrong type",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "telegram"\nagent_ids = [1, true]\n',
        TELEGRAM,
        3,
        "targets.homelab.agent_ids",
        "must be a list of integers (Telegram user ids), got a boolean",
        id="wrong item type",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "agent"\nchat_id = -5\n',
        {},
        3,
        "targets.homelab.chat_id",
        "only telegram targets take this key",
        id="telegram key on an agent target",
    ),
    pytest.param(
        "# nothing yet\n[targets]\n",
        {},
        2,
        "targets",
        "no targets; declare at least one [targets.NAME]",
        id="empty targets",
    ),
    pytest.param(
        "# nothing yet\n",
        {},
        1,
        "targets",
        "no targets; declare at least one [targets.NAME]",
        id="no targets",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "agent"\n[target.felt]\ntransport = "agent"\n',
        {},
        3,
        "target",
        "unknown key; the file holds only [targets.NAME] tables",
        id="misspelt section",
    ),
    pytest.param(
        '[targets.homelab]\ntransport = "agent"\nagent_tokens = ["short"]\n',
        {},
        3,
        "targets.homelab.agent_tokens",
        "every token must be at least 16 characters",
        id="short token",
    ),
    pytest.param(
        f'[targets.homelab]\ntransport = "agent"\nagent_tokens = ["{TOKEN_A}"]\n'
        f'[targets.felt]\ntransport = "agent"\nagent_tokens = ["{TOKEN_B}", "{TOKEN_A}"]\n',
        {},
        6,
        "targets.felt.agent_tokens",
        "a token is also given to target 'homelab'; give each target its own",
        id="same token twice",
    ),
]


@pytest.mark.parametrize(("text", "values", "line", "key", "problem"), BAD_FILES)
def test_a_bad_file_names_the_file_the_line_and_the_key(
    tmp_path: Path, text: str, values: dict[str, Any], line: int, key: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_targets(settings(path, **values))
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: {key}: {problem}")
    assert TOKEN_A not in message


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('[targets.homelab]\ntransport = "agent"\ndispatch = \n', 3),
        ('[targets.homelab]\ntransport = "agent"\n\n[targets."homelab"]\n', 4),
    ],
    ids=["syntax error", "the same table twice"],
)
def test_a_toml_error_names_the_file_and_the_line(tmp_path: Path, text: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_targets(settings(path))
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: invalid TOML: ")
    assert f"(at line {line}, column" in message


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ((f"garden:{TOKEN_A}",), "a token for unknown target 'garden'; {path} declares homelab"),
        (("nexus:felt:short",), "the token for 'nexus:felt' must be at least 16 characters"),
        (
            (f"homelab:{TOKEN_A}",),
            "the token for 'homelab' is also given to target 'nexus:felt'; give each target",
        ),
        ((f"homelab:{TOKEN_B}", f"nexus:felt:{TOKEN_B}"), "is also given to target 'homelab'"),
        ((TOKEN_B,), "entry 1 must be TARGET:TOKEN"),
    ],
    ids=["unknown target", "short token", "token of another target", "same token twice", "bare"],
)
def test_bad_environment_tokens_name_the_variable_and_the_target(
    tmp_path: Path, entries: tuple[str, ...], problem: str
) -> None:
    path = write(tmp_path, TWO_TARGETS)
    with pytest.raises(ConfigError) as caught:
        load_targets(settings(path, agent_tokens=entries, **TELEGRAM))
    message = str(caught.value)
    assert message.startswith("NEXUS_BRIDGE_AGENT_TOKENS: ")
    assert problem.format(path=path) in message
    assert TOKEN_A not in message
    assert TOKEN_B not in message


@pytest.mark.parametrize("name", ["homelab", "nexus:felt", "a", "x.y_z-1", "9" * 100])
def test_target_names_like_these_are_accepted(name: str) -> None:
    assert TARGET_NAME.fullmatch(name)


@pytest.mark.parametrize("name", ["", "Homelab", ":felt", "-x", "a b", "a/b", "9" * 101])
def test_target_names_like_these_are_refused(name: str) -> None:
    assert not TARGET_NAME.fullmatch(name)


def test_a_file_holding_agent_tokens_that_others_can_read_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, TWO_TARGETS)
    path.chmod(0o644)
    load_targets(settings(path, **TELEGRAM))
    assert f"chmod 600 {path}" in caplog.text
    caplog.clear()
    path.chmod(0o600)
    load_targets(settings(path, **TELEGRAM))
    assert "chmod" not in caplog.text
