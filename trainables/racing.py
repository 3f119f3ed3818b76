"""The test behind racing (trainables.halving.ArmRacing): which arms a rung's val scores show to be worse than
the rung's leader. Pure numpy on the per-image val scores the trials filed; the statistics are the analysis's
(analysis.stats: AUROC over shared image resamples, seeds resampled too)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from analysis.stats import build_bank, difference, holm, macro


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return np.asarray(data["scores"], dtype=np.float32), np.asarray(data["targets"], dtype=np.int8)


def race(by_arm: Mapping[str, Mapping[int, Path]], scores: Mapping[str, float], reduction_factor: int,
         alpha: float, mode: str = "max", seed: int = 0, n_boot: int = 500) -> dict[str, Any]:
    """Arms that go on from a rung. ``by_arm``: arm -> seed -> its val scores (npz: scores, targets); ``scores``:
    arm -> mean val AUROC over seeds. The leader is the best mean; each other arm's difference to it is
    tested one-sided (paired over the val images, and over seeds the two share), Holm-corrected; of the arms
    significantly behind, at most floor((1 - 1/reduction_factor) x arms) are stopped, smallest p first (then the
    largest lag). An arm
    without scores is kept (no evidence, no stop). Returns kept (best first), the leader and per arm its
    test: difference to the leader, its bootstrap standard error, p and the Holm-adjusted p, stopped or not."""
    sign = 1.0 if mode == "max" else -1.0
    order = sorted(scores, key=lambda a: (-sign * scores[a], a))
    leader = order[0]
    keys = {(arm, s): path for arm, seeds in by_arm.items() for s, path in seeds.items()}
    tests: dict[str, dict[str, Any]] = {}
    if leader in by_arm and len(keys) > 1:
        loaded = {key: _load(path) for key, path in keys.items()}
        targets = next(iter(loaded.values()))[1]
        bank = build_bank({key: value[0] for key, value in loaded.items()}, targets, n_boot=n_boot, seed=seed)
        rng = np.random.default_rng([seed, 3])
        for arm in order[1:]:
            if arm in by_arm:
                tests[arm] = _one_sided(bank, leader, arm, by_arm, rng, sign)
    adjusted = holm([t["p"] for t in tests.values()])
    for test, p_holm in zip(tests.values(), adjusted):
        test["p_holm"] = float(p_holm)
    behind = sorted((a for a, t in tests.items() if t["p_holm"] < alpha),
                    key=lambda a: (tests[a]["p_holm"], -tests[a]["difference"], a))
    stopped = set(behind[: math.floor(len(scores) * (1 - 1 / reduction_factor))])
    for arm, test in tests.items():
        test["stopped"] = arm in stopped
    return {"kept": [a for a in order if a not in stopped], "leader": leader, "tests": tests}


def _one_sided(bank: Any, leader: str, arm: str, by_arm: Mapping[str, Mapping[int, Path]], rng: np.random.Generator,
               sign: float) -> dict[str, Any]:
    """The leader's lead over ``arm`` in val macro AUROC: paired over seeds both ran, else unpaired."""
    common = sorted(set(by_arm[leader]) & set(by_arm[arm]))
    paired = bool(common)
    lead_seeds, arm_seeds = (common, common) if paired else (sorted(by_arm[leader]), sorted(by_arm[arm]))
    il, ia = bank.index([(leader, s) for s in lead_seeds]), bank.index([(arm, s) for s in arm_seeds])
    d, _, _, _, draws = difference(macro(bank.point[il], bank.valid), macro(bank.point[ia], bank.valid),
                                   macro(bank.boot[:, il], bank.valid), macro(bank.boot[:, ia], bank.valid), rng,
                                   paired, return_draws=True)
    draws = sign * draws[~np.isnan(draws)]
    p = (float((draws <= 0).sum()) + 1) / (len(draws) + 1)  # P(no lead), with the +1 floor of a bootstrap p
    return {"difference": float(sign * d), "se": float(np.std(draws)), "p": p, "paired": paired,
            "seeds": len(common) if paired else min(len(lead_seeds), len(arm_seeds))}


__all__ = ["race"]
