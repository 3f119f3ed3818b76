"""``mmsn pretrain``: one pretraining run (any objective) on one process, resumable, with TensorBoard and probes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import config_differences, has_checkpoint, load_state
from mmsn.config import Config, from_dict
from mmsn.data.cache import Cache
from mmsn.engine import Log, Run, build_run, load_state_dict
from mmsn.errors import ConfigError
from mmsn.loop import Clock, Milestones, run_info, train
from mmsn.preflight import check_config


def resume_config(out: Path, cfg: Config) -> Config:
    """A run directory with a checkpoint continues with its own config; a different one is an error."""
    saved = from_dict(Config, load_state(out)["config"])
    diff = config_differences(saved, cfg)
    if diff:
        raise ConfigError(f"{out}: holds a run with a different config ({', '.join(diff)}); "
                          "use another --out or the same config to resume")
    return saved  # type: ignore[no-any-return]


class RunDir:
    """The reporter of ``mmsn pretrain``: every state goes to the run directory ``out``; ``info`` keeps the
    last epoch's progress (with the val probe under ``metrics.probe``)."""

    def __init__(self, out: Path) -> None:
        self.out, self.info = out, dict[str, Any]()

    def state_dir(self, epoch: int) -> Path:
        return self.out

    def saved(self, run: Run, state: Path | None, metrics: dict[str, Any], probes: dict[str, Any] | None,
              milestone: bool) -> None:
        metrics = {**metrics, "probe": probes["val"]} if probes is not None else metrics
        self.info.update(epoch=run.epoch, step=run.step, metrics=metrics, time=time.time())


def pretrain(cfg: Config, cache: Cache, out: Path, log: Log = print,
             on_epoch: Callable[[Run, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Pretrain on ``cache``'s train split into ``out``; resumes if ``out`` holds a checkpoint."""
    if has_checkpoint(out):
        cfg = resume_config(out, cfg)
    check_config(cfg, cache.ehr_columns)
    run = build_run(cfg, cache)
    clock = Clock(time.time(), {})
    if has_checkpoint(out):
        load_state_dict(run, load_state(out))
        clock = Clock(time.time(), run_info(out))
        log(f"resumed {out} at epoch {run.epoch}, step {run.step}")
    log(f"pretraining {cfg.objective.name} on {cfg.model.backbone} fusion={cfg.ehr.fusion} "
        f"features={list(cfg.ehr.features)} on {len(run.train_set)} train images, "
        f"{run.steps_per_epoch} steps/epoch, device {run.device}")
    reporter = RunDir(out)
    reporter.info.update(cache=str(cache.root), dataset=cache.meta["dataset"])
    writer = SummaryWriter(str(out / "tb"))
    try:
        train(run, cfg.train.epochs, cache, Milestones.every(cfg.train), reporter, writer, clock, log, on_epoch)
    finally:
        writer.close()
    return reporter.info

