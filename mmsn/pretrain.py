"""``mmsn pretrain``: one pretraining run (any objective) on one process, resumable, with TensorBoard and probes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import config_differences, has_checkpoint, load_state, save_run
from mmsn.config import Config, from_dict
from mmsn.data.cache import Cache
from mmsn.engine import Log, Run, build_run, load_state_dict, state_dict
from mmsn.errors import ConfigError
from mmsn.loop import probe_val, train_until


def resume_config(out: Path, cfg: Config) -> Config:
    """A run directory with a checkpoint continues with its own config; a different one is an error."""
    saved = from_dict(Config, load_state(out)["config"])
    diff = config_differences(saved, cfg)
    if diff:
        raise ConfigError(f"{out}: holds a run with a different config ({', '.join(diff)}); "
                          "use another --out or the same config to resume")
    return saved  # type: ignore[no-any-return]


def pretrain(cfg: Config, cache: Cache, out: Path, log: Log = print,
             on_epoch: Callable[[Run, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Pretrain on ``cache``'s train split into ``out``; resumes if ``out`` holds a checkpoint."""
    if has_checkpoint(out):
        cfg = resume_config(out, cfg)
    run = build_run(cfg, cache)
    if has_checkpoint(out):
        load_state_dict(run, load_state(out))
        log(f"resumed {out} at epoch {run.epoch}, step {run.step}")
    log(f"pretraining {cfg.objective.name} on {cfg.model.backbone} fusion={cfg.ehr.fusion} "
        f"features={list(cfg.ehr.features)} on {len(run.train_set)} train images, "
        f"{run.steps_per_epoch} steps/epoch, device {run.device}")
    info: dict[str, Any] = {"cache": str(cache.root), "dataset": cache.meta["dataset"]}

    def save(run: Run, metrics: dict[str, Any], checkpoint: bool) -> None:
        info.update(epoch=run.epoch, step=run.step, metrics=metrics, time=time.time())
        if checkpoint:
            save_run(out, state_dict(run), run.objective.image_encoder_state_dict(), info)
        if on_epoch is not None:
            on_epoch(run, metrics)

    writer = SummaryWriter(str(out / "tb"))
    try:
        train_until(run, cfg.train.epochs, writer, save, lambda r: probe_val(r, cache, log), log)
    finally:
        writer.close()
    return info
