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

from mmsn.config import Config, ProbeConfig
from mmsn.data.cache import Cache
from mmsn.data.ehr import EHREncoder, resolve_features
from mmsn.evaluate import split_features, train_patients
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


Features = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]  # split -> (N, d) features, (N, L) labels
FEATURE_SPLITS = ("train", *SPLITS)


def random_init_features(cache: Cache, cfg: Config, device: torch.device) -> Features:
    from mmsn.models.backbone import ViTEncoder, create_vit

    torch.manual_seed(cfg.train.seed)
    encoder = ViTEncoder(create_vit(cfg.model.backbone, cfg.views.size, cfg.model.patch_size)).eval().to(device)
    return split_features(encoder, cache, cfg.probe, cfg.views.size, device, FEATURE_SPLITS)


def raw_pixel_features(cache: Cache, cfg: Config, device: torch.device) -> Features:
    def pooled(x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, RAW_GRID).flatten(1)

    return split_features(pooled, cache, cfg.probe, cfg.views.size, device, FEATURE_SPLITS)


def ehr_features(cache: Cache) -> Features | None:
    columns = resolve_features(["all"], cache.ehr_columns)
    if not columns:
        return None
    train = cache.table["split"].to_numpy() == "train"
    encoded = EHREncoder.fit(cache.table, columns, train).transform(cache.table)
    return ({s: encoded[cache.rows(s)] for s in FEATURE_SPLITS},
            {s: cache.label_matrix(cache.rows(s)) for s in FEATURE_SPLITS})


def fit(features: Features, cache: Cache, probe: ProbeConfig) -> dict[str, ProbeResult]:
    """The probe of one reference's features (val and test results, one fit)."""
    return run_probe_splits(features[0], features[1], cache.labels, probe, SPLITS, train_patients(cache))


def ehr_only(cache: Cache, cfg: Config) -> dict[str, ProbeResult] | None:
    features = ehr_features(cache)
    return None if features is None else fit(features, cache, cfg.probe)


def supervised_features(cache: Cache, cfg: Config, device: torch.device) -> Features:
    """The same architecture trained on the train labels (an upper bound): masked BCE over the findings on
    one global crop per image (the recipe's views), AdamW at ``optim.lr`` with a cosine decay over
    ``train.epochs`` epochs of ``train.batch_size``; then its frozen features, as every other row's."""
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
    return split_features(encoder.eval(), cache, cfg.probe, cfg.views.size, device, FEATURE_SPLITS)


def reference_features(name: str, cache: Cache, cfg: Config, device: torch.device) -> Features | None:
    """The features reference ``name`` probes (None: EHR only on a cache without EHR columns)."""
    if name == "random init":
        return random_init_features(cache, cfg, device)
    if name == "raw pixels":
        return raw_pixel_features(cache, cfg, device)
    if name == "EHR only":
        return ehr_features(cache)
    if name == "supervised":
        return supervised_features(cache, cfg, device)
    raise ValueError(f"unknown reference {name!r}; valid: {', '.join(REFERENCES)}")


def stored_features(out: Path | None, stamp: str, name: str, cache: Cache, cfg: Config,
                    device: torch.device) -> Features | None:
    """:func:`reference_features`, extracted once per (cache, recipe) and kept in ``out`` as
    ``<slug>_features.npz`` (float32; its fingerprint inside): every label fraction and draw of the evaluation
    protocol, and every later analysis, probes the same features instead of running the encoder again."""
    path = out / f"{REFERENCES[name]}_features.npz" if out is not None else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            if str(data["stamp"]) == stamp:
                return ({s: data[f"x_{s}"] for s in FEATURE_SPLITS}, {s: data[f"y_{s}"] for s in FEATURE_SPLITS})
    features = reference_features(name, cache, cfg, device)
    if features is not None and path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        arrays: dict[str, Any] = {"stamp": np.asarray(stamp), **{f"x_{s}": features[0][s] for s in FEATURE_SPLITS},
                                  **{f"y_{s}": features[1][s] for s in FEATURE_SPLITS}}
        np.savez(tmp, **arrays)
        tmp.replace(path)
    return features


