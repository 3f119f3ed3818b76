"""The sweep driver behind ``mmsn sweep SPACE.yaml``: Ray Tune + Optuna over a declarative space.

Experiment layout (``STORAGE/NAME/``): Tune's own files and one directory per trial (``tb/`` events,
``probes/epoch_XXX.json`` with val and test probe results), ``sweep.json`` (how the sweep was started),
``space.yaml`` (a copy of the space), ``optuna.journal`` (the Optuna study, unless ``search.storage`` names a
database) and ``train_runs/``
(each running trial's own states, trainables.state).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsn.errors import MMSNError
from search_spaces.loader import (
    INACTIVE,
    Space,
    check_scheduler,
    encode_value,
    grid_points,
    load_space,
    retired_keys,
    scheduler_warnings,
    suggest,
)
from trainables.caches import check_roots, ensure_cache, prepare_protocol

if TYPE_CHECKING:
    from mmsn.protocol import Protocol


def build_search(space: Space, experiment: Path) -> tuple[Any, dict[str, Any], int]:
    """(search algorithm or None, param_space, num_samples) for the space's algorithm."""
    from ray import tune

    if space.search.algorithm == "grid":
        # Grid points are fed as points_to_evaluate of a flat space, so the progress table and the
        # TensorBoard hparams view get one column per axis; an inactive conditional axis shows INACTIVE.
        from ray.tune.search.basic_variant import BasicVariantGenerator

        from trainables.halving import HalvingGenerator

        keys = [a.key for a in space.axes] + ["train.seed"]
        points = [{k: p.get(k, INACTIVE) for k in keys} for p in grid_points(space)] * space.search.num_samples
        if space.search.order == "shuffled":
            random.Random(space.search.seed).shuffle(points)
        param_space = {k: tune.choice(sorted({p[k] for p in points}, key=str)) for k in keys}
        limit = space.resources.max_concurrent_trials  # TuneConfig's limit does not reach a given generator
        generator = HalvingGenerator if space.scheduler.type in ("halving", "racing") else BasicVariantGenerator
        return generator(points_to_evaluate=points, max_concurrent=limit), param_space, len(points)
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    sampler = (optuna.samplers.RandomSampler(seed=space.search.seed) if space.search.algorithm == "random"
               else optuna.samplers.TPESampler(seed=space.search.seed))
    points = [{k: encode_value(v) for k, v in p.items()} for p in space.search.points_to_evaluate]
    search = OptunaSearch(space=DefineByRun(space), metric=space.metric, mode=space.mode, sampler=sampler,
                          points_to_evaluate=points or None, study_name=space.name,
                          storage=optuna_storage(space, experiment))
    limited = ConcurrencyLimiter(search, max_concurrent=space.resources.max_concurrent_trials)
    return limited, {}, space.search.num_samples


OPTUNA_JOURNAL = "optuna.journal"  # the Optuna study of an experiment, unless search.storage names a database


def optuna_storage(space: Space, experiment: Path) -> Any:
    """The study's storage: ``search.storage`` (a database URL), else a journal file in the experiment.
    sqlite on a network file system is fragile with several writers; Optuna's journal file is its storage
    meant for shared file systems (appends under a lock), so the default works on a cluster's storage."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if space.search.storage:
        return optuna.storages.RDBStorage(space.search.storage)
    return optuna.storages.JournalStorage(JournalFileBackend(str(experiment / OPTUNA_JOURNAL)))


class DefineByRun:
    """Optuna define-by-run over the space's axes; a class (not a closure) because Tune pickles the
    searcher into the experiment state for ``--resume``."""

    def __init__(self, space: Space) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        params = suggest(self.space, trial)
        return {k: v for k, v in params.items() if k not in trial.params}  # constants only


def build_scheduler(space: Space, experiment: Path, search: Any) -> Any:
    """ASHA / HyperBand / halving / PBT / FIFO acting on the probe's val AUROC at each milestone epoch."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining

    from trainables.halving import ArmHalving, ArmRacing

    s, m = space.scheduler, space.scheduler.milestones
    if s.type in ("halving", "racing"):  # the grid's generator: a trial paused at a rung frees its slot there
        return (ArmRacing if s.type == "racing" else ArmHalving)(space, experiment, search)
    common = {"time_attr": "epoch", "metric": space.metric, "mode": space.mode}
    if s.type == "asha":
        return ASHAScheduler(max_t=m[-1], grace_period=m[0], reduction_factor=s.reduction_factor, **common)
    if s.type == "hyperband":
        return HyperBandScheduler(max_t=m[-1], reduction_factor=s.reduction_factor, **common)
    if s.type == "pbt":
        interval = m[min(s.perturbation_interval, len(m)) - 1]
        return PopulationBasedTraining(perturbation_interval=interval, synch=s.synch,
                                       hyperparam_mutations={k: list(v) for k, v in s.mutations}, **common)
    return FIFOScheduler()


