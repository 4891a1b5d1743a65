"""Installing: uv.lock agrees with pyproject.toml and pins every dependency, with hashes, from
PyPI; ``make run`` installs the locked runtime set and no test tool; ``uv build`` makes a wheel
and an sdist, and the wheel, installed with the locked runtime dependencies into a fresh
virtualenv outside the repository, is a working ``nexus-bridge`` (``db upgrade``, ``serve``,
``agent …``) that carries its own migrations."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Final

import pytest

import nexus_bridge
from tests.conftest import DEADLINE_SECONDS, REPO_ROOT, wait_for
from tests.e2e.test_process import ServerProcess

PYPI: Final = "https://pypi.org/simple"
# The test tools of the `dev` extra: none of them belongs in a runtime install.
TEST_TOOLS = {"pytest", "pytest-asyncio", "mypy", "ruff", "playwright", "hypothesis"}
INSTALL_TIMEOUT_SECONDS = 300
# `name==version` at the start of a line of a requirements file or of `uv pip freeze`.
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def uv() -> str:
    """The uv that `make` installed with ($UV, set by `make test`), else the repository's
    bootstrapped one, else one on PATH."""
    for candidate in (os.environ.get("UV"), str(REPO_ROOT / ".tools" / "bin" / "uv")):
        if candidate and (found := shutil.which(candidate)):
            return found
    if found := shutil.which("uv"):
        return found
    pytest.fail("no uv: run the tests with `make test` (it bootstraps uv into .tools/)")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points into the repository's venv."""
    dropped = ("NEXUS_BRIDGE_", "UV_PROJECT_ENVIRONMENT", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env.update(extra)
    return env


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def pins(requirements: str) -> set[tuple[str, str]]:
    return {
        (name.lower().replace("_", "-"), version) for name, version in PIN.findall(requirements)
    }


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=DEADLINE_SECONDS) as response:
        return int(response.status)


def test_the_lock_agrees_with_pyproject_and_pins_every_package_from_pypi_with_hashes() -> None:
    run(uv(), "lock", "--check", cwd=REPO_ROOT)
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    packages = {package["name"]: package for package in lock["package"]}
    assert packages.pop("nexus-bridge")["source"] == {"editable": "."}
    assert packages.keys() >= TEST_TOOLS
    for name, package in packages.items():
        assert package["source"] == {"registry": PYPI}, name
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files, name
        for file in files:
            assert file["url"].startswith("https://files.pythonhosted.org/"), (name, file)
            assert file["hash"].startswith("sha256:"), (name, file)


@pytest.fixture(scope="module")
def locked_runtime(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[tuple[str, str]]]:
    """The runtime dependencies as uv.lock pins them: a requirements file (with hashes) and the
    (name, version) pairs in it, for every platform."""
    locked = tmp_path_factory.mktemp("lock") / "runtime.txt"
    run(
        uv(), "export", "--locked", "--no-dev", "--no-emit-project", "--format",
        "requirements-txt", "--output-file", str(locked), cwd=REPO_ROOT,
    )  # fmt: skip
    runtime = pins(locked.read_text())
    assert runtime, "the export named no requirement"
    assert not {name for name, _ in runtime} & TEST_TOOLS
    return locked, runtime


def test_make_run_installs_the_locked_runtime_and_no_test_tool(
    locked_runtime: tuple[Path, set[tuple[str, str]]], tmp_path: Path
) -> None:
    make = shutil.which("make")
    assert make, "make is not on PATH"
    venv = tmp_path / "venv"
    run(make, f"UV={uv()}", f"VENV={venv}", "install-runtime", cwd=REPO_ROOT)
    frozen = run(uv(), "pip", "freeze", "--python", str(venv / "bin" / "python"), cwd=tmp_path)
    installed = pins(frozen.stdout)
    _, runtime = locked_runtime
    assert installed <= runtime, installed - runtime
    assert {"sqlalchemy", "alembic", "mcp", "uvicorn"} <= {name for name, _ in installed}
    assert f"-e file://{REPO_ROOT}" in frozen.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``uv build``'s output: the sdist, and the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    run(uv(), "build", "--python", sys.executable, "--out-dir", str(out), cwd=REPO_ROOT)
    return out


@pytest.fixture
def wheel(dist: Path) -> Path:
    (found,) = dist.glob("nexus_bridge-*.whl")
    return found


