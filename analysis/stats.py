"""Statistics for ranking EHR variants: pure functions on arrays and tables (no files, no plotting).

Main tools
----------
* :func:`build_bank` - per-label AUROCs of K score sets on the full test set and on B image
  resamples that every set shares (so differences are paired on images).
* :func:`pooled_mean` / :func:`difference` - a mean over seeds (or a difference of means) whose
  bootstrap draws resample the seeds too, pooling image and seed variation.
* :func:`compare_arms` - the ranking table: per arm a mean with its 95 % CI and, against its
  baseline, a paired difference with a bootstrap p-value, Holm's correction and a verdict.
  Arms without per-image scores fall back to the reported macro AUROCs over seeds (t-tests).
* :func:`rank_scores` - the same from plain arrays (what the validity tests and notebooks use).

AUROC is the Mann-Whitney U with ties counted one half (as ``mmsn.probe.auroc``); macro AUROC is
the mean over labels with both classes present in the full test set (nan-skipping a label that a
resample happens to lack).
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps
from tqdm import tqdm

from mmsn.metrics import resample_counts, weighted_auroc

ALPHA = 0.05
BASELINE, NO_BASELINE, INSUFFICIENT = "baseline", "no baseline", "insufficient data"
REFERENCE = "reference"  # a reference row (random init, raw pixels, EHR only): shown, not tested
BETTER, WORSE, NO_EVIDENCE = "better", "worse", "no evidence"
BOOTSTRAP, SEEDS = "bootstrap", "seeds"
POWER = 0.8  # the power a minimum detectable effect is stated at
EFFECT = 0.02  # the effect the seed count is worked out for (about CXR-EHR-MSN's gain of EHR over MSN)
RANKING_COLUMNS = ["rank", "arm", "n_trials", "seeds", "epochs", "mean", "ci_lo", "ci_hi", "ci_method", "baseline",
                   "diff", "diff_lo", "diff_hi", "p", "p_holm", "verdict", "mde", "seeds_for_effect", "test_method",
                   "paired", "n_pairs", "compared_at_epoch", "full_length"]
LABEL_COLUMNS = ["arm", "baseline", "label", "diff", "lo", "hi", "method"]

# --- AUROC under image resamples ---------------------------------------------------------------


@dataclass(frozen=True)
class ScoreBank:
    """Per-label AUROCs of K score sets, on the full test set and on B shared image resamples.

    ``keys[k]`` names score set k (e.g. ``(trial, epoch)``); ``point`` is (K, L); ``boot`` is
    (B, K, L); ``valid`` (L,) marks labels with both classes in the full test set.
    """

    keys: tuple[Any, ...]
    labels: tuple[str, ...]
    point: np.ndarray
    boot: np.ndarray
    valid: np.ndarray

    def index(self, keys: Sequence[Hashable]) -> list[int]:
        lookup = {k: i for i, k in enumerate(self.keys)}
        return [lookup[k] for k in keys]

    def covers(self, keys: Sequence[Hashable]) -> bool:
        return set(keys) <= set(self.keys)


def build_bank(scores: Mapping[Any, np.ndarray], targets: np.ndarray, labels: Sequence[str] | None = None,
               n_boot: int = 1000, seed: int = 0, chunk: int | None = None) -> ScoreBank:
    """Bootstrap every (N, L) score set in ``scores`` against the shared (N, L) ``targets``.

    All sets see the same image resamples (drawn ``chunk`` at a time to bound memory), which is what
    makes differences between them paired. Deterministic in ``seed``.
    """
    targets = np.asarray(targets)
    keys = tuple(scores)
    n, n_labels = targets.shape
    for key in keys:
        if np.shape(scores[key]) != targets.shape:
            raise ValueError(f"scores of {key!r} have shape {np.shape(scores[key])}, targets {targets.shape}")
    stacked = [np.asarray(scores[k], dtype=np.float64) for k in keys]
    full = np.ones((1, n), np.int32)
    point = np.array([[weighted_auroc(full, targets[:, j], s[:, j])[0] for j in range(n_labels)] for s in stacked])
    point = point.reshape(len(keys), n_labels)
    boot = np.full((n_boot, len(keys), n_labels), np.nan)
    rng = np.random.default_rng(seed)
    chunk = chunk or max(1, 400_000 // max(n, 1))  # ~3 MB per (chunk, N) count array
    # a progress bar on a terminal only (tqdm's disable=None): at MIMIC-CXR scale this is minutes
    for lo in tqdm(range(0, n_boot, chunk), desc="bootstrap", unit="chunk", file=sys.stderr, disable=None,
                   leave=False):
        counts = resample_counts(rng, n, min(chunk, n_boot - lo))
        for k, s in enumerate(stacked):
            for j in range(n_labels):
                boot[lo:lo + len(counts), k, j] = weighted_auroc(counts, targets[:, j], s[:, j])
    names = tuple(labels) if labels is not None else tuple(f"label_{j}" for j in range(n_labels))
    valid = ~np.isnan(point).all(axis=0) if len(keys) else np.zeros(n_labels, bool)
    return ScoreBank(keys, names, point, boot, valid)


def macro(per_label: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mean over the ``valid`` labels of (..., L) AUROCs -> (...), skipping NaN (NaN if none left)."""
    sub = per_label[..., valid]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are expected and stay NaN
        return np.nanmean(sub, axis=-1) if sub.shape[-1] else np.full(sub.shape[:-1], np.nan)


