"""benchmarks/gpu_check.sh runs on the GPU machine's image as it is (torch, timm, pandas, pyarrow, scipy,
scikit-learn, tensorboard; no ray, optuna, lightly or torchxrayvision): its --smoke mode, every step at tiny
sizes on the CPU, passes without those packages and fails, naming the package, without timm. The packages
are made unimportable by a sitecustomize the test writes (an environment without them)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

BLOCKER = '''
import os, sys
_blocked = set(os.environ["MMSN_BLOCK"].split(","))
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ImportError(f"{name} is not installed here")
sys.meta_path.insert(0, _Blocker())
'''


def gpu_check(tmp_path: Path, blocked: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "MMSN_BLOCK": blocked}
    return subprocess.run(["bash", "benchmarks/gpu_check.sh", "--smoke", str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_gpu_check_smoke_runs_without_ray_optuna_lightly_and_torchxrayvision(tmp_path: Path) -> None:
    done = gpu_check(tmp_path, "ray,optuna,lightly,torchxrayvision")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "lightly not importable" in done.stdout and "the 1-GPU sweep is skipped" in done.stdout
    epoch = json.loads((tmp_path / "out" / "epoch.json").read_text())
    assert [row["compiled"] for row in epoch["epoch"]] == [False, True] and all(r["img_s"] > 0 for r in epoch["epoch"])
    assert set(epoch["objectives"]) >= {"msn", "byol", "mrm_ehr"} and epoch["probe"]["seconds"] > 0


def test_gpu_check_fails_naming_a_missing_required_package(tmp_path: Path) -> None:
    done = gpu_check(tmp_path, "timm")
    assert done.returncode != 0 and "cannot import timm (required)" in done.stdout
