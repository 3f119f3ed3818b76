"""The Ray Train per-worker loop: pretrain one segment (up to a milestone epoch) under DDP.

Ray Train V2 pattern (Ray docs ``train_tune_interop``, ``checkpoints``): every rank builds the run,
``prepare_model`` wraps it in DDP (gloo on CPU, NCCL on GPU), each rank reads its shard of the train
split through a DistributedSampler, the MSN me-max mean is all-reduced inside the loss, and after each
epoch rank 0 writes a run directory (mmsn.checkpoint) and reports it; the other ranks report metrics
only. A retried worker group resumes from ``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import load_state, save_run
from mmsn.config import Config, from_dict
from mmsn.data.cache import open_cache
from mmsn.engine import NonFiniteLossError, Run, build_run, load_state_dict, state_dict
from mmsn.loop import train_until


def _start_state(config: dict[str, Any]) -> Path | None:
    """Where to resume from: this Train run's own last checkpoint (after a worker failure), else the
    previous segment's run directory handed in by the trial."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        return Path(checkpoint.path)
    return Path(config["init"]) if config.get("init") else None


def _report(run: Run, metrics: dict[str, Any], info: dict[str, Any], checkpoint: bool) -> None:
    """Every rank reports each epoch (a rule of Ray Train); only rank 0 attaches the checkpoint, when due."""
    metrics = {**metrics, "epoch": run.epoch, "step": run.step}
    if run.rank != 0 or not checkpoint:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_run(Path(tmp), state_dict(run), run.objective.image_encoder_state_dict(), {**info, **metrics})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


FAULT_ENV = "MMSN_TEST_KILL_WORKER"


def _maybe_die(run: Run) -> None:
    """Fault injection for the retry test: ``MMSN_TEST_KILL_WORKER=RANK:EPOCH:MARKER`` kills that rank
    (hard exit, like a lost node) after reporting that epoch, once: MARKER records that it happened."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    rank, epoch, marker = spec.split(":", 2)
    if run.rank == int(rank) and run.epoch == int(epoch) and not os.path.exists(marker):
        Path(marker).write_text(f"killed rank {rank} after epoch {epoch}\n")
        os._exit(1)


def train_segment(config: dict[str, Any]) -> None:
    """Train from the start state to epoch ``config["until_epoch"]``.

    config: ``cfg`` (mmsn Config as a dict), ``cache`` (cache dir), ``init`` (run dir or None),
    ``until_epoch``, ``tb_dir`` (rank 0's TensorBoard directory under the experiment).
    """
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg: Config = from_dict(Config, config["cfg"])
    cache = open_cache(config["cache"])
    run = build_run(cfg, cache, ray.train.torch.get_device(), rank, world, wrap=ray.train.torch.prepare_model)
    start = _start_state(config)
    if start is not None:
        load_state_dict(run, load_state(start))
    writer = SummaryWriter(config["tb_dir"]) if rank == 0 and config.get("tb_dir") else None
    info = {"cache": str(cache.root), "dataset": cache.meta["dataset"], "world_size": world}

    def save(run: Run, metrics: dict[str, Any], checkpoint: bool) -> None:
        _report(run, metrics, info, checkpoint)
        _maybe_die(run)

    try:
        # The trial probes between segments (a Ray task with its own resources), so the loop does not.
        train_until(run, int(config["until_epoch"]), writer, save, probe=None)
    except NonFiniteLossError as err:
        # Reported, not raised: a deterministic divergence must not be retried by FailureConfig.
        ray.train.report({"non_finite": str(err), "epoch": run.epoch, "step": run.step}, checkpoint=None)
    finally:
        if writer is not None:
            writer.close()