def compute(cache: Cache, cfg: Config, device: torch.device, names: Sequence[str] = DEFAULT,
            out: Path | None = None) -> dict[str, dict[str, ProbeResult]]:
    """name -> split -> probe result, for the references that exist for this cache (features kept in ``out``)."""
    results: dict[str, dict[str, ProbeResult]] = {}
    stamp = fingerprint(cache, cfg)
    for name in names:
        if (features := stored_features(out, stamp, name, cache, cfg, device)) is not None:
            results[name] = fit(features, cache, cfg.probe)
    return results


def write(out: Path, results: dict[str, dict[str, ProbeResult]], stamp: str, suffix: str = "") -> None:
    """One JSON and one test npz per reference (``<slug><suffix>``); the JSON last, so a reader never sees
    half of one."""
    out.mkdir(parents=True, exist_ok=True)
    for name, by_split in results.items():
        slug = REFERENCES[name] + suffix
        test = by_split["test"]
        assert test.scores is not None and test.targets is not None  # probe results always carry them
        np.savez_compressed(out / f"{slug}_test.npz", scores=test.scores, targets=test.targets)
        payload = {"name": name, "fingerprint": stamp, **{s: r.to_json_dict() for s, r in by_split.items()}}
        tmp = out / f".{slug}.json.tmp"
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(out / f"{slug}.json")


def read(out: Path, stamp: str | None = None, suffix: str = "") -> dict[str, tuple[dict[str, Any], Path]]:
    """name -> (probe summary with val/test, test npz path) of the references in ``out`` (with a
    matching fingerprint when ``stamp`` is given)."""
    found: dict[str, tuple[dict[str, Any], Path]] = {}
    for name, slug in REFERENCES.items():
        try:
            payload = json.loads((out / f"{slug}{suffix}.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        npz = out / f"{slug}{suffix}_test.npz"
        if npz.is_file() and (stamp is None or payload.get("fingerprint") == stamp):
            found[name] = (payload, npz)
    return found


def _missing(have: dict[str, Any], cache: Cache, names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in have and not (n == "EHR only" and not cache.ehr_columns)]


def ensure(out: Path, cache: Cache, cfg: Config, device: torch.device,
           names: Sequence[str] = DEFAULT) -> dict[str, tuple[dict[str, Any], Path]]:
    """The references ``names`` of ``cache`` under ``cfg`` in ``out`` (and any other already there):
    computed once, reused while the fingerprint holds."""
    stamp = fingerprint(cache, cfg)
    missing = _missing(read(out, stamp), cache, names)
    if missing:
        write(out, compute(cache, cfg, device, missing, out), stamp)
    return read(out, stamp)


def ensure_protocol(out: Path, cache: Cache, cfg: Config, device: torch.device, fractions: Sequence[float],
                    draws: int, names: Sequence[str] = DEFAULT) -> dict[tuple[str, float, int], tuple[dict, Path]]:
    """(name, label fraction, draw) -> (summary, test npz) of the references of an evaluation target of
    the protocol (mmsn.protocol: the same draws of train patients as the encoders'), in ``out`` as
    ``<slug>_f<fraction>_d<draw>.json``: features once per reference, one fit per draw, reused while the
    fingerprint holds."""
    from mmsn.protocol import draw_seeds

    stamp, features = fingerprint(cache, cfg), {}  # features: in memory here, on disk across calls
    found: dict[tuple[str, float, int], tuple[dict, Path]] = {}
    for fraction in fractions:
        for d, seed in enumerate(draw_seeds(fraction, draws, cfg.probe.seed)):
            suffix = f"_f{fraction:g}_d{d}"
            missing = _missing(read(out, stamp, suffix), cache, names)
            if missing:
                probe = dataclasses.replace(cfg.probe, label_fraction=fraction, seed=seed, bootstrap=0)
                for name in missing:
                    if name not in features:
                        features[name] = stored_features(out, stamp, name, cache, cfg, device)
                results = {n: fit(f, cache, probe) for n in missing if (f := features[n]) is not None}
                write(out, results, stamp, suffix)
            found.update({(n, fraction, d): v for n, v in read(out, stamp, suffix).items()})
    return found


__all__ = ["DEFAULT", "RAW_GRID", "REFERENCES", "compute", "ensure", "ensure_protocol", "fingerprint", "read",
           "stored_features", "write"]
