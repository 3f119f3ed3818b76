"""The Tune trainable: pretraining with a linear probe at each milestone (RESEARCH.md section 5, way B).

One worker per trial, any scheduler: the trial trains in its own process (a Tune function trainable
holding the worker's CPUs/GPUs): no worker group to start, ~10-25 s saved per trial on a small machine
(and under PBT per milestone). Each milestone is probed in place (val and test) and reported to Tune with
the full checkpoint (Tune keeps the latest, which serves a retry, ``--resume``, a paused trial and PBT's
clones); the epochs between milestones keep their latest checkpoint in ``train_runs/<trial id>/latest``,
removed when the trial ends.

FIFO, ASHA and HyperBand, several workers: one ``TorchTrainer.fit()`` per trial (one worker group, N
workers, DDP) runs to the last milestone; at each milestone rank 0 probes the encoder in place (val and
test, one fit) and reports val macro AUROC with a checkpoint, and :class:`MilestoneReport` forwards that
report to Tune and files the probe results and encoder export in the trial directory. The Train run is named after the
trial, so ``--resume`` continues from its latest checkpoint. A trial the scheduler stops is stopped with
its worker group.

PBT and halving, several workers: a trial must be cloneable (PBT) or pausable (halving pauses a trial
at a rung until every arm reached it) at each milestone, so it pretrains up to each milestone as
its own ``TorchTrainer.fit()``, probes the run as a separate Ray task with its own resources and reports
*with a Tune checkpoint*, which PBT copies when it exploits and a paused trial restarts from.

Test AUROC is written to the trial directory for the final analysis and never reported to the scheduler.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from torch.utils.tensorboard import SummaryWriter

from mmsn.checkpoint import ENCODER
from mmsn.config import Config, to_dict
from mmsn.engine import NonFiniteLossError, resolve_device
from mmsn.loop import log_probe
from mmsn.protocol import Protocol
from search_spaces.loader import Space, variant_name
from trainables.halving import awaiting_rung
from trainables.worker import run_info, train_loop, train_segment, write_probes

TRIAL_INFO = "trial.json"  # cumulative compute of a PBT trial, inside each reported checkpoint


@ray.remote
def probe_run_dir(run_dir: str, cache_dir: str, splits: tuple[str, ...] = ("val", "test"),
                  protocol: Protocol | None = None) -> dict[str, Any]:
    """Linear probe of a run directory's image-only encoder; one JSON-able result per split (and the
    evaluation protocol's results under ``"protocol"``, when given)."""
    from mmsn.checkpoint import load_encoder
    from mmsn.data.cache import open_cache
    from mmsn.engine import resolve_device
    from mmsn.evaluate import probe_encoder
    from mmsn.protocol import run_protocol

    encoder, cfg = load_encoder(Path(run_dir))
    device = resolve_device(cfg)
    results = probe_encoder(encoder.to(device), open_cache(cache_dir), cfg.probe, cfg.views.size, device, splits)
    out: dict[str, Any] = {split: result.to_json_dict() for split, result in results.items()}
    if "test" in results:  # per-image test scores (cache row order, no ids) for paired analysis
        out["test_scores"] = results["test"].scores
        out["test_targets"] = results["test"].targets
    if protocol is not None:
        out["protocol"] = run_protocol(encoder, protocol, cfg.probe, cfg.views.size, device)
    return out


