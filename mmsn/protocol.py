"""The papers' evaluation protocol: a frozen encoder probed on other datasets and with a fraction of the
train labels.

CXR-EHR-MSN pretrains once and probes the frozen encoder on MIMIC-CXR, CheXpert and NIH-14; MRM's headline
is label efficiency (1 %, 10 %, 100 % of the labels). Each evaluation target is a prepared cache with its
own labels and its own train/val/test split; for each label fraction below 1 the probe is fitted on
``draws`` seeded draws of the train *patients* (whole patients, ``mmsn.probe.label_fraction_mask``), each
draw with its own seed (the same for every encoder, so encoders are compared on the same labelled
images). L2 is chosen on the full val split, as in every probe; the test split is what is reported.

A label that has no positive (or no negative) among the train images of a draw cannot be learnt: it is
reported as missing (NaN), never as AUROC 0.5, and the macro AUROC is taken over the others.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsn.config import ProbeConfig
from mmsn.data.cache import Cache, open_cache
from mmsn.errors import DataError
from mmsn.evaluate import Encode, split_features, train_patients
from mmsn.models.backbone import ViTEncoder
from mmsn.probe import label_fraction_mask, run_probe_splits

SPLITS = ("train", "val", "test")
Features = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # split -> (N, d) features, (N, L) labels


@dataclass(frozen=True)
class Protocol:
    """What to evaluate: ``targets`` (key, cache directory), the primary cache first; the label
    ``fractions``; ``draws`` per fraction below 1."""

    targets: tuple[tuple[str, str], ...]
    fractions: tuple[float, ...] = (1.0,)
    draws: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"targets": [list(t) for t in self.targets], "fractions": list(self.fractions), "draws": self.draws}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        return cls(tuple((str(k), str(c)) for k, c in data["targets"]), tuple(float(f) for f in data["fractions"]),
                   int(data["draws"]))


def draw_seeds(fraction: float, draws: int, seed: int) -> list[int]:
    """The probe seeds of a fraction's draws: one for the full train split, ``draws`` below it."""
    return [seed] if fraction >= 1 else [seed + d for d in range(draws)]


def check_fractions(key: str, cache: Cache, fractions: Sequence[float], draws: int, seed: int) -> None:
    """Refuse a fraction that leaves some draw's train images with no positive for any label: its probe
    would have nothing to learn. (A fraction that misses only some labels is run; those are missing.)"""
    patients = train_patients(cache)
    labels = cache.label_matrix(cache.rows("train"))
    for fraction in fractions:
        for d, draw_seed in enumerate(draw_seeds(fraction, draws, seed)):
            keep = label_fraction_mask(patients, fraction, draw_seed)
            if not (labels[keep] > 0).any():
                n_patients = len(set(np.asarray(patients)[keep]))
                raise DataError(
                    f"evaluate.label_fractions: {fraction:g} of {key}'s train split is {int(keep.sum())} images of "
                    f"{n_patients} patients (draw {d}) with no positive for any of its {len(cache.labels)} labels; "
                    "raise the fraction or use more images")


def run_protocol(encode: Encode | ViTEncoder, protocol: Protocol, cfg: ProbeConfig, size: int,
                 device: torch.device, known: dict[str, Features] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Probe ``encode`` on every (target, fraction, draw): features once per target (``known``: features
    already extracted, by target key, e.g. the primary's from the milestone probe), one fit per draw.
    The JSON results carry no CIs: the analysis bootstraps the per-image scores.

    Returns (summary, scores): summary ``{"results": [{dataset, fraction, draw, seed, val, test}],
    "labels": {dataset: [names]}, "seconds": s}`` (JSON-able, no ids) and scores
    ``{"<dataset>_f<fraction>_d<draw>": ((N_test, L) test scores, (N_test, L) targets)}`` in cache row order.
    """
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    labels: dict[str, list[str]] = {}
    for key, cache_dir in protocol.targets:
        cache = open_cache(Path(cache_dir))
        labels[key] = list(cache.labels)
        features, targets = (known or {}).get(key) or split_features(encode, cache, cfg, size, device, SPLITS)
        patients = train_patients(cache)
        for fraction in protocol.fractions:
            for d, draw_seed in enumerate(draw_seeds(fraction, protocol.draws, cfg.seed)):
                # No bootstrap here: the analysis resamples the saved per-image scores, paired across arms
                probe_cfg = dataclasses.replace(cfg, label_fraction=fraction, seed=draw_seed, bootstrap=0)
                out = run_probe_splits(features, targets, cache.labels, probe_cfg, ("val", "test"), patients)
                results.append({"dataset": key, "fraction": fraction, "draw": d, "seed": draw_seed,
                                **{split: r.to_json_dict() for split, r in out.items()}})
                test = out["test"]
                assert test.scores is not None and test.targets is not None
                scores[score_name(key, fraction, d)] = (test.scores, test.targets)
    return {"results": results, "labels": labels, "seconds": time.perf_counter() - start}, scores


def score_name(dataset: str, fraction: float, draw: int) -> str:
    """File-name-safe name of one (dataset, fraction, draw) score set: ``nih14_f0.01_d2``."""
    return f"{dataset}_f{fraction:g}_d{draw}"


def target_key(dataset: str, index: int, taken: Sequence[str]) -> str:
    """A short unique name for an evaluation target: the dataset's name, suffixed when it repeats."""
    key = dataset if dataset not in taken else f"{dataset}{index}"
    if not key.replace("_", "").isalnum():
        raise DataError(f"evaluate.datasets[{index}]: dataset name {dataset!r} is not a plain name")
    return key


__all__ = ["Protocol", "check_fractions", "draw_seeds", "run_protocol", "score_name", "target_key"]
