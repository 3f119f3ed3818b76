"""Multi-fidelity against the full grid: does a scheduler find the grid's best arm at a fraction of its compute?

Runs one space as (a) FIFO, every arm to the last milestone (the full grid), and (b) each scheduler of
``--schedulers`` (default: the space's own; ``asha``, ``hyperband``, ``halving``, ``racing``) on the probe's val AUROC,
with the same milestones. Prints per run the trial-seconds (split into epochs, probes and overhead: worker
starts, state loading, checkpoints; goal <= 5 %), wall seconds and disk per trial; per scheduler its compute
over the grid's, whether its best arm is the grid's (best: the highest mean val AUROC over seeds at the last
milestone, among arms that reached it), the Spearman correlation of the arms' val AUROC (at the last
milestone each reached) with the grid's, and the epochs each arm reached; then (``--epoch-time``) the epoch
time of Ray Train pretraining with 1 and 2 workers. For the grid, at every milestone: the agreement of the
label-free RankMe with the val AUROC across arms (Spearman and Kendall, CIs from resampling arms) and what
the arm of the highest RankMe gives up in val AUROC (RankMe as a scheduler's signal).
Goal: the same best arm at <= 35 % of the grid's compute.

    python benchmarks/bench_sweep.py --space benchmarks/spaces/lr_mask.yaml --schedulers asha,halving
    python benchmarks/bench_sweep.py --milestones 2,4,8 --epoch-time   # the quickstart, half its budget
    python benchmarks/bench_sweep.py --smoke                            # the smoke corner (~4 min)

Wall seconds run from the first trial's start to the last result (Ray's start and the analysis left out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from analysis.load import load_trials
from analysis.stats import rank_agreement
from search_spaces.loader import Space, load_space
from trainables.sweep import ensure_cache, run_space

ROOT = Path(__file__).resolve().parents[1]


def with_scheduler(space: Space, kind: str, milestones: tuple[int, ...] | None = None) -> Space:
    sched = dataclasses.replace(space.scheduler, type=kind, milestones=milestones or space.scheduler.milestones)
    return dataclasses.replace(space, scheduler=sched)


def trial_results(experiment: Path) -> list[list[dict]]:
    """Every trial's Tune results (its result.json lines), one list per trial that reported."""
    runs = ([json.loads(line) for line in result.read_text().splitlines() if line.strip()]
            for result in experiment.glob("*/result.json"))
    return [lines for lines in runs if lines]


def compute_split(experiment: Path) -> dict[str, float]:
    """Summed over trials, from each trial's last milestone report: trial wall seconds, epoch compute and
    probes; the rest (worker-group starts, state loading, checkpoint writing) is the overhead."""
    totals = {"trial_seconds": 0.0, "train_seconds": 0.0, "probe_seconds": 0.0}
    for lines in trial_results(experiment):
        totals = {k: v + float(lines[-1].get(k) or 0.0) for k, v in totals.items()}
    overhead = totals["trial_seconds"] - totals["train_seconds"] - totals["probe_seconds"]
    return {**totals, "overhead_seconds": overhead, "overhead_share": overhead / max(totals["trial_seconds"], 1e-9)}


def tune_wall_seconds(experiment: Path) -> float:
    """From the first trial's start to the last result, as the trials' results record them (Ray's start
    and the analysis left out)."""
    starts, ends = [], []
    for lines in trial_results(experiment):
        starts.append(lines[0]["timestamp"] - float(lines[0].get("time_total_s") or 0.0))
        ends.append(lines[-1]["timestamp"])
    return max(ends) - min(starts) if starts else float("nan")


