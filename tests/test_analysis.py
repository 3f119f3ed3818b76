"""analysis/: the ranking statistics recover planted effects and keep false positives rare, and
``analyze`` reads a fake experiment in the sweep's exact layout (completed, stopped, failed,
running trials) and writes a complete report with no patient or image identifiers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from analysis import stats
from analysis.cli import main as cli_main
from analysis.load import ExperimentInfo, arms_of, error_summary, load_curves, load_scores, load_trials, read_info
from analysis.plots import pareto_front
from analysis.report import analyze, format_ranking, resolve_baseline
from mmsn import metrics
from mmsn.errors import ConfigError, DataError

N_IMAGES, LABELS = 400, ("Atelectasis", "Cardiomegaly", "Edema", "Effusion", "Pneumonia")
SECRETS = ("p10000032", "s50414267", "02aa804e")  # ids planted in an error message; must never leak


def planted(rng: np.random.Generator, y: np.ndarray, signal: float | np.ndarray) -> np.ndarray:
    """(N, L) probe-like scores: each label's target times ``signal`` plus unit Gaussian noise."""
    return (y * np.asarray(signal) + rng.normal(size=y.shape)).astype(np.float32)


def targets(rng: np.random.Generator, n: int = N_IMAGES) -> np.ndarray:
    return (rng.random((n, len(LABELS))) < 0.3).astype(np.int8)


# --- statistics on arrays ------------------------------------------------------------------------


def test_auroc_equals_mann_whitney_with_ties() -> None:
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 300), rng.normal(size=300).round(1)  # rounding makes many ties
    ranks, n_pos = rankdata(s), y.sum()
    expected = (ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos))
    assert metrics.auroc(y, s) == pytest.approx(expected)
    assert math.isnan(metrics.auroc(np.zeros(5), np.arange(5.0)))


def test_identical_score_sets_differ_by_exactly_zero_in_every_draw() -> None:
    rng = np.random.default_rng(1)
    y = targets(rng)
    x = planted(rng, y, 1.0)
    ranking, _ = stats.rank_scores({"none": [x, x], "copy": [x, x]}, y, "none", n_boot=100)
    row = ranking.set_index("arm").loc["copy"]
    assert (row["diff"], row["diff_lo"], row["diff_hi"], row["p"]) == (0.0, 0.0, 0.0, 1.0)
    assert row["verdict"] == stats.NO_EVIDENCE


def test_ranking_recovers_planted_order_and_verdicts() -> None:
    rng = np.random.default_rng(2)
    y = targets(rng)
    arms = {name: [planted(rng, y, signal) for _ in range(3)]
            for name, signal in {"none": 1.0, "helps": 1.4, "hurts": 0.6, "null": 1.0}.items()}
    ranking, _ = stats.rank_scores(arms, y, "none", labels=LABELS, n_boot=400)
    assert ranking["arm"].iloc[0] == "helps" and ranking["arm"].iloc[-1] == "hurts"
    verdicts = dict(zip(ranking["arm"], ranking["verdict"]))
    assert verdicts == {"helps": "better", "hurts": "worse", "null": "no evidence", "none": "baseline"}
    row = ranking.set_index("arm").loc["helps"]
    assert row["ci_lo"] < row["mean"] < row["ci_hi"] and row["diff_lo"] > 0 and row["paired"]


def test_per_label_differences_locate_the_planted_label() -> None:
    rng = np.random.default_rng(3)
    y = targets(rng)
    signal = np.array([2.0, 1.0, 1.0, 1.0, 0.2])  # helps Atelectasis, hurts Pneumonia, else unchanged
    arms = {"none": [planted(rng, y, 1.0) for _ in range(2)], "mixed": [planted(rng, y, signal) for _ in range(2)]}
    _, per_label = stats.rank_scores(arms, y, "none", labels=LABELS, n_boot=300)
    rows = per_label.set_index("label")
    assert rows.loc["Atelectasis", "lo"] > 0 and rows.loc["Pneumonia", "hi"] < 0
    assert rows.loc[["Cardiomegaly", "Edema", "Effusion"], "diff"].abs().max() < 0.05


def test_null_variant_is_declared_better_in_at_most_5_percent_of_draws() -> None:
    """200 independent null experiments (same score distribution, fresh noise), B = 200 each."""
    rng = np.random.default_rng(4)
    verdicts = []
    for draw in range(200):
        y = targets(rng)
        arms = {"none": [planted(rng, y, 1.0)], "null": [planted(rng, y, 1.0)]}
        ranking, _ = stats.rank_scores(arms, y, "none", n_boot=200, seed=draw)
        verdicts.append(ranking.set_index("arm").loc["null", "verdict"])
    better = np.mean([v == "better" for v in verdicts])
    rejected = np.mean([v != "no evidence" for v in verdicts])
    assert better <= 0.05 and rejected <= 0.10, (better, rejected)


def expected_macro_auroc(signal: float, n: int = 400_000) -> float:
    """The population macro AUROC of ``planted`` scores: Phi(signal / sqrt(2)) for unit Gaussian noise."""
    from scipy.stats import norm

    return float(norm.cdf(signal / math.sqrt(2)))


