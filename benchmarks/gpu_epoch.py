"""A user's epoch on one accelerator: mmsn's real training step fed by its real loader from a cache on disk.

What ``benchmarks/gpu_check.sh`` runs on a GPU (and, with ``--smoke``, at tiny sizes on the CPU). Each part
prints one table and adds to the JSON:

- ``epoch``: ViT-S/16 MSN at --size + --n-focal x --focal-size views, --precision, for each --batches value,
  eager and (--compile) compiled: images/s over --steps timed steps (after warm-up; the DataLoader reads the
  cache's memory-mapped uint8 images, the views are made on the device), peak device memory, and model FLOPs
  utilisation. FLOPs: torch.utils.flop_counter.FlopCounterMode over one whole training step (forward,
  backward, the EMA target's forward; 2 FLOPs per multiply-add; attention counted by its matmuls) divided by
  the batch; MFU = achieved FLOP/s / --peak-tflops (the accelerator's dense bf16 peak).
- ``largest``: the largest batch (doubling from the last --batches value) whose step fits in memory (GPU).
- ``objectives``: every objective in the registry at the same scale, images/s.
- ``probe``: the linear probe (L-BFGS over the L2 grid) on --probe-n x --probe-d random features on the
  device, seconds, and its share of one epoch of --epoch-images images at the measured speed.

Needs torch and timm (and mmsn's own dependencies: numpy, pandas, pyarrow, pyyaml); not ray, optuna, lightly
or torchxrayvision (the images are noise: speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import print_table, random_source, synchronize
from torch.utils.flop_counter import FlopCounterMode

from mmsn.config import Config, from_dict, set_dotted
from mmsn.data.cache import Cache, open_cache
from mmsn.data.prepare import prepare
from mmsn.engine import Run, build_run, make_loader, read_scalars, step
from mmsn.objectives import SPECS, Batch
from mmsn.probe import fit_linear_probe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--backbone", default="vit_small_patch16_224")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--focal-size", type=int, default=96)
    p.add_argument("--n-focal", type=int, default=10)
    p.add_argument("--batches", default="64,256", help="per-step batch sizes, comma-separated")
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement (after 3 warm-up steps)")
    p.add_argument("--compile", action="store_true", help="also measure train.compile (regional torch.compile)")
    p.add_argument("--largest", action="store_true", help="find the largest batch that fits (GPU)")
    p.add_argument("--objectives", action="store_true", help="time every objective's step too")
    p.add_argument("--workers", type=int, default=8, help="DataLoader worker processes")
    p.add_argument("--n-images", type=int, default=0, help="cache size (default: enough for the timed steps)")
    p.add_argument("--probe-n", type=int, default=50_000)
    p.add_argument("--probe-d", type=int, default=384)
    p.add_argument("--epoch-images", type=int, default=370_000, help="an epoch for the probe's share (MIMIC-CXR)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the accelerator")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: every part runs in seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.precision, args.backbone, args.size, args.focal_size = "cpu", "fp32", "vit_nano", 32, 16
        args.n_focal, args.batches, args.steps, args.workers, args.probe_n, args.probe_d = 2, "8", 2, 0, 500, 32
        args.epoch_images = 2000
    return args


def recipe(args: argparse.Namespace, batch: int, compiled: bool = False, objective: str = "msn") -> Config:
    """The paper-scale recipe (MSN's head: 2048 hidden, 256 out, 1024 prototypes) at the measured sizes; a
    recipe for every objective, so built without load_config's check that only the running one is set."""
    head = (64, 32, 64) if args.smoke else (2048, 256, 1024)
    keys = {"objective.name": objective, "ehr.fusion": "none", "model.backbone": args.backbone,
            "model.head_hidden": head[0], "model.head_out": head[1], "model.n_prototypes": head[2],
            "views.size": args.size, "views.focal_size": args.focal_size, "views.n_focal": args.n_focal,
            "train.batch_size": batch, "train.num_workers": args.workers, "train.precision": args.precision,
            "train.compile": compiled, "optim.warmup_epochs": 0.0, "mae.decoder_dim": 2 * head[1] // 2,
            "mae.decoder_depth": 2, "mrm.width": 64}
    data: dict[str, Any] = {}
    for key, value in keys.items():
        set_dotted(data, key, value)
    return from_dict(Config, data)  # type: ignore[no-any-return]


def build(args: argparse.Namespace, cache: Cache, batch: int, compiled: bool = False, objective: str = "msn") -> Run:
    return build_run(recipe(args, batch, compiled, objective), cache, torch.device(args.device))


def timed_epoch(run: Run, steps: int, warmup: int = 3) -> dict[str, float]:
    """Images/s over ``steps`` steps of the real loader after ``warmup`` steps, peak memory, loss read once."""
    device = run.device
    loader = iter(make_loader(run, 0))
    for _ in range(warmup):
        step(run, Batch(**next(loader)))
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    scalars: dict[str, Any] = {}
    for _ in range(steps):
        scalars = step(run, Batch(**next(loader)))
    loss = read_scalars(run, scalars)["loss"]
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"img_s": steps * run.cfg.train.batch_size / seconds, "peak_gib": peak, "loss": loss}


