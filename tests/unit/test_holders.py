"""Whether a lease's holder process is still alive: pid gone, pid reused, zombie, elsewhere."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_bridge.holders import holder_is_dead, make_holder_id


def holder_like_this_process(pid: int, start: str) -> str:
    host, _, _, namespace, suffix = make_holder_id().split(":")
    return f"{host}:{pid}:{start}:{namespace}:{suffix}"


def stat_start(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_this_process_and_a_live_process_are_alive(
    sleeper: subprocess.Popen[bytes],
) -> None:
    assert not holder_is_dead(make_holder_id())
    assert not holder_is_dead(holder_like_this_process(sleeper.pid, stat_start(sleeper.pid)))


def test_a_process_that_exited_is_dead() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert holder_is_dead(holder_like_this_process(proc.pid, "12345"))


def test_a_killed_but_unreaped_process_is_dead(sleeper: subprocess.Popen[bytes]) -> None:
    start = stat_start(sleeper.pid)
    sleeper.kill()
    os.waitid(os.P_PID, sleeper.pid, os.WEXITED | os.WNOWAIT)  # a zombie, not yet reaped
    assert holder_is_dead(holder_like_this_process(sleeper.pid, start))


def test_a_reused_pid_is_dead(sleeper: subprocess.Popen[bytes]) -> None:
    other_start = str(int(stat_start(sleeper.pid)) - 1)
    assert holder_is_dead(holder_like_this_process(sleeper.pid, other_start))


def test_another_host_or_an_unknown_form_is_never_taken_for_dead() -> None:
    assert not holder_is_dead(f"not-{socket.gethostname()}:999999:1:2:abc")
    assert not holder_is_dead("garbage")
    assert not holder_is_dead(f"{socket.gethostname()}:notapid:abc")


def test_an_earlier_process_with_this_processs_pid_is_dead() -> None:
    mine = stat_start(os.getpid())
    assert not holder_is_dead(holder_like_this_process(os.getpid(), mine))
    assert holder_is_dead(holder_like_this_process(os.getpid(), str(int(mine) - 1)))