# --- means and differences over seeds ------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile CI and two-sided bootstrap p-value (of value == 0)."""

    value: float
    lo: float
    hi: float
    p: float = math.nan


def _replicate_means(boot: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per draw b, the mean of ``boot[b, idx[b], ...]``: (B, S, ...) values, (B, S') indices -> (B, ...)."""
    picked = boot[np.arange(boot.shape[0])[:, None], idx]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(picked, axis=1)  # type: ignore[no-any-return]


def percentile_ci(draws: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Percentile (1 - alpha) interval over axis 0 of (B, ...) draws, NaN-skipping."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(draws, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return lo, hi


def bootstrap_p(draws: np.ndarray) -> np.ndarray:
    """Two-sided p of "no difference" from (B, ...) bootstrap draws of a difference:
    2 * min(P(d <= 0), P(d >= 0)), floored at 1 / (B + 1) and capped at 1."""
    finite = ~np.isnan(draws)
    b = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        le = ((draws <= 0) & finite).sum(axis=0) / b
        ge = ((draws >= 0) & finite).sum(axis=0) / b
        p = np.clip(2 * np.minimum(le, ge), 1 / (b + 1), 1.0)
    return np.where(b > 0, p, np.nan)


def pooled_mean(point: np.ndarray, boot: np.ndarray, rng: np.random.Generator,
                alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over S seeds with a CI pooling image and seed variation.

    ``point`` (S, ...) full-set values, ``boot`` (B, S, ...) values on the shared image resamples.
    Each draw also resamples the S seeds with replacement. Returns (mean, lo, hi), each (...).
    """
    idx = rng.integers(0, point.shape[0], size=(boot.shape[0], point.shape[0]))
    lo, hi = percentile_ci(_replicate_means(boot, idx), alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(point, axis=0), lo, hi


def difference(point_v: np.ndarray, point_b: np.ndarray, boot_v: np.ndarray, boot_b: np.ndarray,
               rng: np.random.Generator, paired: bool = True, alpha: float = ALPHA,
               return_draws: bool = False) -> tuple[np.ndarray, ...]:
    """Mean of a variant minus mean of its baseline, with CI and bootstrap p: (diff, lo, hi, p), each (...),
    and the (B, ...) bootstrap draws of the difference when ``return_draws``.

    ``point_*`` (S, ...), ``boot_*`` (B, S, ...) on the same image resamples. ``paired``: row s of
    both is the same seed, and each draw resamples seeds once for both (mean of per-seed
    differences); otherwise the two sets of replicates are resampled independently.
    """
    n_boot = boot_v.shape[0]
    idx_v = rng.integers(0, point_v.shape[0], size=(n_boot, point_v.shape[0]))
    idx_b = idx_v if paired else rng.integers(0, point_b.shape[0], size=(n_boot, point_b.shape[0]))
    if paired:
        draws = _replicate_means(boot_v - boot_b, idx_v)
    else:
        draws = _replicate_means(boot_v, idx_v) - _replicate_means(boot_b, idx_b)
    lo, hi = percentile_ci(draws, alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        diff = (np.nanmean(point_v - point_b, axis=0) if paired
                else np.nanmean(point_v, axis=0) - np.nanmean(point_b, axis=0))
    return (diff, lo, hi, bootstrap_p(draws), draws) if return_draws else (diff, lo, hi, bootstrap_p(draws))


@dataclass(frozen=True)
class Spread:
    """What a difference's precision is made of: its standard error (the bootstrap draws' sd, images and
    seeds resampled), the image part of it (images resampled, the seeds kept), and the variance of a
    per-seed difference (NaN with one seed); ``seeds``: the pairs (or the fewer side) it was measured on."""

    se: float
    se_images: float
    seed_var: float
    seeds: int


def detectable_effect(se: float, level: float, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at ``level`` detects with ``power``, for a difference
    whose estimate has standard error ``se`` (normal approximation: (z_{1-level/2} + z_power) x se; 2.80 se
    at 0.05 and 80 %)."""
    return float((sps.norm.ppf(1 - level / 2) + sps.norm.ppf(power)) * se)


def seeds_for_effect(spread: Spread, effect: float, level: float, power: float = POWER) -> float:
    """Seeds (per arm, paired) a comparison would need to detect ``effect`` with ``power`` at ``level``: the
    seed part of the variance shrinks as 1/k, the image part (the test set is fixed) does not. ``inf`` when
    the test images alone are too few (more seeds cannot help); NaN with one seed (no seed variance seen)."""
    if math.isnan(spread.seed_var) or math.isnan(spread.se_images):
        return math.nan
    room = (effect / (sps.norm.ppf(1 - level / 2) + sps.norm.ppf(power))) ** 2 - spread.se_images ** 2
    if room <= 0:
        return math.inf
    return float(max(1, math.ceil(spread.seed_var / room)))


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order); NaN entries are left out of the family."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else np.array([])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def verdict(diff: float, p_adjusted: float, alpha: float = ALPHA) -> str:
    """"better" / "worse" when the Holm-adjusted p is below alpha, else "no evidence"."""
    if math.isnan(p_adjusted):
        return INSUFFICIENT
    if p_adjusted < alpha and diff > 0:
        return BETTER
    if p_adjusted < alpha and diff < 0:
        return WORSE
    return NO_EVIDENCE


# --- seed-only fallback ---------------------------------------------------------------------------


def seed_mean_ci(values: Sequence[float] | np.ndarray, alpha: float = ALPHA) -> Estimate:
    """Mean over seeds with a t interval; NaN interval with fewer than two seeds."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return Estimate(math.nan, math.nan, math.nan)
    if len(v) < 2:
        return Estimate(float(v.mean()), math.nan, math.nan)
    half = sps.t.ppf(1 - alpha / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return Estimate(float(v.mean()), float(v.mean() - half), float(v.mean() + half))


def seed_difference(v: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, paired: bool,
                    alpha: float = ALPHA) -> Estimate:
    """Variant minus baseline over seeds: paired t-test on per-seed differences, else Welch's t-test.
    p is NaN ("insufficient data") with fewer than two pairs (or two trials per side)."""
    v_arr, b_arr = np.asarray(v, dtype=float), np.asarray(b, dtype=float)
    if paired:
        d = v_arr - b_arr
        est = seed_mean_ci(d, alpha)
        if len(d) < 2:
            return est
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero variance: p stays NaN
            p = float(sps.ttest_1samp(d, 0.0).pvalue)
        return Estimate(est.value, est.lo, est.hi, p)
    diff = float(np.mean(v_arr) - np.mean(b_arr))
    if len(v_arr) < 2 or len(b_arr) < 2:
        return Estimate(diff, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        test = sps.ttest_ind(v_arr, b_arr, equal_var=False)
        ci = test.confidence_interval(1 - alpha)
    return Estimate(diff, float(ci.low), float(ci.high), float(test.pvalue))


# --- the ranking table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Comparison:
    """Which score sets a variant-vs-baseline comparison uses: (trial, epoch) keys per side."""

    v_keys: list[tuple[str, int]]
    b_keys: list[tuple[str, int]]
    paired: bool
    epochs: list[int]


def _last_rows(evals: pd.DataFrame) -> pd.DataFrame:
    """Each trial's row at the last epoch it was evaluated."""
    return evals.sort_values(["trial", "epoch"]).groupby("trial", sort=False).tail(1)


def _common_epoch(evals: pd.DataFrame, trials: Sequence[str]) -> int | None:
    """Latest epoch at which every trial in ``trials`` was evaluated (None if there is none)."""
    sets = [set(evals.loc[evals["trial"] == t, "epoch"]) for t in trials]
    common = set.intersection(*sets) if sets else set()
    return max(common) if common else None


def _comparison(evals: pd.DataFrame, last: pd.DataFrame, arm: str, base: str) -> _Comparison | None:
    """Pair trials by seed when each side has one trial per seed (compared at the latest epoch both
    reached, so a trial the scheduler stopped early is not compared against longer training);
    otherwise compare all trials of both sides at the latest epoch all of them reached."""
    v, b = last[last["arm"] == arm], last[last["arm"] == base]
    if v.empty or b.empty:
        return None
    common = sorted(set(v["seed"].dropna()) & set(b["seed"].dropna()))
    if common and v["seed"].is_unique and b["seed"].is_unique:
        vt = v.set_index("seed")["trial"]
        bt = b.set_index("seed")["trial"]
        pairs: list[tuple[str, str, int]] = []
        for s in common:
            epoch = _common_epoch(evals, [vt[s], bt[s]])
            if epoch is not None:
                pairs.append((str(vt[s]), str(bt[s]), epoch))
        if pairs:
            return _Comparison([(tv, e) for tv, _, e in pairs], [(tb, e) for _, tb, e in pairs], True,
                               [e for *_, e in pairs])
    e = _common_epoch(evals, [*v["trial"], *b["trial"]])
    if e is None:
        return None
    return _Comparison([(t, e) for t in v["trial"]], [(t, e) for t in b["trial"]], False, [e])


def _values(evals: pd.DataFrame, keys: Sequence[tuple[str, int]], column: str) -> np.ndarray:
    indexed = evals.set_index(["trial", "epoch"])[column]
    return np.array([indexed.get(k, np.nan) for k in keys], dtype=float)


def _arm_estimate(rows: pd.DataFrame, bank: ScoreBank | None, rng: np.random.Generator,
                  alpha: float) -> tuple[Estimate, str]:
    """Mean of an arm over its trials (each at its last epoch) and how its CI was made."""
    keys = list(zip(rows["trial"], rows["epoch"]))
    if bank is not None and bank.covers(keys):
        idx = bank.index(keys)
        mean, lo, hi = pooled_mean(macro(bank.point[idx], bank.valid), macro(bank.boot[:, idx], bank.valid),
                                   rng, alpha)
        return Estimate(float(mean), float(lo), float(hi)), BOOTSTRAP
    return seed_mean_ci(rows["value"].to_numpy(float), alpha), SEEDS


def _diff_bootstrap(cmp: _Comparison, bank: ScoreBank, rng: np.random.Generator,
                    alpha: float) -> tuple[Estimate, pd.DataFrame, Spread]:
    """Macro and per-label differences from the shared image resamples (seeds resampled too), and the spread
    of the macro difference."""
    iv, ib = bank.index(cmp.v_keys), bank.index(cmp.b_keys)
    pv, pb, bv, bb = bank.point[iv], bank.point[ib], bank.boot[:, iv], bank.boot[:, ib]
    mpv, mpb, mbv, mbb = (macro(x, bank.valid) for x in (pv, pb, bv, bb))
    state = rng.bit_generator.state  # same seed draws for the macro and the per-label differences
    d, lo, hi, p, draws = difference(mpv, mpb, mbv, mbb, rng, cmp.paired, alpha, return_draws=True)
    rng.bit_generator.state = state
    dl, lol, hil, _ = difference(pv, pb, bv, bb, rng, cmp.paired, alpha)
    labels = pd.DataFrame({"label": bank.labels, "diff": dl, "lo": lol, "hi": hil})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        images = np.nanmean(mbv - mbb, axis=1) if cmp.paired else np.nanmean(mbv, axis=1) - np.nanmean(mbb, axis=1)
        seed_var = (np.var(mpv - mpb, ddof=1) if cmp.paired else np.var(mpv, ddof=1) + np.var(mpb, ddof=1)) \
            if min(len(mpv), len(mpb)) > 1 else math.nan
        spread = Spread(float(np.nanstd(draws)), float(np.nanstd(images)), float(seed_var), min(len(mpv), len(mpb)))
    return Estimate(float(d), float(lo), float(hi), float(p)), labels, spread


def _diff_seeds(cmp: _Comparison, evals: pd.DataFrame, label_columns: Mapping[str, str],
                alpha: float) -> tuple[Estimate, pd.DataFrame, Spread]:
    """Fallback without per-image scores: reported macro AUROCs over seeds; per-label means only. The spread
    is the seeds' alone (the t interval's standard error)."""
    v, b = _values(evals, cmp.v_keys, "value"), _values(evals, cmp.b_keys, "value")
    est = seed_difference(v, b, cmp.paired, alpha)
    k = min(len(v), len(b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        seed_var = (float(np.var(v - b, ddof=1)) if cmp.paired else float(np.var(v, ddof=1) + np.var(b, ddof=1))) \
            if k > 1 else math.nan
    spread = Spread(math.sqrt(seed_var / k) if k > 1 else math.nan, 0.0, seed_var, k)
    rows = []
    for label, column in label_columns.items():
        v, b = _values(evals, cmp.v_keys, column), _values(evals, cmp.b_keys, column)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            d = np.nanmean(v - b) if cmp.paired else np.nanmean(v) - np.nanmean(b)
        rows.append({"label": label, "diff": float(d), "lo": math.nan, "hi": math.nan})
    return est, pd.DataFrame(rows, columns=["label", "diff", "lo", "hi"]), spread


def _span(values: Sequence[float]) -> str:
    """"4" or "1-4": the range of epochs (or seeds) a row is based on."""
    vals = sorted({int(v) for v in values if not pd.isna(v)})
    if not vals:
        return ""
    return str(vals[0]) if vals[0] == vals[-1] else f"{vals[0]}-{vals[-1]}"


def _arm_row(arm: str, evals: pd.DataFrame, last: pd.DataFrame, base: str | None, bank: ScoreBank | None,
             label_columns: Mapping[str, str], rng: np.random.Generator,
             alpha: float) -> tuple[dict[str, object], pd.DataFrame | None]:
    """One ranking row (everything but Holm and the verdict) and the arm's per-label differences."""
    rows = last[last["arm"] == arm]
    est, ci_method = _arm_estimate(rows, bank, rng, alpha)
    row: dict[str, object] = {
        "arm": arm, "n_trials": len(rows), "seeds": ",".join(str(int(s)) for s in sorted(rows["seed"].dropna())),
        "epochs": _span(rows["epoch"]), "mean": est.value, "ci_lo": est.lo, "ci_hi": est.hi, "ci_method": ci_method,
        "baseline": base or "", "diff": math.nan, "diff_lo": math.nan, "diff_hi": math.nan, "p": math.nan,
        "test_method": "", "paired": False, "n_pairs": 0, "compared_at_epoch": "", "se": math.nan,
        "se_images": math.nan, "seed_var": math.nan,
        "status": BASELINE if base == arm else NO_BASELINE if base is None else ""}
    if row["status"]:
        return row, None
    assert base is not None
    cmp = _comparison(evals, last, arm, base)
    if cmp is None:
        row["status"] = INSUFFICIENT
        return row, None
    if bank is not None and bank.covers(cmp.v_keys + cmp.b_keys):
        diff, labels, spread = _diff_bootstrap(cmp, bank, rng, alpha)
        row["test_method"] = BOOTSTRAP
    else:
        diff, labels, spread = _diff_seeds(cmp, evals, label_columns, alpha)
        row["test_method"] = SEEDS
    row.update(se=spread.se, se_images=spread.se_images, seed_var=spread.seed_var)
    row.update(diff=diff.value, diff_lo=diff.lo, diff_hi=diff.hi, p=diff.p, paired=cmp.paired,
               n_pairs=len(cmp.v_keys) if cmp.paired else min(len(cmp.v_keys), len(cmp.b_keys)),
               compared_at_epoch=_span(cmp.epochs))
    return row, labels.assign(arm=arm, baseline=base, method=row["test_method"])


def compare_arms(evals: pd.DataFrame, baseline_of: Mapping[str, str | None], bank: ScoreBank | None = None,
                 label_columns: Mapping[str, str] | None = None, seed: int = 0,
                 alpha: float = ALPHA, effect: float = EFFECT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rank arms and test each against its baseline -> (ranking, per-label differences).

    ``evals``: one row per (trial, epoch) evaluated, columns ``trial, arm, seed, epoch, value`` (the
    metric's macro AUROC) plus the per-label columns named in ``label_columns`` (label -> column,
    used only without per-image scores). ``baseline_of``: arm -> its baseline arm (itself for a
    baseline, None if it has none). ``bank``: per-image bootstraps keyed ``(trial, epoch)``; arms
    whose score sets it lacks fall back to seed-level t statistics. Holm's correction runs over all
    comparisons with a p-value. Ranking rows are sorted by mean, best first.

    Power: ``mde`` is the smallest true difference each comparison detects with 80 % power at the level
    Holm's first step holds it to (alpha / the number of comparisons: the strictest, so the MDE is not
    understated), from the spread of its bootstrap; ``seeds_for_effect`` the seeds per arm it would need to
    detect ``effect`` (inf: the test set is too small whatever the seeds; NaN: one seed shows no seed spread).
    """
    rng = np.random.default_rng([seed, 1])  # seed resampling; images were resampled in the bank
    if evals.empty:
        return pd.DataFrame(columns=RANKING_COLUMNS), pd.DataFrame(columns=LABEL_COLUMNS)
    last = _last_rows(evals)
    rows, per_label = [], []
    for arm in sorted(last["arm"].unique()):
        row, labels = _arm_row(arm, evals, last, baseline_of.get(arm), bank, label_columns or {}, rng, alpha)
        rows.append(row)
        if labels is not None:
            per_label.append(labels)
    ranking = pd.DataFrame(rows)
    tested = (ranking["status"] == "").to_numpy() if len(ranking) else np.zeros(0, bool)
    p_holm = np.full(len(ranking), np.nan)
    if tested.any():
        p_holm[tested] = holm(ranking.loc[tested, "p"].to_numpy(float))
    ranking["p_holm"] = p_holm
    ranking["verdict"] = [row.status or verdict(row.diff, row.p_holm, alpha) for row in ranking.itertuples()]
    level = alpha / max(1, int(tested.sum()))
    ranking["mde"] = [detectable_effect(row.se, level) if tested[i] else math.nan
                      for i, row in enumerate(ranking.itertuples())]
    ranking["seeds_for_effect"] = [
        seeds_for_effect(Spread(row.se, row.se_images, row.seed_var, row.n_pairs), effect, level)
        if tested[i] else math.nan for i, row in enumerate(ranking.itertuples())]
    # Arms whose every trial reached the full length come first, by mean at it; arms stopped earlier
    # follow. Means taken at different epochs would put an arm above a baseline it is worse than.
    full = last.groupby("arm")["epoch"].min() == last["epoch"].max()
    ranking["full_length"] = ranking["arm"].map(full).astype(bool)
    ranking = ranking.drop(columns="status").sort_values(["full_length", "mean"], ascending=False,
                                                         na_position="last")
    ranking.insert(0, "rank", np.arange(1, len(ranking) + 1))
    labels_table = (pd.concat(per_label, ignore_index=True)[LABEL_COLUMNS] if per_label
                    else pd.DataFrame(columns=LABEL_COLUMNS))
    return ranking[RANKING_COLUMNS].reset_index(drop=True), labels_table


def rank_agreement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, n_boot: int = 1000,
                   seed: int = 0, alpha: float = ALPHA) -> dict[str, float]:
    """Spearman's rho and Kendall's tau between two scores of the same arms (e.g. RankMe and val AUROC), each
    with a percentile CI from resampling the arms; NaN with fewer than 3 arms."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    out = {"n": float(len(a))}
    for name, test in (("spearman", sps.spearmanr), ("kendall", sps.kendalltau)):
        if len(a) < 3:
            out.update({name: math.nan, f"{name}_lo": math.nan, f"{name}_hi": math.nan})
            continue
        rng = np.random.default_rng([seed, 2])
        draws = []
        for idx in rng.integers(0, len(a), size=(n_boot, len(a))):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a resample of tied arms has no correlation
                draws.append(test(a[idx], b[idx])[0])
        lo, hi = percentile_ci(np.asarray(draws, dtype=float), alpha)
        out.update({name: float(test(a, b)[0]), f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return out


def contradictions(ranking: pd.DataFrame) -> list[str]:
    """Arms listed above their baseline with a negative paired difference, or below it with a positive
    one (possible only when the two were compared on other seeds or epochs than their means)."""
    rank = ranking.set_index("arm")["rank"]
    out = []
    for row in ranking.itertuples():
        if row.baseline in rank.index and row.baseline != row.arm and not math.isnan(row.diff) and row.diff != 0:
            above = row.rank < rank[row.baseline]
            if above != (row.diff > 0):
                out.append(f"{row.arm} is listed {'above' if above else 'below'} {row.baseline} but its paired "
                           f"difference is {row.diff:+.4f} (at epoch {row.compared_at_epoch}, common seeds)")
    return out


def rank_scores(arms: Mapping[str, Sequence[np.ndarray]], targets: np.ndarray, baseline: str,
                labels: Sequence[str] | None = None, n_boot: int = 1000, seed: int = 0,
                alpha: float = ALPHA, effect: float = EFFECT) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`compare_arms` from plain arrays: ``arms[name][s]`` is seed s's (N, L) test scores
    (seed s of every arm is paired), ``targets`` the shared (N, L) 0/1 targets."""
    if baseline not in arms:
        raise ValueError(f"baseline {baseline!r} is not one of the arms {sorted(arms)}")
    scores = {(f"{arm}#{s}", 1): np.asarray(x) for arm, seeds in arms.items() for s, x in enumerate(seeds)}
    bank = build_bank(scores, targets, labels, n_boot, seed)
    value = macro(bank.point, bank.valid)
    evals = pd.DataFrame({"trial": [k[0] for k in bank.keys], "arm": [k[0].rsplit("#", 1)[0] for k in bank.keys],
                          "seed": [int(k[0].rsplit("#", 1)[1]) for k in bank.keys], "epoch": 1, "value": value})
    return compare_arms(evals, {arm: baseline for arm in arms}, bank, seed=seed, alpha=alpha, effect=effect)


def needed_scores(evals: pd.DataFrame, baseline_of: Mapping[str, str | None]) -> set[tuple[str, int]]:
    """The (trial, epoch) score sets :func:`compare_arms` would bootstrap: each trial's last
    evaluation and the epochs at which arms meet their baselines (load only these)."""
    last = _last_rows(evals)
    keys = set(zip(last["trial"], last["epoch"].astype(int)))
    for arm, base in baseline_of.items():
        if base is not None and base != arm and (cmp := _comparison(evals, last, arm, base)) is not None:
            keys.update(cmp.v_keys + cmp.b_keys)
    return keys
