"""A trial's own state, in one place: ``EXPERIMENT/train_runs/<trial id>/`` on the sweep's storage.

    latest/                 the newest state between milestones (a run directory, mmsn.checkpoint)
    milestones/epoch_XXX/   a milestone's state with its probe files (``probes/``), what the trial reports to
                            Tune as its checkpoint; kept until the next milestone is reported (Tune
                            registers a reported checkpoint a step after it logs the result, and a sweep
                            interrupted in between restores the older one). Probed beside training
                            (``resources.probe: beside``), it is written first and probed after.
    reported/epoch_XXX.json each milestone report as sent to Tune (replayed when Tune did not log it)
    non_finite.txt          the divergence that ended the trial (a retry fails at once, it never retrains)
    untrained.json          the RankMe of the trial's encoder before training (its collapse floor)
    train/                  the Ray Train runs of a trial with several workers (no checkpoints in them)

Not the Tune trial directory: that is a staging folder Tune copies into the storage as it goes, and a
resumed sweep starts a new one. The sweep removes the whole directory when Tune is done with the trial.
Every rank 0 writes here, on whichever node it runs: the storage is shared.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mmsn.engine import NonFiniteLossError, Run
from mmsn.loop import run_info

LATEST, MILESTONES, REPORTED, NON_FINITE = "latest", "milestones", "reported", "non_finite.txt"
UNTRAINED = "untrained.json"  # the RankMe of the trial's encoder before training


def own_dir(experiment: str | Path, trial_id: str) -> Path:
    return Path(experiment) / "train_runs" / trial_id


def logged_epochs(logged: Path) -> set[int]:
    """The epochs of Tune's log of a trial (its result.json), as far as it was written."""
    seen = set()
    try:
        for line in logged.read_text().splitlines():
            try:
                seen.add(int(json.loads(line)["epoch"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # a half-written last line
    except OSError:
        pass
    return seen


def is_probed(state: Path, epoch: int) -> bool:
    """Whether a state directory holds milestone ``epoch``'s probe results."""
    return (state / "probes" / f"epoch_{epoch:03d}.json").is_file()


def is_milestone_state(state: Path, epoch: int) -> bool:
    """Whether a state directory is milestone ``epoch``'s: probed, or written to be probed beside training."""
    info = run_info(state)
    return is_probed(state, epoch) or (bool(info.get("milestone")) and info.get("epoch") == epoch)


def replace_dir(source: Path, target: Path) -> None:
    """``source`` (a directory on the same file system) becomes ``target``; a reader never sees half of it."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    source.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def newest(*candidates: Path | None) -> Path | None:
    """The state directory with the highest epoch among those that exist (the first of equals)."""
    found = [(int(run_info(p).get("epoch", 0)), -i, p) for i, p in enumerate(candidates)
             if p is not None and p.is_dir()]
    return max(found)[2] if found else None


class TrialState:
    """The files of ``own`` (see the module docstring)."""

    def __init__(self, own: Path) -> None:
        self.own = Path(own)

    def milestone_dir(self, epoch: int) -> Path:
        return self.own / MILESTONES / f"epoch_{epoch:03d}"

    def states(self) -> list[Path]:
        return [self.own / LATEST, *sorted((self.own / MILESTONES).glob("epoch_*"))]

    def start(self, *others: Path | None) -> Path | None:
        """What a (re)started trial or worker group trains on from: the newest of ``others`` (a Tune
        checkpoint) and this trial's own states."""
        return newest(*others, *self.states())

    def clear_states(self) -> None:
        """Forget the trial's own states (a PBT clone continues from its donor's checkpoint instead)."""
        for path in self.states():
            shutil.rmtree(path, ignore_errors=True)

    def prune(self, epoch: int) -> None:
        """Milestone states older than milestone ``epoch``."""
        for path in (self.own / MILESTONES).glob("epoch_*"):
            if int(path.name.split("_")[1]) < epoch:
                shutil.rmtree(path, ignore_errors=True)

    def keep_report(self, metrics: dict[str, Any]) -> None:
        out = self.own / REPORTED
        out.mkdir(parents=True, exist_ok=True)
        plain = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}
        (out / f"epoch_{int(metrics['epoch']):03d}.json").write_text(json.dumps(plain))

    def unlogged(self, logged: Path) -> list[dict[str, Any]]:
        """The milestone reports kept here that Tune's log of the trial (``logged``, its result.json in the
        storage) lacks, oldest first."""
        seen = logged_epochs(logged)
        sent = (json.loads(path.read_text()) for path in sorted((self.own / REPORTED).glob("epoch_*.json")))
        return [metrics for metrics in sent if metrics.get("epoch") not in seen]

    @property
    def untrained_file(self) -> Path:
        return self.own / UNTRAINED

    def keep_untrained(self, rank: float) -> None:
        """The RankMe of the trial's encoder before training (its collapse floor)."""
        self.own.mkdir(parents=True, exist_ok=True)
        self.untrained_file.write_text(json.dumps({"rankme": rank}))

    def untrained(self) -> float | None:
        try:
            return float(json.loads(self.untrained_file.read_text())["rankme"])
        except (OSError, ValueError, KeyError):
            return None

    def mark_diverged(self, err: NonFiniteLossError) -> None:
        self.own.mkdir(parents=True, exist_ok=True)
        (self.own / NON_FINITE).write_text(str(err))

    def raise_if_diverged(self) -> None:
        """A trial that diverged fails again at once (Tune's retry, ``--resume``): it is a result, not a fault."""
        if (self.own / NON_FINITE).is_file():
            raise NonFiniteLossError((self.own / NON_FINITE).read_text())

    def sink(self, forward: Callable[[int], None]) -> StateSink:
        return StateSink(self, forward)


class StateSink:
    """Rank 0's reporter (mmsn.loop.Reporter) in a trial: each due state is written beside the trial's own
    states and moved into place whole; a milestone's state goes to ``milestones/`` and its epoch to
    ``forward`` (the trial's report to Tune: called directly in a one-worker trial, through a queue from a
    Train worker)."""

    def __init__(self, state: TrialState, forward: Callable[[int], None]) -> None:
        self.state, self.forward = state, forward

    def state_dir(self, epoch: int) -> Path:
        tmp = self.state.own / f".writing_epoch_{epoch:03d}"
        shutil.rmtree(tmp, ignore_errors=True)
        return tmp

    def saved(self, run: Run, state: Path | None, metrics: dict[str, Any], probes: dict[str, Any] | None,
              milestone: bool) -> None:
        if state is None:
            return
        if not milestone:
            replace_dir(state, self.state.own / LATEST)
            return
        target = self.state.milestone_dir(run.epoch)
        target.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(state, target)
        # the state between milestones is older now; older milestones go when this one is reported
        # (trainables.trial.Reports), not before: a probe beside training may still be reading one
        shutil.rmtree(self.state.own / LATEST, ignore_errors=True)
        self.forward(run.epoch)


__all__ = ["LATEST", "MILESTONES", "NON_FINITE", "REPORTED", "StateSink", "TrialState", "is_milestone_state",
           "is_probed", "logged_epochs", "newest", "own_dir", "replace_dir"]
