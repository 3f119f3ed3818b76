"""The one epoch loop behind every way a run is trained: ``mmsn pretrain`` (one process), a one-worker
trial (in the Tune trial's process) and every rank of a several-worker trial (Ray Train, DDP).

The loop owns the sequence; a :class:`Reporter` only says where things go. After each epoch: TensorBoard
(``train/*`` every ``train.log_every`` steps, ``epoch/*`` per epoch, rank 0 only), then at a milestone
the probe (every rank extracts a share of the features, rank 0 fits: val, and test and the evaluation
protocol when asked), the full state written with the probe files inside it (``state_dir``), and the
reporter told; between milestones the state is written when a checkpoint is due. With
:attr:`Milestones.beside` a milestone's state is written unprobed and :func:`probe_state` probes it later,
beside training. The compute split (:class:`Clock`: epoch compute, probes,
the rest) is counted here once, carried through checkpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import RUN_INFO, save_run, write_run_info
from mmsn.config import TrainConfig
from mmsn.data.cache import Cache
from mmsn.engine import Log, Run, state_dict, train_epoch
from mmsn.evaluate import gathered, train_patients
from mmsn.metrics import rankme
from mmsn.probe import run_probe_splits
from mmsn.protocol import Protocol as EvalProtocol
from mmsn.protocol import run_protocol


class Reporter(Protocol):
    """Where a run's epochs go (rank 0; the other ranks have none)."""

    def state_dir(self, epoch: int) -> Path:
        """The directory the epoch's full state is written to (a run directory, mmsn.checkpoint)."""

    def saved(self, run: Run, state: Path | None, metrics: dict[str, Any], probes: dict[str, Any] | None,
              milestone: bool) -> None:
        """After every epoch: ``state`` holds its full state (None: no checkpoint was due), with the probe files
        in ``state/probes`` at a milestone probed in place, where ``probes`` is the probe's JSON result (None
        otherwise: no milestone, or one probed beside training, mmsn.loop.Milestones.beside)."""


@dataclass(frozen=True)
class Milestones:
    """When the loop probes, and what: the epochs (``epochs``), the splits scored besides val (``test``),
    and the evaluation protocol at ``protocol_epochs``. With ``beside``, the loop only writes a milestone's
    state (marked as one) and trains on: the caller probes it (trainables.trial, a Ray task)."""

    epochs: frozenset[int]
    test: bool = True
    protocol: EvalProtocol | None = None
    protocol_epochs: frozenset[int] = frozenset()
    beside: bool = False

    def protocol_at(self, epoch: int) -> EvalProtocol | None:
        return self.protocol if epoch in self.protocol_epochs else None

    @classmethod
    def every(cls, train: TrainConfig) -> Milestones:
        """``mmsn pretrain``'s: every ``train.probe_every`` epochs and the last, val only."""
        every = train.probe_every
        epochs = {e for e in range(1, train.epochs + 1) if e == train.epochs or (every > 0 and e % every == 0)}
        return cls(frozenset(epochs), test=False)


def checkpoint_due(train: TrainConfig, epoch: int, until: int) -> bool:
    """Full checkpoints every ``train.checkpoint_every`` epochs, and always at the end of the loop."""
    return epoch % train.checkpoint_every == 0 or epoch in (until, train.epochs)


def log_scalars(writer: SummaryWriter | None, prefix: str, scalars: dict[str, Any], step: int) -> None:
    if writer is not None:
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(f"{prefix}/{key}", value, step)


def log_probe(writer: SummaryWriter | None, probes: dict[str, Any], epoch: int) -> None:
    """``probe/val_macro_auroc`` and ``probe_label/<finding>`` (val), and ``probe/test_macro_auroc`` when the
    test split was scored, of a milestone's JSON probe results."""
    if writer is None:
        return
    for split in ("val", "test"):
        if split in probes and probes[split]["macro_auroc"] is not None:
            writer.add_scalar(f"probe/{split}_macro_auroc", probes[split]["macro_auroc"], epoch)
    if "rankme" in probes:
        writer.add_scalar("probe/rankme", probes["rankme"], epoch)
    for name, entry in probes["val"]["per_label"].items():
        if entry["auroc"] is not None:
            writer.add_scalar(f"probe_label/{name}", entry["auroc"], epoch)


