"""`ray job submit` round trip against a local head on 127.0.0.1 with token authentication."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cli() -> str:
    return str(Path(sys.executable).with_name("ray"))


def test_ray_job_submit_runs_a_sweep_on_a_local_head(tmp_path: Path) -> None:
    # The job's entrypoint runs `python` from PATH: the test's interpreter, even when the venv is not activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    port, dash = free_port(), free_port()
    start = [ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=3"]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        submit = [ray_cli(), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                  "--", "python", "-m", "trainables.sweep", "search_spaces/ehr_ablation.yaml", "--smoke",
                  "--storage", str(tmp_path / "exp")]
        done = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=480)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout
        experiment = tmp_path / "exp" / "ehr_ablation-smoke"
        trials = [p for p in experiment.iterdir() if p.name.startswith("msn_trial")]
        assert len(trials) == 2
        assert all(list(t.glob("probes/epoch_001.json")) for t in trials)
    finally:
        subprocess.run([ray_cli(), "stop", "--force"], env=env, capture_output=True, timeout=120)
