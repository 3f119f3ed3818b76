"""A several-worker trial whose milestone probe runs beside its training (``resources.probe: beside``), on a
real local Ray with two gloo Train workers: the workers train on while a Ray task probes the milestone's
state, the scheduler acts on the result when it arrives, and a trial stopped on that late result is really
stopped (its Train run ends: nothing of it trains or writes afterwards)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


class StopTheFirstTrial(FIFOScheduler):  # type: ignore[misc]
    """Stops the first trial that reports, at its first report; every other trial runs to the end. (ASHA's
    stops depend on the values; this one is certain, so the test always has a stopped trial to check.)"""

    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        self.first = self.first or trial.trial_id
        return TrialScheduler.STOP if trial.trial_id == self.first else TrialScheduler.CONTINUE


SWEEP = """import sys
import trainables.sweep as sweep
from tests.test_probe_beside import StopTheFirstTrial
sweep.build_scheduler = lambda *args: StopTheFirstTrial()
sys.exit(sweep.main(sys.argv[1:]))
"""


def epoch_events(trial: Path) -> pd.DataFrame:
    """Rank 0's ``epoch/loss`` scalars of a trial (every Train run's writer): step = epoch, with wall times."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = []
    for events in (trial / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "epoch/loss" in acc.Tags()["scalars"]:
            rows += [(e.step, e.wall_time) for e in acc.Scalars("epoch/loss")]
    return pd.DataFrame(rows, columns=["epoch", "wall_time"])


def test_a_trial_stopped_on_a_late_probe_result_is_really_stopped(tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    raw["axes"] = {"ehr.fusion": {"choice": ["none", "concat_anchor"]},
                   "ehr.features": {"choice": [["stay"]], "when": {"ehr.fusion": ["concat_anchor"]}}}
    # a probe here takes ~11-14 s from its state to its result (a fresh task process, the splits, the fit), an
    # epoch of 2 steps well under 0.5 s: the stopped trial is still training when its first result comes, far
    # short of epoch 150 (it had trained to epoch 61 and 64 in two runs when the stop took effect)
    raw["smoke"]["scheduler"] = {"milestones": [1, 150]}
    raw["smoke"]["set"]["train.max_steps_per_epoch"] = 2
    # two workers and the probe task beside them, 0.6 CPU each, + the driver's 0.05: a 2-CPU node
    raw["smoke"]["resources"] = {"workers": 2, "cpus_per_worker": 0.6, "max_concurrent_trials": 1, "probe": "beside"}
    space = tmp_path / "beside.yaml"
    space.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-c", SWEEP, str(space), "--smoke", "--storage", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    experiment = tmp_path / "quickstart-smoke"
    trials = {t: pd.read_json(t / "result.json", lines=True).drop_duplicates("epoch")
              for t in experiment.glob("msn_trial*")}
    stopped = [t for t, rows in trials.items() if rows["epoch"].tolist() == [1]]
    finished = [t for t, rows in trials.items() if rows["epoch"].tolist() == [1, 150]]
    assert len(stopped) == 1 and len(finished) == 1, {t.name: r["epoch"].tolist() for t, r in trials.items()}
    for t, rows in trials.items():  # every report came from a probe task, some seconds after its state
        assert rows["val_auroc"].between(0, 1).all() and (rows["probe_lag_seconds"] > 0).all(), rows
        assert sorted(p.name for p in (t / "probes").glob("epoch_*[0-9].json")) == [
            f"epoch_{e:03d}.json" for e in rows["epoch"]]
    lag = float(trials[stopped[0]]["probe_lag_seconds"].iloc[0])
    ours, theirs = epoch_events(stopped[0]), epoch_events(finished[0])
    # the workers trained past the milestone while its probe ran: the result came late
    assert ours["epoch"].max() >= 2, (lag, ours)
    # really stopped: short of its full length, and nothing of it trained once the next trial had begun
    assert ours["epoch"].max() < 150 and ours["wall_time"].max() < theirs["wall_time"].min(), (ours, theirs)
    assert sorted(theirs["epoch"]) == list(range(1, 151))
    assert not list((experiment / "train_runs").iterdir())
    assert "stopped by the scheduler" in out and "probed beside training" in out
    print(f"stopped trial: result {lag:.1f} s after its milestone-1 state, trained to epoch {ours['epoch'].max()}")
