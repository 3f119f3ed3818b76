"""Bad spaces fail before any data is read or Ray starts, naming the key (and the file); pretrain agrees."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmsn.cli import main as mmsn_main
from mmsn.errors import ConfigError
from search_spaces.loader import HERE, load_space

QUICKSTART = HERE / "quickstart.yaml"


def variant(tmp_path: Path, edit: dict) -> Path:
    """The quickstart space with ``edit`` merged over it (one level deep), written to tmp_path."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    for key, value in edit.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


TYPOS = [
    ({"axes": {"ehr.fusion": {"choice": ["none", "concat_anchr"]}}}, r"ehr.fusion 'concat_anchr'; valid: "),
    ({"base": {"config": "quickstart", "set": {"model.backbone": "vit_nanoo"}}}, r"model.backbone: unknown backbone"),
    ({"axes": {"ehr.fusion": {"choice": ["concat_anchor"]}, "ehr.features": {"choice": [["demografic"]]}}},
     r"ehr.features: unknown EHR feature 'demografic'"),
    ({"resources": {"workers": "two"}}, r"resources.workers: expected an integer, got 'two'"),
    ({"resources": {"workers": 0}}, r"resources.workers: 0: need at least 1"),
    ({"data": {"dataset": "synthetik"}}, r"data.dataset: unknown dataset 'synthetik'"),
    ({"base": {"config": "quickstart", "set": {"objective.name": "supcon_ehr", "supcon.labels": ["sex", "bmi"]}}},
     r"supcon.labels: unknown pseudo-label 'bmi'"),
    # several workers on a fraction of a GPU each: NCCL refuses two ranks on one GPU
    ({"resources": {"workers": 2, "gpus_per_worker": 0.5}},
     r"resources.gpus_per_worker: 0.5 with resources.workers 2: DDP \(NCCL\) needs a whole GPU per worker"),
    ({"resources": {"probe": "aside"}}, r"resources.probe: 'aside'; valid: in_place, beside"),
    ({"resources": {"workers": 1, "probe": "beside"}}, r"resources.probe: beside needs resources.workers >= 2"),
    # a scheduler that pauses a trial at a milestone cannot take a result that comes after it trained on
    ({"resources": {"workers": 2, "probe": "beside"}, "scheduler": {"type": "halving"}},
     r"resources.probe beside with scheduler.type halving: halving pauses trials at milestones"),
]


@pytest.mark.parametrize("edit, message", TYPOS)
def test_space_typos_fail_when_the_space_loads(tmp_path: Path, edit: dict, message: str) -> None:
    path = variant(tmp_path, edit)
    with pytest.raises(ConfigError, match=message) as err:
        load_space(path)
    assert str(path) in str(err.value)


def test_sweep_cli_refuses_a_typo_in_seconds_before_ray_or_data(tmp_path: Path) -> None:
    path = variant(tmp_path, TYPOS[0][0])
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "trainables.sweep", str(path), "--storage", str(tmp_path / "exp")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "concat_anchr" in done.stderr and str(path) in done.stderr, done.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "exp").exists(), "nothing may be written for a refused space"
    assert "ray" not in done.stdout.lower() + done.stderr.lower().replace(str(path).lower(), "")


def test_pretrain_gives_the_same_message(synthetic_cache: Path, tmp_path: Path) -> None:
    code = mmsn_main(["pretrain", "--data", str(synthetic_cache), "--out", str(tmp_path / "run"),
                      "--set", "ehr.features=[demografic]"])
    assert code == 2 and not (tmp_path / "run").exists()


def test_a_trial_that_cannot_fit_is_refused_with_the_numbers() -> None:
    from search_spaces.loader import Resources
    from trainables.resources import Node, unmet

    two_cpus = [Node(2.0, 0.0)]
    problems = unmet(Resources(workers=2, cpus_per_worker=1.0), two_cpus)
    assert len(problems) == 1 and "training needs 2.05 CPUs" in problems[0] and "has 2 CPUs" in problems[0]
    assert "no node has 1 CPUs and 1 GPUs" in " ".join(unmet(Resources(gpus_per_worker=1.0), two_cpus))
    assert unmet(Resources(workers=2, cpus_per_worker=4, gpus_per_worker=1), [Node(8, 1), Node(8, 1)]) == []
    # a one-worker trial trains in its own process (no driver sliver) and probes in place
    assert unmet(Resources(workers=1, cpus_per_worker=2.0), two_cpus, driver=0.0) == []
    assert "training needs 2.05 CPUs" in unmet(Resources(workers=1, cpus_per_worker=2.0), two_cpus)[0]
    # a probe beside the workers holds one more worker's share at once
    beside = unmet(Resources(workers=2, cpus_per_worker=0.95, probe="beside"), two_cpus)
    assert "training needs 2.9 CPUs" in beside[0] and "3 x 0.95 CPU" in beside[0] and "probe task" in beside[0]
    assert unmet(Resources(workers=2, cpus_per_worker=0.6, probe="beside"), two_cpus) == []


@pytest.mark.parametrize("path", sorted(HERE.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_smoke_corner_fits_a_two_cpu_head(path: Path) -> None:
    from trainables.resources import Node, unmet

    assert unmet(load_space(path, smoke=True).resources, [Node(2.0, 0.0)]) == []


def test_a_fractional_trial_is_capped_to_its_share_of_gpu_memory() -> None:
    from trainables.worker import memory_cap

    assert memory_cap(0.25) == 0.25 and memory_cap(1.0) is None and memory_cap(2.0) is None
    assert memory_cap(0.0) is None  # a CPU trial