class Clock:
    """The run's compute split, carried through checkpoints: epoch compute, probes and the wall time
    (worker start, state loading and writing are what is left). ``start``: when this invocation began; a
    state written by the same invocation (a retried worker group) carries what came before it, one of an
    earlier invocation (``--resume``, a restarted trial) its total."""

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
        """State writing and reporting: neither epoch compute nor probe, so not counted as either."""
        self.mark = time.time()

    def metrics(self) -> dict[str, float]:
        return {"train_seconds": self.train, "probe_seconds": self.probe,
                "trial_seconds": self.before + time.time() - self.start}

    def state(self) -> dict[str, float]:
        return {**self.metrics(), "trial_start": self.start, "seconds_before": self.before}


def run_info(state: Path | None) -> dict[str, Any]:
    """A state directory's ``run.json`` (epoch, metrics, compute split), {} when there is none."""
    try:
        return json.loads((state / RUN_INFO).read_text()) if state is not None else {}  # type: ignore[no-any-return]
    except (OSError, json.JSONDecodeError):
        return {}


def probe_splits(run: Run, cache: Cache, test: bool = True,
                 protocol: EvalProtocol | None = None) -> dict[str, Any] | None:
    """Val (and test) probe of the objective's image-only encoder (one fit), JSON-able, plus the test
    scores and targets in cache row order (no ids) for the paired analysis; with ``protocol``, also the
    evaluation protocol's results (``"protocol"``: (summary, scores), mmsn.protocol.run_protocol). Under DDP
    every rank calls it: each extracts its share of the features, and only rank 0 gets a result (the others
    None)."""
    run.objective.eval()
    encoder, cfg = run.objective.eval_encoder(), run.cfg
    splits = ("train", "val", "test") if test else ("train", "val")
    # the extraction (most of a probe at scale) is split across the ranks; rank 0 fits
    got = gathered(encoder, cache, cfg.probe, cfg.views.size, run.device, splits, run.rank, run.world_size)
    if got is None:
        run.objective.train()
        return None
    features = got
    results = run_probe_splits(*features, cache.labels, cfg.probe, splits[1:], train_patients(cache), run.device)
    out: dict[str, Any] = {split: result.to_json_dict() for split, result in results.items()}
    out["rankme"] = rankme(features[0]["val"])  # label-free, on the val features just extracted
    # per-image val scores (cache row order, no ids): what a noise-aware scheduler tests gaps between arms on
    out["val_scores"], out["val_targets"] = results["val"].scores, results["val"].targets
    if test:
        out["test_scores"], out["test_targets"] = results["test"].scores, results["test"].targets
    if protocol is not None:  # the primary cache's features are the ones just extracted
        out["protocol"] = run_protocol(encoder, protocol, cfg.probe, cfg.views.size, run.device,
                                       {protocol.targets[0][0]: features})
    run.objective.train()
    return out


def write_probes(out: Path, epoch: int, probes: dict[str, Any]) -> None:
    """Val and test probe summaries as JSON, the per-image test and val scores as npz (what the analysis and a
    racing scheduler read);
    the evaluation protocol's (``probes["protocol"]``) as ``epoch_XXX_eval.json`` and one
    ``epoch_XXX_eval_<dataset>_f<fraction>_d<draw>_test.npz`` per probe."""
    out.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {k: probes[k] for k in ("test_scores", "test_targets", "val_scores", "val_targets")
                              if k in probes}
    for split in ("test", "val"):
        if f"{split}_scores" in arrays:
            np.savez_compressed(out / f"epoch_{epoch:03d}_{split}.npz", scores=arrays[f"{split}_scores"],
                                targets=arrays[f"{split}_targets"])
    if probes.get("protocol") is not None:
        summary, scores = probes["protocol"]
        for name, (test_scores, targets) in scores.items():
            np.savez_compressed(out / f"epoch_{epoch:03d}_eval_{name}_test.npz", scores=test_scores, targets=targets)
        (out / f"epoch_{epoch:03d}_eval.json").write_text(json.dumps({"epoch": epoch, **summary}, indent=1))
    summary = {k: v for k, v in probes.items() if k not in arrays and k != "protocol"}
    (out / f"epoch_{epoch:03d}.json").write_text(json.dumps({"epoch": epoch, **summary}, indent=1))


