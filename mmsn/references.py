"""Reference probes every representation is shown against, on the same cache, split and test images.

A pretrained encoder is only interesting if its linear probe beats what needs no pretraining at all:

- ``random init``: the same architecture (backbone, image size, patch size) with fresh weights, seeded by
  ``train.seed``, probed exactly as a trial's encoder is (the same ``probe.features``, mmsn.evaluate.probe_encoder);
- ``raw pixels``: the probe on the image itself, average-pooled to a 16 x 16 grid (256 features), with the
  same input normalisation and resizing as every encoder;
- ``supervised`` (only when asked for: it trains): the same architecture trained on the train labels, then
  probed frozen: roughly how much a linear probe of this backbone can get out of these images;
- ``EHR only``: the probe on the EHR encoding of every column of the cache (one-hot + standardised, fit on
  train, mmsn.data.ehr), no image at all. Caches without EHR columns have no such row.

Each reference writes ``<slug>.json`` (val and test probe summaries, as a trial's ``probes/epoch_XXX.json``)
and ``<slug>_test.npz`` (per-image test scores in cache row order, as a trial's) into one directory, with a
``fingerprint`` of what it depends on, so an analysis reuses it until the cache or the recipe changes and
pairs it with the trials image by image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mmsn.config import Config
from mmsn.data.cache import Cache
from mmsn.data.ehr import EHREncoder, resolve_features
from mmsn.evaluate import probe_encoder
from mmsn.probe import ProbeResult, run_probe_splits

# name -> file; "supervised" trains, so it is computed only when asked for (``mmsn reference --supervised``)
REFERENCES = {"random init": "random_init", "raw pixels": "raw_pixels", "EHR only": "ehr_only",
              "supervised": "supervised"}
DEFAULT = ("random init", "raw pixels", "EHR only")
RAW_GRID = 16  # raw pixels pooled to RAW_GRID x RAW_GRID: linear probes on full-resolution pixels overfit
SPLITS = ("val", "test")


def fingerprint(cache: Cache, cfg: Config) -> str:
    """What the references depend on: the cache (its whole meta.json: a re-prepared cache is a new one)
    and the recipe's architecture, seed and probe settings. Nothing else in the config changes them."""
    recipe = {"backbone": cfg.model.backbone, "patch_size": cfg.model.patch_size, "size": cfg.views.size,
              "seed": cfg.train.seed, "raw_grid": RAW_GRID, "views": dataclasses.asdict(cfg.views),
              "supervised": [cfg.train.epochs, cfg.train.batch_size, cfg.train.max_steps_per_epoch, cfg.optim.lr,
                             cfg.optim.weight_decay],
              "probe": [cfg.probe.label_fraction, list(cfg.probe.l2_grid), cfg.probe.bootstrap, cfg.probe.seed,
                        cfg.probe.features, cfg.probe.last_blocks]}
    text = json.dumps({"cache": cache.meta, "recipe": recipe}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def random_init(cache: Cache, cfg: Config, device: torch.device) -> dict[str, ProbeResult]:
    from mmsn.models.backbone import ViTEncoder, create_vit

    torch.manual_seed(cfg.train.seed)
    encoder = ViTEncoder(create_vit(cfg.model.backbone, cfg.views.size, cfg.model.patch_size)).eval().to(device)
    return probe_encoder(encoder, cache, cfg.probe, cfg.views.size, device, SPLITS)


def raw_pixels(cache: Cache, cfg: Config, device: torch.device) -> dict[str, ProbeResult]:
    def pooled(x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, RAW_GRID).flatten(1)

    return probe_encoder(pooled, cache, cfg.probe, cfg.views.size, device, SPLITS)


def ehr_only(cache: Cache, cfg: Config) -> dict[str, ProbeResult] | None:
    columns = resolve_features(["all"], cache.ehr_columns)
    if not columns:
        return None
    train = cache.table["split"].to_numpy() == "train"
    encoded = EHREncoder.fit(cache.table, columns, train).transform(cache.table)
    splits = ("train", *SPLITS)
    features = {s: encoded[cache.rows(s)] for s in splits}
    labels = {s: cache.label_matrix(cache.rows(s)) for s in splits}
    patients = cache.table["patient_id"].to_numpy()[cache.rows("train")].astype(str)
    return run_probe_splits(features, labels, cache.labels, cfg.probe, SPLITS, patients)


def supervised(cache: Cache, cfg: Config, device: torch.device) -> dict[str, ProbeResult]:
    """The same architecture trained on the train labels (an upper bound): masked BCE over the findings on
    one global crop per image (the recipe's views), AdamW at ``optim.lr`` with a cosine decay over
    ``train.epochs`` epochs of ``train.batch_size``; then probed frozen, as every other row."""
    from mmsn.models.backbone import ViTEncoder, create_vit
    from mmsn.views import MultiCropViews

    torch.manual_seed(cfg.train.seed)
    encoder = ViTEncoder(create_vit(cfg.model.backbone, cfg.views.size, cfg.model.patch_size)).to(device)
    head = torch.nn.Linear(encoder.embed_dim, len(cache.labels)).to(device)
    params = [*encoder.parameters(), *head.parameters()]
    rows, views = np.sort(cache.rows("train")), MultiCropViews(cfg.views)
    targets = torch.from_numpy(cache.label_matrix(rows).astype(np.float32))
    batch = min(cfg.train.batch_size, len(rows))
    steps = len(rows) // batch
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps * cfg.train.epochs))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    view_gen = torch.Generator(device=device).manual_seed(cfg.train.seed + 1)
    encoder.train()
    for _ in range(cfg.train.epochs):
        order = torch.randperm(len(rows), generator=gen)
        for s in range(steps):
            pick = np.sort(order[s * batch:(s + 1) * batch].numpy())
            images = torch.from_numpy(np.ascontiguousarray(cache.images[rows[pick]])).to(device)
            y = targets[pick].to(device)
            known = torch.isfinite(y) & (y >= 0)  # uncertain or missing labels are no target
            logits = head(encoder(views.single(images, view_gen)))
            loss = F.binary_cross_entropy_with_logits(logits[known], y[known])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return probe_encoder(encoder.eval(), cache, cfg.probe, cfg.views.size, device, SPLITS)


