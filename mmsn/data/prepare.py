"""``mmsn data prepare``: validate a Source, split it by patient, write the cache atomically.

Everything is written into a temporary sibling directory that is renamed into place only when
complete, so an interrupted prepare never leaves a directory that looks like a valid cache.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmsn import __version__
from mmsn.data.cache import SCHEMA_VERSION
from mmsn.data.source import EHR_GROUPS, EHR_KINDS, ImageGetter, Source
from mmsn.data.splits import SPLITS, patient_split
from mmsn.errors import DataError

MIN_SIZE, MAX_SIZE = 16, 1024


def validate_source(source: Source) -> None:
    """Check the adapter's table against the contract of ``mmsn.data.source.Source``."""
    table, where = source.table, f"dataset {source.dataset!r}"
    if len(table) == 0:
        raise DataError(f"{where}: no images (empty table)")
    required = ["image_id", "patient_id", *source.labels, *(c.name for c in source.ehr)]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{where}: missing columns {missing}")
    duplicated = table["image_id"][table["image_id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{where}: image_id {duplicated.iloc[0]!r} appears more than once")
    for label in source.labels:
        values = pd.to_numeric(table[label], errors="coerce")
        if not values.isin([0, 1]).all():
            bad = int(np.flatnonzero(~values.isin([0, 1]).to_numpy())[0])
            raise DataError(f"{where}: label {label!r} row {bad} is {table[label].iloc[bad]!r}, not 0/1")
    for col in source.ehr:
        if col.group not in EHR_GROUPS or col.kind not in EHR_KINDS:
            raise DataError(f"{where}: EHR column {col.name!r} has group/kind {col.group}/{col.kind}")


def subsample(table: pd.DataFrame, n: int | None, seed: int) -> np.ndarray:
    """Positions of ``n`` rows drawn by whole patients (patients in seeded random order).

    Keeping a patient's images together preserves the multi-image structure the split relies on;
    only the last patient drawn may be cut. ``n=None`` keeps every row.
    """
    if n is None or n >= len(table):
        return np.arange(len(table))
    if n <= 0:
        raise DataError(f"--n {n}: must be a positive number of images")
    patients = table["patient_id"].astype(str)
    unique = np.array(sorted(pd.unique(patients)))
    rank = dict(zip(unique, np.random.default_rng([seed, 1]).permutation(len(unique))))
    order = np.argsort(patients.map(rank).to_numpy(), kind="stable")
    return np.sort(order[:n])


def assign_split(table: pd.DataFrame, split: tuple[float, float, float] | str, seed: int) -> np.ndarray:
    """The split column: patient-level by fractions, or the dataset's official split."""
    if split == "official":
        if "official_split" not in table.columns:
            raise DataError("--split official: this dataset ships no official split")
        names = table["official_split"].to_numpy(dtype=object)
        unassigned = int(pd.isna(table["official_split"]).sum())
        if unassigned:
            raise DataError(f"--split official: {unassigned} images are not in the official split file")
        mixed = table.groupby("patient_id")["official_split"].nunique()
        if (mixed > 1).any():
            raise DataError("--split official: the official split puts a patient in two splits")
    else:
        names = patient_split(table["patient_id"], split, seed)  # type: ignore[arg-type]
    fractions = (1.0, 1.0, 1.0) if isinstance(split, str) else split
    for name, frac in zip(SPLITS, fractions):
        if frac > 0 and not (names == name).any():
            raise DataError(f"--split {split}: the {name} set is empty")
    return names


def _render(getter: ImageGetter, rows: np.ndarray, size: int, workers: int) -> Iterator[np.ndarray]:
    if workers <= 1:
        yield from (getter(int(i), size) for i in rows)
        return
    # The getter (for MIMIC: 377k paths) is sent once per worker process, then only indices travel.
    ctx = multiprocessing.get_context("spawn")  # fork after torch/threads is unsafe
    with ctx.Pool(workers, initializer=_init_worker, initargs=(getter, size)) as pool:
        yield from pool.imap(_render_one, rows.tolist(), chunksize=64)


_WORKER: tuple[ImageGetter, int] | None = None


def _init_worker(getter: ImageGetter, size: int) -> None:
    global _WORKER
    _WORKER = (getter, size)


def _render_one(i: int) -> np.ndarray:
    assert _WORKER is not None
    getter, size = _WORKER
    return getter(i, size)


def write_images(path: Path, getter: ImageGetter, rows: np.ndarray, size: int, workers: int) -> None:
    """Render/resize each chosen row once into a uint8 (N, size, size) .npy written through a memmap."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(len(rows), size, size))
    progress = tqdm(total=len(rows), desc="images", unit="img", file=sys.stderr, disable=None)
    for k, img in enumerate(_render(getter, rows, size, workers)):
        if img.shape != (size, size) or img.dtype != np.uint8:
            raise DataError(f"image of row {int(rows[k])}: got {img.shape} {img.dtype}, want ({size}, {size}) uint8")
        out[k] = img
        progress.update()
    progress.close()
    out.flush()
    del out


def build_meta(source: Source, table: pd.DataFrame, size: int, seed: int, split: Any, n: int | None) -> dict:
    groups = {g: [c.name for c in source.ehr if c.group == g] for g in EHR_GROUPS}
    counts = {s: {"images": int((table["split"] == s).sum()),
                  "patients": int(table.loc[table["split"] == s, "patient_id"].nunique())} for s in SPLITS}
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": source.dataset,
        "size": size,
        "labels": list(source.labels),
        "ehr_groups": {g: cols for g, cols in groups.items() if cols},
        "ehr_columns": [vars(c) for c in source.ehr],
        "split": {"seed": seed, "method": "official" if split == "official" else "patient",
                  "fractions": None if split == "official" else list(split)},
        "counts": {"images": len(table), "patients": int(table["patient_id"].nunique()), **counts},
        "n_requested": n,
        "sources": [str(f) for f in source.files],
        "notes": dict(source.notes),
        "created_by": f"mmsn {__version__}",
    }


def prepare(source: Source, out: Path, *, size: int, seed: int, split: Any, n: int | None,
            workers: int = 1, overwrite: bool = False, exclude_patients: Collection[str] = ()) -> Path:
    """Write the cache for ``source`` to ``out`` (see mmsn.data.cache for the format). The images of
    ``exclude_patients`` are left out before any is drawn (an evaluation dataset that must not share a
    patient with the pretraining data); meta.json records how many, never which."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(f"--size {size}: must be within {MIN_SIZE}..{MAX_SIZE}")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    validate_source(source)
    allowed = np.flatnonzero(~source.table["patient_id"].astype(str).isin(set(exclude_patients)))
    if allowed.size == 0:
        raise DataError(f"{source.dataset}: every patient is excluded (they are the pretraining data's)")
    rows = allowed[subsample(source.table.iloc[allowed], n, seed)]
    keep = ["image_id", "patient_id", *source.labels, *(c.name for c in source.ehr)]
    table = source.table.iloc[rows].reset_index(drop=True)
    split_col = assign_split(table, split, seed)
    table = table[keep].assign(split=split_col)
    table = table[["image_id", "patient_id", "split", *keep[2:]]]
    table[list(source.labels)] = table[list(source.labels)].astype(np.int8)
    meta = build_meta(source, table, size, seed, split, n)
    if len(exclude_patients):
        meta["excluded"] = {"images": int(len(source.table) - allowed.size),
                            "why": "patients of the pretraining data (sweep evaluate.datasets)"}
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_images(tmp / "images.npy", source.image, rows, size, workers)
        table.to_parquet(tmp / "table.parquet", index=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished temporary directory to ``out``; an old cache is removed only after."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
