"""AUROC and its bootstrap, in numpy only: shared by the probe (mmsn.probe) and the analysis
(analysis/), which must not pay for importing torch.

Bootstrap resamples are represented as (B, N) image multiplicities, so a resample's Mann-Whitney U
comes from one sort of the scores instead of re-ranking each resample.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of (N,) 0/1 targets and (N,) scores; NaN if a class is absent or the
    scores are NaN (a label the probe had no positive to learn from is missing, not AUROC 0.5).

    Mann-Whitney U from average ranks, so ties count one half (identical to
    ``sklearn.metrics.roc_auc_score``).
    """
    positive = np.asarray(y) > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0 or np.isnan(score).any():  # NaN scores: a label the probe could not learn
        return math.nan
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def macro_auroc(y: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """(N, L) targets and scores -> (mean AUROC over labels with both classes, (L,) per label, NaN
    for labels with a single class). The mean is NaN if no label qualifies."""
    if y.shape != scores.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and scores {scores.shape} must be equal (N, L) shapes")
    per_label = np.array([auroc(y[:, j], scores[:, j]) for j in range(y.shape[1])], dtype=np.float64)
    valid = ~np.isnan(per_label)
    return (float(per_label[valid].mean()) if valid.any() else math.nan), per_label


def resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) int32: how often each image is drawn in each of n_boot resamples of size n."""
    draws = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.int32)


def weighted_auroc(counts: np.ndarray, y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """AUROC of one label under each row of (b, N) image multiplicities -> (b,); NaN if a class is absent.

    Sorting once and summing multiplicities per tie group gives each resample's Mann-Whitney U
    without re-ranking: U = sum over tie groups g of pos_g * (negatives below g + neg_g / 2). NaN scores
    (a label the probe could not learn) give NaN.
    """
    if np.isnan(score).any():
        return np.full(counts.shape[0], np.nan)
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # tie groups
    c = counts[:, order]  # (b, N)
    if len(starts) == len(score):
        return _untied_auroc(c, y[order] > 0.5)
    pos_c = c * (y[order] > 0.5)
    pos = np.add.reduceat(pos_c, starts, axis=1).astype(np.float64)  # (b, G)
    neg = np.add.reduceat(c - pos_c, starts, axis=1).astype(np.float64)
    below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(axis=1) / pairs, np.nan)


def _untied_auroc(c: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """The no-ties case of :func:`weighted_auroc` (probe scores are continuous), in integers: about
    3x faster, which matters with hundreds of trials x 14 labels x 1000 draws x thousands of images.
    ``c`` (b, N) multiplicities in score order, ``positive`` (N,) bool in the same order."""
    neg_below = np.cumsum(c * ~positive, axis=1)  # (b, N) negatives at or below each rank
    pos_c = c[:, positive]
    u = (pos_c.astype(np.int64) * neg_below[:, positive]).sum(axis=1)  # a positive's own column adds 0
    pairs = pos_c.sum(axis=1, dtype=np.int64) * neg_below[:, -1].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, u / np.maximum(pairs, 1), np.nan)


def bootstrap_aurocs(y: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                     chunk: int | None = None) -> np.ndarray:
    """(n_boot, L) per-label AUROCs over seeded resamples of the N images (rows of (N, L) inputs).

    Resamples are drawn ``chunk`` at a time (default: about 400k draws per chunk) to bound memory;
    numpy draws the same integers however they are chunked, so results depend on the seed only.
    Entries are NaN where a resample (or the whole set) lacks a class of the label.
    """
    if y.shape != scores.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and scores {scores.shape} must be equal (N, L) shapes")
    rng = np.random.default_rng(seed)
    n, n_labels = y.shape
    chunk = chunk or max(1, 400_000 // max(n, 1))  # ~3 MB per (chunk, N) array: cache-sized, fastest
    out = np.full((n_boot, n_labels), np.nan)
    score64 = np.asarray(scores, dtype=np.float64)
    for lo in range(0, n_boot, chunk):
        counts = resample_counts(rng, n, min(chunk, n_boot - lo))
        for j in range(n_labels):
            out[lo:lo + len(counts), j] = weighted_auroc(counts, y[:, j], score64[:, j])
    return out


def percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def macro_of_resamples(boot: np.ndarray, per_label: np.ndarray) -> np.ndarray:
    """(n_boot,) macro AUROC per resample over the labels valid on the full set (NaN-skipping)."""
    valid = boot[:, ~np.isnan(per_label)]
    has_any = (~np.isnan(valid)).any(axis=1)
    macro = np.full(boot.shape[0], np.nan)
    macro[has_any] = np.nanmean(valid[has_any], axis=1)
    return macro


def bootstrap_ci(y: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile (1 - alpha) CI of the macro AUROC of (N, L) targets/scores, resampling images."""
    _, per_label = macro_auroc(y, scores)
    return percentile_ci(macro_of_resamples(bootstrap_aurocs(y, scores, n_boot, seed), per_label), alpha)


def bootstrap_per_label(y: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                        alpha: float = 0.05) -> np.ndarray:
    """(L, 2) percentile CIs per label, from the same resamples as ``bootstrap_ci`` (same seed)."""
    boot = bootstrap_aurocs(y, scores, n_boot, seed)
    return np.array([percentile_ci(boot[:, j], alpha) for j in range(y.shape[1])]).reshape(-1, 2)


COLLAPSE_MARGIN = 0.95  # a RankMe under 95 % of the untrained encoder's is a loss of dimensions, not noise


def collapsing(rank: float, untrained: float) -> bool:
    """Whether a trained encoder's RankMe is below its untrained encoder's (by more than noise)."""
    return bool(rank < COLLAPSE_MARGIN * untrained)


def rankme(features: np.ndarray, eps: float = 1e-7) -> float:
    """RankMe (Garrido et al., ICML 2023): the effective rank exp(H(p)) of an (N, D) embedding matrix, with
    p_k = s_k / sum(s) + eps over its singular values s (the embeddings as they are, not centred). Between 1
    (every embedding on one line: collapse) and min(N, D); it needs no labels. With fewer than about 25k rows
    it is biased low but keeps the order of runs of one method."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"rankme: expected a non-empty (N, D) matrix, got {x.shape}")
    s = np.linalg.svd(x, compute_uv=False)
    if not s.sum() > 0:
        return 1.0  # all zeros: nothing spread in any direction
    p = s / s.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))