def test_a_true_shift_equal_to_the_stated_mde_is_detected_in_80_percent_of_experiments() -> None:
    """Calibration of the minimum detectable effect: fresh test images and noise each time, one seed per arm,
    paired on images. With a true macro AUROC shift equal to the MDE the analysis states (80 % power at its
    level), the shift is declared in 80 +- 7 % of experiments; with none, in at most 5 %."""
    from scipy.optimize import brentq

    rng = np.random.default_rng(7)
    y = targets(rng)
    pilot, _ = stats.rank_scores({"none": [planted(rng, y, 1.0)], "null": [planted(rng, y, 1.0)]}, y, "none",
                                 n_boot=400)
    mde = float(pilot.set_index("arm").loc["null", "mde"])
    assert 0.01 < mde < 0.2
    base = expected_macro_auroc(1.0)
    signal = brentq(lambda s: expected_macro_auroc(s) - base - mde, 1.0, 3.0)  # the planted shift: exactly the MDE
    rates = {}
    for name, shifted in (("shift", signal), ("null", 1.0)):
        verdicts = []
        for draw in range(200):
            y = targets(rng)
            arms = {"none": [planted(rng, y, 1.0)], "arm": [planted(rng, y, shifted)]}
            ranking, _ = stats.rank_scores(arms, y, "none", n_boot=200, seed=draw)
            verdicts.append(ranking.set_index("arm").loc["arm", "verdict"])
        rates[name] = np.mean([v == stats.BETTER for v in verdicts])
    assert 0.73 <= rates["shift"] <= 0.87 and rates["null"] <= 0.05, rates


def test_seeds_needed_for_an_effect_follow_the_seed_and_image_spread() -> None:
    spread = stats.Spread(se=0.02, se_images=0.005, seed_var=0.02**2 * 3 - 0.005**2 * 3, seeds=3)
    k = stats.seeds_for_effect(spread, effect=0.02, level=0.05)
    # at k seeds: se_images^2 + seed_var / k <= (0.02 / 2.80)^2
    assert 0.005**2 + spread.seed_var / k <= (0.02 / 2.8016) ** 2 < 0.005**2 + spread.seed_var / (k - 1)
    assert stats.seeds_for_effect(stats.Spread(0.02, 0.01, 1e-4, 3), 0.02, 0.05) == math.inf  # images too few
    assert math.isnan(stats.seeds_for_effect(stats.Spread(0.02, 0.01, math.nan, 1), 0.02, 0.05))  # one seed


def test_holm_on_known_p_values() -> None:
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    np.testing.assert_allclose(stats.holm([0.6, 0.9]), [1.0, 1.0])  # capped at 1, order kept monotone


def test_bootstrap_p_is_two_sided_and_floored() -> None:
    assert stats.bootstrap_p(np.full(99, 0.1)) == pytest.approx(1 / 100)
    assert stats.bootstrap_p(np.r_[np.full(90, 0.1), np.full(10, -0.1)]) == pytest.approx(0.2)
    assert stats.bootstrap_p(np.r_[np.full(50, 0.1), np.full(50, -0.1)]) == pytest.approx(1.0)


def test_seed_fallback_t_test_and_single_seed() -> None:
    evals = pd.DataFrame({"trial": ["b0", "b1", "b2", "v0", "v1", "v2", "w0"], "epoch": 2,
                          "arm": ["none"] * 3 + ["film:age"] * 3 + ["token:age"],
                          "seed": [0, 1, 2, 0, 1, 2, 0], "value": [0.70, 0.72, 0.71, 0.75, 0.78, 0.76, 0.9]})
    ranking, _ = stats.compare_arms(evals, {"none": "none", "film:age": "none", "token:age": "none"})
    rows = ranking.set_index("arm")
    assert rows.loc["film:age", "test_method"] == stats.SEEDS
    assert rows.loc["film:age", "diff"] == pytest.approx(0.0533, abs=1e-3)
    assert rows.loc["film:age", "verdict"] == "better"  # paired t over 3 seeds, Holm over 1 test
    assert rows.loc["token:age", "verdict"] == "insufficient data"  # one seed, no per-image scores


def test_pareto_front() -> None:
    cost, value = np.array([10.0, 20, 5, 30, 20]), np.array([0.7, 0.8, 0.6, 0.75, 0.79])
    assert pareto_front(cost, value).tolist() == [2, 0, 1]


def test_error_summary_keeps_the_exception_and_drops_ids() -> None:
    text = ("Failure # 1 (occurred at 2026-01-01_00-00-00)\nTraceback (most recent call last):\n"
            '  File "/x/trial.py", line 3, in f\nmmsn.errors.DataError: cannot read image '
            "/data/mimic/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg\n")
    summary = error_summary(text)
    assert summary.startswith("mmsn.errors.DataError: cannot read image")
    assert not any(s in summary for s in SECRETS)


def test_baseline_is_matched_within_each_setting() -> None:
    trials = pd.DataFrame({"variant": ["none", "film:age", "none", "film:age"], "fusion": ["none", "film"] * 2,
                           "context": ["model.backbone=t"] * 2 + ["model.backbone=s"] * 2,
                           "arm": ["none [t]", "film:age [t]", "none [s]", "film:age [s]"]})
    assert resolve_baseline(trials, trials, "fusion=none") == {
        "none [t]": "none [t]", "film:age [t]": "none [t]", "none [s]": "none [s]", "film:age [s]": "none [s]"}
    with pytest.raises(ConfigError, match="matches no trial"):
        resolve_baseline(trials, trials, "fusion=token")
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_baseline(trials, trials, "colour=red")


