"""``prepare`` throughput (images/s): the synthetic generator and the real-dataset loaders.

Rows: the synthetic source at 64 and 224 px; the NIH-14, CheXpert and MIMIC loaders on the tiny
fixture trees of ``tests/fixtures_real.py`` (5-8 images of 40 x 50 px: they show the fixed cost
of a loader, not its per-image speed); and an NIH-14 tree in the official layout with ``--nih-images``
1024 x 1024 8-bit PNGs (the real files' size), which is what a real prepare spends its time on:
PNG decoding and the resize. Every row uses one worker (``prepare(..., workers=1)``).

    python benchmarks/bench_prepare.py            # about 30 s on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from common import print_table, repo_root, try_synthetic
from PIL import Image

from mmsn.data.labels import NIH14_LABELS
from mmsn.data.prepare import prepare
from mmsn.data.source import Source

sys.path.insert(0, str(repo_root()))  # for tests.fixtures_real (the tree builders)
from tests.fixtures_real import NIH_HEADER, make_chexpert_tree, make_mimic_tree, make_nih14_tree  # noqa: E402

SPLIT = (0.6, 0.2, 0.2)
FIXTURE_SPLIT = (0.4, 0.3, 0.3)  # the MIMIC fixture has 3 patients: one per split
Row = dict[str, Any]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic-images", type=int, default=300, help="images per synthetic row")
    p.add_argument("--nih-images", type=int, default=300, help="1024 px PNGs in the large NIH-14 tree")
    p.add_argument("--nih-side", type=int, default=1024, help="side of those PNGs in px")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    return p.parse_args(argv)


def time_prepare(name: str, load: Callable[[], Source], out: Path, size: int, n: int | None,
                 split: tuple[float, float, float] = SPLIT) -> Row:
    """Time the adapter (``load``) and ``prepare`` separately; images/s is of prepare alone."""
    start = time.perf_counter()
    source = load()
    loaded = time.perf_counter()
    prepare(source, out, size=size, seed=0, split=split, n=n, workers=1)
    done = time.perf_counter()
    images = len(source.table) if n is None else min(n, len(source.table))
    return {"source": name, "images": images, "size": size, "load_s": loaded - start,
            "prepare_s": done - loaded, "images_per_s": images / (done - loaded)}


def synthetic_rows(args: argparse.Namespace, tmp: Path) -> list[Row]:
    start = time.perf_counter()
    source, why = try_synthetic(0)
    load_s = time.perf_counter() - start  # loaded once, shared by both sizes
    if source is None:
        print(f"synthetic: unavailable ({why})")
        return []
    rows = []
    for size in (64, 224):
        try:
            row = time_prepare("synthetic", lambda: source, tmp / f"synthetic{size}", size, args.synthetic_images)
            rows.append({**row, "load_s": load_s})
        except Exception as err:  # noqa: BLE001 - the generator is being written: report, go on
            print(f"synthetic at {size} px: failed ({type(err).__name__}: {err})")
    return rows


def fixture_rows(tmp: Path) -> list[Row]:
    """The three loaders on the tests' tiny official-layout trees (fixed cost per loader)."""
    start = time.perf_counter()
    import torchxrayvision  # noqa: F401 - the loaders parse through it; its import is a one-off cost

    print(f"import torchxrayvision: {time.perf_counter() - start:.2f} s (once per process, not in load s)")
    from mmsn.data.chexpert import load_chexpert
    from mmsn.data.mimic import load_mimic
    from mmsn.data.nih14 import load_nih14

    trees = [("nih14 fixture", make_nih14_tree, load_nih14), ("chexpert fixture", make_chexpert_tree, load_chexpert),
             ("mimic fixture", make_mimic_tree, load_mimic)]
    rows = []
    for name, make, load in trees:
        root = make(tmp / name.replace(" ", "_"))
        try:
            rows.append(time_prepare(name, partial(load, root, 0),
                                     tmp / f"{name.replace(' ', '_')}_cache", 64, None, FIXTURE_SPLIT))
        except Exception as err:  # noqa: BLE001 - one broken loader should not hide the others' figures
            print(f"{name}: failed ({type(err).__name__}: {err})")
    return rows


def film_background(side: int) -> np.ndarray:
    """A smooth chest-like float image (bright mediastinum, two dark lung fields), (side, side)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    body = 60 + 120 * np.exp(-((x - 0.5) ** 2) / 0.08) * (0.6 + 0.4 * y)
    lungs = 50 * sum(np.exp(-((x - cx) ** 2 + (y - 0.45) ** 2) / 0.02) for cx in (0.3, 0.7))
    return body - lungs


def make_large_nih_tree(base: Path, n: int, side: int) -> Path:
    """``base/nih14``: Data_Entry_2017_v2020.csv (the fixture's header) and images_001/images/*.png.

    Films are a smooth background plus mild noise, so the PNGs compress about as real 8-bit CXR
    PNGs do (pure noise would make decoding unrealistically slow, a flat image unrealistically fast).
    """
    root = base / "nih14"
    folder = root / "images_001" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    background = film_background(side)
    lines = [NIH_HEADER]
    for i in range(n):
        patient, follow = i // 2 + 1, i % 2  # two films per patient
        name = f"{patient:08d}_{follow:03d}.png"
        found = [label for label in NIH14_LABELS if rng.random() < 0.08] or ["No Finding"]
        lines.append(f"{name},{'|'.join(found)},{follow},{patient},{rng.integers(20, 90)},"
                     f"{rng.choice(['M', 'F'])},{rng.choice(['PA', 'AP'])},{side},{side},0.143,0.143")
        noise = rng.integers(-6, 7, (side, side), dtype=np.int16)
        Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8)).save(folder / name)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    return root


def large_nih_rows(args: argparse.Namespace, tmp: Path) -> list[Row]:
    from mmsn.data.nih14 import load_nih14

    start = time.perf_counter()
    root = make_large_nih_tree(tmp / "large", args.nih_images, args.nih_side)
    megabytes = sum(f.stat().st_size for f in root.rglob("*.png")) / 2**20
    print(f"made {args.nih_images} NIH-14 PNGs of {args.nih_side} px ({megabytes:.0f} MiB) in "
          f"{time.perf_counter() - start:.1f} s (not timed below)")
    name = f"nih14 tree, {args.nih_side} px PNGs"
    return [time_prepare(name, lambda: load_nih14(root, 0), tmp / f"large_cache{size}", size, None)
            for size in (64, 224)]


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp_dir:
        tmp = Path(tmp_dir)
        rows = synthetic_rows(args, tmp) + fixture_rows(tmp) + large_nih_rows(args, tmp)
    print()
    print_table(["source", "images", "px", "load s", "prepare s", "images/s"],
                [[r["source"], str(r["images"]), str(r["size"]), f"{r['load_s']:.2f}", f"{r['prepare_s']:.2f}",
                  f"{r['images_per_s']:.1f}"] for r in rows])
    print("load s: the adapter (CSV parsing, file discovery); prepare s: split, render/read + resize, write; "
          "images/s = images / prepare s; workers 1")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
