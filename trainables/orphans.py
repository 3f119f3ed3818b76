"""Ray agents left behind by a killed local sweep.

A local Ray's dashboard and runtime-env agents are children of its raylet. When the sweep driver that
started that Ray is killed with SIGKILL, the raylet and GCS go, but the two agents can stay alive,
re-parented, holding memory and ports (seen with Ray 2.60). A later local sweep (a ``--resume``) removes
them before it starts its own Ray: an agent whose parent is not a raylet serves nobody. Only this
user's processes are touched (Linux ``/proc``; elsewhere nothing is done).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # the agents' process titles


def _cmdline(proc: Path, pid: int) -> str:
    try:
        return (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _parent(proc: Path, pid: int) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state, past the (comm) field


def orphaned_agents(proc: Path = Path("/proc")) -> list[int]:
    """PIDs of this user's Ray agents whose parent process is not a raylet."""
    if not proc.is_dir():
        return []
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or entry.stat().st_uid != os.getuid():
            continue
        pid = int(entry.name)
        if _cmdline(proc, pid).startswith(AGENTS):
            parent = _parent(proc, pid)
            if parent is not None and "raylet" not in _cmdline(proc, parent):
                found.append(pid)
    return sorted(found)


def reap_orphaned_agents() -> list[int]:
    """Kill the orphaned agents; returns the PIDs that were signalled."""
    killed = []
    for pid in orphaned_agents():
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return killed


__all__ = ["AGENTS", "orphaned_agents", "reap_orphaned_agents"]
