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
                   splits: Sequence[str], shard: tuple[int, int] = (0, 1)
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(split -> (N, d) features, split -> (N, L) labels) of ``encode`` on the cache's ``splits``; with
    ``shard`` (rank, world), of every world-th row from the rank-th only (see :func:`gathered`)."""
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
        rows = cache.rows(split)[shard[0]::shard[1]]
        features[split] = extract_features(encode, cache.images, rows, size, cfg.batch_size, device)
        labels[split] = cache.label_matrix(rows)
    return features, labels


def gathered(encode: Encode | ViTEncoder, cache: Cache, cfg: ProbeConfig, size: int, device: torch.device,
             splits: Sequence[str], rank: int, world: int
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """:func:`split_features` with the extraction split across a DDP group's ranks: each rank encodes every
    world-th row of each split, and rank 0 gets them all back in row order (the other ranks: None). The
    ranks' encoders must be equal (DDP keeps them so), and every rank must call it at the same point."""
    features, labels = split_features(encode, cache, cfg, size, device, splits, shard=(rank, world))
    if world == 1:
        return features, labels
    import torch.distributed as dist

    parts: list[dict[str, np.ndarray]] | None = [{} for _ in range(world)] if rank == 0 else None
    dist.gather_object(features, parts, dst=0)
    if parts is None:
        return None
    full = {}
    for split in splits:
        shards = [part[split] for part in parts]
        width = max(x.shape[1] for x in shards)
        full[split] = np.empty((sum(len(x) for x in shards), width), dtype=np.float32)
        for r, x in enumerate(shards):
            full[split][r::world] = x.reshape(len(x), width)  # an empty shard is (0, 0)
    return full, {split: cache.label_matrix(cache.rows(split)) for split in splits}
