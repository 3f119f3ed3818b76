"""Where a trial's epochs run: in the Tune trial's own process (one worker) or on each Ray Train worker
(several, DDP: gloo on CPU, NCCL on GPU). Both build the run, start from the trial's newest state and hand
the same loop (mmsn.loop.train) a reporter on rank 0 that writes the trial's states (trainables.state).

Ray Train V2 pattern (Ray docs ``train_tune_interop``): every rank builds the run, ``prepare_model``
wraps it in DDP, each rank reads its shard of the train split through a DistributedSampler. The Train
run reports nothing to Train: rank 0 writes the states to the shared storage and sends a milestone's
epoch through a queue to the trial; a retried worker group starts from the trial's newest state.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import load_state
from mmsn.data.cache import open_cache
from mmsn.engine import NonFiniteLossError, Run, build_run, load_state_dict
from mmsn.errors import MMSNError
from mmsn.loop import Clock, probe_state, run_info, train
from search_spaces.loader import Space
from trainables.state import TrialState, is_milestone_state

FAULT_ENV = "MMSN_TEST_KILL_WORKER"


def _fault(run: Run, probed: bool, restarted: bool = False) -> None:
    """Fault injection for the retry tests: ``MMSN_TEST_KILL_WORKER=RANK:EPOCH:MARKER`` kills that rank
    (hard exit, like a lost node) after it saved that epoch, once: MARKER records that it happened;
    ``RANK:EPOCHp:MARKER`` kills it after the epoch's steps, before its milestone probe (in which every rank
    of a several-worker trial takes part, so the others cannot finish the epoch without it), in a worker
    group that started from a saved state (``restarted``): a first run may be past a milestone that the
    scheduler is about to pause the trial at, and a kill there would be lost with the run."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, epoch, marker = spec.split(":", 2)
    at_probe = epoch.endswith("p")
    if (run.rank == int(rank) and run.epoch == int(epoch.rstrip("p")) and at_probe != probed
            and (restarted or not at_probe) and not os.path.exists(marker)):
        Path(marker).write_text(f"killed rank {rank} after epoch {epoch}\n")
        os._exit(1)


def _maybe_die(run: Run, metrics: dict[str, Any]) -> None:
    _fault(run, probed=True)


def untrained_rankme(run: Run, cache: Any) -> float:
    """RankMe of the trial's encoder before any training, on the val features the probe will see: the floor
    below which a trial's RankMe says its representation is collapsing."""
    from mmsn.evaluate import split_features
    from mmsn.metrics import rankme

    run.objective.eval()
    features, _ = split_features(run.objective.eval_encoder(), cache, run.cfg.probe, run.cfg.views.size, run.device,
                                 ("val",))
    run.objective.train()
    return rankme(features["val"])


def assigned_device(requested: str, fraction: float = 1.0) -> torch.device:
    """The device Ray assigned this process: a GPU only when the trial was given one (Ray 2.60 leaves every
    GPU visible to a 0-GPU task), whatever ``train.device: auto`` would pick; ``cuda`` without one is an
    error. A trial given ``fraction`` < 1 of a GPU is capped to that share of its memory, so trials that
    share a GPU cannot take each other's."""
    gpus = ray.get_gpu_ids()
    if requested == "cuda" and not gpus:
        raise MMSNError("train.device: cuda, but Ray assigned this trial no GPU; set resources.gpus_per_worker")
    if requested == "cpu" or not gpus:
        return torch.device("cpu")
    device = torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs
    if memory_cap(fraction) is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return device


def memory_cap(fraction: float) -> float | None:
    """The share of its GPU's memory a process given ``fraction`` of a GPU may use (None: no cap)."""
    return fraction if 0 < fraction < 1 else None


def _run(job: Any, rank: int, world: int, device: torch.device, wrap: Callable[[Any], Any] | None,
         forward: Callable[[int], None] | None, forward_start: bool = False) -> None:
    """Train ``job`` (trainables.trial.TrialJob) on this rank; rank 0 writes the states and ``forward`` (if any)
    gets milestone epochs; with ``forward_start``, also the epoch of a milestone state it starts from (a
    worker group killed between writing a milestone and sending it: the trial skips what it reported)."""
    state = TrialState(Path(job.own))
    start = state.start(Path(job.start) if job.start else None)
    epoch = int(run_info(start).get("epoch", 0))
    if forward is not None and forward_start and start is not None and is_milestone_state(start, epoch):
        forward(epoch)
    cache = open_cache(job.cache)
    run = build_run(job.cfg, cache, device, rank, world, wrap=wrap)
    if start is not None:
        load_state_dict(run, load_state(start))
    elif rank == 0 and not state.untrained_file.is_file():
        state.keep_untrained(untrained_rankme(run, cache))
    writer = SummaryWriter(job.tb_dir) if rank == 0 else None
    if writer is not None and (floor := state.untrained()) is not None:
        writer.add_scalar("probe/rankme_untrained", floor, 0)
    sink = state.sink(forward or (lambda epoch: None)) if rank == 0 else None
    try:
        train(run, job.cfg.train.epochs, cache, job.milestones, sink, writer,
              Clock(job.trial_start, run_info(start)), on_epoch=_maybe_die,
              trained=lambda run: _fault(run, probed=False, restarted=start is not None))
    except NonFiniteLossError as err:
        # A result, not a fault: every rank sees it at the same step (the loss is all-reduced) and ends
        # normally, so Ray Train does not retry a deterministic divergence; the trial raises it.
        if rank == 0:
            state.mark_diverged(err)
        if world == 1:
            raise
    finally:
        if writer is not None:
            writer.close()


def train_in_process(job: Any, forward: Callable[[int], None]) -> None:
    """A one-worker trial: its own process trains, no Ray Train."""
    _run(job, 0, 1, assigned_device(job.cfg.train.device, job.gpus), None, forward)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train worker entry: the trial's job on this worker's rank, under DDP."""
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    queue = config["milestones"]  # a ray.util.queue.Queue to the trial, or None
    _run(config["job"], rank, ctx.get_world_size(), ray.train.torch.get_device(), ray.train.torch.prepare_model,
         queue.put if rank == 0 and queue is not None else None, forward_start=True)


def probe_beside(job: Any, state: str) -> None:
    """A Ray task: the milestone probe of a several-worker trial's ``state`` while its workers train on
    (``resources.probe: beside``), on the device Ray gave the task; TensorBoard's probe scalars go to the
    trial's run from a writer of its own."""
    cache = open_cache(job.cache)
    run = build_run(job.cfg, cache, assigned_device(job.cfg.train.device, job.gpus))
    load_state_dict(run, load_state(Path(state)))
    writer = SummaryWriter(job.tb_dir, filename_suffix=".probe")
    try:
        probe_state(run, cache, job.milestones, Path(state), writer)
    finally:
        writer.close()


def trainer(space: Space, loop_config: dict[str, Any], name: str) -> Any:
    """A TorchTrainer for a trial of ``space`` (its workers, their resources, retries of the worker group)."""
    from ray.train.torch import TorchTrainer

    res, job = space.resources, loop_config["job"]
    return TorchTrainer(
        train_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}),
        run_config=ray.train.RunConfig(name=name, storage_path=str(Path(job.own) / "train"),
                                       failure_config=ray.train.FailureConfig(max_failures=space.budget.max_failures)))


__all__ = ["FAULT_ENV", "assigned_device", "probe_beside", "train_in_process", "train_worker", "trainer"]
