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
from analysis.load import error_summary, load_curves, load_scores, load_trials
from analysis.plots import pareto_front
from analysis.report import analyze, format_ranking, resolve_baseline
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
    assert stats.auroc(y, s) == pytest.approx(expected)
    assert math.isnan(stats.auroc(np.zeros(5), np.arange(5.0)))


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