def _trainer(space: Space, loop_config: dict[str, Any], name: str, experiment: str,
             callbacks: list[Any] | None = None) -> TorchTrainer:
    res = space.resources
    return TorchTrainer(
        train_segment, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=res.workers, use_gpu=res.gpus_per_worker > 0,
            resources_per_worker={"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(Path(experiment) / "train_runs"), callbacks=callbacks or [],
            failure_config=ray.train.FailureConfig(max_failures=space.budget.max_failures),
            # The latest checkpoint is all a retried worker group resumes from; older epochs are dropped.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)),
    )


class MilestoneReport(TuneReportCallback):  # type: ignore[misc]
    """Runs in the Train controller (on the trial's node): files each milestone's probe results and
    encoder export in the trial directory, then forwards the milestone report (not the per-epoch ones)
    to Tune, where the scheduler acts on its val AUROC. The last milestone is reported by the trial
    once the Train run has ended: a scheduler stops a trial that reaches its full length at once, and a
    Train run killed while it shuts down can leave its placement group behind."""

    def __init__(self, trial_dir: str, own: str, gpus: float, last: int) -> None:
        super().__init__()
        self.trial_dir, self.own, self.gpus, self.last = Path(trial_dir), Path(own), gpus, last

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        first = metrics[0]
        if "val_auroc" not in first:
            return
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                _file_milestone(self.trial_dir, int(first["epoch"]), Path(folder))
        if int(first["epoch"]) < self.last:
            forwarded = tune_metrics(first, self.gpus)
            _keep_report(self.own, forwarded)
            super().after_report(run_context, [forwarded], checkpoint)


REPORTED = "reported"  # train_runs/<trial id>/reported/epoch_XXX.json: each milestone report as sent to Tune


def own_dir(experiment: str, trial_id: str) -> Path:
    """``train_runs/<trial id>``: the trial's own state in the storage (its Train run for several workers,
    ``latest`` for one in process, the reports it sent). Not the trial directory: that is a local
    staging folder Tune copies into the storage, and a resumed sweep starts a new one."""
    return Path(experiment) / "train_runs" / trial_id


def _keep_report(own: Path, metrics: dict[str, Any]) -> None:
    out = own / REPORTED
    out.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
    (out / f"epoch_{int(metrics['epoch']):03d}.json").write_text(json.dumps(plain))


def unlogged_reports(own: Path, logged: Path) -> list[dict[str, Any]]:
    """The milestone reports this trial sent to Tune (kept under ``own``) that Tune's log of the trial
    (``logged``, its result.json in the storage) lacks, oldest first."""
    seen = set()
    try:
        seen = {json.loads(line).get("epoch") for line in logged.read_text().splitlines() if line.strip()}
    except (OSError, json.JSONDecodeError):
        pass
    sent = (json.loads(path.read_text()) for path in sorted((own / REPORTED).glob("epoch_*.json")))
    return [metrics for metrics in sent if metrics.get("epoch") not in seen]


def replay_reports(own: Path, experiment: str, trial_dir: Path, state: Path | None = None,
                   awaiting: bool = False) -> None:
    """Report again what Tune did not log: the trial died inside ``ray.tune.report``, or the sweep was
    interrupted before Tune saved the report, while the trial's own state is past that milestone. The
    milestone that ``state`` (the run directory the trial restarts from) holds is reported last, with its
    probe files and encoder filed again (the trial directory Tune synced may predate them) and ``state`` as
    its checkpoint; so is it when ``awaiting`` (halving: a rung the trial was not promoted past, reported
    again for the scheduler to pause, stop or promote it; this returns only if promoted).
    Tune's log is at-least-once all the same: a report Tune took but had not yet synced to the storage can
    come twice (same values); the analysis keeps one line per epoch."""
    epoch = int(run_info(state).get("epoch", -1))
    unlogged = unlogged_reports(own, Path(experiment) / trial_dir.name / "result.json")
    for metrics in unlogged:
        if int(metrics["epoch"]) != epoch:
            ray.tune.report(metrics)
    if state is not None and (awaiting or any(int(m["epoch"]) == epoch for m in unlogged)):
        _file_milestone(trial_dir, epoch, state, missing_only=True)
        metrics = json.loads((own / REPORTED / f"epoch_{epoch:03d}.json").read_text())
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(state)))


def tune_metrics(metrics: dict[str, Any], gpus: float) -> dict[str, Any]:
    return {**metrics, "gpu_seconds": metrics["trial_seconds"] * gpus}


def _file_milestone(trial_dir: Path, epoch: int, run_dir: Path, missing_only: bool = False) -> None:
    """A milestone's probe files and image-only encoder (a timm state dict, small) into the trial
    directory: they stay there, while full checkpoints do not. ``missing_only``: a replayed milestone
    files only what the trial directory lacks (what is there is that milestone's, and stays untouched)."""
    (trial_dir / "probes").mkdir(exist_ok=True)
    (trial_dir / "encoders").mkdir(exist_ok=True)
    copies = [(path, trial_dir / "probes" / path.name) for path in (run_dir / "probes").glob(f"epoch_{epoch:03d}*")]
    copies.append((run_dir / ENCODER, trial_dir / "encoders" / f"epoch_{epoch:03d}.pth"))
    for source, target in copies:
        if not (missing_only and target.exists()):
            shutil.copyfile(source, target)


def _raise_non_finite(result: ray.train.Result) -> None:
    metrics = result.metrics or {}
    if "non_finite" in metrics:
        raise NonFiniteLossError(metrics["non_finite"])


def whole_run(space: Space, cfg: Config, cache: str, trial_dir: Path, protocol: Protocol | None) -> dict[str, Any]:
    """The train-loop config of a trial run from its first epoch (or checkpoint) to its last milestone,
    probing at every milestone and running the evaluation protocol at the epochs it asks for."""
    return {"cfg": to_dict(cfg), "cache": cache, "init": None, "until_epoch": space.epochs,
            "tb_dir": str(trial_dir / "tb"), "milestones": list(space.scheduler.milestones),
            "report": {"variant": variant_name(cfg)}, "trial_start": time.time(),
            "protocol": protocol.to_dict() if protocol else None,
            "protocol_epochs": protocol_epochs(space) if protocol else []}