# --- a fake experiment in the sweep's layout -----------------------------------------------------

SPACE_YAML = """\
name: fake
description: Which EHR subset, fused how, helps MSN? (planted effects)
base: {config: quickstart}
axes:
  ehr.fusion: {choice: [none, film, concat_anchor, token]}
  ehr.features:
    choice: [[demographic], [scan], [stay], [all]]
    when: {ehr.fusion: [film, concat_anchor, token]}
seeds: [0, 1]
search: {algorithm: grid}
scheduler: {type: asha, milestones: [1, 2], reduction_factor: 2}
"""
ERROR_TXT = ("Failure # 1 (occurred at 2026-01-01_00-10-00)\nray::ImplicitFunc.train() (pid=1, ip=10.0.0.1)\n"
             '  File "/opt/trainables/trial.py", line 90, in msn_trial\nmmsn.errors.DataError: cannot read image '
             "/data/mimic/files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg\n")
# (fusion, features, seed, Tune status, epochs reached, signal at the last epoch, npz epochs missing)
FAKE_TRIALS = [
    ("none", "-", 0, "TERMINATED", 2, 1.0, ()), ("none", "-", 1, "TERMINATED", 2, 1.0, ()),
    ("film", "demographic", 0, "TERMINATED", 2, 1.6, ()), ("film", "demographic", 1, "TERMINATED", 2, 1.6, ()),
    ("concat_anchor", "scan", 0, "TERMINATED", 2, 0.4, ()), ("concat_anchor", "scan", 1, "TERMINATED", 2, 0.4, ()),
    ("concat_anchor", "stay", 0, "TERMINATED", 2, 1.0, ()), ("concat_anchor", "stay", 1, "TERMINATED", 2, 1.0, (2,)),
    ("token", "all", 0, "TERMINATED", 1, 0.9, ()), ("token", "all", 1, "RUNNING", 1, 0.9, ()),
    ("token", "scan", 0, "ERROR", 1, 1.0, ()), ("token", "scan", 1, "PENDING", 0, 1.0, ()),
]


def _probe(y: np.ndarray, scores: np.ndarray, split: str) -> dict[str, object]:
    per = {name: metrics.auroc(y[:, j], scores[:, j]) for j, name in enumerate(LABELS)}
    macro = float(np.mean(list(per.values())))
    return {"macro_auroc": macro, "macro_ci": [macro - 0.03, macro + 0.03],
            "per_label": {k: {"auroc": v, "ci": [v - 0.05, v + 0.05]} for k, v in per.items()},
            "l2": 1.0, "sizes": {"train": 800, split: len(y)}, "label_fraction": 1.0, "split": split, "seconds": 0.1}


def _write_trial(exp: Path, i: int, spec: tuple, y: np.ndarray, y_val: np.ndarray) -> tuple[str, str]:
    fusion, features, seed, status, epochs, signal, no_npz, *objective = spec
    trial_id = f"abcde_{i:05d}"
    config = {"ehr.fusion": fusion, "ehr.features": features, "train.seed": seed,
              **({"objective.name": objective[0]} if objective else {})}
    variant = "none" if fusion == "none" else f"{fusion}:{features}"
    name = f"msn_trial_{trial_id}_{i}_params=ehr_fusion_{fusion}_train_seed_{seed}_2026-01-01_00-00-{i:02d}"
    rng = np.random.default_rng(100 + i)
    last: dict[str, object] = {}
    if status != "PENDING":
        (exp / name / "probes").mkdir(parents=True)
        lines = []
        for epoch in range(1, epochs + 1):
            s = signal * (0.6 + 0.2 * epoch)  # the probe gets better with pretraining
            scores, val = planted(rng, y, s), planted(rng, y_val, s)
            if epoch not in no_npz:
                np.savez_compressed(exp / name / "probes" / f"epoch_{epoch:03d}_test.npz", scores=scores, targets=y)
            # RankMe grows with the signal; the encoder started at 3.0 (the weak arm falls below it)
            probe = {"epoch": epoch, "val": _probe(y_val, val, "val"), "test": _probe(y, scores, "test"),
                     "rankme": 1.0 + 4.0 * s}
            (exp / name / "probes" / f"epoch_{epoch:03d}.json").write_text(json.dumps(probe))
            last = {"val_auroc": probe["val"]["macro_auroc"], "rankme": probe["rankme"], "rankme_untrained": 3.0,
                    "epoch": epoch, "loss": 3.0 / epoch,
                    "train_seconds": 9.0, "probe_seconds": 1.0, "trial_seconds": 10.0 * epoch,
                    "gpu_seconds": 5.0 * epoch, "variant": variant, "trial_id": trial_id, "config": config,
                    "training_iteration": epoch, "time_total_s": 10.0 * epoch}
            lines.append(json.dumps(last))
        (exp / name / "result.json").write_text("\n".join(lines) + "\n")
        if status == "ERROR":
            (exp / name / "error.txt").write_text(ERROR_TXT)
    trial = {"trial_id": trial_id, "status": status, "config": config, "relative_logdir": name}
    runtime = {"error_filename": "error.txt" if status == "ERROR" else None, "num_failures": int(status == "ERROR"),
               "last_result": last}
    return json.dumps(trial), json.dumps(runtime)


