"""``nexus-bridge systemd-unit``: units ``systemd-analyze verify`` accepts, whose commands run."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import subprocess_env
from tests.e2e.test_cli import EXE, run
from tests.e2e.test_process import sqlite_path

VARIANTS = [[], ["--user"], ["--runner"], ["--runner", "--user"]]


def parse(unit: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> every value (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in unit.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, line
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        assert "#" not in value, f"systemd has no inline comments: {line!r}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.mark.parametrize("flags", VARIANTS, ids=lambda f: " ".join(f) or "system")
def test_the_printed_unit_passes_systemd_analyze_verify(
    migrated_sqlite_url: str, tmp_path: Path, flags: list[str]
) -> None:
    unit = run(migrated_sqlite_url, "systemd-unit", *flags).stdout
    parse(unit)  # well-formed everywhere, verified where systemd is installed
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    path = tmp_path / (
        "nexus-bridge-agent.service" if "--runner" in flags else "nexus-bridge.service"
    )
    path.write_text(unit)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    scope = ["--user"] if "--user" in flags else []
    verified = subprocess.run(
        [analyze, *scope, "verify", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr == "", verified.stderr  # warnings too: a line systemd ignored


def test_the_bridge_unit_migrates_first_sandboxes_and_its_commands_run(
    migrated_sqlite_url: str,
) -> None:
    unit = parse(run(migrated_sqlite_url, "systemd-unit").stdout)
    service, section = unit["Service"], unit["Unit"]
    assert section["Wants"] == ["network-online.target"]
    assert section["After"] == ["network-online.target"]
    assert service["EnvironmentFile"] == ["-/etc/nexus-bridge/env"]  # may be absent
    assert service["Restart"] == ["on-failure"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["PrivateTmp"] == ["yes"]
    assert service["ProtectHome"] in (["yes"], ["read-only"])
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    data_dir = sqlite_path(migrated_sqlite_url).parent.resolve()
    assert f"-{data_dir}" in service["ReadWritePaths"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]

    (pre,) = service["ExecStartPre"]
    (start,) = service["ExecStart"]
    assert shlex.split(pre) == [EXE, "db", "upgrade"]
    assert shlex.split(start) == [EXE, "serve"]
    # The migration step works as printed (the server itself is covered by test_process).

    migrated = subprocess.run(
        shlex.split(pre),
        env=subprocess_env(migrated_sqlite_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr


def test_the_user_unit_needs_no_root_and_the_runner_unit_runs_the_agent(
    migrated_sqlite_url: str,
) -> None:
    system = parse(run(migrated_sqlite_url, "systemd-unit").stdout)
    assert system["Service"]["LimitNOFILE"] == ["65536"]  # a connection is an open file
    user = parse(run(migrated_sqlite_url, "systemd-unit", "--user").stdout)
    assert "User" not in user["Service"]
    assert user["Service"]["EnvironmentFile"] == ["-%h/.config/nexus-bridge/env"]
    assert user["Install"]["WantedBy"] == ["default.target"]
    runner = parse(run(migrated_sqlite_url, "systemd-unit", "--runner").stdout)
    assert shlex.split(runner["Service"]["ExecStart"][0]) == [EXE, "agent", "run", "--claude"]
    assert runner["Unit"]["After"] == ["network-online.target nexus-bridge.service"]


@pytest.mark.parametrize("user_mode", [False, True], ids=["system", "user"])
def test_the_runner_unit_works_in_the_directory_it_was_printed_in(
    migrated_sqlite_url: str, tmp_path: Path, user_mode: bool
) -> None:
    """The agent's project (its CLAUDE.md) is where the owner prints the unit, not always $HOME."""
    flags = ["--runner", *(["--user"] if user_mode else [])]

    def printed_in(directory: Path) -> subprocess.CompletedProcess[str]:
        directory.mkdir()
        return subprocess.run(
            [EXE, "systemd-unit", *flags],
            env=subprocess_env(migrated_sqlite_url),
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    project = tmp_path / "agent project"
    printed = printed_in(project)
    assert printed.returncode == 0, printed.stderr
    # systemd takes this path as it is (no quotes; a space is part of it).
    assert parse(printed.stdout)["Service"]["WorkingDirectory"] == [str(project)]
    refused = printed_in(tmp_path / "ends with a space ")  # systemd would strip the space
    assert refused.returncode == 2
    error = refused.stderr.splitlines()[-1]  # after a warning if claude is not on PATH here
    assert error.startswith("nexus-bridge: error: systemd cannot name the directory")
    assert "Traceback" not in refused.stderr


def test_systemd_unit_help_prints_the_user_units_environment_file(
    migrated_sqlite_url: str,
) -> None:
    # argparse %-formats help texts: systemd's %h in it once made --help a traceback.
    shown = run(migrated_sqlite_url, "systemd-unit", "--help").stdout
    assert "%h/.config/nexus-bridge/env" in shown


@pytest.mark.parametrize("flags", VARIANTS, ids=lambda f: " ".join(f) or "system")
def test_systemd_unit_env_file_names_the_units_environment_file_only(
    migrated_sqlite_url: str, tmp_path: Path, flags: list[str]
) -> None:
    # The service's file, on the server: it need not exist where the unit is printed, and it is
    # not the configuration this command reads (that is `nexus-bridge --env-file`).
    target = "/etc/nexus-bridge/agent.env"
    unit = parse(run(migrated_sqlite_url, "systemd-unit", *flags, "--env-file", target).stdout)
    assert unit["Service"]["EnvironmentFile"] == [f"-{target}"]


@pytest.mark.parametrize("found", [True, False], ids=["claude on PATH", "no claude"])
def test_the_runner_unit_finds_claude_where_it_was_printed(
    migrated_sqlite_url: str, tmp_path: Path, found: bool
) -> None:
    """A service's PATH is systemd's short default: the unit carries claude's directory, or
    says (and the command warns) that it must."""
    fake_bin = Path(__file__).resolve().parents[1] / "bin"
    bare = tmp_path / "bin"  # a PATH with what the command itself needs, and no claude
    bare.mkdir()
    path = f"{fake_bin}{os.pathsep}{bare}" if found else str(bare)
    result = subprocess.run(
        [EXE, "systemd-unit", "--runner"],
        env=subprocess_env(migrated_sqlite_url, PATH=path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    environment = parse(result.stdout)["Service"].get("Environment", [])
    if found:
        assert environment == [
            f'"PATH={fake_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
        ]
        assert result.stderr == ""
    else:
        assert environment == []
        assert "claude was not on PATH where this unit was printed" in result.stdout
        assert result.stderr.startswith("nexus-bridge: warning: claude is not on PATH here")
