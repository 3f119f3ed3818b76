"""The one epoch loop behind both drivers: ``mmsn pretrain`` (one process) and the Ray Train worker.

The drivers differ only in where a finished epoch goes (``save``: a run directory, or a Ray Train
report with a checkpoint) and whether the loop probes (``probe``); checkpoint cadence, probe
milestones and the TensorBoard tags (``train/*`` every ``train.log_every`` steps, ``epoch/*`` per
epoch, ``probe/*`` at milestones) live here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from mmsn.config import TrainConfig
from mmsn.data.cache import Cache
from mmsn.engine import Log, Run, train_epoch
from mmsn.evaluate import probe_encoder

Save = Callable[[Run, dict[str, Any], bool], None]  # (run, epoch metrics, write a full checkpoint?)
Probe = Callable[[Run], dict[str, Any]]  # run -> a probe result as JSON (ProbeResult.to_json_dict)


def probe_due(train: TrainConfig, epoch: int) -> bool:
    """Probe after the last epoch and every ``train.probe_every`` epochs."""
    return epoch == train.epochs or (train.probe_every > 0 and epoch % train.probe_every == 0)


def checkpoint_due(train: TrainConfig, epoch: int, until: int) -> bool:
    """Full checkpoints every ``train.checkpoint_every`` epochs, and always at the end of the loop."""
    return epoch % train.checkpoint_every == 0 or epoch in (until, train.epochs)


def log_scalars(writer: SummaryWriter | None, prefix: str, scalars: dict[str, Any], step: int) -> None:
    if writer is not None:
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(f"{prefix}/{key}", value, step)


def log_probe(writer: SummaryWriter | None, result: dict[str, Any], epoch: int) -> None:
    """``probe/val_macro_auroc`` and ``probe_label/<finding>`` of a JSON probe result."""
    if writer is None:
        return
    writer.add_scalar("probe/val_macro_auroc", result["macro_auroc"], epoch)
    for name, entry in result["per_label"].items():
        if entry["auroc"] is not None:
            writer.add_scalar(f"probe_label/{name}", entry["auroc"], epoch)


def probe_val(run: Run, cache: Cache, log: Log | None = None) -> dict[str, Any]:
    """Probe the objective's image-only encoder on val (eval mode; the loop sets train mode again)."""
    encoder = run.objective.eval_encoder()
    run.objective.eval()
    result = probe_encoder(encoder, cache, run.cfg.probe, run.cfg.views.size, run.device)["val"]
    if log is not None:
        log(f"probe after epoch {run.epoch}: val macro AUROC {result.macro_auroc:.4f} "
            f"[{result.macro_ci[0]:.4f}, {result.macro_ci[1]:.4f}] ({result.seconds:.1f} s)")
    return result.to_json_dict()


def train_until(run: Run, until: int, writer: SummaryWriter | None, save: Save, probe: Probe | None = None,
                log: Log | None = None) -> dict[str, Any]:
    """Train epochs ``run.epoch + 1 .. until``; after each: TensorBoard, the probe when due, ``save``.
    Returns the last epoch's metrics (with ``probe`` when one ran)."""
    train = run.cfg.train
    metrics: dict[str, Any] = {}

    def on_step(scalars: dict[str, float]) -> None:
        if run.step % train.log_every == 0:
            log_scalars(writer, "train", scalars, run.step)

    while run.epoch < until:
        metrics = dict(train_epoch(run, log, on_step))
        log_scalars(writer, "epoch", metrics, run.epoch)
        if probe is not None and probe_due(train, run.epoch):
            metrics["probe"] = probe(run)
            log_probe(writer, metrics["probe"], run.epoch)
        save(run, metrics, checkpoint_due(train, run.epoch, until))
    return metrics


__all__ = ["checkpoint_due", "log_probe", "log_scalars", "probe_due", "probe_val", "train_until"]