def step_flops(run: Run) -> float:
    """FLOPs of one training step per image (FlopCounterMode: forward, backward, the EMA target's forward)."""
    batch = Batch(**next(iter(make_loader(run, 0))))
    with FlopCounterMode(display=False) as counter:
        step(run, batch)
    return counter.get_total_flops() / run.cfg.train.batch_size


def measure_epochs(args: argparse.Namespace, cache: Cache) -> list[dict[str, Any]]:
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for compiled in (False, True) if args.compile else (False,):
            run = build(args, cache, batch, compiled)
            flops = step_flops(run)
            out = {"batch": batch, "compiled": compiled, "gflop_per_image": flops / 1e9, **timed_epoch(run, args.steps)}
            out["mfu"] = out["img_s"] * flops / (args.peak_tflops * 1e12) if run.device.type == "cuda" else None
            rows.append(out)
            del run
            free(args.device)
    return rows


def largest_batch(args: argparse.Namespace, cache: Cache, start: int) -> int:
    """The largest doubling of ``start`` whose training step fits in the device's memory."""
    fits, batch = 0, start
    while batch <= len(cache.rows("train")):
        try:
            run = build(args, cache, batch)
            timed_epoch(run, steps=1, warmup=1)
            fits, batch = batch, batch * 2
            del run
        except torch.OutOfMemoryError:
            break
        finally:
            free(args.device)
    return fits


def measure_objectives(args: argparse.Namespace, cache: Cache, batch: int) -> dict[str, float]:
    out = {}
    for name in SPECS:
        run = build(args, cache, batch, objective=name)
        out[name] = timed_epoch(run, max(2, args.steps // 2))["img_s"]
        del run
        free(args.device)
    return out


def measure_probe(args: argparse.Namespace, epoch_img_s: float) -> dict[str, float]:
    """The milestone probe's fit on the device (float32 on a GPU) against one epoch at the measured speed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.probe_n, args.probe_d)).astype(np.float32)
    y = (x[:, :14] + rng.normal(size=(args.probe_n, 14)) > 1).astype(np.int8)
    xv, yv = x[: args.probe_n // 5], y[: args.probe_n // 5]
    start = time.perf_counter()
    fit_linear_probe(x, y, xv, yv, (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0), device=torch.device(args.device))
    seconds = time.perf_counter() - start
    epoch_s = args.epoch_images / epoch_img_s
    return {"seconds": seconds, "epoch_seconds": epoch_s, "share_of_epoch": seconds / epoch_s}


def free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    need = (max(batches) * (args.steps + 4)) * 2  # train rows are about 70 % of the cache
    n_images = args.n_images or need
    results: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}, "torch": torch.__version__,
                               "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    with tempfile.TemporaryDirectory(prefix="mmsn-gpu-epoch-") as tmp:
        start = time.perf_counter()
        cache = open_cache(prepare(random_source(n_images), Path(tmp) / "cache", size=args.size, seed=0,
                                   split=(0.7, 0.15, 0.15), n=None, workers=min(8, max(1, args.workers))))
        results["cache_seconds"] = time.perf_counter() - start
        results["epoch"] = measure_epochs(args, cache)
        print_table(["batch", "compiled", "img/s", "peak GiB", "GFLOP/img", "MFU"],
                    [[str(r["batch"]), str(r["compiled"]), f"{r['img_s']:.1f}", f"{r['peak_gib']:.1f}",
                      f"{r['gflop_per_image']:.1f}", "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"]
                     for r in results["epoch"]])
        if args.largest and args.device.startswith("cuda"):
            results["largest_batch"] = largest_batch(args, cache, max(batches) * 2)
            print(f"largest batch that fits: {results['largest_batch']}")
        if args.objectives:
            results["objectives"] = measure_objectives(args, cache, batches[0])
            print_table(["objective", "img/s"], [[k, f"{v:.1f}"] for k, v in results["objectives"].items()])
    best = max(r["img_s"] for r in results["epoch"])
    results["probe"] = measure_probe(args, best)
    p = results["probe"]
    print(f"probe {args.probe_n} x {args.probe_d}: {p['seconds']:.2f} s = {100 * p['share_of_epoch']:.2f} % of an "
          f"epoch of {args.epoch_images} images at {best:.0f} img/s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
