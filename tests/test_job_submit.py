"""`ray job submit` round trip against a local head on 127.0.0.1 with token authentication."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port, ray_cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def check_pbt(experiment: Path, out: str, marker: Path) -> None:
    """Synchronous PBT (the pbt.yaml smoke corner, trials of two Ray Train workers): at each milestone both
    trials have reported, so the worse one exploits the better one. PBT's own record (pbt_global.txt) says
    which trial cloned which. Synchronous PBT pauses every trial at the milestone: each restarts from its
    Tune checkpoint (the donor's, for the clone) in a fresh Train run. One worker died once after training
    epoch 2, before its probe (``marker``): Ray Train restarted that worker group from the trial's newest
    state, and it trained epoch 2 again."""
    trials = [p for p in experiment.iterdir() if p.name.startswith("msn_trial")]
    assert len(trials) == 2
    exploits = [json.loads(line) for line in (experiment / "pbt_global.txt").read_text().splitlines() if line]
    assert exploits, out[-2000:]  # [target tag, clone tag, target iteration, clone iteration, donor config, new]
    for target, donor, *_, _donor_config, new in exploits:  # the clone explores the donor's config
        assert target != donor and new["optim.lr"] in {1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3}
    for t in trials:  # every trial finishes its last milestone; epochs only move forward
        epochs = [json.loads(line)["epoch"] for line in (t / "result.json").read_text().splitlines() if line]
        assert epochs[-1] == 2 and epochs == sorted(set(epochs)), epochs
        assert list(t.glob("probes/epoch_002.json"))
        # Tune's copy of its last milestone; none when it cloned its donor at the last milestone (its state is
        # the donor's checkpoint then, and nothing was left to train)
        assert len(list(t.rglob("checkpoint.pt"))) <= 1
    # rank 0's TensorBoard writer of each Train run: one to the first milestone, one after the restart from
    # the Tune checkpoint (none after the last milestone: nothing is left to train), one more for the group
    # restarted after the kill
    assert marker.exists()
    writers = sorted(len(list((t / "tb").glob("events.out.tfevents.*[0-9]"))) for t in trials)
    assert writers == [2, 3], writers
    assert not list((experiment / "train_runs").iterdir())  # each trial's own states went as it finished


def test_ray_job_submit_on_a_two_cpu_head_runs_a_smoke_sweep_and_refuses_a_trial_that_cannot_fit(
        tmp_path: Path) -> None:
    # The job's entrypoint runs `python` from PATH: the test's interpreter, even when the venv is not activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    port, dash = free_port(), free_port()
    start = [ray_cli(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2"]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        submit = [ray_cli(), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", str(ROOT),
                  "--", "python", "-m", "trainables.sweep"]
        too_big = tmp_path / "too_big.yaml"  # the quickstart smoke with 2 x 1-CPU workers: 2.05 CPUs at once
        raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
        raw["smoke"]["resources"] = {"workers": 2, "cpus_per_worker": 1, "max_concurrent_trials": 1}
        too_big.write_text(yaml.safe_dump(raw))
        start_s = time.monotonic()
        refused = subprocess.run([*submit, str(too_big), "--smoke", "--storage", str(tmp_path / "big")], env=env,
                                 capture_output=True, text=True, timeout=240)
        assert refused.returncode != 0 and time.monotonic() - start_s < 90, refused.stdout[-2000:]
        assert "cannot fit" in refused.stdout and "training needs 2.05 CPUs" in refused.stdout, refused.stdout[-2000:]
        # One sweep covers three checks (each costs minutes here): a shipped smoke corner through `ray job
        # submit` on the 2-CPU head, PBT cloning, and trials of two Train workers paused and restarted.
        pbt = tmp_path / "pbt.yaml"
        raw = yaml.safe_load((ROOT / "search_spaces" / "pbt.yaml").read_text())
        # synchronous PBT needs the whole population live: the second trial waits in PENDING for CPUs
        raw["smoke"]["resources"] = {"workers": 2, "cpus_per_worker": 0.95, "gpus_per_worker": 0,
                                     "max_concurrent_trials": 2}
        pbt.write_text(yaml.safe_dump(raw))
        marker = tmp_path / "killed.txt"
        # rank 1 of the first Train run restarted from milestone 1 to train epoch 2 (the last milestone) dies
        # once, before the milestone's probe: rank 0 cannot probe without it (every rank extracts a share of the
        # features). Not in a first run: that one may be past milestone 1 when PBT pauses it, and dies anyway.
        kill = json.dumps({"env_vars": {"MMSN_TEST_KILL_WORKER": f"1:2p:{marker}"}})
        smoke = [*submit[:-4], "--runtime-env-json", kill, *submit[-4:], str(pbt), "--smoke", "--storage",
                 str(tmp_path / "exp")]
        done = subprocess.run(smoke, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout
        check_pbt(tmp_path / "exp" / "pbt-smoke", done.stdout, marker)
    finally:
        subprocess.run([ray_cli(), "stop", "--force"], env=env, capture_output=True, timeout=120)
