"""The Tune trainable: one path for every scheduler (FIFO, ASHA, HyperBand, halving, PBT) and trial size.

A trial (re)starts from its newest state (its Tune checkpoint or its own states, trainables.state; under
PBT the Tune checkpoint, which after an exploit is the donor's), reports again what Tune did not log, and
trains with the one epoch loop (mmsn.loop.train) to its last milestone: in its own process with one
worker, or as one Ray Train run (DDP) with several. At each milestone rank 0 probes the encoder in place
(val, test and the evaluation protocol when due) and writes the milestone's state; the trial then files the
probe results and the encoder export in the trial directory, keeps the report and reports to Tune with
that state as the Tune checkpoint (:class:`Reports`). A scheduler that pauses (halving) or clones (PBT) a
trial restarts it from that checkpoint, in a fresh Train run when it has several workers.

Test AUROC is written to the trial directory for the final analysis and never reported to the scheduler.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import ray
import ray.train
import ray.tune

from mmsn.checkpoint import ENCODER
from mmsn.config import Config
from mmsn.loop import Milestones, run_info
from mmsn.protocol import Protocol
from search_spaces.loader import Space
from trainables.halving import awaiting_rung
from trainables.state import TrialState, is_milestone_state, is_probed, logged_epochs, own_dir


@dataclass(frozen=True)
class TrialJob:
    """What the loop needs to run a trial, on the trial's process or on each Train worker."""

    cfg: Config
    cache: str
    own: str  # train_runs/<trial id>: the trial's own states (trainables.state)
    tb_dir: str  # rank 0's TensorBoard directory, in the trial directory on the storage
    milestones: Milestones
    trial_start: float  # when this invocation of the trial began (mmsn.loop.Clock)
    start: str | None = None  # the state to start from when the trial's own states are older
    gpus: float = 0.0  # GPUs per worker (a fraction caps the process's share of its GPU's memory)


class Reports:
    """The trial's side of a milestone, once for every trial size: file the milestone's probe results and
    image-only encoder (a timm state dict, small) in the trial directory on the storage, keep the report,
    and report it to Tune with the milestone's state as the checkpoint; the milestones before it go.
    ``prober`` probes a milestone state written without its probe (``resources.probe: beside``) and waits."""

    def __init__(self, state: TrialState, trial_dir: Path, constants: dict[str, Any], gpus: float,
                 prober: Callable[[Path], None] | None = None) -> None:
        self.state, self.trial_dir, self.constants, self.gpus = state, trial_dir, constants, gpus
        self.prober = prober

    def metrics(self, folder: Path) -> dict[str, Any]:
        info = run_info(folder)
        keys = ("epoch", "step", "loss", "val_auroc", "rankme", "trial_seconds", "train_seconds", "probe_seconds")
        metrics = {k: info[k] for k in keys if k in info}
        if (floor := self.state.untrained()) is not None:
            metrics["rankme_untrained"] = floor
        # one formula for every trial size: the GPUs the trial holds, over its whole wall time
        return {**metrics, **self.constants, "gpu_seconds": float(info.get("trial_seconds", 0.0)) * self.gpus}

    def milestone(self, epoch: int, folder: Path | None = None, missing_only: bool = False,
                  late: float | None = None) -> None:
        """``late``: the seconds between the milestone's state and its probe result (a probe beside training),
        reported as ``probe_lag_seconds``."""
        folder = folder or self.state.milestone_dir(epoch)
        if not is_probed(folder, epoch):
            if self.prober is None:
                raise RuntimeError(f"{folder}: milestone {epoch} has no probe results and this trial probes in place")
            self.prober(folder)
        self.state.prune(epoch)
        file_milestone(self.trial_dir, epoch, folder, missing_only)
        metrics = self.metrics(folder)
        if late is not None:
            metrics["probe_lag_seconds"] = late
        self.state.keep_report(metrics)
        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(str(folder)))

    def replay(self, start: Path | None, awaiting: bool) -> None:
        """Report again what Tune did not log: the trial died inside ``ray.tune.report``, or the sweep was
        interrupted before Tune saved the report, while the trial's state is past that milestone. The
        milestone ``start`` holds is reported last, filed again (only what the trial directory lacks) with
        ``start`` as its checkpoint; so is it when ``awaiting`` (halving: a rung the trial was not promoted
        past, reported again for the scheduler to pause, stop or promote it). Tune's log is at-least-once:
        a report Tune took but had not yet synced can come twice (same values); the analysis keeps one."""
        epoch = int(run_info(start).get("epoch", -1))
        logged = self.trial_dir / "result.json"
        for metrics in self.state.unlogged(logged):
            if int(metrics["epoch"]) < epoch:
                ray.tune.report(metrics)
        # the milestone the trial restarts from, whether or not its report was kept before the interrupt
        if start is not None and is_milestone_state(start, epoch) and (awaiting or epoch not in logged_epochs(logged)):
            self.milestone(epoch, start, missing_only=True)