def local_cpus(space: Space) -> int:
    """Logical CPUs for a local Ray: twice what max_concurrent_trials trials hold at once (their workers, a
    probe beside them, and a sliver for the driver of a several-worker trial). The headroom is for the Train
    run of a trial the scheduler just stopped: its placement group is freed by Ray's cleaner a little later, and the
    next trial must not wait for that."""
    r = space.resources
    per_trial = (r.workers + (r.probe == "beside")) * r.cpus_per_worker + 0.05
    return max(os.cpu_count() or 1, math.ceil(2 * r.max_concurrent_trials * per_trial))


def start_ray(space: Space, address: str | None, verbose: bool = False) -> None:
    """Connect to ``address`` (or RAY_ADDRESS) or start a local Ray sized for the space. Worker and Train
    output goes to Ray's session logs (``ray.init(log_to_driver=False)``) unless ``verbose``."""
    import ray

    if ray.is_initialized():  # an embedding program (or a test) already connected
        return
    quiet(verbose)
    # Under `ray job submit` the job's driver finds its cluster through RAY_ADDRESS.
    address = address or os.environ.get("RAY_ADDRESS")
    logging_level = logging.INFO if verbose else logging.ERROR  # Ray's own start-up lines
    if address:
        ray.init(address=address, log_to_driver=verbose, logging_level=logging_level)
    else:
        from trainables.orphans import reap_orphaned_agents

        if reaped := reap_orphaned_agents():
            pids = ", ".join(map(str, reaped))
            print(f"removed {len(reaped)} Ray agent process(es) left by a killed sweep (pid {pids})", flush=True)
        # "local" always starts a new instance: a plain ray.init() joins the cluster named in
        # /tmp/ray/ray_current_cluster, even a dead one left by a killed `ray start`, and then rejects num_cpus.
        context = ray.init(address="local", num_cpus=local_cpus(space), include_dashboard=True,
                           dashboard_host="127.0.0.1", log_to_driver=verbose, logging_level=logging_level)
        print(f"local Ray: {local_cpus(space)} CPUs, dashboard http://{context.dashboard_url}", flush=True)
    if not verbose:
        print("Ray worker and Train output: /tmp/ray/session_latest/logs on the head node "
              "(--verbose shows it here)", flush=True)


def quiet(verbose: bool) -> None:
    """Tune's own console off (mmsn's is trainables.console) unless ``verbose``."""
    if verbose:
        return
    # Each milestone report carries a checkpoint and CheckpointConfig(num_to_keep=1) keeps one, so Tune forces
    # an experiment snapshot at every milestone by design, and warns that it "may become a bottleneck" when
    # milestones come seconds apart (smoke runs): 0 turns that warning off, not the snapshots.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's newer console prints its experiment box and a TensorBoard hint into Ray's temp dir whatever the
    # verbosity; its classic reporter at verbose=0 prints nothing
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    logging.getLogger("ray.train").setLevel(logging.ERROR)


