"""Linear-probe evaluation of an encoder on a cache: features once, then the probe (mmsn.probe)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch

from mmsn.config import ProbeConfig
from mmsn.data.cache import Cache
from mmsn.models.backbone import ViTEncoder
from mmsn.probe import ProbeResult, extract_features, run_probe_splits

Encode = Callable[[torch.Tensor], torch.Tensor]


def probe_encoder(encode: Encode | ViTEncoder, cache: Cache, cfg: ProbeConfig, size: int, device: torch.device,
                  eval_splits: Sequence[str] = ("val",)) -> dict[str, ProbeResult]:
    """Probe ``encode`` ((B,1,S,S) -> (B,d)) on the cache: fit on train, L2 chosen on val, one result
    per split in ``eval_splits``. Features are extracted once per split; a ViTEncoder gives the
    features ``cfg.features`` names (``ViTEncoder.probe_features``).

    The test split is read only when asked for (final analysis); the sweep scheduler sees val.
    """
    splits = ["train", "val"] + (["test"] if "test" in eval_splits else [])
    features, labels = split_features(encode, cache, cfg, size, device, splits)
    return run_probe_splits(features, labels, cache.labels, cfg, tuple(eval_splits), train_patients(cache))


def train_patients(cache: Cache) -> list[str]:
    """(N_train,) patient ids of the train rows, in row order: what label fractions draw from."""
    return [str(p) for p in cache.table["patient_id"].to_numpy()[cache.rows("train")]]


def split_features(encode: Encode | ViTEncoder, cache: Cache, cfg: ProbeConfig, size: int, device: torch.device,
                   splits: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(split -> (N, d) features, split -> (N, L) labels) of ``encode`` on the cache's ``splits``."""
    if isinstance(encode, ViTEncoder):
        encode = functools.partial(encode.probe_features, kind=cfg.features, last_blocks=cfg.last_blocks)
    if device.type == "cuda":  # bf16 features on GPU, as in pretraining; the probe itself is float64
        plain = encode

        def encode(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return plain(x).float()

    features: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    for split in splits:
        rows = cache.rows(split)
        features[split] = extract_features(encode, cache.images, rows, size, cfg.batch_size, device)
        labels[split] = cache.label_matrix(rows)
    return features, labels