def file_milestone(trial_dir: Path, epoch: int, state: Path, missing_only: bool = False) -> None:
    """A milestone's probe files and encoder export into the trial directory, where they stay (full states
    do not). ``missing_only``: a replayed milestone files only what the trial directory lacks."""
    (trial_dir / "probes").mkdir(parents=True, exist_ok=True)
    (trial_dir / "encoders").mkdir(exist_ok=True)
    copies = [(path, trial_dir / "probes" / path.name) for path in (state / "probes").glob(f"epoch_{epoch:03d}*")]
    copies.append((state / ENCODER, trial_dir / "encoders" / f"epoch_{epoch:03d}.pth"))
    for source, target in copies:
        if not (missing_only and target.exists()):
            shutil.copyfile(source, target)


def protocol_epochs(space: Space) -> list[int]:
    """The milestones at which the evaluation protocol runs: the last (or all: evaluate.every_milestone)."""
    return list(space.scheduler.milestones) if space.evaluate.every_milestone else [space.epochs]


def milestones(space: Space, protocol: Protocol | None) -> Milestones:
    return Milestones(frozenset(space.scheduler.milestones), test=True, protocol=protocol,
                      protocol_epochs=frozenset(protocol_epochs(space)) if protocol else frozenset(),
                      beside=space.resources.probe == "beside")


def probe_task(space: Space, job: TrialJob) -> Callable[[Path], Any]:
    """Start the probe of a milestone state as a Ray task beside the trial's workers, in the share of one
    worker's CPUs and GPUs the trial holds for it (its placement group's second bundle, trainables.sweep;
    trainables.worker.probe_beside); returns its object ref. A task whose process died is retried like a
    worker group (budget.max_failures); one that raised is not."""
    from trainables.worker import probe_beside

    res = space.resources
    task = ray.remote(probe_beside).options(num_cpus=res.cpus_per_worker, num_gpus=res.gpus_per_worker,
                                            max_retries=space.budget.max_failures)
    return lambda state: task.remote(job, str(state))


def _start(space: Space, state: TrialState) -> Path | None:
    """Under PBT the Tune checkpoint wins when there is one (after an exploit it is the donor's state, at
    the epoch of the trial's own), and the trial's own states go; otherwise the newest state wins."""
    tune_checkpoint = ray.tune.get_checkpoint()
    tuned = Path(tune_checkpoint.path) if tune_checkpoint else None
    if space.scheduler.type == "pbt" and tuned is not None:
        state.clear_states()
        return tuned
    return state.start(tuned)


