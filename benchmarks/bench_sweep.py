"""Sweep efficiency: the same EHR-variant space as (a) a full-budget grid and (b) ASHA on probe AUROC.

Prints both compute totals (trial-seconds) with their split into epoch compute, probes and overhead
(worker-group starts, state loading, checkpoints; goal <= 5 %), disk per trial, whether ASHA picks the
same best variant as the full grid and the rank correlation of the variants, then the per-epoch time
of Ray Train pretraining with 1 and 2 workers. Goal: the same best variant at <= 35 % of the grid's
compute.

    python benchmarks/bench_sweep.py                      # search_spaces/quickstart.yaml (~15 min on 2 cores)
    python benchmarks/bench_sweep.py --milestones 2,4,8   # half the budget (~12 min)
    python benchmarks/bench_sweep.py --smoke              # its smoke corner (~4 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

from analysis.load import load_trials
from search_spaces.loader import Space, load_space
from trainables.sweep import ensure_cache, run_space

ROOT = Path(__file__).resolve().parents[1]


def with_scheduler(space: Space, kind: str, milestones: tuple[int, ...] | None = None) -> Space:
    sched = dataclasses.replace(space.scheduler, type=kind, milestones=milestones or space.scheduler.milestones)
    return dataclasses.replace(space, scheduler=sched)


def compute_split(experiment: Path) -> dict[str, float]:
    """Summed over trials, from each trial's last milestone report: trial wall seconds, epoch compute and
    probes; the rest (worker-group starts, state loading, checkpoint writing) is the overhead."""
    totals = {"trial_seconds": 0.0, "train_seconds": 0.0, "probe_seconds": 0.0}
    for result in experiment.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines:
            totals = {k: v + float(lines[-1].get(k) or 0.0) for k, v in totals.items()}
    overhead = totals["trial_seconds"] - totals["train_seconds"] - totals["probe_seconds"]
    return {**totals, "overhead_seconds": overhead, "overhead_share": overhead / max(totals["trial_seconds"], 1e-9)}


def summarise(experiment: Path) -> dict:
    """Compute and the scheduler's view: each arm's val AUROC at the last milestone it reached (arms as the
    analysis defines them: the EHR variant and the setting of every other searched key)."""
    trials = load_trials(experiment)
    by_arm = trials.groupby("arm")["val_auroc"].mean().sort_values(ascending=False)
    files = [p for p in experiment.rglob("*") if p.is_file() and "analysis" not in p.parts]
    return {"trial_seconds": float(trials["trial_seconds"].sum()), "best": str(by_arm.index[0]),
            "split": compute_split(experiment),
            "bytes_per_trial": sum(p.stat().st_size for p in files) / max(len(trials), 1),
            "full_checkpoints_per_trial": sum(p.name == "checkpoint.pt" for p in files) / max(len(trials), 1),
            "val_auroc": {k: float(v) for k, v in by_arm.items()},
            "epochs": {str(r.arm): int(r.epoch) for r in trials.itertuples()}}


def epoch_time(space: Space, storage: Path, workers: int) -> float:
    """Seconds per epoch of one pretraining segment (2 epochs, the second timed) with N workers."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from mmsn.config import to_dict
    from trainables.worker import train_segment

    cfg = space.config({"ehr.fusion": "none", "train.seed": 0})
    trainer = TorchTrainer(
        train_segment,
        train_loop_config={"cfg": to_dict(cfg), "cache": str(ensure_cache(space, storage)), "init": None,
                           "until_epoch": 2, "tb_dir": None},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"epoch-time-{workers}w-{time.time_ns()}", storage_path=str(storage)))
    return float(trainer.fit().metrics["epoch_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "quickstart.yaml")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--storage", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--milestones", default=None, help="override, e.g. 2,4,8 (a shorter budget)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    storage = (args.storage or Path(tempfile.mkdtemp(prefix="mmsn-bench-sweep-"))).resolve()
    space = load_space(args.space, smoke=args.smoke)
    if args.milestones:
        space = with_scheduler(space, space.scheduler.type, tuple(int(m) for m in args.milestones.split(",")))
    results: dict = {}
    for name, kind in (("grid", "fifo"), ("asha", "asha")):
        start = time.time()
        run_space(with_scheduler(space, kind), storage / f"{space.name}-{name}", smoke=args.smoke)
        results[name] = {**summarise(storage / f"{space.name}-{name}"), "wall_seconds": time.time() - start}
    grid, asha = results["grid"], results["asha"]
    common = sorted(grid["val_auroc"])
    rho = spearmanr([grid["val_auroc"][v] for v in common], [asha["val_auroc"][v] for v in common])[0]
    results["epoch_seconds"] = {w: epoch_time(space, storage, w) for w in (1, 2)}
    report(space, grid, asha, float(rho), results["epoch_seconds"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(space: Space, grid: dict, asha: dict, rho: float, epoch_s: dict) -> None:
    ratio = asha["trial_seconds"] / grid["trial_seconds"]
    print(f"\nspace {space.name}: {len(grid['val_auroc'])} arms, milestones {list(space.scheduler.milestones)}")
    print(f"{'run':<6}{'trial-s':>10}{'wall-s':>9}{'MB/trial':>10}{'ckpt/trial':>11}  best arm (val AUROC)")
    for name, r in (("grid", grid), ("asha", asha)):
        print(f"{name:<6}{r['trial_seconds']:>10.0f}{r['wall_seconds']:>9.0f}{r['bytes_per_trial'] / 1e6:>10.1f}"
              f"{r['full_checkpoints_per_trial']:>11.1f}  {r['best']} ({r['val_auroc'][r['best']]:.4f})")
    for name, r in (("grid", grid), ("asha", asha)):
        c = r["split"]
        print(f"{name} trial-seconds split: {c['train_seconds']:.0f} s epochs + {c['probe_seconds']:.0f} s probes + "
              f"{c['overhead_seconds']:.0f} s overhead = {c['trial_seconds']:.0f} s; overhead share "
              f"{c['overhead_share']:.3f} (goal <= 0.05)")
    print(f"ASHA compute / grid compute: {ratio:.2f} (goal <= 0.35); same best arm: "
          f"{grid['best'] == asha['best']}; Spearman rank correlation of arms: {rho:.2f}")
    print("epochs reached under ASHA: " + ", ".join(f"{k} {v}" for k, v in asha["epochs"].items()))
    print(f"Ray Train epoch time: 1 worker {epoch_s[1]:.2f} s, 2 workers {epoch_s[2]:.2f} s "
          f"(ratio {epoch_s[2] / epoch_s[1]:.2f})")


if __name__ == "__main__":
    main()