def prune_checkpoints(trial_dir: Path, kept: str | None) -> None:
    """Remove a finished trial's Tune checkpoints other than ``kept`` (the one Tune registered; the newest
    when it registered none). Tune deletes only the checkpoints it registered, and a checkpoint is written
    to the trial directory before Tune registers it: a trial process that dies (or a sweep interrupted)
    between the two leaves that checkpoint behind after the retry or ``--resume``."""
    found = sorted(trial_dir.glob("checkpoint_*"))
    keep = Path(kept).resolve() if kept else (found[-1].resolve() if found else None)
    for path in found:
        if path.is_dir() and path.resolve() != keep:
            shutil.rmtree(path, ignore_errors=True)


def train_runs_cleanup(experiment: Path) -> Any:
    """A Tune callback removing a trial's own state (``train_runs/<trial id>``: its states, the reports it
    sent, its Train runs) once the trial finished or the scheduler stopped it. An unfinished or failed trial
    keeps it for ``--resume`` (which continues a trial the infrastructure stopped from its last state; one
    that diverged finds its marker there and fails again at once)."""
    from ray.tune import Callback

    from trainables.state import own_dir

    def clean(trial: Any, finished: bool) -> None:
        if finished:
            shutil.rmtree(own_dir(experiment, trial.trial_id), ignore_errors=True)
        prune_checkpoints(Path(trial.path), trial.checkpoint.path if trial.checkpoint else None)

    class TrainRunsCleanup(Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.ended: dict[str, bool] = {}  # trial id -> finished (True) or failed (False)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended[trial.trial_id] = True
            clean(trial, finished=True)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.ended[trial.trial_id] = False
            clean(trial, finished=False)

        def on_experiment_end(self, trials: list, **info: Any) -> None:
            # Again, for writes that come after a trial ended: the Train run of a trial stopped mid-epoch dies
            # a moment after Tune ends the trial, and its rank 0 may have begun writing a state in between
            # (seen in tests/test_probe_beside.py); a trial stopped during a report leaves that report's
            # checkpoint (seen in the halving test, stopped while it replayed its rung after --resume).
            # Only trials Tune said ended: an interrupted sweep ends with trials whose state --resume needs.
            for trial in trials:
                if trial.trial_id in self.ended:
                    clean(trial, finished=self.ended[trial.trial_id])

    return TrainRunsCleanup()


def make_tuner(space: Space, experiment: Path, cache: Path, resume: bool, protocol: Protocol | None = None,
               verbose: bool = False, callbacks: list[Any] | None = None) -> Any:
    from ray import tune

    from trainables.console import Console
    from trainables.resources import DRIVER_CPUS
    from trainables.trial import msn_trial

    r = space.resources
    alone = r.workers == 1
    # An in-process trial holds its worker's resources; otherwise the trial is a driver holding a sliver
    # while its Train workers hold theirs (their own placement group), and with the probe beside them, one
    # worker's share for the probe task from the start: it never queues behind other trials' workers.
    # Its retries are then Tune's, not Train's.
    held: Any = {"cpu": r.cpus_per_worker, "gpu": r.gpus_per_worker} if alone else {"cpu": DRIVER_CPUS}
    if r.probe == "beside":
        probe = {"CPU": r.cpus_per_worker, **({"GPU": r.gpus_per_worker} if r.gpus_per_worker else {})}
        held = tune.PlacementGroupFactory([{"CPU": DRIVER_CPUS}, probe])
    retries = space.budget.max_failures if alone else 0
    trainable = tune.with_resources(
        tune.with_parameters(msn_trial, space=space, cache=str(cache), experiment=str(experiment),
                             protocol=protocol.to_dict() if protocol else None), held)
    if resume:
        if not tune.Tuner.can_restore(str(experiment)):
            raise MMSNError(f"--resume: {experiment} holds no Tune experiment to restore")
        # errored trials too: one stopped by the infrastructure continues from its last state; one that failed
        # on its own (a divergence) fails again at once from its marker, without training
        return tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    search, param_space, num_samples = build_search(space, experiment)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search, scheduler=build_scheduler(space, experiment, search),
                                    num_samples=num_samples,
                                    # A one-worker trial's process serves the next trial (no new Python with
                                    # torch to start: ~9 s a trial here). A several-worker trial's Train run
                                    # lives in a thread of its actor, which must go with the trial.
                                    reuse_actors=alone,
                                    time_budget_s=space.budget.time_budget_s or None),
        run_config=tune.RunConfig(name=experiment.name, storage_path=str(experiment.parent),
                                  failure_config=tune.FailureConfig(max_failures=retries),
                                  verbose=1 if verbose else 0,  # mmsn's own console (trainables.console)
                                  # the latest milestone's checkpoint serves --resume and a PBT exploit
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  callbacks=[Console(space), train_runs_cleanup(experiment), *(callbacks or [])]),
    )


