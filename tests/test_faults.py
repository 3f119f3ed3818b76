"""Faults of two kinds: a trial's own is a result (recorded, not retried into the same failure); the
infrastructure's is survived. A full storage (a real small file system) stops the sweep from launching trials
into it: finished trials are kept, the driver exits non-zero naming the path and the free space, and
``--resume`` finishes the sweep once there is room."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_a_trial_fault_is_told_from_an_infrastructure_fault() -> None:
    from trainables.faults import own_fault

    assert own_fault("NonFiniteLossError: step 0: loss is inf (lr 0.0002); lower optim.lr or check the data")
    assert own_fault("ray.exceptions.RayTaskError(NonFiniteLossError): ...")
    assert not own_fault("OSError: [Errno 28] No space left on device: '/storage/x'")
    assert not own_fault("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.")


@pytest.fixture
def small_storage(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 48 MiB tmpfs: a real file system that fills up (skipped where this process cannot mount one)."""
    mount = tmp_path / "storage"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(storage: Path) -> Path:
    """Take every free byte of ``storage`` (what a full disk looks like to the sweep)."""
    filler = storage / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 2**20)
                out.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_a_full_storage_stops_the_sweep_and_resume_finishes_it(small_storage: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())  # its 4 arms, one at a time
    raw["name"] = "full"
    raw["scheduler"] = {"type": "fifo", "milestones": [1, 2]}
    raw["smoke"]["scheduler"] = {"milestones": [1, 2]}
    raw["smoke"]["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1}
    space = tmp_path / "full.yaml"
    space.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "trainables.sweep", str(space), "--smoke", "--storage", str(small_storage)]
    experiment = small_storage / "full-smoke"
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(experiment.glob("msn_trial_*/probes/epoch_002.json")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.2)
    filler = fill(small_storage)  # one trial finished; the disk is full from now on
    code = proc.wait(timeout=300)
    log.close()
    out = (tmp_path / "first.log").read_text()
    assert code == 3, out[-3000:]
    last = out.strip().splitlines()[-3:]
    said = [line for line in last if f"storage full: {small_storage}" in line]
    assert said and "free" in said[0] and "--resume" in said[0], last
    finished = [t for t in experiment.glob("msn_trial_*") if (t / "probes" / "epoch_002.json").is_file()]
    assert finished  # kept
    trials_before = len(list(experiment.glob("msn_trial_*")))
    assert trials_before < 4  # it stopped launching trials into the full disk

    filler.unlink()
    done = subprocess.run([*cmd, "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = sorted(experiment.glob("msn_trial_*"))
    assert len(trials) == 4
    for t in trials:  # every arm reached its last milestone once the disk had room
        epochs = {json.loads(line)["epoch"] for line in (t / "result.json").read_text().splitlines() if line.strip()}
        assert epochs == {1, 2}, (t.name, epochs)
    assert "Arms ranked by test macro AUROC" in done.stdout
