"""The Tune trainable: pretraining segments chained with linear probes (RESEARCH.md section 5, way B).

A trial pretrains up to each milestone epoch as its own ``TorchTrainer.fit()`` (N workers, DDP), then
probes the target encoder as a separate Ray task with its own resources (so its cost is visible) and
reports the validation macro AUROC to Tune *with a Tune checkpoint*: ASHA, HyperBand and PBT all act
on probe AUROC, and PBT can clone a trial. Test AUROC is written to the trial directory for the final
analysis and never reported to the scheduler.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import ENCODER
from mmsn.config import to_dict
from mmsn.engine import NonFiniteLossError
from mmsn.loop import log_probe
from search_spaces.loader import Space, variant_name
from trainables.worker import train_segment

TRIAL_INFO = "trial.json"  # cumulative compute of the trial, inside each reported checkpoint


@ray.remote
def probe_run_dir(run_dir: str, cache_dir: str, splits: tuple[str, ...] = ("val", "test")) -> dict[str, Any]:
    """Linear probe of a run directory's image-only encoder; one JSON-able result per split."""
    from mmsn.checkpoint import load_encoder
    from mmsn.data.cache import open_cache
    from mmsn.engine import resolve_device
    from mmsn.evaluate import probe_encoder

    encoder, cfg = load_encoder(Path(run_dir))
    device = resolve_device(cfg)
    results = probe_encoder(encoder.to(device), open_cache(cache_dir), cfg.probe, cfg.views.size, device, splits)
    out: dict[str, Any] = {split: result.to_json_dict() for split, result in results.items()}
    if "test" in results:  # per-image test scores (cache row order, no ids) for paired analysis
        out["test_scores"] = results["test"].scores
        out["test_targets"] = results["test"].targets
    return out


def run_segment(space: Space, cfg_dict: dict[str, Any], cache: str, init: str | None, until: int,
                trial_id: str, tb_dir: str, experiment: str) -> ray.train.Result:
    """One TorchTrainer.fit() from ``init`` to epoch ``until``; a fresh run name per segment, since a
    reused name would auto-restore the previous segment's run."""
    res = space.resources
    trainer = TorchTrainer(
        train_segment,
        train_loop_config={"cfg": cfg_dict, "cache": cache, "init": init, "until_epoch": until, "tb_dir": tb_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=f"{trial_id}-e{until:03d}-{uuid.uuid4().hex[:6]}",
            storage_path=str(Path(experiment) / "train_runs"),
            failure_config=ray.train.FailureConfig(max_failures=space.budget.max_failures),
            # The latest checkpoint is all a retried worker group resumes from; older epochs are dropped.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    )
    return trainer.fit()


def _restore(checkpoint: ray.tune.Checkpoint | None) -> tuple[str | None, int, float]:
    """(run dir, epochs done, trial seconds so far) from a Tune checkpoint (resume or PBT clone)."""
    if checkpoint is None:
        return None, 0, 0.0
    info = json.loads((Path(checkpoint.path) / TRIAL_INFO).read_text())
    return checkpoint.path, int(info["epoch"]), float(info["trial_seconds"])


def _probe(space: Space, run_dir: str, cache: str) -> dict[str, Any]:
    res = space.resources
    # "DEFAULT" leaves the trial's own placement group (a sliver of CPU for the trial driver), so the
    # probe gets the CPUs/GPUs the train workers just released.
    task = probe_run_dir.options(num_cpus=res.probe_cpus, num_gpus=res.probe_gpus, scheduling_strategy="DEFAULT")
    return ray.get(task.remote(run_dir, cache))  # type: ignore[no-any-return]


def msn_trial(config: dict[str, Any], space: Space, cache: str, experiment: str) -> None:
    """Tune function trainable. ``config`` holds the sampled params, flat dotted keys (``optim.lr``)."""
    params = dict(config)
    cfg = space.config(params)
    trial_dir = Path(ray.tune.get_context().get_trial_dir())
    trial_id = ray.tune.get_context().get_trial_id()
    tb_dir = str(trial_dir / "tb")
    run_dir, epoch, seconds = _restore(ray.tune.get_checkpoint())
    writer = SummaryWriter(tb_dir)
    previous: Path | None = None  # this trial's last Train run under train_runs/
    try:
        for milestone in (m for m in space.scheduler.milestones if m > epoch):
            start = time.time()
            result = run_segment(space, to_dict(cfg), cache, run_dir, milestone, trial_id, tb_dir, experiment)
            if "non_finite" in result.metrics:
                raise NonFiniteLossError(result.metrics["non_finite"])
            assert result.checkpoint is not None
            # The new segment started from the previous one, and Tune holds its own copy of each reported
            # checkpoint: the previous Train run is not needed any more (bounded disk per trial).
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
            previous = Path(result.path)
            run_dir, train_s = result.checkpoint.path, time.time() - start
            probes = _probe(space, run_dir, cache)
            probe_s = time.time() - start - train_s
            seconds += train_s + probe_s
            _save_probes(trial_dir, milestone, probes)
            _save_encoder(trial_dir, milestone, Path(run_dir))
            log_probe(writer, probes["val"], milestone)
            (Path(run_dir) / TRIAL_INFO).write_text(json.dumps({"epoch": milestone, "trial_seconds": seconds}))
            ray.tune.report(
                {"val_auroc": probes["val"]["macro_auroc"], "epoch": milestone, "loss": result.metrics["loss"],
                 "train_seconds": train_s, "probe_seconds": probe_s, "trial_seconds": seconds,
                 "gpu_seconds": (train_s * space.resources.workers * space.resources.gpus_per_worker
                                 + probe_s * space.resources.probe_gpus),
                 "variant": variant_name(cfg)},
                checkpoint=ray.tune.Checkpoint.from_directory(run_dir))
    finally:
        writer.close()


def _save_encoder(trial_dir: Path, epoch: int, run_dir: Path) -> None:
    """Each milestone's image-only encoder (a timm state dict, small) stays, while full checkpoints do not."""
    out = trial_dir / "encoders"
    out.mkdir(exist_ok=True)
    shutil.copyfile(run_dir / ENCODER, out / f"epoch_{epoch:03d}.pth")


def _save_probes(trial_dir: Path, epoch: int, probes: dict[str, Any]) -> None:
    """Val and test probe results per milestone, for the analysis (never seen by the scheduler)."""
    out = trial_dir / "probes"
    out.mkdir(exist_ok=True)
    arrays = {k: probes.pop(k) for k in ("test_scores", "test_targets") if k in probes}
    if arrays:
        np.savez_compressed(out / f"epoch_{epoch:03d}_test.npz", scores=arrays["test_scores"],
                            targets=arrays["test_targets"])
    (out / f"epoch_{epoch:03d}.json").write_text(json.dumps({"epoch": epoch, **probes}, indent=1))