def protocol_epochs(space: Space) -> list[int]:
    """The milestones at which the evaluation protocol runs: the last (or all: evaluate.every_milestone)."""
    return list(space.scheduler.milestones) if space.evaluate.every_milestone else [space.epochs]


def one_run(space: Space, cfg: Config, cache: str, experiment: str, trial_dir: Path, trial_id: str,
            protocol: Protocol | None) -> None:
    """FIFO / ASHA / HyperBand: one worker group from the first epoch (or the latest checkpoint of this
    trial's Train run) to the last milestone."""
    res = space.resources
    loop = whole_run(space, cfg, cache, trial_dir, protocol)
    gpus = res.workers * res.gpus_per_worker
    own = own_dir(experiment, trial_id)
    replay_reports(own, experiment, trial_dir)
    report_back = MilestoneReport(str(trial_dir), str(own), gpus, space.epochs)
    result = _trainer(space, loop, trial_id, experiment, [report_back]).fit()
    _raise_non_finite(result)
    last = result.metrics or {}
    if last.get("val_auroc") is not None and int(last.get("epoch", 0)) == space.epochs:
        ray.tune.report(tune_metrics(last, gpus))


def runs_in_process(space: Space) -> bool:
    """One worker: the trial trains in its own process (no Ray Train), under any scheduler."""
    return space.resources.workers == 1


def runs_in_segments(space: Space) -> bool:
    """Several workers under a scheduler that pauses or clones trials at milestones (PBT, halving): one
    Train run per milestone, probed by a Ray task (``resources.probe_cpus/gpus``), reported with a Tune
    checkpoint."""
    return space.scheduler.type in ("pbt", "halving") and not runs_in_process(space)


LATEST = "latest"  # train_runs/<trial id>/latest: an in-process trial's newest checkpoint between milestones
NON_FINITE = "non_finite.txt"  # train_runs/<trial id>/non_finite.txt: the divergence that ended a trial


def _newest(*candidates: Path | None) -> Path | None:
    """The run directory with the highest epoch among those that exist."""
    found = [(int(run_info(p).get("epoch", 0)), i, p) for i, p in enumerate(candidates)
             if p is not None and p.is_dir()]
    return max(found)[2] if found else None


def _replace_dir(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source``; a reader never sees half of it."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def in_process(space: Space, cfg: Config, cache: str, experiment: str, trial_dir: Path, trial_id: str,
               protocol: Protocol | None) -> None:
    """A one-worker trial: its own process trains from the newest of its Tune checkpoint (a retry,
    ``--resume``) and ``train_runs/<trial id>/latest`` to the last milestone. Under PBT the Tune
    checkpoint wins when there is one: after an exploit it is the donor's state, at the same epoch as the
    trial's own ``latest``. A divergence ends the trial as an error that a retry does not repeat."""
    # Not in the trial directory: Tune copies that (a local staging folder) into the storage as it goes.
    own = own_dir(experiment, trial_id)
    if (own / NON_FINITE).is_file():  # Tune's retry of a diverged trial: fail again at once
        raise NonFiniteLossError((own / NON_FINITE).read_text())
    res, latest = space.resources, own / LATEST
    own.mkdir(parents=True, exist_ok=True)
    tune_checkpoint = ray.tune.get_checkpoint()
    tuned = Path(tune_checkpoint.path) if tune_checkpoint else None
    # Under PBT a restart is a clone of the donor's milestone (or a retry from the trial's own): replaying
    # the trial's own reports would log a milestone twice, so it trains on from the checkpoint
    if space.scheduler.type == "pbt":
        start = tuned or _newest(latest)
    else:
        start = _newest(tuned, latest)
        # A milestone whose report Tune never logged (the process died in ray.tune.report, or the sweep was
        # interrupted before Tune registered its checkpoint): `latest` holds that milestone, so report it
        # again rather than train it again.
        awaiting = awaiting_rung(experiment, space, trial_id, int(run_info(start).get("epoch", 0)))
        replay_reports(own, experiment, trial_dir, start, awaiting)
    loop = whole_run(space, cfg, cache, trial_dir, protocol)

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        if "non_finite" in metrics:
            (own / NON_FINITE).write_text(metrics["non_finite"])
            raise NonFiniteLossError(metrics["non_finite"])
        if folder is None:
            return
        # Kept at milestones too: Tune registers a reported checkpoint a step after it logs the result,
        # and a sweep interrupted in between restores the previous one. The driver removes it when the
        # trial ends (`trainables.sweep.train_runs_cleanup`).
        _replace_dir(folder, latest)
        if "val_auroc" in metrics:
            _file_milestone(trial_dir, int(metrics["epoch"]), folder)
            told = tune_metrics(metrics, res.gpus_per_worker)
            _keep_report(own, told)
            ray.tune.report(told, checkpoint=ray.tune.Checkpoint.from_directory(str(folder)))

    train_loop(loop, 0, 1, resolve_device(cfg), None, start, report)
    shutil.rmtree(own, ignore_errors=True)  # Tune holds the last milestone's checkpoint