def record_sweep(space: Space, experiment: Path, cache: Path, smoke: bool, protocol: Protocol | None) -> None:
    experiment.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(space.path, experiment / "space.yaml")
    (experiment / "sweep.json").write_text(json.dumps(
        {"space": str(space.path.resolve()), "name": space.name, "smoke": smoke, "cache": str(cache),
         "metric": space.metric, "mode": space.mode, "milestones": list(space.scheduler.milestones),
         "protocol": protocol.to_dict() if protocol else None}, indent=2))


def run_sweep(space_path: Path, name: str | None = None, storage: Path = Path("experiments"),
              smoke: bool = False, resume: bool = False, address: str | None = None,
              wait_for_resources: bool = False, verbose: bool = False, node_grace_s: float = 600.0) -> int:
    """Validate the space (before Ray starts), check one trial fits, prepare the cache, run or resume."""
    space = load_space(space_path, smoke=smoke)
    return run_space(space, storage.resolve() / (name or space.name + ("-smoke" if smoke else "")),
                     smoke, resume, address, wait_for_resources, verbose, node_grace_s)


def check_resources(space: Space, wait: bool) -> None:
    """Refuse, with the numbers, a trial the connected cluster can never hold; ``wait`` (an autoscaling
    cluster) only says what the sweep will wait for."""
    from trainables.resources import DRIVER_CPUS, cluster_nodes, unmet

    problems = unmet(space.resources, cluster_nodes(), driver=0.0 if space.resources.workers == 1 else DRIVER_CPUS)
    if not problems:
        return
    what = "; ".join(problems)
    if wait:
        print(f"waiting for the cluster to grow (--wait-for-resources): {what}", flush=True)
        return
    raise MMSNError(f"{space.path}: resources: one trial cannot fit this cluster: {what}. Lower resources.* in "
                    "the space, use a bigger cluster, or pass --wait-for-resources if it autoscales")


def run_space(space: Space, experiment: Path, smoke: bool = False, resume: bool = False,
              address: str | None = None, wait_for_resources: bool = False, verbose: bool = False,
              node_grace_s: float = 600.0) -> int:
    """Run (or resume) a loaded space as experiment ``experiment`` (its parent holds the data caches); returns
    the exit status (trainables.faults.outcome), its causes printed last."""
    storage = experiment.parent
    check_scheduler(space)
    for warning in [] if smoke else scheduler_warnings(space):  # a smoke corner is too short to mean anything
        print(f"WARNING: {warning}", flush=True)
    if retired := retired_keys(space.path, smoke):
        print(f"WARNING: {space.path}: {', '.join(retired)}: ignored (the probe runs on the trial's own resources)",
              flush=True)
    check_roots(space, storage)
    if not resume and list(experiment.glob("experiment_state-*.json")):
        raise MMSNError(f"{experiment}: holds a sweep; pass --resume to continue it or --name for a new one")
    start_ray(space, address, verbose)
    check_resources(space, wait_for_resources)
    cache = ensure_cache(space, storage)
    protocol = prepare_protocol(space, storage, cache)
    if not resume:
        from trainables.hparams import write_experiment

        record_sweep(space, experiment, cache, smoke, protocol)
        write_experiment(experiment, space)
    guard = storage_guard(space, storage)
    guard.reserve(experiment)
    from trainables import references
    from trainables.faults import NodeWatch, outcome
    from trainables.resources import DRIVER_CPUS

    watch = NodeWatch(space.resources, 0.0 if space.resources.workers == 1 else DRIVER_CPUS, node_grace_s,
                      wait_for_resources)
    beside = references.start(space, experiment, cache, protocol.to_dict() if protocol else None)
    try:
        results = make_tuner(space, experiment, cache, resume, protocol, verbose, [guard, watch]).fit()
    finally:
        guard.release()
    print(references.finish(beside), flush=True)
    from trainables.summary import print_summary

    ranked = print_summary(results, space, experiment, analyze_it=guard.full is None and watch.stuck is None)
    ended = outcome(results, guard, ranked, watch)
    for line in ended.lines:
        print(line, flush=True)
    return ended.code


