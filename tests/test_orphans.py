"""Ray agents whose raylet is gone (left by a SIGKILLed sweep driver) are found and removed; nothing
else is: the test plants a fake orphaned agent and a plain process and a fake agent under a raylet."""

from __future__ import annotations

import subprocess
import time

from trainables.orphans import orphaned_agents, reap_orphaned_agents


def _spawn(script: str) -> None:
    subprocess.run(["bash", "-c", script], check=True)  # the subshell exits: children are re-parented


def _pids(title: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"^{title}"], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def test_only_agents_without_a_raylet_are_reaped() -> None:
    subprocess.run(["pkill", "-f", "--", "--fake-"], check=False)  # leftovers of an interrupted run
    _spawn('(exec -a "ray::DashboardAgent --fake-orphan" sleep 60 &)')
    _spawn('(exec -a "sleep-plain --fake-orphan" sleep 60 &)')
    raylet = subprocess.Popen(["bash", "-c", 'exec -a "raylet --fake" bash -c '
                               '"(exec -a \\"ray::RuntimeEnvAgent --fake-kept\\" sleep 60) & wait"'])
    try:
        time.sleep(0.5)
        orphan, plain, kept = (_pids("ray::DashboardAgent --fake-orphan"), _pids("sleep-plain --fake-orphan"),
                               _pids("ray::RuntimeEnvAgent --fake-kept"))
        assert orphan and plain and kept
        assert set(orphan) <= set(orphaned_agents()) and not set(kept) & set(orphaned_agents())
        assert set(orphan) <= set(reap_orphaned_agents())
        time.sleep(0.3)
        assert not _pids("ray::DashboardAgent --fake-orphan")
        assert _pids("sleep-plain --fake-orphan") == plain and _pids("ray::RuntimeEnvAgent --fake-kept") == kept
    finally:
        raylet.kill()
        subprocess.run(["pkill", "-f", "--", "--fake-"], check=False)
