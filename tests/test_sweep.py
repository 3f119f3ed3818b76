"""End-to-end sweeps on a real local Ray (CPU, gloo): ASHA on probe AUROC with 2 Train workers and a
worker killed mid-run, kill-and-resume, a diverging trial, synchronous halving of arms (interrupted and
resumed), the evaluation protocol's smoke sweep. PBT cloning and pausing trials of two workers runs
through `ray job submit` (tests/test_job_submit.py).
Each sweep runs `python -m trainables.sweep` in its own process, which starts its own local Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces"

pytestmark = pytest.mark.slow


def sweep_cmd(space: str, storage: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "trainables.sweep", str(SPACES / space), "--smoke", "--storage", str(storage),
            *extra]


def run_sweep(space: str, storage: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(sweep_cmd(space, storage, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def trial_dirs(experiment: Path) -> list[Path]:
    return sorted(p for p in experiment.iterdir() if p.is_dir() and p.name.startswith("msn_trial"))


def progress(trial: Path) -> pd.DataFrame:
    return pd.read_json(trial / "result.json", lines=True)


@pytest.fixture
def stale_ray_marker() -> Iterator[None]:
    """The file a killed `ray start --head` leaves behind, naming a cluster that no longer exists: a plain
    ray.init() would try to join it. Restored afterwards."""
    path = Path("/tmp/ray/ray_current_cluster")
    before = path.read_text() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("127.0.0.1:1\n")  # nothing listens on port 1
    try:
        yield
    finally:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(before)


def test_asha_sweep_on_probe_auroc_with_a_quiet_console_and_hparams(tmp_path: Path, stale_ray_marker: None) -> None:
    import yaml

    # The quickstart's smoke corner (one trial at a time, arms in file order) with two of its arms, one worker
    # per trial (trials of two workers, a killed worker and restarts: tests/test_job_submit.py)
    raw = yaml.safe_load((SPACES / "quickstart.yaml").read_text())
    raw["axes"] = {"ehr.fusion": {"choice": ["concat_anchor", "none"]},
                   "ehr.features": {"choice": [["stay"]], "when": {"ehr.fusion": ["concat_anchor"]}}}
    raw["smoke"]["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1}
    space = tmp_path / "quickstart.yaml"
    space.write_text(yaml.safe_dump(raw))
    out = run_sweep(str(space), tmp_path)
    experiment = tmp_path / "quickstart-smoke"
    trials = trial_dirs(experiment)
    assert len(trials) == 2
    epochs = {t.name: progress(t)["epoch"].tolist() for t in trials}
    milestones = [1, 2]
    for series in epochs.values():  # a probe AUROC at every milestone reached, in order
        assert series == milestones[: len(series)]
    # ASHA acted on the probe's val AUROC by its rule: which trials stopped at epoch 1 follows from the
    # values in the order they reached the rung (whether any stops depends on the data; the halving test
    # covers a stop that does not)
    assert {name for name, s in epochs.items() if len(s) < len(milestones)} == asha_stops(trials, rung=1), epochs
    assert any(len(s) == len(milestones) for s in epochs.values())
    for t in trials:
        rows = progress(t)
        assert rows["val_auroc"].between(0, 1).all()
        probes = sorted((t / "probes").glob("epoch_*.json"))
        assert len(probes) == len(rows)
        assert set(json.loads(probes[-1].read_text())) >= {"val", "test", "epoch"}
        assert list((t / "tb").glob("events.out.tfevents.*"))
        # one full checkpoint in the trial directory (Tune's copy of the last milestone; the trial's own
        # states are removed once it ends), an image-encoder export per milestone
        assert len(list(t.rglob("checkpoint.pt"))) == 1
        last = rows.iloc[-1]  # the compute split: epochs + probes + (worker start, state, checkpoints)
        assert 0 < last["train_seconds"] + last["probe_seconds"] < last["trial_seconds"]
        assert sorted(p.name for p in (t / "encoders").glob("*.pth")) == [f"epoch_{e:03d}.pth" for e in rows["epoch"]]
    # one TensorBoard writer per trial for its epochs (one process), and its HParams session
    writers = [len(list((t / "tb").glob("events.out.tfevents.*[0-9]"))) for t in trials]
    assert writers == [1] * len(trials), writers
    assert not list((experiment / "train_runs").iterdir())  # every trial's own state removed as it ended
    check_console(out, trials, budget=40)
    # the reference rows came from a task beside the trials, on the storage before the analysis looked
    assert "references computed beside the trials: EHR only, random init, raw pixels" in out
    check_hparams(experiment, trials, axes={"ehr.fusion", "ehr.features", "train.seed"})
    report = experiment / "analysis"  # the sweep's last step is `mmsn analyze`
    assert {"report.md", "ranking.csv", "trials.parquet", "ranking.png", "val_curves.png", "per_label_diff.png",
            "auroc_vs_compute.png"} <= {p.name for p in report.iterdir()}
    assert f"report: {report / 'report.md'}" in out
    assert not any(experiment.rglob("*patient*"))


def check_console(out: str, trials: list[Path], budget: int) -> None:
    """mmsn's console: no Tune boxes or tables, no Ray internals, a line per milestone and per trial end,
    the ranking and the paths; at most ``budget`` non-blank lines."""
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) <= budget, "\n".join(lines)
    assert not any(c in out for c in "╭│╰") and "started with configuration" not in out  # no boxes
    for noise in ("Checkpoint successfully created", "Reporting training result", "snapshotting",
                  "max_concurrent_trials", "driver_artifacts", "Token authentication"):
        assert noise not in out, noise
    assert sum("val AUROC" in line and "epoch" in line for line in lines) >= len(trials)
    ends = [line for line in lines if "completed (epoch" in line or "stopped by the scheduler" in line]
    assert len(ends) == len(trials), lines
    assert "Arms ranked by test macro AUROC" in out and "best trial" in out and "tensorboard --logdir" in out


def check_hparams(experiment: Path, trials: list[Path], axes: set[str]) -> None:
    """TensorBoard's HParams view: the experiment lists the axes and the metrics, each trial its values (an
    inactive conditional axis as "-"), and the metrics' scalars are in the trial's run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    def plugin_data(run: Path) -> tuple[dict[str, HParamsPluginData], EventAccumulator]:
        acc = EventAccumulator(str(run))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        return {tag: HParamsPluginData.FromString(raw) for tag, raw in content.items()}, acc

    config, _ = plugin_data(experiment / "hparams")
    experiment_info = config["_hparams_/experiment"].experiment
    assert {h.name for h in experiment_info.hparam_infos} == axes
    assert {m.name.tag for m in experiment_info.metric_infos} == {"probe/val_macro_auroc", "probe/test_macro_auroc",
                                                                  "probe/rankme"}
    for t in trials:
        sessions, acc = plugin_data(t / "tb")
        values = sessions["_hparams_/session_start_info"].session_start_info.hparams
        params = json.loads((t / "params.json").read_text())
        assert set(values) == axes
        shown = {k: v.string_value or v.number_value for k, v in values.items()}
        assert shown["ehr.fusion"] == params["ehr.fusion"] and shown["ehr.features"] == str(params["ehr.features"])
        assert {"probe/val_macro_auroc", "probe/test_macro_auroc", "probe/rankme",
                "probe/rankme_untrained"} <= set(acc.Tags()["scalars"])