def _restore(checkpoint: ray.tune.Checkpoint | None) -> tuple[str | None, dict[str, Any]]:
    """(run dir, {epoch, trial/train/probe seconds so far}) from a Tune checkpoint (resume or PBT clone)."""
    if checkpoint is None:
        return None, {"epoch": 0}
    return checkpoint.path, json.loads((Path(checkpoint.path) / TRIAL_INFO).read_text())


def _probe(space: Space, run_dir: str, cache: str, protocol: Protocol | None = None) -> dict[str, Any]:
    res = space.resources
    # "DEFAULT" leaves the trial's own placement group (a sliver of CPU for the trial driver), so the
    # probe gets the CPUs/GPUs the train workers just released.
    task = probe_run_dir.options(num_cpus=res.probe_cpus, num_gpus=res.probe_gpus, scheduling_strategy="DEFAULT")
    return ray.get(task.remote(run_dir, cache, ("val", "test"), protocol))  # type: ignore[no-any-return]


def segments(space: Space, cfg: Config, cache: str, experiment: str, trial_dir: Path, trial_id: str,
             protocol: Protocol | None) -> None:
    """PBT, and halving with several workers: one Train run per milestone, each probed by a Ray task and
    reported with a Tune checkpoint."""
    run_dir, done = _restore(ray.tune.get_checkpoint())
    own = own_dir(experiment, trial_id)
    if run_dir is not None and awaiting_rung(experiment, space, trial_id, int(done["epoch"])):
        replay_reports(own, experiment, trial_dir, Path(run_dir), awaiting=True)
    total = {k: float(done.get(k, 0.0)) for k in ("trial_seconds", "train_seconds", "probe_seconds")}
    writer = SummaryWriter(str(trial_dir / "tb"))
    previous: Path | None = None  # this trial's last Train run under train_runs/
    res = space.resources
    try:
        for milestone in (m for m in space.scheduler.milestones if m > int(done["epoch"])):
            start = time.time()
            loop = {"cfg": to_dict(cfg), "cache": cache, "init": run_dir, "until_epoch": milestone,
                    "tb_dir": str(trial_dir / "tb")}
            # a fresh run name per segment: a reused one would restore the previous segment's run
            result = _trainer(space, loop, f"{trial_id}-e{milestone:03d}-{uuid.uuid4().hex[:6]}", experiment).fit()
            _raise_non_finite(result)
            assert result.checkpoint is not None
            # The new segment started from the previous one, and Tune holds its own copy of each reported
            # checkpoint: the previous Train run is not needed any more (bounded disk per trial).
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
            previous, run_dir, train_s = Path(result.path), result.checkpoint.path, time.time() - start
            probes = _probe(space, run_dir, cache, protocol if milestone in protocol_epochs(space) else None)
            probe_s = time.time() - start - train_s
            spent = {"trial_seconds": train_s + probe_s, "train_seconds": train_s, "probe_seconds": probe_s}
            total = {key: total[key] + spent[key] for key in total}
            write_probes(Path(run_dir) / "probes", milestone, probes)
            _file_milestone(trial_dir, milestone, Path(run_dir))
            log_probe(writer, probes["val"], milestone)
            (Path(run_dir) / TRIAL_INFO).write_text(json.dumps({"epoch": milestone, **total}))
            gpus = total["train_seconds"] * res.workers * res.gpus_per_worker + total["probe_seconds"] * res.probe_gpus
            metrics = {"val_auroc": probes["val"]["macro_auroc"], "epoch": milestone, **total,
                       "loss": (result.metrics or {})["loss"], "gpu_seconds": gpus, "variant": variant_name(cfg)}
            _keep_report(own, metrics)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(run_dir))
    finally:
        writer.close()


def msn_trial(config: dict[str, Any], space: Space, cache: str, experiment: str,
              protocol: dict[str, Any] | None = None) -> None:
    """Tune function trainable. ``config`` holds the sampled params, flat dotted keys (``optim.lr``);
    ``protocol`` the evaluation protocol (mmsn.protocol.Protocol as a dict) or None."""
    cfg = space.config(dict(config))
    context = ray.tune.get_context()
    run = segments if runs_in_segments(space) else in_process if runs_in_process(space) else one_run
    run(space, cfg, cache, experiment, Path(context.get_trial_dir()), context.get_trial_id(),
        Protocol.from_dict(protocol) if protocol else None)