def make_experiment(root: Path, specs: list[tuple] = FAKE_TRIALS, space: str = SPACE_YAML) -> Path:
    """By default 12 trials: planted better (film:demographic) and worse (concat_anchor:scan)
    variants, a null one whose seed-1 npz is missing, a stopped and a running trial, a failed and a
    pending one."""
    exp = root / "fake-exp"
    exp.mkdir()
    (exp / "sweep.json").write_text(json.dumps({"space": "/x/fake.yaml", "name": "fake", "smoke": False,
                                                "cache": "/data/cache/mimic", "metric": "val_auroc",
                                                "mode": "max", "milestones": [1, 2]}))
    (exp / "space.yaml").write_text(space)
    rng = np.random.default_rng(7)
    y, y_val = targets(rng), targets(rng, 200)
    data = [_write_trial(exp, i, spec, y, y_val) for i, spec in enumerate(specs)]
    (exp / "experiment_state-2026-01-01_00-00-00.json").write_text(
        json.dumps({"trial_data": data, "runner_data": {}, "stats": {}}))
    return exp


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    return make_experiment(tmp_path)


def test_load_trials_statuses_reasons_and_columns(experiment: Path) -> None:
    trials = load_trials(experiment).set_index(["variant", "seed"])
    status = trials["status"].to_dict()
    assert status[("none", 0)] == "completed" and status[("token:all", 0)] == "stopped_early"
    assert status[("token:all", 1)] == "unfinished" and status[("token:scan", 0)] == "failed"
    assert status[("token:scan", 1)] == "unfinished"
    reasons = trials["stop_reason"].to_dict()
    assert reasons[("token:all", 0)] == "stopped by scheduler (asha) at epoch 1 of 2"
    assert reasons[("token:scan", 0)].startswith("failed: mmsn.errors.DataError: cannot read image")
    assert reasons[("token:scan", 1)] == "not started (PENDING)"
    assert math.isnan(trials.loc[("none", 0), "ehr.features"])  # "-" (inactive axis) -> NaN
    assert {f"test_auroc/{label}" for label in LABELS} <= set(trials.columns)
    assert trials.loc[("none", 0), "gpu_seconds"] == 10.0 and trials.loc[("none", 0), "epoch"] == 2
    assert not any(s in " ".join(trials["stop_reason"]) for s in SECRETS)


def test_load_curves_and_scores(experiment: Path) -> None:
    curves = load_curves(experiment)
    assert len(curves) == 2 * 8 + 3  # 8 trials reached epoch 2, three stopped at 1, one never started
    assert {"trial", "variant", "epoch", "val_auroc", "trial_seconds"} <= set(curves.columns)
    trial = load_trials(experiment).set_index(["variant", "seed"]).loc[("concat_anchor:stay", 1), "trial"]
    scores, y = load_scores(experiment, "abcde_00000")
    assert scores.shape == y.shape == (N_IMAGES, len(LABELS)) and scores.dtype == np.float32
    with pytest.raises(DataError, match="no test scores at epoch 2"):
        load_scores(experiment, trial)


def test_statuses_without_tune_state(experiment: Path) -> None:
    next(experiment.glob("experiment_state-*.json")).unlink()  # a sweep that has not saved its state yet
    trials = load_trials(experiment).set_index(["variant", "seed"])
    assert trials.loc[("token:scan", 0), "status"] == "failed"  # error.txt alone says so
    assert trials.loc[("token:all", 0), "status"] == "unfinished"
    assert trials.loc[("none", 0), "status"] == "completed"


def _text_outputs(out: Path) -> str:
    texts = [p.read_text() for p in out.iterdir() if p.suffix in (".md", ".csv")]
    return "\n".join(texts + [pd.read_parquet(out / "trials.parquet").to_csv()])


