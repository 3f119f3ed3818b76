"""The cache: the one format every later stage (pretraining, probes, sweeps) reads.

``CACHE_DIR/images.npy``     uint8 (N, size, size) grey, opened with mmap so memory does not grow with N
``CACHE_DIR/table.parquet``  one row per image, in the order of images.npy: image_id, patient_id, split,
                             the label columns (0/1) and the raw EHR columns (canonical names)
``CACHE_DIR/meta.json``      dataset, size, labels, EHR groups -> columns, split seed, counts,
                             source files, notes and ``schema_version``
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmsn.data.source import EHRColumn
from mmsn.errors import DataError

SCHEMA_VERSION = 1
CACHE_FILES = ("images.npy", "table.parquet", "meta.json")


@dataclass
class Cache:
    """An opened cache. ``images`` is a read-only memory map; ``table`` rows align with it."""

    root: Path
    meta: dict[str, Any]
    table: pd.DataFrame
    images: np.ndarray

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.meta["labels"])

    @property
    def size(self) -> int:
        return int(self.meta["size"])

    @cached_property
    def ehr_columns(self) -> tuple[EHRColumn, ...]:
        return tuple(EHRColumn(**c) for c in self.meta["ehr_columns"])

    def rows(self, split: str) -> np.ndarray:
        """Positions (into images and table) of the rows of one split, ascending."""
        return np.flatnonzero(self.table["split"].to_numpy() == split)

    def label_matrix(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), n_labels) float32 0/1 targets."""
        labels = self.table[list(self.labels)].to_numpy(dtype=np.float32)
        return labels if rows is None else labels[rows]


def open_cache(path: str | Path) -> Cache:
    """Open a prepared cache, checking that its three files exist and agree with each other."""
    root = Path(path)
    for name in CACHE_FILES:
        if not (root / name).is_file():
            raise DataError(f"{root / name}: missing; is {root} a cache written by 'mmsn data prepare'?")
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{root / 'meta.json'}: unreadable ({err})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{root / 'meta.json'}: schema_version {meta.get('schema_version')!r}, this mmsn reads "
            f"{SCHEMA_VERSION}; re-run 'mmsn data prepare'"
        )
    table = pd.read_parquet(root / "table.parquet")
    images = np.load(root / "images.npy", mmap_mode="r")
    if images.ndim != 3 or images.shape[0] != len(table) or images.dtype != np.uint8:
        raise DataError(
            f"{root / 'images.npy'}: shape {images.shape} {images.dtype} does not match "
            f"{len(table)} rows of {root / 'table.parquet'}"
        )
    return Cache(root=root, meta=meta, table=table, images=images)


def describe(cache: Cache) -> str:
    """Human summary printed by ``mmsn data info``: counts, label prevalence, EHR missing rates."""
    meta, table = cache.meta, cache.table
    lines = [f"cache {cache.root}  dataset={meta['dataset']}  size={meta['size']}px  "
             f"images={len(table)}  patients={table['patient_id'].nunique()}"]
    lines.append(f"split seed={meta['split']['seed']}  method={meta['split']['method']}")
    lines.append(f"{'split':<8}{'images':>8}{'patients':>10}")
    for split in ("train", "val", "test"):
        part = table[table["split"] == split]
        lines.append(f"{split:<8}{len(part):>8}{part['patient_id'].nunique():>10}")
    lines.append("label prevalence (train / val / test):")
    for label in cache.labels:
        prev = [table.loc[table["split"] == s, label].mean() for s in ("train", "val", "test")]
        lines.append(f"  {label:<28}" + "".join(f"{p:>8.3f}" for p in prev))
    lines.append("EHR columns (group, kind, missing rate):")
    for col in cache.ehr_columns:
        lines.append(f"  {col.name:<14}{col.group:<13}{col.kind:<12}{table[col.name].isna().mean():>7.3f}")
    for key, note in meta.get("notes", {}).items():
        lines.append(f"note[{key}]: {note}")
    return "\n".join(lines)