def msn_trial(config: dict[str, Any], space: Space, cache: str, experiment: str,
              protocol: dict[str, Any] | None = None) -> None:
    """Tune function trainable. ``config`` holds the sampled params, flat dotted keys (``optim.lr``);
    ``protocol`` the evaluation protocol (mmsn.protocol.Protocol as a dict) or None."""
    from trainables.arms import record_arm
    from trainables.hparams import write_session

    context = ray.tune.get_context()
    trial_id = context.get_trial_id()
    # Tune's trial directory is a staging folder on the trial's node: what the trial writes goes to its
    # copy on the storage, which every node shares and a resumed sweep keeps
    trial_dir = Path(experiment) / Path(context.get_trial_dir()).name
    state = TrialState(own_dir(experiment, trial_id))
    state.raise_if_diverged()
    params = dict(config)
    cfg = space.config(params, checked=False)  # every trial's config was checked when the space loaded
    arm = record_arm(space, params, cfg, trial_dir)
    write_session(trial_dir / "tb", space, params)
    start = _start(space, state)
    res = space.resources
    job = TrialJob(cfg, cache, str(state.own), str(trial_dir / "tb"),
                   milestones(space, Protocol.from_dict(protocol) if protocol else None), time.time(),
                   str(start) if start is not None else None, res.gpus_per_worker)
    probe = probe_task(space, job) if job.milestones.beside else None
    reports = Reports(state, trial_dir, {"variant": arm["variant"], "arm": arm["arm"]},
                      # the GPUs the trial holds: its workers', and the probe share beside them
                      (res.workers + (probe is not None)) * res.gpus_per_worker,
                      (lambda folder: ray.get(probe(folder))) if probe else None)
    epoch = int(run_info(start).get("epoch", 0))
    if space.scheduler.type != "pbt":  # a PBT restart is a clone or a retry from a milestone Tune logged
        reports.replay(start, awaiting_rung(experiment, space, trial_id, epoch))
    if epoch >= space.epochs:  # paused (or cloned) at its last milestone: nothing left to train
        return
    if res.workers == 1:
        from trainables.worker import train_in_process

        train_in_process(job, reports.milestone)
    else:
        _train_workers(space, job, reports, trial_id, epoch, probe)
    state.raise_if_diverged()


def _train_workers(space: Space, job: TrialJob, reports: Reports, trial_id: str, start_epoch: int,
                   probe: Callable[[Path], Any] | None) -> None:
    """One Ray Train run (DDP) to the last milestone; rank 0 sends each milestone's epoch through a queue and
    this process reports it, in epoch order: as soon as it arrives when rank 0 probed it, or, probed beside
    training (``probe``), once its probe task is done. The last one is reported once the Train run has ended: a
    scheduler stops a trial that reaches its full length at once, and a Train run killed while it shuts down
    can leave its placement group behind."""
    from ray.util.queue import Queue

    from trainables.worker import trainer

    queue = Queue(actor_options={"num_cpus": 0})
    # a fresh Train run per invocation: a reused name would restore the previous run
    run = trainer(space, {"job": job, "milestones": queue}, f"{trial_id}-{uuid.uuid4().hex[:6]}")
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = run.fit()
        except BaseException as err:  # noqa: B036 - raised again in the trial's thread
            outcome["error"] = err

    worker = threading.Thread(target=fit, name="train-run", daemon=True)  # not joined when Tune stops the trial
    worker.start()
    # a worker group sends the milestone it starts from (reported already: by the trial's replay, or before a
    # pause or a clone) and a retried one sends its start again: report each epoch once. Within a Train run
    # epochs only grow; a PBT clone may start before epochs it reported itself, and reports them again.
    done = {start_epoch}
    waiting: list[tuple[int, Any, float]] = []  # (epoch, its probe task or None, when its state was sent)
    last: tuple[int, float | None] | None = None
    while worker.is_alive() or not queue.empty() or waiting:
        epoch = _next_epoch(queue)
        if epoch is not None and epoch not in done:
            done.add(epoch)
            waiting.append((epoch, probe(reports.state.milestone_dir(epoch)) if probe else None, time.time()))
        while waiting and (waiting[0][1] is None or ray.wait([waiting[0][1]], timeout=0)[0]):
            epoch, task, sent = waiting.pop(0)
            late = None
            if task is not None:
                ray.get(task)  # raises the probe's error
                late = time.time() - sent
            if epoch == space.epochs:
                last = (epoch, late)
            else:
                reports.milestone(epoch, late=late)
    if "error" in outcome:
        raise outcome["error"]
    if last is not None:
        reports.milestone(last[0], late=last[1])


def _next_epoch(queue: Any) -> int | None:
    """The next milestone epoch rank 0 sent, or None after a second without one."""
    try:
        return int(queue.get(timeout=1.0))
    except Empty:
        return None


__all__ = ["Reports", "TrialJob", "file_milestone", "msn_trial", "protocol_epochs"]