def train(run: Run, until: int, cache: Cache, milestones: Milestones, reporter: Reporter | None,
          writer: SummaryWriter | None = None, clock: Clock | None = None, log: Log | None = None,
          on_epoch: Callable[[Run, dict[str, Any]], None] | None = None,
          trained: Callable[[Run], None] | None = None) -> dict[str, Any]:
    """Train epochs ``run.epoch + 1 .. until`` (see the module docstring); ``reporter`` on rank 0 only;
    ``trained`` on every rank after an epoch's steps, before its probe and state; ``on_epoch`` on every
    rank once the epoch is saved. Returns the last epoch's metrics (with ``val_auroc``
    when it was a milestone)."""
    train_cfg, metrics = run.cfg.train, {}
    clock = clock or Clock(time.time(), {})
    info = {"cache": str(cache.root), "dataset": cache.meta["dataset"], "world_size": run.world_size}

    def on_step(scalars: dict[str, float]) -> None:
        if run.step % train_cfg.log_every == 0:
            log_scalars(writer, "train", scalars, run.step)

    while run.epoch < until:
        metrics = dict(train_epoch(run, log, on_step))
        clock.epoch_done()
        if trained is not None:
            trained(run)
        log_scalars(writer, "epoch", metrics, run.epoch)
        milestone = run.epoch in milestones.epochs
        probes = None
        if milestone and not milestones.beside and (reporter is not None or run.world_size > 1):
            # every rank extracts a share, rank 0 fits
            probes = probe_splits(run, cache, milestones.test, milestones.protocol_at(run.epoch))
            if probes is not None:
                record_probe(probes, run.epoch, metrics, writer, log)
            clock.probe_done()
        metrics.update(epoch=run.epoch, step=run.step, **clock.metrics())
        _save(run, reporter, metrics, {**info, **clock.state(), "milestone": milestone}, probes,
              milestone or checkpoint_due(train_cfg, run.epoch, until), milestone)
        clock.other_done()
        if on_epoch is not None:
            on_epoch(run, metrics)
    return metrics


def record_probe(probes: dict[str, Any], epoch: int, metrics: dict[str, Any], writer: SummaryWriter | None,
                 log: Log | None) -> None:
    """A milestone's probe results into its metrics (``val_auroc``, ``rankme``), TensorBoard and the log."""
    log_probe(writer, probes, epoch)
    metrics["val_auroc"] = probes["val"]["macro_auroc"]
    metrics["rankme"] = probes["rankme"]
    if log is not None:
        log(milestone_line(epoch, probes["val"], probes["rankme"]))


def probe_state(run: Run, cache: Cache, milestones: Milestones, state: Path, writer: SummaryWriter | None) -> None:
    """The probe of a milestone state written without one (:attr:`Milestones.beside`), ``run`` loaded from it:
    its files go into ``state/probes`` and its results into the state's run.json, as in place; run.json last,
    so a state whose run.json has ``val_auroc`` has all its probe files."""
    probes = probe_splits(run, cache, milestones.test, milestones.protocol_at(run.epoch))
    assert probes is not None  # one process: world size 1
    write_probes(state / "probes", run.epoch, probes)
    info = run_info(state)
    record_probe(probes, run.epoch, info, writer, None)
    write_run_info(state, info)


def _save(run: Run, reporter: Reporter | None, metrics: dict[str, Any], info: dict[str, Any],
          probes: dict[str, Any] | None, due: bool, milestone: bool) -> None:
    """Rank 0: the epoch's state where the reporter says (the milestone's probe files inside), then tell it."""
    if reporter is None:
        return
    folder = reporter.state_dir(run.epoch) if due else None
    if folder is not None:
        save_run(folder, state_dict(run), run.objective.image_encoder_state_dict(), {**info, **metrics})
        if probes is not None:
            write_probes(folder / "probes", run.epoch, probes)
    reporter.saved(run, folder, metrics, probes, milestone)


def milestone_line(epoch: int, val: dict[str, Any], rank: float | None = None) -> str:
    low, high, auroc = (float("nan") if v is None else v for v in (*val["macro_ci"], val["macro_auroc"]))
    effective = f", RankMe {rank:.1f}" if rank is not None else ""
    return (f"probe after epoch {epoch}: val macro AUROC {auroc:.4f} [{low:.4f}, {high:.4f}]{effective} "
            f"({val['seconds']:.1f} s)")


__all__ = ["Clock", "Milestones", "Reporter", "checkpoint_due", "log_probe", "log_scalars", "milestone_line",
           "probe_splits", "probe_state", "record_probe", "run_info", "train", "write_probes"]