def storage_guard(space: Space, storage: Path) -> Any:
    """The sweep's StorageGuard (trainables.faults), after a warning when the free space is below what its
    concurrent trials will write at once (a trial holds up to 4 states: Tune's copy, its newest milestone,
    its latest epoch and the one being written)."""
    from trainables.faults import StorageGuard, mib

    state = state_bytes(space)
    concurrent = space.resources.max_concurrent_trials
    guard = StorageGuard(storage, need=2 * state)
    if (free := guard.free()) < 4 * state * concurrent:
        print(f"WARNING: {storage}: {mib(free)} free, less than the {mib(4 * state * concurrent)} that "
              f"{concurrent} concurrent trials write at once (4 states of about {mib(state)} each)", flush=True)
    return guard


def state_bytes(space: Space) -> int:
    """About the size of one trial state on disk: the objective's weights, AdamW's two moments of its trained
    parameters, and the image encoder's export, in float32 (built once on the CPU, random weights)."""
    from mmsn.objectives import DataShape, build_objective

    cfg = space.base
    objective = build_objective(cfg, DataShape(ehr_width=32, record_classes=(2, 2, 0)))
    weights = sum(p.numel() for p in objective.state_dict().values())
    trained = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    encoder = sum(p.numel() for p in objective.eval_encoder().parameters())
    return 4 * (weights + 2 * trained + encoder)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("space", type=Path, help="search-space YAML (see search_spaces/)")
    p.add_argument("--name", default=None, help="experiment name (default: the space's name)")
    p.add_argument("--storage", type=Path, default=Path("experiments"),
                   help="directory holding experiments and data caches (shared storage on a cluster)")
    p.add_argument("--smoke", action="store_true", help="apply the space's smoke settings (tiny, fast)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--node-grace", type=float, default=10.0, metavar="MINUTES",
                   help="how long a trial may wait with no alive node able to hold it (a node died on a fixed "
                        "cluster) before the sweep stops, resumable (default: 10)")
    p.add_argument("--wait-for-resources", action="store_true",
                   help="on an autoscaling cluster: wait for nodes instead of refusing a trial that does not fit")
    p.add_argument("--verbose", action="store_true", help="also show Ray worker and Ray Train output")


def sweep_command(args: argparse.Namespace) -> int:
    if args.node_grace < 0:
        raise MMSNError(f"--node-grace {args.node_grace}: minutes, >= 0")
    return run_sweep(args.space, args.name, args.storage, args.smoke, args.resume, args.address,
                     args.wait_for_resources, args.verbose, args.node_grace * 60)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainables.sweep SPACE.yaml ...`` (what ``ray job submit`` runs)."""
    from mmsn.cli import standalone

    return standalone("python -m trainables.sweep", __doc__.splitlines()[0], add_arguments, sweep_command, argv)


if __name__ == "__main__":
    sys.exit(main())
