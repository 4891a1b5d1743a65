"""The configuration is resolved once, when the bridge starts: a real server reads its Telegram
credentials file once and keeps what it read, and the mistakes found while wiring a server
(a target without agent tokens, two targets on one chat) name the file, the line and the key.
The real server, unpatched python-telegram-bot and the fake Bot API, all on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexus_bridge import config
from nexus_bridge.config import Settings
from nexus_bridge.errors import ConfigError
from tests.conftest import mcp_client, running_server, subprocess_env
from tests.e2e.test_telegram import AGENT, CHAT, send_and_deliver, telegram_settings
from tests.fake_telegram import running_fake_telegram

EXE = str(Path(sys.executable).with_name("nexus-bridge"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o600)
    return path


async def test_the_server_reads_the_credentials_file_once_and_keeps_what_it_read(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[Path] = []
    real = config.read_credentials_file

    def counting(path: Path) -> Any:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(config, "read_credentials_file", counting)
    async with running_fake_telegram() as fake:
        creds = write(
            tmp_path / "credentials", f"token={fake.token}\nchat_id={CHAT}\nagent_ids={AGENT}\n"
        )
        settings = telegram_settings(
            make_settings,
            fake,
            telegram_bot_token=None,
            telegram_chat_id=None,
            telegram_agent_ids=[],
            telegram_credentials_file=creds,
        )
        async with running_server(settings) as (url, server), mcp_client(url) as client:
            assert reads == [creds]
            # A changed file is not seen by the running bridge: it delivers with what it read.
            write(creds, "token=1:not-the-bot\nchat_id=-42\nagent_ids=9\n")
            await send_and_deliver(client, fake, "still delivered to the chat read at start")
            assert fake.sent[-1].chat_id == CHAT
            telegram = server.bridge.configuration.telegram
            assert telegram is not None
            assert telegram.token == fake.token
            assert reads == [creds]


def test_two_telegram_targets_on_one_chat_name_the_file_line_and_key(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from nexus_bridge.app import build_bridge

    path = write(
        tmp_path / "targets.toml",
        '[targets.homelab]\ntransport = "telegram"\n\n'
        '[targets.lab2]\ntransport = "telegram"\nchat_id = -1001\n',
    )
    settings = make_settings(
        config_file=path,
        telegram_bot_token="123:abc",
        telegram_chat_id=-1001,
        telegram_agent_ids=[1],
    )
    with pytest.raises(ConfigError) as caught:
        build_bridge(settings, default_identity="test", http=True)
    assert str(caught.value).startswith(f"{path}:6: targets.lab2.chat_id: ")


def test_serve_refuses_an_agent_target_without_tokens_naming_the_file_line_and_key(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "targets.toml",
        '# the agents of this bridge\n[targets.silent]\ntransport = "agent"\n',
    )
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_CONFIG=str(path))
    result = subprocess.run(
        [EXE, "serve", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"nexus-bridge: error: {path}:2: targets.silent.agent_tokens: ")
    assert "silent have no agent_tokens" in line
