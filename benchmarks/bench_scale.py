"""How the parts that grow with the dataset scale: preparation, the loader, the probe and the analysis.

For each --sizes N (synthetic 224 px caches, the embedded default's renderer): preparation throughput with 1 and
2 workers and its peak RSS (the parent's and its workers'); the loader's throughput of uint8 batches of 256 from
the memory-mapped cache, cold (the file's pages dropped with posix_fadvise) and warm, and its peak RSS; the
probe's fit on N x 384 features (L-BFGS over the L2 grid, 14 labels) and its peak RSS. Then the analysis
(``mmsn analyze``) of generated experiments of 10 and 100 trials (the sweep's layout, 2 milestones, per-image
test scores of --test-images images). Every figure comes from one run; the extrapolation to MIMIC-CXR
(377k images, 4 x 10^4 val and test images) is printed with the rule it uses.

    python benchmarks/bench_scale.py --sizes 2000,5000,10000 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import print_table, repo_root

from mmsn.data.cache import open_cache
from mmsn.data.prepare import prepare
from mmsn.data.registry import load_source
from mmsn.probe import fit_linear_probe

MIMIC = 377_000


def peak_rss_mib(children: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / 1024


def measure_prepare(n: int, out: Path, workers: int) -> dict[str, float]:
    source = load_source("synthetic", None, 0)
    start = time.perf_counter()
    prepare(source, out, size=224, seed=0, split=(0.7, 0.15, 0.15), n=n, workers=workers, overwrite=True)
    seconds = time.perf_counter() - start
    return {"images_per_s": n / seconds, "seconds": seconds, "per_worker": n / seconds / workers}


def drop_pages(path: Path) -> bool:
    """Evict a file's pages from the page cache (a cold read), where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def measure_loader(cache_dir: Path, batch: int = 256) -> dict[str, float]:
    """uint8 batches of ``batch`` shuffled train rows from the memory-mapped images, as the DataLoader reads."""
    cache = open_cache(cache_dir)
    rows = np.random.default_rng(0).permutation(cache.rows("train"))
    out = {}
    for state in ("cold", "warm"):
        if state == "cold":
            out["cold_dropped"] = float(drop_pages(cache_dir / "images.npy"))
        start, n = time.perf_counter(), 0
        for lo in range(0, len(rows) - batch + 1, batch):
            n += len(np.ascontiguousarray(cache.images[np.sort(rows[lo:lo + batch])]))
        out[f"{state}_img_s"] = n / (time.perf_counter() - start)
    return out


def measure_probe(n: int, d: int = 384) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :14] + rng.normal(size=(n, 14)) > 1).astype(np.int8)
    start = time.perf_counter()
    fit_linear_probe(x, y, x[: n // 5], y[: n // 5], (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0))
    return {"fit_s": time.perf_counter() - start}


def measure_analysis(trials: int, tmp: Path, test_images: int) -> dict[str, float]:
    sys.path.insert(0, str(repo_root()))
    from analysis.report import analyze
    from tests.test_analysis import make_experiment  # the sweep's exact layout, planted effects

    fusions = ["none", "film", "token", "concat_anchor", "concat_both"]
    specs = [(fusions[i % 5], "-" if i % 5 == 0 else "demographic", i // 5, "TERMINATED", 2, 1.0 + 0.05 * (i % 5), ())
             for i in range(trials)]
    import tests.test_analysis as fake

    def targets(rng: np.random.Generator, n: int = test_images) -> np.ndarray:  # --test-images, not the tests' 400
        return (rng.random((n, len(fake.LABELS))) < 0.3).astype(np.int8)

    fake.targets = targets
    root = tmp / f"analysis-{trials}"
    root.mkdir()
    experiment = make_experiment(root, specs)
    start = time.perf_counter()
    analyze(experiment, references=False)
    return {"seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2000,5000,10000")
    p.add_argument("--trials", default="10,100")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results: dict[str, Any] = {"sizes": {}, "analysis": {}}
    with tempfile.TemporaryDirectory(prefix="mmsn-scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        for n in (int(s) for s in args.sizes.split(",")):
            row: dict[str, Any] = {}
            for workers in (1, 2):
                row[f"prepare_{workers}w"] = measure_prepare(n, tmp / f"cache-{n}", workers)
            row["prepare_peak_rss_mib"] = peak_rss_mib()
            row["prepare_workers_peak_rss_mib"] = peak_rss_mib(children=True)
            row["loader"] = measure_loader(tmp / f"cache-{n}")
            row["probe"] = measure_probe(n)
            row["peak_rss_mib"] = peak_rss_mib()
            results["sizes"][n] = row
            print(json.dumps({n: row}), flush=True)
        for trials in (int(t) for t in args.trials.split(",")):
            results["analysis"][trials] = measure_analysis(trials, tmp, args.test_images)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def report(results: dict[str, Any]) -> None:
    sizes = results["sizes"]
    print_table(["N", "prep 1w img/s", "prep 2w img/s", "loader cold img/s", "loader warm img/s", "probe fit s",
                 "peak RSS MiB"],
                [[str(n), f"{r['prepare_1w']['images_per_s']:.0f}", f"{r['prepare_2w']['images_per_s']:.0f}",
                  f"{r['loader']['cold_img_s']:.0f}", f"{r['loader']['warm_img_s']:.0f}", f"{r['probe']['fit_s']:.2f}",
                  f"{r['peak_rss_mib']:.0f}"] for n, r in sizes.items()])
    for trials, r in results["analysis"].items():
        print(f"analysis of {trials} trials: {r['seconds']:.1f} s")
    largest = max(sizes)
    rate = sizes[largest]["prepare_2w"]["images_per_s"]
    fit = sizes[largest]["probe"]["fit_s"] * MIMIC / largest  # L-BFGS: each evaluation is linear in N
    print(f"extrapolated to MIMIC-CXR ({MIMIC} images): preparation with 2 workers {MIMIC / rate / 3600:.1f} h at "
          f"{rate:.0f} img/s (linear in N; more workers divide it); one probe fit {fit:.0f} s on this CPU "
          f"(linear in N at a fixed iteration count)")


if __name__ == "__main__":
    sys.exit(main())
