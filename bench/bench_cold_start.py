"""10. Cold start: ``nexus-bridge serve`` from exec to its first ``/readyz`` 200, vs the time
``python -c 'import mcp.server.mcpserver'`` takes (the MCP SDK every server loads), and the
memory (RSS) of the serving process once ready.

Both are fresh processes of the same Python, interleaved; the server runs on a migrated SQLite
copy with no Telegram target and no PUBLIC_URL (the configuration of a first start), and
``/readyz`` is asked every 5 ms from the moment the process starts. Both load compiled bytecode,
as an installed server does: the SDK's was compiled at install, nexus-bridge's is written first
(a checkout run with PYTHONDONTWRITEBYTECODE would compile its modules anew on every start).
Target: <= 1.5x.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from benchlib import Report, Row, Sample, fmt_seconds, progress, sqlite_url

TARGET = 1.5
ASK_EVERY = 0.005
START_DEADLINE = 60.0
NEXUS_BRIDGE = str(Path(sys.executable).with_name("nexus-bridge"))


def _compile_package() -> None:
    """Write nexus-bridge's bytecode, as installing its wheel does (pip and uv compile at
    install, and ``make install`` compiled the SDK's): an editable checkout whose bytecode is
    never written (PYTHONDONTWRITEBYTECODE) compiles every module of the server on every start,
    about 0.08 s that no installed server spends."""
    spec = importlib.util.find_spec("nexus_bridge")
    for location in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(location, quiet=1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _serve_once(database: Path, scratch: Path) -> tuple[float, float]:
    """Seconds from exec to the first /readyz 200, and the RSS (MB) then."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_BRIDGE_")}
    env |= {
        "NEXUS_BRIDGE_DATABASE_URL": sqlite_url(database),
        "NEXUS_BRIDGE_AGENT_TOKEN_FILE": str(scratch / "agent-token"),
        "NEXUS_BRIDGE_LOG_LEVEL": "WARNING",
        "XDG_CONFIG_HOME": str(scratch / "config"),
    }
    url = f"http://127.0.0.1:{port}/readyz"
    start = time.perf_counter()
    process = subprocess.Popen(
        [NEXUS_BRIDGE, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=1.0) as http:
            while True:
                try:
                    if http.get(url).status_code == 200:
                        elapsed = time.perf_counter() - start
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"nexus-bridge serve exited with {process.returncode}")
                if time.perf_counter() - start > START_DEADLINE:
                    raise RuntimeError("nexus-bridge serve did not become ready in time")
                time.sleep(ASK_EVERY)
        return elapsed, _rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=START_DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _import_sdk_once() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import mcp.server.mcpserver"], check=True)
    return time.perf_counter() - start


def run(report: Report, database: Path, scratch: Path, *, rounds: int) -> None:
    progress(f"10. cold start: nexus-bridge serve -> /readyz vs importing the MCP SDK, {rounds}x")
    _compile_package()
    serve: list[float] = []
    sdk: list[float] = []
    memory: list[float] = []
    for _ in range(rounds):
        sdk.append(_import_sdk_once())
        seconds, rss = _serve_once(database, scratch)
        serve.append(seconds)
        memory.append(rss)
    served, imported = Sample(serve), Sample(sdk)
    report.rows.append(
        Row(
            section="10",
            name="nexus-bridge serve -> first /readyz 200",
            measured=f"{served.describe()}; RSS {max(memory):.0f} MB",
            baseline=f"import mcp.server.mcpserver: {imported.describe()}",
            ratio=served.median / imported.median,
            target=TARGET,
        )
    )
    report.notes.append(
        f"10: fresh processes, interleaved; /readyz asked every {fmt_seconds(ASK_EVERY)} from "
        "exec; no Telegram target, no PUBLIC_URL; both on compiled bytecode (nexus-bridge's "
        "written first, as an install does); RSS of the server once ready (largest seen)."
    )
    progress(f"  serve {served.describe()}; SDK import {imported.describe()}")
