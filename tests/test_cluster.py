"""Two Ray nodes on 127.0.0.1 (a 1-CPU head and a 2-CPU worker node, each with its own temp dir), sweeps sent
with ``ray job submit`` whose trials fit only the worker node:

- everything a trial writes lands in the experiment on the storage: after ``ray stop`` and deleting both temp
  dirs, ``mmsn analyze`` on the storage alone reproduces the ranking, and every trial's TensorBoard events
  are there;
- the worker node's raylet killed mid-trial: the driver says at once which trial waits for what against the
  nodes alive, stops after the grace period (no hang), and the job fails with that reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import free_port, ray_cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class Cluster:
    """A head (1 CPU) and a worker node (2 CPUs), each with its own temp dir."""

    def __init__(self, tmp_path: Path) -> None:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
        # short paths: Ray's unix sockets live under the temp dir, and a socket path has at most 107 bytes
        self.temp = {node: Path(tempfile.mkdtemp(prefix=f"ray{node[0]}", dir="/tmp")) for node in ("head", "worker")}
        self.port, self.dashboard = free_port(), free_port()

    def start(self) -> None:
        head = [ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
                "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard}", "--num-cpus=1",
                f"--temp-dir={self.temp['head']}"]
        worker = [ray_cli(), "start", f"--address=127.0.0.1:{self.port}", "--node-ip-address=127.0.0.1",
                  "--num-cpus=2", f"--temp-dir={self.temp['worker']}"]
        for command in (head, worker):
            subprocess.run(command, check=True, env=self.env, capture_output=True, timeout=180)

    def stop(self) -> None:
        subprocess.run([ray_cli(), "stop", "--force"], env=self.env, capture_output=True, timeout=120)

    def submit(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.submit_command(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def submit_command(self, *args: str) -> list[str]:
        return [ray_cli(), "job", "submit", f"--address=http://127.0.0.1:{self.dashboard}", "--working-dir",
                str(ROOT), "--", "python", "-m", "trainables.sweep", *args]

    def kill_worker_raylet(self) -> int:
        """SIGKILL the worker node's raylet (the process whose command line names the worker's temp dir)."""
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "raylet" in cmd and str(self.temp["worker"]) in cmd:
                os.kill(int(proc.name), signal.SIGKILL)
                return int(proc.name)
        raise AssertionError("no raylet of the worker node found")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        for temp in c.temp.values():
            shutil.rmtree(temp, ignore_errors=True)


def space(tmp_path: Path, name: str, milestones: list[int], steps: int) -> Path:
    """The quickstart smoke corner, 2 arms, trials of 2 CPUs: only the worker node can hold one."""
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    raw["name"] = name
    raw["axes"] = {"ehr.fusion": {"grid": ["none", "concat_anchor"]},
                   "ehr.features": {"grid": [["stay"]], "when": {"ehr.fusion": ["concat_anchor"]}}}
    raw["scheduler"] = {"type": "fifo", "milestones": milestones}
    raw["smoke"]["scheduler"] = {"milestones": milestones}
    raw["smoke"]["set"]["train.max_steps_per_epoch"] = steps
    raw["smoke"]["resources"] = {"workers": 1, "cpus_per_worker": 2, "max_concurrent_trials": 1}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_nodes_everything_on_the_storage_and_a_dead_node_named(cluster: Cluster, tmp_path: Path) -> None:
    """One cluster for both checks (starting one costs ~15 s here)."""
    storage = tmp_path / "storage"
    done = cluster.submit(str(space(tmp_path, "two_nodes", [1, 2], 3)), "--smoke", "--storage", str(storage))
    assert done.returncode == 0 and "succeeded" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    check_dead_node(cluster, tmp_path, storage)
    cluster.stop()
    for temp in cluster.temp.values():  # every node's local files are gone
        shutil.rmtree(temp)
    experiment = storage / "two_nodes-smoke"
    trials = sorted(experiment.glob("msn_trial_*"))
    assert len(trials) == 2
    for t in trials:  # mmsn's events (losses, probe AUROC), written on the worker node, are on the storage
        assert list((t / "tb").glob("events.out.tfevents.*[0-9]")), t.name
        assert {p.name for p in (t / "probes").glob("*.json")} == {"epoch_001.json", "epoch_002.json"}
    again = subprocess.run([sys.executable, "-m", "analysis.cli", str(experiment), "--out", str(tmp_path / "again")],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    before = pd.read_csv(experiment / "analysis" / "ranking.csv")
    pd.testing.assert_frame_equal(before, pd.read_csv(tmp_path / "again" / "ranking.csv"))  # from the storage alone


def check_dead_node(cluster: Cluster, tmp_path: Path, storage: Path) -> None:
    """The worker node's raylet killed mid-trial: the driver names what the trial waits for and stops."""
    command = cluster.submit_command(str(space(tmp_path, "dead_node", [1, 2, 3, 4], 10)), "--smoke", "--storage",
                                     str(storage), "--node-grace", "0.25")
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen(command, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(storage.glob("dead_node-smoke/msn_trial_*/probes/epoch_001.json")):
        assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
        time.sleep(0.5)
    cluster.kill_worker_raylet()  # mid-trial: the trial's node is gone, and no node left can hold 2 CPUs
    code = job.wait(timeout=300)
    log.close()
    out = (tmp_path / "job.log").read_text()
    assert code != 0, out[-3000:]
    assert "NO NODE FITS" in out and "training needs 2 CPUs" in out and "alive nodes: 1 CPU / 0 GPU" in out, \
        out[-3000:]
    assert "stopped: no alive node could hold a trial for 0.25 min" in out and "--resume" in out, out[-3000:]
    assert list(storage.glob("dead_node-smoke/msn_trial_*/probes/epoch_001.json"))  # what was probed is kept