def summarise(experiment: Path, last: int) -> dict:
    """Compute and the scheduler's view: each arm's val AUROC at the last milestone it reached (arms as the
    analysis defines them: the EHR variant and the setting of every other searched key, seeds pooled)."""
    trials = load_trials(experiment)
    by_arm = trials.groupby("arm")["val_auroc"].mean().sort_values(ascending=False)
    full = trials[trials["epoch"] >= last].groupby("arm")["val_auroc"].mean().sort_values(ascending=False)
    files = [p for p in experiment.rglob("*") if p.is_file() and "analysis" not in p.parts]
    sd = trials[trials["epoch"] >= last].groupby("arm")["val_auroc"].std().dropna()
    return {"trial_seconds": float(trials["trial_seconds"].sum()), "best": str(full.index[0]) if len(full) else "-",
            "seed_sd": float(sd.median()) if len(sd) else None,
            "split": compute_split(experiment),
            "bytes_per_trial": sum(p.stat().st_size for p in files) / max(len(trials), 1),
            "full_checkpoints_per_trial": sum(p.name == "checkpoint.pt" for p in files) / max(len(trials), 1),
            "val_auroc": {k: float(v) for k, v in by_arm.items()},
            "epochs": {str(arm): int(e) for arm, e in trials.groupby("arm")["epoch"].max().items()}}


def milestone_points(experiment: Path) -> dict[int, dict[str, tuple[float, float]]]:
    """Per milestone, each arm's (val AUROC, RankMe), means over seeds, from every trial's milestone reports."""
    points: dict[int, dict[str, list[tuple[float, float]]]] = {}
    for r in (r for lines in trial_results(experiment) for r in lines):
        if isinstance(r.get("val_auroc"), float) and isinstance(r.get("rankme"), float):
            points.setdefault(int(r["epoch"]), {}).setdefault(r["arm"], []).append((r["val_auroc"], r["rankme"]))
    return {e: {arm: (float(np.mean([v for v, _ in xs])), float(np.mean([k for _, k in xs])))
                for arm, xs in arms.items()} for e, arms in sorted(points.items())}


def rankme_agreement(experiment: Path) -> dict[int, dict]:
    """At each milestone, across the arms that reached it: Spearman and Kendall of RankMe with val AUROC (CIs
    from resampling arms), and what picking the arm of the highest RankMe gives up in val AUROC there."""
    out = {}
    for epoch, arms in milestone_points(experiment).items():
        names = sorted(arms)
        auroc, rank = [arms[a][0] for a in names], [arms[a][1] for a in names]
        pick = names[int(np.argmax(rank))]
        out[epoch] = {**rank_agreement(rank, auroc), "rankme_pick": pick,
                      "regret": max(auroc) - arms[pick][0], "best": names[int(np.argmax(auroc))]}
    return out