def compute(cache: Cache, cfg: Config, device: torch.device,
            names: Sequence[str] = DEFAULT) -> dict[str, dict[str, ProbeResult]]:
    """name -> split -> probe result, for the references that exist for this cache."""
    out: dict[str, dict[str, ProbeResult]] = {}
    for name in names:
        if name == "random init":
            out[name] = random_init(cache, cfg, device)
        elif name == "raw pixels":
            out[name] = raw_pixels(cache, cfg, device)
        elif name == "EHR only" and (result := ehr_only(cache, cfg)) is not None:
            out[name] = result
        elif name == "supervised":
            out[name] = supervised(cache, cfg, device)
    return out


def write(out: Path, results: dict[str, dict[str, ProbeResult]], stamp: str) -> None:
    """One JSON and one test npz per reference; the JSON last, so a reader never sees half of one."""
    out.mkdir(parents=True, exist_ok=True)
    for name, by_split in results.items():
        slug = REFERENCES[name]
        test = by_split["test"]
        assert test.scores is not None and test.targets is not None  # probe results always carry them
        np.savez_compressed(out / f"{slug}_test.npz", scores=test.scores, targets=test.targets)
        payload = {"name": name, "fingerprint": stamp, **{s: r.to_json_dict() for s, r in by_split.items()}}
        tmp = out / f".{slug}.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(out / f"{slug}.json")


def read(out: Path, stamp: str | None = None) -> dict[str, tuple[dict[str, Any], Path]]:
    """name -> (probe summary with val/test, test npz path) of the references in ``out`` (with a
    matching fingerprint when ``stamp`` is given)."""
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for name, slug in REFERENCES.items():
        try:
            payload = json.loads((out / f"{slug}.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        npz = out / f"{slug}_test.npz"
        if npz.is_file() and (stamp is None or payload.get("fingerprint") == stamp):
            found[name] = (payload, npz)
    return found


def ensure(out: Path, cache: Cache, cfg: Config, device: torch.device,
           names: Sequence[str] = DEFAULT) -> dict[str, tuple[dict[str, Any], Path]]:
    """The references ``names`` of ``cache`` under ``cfg`` in ``out`` (and any other already there):
    computed once, reused while the fingerprint holds."""
    stamp = fingerprint(cache, cfg)
    have = read(out, stamp)
    missing = [n for n in names if n not in have and not (n == "EHR only" and not cache.ehr_columns)]
    if missing:
        write(out, compute(cache, cfg, device, missing), stamp)
    return read(out, stamp)


__all__ = ["DEFAULT", "RAW_GRID", "REFERENCES", "compute", "ensure", "fingerprint", "read", "write"]
