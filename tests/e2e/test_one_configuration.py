"""One configuration for every command: the standard file, ./.env over it, the environment over
both, ``nexus-bridge config`` saying which is which, and JSON logs; real processes and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from tests.conftest import subprocess_env

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
        f"nexus-bridge: error: NEXUS_BRIDGE_ENV_FILE: {tmp_path / 'absent.env'} does not "
        "exist; create it (KEY=value lines) or unset the variable to use the standard location"
    ]


def test_json_logs_are_one_object_per_line_with_the_task_and_target_as_fields(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_LOG_FORMAT="json")
    sent = run(["send", f"deploy with {SECRET}", "--json"], env, tmp_path)
    assert sent.returncode == 0, sent.stderr
    task_id = json.loads(sent.stdout)["id"]
    entries = [json.loads(line) for line in sent.stderr.splitlines()]
    [queued] = [e for e in entries if e.get("task_id") == task_id]
    assert queued["target"] == "homelab"
    assert queued["level"] == "INFO"
    assert queued["message"] == f"queued task {task_id} for homelab"
    assert queued["time"].endswith("+00:00")

    readable = run(["send", "second task"], subprocess_env(migrated_sqlite_url), tmp_path)
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
