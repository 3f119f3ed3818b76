"""The training loop of a trial: under Ray Train, per worker (DDP), for a whole trial or one segment (PBT, halving);
or, for a one-worker trial, in the Tune trial's own process (``trainables.trial.in_process``).

Ray Train V2 pattern (Ray docs ``train_tune_interop``, ``checkpoints``): every rank builds the run,
``prepare_model`` wraps it in DDP (gloo on CPU, NCCL on GPU), each rank reads its shard of the train
split through a DistributedSampler, the MSN me-max mean is all-reduced inside the loss, and after each
epoch rank 0 writes a run directory (mmsn.checkpoint) and reports it; the other ranks report metrics
only. At each milestone rank 0 probes val and test in place (the worker group keeps running) and puts
the probe files into that epoch's checkpoint. A retried worker group resumes from
``ray.train.get_checkpoint()``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import RUN_INFO, load_state, save_run
from mmsn.config import Config, from_dict
from mmsn.data.cache import Cache, open_cache
from mmsn.engine import NonFiniteLossError, Run, build_run, load_state_dict, state_dict
from mmsn.evaluate import split_features, train_patients
from mmsn.loop import log_probe, train_until
from mmsn.probe import run_probe_splits
from mmsn.protocol import Protocol, run_protocol


def _start_state(config: dict[str, Any]) -> Path | None:
    """Where to resume from: this Train run's own last checkpoint (after a worker failure), else the
    previous segment's run directory handed in by the trial."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        return Path(checkpoint.path)
    return Path(config["init"]) if config.get("init") else None


Report = Callable[[dict[str, Any], Path | None], None]  # (metrics, checkpoint folder or None)


def _report(run: Run, report: Report, metrics: dict[str, Any], info: dict[str, Any], checkpoint: bool,
            probes: dict[str, Any] | None = None) -> None:
    """Every rank reports each epoch (a rule of Ray Train); only rank 0 attaches the checkpoint, when due,
    with the milestone's probe files (``probes/epoch_XXX.json`` and ``_test.npz``) inside it."""
    metrics = {**metrics, "epoch": run.epoch, "step": run.step}
    if run.rank != 0 or not checkpoint:
        report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_run(Path(tmp), state_dict(run), run.objective.image_encoder_state_dict(), {**info, **metrics})
        if probes is not None:
            write_probes(Path(tmp) / "probes", run.epoch, probes)
        report(metrics, Path(tmp))


def train_report(metrics: dict[str, Any], folder: Path | None) -> None:
    """Report to Ray Train (the folder is copied into the Train run's storage)."""
    ray.train.report(metrics, checkpoint=None if folder is None else ray.train.Checkpoint.from_directory(str(folder)))


def write_probes(out: Path, epoch: int, probes: dict[str, Any]) -> None:
    """Val and test probe summaries as JSON, the per-image test scores as npz (what the analysis reads);
    the evaluation protocol's (``probes["protocol"]``) as ``epoch_XXX_eval.json`` and one
    ``epoch_XXX_eval_<dataset>_f<fraction>_d<draw>_test.npz`` per probe."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: probes[k] for k in ("test_scores", "test_targets") if k in probes}
    if arrays:
        np.savez_compressed(out / f"epoch_{epoch:03d}_test.npz", scores=arrays["test_scores"],
                            targets=arrays["test_targets"])
    if probes.get("protocol") is not None:
        summary, scores = probes["protocol"]
        for name, (test_scores, targets) in scores.items():
            np.savez_compressed(out / f"epoch_{epoch:03d}_eval_{name}_test.npz", scores=test_scores, targets=targets)
        (out / f"epoch_{epoch:03d}_eval.json").write_text(json.dumps({"epoch": epoch, **summary}, indent=1))
    summary = {k: v for k, v in probes.items() if k not in arrays and k != "protocol"}
    (out / f"epoch_{epoch:03d}.json").write_text(json.dumps({"epoch": epoch, **summary}, indent=1))


def probe_splits(run: Run, cache: Cache, protocol: Protocol | None = None) -> dict[str, Any]:
    """Val and test probe of the objective's image-only encoder (one fit), JSON-able, plus the test
    scores and targets in cache row order (no ids) for the paired analysis; with ``protocol``, also the
    evaluation protocol's results (``"protocol"``: (summary, scores), mmsn.protocol.run_protocol)."""
    run.objective.eval()
    encoder, cfg = run.objective.eval_encoder(), run.cfg
    features = split_features(encoder, cache, cfg.probe, cfg.views.size, run.device, ("train", "val", "test"))
    results = run_probe_splits(*features, cache.labels, cfg.probe, ("val", "test"), train_patients(cache))
    out: dict[str, Any] = {split: result.to_json_dict() for split, result in results.items()}
    out["test_scores"], out["test_targets"] = results["test"].scores, results["test"].targets
    if protocol is not None:  # the primary cache's features are the ones just extracted
        out["protocol"] = run_protocol(encoder, protocol, cfg.probe, cfg.views.size, run.device,
                                       {protocol.targets[0][0]: features})
    run.objective.train()
    return out