def test_analyze_end_to_end(experiment: Path) -> None:
    result = analyze(experiment, n_boot=300)
    out = experiment / "analysis"
    names = {"report.md", "ranking.csv", "per_label.csv", "trials.parquet", "ranking.png", "val_curves.png",
             "per_label_diff.png", "auroc_vs_compute.png"}
    assert names <= {p.name for p in out.iterdir()} and result.report == out / "report.md"
    assert all((out / n).stat().st_size > 5_000 for n in names if n.endswith(".png"))
    assert not list(experiment.glob(".analysis*"))  # no temp dir left behind
    rows = result.ranking.set_index("arm")
    assert rows.loc["film:demographic", "verdict"] == "better" and rows.loc["concat_anchor:scan", "verdict"] == "worse"
    assert rows.loc["concat_anchor:stay", "test_method"] == "seeds"  # seed-1 npz missing at epoch 2
    assert rows.loc["token:all", "compared_at_epoch"] == "1" and rows.loc["token:all", "test_method"] == "bootstrap"
    assert "token:scan" not in rows.index  # failed: reported, not ranked
    assert result.ranking["arm"].iloc[0] == "film:demographic"
    report = result.report.read_text()
    for heading in ("**Question.** Which EHR subset", "## Ranking", "## Verdicts", "## Stopped early",
                    "## Compute spent", "## Missing, failed and unfinished", "## Statistical method",
                    "![ranking](ranking.png)", "the grid has 26 trials; 12 were found", "Val-vs-test agreement",
                    "Ordering check: each difference has the sign"):
        assert heading in report
    assert not any(secret in _text_outputs(out) for secret in SECRETS)
    assert "film:demographic" in format_ranking(result.ranking)
    # every tested comparison states what it could have detected, and a "no evidence" says so
    csv = pd.read_csv(out / "ranking.csv").set_index("arm")
    tested = csv["p_holm"].notna()
    assert csv.loc[tested, "mde"].gt(0).all() and csv.loc[~tested, "mde"].isna().all()
    assert {"seeds_for_effect"} <= set(csv.columns)  # (vs_pixels_mde and the like when references exist)
    silent = csv[csv["verdict"] == "no evidence"]
    for arm, row in silent.iterrows():
        assert f"no evidence: below the detectable effect of {row['mde']:.3f}" in report, arm
    assert "MDE (80 %)" in report and "seeds for +0.020" in report


def test_rankme_beside_the_probe_with_its_collapse_floor_and_agreement(experiment: Path) -> None:
    result = analyze(experiment, n_boot=200)
    trials = result.trials.set_index(["variant", "seed"])
    assert trials.loc[("film:demographic", 0), "rankme"] > trials.loc[("none", 0), "rankme"]
    assert trials.loc[("none", 0), "rankme_untrained"] == 3.0
    report = result.report.read_text()
    section = report[report.index("## RankMe (label-free)"):]
    assert "1 arm(s) below their untrained encoder's RankMe" in section and "concat_anchor:scan" in section
    rho = float(section.split("Spearman rho ")[1].split(" ")[0])
    assert rho > 0.5  # planted: RankMe and val AUROC both follow the signal


def test_an_effect_outside_0_1_is_refused(experiment: Path) -> None:
    assert cli_main([str(experiment), "--effect", "1.5"]) == 2
    assert not (experiment / "analysis").exists()


def test_analyze_val_metric_and_custom_baseline(experiment: Path, tmp_path: Path) -> None:
    result = analyze(experiment, out=tmp_path / "val", metric="val_auroc", baseline="concat_anchor:stay", n_boot=50)
    rows = result.ranking.set_index("arm")
    assert rows.loc["concat_anchor:stay", "verdict"] == "baseline"
    assert set(rows["test_method"]) <= {"seeds", ""}


