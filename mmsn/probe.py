"""Linear probe on frozen features: the score every sweep trial is ranked by (docs/evaluation.md).

Features are extracted once per checkpoint; a multi-label logistic regression over all labels is
then fitted in one full-batch L-BFGS problem (a second or so on CPU), its L2 strength chosen by
validation macro AUROC. Metrics follow CXR-EHR-MSN's evaluation (macro AUROC over labels with both
classes present, per-label AUROC, 95 % percentile bootstrap CIs over 1000 image resamples) with
two fixes: label-efficient subsets are drawn by patient, and the same function normalises pixels
in pretraining and here (``mmsn.data.transforms.to_input``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmsn.config import ProbeConfig
from mmsn.data.transforms import to_input
from mmsn.errors import DataError
from mmsn.metrics import (
    auroc,
    bootstrap_aurocs,
    bootstrap_ci,
    bootstrap_per_label,
    macro_auroc,
    macro_of_resamples,
    percentile_ci,
)

# --- data ----------------------------------------------------------------------------------------


def label_fraction_mask(patient_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: rows of a seeded ``fraction`` of the patients (at least one), whole patients only,
    so a label-efficient probe never sees part of a patient's images."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = np.asarray([str(p) for p in patient_ids])
    patients = np.unique(ids)  # sorted, so the draw depends on the seed and the set of patients only
    if fraction >= 1 or patients.size == 0:
        return np.ones(ids.size, dtype=bool)
    n_keep = max(1, round(fraction * patients.size))
    kept = np.random.default_rng(seed).choice(patients, size=n_keep, replace=False)
    return np.isin(ids, kept)


def extract_features(encode: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, rows: np.ndarray,
                     size: int, batch_size: int, device: torch.device) -> np.ndarray:
    """Encode ``images[rows]`` ((N, H, W) uint8, e.g. the cache's memmap) -> (len(rows), d) float32.

    ``encode`` maps (B, 1, size, size) normalised float -> (B, d); put a model in eval mode first.
    Images are normalised with ``to_input`` (as in pretraining) and resized with antialiased
    bilinear interpolation when the cache side differs from ``size``.
    """
    rows = np.asarray(rows)
    chunks: list[np.ndarray] = []
    pin = device.type == "cuda"  # page-locked batches copy to the GPU without blocking the host
    # a progress bar on a terminal only (tqdm's disable=None): a reference's pass over a real cache takes minutes
    batches = tqdm(range(0, len(rows), batch_size), desc="features", unit="batch", file=sys.stderr, disable=None,
                   leave=False)
    with torch.inference_mode():
        for lo in batches:
            batch = torch.from_numpy(np.ascontiguousarray(images[rows[lo:lo + batch_size]]))
            batch = batch.pin_memory() if pin else batch
            x = to_input(batch.to(device, non_blocking=True))  # (B, 1, H, W); uint8 is cheaper to move
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            chunks.append(encode(x).float().cpu().numpy())
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


# --- the probe -----------------------------------------------------------------------------------


@dataclass
class LinearProbe:
    """A fitted multi-label logistic regression on standardised features.

    weight (d, L), bias (L,), mean/std (d,) of the train features; ``l2`` is the chosen strength and
    ``val_auroc_by_l2`` the validation macro AUROC of every strength tried.
    """

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    l2: float
    val_auroc_by_l2: dict[float, float]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(N, d) features -> (N, L) logits (monotone in the probabilities, enough for AUROC)."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std) @ self.weight + self.bias


def _lbfgs(x: torch.Tensor, y: torch.Tensor, l2: float, w: torch.Tensor, b: torch.Tensor,
           max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimise sum over labels of mean BCE + l2/2 ||w_l||^2 (bias unpenalised) from (w, b).

    x (N, d), y (N, L), w (d, L), b (L,). The labels' problems are independent, so one joint
    L-BFGS solves all of them with a single matmul per evaluation.
    """
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                            tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.addmm(b, x, w)
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / x.shape[0]
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


@contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads (process-global; restored on exit)."""
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     l2_grid: Sequence[float], max_iter: int = 100, num_threads: int | None = 1,
                     device: torch.device | None = None, dtype: torch.dtype | None = None) -> LinearProbe:
    """Fit on (N, d) features / (N, L) 0/1 targets, choosing the L2 strength by val macro AUROC.

    Strengths are tried from strongest to weakest, each warm-started from the previous solution
    (the strong ones converge in a few steps); ties keep the stronger. Labels with one class in
    train get zero weights and the (smoothed) log-odds of their prevalence as bias: finite,
    constant scores instead of an unbounded bias. ``num_threads`` (None: leave torch's setting)
    defaults to 1 because these (N, d) x (d, L) products are too small to gain from threads: on 2
    shared cores one thread fitted 5000 x 192 x 14 in 0.19 s, two in 0.5 s and up to 7 s when busy.
    ``device``: where the fit runs (default CPU); ``dtype`` defaults to float32 on a GPU (the features are
    float32 already) and float64 on the CPU; float32 moves macro AUROC by well under 1e-3 (tested).
    """
    if len(l2_grid) == 0:
        raise ValueError("l2_grid must name at least one L2 strength")
    device = device or torch.device("cpu")
    dtype = dtype or (torch.float64 if device.type == "cpu" else torch.float32)
    with _torch_threads(num_threads):
        return _fit_grid(x_train, y_train, x_val, y_val, l2_grid, max_iter, device, dtype)


def _fit_grid(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
              l2_grid: Sequence[float], max_iter: int, device: torch.device, dtype: torch.dtype) -> LinearProbe:
    """``fit_linear_probe`` without the argument check and thread setting."""
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std = np.where(std > 1e-12, std, 1.0)  # constant features: centred to 0, not divided by 0
    x = torch.from_numpy((x_train - mean) / std).to(device, dtype)
    y = torch.from_numpy(np.asarray(y_train, dtype=np.float64)).to(device, dtype)
    positives = y.sum(dim=0)
    fit = (positives > 0) & (positives < y.shape[0])  # (L,) labels with both classes in train
    weight = torch.zeros(x.shape[1], y.shape[1], dtype=dtype, device=device)
    bias = torch.logit((positives + 0.5) / (y.shape[0] + 1.0))  # prevalence start / single-class answer

    best: LinearProbe | None = None
    scores: dict[float, float] = {}
    w_fit, b_fit = weight[:, fit], bias[fit]
    for l2 in sorted(l2_grid, reverse=True):
        if bool(fit.any()):
            w_fit, b_fit = _lbfgs(x, y[:, fit], float(l2), w_fit, b_fit, max_iter)
        weight[:, fit], bias[fit] = w_fit, b_fit
        probe = LinearProbe(weight.double().cpu().numpy(), bias.double().cpu().numpy(), mean, std, float(l2), scores)
        scores[float(l2)] = macro_auroc(np.asarray(y_val), probe.predict(x_val))[0]
        if best is None or scores[float(l2)] > np.nan_to_num(scores[best.l2], nan=-np.inf):
            best = probe
    assert best is not None
    return best


# --- one probe run, as the sweep calls it ----------------------------------------------------------


@dataclass
class ProbeResult:
    """What one probe reports. ``per_label``: name -> {"auroc": float, "ci": (lo, hi)}; ``sizes``:
    images per split used (train after the label fraction); ``split``: where the metrics come from."""

    macro_auroc: float
    macro_ci: tuple[float, float]
    per_label: dict[str, dict[str, Any]]
    l2: float
    sizes: dict[str, int]
    label_fraction: float
    split: str
    seconds: float
    # (N, L) probe scores and 0/1 targets of ``split``, in cache row order: what paired comparisons
    # between runs on the same images need. Not part of the JSON summary.
    scores: np.ndarray | None = field(default=None, repr=False)
    targets: np.ndarray | None = field(default=None, repr=False)

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict: NaN becomes None, tuples become lists; no image or patient ids."""
        def clean(v: float) -> float | None:
            return None if math.isnan(v) else float(v)

        return {
            "macro_auroc": clean(self.macro_auroc),
            "macro_ci": [clean(v) for v in self.macro_ci],
            "per_label": {name: {"auroc": clean(d["auroc"]), "ci": [clean(v) for v in d["ci"]]}
                          for name, d in self.per_label.items()},
            "l2": self.l2, "sizes": dict(self.sizes), "label_fraction": self.label_fraction,
            "split": self.split, "seconds": self.seconds,
        }


def _check_splits(features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                  label_names: Sequence[str], splits: Sequence[str]) -> None:
    for split in splits:
        if split not in features or split not in labels:
            raise DataError(f"probe: split {split!r} missing; features have {sorted(features)}, "
                            f"labels have {sorted(labels)}")
        x, y = features[split], labels[split]
        if x.ndim != 2 or y.shape != (x.shape[0], len(label_names)) or x.shape[0] == 0:
            raise DataError(f"probe: split {split!r} has features {x.shape} and labels {y.shape}; "
                            f"expected (N, d) and (N, {len(label_names)}) with N > 0")


def run_probe(features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
              label_names: Sequence[str], cfg: ProbeConfig,
              eval_split: str = "val",
              train_patients: Sequence[str] | None = None) -> ProbeResult:
    """Fit on train (a ``cfg.label_fraction`` of its patients), pick L2 on val, report ``eval_split``.

    ``features``/``labels``: split -> (N, d) / (N, L) arrays; ``train_patients``: (N_train,) patient
    ids, required when ``label_fraction < 1``. The L2 strength is always chosen on val, so "val"
    metrics are slightly optimistic (what the sweep ranks by) and "test" ones are not.
    """
    return run_probe_splits(features, labels, label_names, cfg, (eval_split,), train_patients)[eval_split]


def run_probe_splits(features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                     label_names: Sequence[str], cfg: ProbeConfig, eval_splits: Sequence[str] = ("val",),
                     train_patients: Sequence[str] | None = None,
                     device: torch.device | None = None) -> dict[str, ProbeResult]:
    """:func:`run_probe` for several splits from ONE fit (a sweep milestone reports val and test); the fit
    runs on ``device`` (fit_linear_probe)."""
    start = time.perf_counter()
    for split in eval_splits:
        if split not in ("val", "test"):
            raise ValueError(f"eval_split must be 'val' or 'test', got {split!r}")
    _check_splits(features, labels, label_names, sorted({"train", "val", *eval_splits}))
    x_train, y_train = features["train"], labels["train"]
    if cfg.label_fraction < 1:
        if train_patients is None or len(train_patients) != len(x_train):
            raise DataError(f"probe: label_fraction {cfg.label_fraction} needs one patient id per train row")
        keep = label_fraction_mask(train_patients, cfg.label_fraction, cfg.seed)
        x_train, y_train = x_train[keep], y_train[keep]
    probe = fit_linear_probe(x_train, y_train, features["val"], labels["val"], cfg.l2_grid, device=device)
    fit_seconds = time.perf_counter() - start
    positives = np.asarray(y_train).sum(axis=0)
    learnt = (positives > 0) & (positives < len(y_train))  # (L,) labels with both classes to learn from
    return {split: _evaluate(probe, features, labels, label_names, cfg, split, len(x_train), fit_seconds, learnt)
            for split in eval_splits}


def _evaluate(probe: LinearProbe, features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
              label_names: Sequence[str], cfg: ProbeConfig, split: str, n_train: int,
              fit_seconds: float, learnt: np.ndarray) -> ProbeResult:
    """Scores, macro/per-label AUROC and bootstrap CIs of a fitted probe on one split. A label without
    both classes in the train rows used (``learnt`` False) has NaN scores: missing, not AUROC 0.5."""
    start = time.perf_counter()
    y_eval = np.asarray(labels[split])
    scores = probe.predict(features[split])
    scores[:, ~learnt] = np.nan
    macro, per_label = macro_auroc(y_eval, scores)
    boot = bootstrap_aurocs(y_eval, scores, cfg.bootstrap, cfg.seed)
    alpha = 0.05
    return ProbeResult(
        macro_auroc=macro,
        macro_ci=percentile_ci(macro_of_resamples(boot, per_label), alpha),
        per_label={name: {"auroc": float(per_label[j]), "ci": percentile_ci(boot[:, j], alpha)}
                   for j, name in enumerate(label_names)},
        l2=probe.l2,
        sizes={"train": n_train, **{s: len(features[s]) for s in sorted({"val", split})}},
        label_fraction=cfg.label_fraction,
        split=split,
        seconds=fit_seconds + time.perf_counter() - start,
        scores=scores.astype(np.float32),
        targets=y_eval.astype(np.int8),
    )


__all__ = [
    "LinearProbe",
    "ProbeResult",
    "auroc",
    "bootstrap_aurocs",
    "bootstrap_ci",
    "bootstrap_per_label",
    "extract_features",
    "fit_linear_probe",
    "label_fraction_mask",
    "macro_auroc",
    "run_probe",
    "run_probe_splits",
]