class Clock:
    """The trial's compute split, carried through checkpoints: epoch compute, probes and the trial's
    wall time (worker-group start, state loading and checkpoint writing are what is left).
    ``start``: when this invocation of the trial began; a checkpoint of the same invocation (a retried
    worker group) carries what came before it, one of an earlier invocation (``--resume``) its total."""

    def __init__(self, start: float, info: dict[str, Any]) -> None:
        self.start, self.mark = start, time.time()
        same = info.get("trial_start") == start
        self.before = float(info.get("seconds_before" if same else "trial_seconds", 0.0))
        self.train = float(info.get("train_seconds", 0.0))
        self.probe = float(info.get("probe_seconds", 0.0))

    def epoch_done(self) -> None:
        now = time.time()
        self.train, self.mark = self.train + now - self.mark, now

    def probe_done(self) -> None:
        now = time.time()
        self.probe, self.mark = self.probe + now - self.mark, now

    def other_done(self) -> None:
        """Checkpoint writing and reporting: neither epoch compute nor probe, so not counted as either."""
        self.mark = time.time()

    def metrics(self) -> dict[str, float]:
        return {"train_seconds": self.train, "probe_seconds": self.probe,
                "trial_seconds": self.before + time.time() - self.start}

    def state(self) -> dict[str, float]:
        return {**self.metrics(), "trial_start": self.start, "seconds_before": self.before}


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


def run_info(start: Path | None) -> dict[str, Any]:
    try:
        return json.loads((start / RUN_INFO).read_text()) if start is not None else {}
    except (OSError, json.JSONDecodeError):
        return {}


def train_segment(config: dict[str, Any]) -> None:
    """Ray Train worker entry: :func:`train_loop` on this worker's rank, under DDP."""
    ctx = ray.train.get_context()
    train_loop(config, ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
               ray.train.torch.prepare_model, _start_state(config), train_report)


def train_loop(config: dict[str, Any], rank: int, world: int, device: Any, wrap: Callable[[Any], Any] | None,
               start: Path | None, report: Report) -> None:
    """Train from ``start`` (a run directory, or None) to epoch ``config["until_epoch"]``, calling
    ``report(metrics, checkpoint folder or None)`` after every epoch (rank 0 attaches the folder when a
    checkpoint or a milestone is due; the folder is gone once ``report`` returns).

    config: ``cfg`` (mmsn Config as a dict), ``cache`` (cache dir), ``init`` (run dir or None),
    ``until_epoch``, ``tb_dir`` (rank 0's TensorBoard directory under the experiment); optionally
    ``milestones`` (epochs at which rank 0 probes val and test inside the run and reports the result with
    a checkpoint: one worker group for the whole trial), ``report`` (constant metrics for those reports)
    and ``trial_start`` (the trial's start time, for its compute split).
    """
    cfg: Config = from_dict(Config, config["cfg"])
    cache = open_cache(config["cache"])
    run = build_run(cfg, cache, device, rank, world, wrap=wrap)
    if start is not None:
        load_state_dict(run, load_state(start))
    writer = SummaryWriter(config["tb_dir"]) if rank == 0 and config.get("tb_dir") else None
    info = {"cache": str(cache.root), "dataset": cache.meta["dataset"], "world_size": world}
    milestones = set(config.get("milestones") or ())
    protocol = Protocol.from_dict(config["protocol"]) if config.get("protocol") else None
    protocol_epochs = set(config.get("protocol_epochs") or ())
    clock = Clock(float(config.get("trial_start") or time.time()), run_info(start))

    def save(run: Run, metrics: dict[str, Any], checkpoint: bool) -> None:
        clock.epoch_done()
        probes = None
        if run.epoch in milestones:
            if rank == 0:
                probes = probe_splits(run, cache, protocol if run.epoch in protocol_epochs else None)
                log_probe(writer, probes["val"], run.epoch)
                metrics = {**metrics, "val_auroc": probes["val"]["macro_auroc"], **config.get("report", {})}
            clock.probe_done()
            metrics = {**metrics, **clock.metrics()}
        _report(run, report, metrics, {**info, **clock.state()}, checkpoint or run.epoch in milestones, probes)
        clock.other_done()
        _maybe_die(run)

    try:
        train_until(run, int(config["until_epoch"]), writer, save, probe=None)
    except NonFiniteLossError as err:
        # Reported, not raised: a deterministic divergence must not be retried by FailureConfig.
        report({"non_finite": str(err), "epoch": run.epoch, "step": run.step}, None)
    finally:
        if writer is not None:
            writer.close()