def epoch_time(space: Space, storage: Path, workers: int) -> float:
    """Seconds per epoch of a trial's Ray Train run (2 epochs, the second timed, no milestone) with N workers:
    the trial path's worker (trainables.worker.train_worker) as a sweep runs it."""
    import dataclasses

    import ray.train
    from ray.train.torch import TorchTrainer

    from mmsn.loop import Milestones, run_info
    from trainables.trial import TrialJob
    from trainables.worker import train_worker

    cfg = space.config({"ehr.fusion": "none", "train.seed": 0})
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    own = storage / f"epoch-time-{workers}w-{time.time_ns()}"
    job = TrialJob(cfg, str(ensure_cache(space, storage)), str(own), str(own / "tb"), Milestones(frozenset()),
                   time.time())
    trainer = TorchTrainer(
        train_worker, train_loop_config={"job": job, "milestones": None},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=own.name, storage_path=str(storage)))
    trainer.fit()
    return float(run_info(own / "latest")["epoch_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "quickstart.yaml")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--storage", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--milestones", default=None, help="override, e.g. 2,4,8 (a shorter budget)")
    parser.add_argument("--schedulers", default=None, help="comma-separated; default: the space's own")
    parser.add_argument("--epoch-time", action="store_true", help="also time a Ray Train epoch, 1 and 2 workers")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="summarise a run already in --storage instead of running it again")
    args = parser.parse_args()
    storage = (args.storage or Path(tempfile.mkdtemp(prefix="mmsn-bench-sweep-"))).resolve()
    space = load_space(args.space, smoke=args.smoke)
    if args.milestones:
        space = with_scheduler(space, space.scheduler.type, tuple(int(m) for m in args.milestones.split(",")))
    kinds = (args.schedulers or space.scheduler.type).split(",")
    results: dict = {}
    for kind in ["fifo", *kinds]:
        name = "grid" if kind == "fifo" else kind
        experiment = storage / f"{space.name}-{name}"
        if not (args.reuse and list(experiment.glob("*/result.json"))):
            run_space(with_scheduler(space, kind), experiment, smoke=args.smoke)
        results[name] = {**summarise(experiment, space.epochs), "wall_seconds": tune_wall_seconds(experiment)}
    grid = results["grid"]
    grid["rankme_agreement"] = rankme_agreement(storage / f"{space.name}-grid")
    for kind in kinds:
        run = results[kind]
        common = sorted(grid["val_auroc"])
        run["spearman"] = float(spearmanr([grid["val_auroc"][a] for a in common],
                                          [run["val_auroc"][a] for a in common])[0])
        run["compute_ratio"] = run["trial_seconds"] / grid["trial_seconds"]
        run["same_best"] = run["best"] == grid["best"]
        # how good the scheduler's pick is by the grid's own measure: its rank there and what it gives up
        order = sorted(grid["val_auroc"], key=lambda a: -grid["val_auroc"][a])
        run["pick_rank_in_grid"] = order.index(run["best"]) + 1 if run["best"] in order else None
        run["regret"] = grid["val_auroc"][grid["best"]] - grid["val_auroc"].get(run["best"], float("nan"))
    if args.epoch_time:
        results["epoch_seconds"] = {w: epoch_time(space, storage, w) for w in (1, 2)}
    report(space, results, kinds)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(space: Space, results: dict, kinds: list[str]) -> None:
    print(f"\nspace {space.name}: {len(results['grid']['val_auroc'])} arms, seeds {list(space.seeds)}, "
          f"milestones {list(space.scheduler.milestones)}, reduction factor {space.scheduler.reduction_factor}")
    print(f"{'run':<9}{'trial-s':>9}{'wall-s':>8}{'MB/trial':>10}{'ckpt/trial':>11}  best arm (val AUROC)")
    for name in ["grid", *kinds]:
        r = results[name]
        best = f"{r['best']} ({r['val_auroc'][r['best']]:.4f})" if r["best"] in r["val_auroc"] else "-"
        print(f"{name:<9}{r['trial_seconds']:>9.0f}{r['wall_seconds']:>8.0f}{r['bytes_per_trial'] / 1e6:>10.1f}"
              f"{r['full_checkpoints_per_trial']:>11.1f}  {best}")
    for name in ["grid", *kinds]:
        c = results[name]["split"]
        print(f"{name} trial-seconds split: {c['train_seconds']:.0f} s epochs + {c['probe_seconds']:.0f} s probes + "
              f"{c['overhead_seconds']:.0f} s overhead = {c['trial_seconds']:.0f} s; overhead share "
              f"{c['overhead_share']:.3f} (goal <= 0.05)")
    for kind in kinds:
        r = results[kind]
        print(f"{kind} compute / grid compute: {r['compute_ratio']:.2f} (goal <= 0.35); same best arm: "
              f"{r['same_best']} (its pick is #{r['pick_rank_in_grid']} of the grid, {r['regret']:.4f} val AUROC "
              f"below the grid's best); Spearman rank correlation of arms: {r['spearman']:.2f}; wall "
              f"{r['wall_seconds']:.0f} s vs grid {results['grid']['wall_seconds']:.0f} s")
        print(f"epochs reached under {kind}: " + ", ".join(f"{k} {v}" for k, v in r["epochs"].items()))
    for epoch, a in results["grid"]["rankme_agreement"].items():
        print(f"RankMe vs val AUROC at epoch {epoch} over {a['n']:.0f} grid arms: Spearman {a['spearman']:.2f} "
              f"[{a['spearman_lo']:.2f}, {a['spearman_hi']:.2f}], Kendall {a['kendall']:.2f} [{a['kendall_lo']:.2f}, "
              f"{a['kendall_hi']:.2f}]; the highest RankMe is {a['rankme_pick']}, {a['regret']:.4f} val AUROC below "
              f"the best ({a['best']})")
    sd = results["grid"].get("seed_sd")
    print("seed spread (median over arms of the grid's sd over seeds at the last milestone): "
          + (f"{sd:.4f}" if sd is not None else "one seed"))
    if "epoch_seconds" in results:
        e = results["epoch_seconds"]
        print(f"Ray Train epoch time: 1 worker {e[1]:.2f} s, 2 workers {e[2]:.2f} s (ratio {e[2] / e[1]:.2f})")


if __name__ == "__main__":
    main()
