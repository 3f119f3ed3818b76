"""Ray agents whose raylet is gone (left by a SIGKILLed sweep driver) are found and removed; nothing
else is: the test plants a fake orphaned agent and a plain process and a fake agent under a raylet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainables.orphans import AGENTS, orphaned_agents, reap_orphaned_agents

ROOT = Path(__file__).resolve().parents[1]


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



def _running(pattern: str) -> set[int]:
    out = subprocess.run(["pgrep", "-u", str(os.getuid()), "-f", pattern], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _agents() -> set[int]:
    return {pid for title in AGENTS for pid in _pids(title)}


START = """
import time
import ray
from search_spaces.loader import load_space
from trainables.sweep import start_ray
start_ray(load_space("search_spaces/quickstart.yaml", smoke=True), None)
ray.get(ray.remote(lambda: 1).remote())  # a worker process too
print("up", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_sigkilled_sweep_driver_leaves_nothing_after_the_next_local_sweep_starts() -> None:
    """The real thing: a local Ray started as a sweep starts it, its driver SIGKILLed, then the next
    sweep's start (what `--resume` runs first) leaves no agent of the dead Ray behind."""
    raylets, agents_before = _running("raylet/raylet"), _agents()
    proc = subprocess.Popen([sys.executable, "-c", START], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert any(line.strip() == "up" for line in proc.stdout), "the Ray of the killed sweep did not start"
        ours, agents = _running("raylet/raylet") - raylets, _agents() - agents_before
        assert ours and agents, "a local Ray runs a raylet, a dashboard agent and a runtime-env agent"
        proc.kill()  # SIGKILL: no atexit, no ray.shutdown()
        proc.wait(timeout=30)
    finally:
        proc.kill()
    deadline = time.time() + 60  # the raylet and GCS notice that their driver is gone
    while time.time() < deadline and ours & _running("raylet/raylet"):
        time.sleep(1)
    assert not ours & _running("raylet/raylet")
    restart = subprocess.run([sys.executable, "-c", START.replace("time.sleep(600)", "ray.shutdown()")], cwd=ROOT,
                             capture_output=True, text=True, timeout=180)
    assert restart.returncode == 0, restart.stderr[-2000:]
    assert not agents & _agents(), restart.stdout  # gone, whether Ray took them down or the start reaped them
    assert not set(orphaned_agents()) - agents_before
