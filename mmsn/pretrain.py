"""``mmsn pretrain``: one multimodal MSN run on one process, resumable, with TensorBoard and probes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import config_differences, has_checkpoint, load_state, save_run
from mmsn.config import Config, from_dict
from mmsn.data.cache import Cache
from mmsn.engine import Run, build_run, load_state_dict, state_dict, train_epoch
from mmsn.errors import ConfigError
from mmsn.evaluate import probe_encoder

Log = Callable[[str], None]


def resume_config(out: Path, cfg: Config) -> Config:
    """A run directory with a checkpoint continues with its own config; a different one is an error."""
    saved = from_dict(Config, load_state(out)["config"])
    diff = config_differences(saved, cfg)
    if diff:
        raise ConfigError(f"{out}: holds a run with a different config ({', '.join(diff)}); "
                          "use another --out or the same config to resume")
    return saved  # type: ignore[no-any-return]


def log_scalars(writer: SummaryWriter | None, prefix: str, scalars: dict[str, float], step: int) -> None:
    if writer is not None:
        for key, value in scalars.items():
            writer.add_scalar(f"{prefix}/{key}", value, step)


def probe_milestone(run: Run, cache: Cache, epoch: int) -> bool:
    every = run.cfg.train.probe_every
    return epoch == run.cfg.train.epochs or (every > 0 and epoch % every == 0)


def run_probe_now(run: Run, cache: Cache, writer: SummaryWriter | None, log: Log) -> dict[str, Any]:
    """Probe the current target encoder on val; log macro and per-label AUROC."""
    run.model.eval()
    result = probe_encoder(run.model.encode, cache, run.cfg.probe, run.cfg.views.size, run.device)["val"]
    log(f"probe after epoch {run.epoch}: val macro AUROC {result.macro_auroc:.4f} "
        f"[{result.macro_ci[0]:.4f}, {result.macro_ci[1]:.4f}] ({result.seconds:.1f} s)")
    if writer is not None:
        writer.add_scalar("probe/val_macro_auroc", result.macro_auroc, run.epoch)
        for name, entry in result.per_label.items():
            writer.add_scalar(f"probe_label/{name}", entry["auroc"], run.epoch)
    return result.to_json_dict()


def pretrain(cfg: Config, cache: Cache, out: Path, log: Log = print,
             on_epoch: Callable[[Run, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Pretrain on ``cache``'s train split into ``out``; resumes if ``out`` holds a checkpoint."""
    if has_checkpoint(out):
        cfg = resume_config(out, cfg)
    run = build_run(cfg, cache)
    if has_checkpoint(out):
        load_state_dict(run, load_state(out))
        log(f"resumed {out} at epoch {run.epoch}, step {run.step}")
    log(f"pretraining {cfg.model.backbone} fusion={cfg.ehr.fusion} features={list(cfg.ehr.features)} "
        f"on {len(run.train_set)} train images, {run.steps_per_epoch} steps/epoch, device {run.device}")
    writer = SummaryWriter(str(out / "tb"))
    info: dict[str, Any] = {"cache": str(cache.root), "dataset": cache.meta["dataset"]}
    try:
        while run.epoch < cfg.train.epochs:
            metrics: dict[str, Any] = train_epoch(run, log, lambda s: log_scalars(writer, "train", s, run.step))
            log_scalars(writer, "epoch", metrics, run.epoch)
            if probe_milestone(run, cache, run.epoch):
                metrics["probe"] = run_probe_now(run, cache, writer, log)
            info.update(epoch=run.epoch, step=run.step, metrics=metrics, time=time.time())
            if run.epoch % cfg.train.checkpoint_every == 0 or run.epoch == cfg.train.epochs:
                save_run(out, state_dict(run), run.model.image_encoder_state_dict(), info)
            if on_epoch is not None:
                on_epoch(run, metrics)
    finally:
        writer.close()
    return info


