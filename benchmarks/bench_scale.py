"""How the parts that grow with the dataset scale: preparation, the loader, the probe and the analysis.

Preparation at 224 px, with 1 and 2 workers, of three kinds of image: the embedded synthetic renderer
(--render-n images), 1024 px 8-bit PNGs in the NIH-14 layout (--png-n; what a real dataset costs: decoding
and resizing), and seeded noise (the pipeline alone: pool, memmap writes) for every --sizes N; the noise
caches are then read by the loader (uint8 batches of 256 shuffled train rows from the memory-mapped cache,
cold with the file's pages dropped and warm), and a linear probe is fitted on N x 384 features (L-BFGS over
the L2 grid, 14 labels). Every stage's peak anonymous memory (RssAnon of this process and its children,
sampled every 20 ms; the memmapped cache's file pages are the kernel's page cache, not the process's) is
printed beside it: it should be flat in N. Then ``mmsn analyze`` on generated experiments (the sweep's
layout, 2 milestones) of 10 and 100 trials, and of 10 trials with 5x the test images. Everything comes from
one run; the extrapolation to MIMIC-CXR is printed with its rule.

    python benchmarks/bench_scale.py --sizes 10000,30000,100000 --json scale.json   # ~25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from bench_prepare import make_large_nih_tree
from common import print_table, random_source, repo_root

from mmsn.data.cache import open_cache
from mmsn.data.prepare import prepare
from mmsn.data.registry import load_source
from mmsn.data.source import Source
from mmsn.probe import fit_linear_probe

MIMIC = 377_000
MIMIC_TEST = 57_000  # a 0.15 patient split of MIMIC-CXR (the official test split is 5,159 images)
GPU_IMG_S = 5_900  # ViT-S/16 MSN (~75 GFLOP per image) at 45 % MFU of one H100's 989 bf16 TFLOP/s
SPLIT = (0.7, 0.15, 0.15)


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
    except (OSError, ValueError):
        return 0  # the process ended between the listing and the read


def _family(root: int) -> list[int]:
    """``root`` and its descendants, from /proc/*/stat."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    family, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier]
        family += frontier
    return family


@contextmanager
def peak_anon_mib() -> Iterator[dict[str, float]]:
    """Yields a dict whose "mib" is, on exit, the peak RssAnon (MiB) of this process plus its children."""
    out, stop = {"mib": 0.0}, threading.Event()

    def sample() -> None:
        while True:
            out["mib"] = max(out["mib"], sum(_anon_kib(pid) for pid in _family(os.getpid())) / 1024)
            if stop.wait(0.02):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


def timed(fn: Callable[[], Any]) -> dict[str, float]:
    with peak_anon_mib() as peak:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_anon_mib": peak["mib"]}


def measure_prepare(source: Source, n: int, out: Path, workers: int) -> dict[str, float]:
    """Throughput of ``prepare`` at 224 px, and its steady rate: (n - 128) / (t(n) - t(128)), without the fixed
    cost of starting the worker processes and of the table work (seconds here, nothing at a real dataset's N)."""
    def run(k: int) -> dict[str, float]:
        return timed(lambda: prepare(source, out, size=224, seed=0, split=SPLIT, n=k, workers=workers, overwrite=True))

    small, row = run(128), run(n)
    steady = (n - 128) / max(row["seconds"] - small["seconds"], 1e-9)
    return {**row, "n": n, "workers": workers, "images_per_s": n / row["seconds"], "fixed_s": small["seconds"],
            "steady_per_worker": steady / workers}


def drop_pages(path: Path) -> bool:
    """Evict a file's pages from the page cache (a cold read), where the OS allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return True
    except (OSError, AttributeError):
        return False


def measure_loader(cache_dir: Path, batch: int, batches: int) -> dict[str, float]:
    """``batches`` uint8 batches of ``batch`` shuffled train rows from the memory-mapped images."""
    cache = open_cache(cache_dir)
    rows = np.random.default_rng(0).permutation(cache.rows("train"))[: batch * batches]
    out: dict[str, float] = {"cold_dropped": float(drop_pages(cache_dir / "images.npy"))}
    for state in ("cold", "warm"):
        def read() -> None:
            for lo in range(0, len(rows) - batch + 1, batch):
                np.ascontiguousarray(cache.images[np.sort(rows[lo:lo + batch])])
        row = timed(read)
        out[f"{state}_img_s"] = (len(rows) // batch * batch) / row["seconds"]
        out[f"{state}_peak_anon_mib"] = row["peak_anon_mib"]
    return out


def measure_probe(n: int, d: int = 384) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :14] + rng.normal(size=(n, 14)) > 1).astype(np.int8)
    n_val = max(n // 5, 200)
    return timed(lambda: fit_linear_probe(x, y, x[:n_val], y[:n_val], (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)))


def measure_analysis(trials: int, tmp: Path, test_images: int) -> dict[str, float]:
    """``analyze`` (no reference rows: the sweep computes those beside its trials) of a generated experiment."""
    sys.path.insert(0, str(repo_root()))
    import tests.test_analysis as fake
    from analysis.report import analyze

    fusions = ["none", "film", "token", "concat_anchor", "concat_both"]
    specs = [(fusions[i % 5], "-" if i % 5 == 0 else "demographic", i // 5, "TERMINATED", 2,
              1.0 + 0.05 * (i % 5), ()) for i in range(trials)]
    default_targets = fake.targets

    def targets(rng: np.random.Generator, n: int = test_images) -> np.ndarray:
        return default_targets(rng, n)

    fake.targets = targets
    try:
        root = tmp / f"analysis-{trials}-{test_images}"
        root.mkdir()
        experiment = fake.make_experiment(root, specs)
    finally:
        fake.targets = default_targets
    return {**timed(lambda: analyze(experiment, references=False)), "trials": trials, "test_images": test_images}


def prepare_rows(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    """Preparation throughput and memory: the renderer, PNGs, and the pipeline alone (noise) at every N."""
    from mmsn.data.nih14 import load_nih14

    start = time.perf_counter()
    tree = make_large_nih_tree(tmp / "png", args.png_n, 1024)
    print(f"made {args.png_n} PNGs of 1024 px in {time.perf_counter() - start:.0f} s (not timed below)", flush=True)
    cases = [("synthetic renderer", load_source("synthetic", None, 0), args.render_n, w) for w in (1, 2)]
    cases += [("1024 px PNG (NIH-14 layout)", load_nih14(tree, 0), args.png_n, w) for w in (1, 2)]
    cases += [("noise (the pipeline alone)", random_source(n), n, 2) for n in args.sizes]
    rows = []
    for kind, source, n, workers in cases:
        out = tmp / (f"noise-{n}" if kind.startswith("noise") else "scratch")
        rows.append({"kind": kind, **measure_prepare(source, n, out, workers)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,30000,100000", help="cache sizes N for the loader and the probe")
    p.add_argument("--render-n", type=int, default=1000, help="synthetic images rendered per worker setting")
    p.add_argument("--png-n", type=int, default=1000, help="1024 px PNGs prepared per worker setting")
    p.add_argument("--loader-batches", type=int, default=100, help="batches of 256 read per state (cold, warm)")
    p.add_argument("--trials", default="10,100")
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"prepare": [], "sizes": {}, "analysis": []}
    with tempfile.TemporaryDirectory(prefix="mmsn-scale-") as tmp_dir:
        tmp = Path(tmp_dir)
        results["prepare"] = prepare_rows(args, tmp)
        for n in args.sizes:
            results["sizes"][n] = {"loader": measure_loader(tmp / f"noise-{n}", 256, args.loader_batches),
                                   "probe": measure_probe(n)}
            print(json.dumps({n: results["sizes"][n]}), flush=True)
        trials = [int(t) for t in args.trials.split(",")]
        cases = [(t, args.test_images) for t in trials] + [(trials[0], 5 * args.test_images)]
        results["analysis"] = [measure_analysis(trials, tmp, images) for trials, images in cases]
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def report(results: dict[str, Any]) -> None:
    print_table(["images", "N", "workers", "img/s", "fixed s", "steady img/s per worker", "peak anon MiB"],
                [[r["kind"], str(r["n"]), str(r["workers"]), f"{r['images_per_s']:.0f}", f"{r['fixed_s']:.1f}",
                  f"{r['steady_per_worker']:.0f}", f"{r['peak_anon_mib']:.0f}"] for r in results["prepare"]])
    sizes = results["sizes"]
    print_table(["N", "loader cold img/s", "loader warm img/s", "loader peak anon MiB", "probe fit s",
                 "probe peak anon MiB"],
                [[str(n), f"{r['loader']['cold_img_s']:.0f}", f"{r['loader']['warm_img_s']:.0f}",
                  f"{max(r['loader']['cold_peak_anon_mib'], r['loader']['warm_peak_anon_mib']):.0f}",
                  f"{r['probe']['seconds']:.2f}", f"{r['probe']['peak_anon_mib']:.0f}"] for n, r in sizes.items()])
    print_table(["trials", "test images", "analyze s", "peak anon MiB"],
                [[str(r["trials"]), str(r["test_images"]), f"{r['seconds']:.1f}", f"{r['peak_anon_mib']:.0f}"]
                 for r in results["analysis"]])
    extrapolate(results)


def extrapolate(results: dict[str, Any]) -> None:
    """Linear rules, stated: preparation and the probe are linear in N, the analysis in trials x test images."""
    png = max((r for r in results["prepare"] if r["kind"].startswith("1024")), key=lambda r: r["workers"])
    rate = png["steady_per_worker"]
    print(f"preparation of MIMIC-CXR ({MIMIC} images) from 1024 px PNGs: {MIMIC / rate / 3600:.1f} worker-hours "
          f"at the steady {rate:.0f} img/s per worker with {png['workers']} workers (16 workers: "
          f"{MIMIC / rate / 16 / 60:.0f} min)")
    n_max = max(results["sizes"])
    fit = results["sizes"][n_max]["probe"]["seconds"] * MIMIC / n_max
    print(f"one probe fit on {MIMIC} x 384 features: {fit:.0f} s on this CPU (linear in N at a fixed iteration count)")
    a = {(r["trials"], r["test_images"]): r["seconds"] for r in results["analysis"]}
    (t_small, t_big), (n_small, n_big) = sorted({k[0] for k in a}), sorted({k[1] for k in a})
    per_trial = (a[(t_big, n_small)] - a[(t_small, n_small)]) / (t_big - t_small)  # s per trial at n_small images
    per_image = max(a[(t_small, n_big)] - a[(t_small, n_small)], 0.0) / (t_small * (n_big - n_small))
    analysis_s = 100 * (per_trial + per_image * (MIMIC_TEST - n_small))
    sweep_s = 100 * 100 * MIMIC / GPU_IMG_S / 8
    print(f"analysis of 100 trials with {MIMIC_TEST} test images each: {analysis_s / 60:.0f} min "
          f"({per_trial:.2f} s per trial at {n_small} images + {per_image * 1e3:.3f} ms per trial per test image); "
          f"a sweep of 100 trials x 100 epochs on 8 GPUs at {GPU_IMG_S} img/s each: {sweep_s / 3600:.0f} h; "
          f"the analysis adds {100 * analysis_s / sweep_s:.1f} % (goal <= 5 %)")


if __name__ == "__main__":
    sys.exit(main())