def test_the_build_makes_a_wheel_and_an_sdist_that_both_carry_the_migrations(dist: Path) -> None:
    (wheel,) = dist.glob("nexus_bridge-*.whl")
    (sdist,) = dist.glob("nexus_bridge-*.tar.gz")
    # The version is written twice (pyproject.toml, which names the wheel, and __version__,
    # which --version, the MCP handshake and the console show): a release must change both.
    assert wheel.name.split("-")[1] == nexus_bridge.__version__
    in_wheel = set(zipfile.ZipFile(wheel).namelist())
    assert "nexus_bridge/migrations/env.py" in in_wheel
    assert "nexus_bridge/migrations/versions/0001_initial_schema.py" in in_wheel
    assert "nexus_bridge/task_card.html" in in_wheel  # the live task card (MCP Apps)
    assert {
        "nexus_bridge/console/static/console.css",
        "nexus_bridge/console/static/console.js",
    } <= in_wheel  # the console
    assert not any(name.startswith(("tests/", "migrations/")) for name in in_wheel)
    with tarfile.open(sdist) as tar:
        in_sdist = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert "migrations/versions/0001_initial_schema.py" in in_sdist
    assert not any(name.startswith((".venv/", ".tools/")) for name in in_sdist)


async def test_the_wheel_installed_outside_the_repository_migrates_serves_and_takes_agent_commands(
    wheel: Path, locked_runtime: tuple[Path, set[tuple[str, str]]], tmp_path: Path
) -> None:
    assert not tmp_path.is_relative_to(REPO_ROOT)
    locked, runtime = locked_runtime

    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    run(uv(), "venv", "--python", sys.executable, str(venv), cwd=tmp_path)
    run(
        uv(),
        "pip",
        "install",
        "--compile-bytecode",
        "--python",
        str(python),
        "-r",
        str(locked),
        cwd=tmp_path,
    )
    run(
        uv(),
        "pip",
        "install",
        "--compile-bytecode",
        "--python",
        str(python),
        "--no-deps",
        str(wheel),
        cwd=tmp_path,
    )
    run(uv(), "pip", "check", "--python", str(python), cwd=tmp_path)
    # Exactly the locked versions (those of them that apply on this platform), and no test tool.
    frozen = run(uv(), "pip", "freeze", "--python", str(python), cwd=tmp_path).stdout
    assert "nexus-bridge @ file://" in frozen
    installed = pins(frozen)
    assert installed <= runtime, installed - runtime
    assert {"sqlalchemy", "alembic", "mcp", "uvicorn"} <= {name for name, _ in installed}

    # The package and its migrations come from the new virtualenv, not from the repository.
    where = run(
        str(python), "-c", "import nexus_bridge; print(nexus_bridge.__file__)", cwd=tmp_path
    )
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(venv), package
    assert (package / "migrations" / "versions" / "0001_initial_schema.py").is_file()

    # Everything at its defaults, under an XDG data directory of its own.
    exe = str(venv / "bin" / "nexus-bridge")
    env = clean_env(XDG_DATA_HOME=str(tmp_path / "data"))
    assert "database at head" in run(exe, "db", "upgrade", cwd=tmp_path, env=env).stderr
    queued = run(exe, "send", "hello from the wheel", cwd=tmp_path, env=env)
    task_id = queued.stdout.split()[-1]

    proc = await asyncio.create_subprocess_exec(
        exe, "serve", "--host", "127.0.0.1", "--port", "0",
        cwd=tmp_path, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    server = ServerProcess(proc)
    try:
        await wait_for(
            lambda: server.url is not None or server.reader.done(),
            what="the installed nexus-bridge to log its listening URL",
        )
        assert server.url is not None, f"nexus-bridge exited before listening:\n{server.log}"
        base = server.url.removesuffix("/mcp")
        assert await asyncio.to_thread(http_status, base + "/readyz") == 200

        # The agent, with the token the first start wrote into the data directory.
        agent_env = {**env, "NEXUS_BRIDGE_URL": base}
        taken = await asyncio.to_thread(
            run, exe, "agent", "next", "--json", cwd=tmp_path, env=agent_env
        )
        assert json.loads(taken.stdout)["task"]["id"] == task_id
        done = await asyncio.to_thread(
            run, exe, "agent", "done", task_id, "--summary", "done", cwd=tmp_path, env=agent_env
        )
        assert json.loads(done.stdout)["status"] == "complete"

        proc.send_signal(signal.SIGTERM)
        assert await server.wait_exit() == 0, server.log
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.wait_for(proc.wait(), timeout=DEADLINE_SECONDS)
        await asyncio.wait_for(server.reader, timeout=DEADLINE_SECONDS)