def test_a_crash_leaves_the_previous_analysis_intact(experiment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    analyze(experiment, n_boot=50)
    before = (experiment / "analysis" / "report.md").read_text()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("analysis.plots.plot_compute", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        analyze(experiment, n_boot=50, seed=1)
    assert (experiment / "analysis" / "report.md").read_text() == before
    assert not list(experiment.glob(".analysis*"))


def test_errors_name_the_problem(tmp_path: Path, experiment: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no trials found"):
        analyze(tmp_path / "empty")
    with pytest.raises(DataError, match="not a directory"):
        analyze(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="--metric"):
        analyze(experiment, metric="loss")
    with pytest.raises(ConfigError, match="matches no trial"):
        analyze(experiment, baseline="fusion=lstm")


def test_cli_prints_ranking_and_report_path(experiment: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([str(experiment), "--out", str(tmp_path / "cli"), "--n-boot", "50"]) == 0
    printed = capsys.readouterr().out
    assert "film:demographic" in printed and f"report: {tmp_path / 'cli' / 'report.md'}" in printed
    assert cli_main([str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_analysis_imports_neither_ray_nor_optuna() -> None:
    code = ("import sys, analysis.report, analysis.cli; "
            "sys.exit(any(m.split('.')[0] in ('ray', 'optuna') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("tied", [False, True])
def test_resampled_auroc_equals_ranking_each_resample(tied: bool) -> None:
    """The counts-based AUROC of a resample equals the rank formula on the explicitly drawn images."""
    rng = np.random.default_rng(5)
    y, s = rng.random(300) < 0.3, rng.normal(size=300)
    if tied:
        s = s.round(1)
    counts = metrics.resample_counts(rng, 300, 20)
    got = metrics.weighted_auroc(counts, y, s)
    for row, value in zip(counts, got):
        idx = np.repeat(np.arange(300), row)
        ranks, yy = rankdata(s[idx]), y[idx]
        n_pos = yy.sum()
        assert value == pytest.approx((ranks[yy].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(yy) - n_pos)))


def test_an_experiment_where_everything_failed_still_gets_a_report(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path, [("none", "-", 0, "ERROR", 1, 1.0, ()), ("film", "scan", 0, "ERROR", 0, 1.0, ())])
    result = analyze(exp, n_boot=20)
    assert result.ranking.empty and format_ranking(result.ranking) == "(nothing ranked yet)"
    assert "nothing to rank" in result.report.read_text() and (exp / "analysis" / "ranking.png").exists()


def _space(tmp_path: Path, axes: str, search: str) -> ExperimentInfo:
    """The ExperimentInfo of an experiment whose space has these axes (the loader defines the arms)."""
    text = f"base: {{config: quickstart}}\naxes:\n{axes}\nsearch: {{algorithm: {search}}}\n"
    (tmp_path / "space.yaml").write_text(text)
    return read_info(tmp_path)


def test_grid_axes_beyond_ehr_split_arms_but_tuned_axes_are_pooled(tmp_path: Path) -> None:
    axes = ("  ehr.fusion: {choice: [none, film]}\n  model.backbone: {choice: [vit_nano, vit_micro]}\n"
            "  optim.lr: {choice: [1.0e-3, 2.0e-3]}\n")
    params = [{"ehr.fusion": f, "model.backbone": b, "optim.lr": lr}
              for b, lr in (("vit_nano", 1e-3), ("vit_micro", 2e-3)) for f in ("none", "film")]
    info = _space(tmp_path, axes, "grid")
    grid = [arms_of(p, None, info) for p in params]
    nano, micro = "model.backbone=vit_nano, optim.lr=0.001", "model.backbone=vit_micro, optim.lr=0.002"
    assert [a.arm for a in grid] == [f"none [{nano}]", f"film:demographic [{nano}]", f"none [{micro}]",
                                     f"film:demographic [{micro}]"]
    assert [a.context for a in grid[:2]] == [nano] * 2
    assert [a.ehr_free for a in grid] == [grid[0].arm, grid[0].arm, grid[2].arm, grid[2].arm]
    assert [a.vanilla for a in grid] == [None] * 4  # one objective: no objectives-vs-MSN question
    tuned = _space(tmp_path, axes, "optuna")
    assert [arms_of(p, None, tuned).arm for p in params] == ["none", "film:demographic"] * 2


def test_objectives_are_never_pooled_even_by_a_tuned_search(tmp_path: Path) -> None:
    axes = ("  objective.name: {choice: [msn, dino]}\n  ehr.fusion: {choice: [none, concat_anchor]}\n"
            "  optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n")
    params = [{"objective.name": o, "ehr.fusion": f, "optim.lr": lr}
              for o, lr in (("msn", 1e-3), ("dino", 3e-3)) for f in ("none", "concat_anchor")]
    for search in ("optuna", "random"):
        info = _space(tmp_path, axes, search)
        arms = [arms_of(p, None, info) for p in params]
        assert [a.arm for a in arms] == [f"{v} [objective.name={o}]" for o in ("msn", "dino")
                                         for v in ("none", "concat_anchor:demographic")]
        assert {a.vanilla for a in arms} == {"none [objective.name=msn]"}


def test_ehr_targets_are_measured_against_their_ehr_free_relatives(tmp_path: Path) -> None:
    """mrm_ehr against mae, msn_supcon against msn, supcon_ehr against SupCon with image labels."""
    (tmp_path / "space.yaml").write_text(Path("search_spaces/objectives.yaml").read_text())
    info = read_info(tmp_path)
    cases = {"mrm_ehr": "none [objective.name=mae]", "msn_supcon": "none [objective.name=msn]",
             "supcon_ehr": "none [objective.name=supcon_ehr]"}
    for objective, counterpart in cases.items():
        arm = arms_of({"objective.name": objective, "train.seed": 0}, None, info)
        assert arm.ehr_free == counterpart and arm.vanilla == "none [objective.name=msn]"
        assert arm.variant != "none" and arm.fusion == "none"
    fused = arms_of({"objective.name": "mae", "ehr.fusion": "concat_anchor"}, None, info)
    assert fused.arm == "concat_anchor:demographic [objective.name=mae]"
    assert fused.ehr_free == "none [objective.name=mae]"
    assert info.space is not None and info.space.expected_trials() == 32  # 16 arms x 2 seeds


OBJECTIVES_YAML = """\
name: fake-objectives
description: Which objective, with which use of the EHR, is best? (planted effects)
base: {config: quickstart, set: {ehr.fusion: none}}
axes:
  objective.name: {grid: [msn, dino, mae, mrm_ehr, msn_supcon]}
  ehr.fusion: {grid: [none, concat_anchor], when: {objective.name: [msn]}}
seeds: [0, 1]
search: {algorithm: grid}
scheduler: {type: fifo, milestones: [1, 2]}
"""
# objective, fusion, signal: mrm_ehr beats both mae (its EHR-free relative) and MSN; DINO trails MSN
OBJECTIVE_TRIALS = [("msn", "none", 1.0), ("msn", "concat_anchor", 1.0), ("dino", "none", 0.5),
                    ("mae", "none", 1.0), ("mrm_ehr", "none", 1.8), ("msn_supcon", "none", 1.0)]


def test_report_answers_both_questions_side_by_side(tmp_path: Path) -> None:
    specs = [(fusion, "demographic" if fusion != "none" else "-", seed, "TERMINATED", 2, signal, (), objective)
             for objective, fusion, signal in OBJECTIVE_TRIALS for seed in (0, 1)]
    result = analyze(make_experiment(tmp_path, specs, OBJECTIVES_YAML), n_boot=300)
    rows = result.ranking.set_index("arm")
    mrm, msn, mae = "record:all [objective.name=mrm_ehr]", "none [objective.name=msn]", "none [objective.name=mae]"
    assert rows.loc[mrm, "baseline"] == mae and rows.loc[mrm, "verdict"] == "better"
    assert rows.loc[mrm, "vs_msn_baseline"] == msn and rows.loc[mrm, "vs_msn_verdict"] == "better"
    assert rows.loc["none [objective.name=dino]", "verdict"] == "baseline"  # dino is its own EHR-free arm
    assert rows.loc["none [objective.name=dino]", "vs_msn_verdict"] == "worse"
    assert rows.loc["labels:sex+age [objective.name=msn_supcon]", "baseline"] == msn
    assert rows.loc[msn, "vs_msn_verdict"] == "baseline"
    report = result.report.read_text()
    assert "## Two questions side by side" in report and f"EHR helps: `{mrm}`" in report
    assert f"Better than vanilla MSN: `{mrm}`" in report and "the grid has 12 trials" not in report
    assert {"vs_msn_diff", "vs_msn_p_holm"} <= set(pd.read_csv(result.out / "ranking.csv").columns)


REFERENCE_SPACE = """\
name: fake-refs
description: Does fusion help, and does anything beat the references?
base: {config: quickstart, set: {views.size: 32, views.focal_size: 16, model.backbone: vit_nano, probe.bootstrap: 50}}
axes:
  ehr.fusion: {choice: [none, concat_anchor]}
seeds: [0, 1]
search: {algorithm: grid}
scheduler: {type: fifo, milestones: [1]}
"""


def test_reference_rows_are_computed_once_and_paired_with_the_arms(tmp_path: Path, synthetic_cache: Path) -> None:
    """random init, raw pixels and EHR only on the sweep's real cache, same test images as the trials."""
    from mmsn.data.cache import open_cache

    cache = open_cache(synthetic_cache)
    y = cache.label_matrix(cache.rows("test")).astype(np.int8)
    strong = np.where(y.mean(0) > 0, 25.0, 0.0)  # far above any reference, on every label with positives
    exp = tmp_path / "exp"
    (exp / "references").mkdir(parents=True)
    (exp / "space.yaml").write_text(REFERENCE_SPACE)
    (exp / "sweep.json").write_text(json.dumps({"name": "fake-refs", "smoke": False, "cache": str(synthetic_cache),
                                                "metric": "val_auroc", "milestones": [1]}))
    rng = np.random.default_rng(0)
    for i, (fusion, seed) in enumerate((f, s) for f in ("none", "concat_anchor") for s in (0, 1)):
        trial = exp / f"trial_abcde_{i:05d}_{i}"
        (trial / "probes").mkdir(parents=True)
        scores = planted(rng, y, strong)
        np.savez_compressed(trial / "probes" / "epoch_001_test.npz", scores=scores, targets=y)
        probe = {"epoch": 1, "val": {"macro_auroc": 0.9}, "test": _probe_named(y, scores, cache.labels)}
        (trial / "probes" / "epoch_001.json").write_text(json.dumps(probe))
        config = {"ehr.fusion": fusion, "train.seed": seed}
        (trial / "result.json").write_text(json.dumps({"epoch": 1, "val_auroc": 0.9, "config": config}) + "\n")
    result = analyze(exp, n_boot=100)
    rows = result.ranking.set_index("arm")
    assert {"random init", "raw pixels", "EHR only"} <= set(rows.index)
    assert set(rows.loc[["random init", "raw pixels", "EHR only"], "verdict"]) == {"reference"}
    assert rows.loc["none", "vs_pixels_verdict"] == "better" and rows.loc["none", "vs_random_verdict"] == "better"
    assert rows.loc["none", "vs_pixels_test_method"] == "bootstrap"  # paired image by image with the reference
    assert rows.loc["none", "vs_pixels_mde"] > 0  # what the comparison with the reference could detect
    assert 0.3 < rows.loc["raw pixels", "mean"] < 0.9 and rows.loc["concat_anchor:demographic", "baseline"] == "none"
    stamps = {p.name: p.stat().st_mtime_ns for p in (exp / "references").iterdir()}
    assert {"random_init.json", "raw_pixels_test.npz", "ehr_only.json"} <= set(stamps)
    report = result.report.read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("- Better than raw pixels: "))
    assert "## Against the references" in report and {"`none`", "`concat_anchor:demographic`"} <= set(
        line.split(": ", 1)[1].split("; ")[0].split(", "))
    analyze(exp, n_boot=100)  # reused, not recomputed
    assert {p.name: p.stat().st_mtime_ns for p in (exp / "references").iterdir()} == stamps


def _probe_named(y: np.ndarray, scores: np.ndarray, labels: tuple[str, ...]) -> dict[str, object]:
    per = {name: metrics.auroc(y[:, j], scores[:, j]) for j, name in enumerate(labels)}
    values = [v for v in per.values() if not math.isnan(v)]
    return {"macro_auroc": float(np.mean(values)),
            "per_label": {k: {"auroc": None if math.isnan(v) else v} for k, v in per.items()}}


def test_stopped_arms_follow_full_length_ones_so_order_agrees_with_paired_differences() -> None:
    """A stopped arm's early mean may exceed the full-length baseline's, though it was worse when paired."""
    evals = pd.DataFrame({
        "trial": ["b0", "b1", "b0", "b1", "s0", "s1", "f0", "f1", "f0", "f1"],
        "arm": ["none"] * 4 + ["scan"] * 2 + ["stay"] * 4, "seed": [0, 1] * 5,
        "epoch": [4, 4, 16, 16, 4, 4, 4, 4, 16, 16],
        "value": [0.62, 0.63, 0.580, 0.581, 0.60, 0.61, 0.55, 0.56, 0.590, 0.591]})
    baseline = {"none": "none", "scan": "none", "stay": "none"}
    ranking, _ = stats.compare_arms(evals, baseline)
    assert ranking["arm"].tolist() == ["stay", "none", "scan"]  # scan's 0.605 at epoch 4 ranks after both
    assert ranking["full_length"].tolist() == [True, True, False]
    rows = ranking.set_index("arm")
    assert rows.loc["scan", "diff"] < 0 and rows.loc["scan", "mean"] > rows.loc["none", "mean"]
    assert not stats.contradictions(ranking)
    by_mean = ranking.sort_values("mean", ascending=False).assign(rank=[1, 2, 3])  # the old order
    assert stats.contradictions(by_mean) == [
        "scan is listed above none but its paired difference is -0.0200 (at epoch 4, common seeds)"]


PROTOCOL_SPACE = SPACE_YAML.replace("scheduler: {type: asha, milestones: [1, 2], reduction_factor: 2}",
                                    "scheduler: {type: fifo, milestones: [1, 2]}")


def _write_protocol(exp: Path, signals: dict[str, float], n_test: int = 300) -> None:
    """Protocol files at epoch 2 in every trial that reached it, as the sweep writes them: datasets
    "fake" (primary) and "other" at fractions 0.1 (2 draws) and 1.0; at 0.1 label Edema has no train
    positive (NaN scores). ``signals``: variant -> signal on the "other" dataset."""
    sweep = json.loads((exp / "sweep.json").read_text())
    sweep["protocol"] = {"targets": [["fake", "/no/cache"], ["other", "/no/other"]], "fractions": [0.1, 1.0],
                         "draws": 2}
    (exp / "sweep.json").write_text(json.dumps(sweep))
    rng = np.random.default_rng(11)
    y = targets(rng, n_test)
    for trial_dir in sorted(exp.glob("msn_trial_*")):
        result = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        if result[-1]["epoch"] != 2:
            continue
        signal, results = signals[result[-1]["variant"]], []
        for dataset in ("fake", "other"):
            for fraction, draws in ((0.1, 2), (1.0, 1)):
                for draw in range(draws):
                    scores = planted(rng, y, (signal if dataset == "other" else 1.0) * (0.7 if fraction < 1 else 1))
                    if fraction < 1:
                        scores[:, LABELS.index("Edema")] = np.nan
                    name = f"{dataset}_f{fraction:g}_d{draw}"
                    np.savez_compressed(trial_dir / "probes" / f"epoch_002_eval_{name}_test.npz", scores=scores,
                                        targets=y)
                    probe = _probe_named(y, np.nan_to_num(scores), LABELS)
                    results.append({"dataset": dataset, "fraction": fraction, "draw": draw, "seed": draw,
                                    "val": probe, "test": probe})
        (trial_dir / "probes" / "epoch_002_eval.json").write_text(json.dumps(
            {"epoch": 2, "results": results, "labels": {"fake": list(LABELS), "other": list(LABELS[:4])},
             "seconds": 2.5}))


def test_the_protocol_is_ranked_per_dataset_and_fraction_with_draws_paired(tmp_path: Path) -> None:
    exp = make_experiment(tmp_path, FAKE_TRIALS[:8], PROTOCOL_SPACE)
    _write_protocol(exp, {"none": 1.0, "film:demographic": 1.8, "concat_anchor:scan": 1.0,
                          "concat_anchor:stay": 1.0})
    result = analyze(exp, n_boot=200, references=False)
    ranking = pd.read_csv(result.out / "ranking.csv")
    cells = set(zip(ranking["eval_dataset"], ranking["label_fraction"]))
    assert cells == {("fake", 1.0), ("fake", 0.1), ("other", 0.1), ("other", 1.0)}  # primary once, at 1.0
    rows = ranking.set_index(["eval_dataset", "label_fraction", "arm"])
    assert rows.loc[("other", 1.0, "film:demographic"), "verdict"] == "better"
    assert rows.loc[("fake", 0.1, "none"), "n_trials"] == 4  # 2 seeds x 2 label draws
    paired = rows.loc[("other", 0.1, "concat_anchor:stay")]
    assert paired["paired"] and paired["n_pairs"] == 4 and paired["test_method"] == "bootstrap"  # (seed, draw) pairs
    # Edema had no train positive at 0.1: missing (NaN), so the macro is over the other labels, not pulled to 0.5
    assert rows.loc[("fake", 0.1, "none"), "mean"] > 0.6
    report = result.report.read_text()
    assert "## Evaluation protocol" in report and "other @ 0.1" in report and "sd " in report
    assert "shared findings (4)" in report and "protocol_seconds" in report
    assert (result.out / "protocol_auroc_vs_fraction.png").stat().st_size > 10_000
