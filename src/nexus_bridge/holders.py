"""Who holds a lease, and whether that process is still alive.

A holder id names one process: ``host:pid:start:pidns:random``. ``start`` is the process's
start time (``/proc/<pid>/stat`` field 22, in clock ticks since boot) and ``pidns`` its pid
namespace, so a holder on this host whose pid no longer exists, or now belongs to another
process (its start time differs), or that is a zombie, is known to be dead: its lease can be
taken at once instead of after it expires. Anything uncertain (another host, another pid
namespace, no ``/proc``, an id in the old ``host:pid:random`` form with a live pid) counts as
alive, and the lease is left to expire.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Final

UNKNOWN: Final = "-"
_PROC: Final = Path("/proc")


def lease_clock() -> float:
    """Seconds on a clock that never goes back and keeps counting while the machine sleeps
    (CLOCK_BOOTTIME where there is one), for judging how long ago a lease was renewed."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        return time.clock_gettime(boottime)
    return time.monotonic()  # pragma: no cover - not Linux


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of its stat), or None if it is gone or a zombie.

    Raises:
        OSError: /proc cannot be read here (another OS): liveness is then unknown.
    """
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except FileNotFoundError:
        return None
    # Field 2 (the command) is in parentheses and may itself contain spaces or parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start = fields[0], fields[19]  # fields 3 and 22
    return None if state in ("Z", "X", "x") else start


def _pid_namespace() -> str:
    with contextlib.suppress(OSError):
        link = os.readlink(_PROC / "self" / "ns" / "pid")  # "pid:[4026531836]"
        return link.removeprefix("pid:[").removesuffix("]")
    return UNKNOWN


def make_holder_id() -> str:
    """A name for this process in the lease table: host, pid, start time, pid namespace, and a
    random suffix (two transports in one process are two holders)."""
    pid = os.getpid()
    try:
        start = _start_time(pid) or UNKNOWN
    except OSError:
        start = UNKNOWN
    return f"{socket.gethostname()}:{pid}:{start}:{_pid_namespace()}:{uuid.uuid4().hex[:6]}"


def holder_is_dead(holder: str) -> bool:
    """True only when ``holder`` certainly names a process of this host that no longer runs."""
    parts = holder.split(":")
    if len(parts) not in (3, 5) or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid <= 0:
        return False
    recorded_start = parts[2] if len(parts) == 5 else UNKNOWN
    if len(parts) == 5 and parts[3] != _pid_namespace():
        return False  # another container's pid: not one we can see
    try:
        start = _start_time(pid)
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False
    if pid == os.getpid():
        # This process, or (with another start time) an earlier one that had its pid.
        return start is not None and recorded_start not in (UNKNOWN, start)
    if start is None:
        return True
    return recorded_start not in (UNKNOWN, start)
