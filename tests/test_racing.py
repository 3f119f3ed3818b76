"""Racing: successive halving that stops an arm only when the val scores show it is behind the rung's leader
(paired over images and seeds, one-sided, Holm-corrected), and at most (1 - 1/rf) of the arms per rung."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainables.racing import race

N, L = 600, 4


def write_arm(tmp_path: Path, arm: str, signal: float, seeds: int, y: np.ndarray,
              rng: np.random.Generator) -> dict[int, Path]:
    out = {}
    for seed in range(seeds):
        path = tmp_path / f"{arm}_{seed}.npz"
        np.savez(path, scores=(y * signal + rng.normal(size=y.shape)).astype(np.float32), targets=y)
        out[seed] = path
    return out


def test_only_an_arm_the_val_images_show_behind_the_leader_is_stopped(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = (rng.random((N, L)) < 0.3).astype(np.int8)
    signals = {"lead": 1.2, "twin": 1.2, "close": 1.15, "weak": 0.5}
    by_arm = {arm: write_arm(tmp_path, arm, s, 2, y, rng) for arm, s in signals.items()}
    means = {arm: 0.8 - (1.2 - s) / 10 for arm, s in signals.items()}  # the order the rung saw
    decided = race(by_arm, means, reduction_factor=2, alpha=0.05)
    assert decided["leader"] == "lead" and decided["kept"] == ["lead", "twin", "close"]
    tests = decided["tests"]
    assert tests["weak"]["stopped"] and tests["weak"]["p_holm"] < 0.05 and tests["weak"]["difference"] > 0.1
    assert not tests["twin"]["stopped"] and tests["twin"]["p_holm"] > 0.05  # a gap within the noise: kept
    assert tests["close"]["paired"] and tests["close"]["seeds"] == 2


def test_at_most_one_minus_one_over_rf_of_the_arms_stop_per_rung(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = (rng.random((N, L)) < 0.3).astype(np.int8)
    signals = {"lead": 2.0, "a": 0.3, "b": 0.2, "c": 0.1}  # all three clearly behind
    by_arm = {arm: write_arm(tmp_path, arm, s, 1, y, rng) for arm, s in signals.items()}
    means = {"lead": 0.9, "a": 0.6, "b": 0.58, "c": 0.55}
    decided = race(by_arm, means, reduction_factor=2, alpha=0.05)
    assert sum(t["stopped"] for t in decided["tests"].values()) == 2  # floor(4 x (1 - 1/2))
    assert decided["kept"] == ["lead", "a"]  # the clearest lags stop first (at equal p, the largest)
    # an arm without val scores is never stopped
    del by_arm["c"]
    assert "c" in race(by_arm, means, reduction_factor=2, alpha=0.05)["kept"]
