"""One configuration for every command: the standard file, ./.env over it, the environment over
both, ``nexus-bridge config`` saying which is which, and JSON logs; real processes and files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from nexus_bridge.config import Settings
from nexus_bridge.db import migrate
from tests.conftest import running_server, subprocess_env

EXE = str(Path(sys.executable).with_name("nexus-bridge"))
SECRET = "s3cret-bearer-token-0123456789"


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def standard_file(env: dict[str, str], text: str) -> Path:
    path = Path(env["XDG_CONFIG_HOME"]) / "nexus-bridge" / "env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return {row["variable"]: row for row in json.loads(result.stdout)["settings"]}


def test_a_command_run_from_anywhere_uses_the_standard_configuration_file(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    env = subprocess_env(migrated_sqlite_url)
    del env["NEXUS_BRIDGE_DATABASE_URL"]
    standard_file(env, f"NEXUS_BRIDGE_DATABASE_URL={migrated_sqlite_url}\n")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)

    sent = run(["send", "from another directory", "--json"], env, elsewhere)
    assert sent.returncode == 0, sent.stderr
    listed = run(["list", "--json"], subprocess_env(migrated_sqlite_url), tmp_path)
    assert [m["id"] for m in json.loads(listed.stdout)["messages"]] == [
        json.loads(sent.stdout)["id"]
    ]
    assert not (elsewhere / "bridge.db").exists()
    database = make_url(migrated_sqlite_url).database
    assert database is not None
    assert Path(database).exists()


def test_dot_env_overrides_the_file_and_the_environment_overrides_both(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_HOST="127.0.0.3")
    path = standard_file(
        env,
        "NEXUS_BRIDGE_PORT=1111\nNEXUS_BRIDGE_STALL_SECONDS=60\nNEXUS_BRIDGE_HOST=127.0.0.9\n"
        f"NEXUS_BRIDGE_AUTH_TOKENS={SECRET}\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text("NEXUS_BRIDGE_PORT=2222\n", encoding="utf-8")

    result = run(["config", "--json"], env, work)
    rows = config_rows(result)
    assert rows["NEXUS_BRIDGE_PORT"] == {
        "variable": "NEXUS_BRIDGE_PORT",
        "value": "2222",
        "source": str(work / ".env"),
    }
    assert rows["NEXUS_BRIDGE_STALL_SECONDS"]["value"] == "60.0"
    assert rows["NEXUS_BRIDGE_STALL_SECONDS"]["source"] == str(path)
    assert rows["NEXUS_BRIDGE_HOST"]["value"] == "127.0.0.3"
    assert rows["NEXUS_BRIDGE_HOST"]["source"] == "environment"
    assert rows["NEXUS_BRIDGE_AUTH_TOKENS"]["value"] == "********"
    assert rows["NEXUS_BRIDGE_MAX_MESSAGE_CHARS"]["source"] == "default"
    assert SECRET not in result.stdout

    text = run(["config"], env, work)
    assert text.returncode == 0, text.stderr
    assert SECRET not in text.stdout
    assert f"2222  ({work / '.env'})" in text.stdout


def test_config_shows_the_telegram_settings_the_credentials_file_gives_and_only_files_read(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    token = "123456:" + "k" * 35
    credentials = tmp_path / "telegram.env"
    credentials.write_text(f"token={token}\nchat_id=-100555\nagent_ids=42,43\n")
    credentials.chmod(0o600)
    env = subprocess_env(
        migrated_sqlite_url,
        NEXUS_BRIDGE_TELEGRAM_CREDENTIALS_FILE=str(credentials),
        NEXUS_BRIDGE_TELEGRAM_AGENT_IDS="77",  # the environment wins over the file
    )
    result = run(["config", "--json"], env, tmp_path)
    rows = config_rows(result)
    assert rows["NEXUS_BRIDGE_TELEGRAM_BOT_TOKEN"]["value"] == "********"
    assert rows["NEXUS_BRIDGE_TELEGRAM_BOT_TOKEN"]["source"] == f"{credentials}:1"
    assert rows["NEXUS_BRIDGE_TELEGRAM_CHAT_ID"]["value"] == "-100555"
    assert rows["NEXUS_BRIDGE_TELEGRAM_CHAT_ID"]["source"] == f"{credentials}:2"
    assert rows["NEXUS_BRIDGE_TELEGRAM_AGENT_IDS"]["value"] == "77"
    assert rows["NEXUS_BRIDGE_TELEGRAM_AGENT_IDS"]["source"] == "environment"
    assert token not in result.stdout
    assert json.loads(result.stdout)["files"] == []  # neither ./.env nor the standard file exists


def test_the_standard_file_can_be_moved_and_a_missing_one_is_one_line(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    moved = tmp_path / "etc-nexus-bridge.env"
    moved.write_text("NEXUS_BRIDGE_STALL_SECONDS=42\n", encoding="utf-8")
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_ENV_FILE=str(moved))
    rows = config_rows(run(["config", "--json"], env, tmp_path))
    assert rows["NEXUS_BRIDGE_STALL_SECONDS"] == {
        "variable": "NEXUS_BRIDGE_STALL_SECONDS",
        "value": "42.0",
        "source": str(moved),
    }

    env["NEXUS_BRIDGE_ENV_FILE"] = str(tmp_path / "absent.env")
    missing = run(["status"], env, tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"nexus-bridge: error: NEXUS_BRIDGE_ENV_FILE (or --env-file): {tmp_path / 'absent.env'} "
        "does not exist; create it (KEY=value lines) or leave it unset to use the standard "
        "location"
    ]

    del env["NEXUS_BRIDGE_ENV_FILE"]
    flagged = run(["--env-file", str(moved), "config", "--json"], env, tmp_path)
    assert config_rows(flagged)["NEXUS_BRIDGE_STALL_SECONDS"]["source"] == str(moved)


def test_json_logs_are_one_object_per_line_with_the_task_and_target_as_fields(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    # At DEBUG, send logs the queue's own line too (at INFO it only prints its result).
    debug = {"NEXUS_BRIDGE_LOG_LEVEL": "DEBUG"}
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_LOG_FORMAT="json", **debug)
    sent = run(["send", f"deploy with {SECRET}", "--json"], env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    task_id = json.loads(sent.stdout)["id"]
    entries = [json.loads(line) for line in sent.stderr.splitlines()]
    [queued] = [e for e in entries if e.get("task_id") == task_id]
    assert queued["target"] == "homelab"
    assert queued["level"] == "INFO"
    assert queued["message"] == f"queued task {task_id} for homelab"
    assert queued["time"].endswith("+00:00")

    readable = run(["send", "second task"], subprocess_env(migrated_sqlite_url, **debug), tmp_path)
    assert readable.returncode == 0, readable.stderr
    [line] = [ln for ln in readable.stderr.splitlines() if "queued task" in ln]
    assert " INFO nexus_bridge.queue: queued task " in line
    assert not line.startswith("{")


def test_an_unknown_log_format_is_one_line_naming_the_variable(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_LOG_FORMAT="xml")
    result = run(["status"], env, tmp_path)
    assert result.returncode == 2
    assert "NEXUS_BRIDGE_LOG_FORMAT: must be one of text, json, not 'xml'" in result.stderr


async def test_send_refuses_when_the_running_server_delivers_the_target_differently(
    make_settings: Callable[..., Settings], migrated_sqlite_url: str, tmp_path: Path
) -> None:
    from tests.fake_telegram import running_fake_telegram

    async with running_fake_telegram() as fake:
        telegram = {
            "NEXUS_BRIDGE_TELEGRAM_BOT_TOKEN": fake.token,
            "NEXUS_BRIDGE_TELEGRAM_CHAT_ID": "-100123",
            "NEXUS_BRIDGE_TELEGRAM_AGENT_IDS": "4242",
            "NEXUS_BRIDGE_TELEGRAM_BASE_URL": fake.base_url,
        }
        settings = make_settings(
            telegram_bot_token=fake.token,
            telegram_chat_id=-100123,
            telegram_agent_ids=[4242],
            telegram_base_url=fake.base_url,
        )
        async with running_server(settings) as (url, _server):
            base = url.removesuffix("/mcp")
            # Run from a directory without the server's .env: homelab falls back to the agent API.
            elsewhere = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_URL=base)
            refused = await asyncio.to_thread(run, ["send", "reboot the NAS"], elsewhere, tmp_path)
            assert refused.returncode == 2
            assert refused.stderr.startswith(
                f"nexus-bridge: error: the bridge running at {base} delivers 'homelab' over "
                "telegram, but this command's configuration puts it on agent; "
            )
            assert "nexus-bridge config" in refused.stderr
            assert refused.stderr.rstrip().endswith("not queued")
            assert len(refused.stderr.splitlines()) == 1

            same = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_URL=base, **telegram)
            sent = await asyncio.to_thread(
                run, ["send", "reboot the NAS", "--json"], same, tmp_path
            )
            assert sent.returncode == 0, sent.stderr
            listed = await asyncio.to_thread(run, ["list", "--json"], same, tmp_path)
        [task] = json.loads(listed.stdout)["messages"]
        assert task["id"] == json.loads(sent.stdout)["id"]  # the refused one was never queued


def database_id_of(url: str) -> str:
    with contextlib.closing(sqlite3.connect(str(make_url(url).database))) as db:
        (found,) = db.execute("SELECT id FROM database_identity").fetchone()
    return str(found)


async def test_send_refuses_when_the_running_server_reads_another_database(
    make_settings: Callable[..., Settings], migrated_sqlite_url: str, tmp_path: Path
) -> None:
    """Same targets, another DATABASE_URL (the CLI reads another environment file than the
    service, or runs as another user): the task would be queued where no server reads."""
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    await asyncio.to_thread(migrate.upgrade, other)  # a database of its own: its own id
    assert database_id_of(other) != database_id_of(migrated_sqlite_url)
    async with running_server(make_settings()) as (url, _server):
        base = url.removesuffix("/mcp")
        elsewhere = subprocess_env(other, NEXUS_BRIDGE_URL=base)
        refused = await asyncio.to_thread(run, ["send", "restart jellyfin"], elsewhere, tmp_path)
        here = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_URL=base)
        sent = await asyncio.to_thread(run, ["send", "restart jellyfin"], here, tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        f"nexus-bridge: error: the bridge running at {base} reads another database than this "
        f"command ({other}): "
    )
    assert refused.stderr.rstrip().endswith("not queued")
    assert len(refused.stderr.splitlines()) == 1
    with contextlib.closing(sqlite3.connect(tmp_path / "other.db")) as db:
        assert db.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
    assert sent.returncode == 0, sent.stderr


async def test_the_targets_route_asks_for_the_same_token_as_mcp(
    make_settings: Callable[..., Settings], migrated_sqlite_url: str, tmp_path: Path
) -> None:
    import httpx

    settings = make_settings(auth_tokens=[SECRET])
    async with running_server(settings) as (url, _server):
        base = url.removesuffix("/mcp")
        async with httpx.AsyncClient() as http:
            assert (await http.get(base + "/targets")).status_code == 401
            wrong_host = await http.get(base + "/targets", headers={"Host": "evil.example"})
            assert wrong_host.status_code in (403, 421)
            answer = await http.get(
                base + "/targets", headers={"Authorization": f"Bearer {SECRET}"}
            )
        assert answer.json() == {
            "targets": [{"name": "homelab", "transport": "agent"}],
            "database": database_id_of(migrated_sqlite_url),
        }

        # A CLI without the token cannot compare: it says so and queues.
        env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_URL=base)
        sent = await asyncio.to_thread(run, ["send", "a task"], env, tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert "wants a token to compare targets" in sent.stderr
        env["NEXUS_BRIDGE_AUTH_TOKENS"] = SECRET
        sent = await asyncio.to_thread(run, ["send", "another task"], env, tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert "wants a token" not in sent.stderr