def asha_stops(trials: list[Path], rung: int, reduction_factor: float = 2) -> set[str]:
    """The trials asynchronous successive halving stops at `rung`: each, as it arrives, against the
    (1 - 1/rf) quantile of the values recorded there before it (Ray's `_Bracket.on_result`)."""
    import numpy as np

    arrivals = []
    for t in trials:  # Tune's log is at-least-once: ASHA saw a trial's first report at the rung
        row = progress(t).drop_duplicates("epoch").set_index("epoch").loc[rung]
        arrivals.append((row["timestamp"], t.name, float(row["val_auroc"])))
    recorded: list[float] = []
    stopped = set()
    for _, name, value in sorted(arrivals):
        if recorded and value < np.nanpercentile(recorded, (1 - 1 / reduction_factor) * 100):
            stopped.add(name)
        recorded.append(value)
    return stopped


def assert_same_weights_as_pretrain(experiment: Path, trials: list[Path]) -> None:
    """One recipe and seed give the same encoder whether a sweep trained it (interrupted, resumed, killed
    and retried) or `mmsn pretrain` did in one go. Both use one thread: float sums in another order differ."""
    import torch

    from mmsn.data.cache import open_cache
    from mmsn.pretrain import pretrain
    from search_spaces.loader import load_space

    space = load_space(experiment / "space.yaml", smoke=True)
    cache = open_cache(Path(json.loads((experiment / "sweep.json").read_text())["cache"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for t in trials:
            cfg = space.config(json.loads((t / "params.json").read_text()))
            pretrain(cfg, cache, experiment.parent / f"pretrain-{t.name}", log=lambda *_: None)
            ours = torch.load(experiment.parent / f"pretrain-{t.name}" / "encoder.pth", weights_only=True)
            theirs = torch.load(t / "encoders" / "epoch_002.pth", weights_only=True)
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), t.name
    finally:
        torch.set_num_threads(threads)


def test_killed_optuna_sweep_resumes_without_running_a_trial_twice(tmp_path: Path) -> None:
    import yaml

    # msn_hpo's smoke corner under FIFO: its ASHA may stop a trial at epoch 1, depending on whether the
    # interrupt came before or after Tune saved the first trial's rung result (ASHA: the ASHA test)
    raw = yaml.safe_load((SPACES / "msn_hpo.yaml").read_text())
    raw["scheduler"]["type"] = "fifo"
    space = tmp_path / "msn_hpo.yaml"
    space.write_text(yaml.safe_dump(raw))
    log = (tmp_path / "first.log").open("w")  # a file, not a pipe: nobody drains a pipe while we wait
    proc = subprocess.Popen(sweep_cmd(str(space), tmp_path, "--name", "resumable"), cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    experiment = tmp_path / "resumable"
    deadline = time.time() + 300
    while time.time() < deadline and not list(experiment.glob("msn_trial_*/probes/epoch_001.json")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(1)
    proc.send_signal(signal.SIGINT)  # Tune saves its state and exits
    proc.wait(timeout=120)
    log.close()
    probed = {p: p.stat().st_mtime_ns for p in experiment.glob("msn_trial_*/probes/epoch_*.json")}
    assert probed
    # one-worker trials train in the trial's process; one of them dies after epoch 1 and Tune retries it
    marker = tmp_path / "killed.txt"
    run_sweep(str(space), tmp_path, "--name", "resumable", "--resume",
              env={"MMSN_TEST_KILL_WORKER": f"0:1:{marker}"})
    assert marker.exists()
    trials = trial_dirs(experiment)
    assert len(trials) == 3  # search.num_samples of the smoke corner: no trial was created twice
    for t in trials:
        epochs = progress(t)["epoch"].tolist()
        assert epochs == [1, 2], (t.name, epochs)  # every milestone reported once, none lost
        kept = [str(c.relative_to(t)) for c in t.rglob("checkpoint.pt")]
        assert len(kept) == 1, kept  # Tune's copy of the last milestone, nothing else
    assert not list((experiment / "train_runs").iterdir())  # the trials' own state, removed as each ended
    # what was probed before the kill is kept, not redone: each trial continued from its checkpoint
    assert {p: p.stat().st_mtime_ns for p in probed} == probed
    assert_same_weights_as_pretrain(experiment, trials)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    # the study in the experiment's journal file (Optuna's storage for shared file systems), resumed whole
    journal = JournalStorage(JournalFileBackend(str(experiment / "optuna.journal")))
    study = optuna.load_study(study_name="msn_hpo", storage=journal)
    assert len(study.trials) == 3


def test_a_diverging_trial_fails_once_with_its_reason_and_the_sweep_goes_on(tmp_path: Path) -> None:
    import yaml

    raw = yaml.safe_load((SPACES / "quickstart.yaml").read_text())
    raw["name"], raw["axes"] = "diverging", {"msn.temperature": {"grid": [0.1, 1.0e-30]}}  # 1e-30: inf at step 0
    raw["scheduler"] = {"type": "fifo", "milestones": [4, 8, 16]}
    raw["budget"] = {"time_budget_s": 0, "max_failures": 1}
    raw["smoke"]["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 1}
    space = tmp_path / "diverging.yaml"
    space.write_text(yaml.safe_dump(raw))
    done = subprocess.run([sys.executable, "-m", "trainables.sweep", str(space), "--smoke", "--storage",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "2 trials (1 failed)" in out and "report:" in out  # the other trial and the analysis went on
    experiment = tmp_path / "diverging-smoke"
    errors = [t for t in trial_dirs(experiment) if (t / "error.txt").exists()]
    assert len(errors) == 1
    error = (errors[0] / "error.txt").read_text()
    assert "step 0: loss is" in error and "Failure # 2" in error  # Tune retried it once (max_failures 1) ...
    # ... and the retry failed from the divergence marker before training: one TensorBoard writer, not two
    assert len(list((errors[0] / "tb").glob("events.out.tfevents.*[0-9]"))) == 1  # (besides its HParams session)
    # the failed trial keeps its own directory for --resume, which finds the marker there and fails it at once
    kept = [p.relative_to(experiment / "train_runs") for p in (experiment / "train_runs").rglob("*") if p.is_file()]
    assert [p.name for p in kept if p.name == "non_finite.txt"] == ["non_finite.txt"]


@pytest.mark.parametrize("kind", ["halving", "racing"])
def test_halving_promotes_whole_arms_by_their_mean_after_every_arm_reached_the_rung(tmp_path: Path, kind: str) -> None:
    """halving keeps the better half of the arms by their mean over seeds; racing stops an arm only when the val
    images show it behind the leader (at alpha 0.001 a smoke run's noise never does: every arm goes on)."""
    import yaml

    raw = yaml.safe_load((SPACES / "quickstart.yaml").read_text())  # 2 arms x 2 seeds, one rung (epoch 1)
    raw["name"], raw["seeds"] = "halving", [0, 1]
    raw["axes"] = {"msn.temperature": {"grid": [0.1, 0.2]}}
    raw["scheduler"] = {"type": kind, "milestones": [1, 2], "reduction_factor": 2, "alpha": 0.001}
    raw["smoke"]["scheduler"] = {"milestones": [1, 2]}
    raw["smoke"]["resources"] = {"workers": 1, "cpus_per_worker": 1, "max_concurrent_trials": 2}
    space = tmp_path / "halving.yaml"
    space.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "trainables.sweep", str(space), "--smoke", "--storage", str(tmp_path)]
    experiment = tmp_path / "halving-smoke"
    # interrupted while some trials wait at the rung: --resume must keep them waiting, not train them on
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and _rung_values(experiment) < 2:  # two trials at the rung, two to come
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    log.close()
    assert "1" not in json.loads((experiment / "halving" / "state.json").read_text())["decided"]
    out = run_sweep(str(space), tmp_path, "--resume")
    state = json.loads((experiment / "halving" / "state.json").read_text())
    # Tune's log is at-least-once: a trial restarted at the rung reports it again (the same values)
    runs = {"_".join(t.name.split("_")[2:4]): progress(t).drop_duplicates("epoch") for t in trial_dirs(experiment)}
    assert len(runs) == 4 and set(state["arms"]) == set(runs)
    rung = state["decided"]["1"]
    by_arm: dict[str, list[float]] = {}
    for trial_id, rows in runs.items():  # the scores are the arms' means over seeds of what Tune logged
        by_arm.setdefault(state["arms"][trial_id], []).append(float(rows.iloc[0]["val_auroc"]))
    assert rung["scores"] == pytest.approx({arm: sum(v) / len(v) for arm, v in by_arm.items()})
    if kind == "halving":
        assert len(rung["scores"]) == 2 and rung["kept"] == [max(rung["scores"], key=rung["scores"].get)]
    else:  # each arm's lag behind the leader, tested on the val images of both seeds, in the experiment
        (arm, test), = rung["tests"].items()
        assert rung["leader"] != arm and test["paired"] and test["seeds"] == 2 and not test["stopped"]
        assert test["p_holm"] >= 0.001 and len(rung["kept"]) == 2
        assert "## Racing decisions" in (experiment / "analysis" / "report.md").read_text()
    for trial_id, rows in runs.items():  # both seeds of an arm share its fate
        kept = state["arms"][trial_id] in rung["kept"]
        assert rows["epoch"].tolist() == ([1, 2] if kept else [1]), (trial_id, rows["epoch"].tolist())
    # synchronous: no trial went past the rung before every trial had reached it; with 4 trials and 2
    # slots, that needs the trials waiting at the rung to have given their slots up
    assert max(rows.iloc[0]["timestamp"] for rows in runs.values()) <= min(
        rows.iloc[1]["timestamp"] for rows in runs.values() if len(rows) > 1)
    assert not list((experiment / "train_runs").iterdir())
    assert all(len(list(t.rglob("checkpoint.pt"))) == 1 for t in trial_dirs(experiment))
    assert "Arms ranked by test macro AUROC" in out


def _rung_values(experiment: Path) -> int:
    try:
        return len(json.loads((experiment / "halving" / "state.json").read_text())["values"])
    except (OSError, ValueError, KeyError):
        return 0


def test_paper_protocol_smoke_ranks_two_datasets_at_three_label_fractions(tmp_path: Path) -> None:
    from mmsn.data.cache import open_cache

    out = run_sweep("paper_protocol.yaml", tmp_path)
    experiment = tmp_path / "paper_protocol-smoke"
    ranking = pd.read_csv(experiment / "analysis" / "ranking.csv")
    cells = {(d, f): part for (d, f), part in ranking.groupby(["eval_dataset", "label_fraction"])}
    assert set(cells) == {(d, f) for d in ("synthetic", "synthetic_b") for f in (0.25, 0.5, 1.0)}
    for (dataset, fraction), part in cells.items():
        arms = dict(zip(part["arm"], part["n_trials"]))
        assert {"none", "concat_anchor:demographic", "random init", "raw pixels", "EHR only"} <= set(arms)
        # one seed; below 1 each label draw is a pseudo-seed of its own, paired across arms and references
        assert arms["none"] == (1 if fraction == 1.0 else 2), (dataset, fraction, arms)
        tested = part[part["arm"] == "concat_anchor:demographic"].iloc[0]
        assert tested["baseline"] == "none" and tested["paired"] and tested["test_method"] == "bootstrap"
    protocol = json.loads((experiment / "sweep.json").read_text())["protocol"]
    primary, transfer = (open_cache(path) for _, path in protocol["targets"])
    assert not set(primary.table["patient_id"]) & set(transfer.table["patient_id"])  # other patients
    for t in trial_dirs(experiment):
        summary = json.loads((t / "probes" / "epoch_002_eval.json").read_text())
        assert len(summary["results"]) == 2 * (2 * 2 + 1)  # datasets x (fractions below 1 x draws + 1)
        assert len(list((t / "probes").glob("epoch_002_eval_*_test.npz"))) == 10
        assert "nih-" not in json.dumps(summary)
    report = (experiment / "analysis" / "report.md").read_text()
    assert "## Evaluation protocol" in report and "protocol_auroc_vs_fraction.png" in report
    assert (experiment / "analysis" / "protocol_auroc_vs_fraction.png").stat().st_size > 10_000
    assert "Arms ranked by test macro AUROC" in out
