"""Synchronous successive halving of arms (``scheduler.type: halving``) for grid sweeps.

Every arm of the grid reaches a rung (each milestone but the last) before any is promoted; then the best
``ceil(arms / reduction_factor)`` arms, ranked by their mean val AUROC over seeds (and grid repeats) at that
rung, go on to the next milestone and the rest are stopped. Seeds of one arm are never ranked against each
other, and the decisions do not depend on the order in which trials report, unlike ASHA's. The price is
wall time: a trial that reaches a rung is paused (its Tune checkpoint kept, its resources freed for the
next trial) until the whole rung is in.

The decisions are written to ``EXPERIMENT/halving/state.json`` as they are made, so ``--resume`` keeps them
and a trial restarted at a rung it has not been promoted past reports that rung again instead of training
on (:func:`awaiting_rung`). (Not a top-level file of the experiment: Tune copies those to its staging folder
when it restores a run and copies them back over the originals at every sync.)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from search_spaces.loader import Space

STATE = Path("halving") / "state.json"


def keep_arms(scores: Mapping[str, float], reduction_factor: int, mode: str = "max") -> list[str]:
    """The arms promoted from a rung: the best ``ceil(len(scores) / reduction_factor)`` (at least one),
    best first; ties and NaN scores (ranked last) are broken by the arm's name, so a decision is the same
    on every run."""
    def key(arm: str) -> tuple[float, str]:
        score = scores[arm]
        if math.isnan(score):
            return math.inf, arm
        return (-score if mode == "max" else score), arm

    return sorted(scores, key=key)[: max(1, math.ceil(len(scores) / reduction_factor))]


class HalvingState:
    """What the scheduler saw and decided, as kept in ``halving/state.json``: per trial its arm and its metric at
    each rung; per decided rung the arms' mean scores, the arms kept and the trials promoted; the trials
    that left (stopped or failed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data = json.loads(path.read_text()) if path.is_file() else {}
        self.arms: dict[str, str] = data.get("arms", {})
        self.values: dict[str, dict[str, float]] = data.get("values", {})
        self.decided: dict[str, dict[str, Any]] = data.get("decided", {})
        self.out: list[str] = data.get("out", [])

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps({"arms": self.arms, "values": self.values, "decided": self.decided,
                                   "out": self.out}, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def promoted(self, rung: int) -> set[str]:
        return set(self.decided.get(str(rung), {}).get("promoted", ()))


def awaiting_rung(experiment: str | Path, space: Space, trial_id: str, epoch: int) -> bool:
    """True when a trial restarted at ``epoch`` (a rung) has no promotion past it: it must report that
    rung again (the scheduler then pauses, stops or promotes it) rather than train on."""
    if space.scheduler.type not in ("halving", "racing") or epoch not in space.scheduler.milestones[:-1]:
        return False
    return trial_id not in HalvingState(Path(experiment) / STATE).promoted(epoch)


class HalvingGenerator(BasicVariantGenerator):  # type: ignore[misc]
    """The grid's points with at most ``max_concurrent`` trials live, where a trial paused at a rung does
    not count (the plain generator counts it, and a rung that waits for trials never created would wait
    forever)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._parked: set[str] = set()

    def park(self, trial_id: str) -> None:
        self._live_trials.discard(trial_id)
        self._parked.add(trial_id)

    def unpark(self, trial_id: str) -> None:
        self._parked.discard(trial_id)
        self._live_trials.add(trial_id)

    def has_room(self) -> bool:
        return self.max_concurrent <= 0 or len(self._live_trials) < self.max_concurrent

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        self._parked.discard(trial_id)


class ArmHalving(FIFOScheduler):  # type: ignore[misc]
    """Synchronous successive halving over the arms of a grid (see the module docstring)."""

    def __init__(self, space: Space, experiment: Path, generator: HalvingGenerator) -> None:
        super().__init__()
        self.space, self.experiment, self.generator = space, Path(experiment), generator
        self.rungs = tuple(space.scheduler.milestones[:-1])
        self.expected = space.expected_trials() or 0
        self._state: HalvingState | None = None
        self._to_resume: dict[str, Trial] = {}  # promoted trials waiting in PAUSED for a free slot
        self._trials: dict[str, Trial] = {}

    @property
    def state(self) -> HalvingState:
        if self._state is None:  # read on first use: a resumed sweep continues the decisions it made
            self._state = HalvingState(self.experiment / STATE)
        return self._state

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        if trial.trial_id not in self.state.arms:
            self.state.arms[trial.trial_id] = self.space.arm(dict(trial.config)).name
            self.state.save()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        self._to_resume.pop(trial.trial_id, None)
        epoch = int(result.get("epoch", 0))
        if epoch not in self.rungs:
            return TrialScheduler.CONTINUE
        value = float(result.get(self.space.metric, math.nan))
        self.state.values.setdefault(trial.trial_id, {})[str(epoch)] = value
        self.state.save()
        self._advance(tune_controller, skip=trial.trial_id)
        decided = self.state.decided.get(str(epoch))
        if decided is None:  # its rung is not complete: free the slot for another trial
            self.generator.park(trial.trial_id)
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE if trial.trial_id in decided["promoted"] else TrialScheduler.STOP

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self._leave(trial.trial_id)
        self._advance(tune_controller)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict) -> None:
        self._to_resume.pop(trial.trial_id, None)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self._to_resume.pop(trial.trial_id, None)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        for trial in tune_controller.get_trials():  # new trials: started as the generator allows
            if trial.status == Trial.PENDING:
                return trial
        for trial_id in sorted(self._to_resume):
            trial = self._to_resume[trial_id]
            if trial.status == Trial.PAUSED and self.generator.has_room():
                self.generator.unpark(trial_id)
                return trial
        return None

    def _leave(self, trial_id: str) -> None:
        if trial_id not in self.state.out:
            self.state.out.append(trial_id)
            self.state.save()

    def _participants(self, index: int) -> set[str] | None:
        """The trials that must report rung ``index`` (None: not known yet, trials still to be created)."""
        if index == 0:
            known = set(self.state.arms)
            return known if len(known) >= self.expected else None
        return self.state.promoted(self.rungs[index - 1])

    def _advance(self, tune_controller: Any, skip: str | None = None) -> None:
        """Decide every rung that is complete, in order, and carry the decisions out on every trial but
        ``skip`` (the trial whose result is being processed: its decision is the return value there)."""
        for index, rung in enumerate(self.rungs):
            if str(rung) in self.state.decided:
                continue
            waiting = self._participants(index)
            if waiting is None:
                return
            live = waiting - set(self.state.out)
            if any(str(rung) not in self.state.values.get(t, {}) for t in live):
                return
            self._decide(rung, live)
            for trial_id in sorted(live - {skip}):
                self._apply(tune_controller, trial_id, trial_id in self.state.promoted(rung))

    def _decide(self, rung: int, live: set[str]) -> None:
        by_arm: dict[str, list[float]] = {}
        for trial_id in sorted(live):
            by_arm.setdefault(self.state.arms[trial_id], []).append(self.state.values[trial_id][str(rung)])
        scores = {arm: sum(v) / len(v) for arm, v in by_arm.items()}
        kept, tests = self._keep(rung, live, scores)
        promoted = sorted(t for t in live if self.state.arms[t] in kept)
        self.state.decided[str(rung)] = {"scores": scores, "kept": kept, "promoted": promoted, **tests}
        self.state.out.extend(sorted(live - set(promoted)))
        self.state.save()

    def _keep(self, rung: int, live: set[str], scores: dict[str, float]) -> tuple[list[str], dict[str, Any]]:
        """The arms that go on from ``rung`` (and what the decision rests on, kept in the state)."""
        return keep_arms(scores, self.space.scheduler.reduction_factor, self.space.mode), {}


    def _apply(self, tune_controller: Any, trial_id: str, promoted: bool) -> None:
        trial = next((t for t in tune_controller.get_trials() if t.trial_id == trial_id), None)
        if trial is None or trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        if not promoted:
            tune_controller.stop_trial(trial)
        elif trial.status != Trial.RUNNING or trial.is_saving:
            # paused, or being paused (saving): run again when a slot is free
            self._to_resume[trial_id] = trial


class ArmRacing(ArmHalving):
    """Racing (``scheduler.type: racing``): successive halving of arms that stops an arm at a rung only when a
    test says it is worse than the rung's leader (Maron and Moore's races; irace), never on a gap the val set
    cannot tell from noise. At each rung the leader is the arm with the best mean val AUROC over seeds; every
    other arm's paired difference to it (over the val images and the arms' common seeds: the analysis's
    bootstrap, images and seeds resampled) is tested one-sided, Holm-corrected over the arms compared, at
    ``scheduler.alpha``; of the arms significantly behind, at most (1 - 1/reduction_factor) of the arms are
    stopped, the clearest first. Each decision's differences and p-values are kept in the experiment
    (``halving/state.json``) and shown in the report."""

    def _keep(self, rung: int, live: set[str], scores: dict[str, float]) -> tuple[list[str], dict[str, Any]]:
        from trainables.racing import race

        by_arm: dict[str, dict[int, Path]] = {}
        for trial_id in sorted(live):
            found = self._val_scores(trial_id, rung)
            if found is not None:
                by_arm.setdefault(self.state.arms[trial_id], {})[self._seed(trial_id)] = found
        result = race(by_arm, scores, self.space.scheduler.reduction_factor, self.space.scheduler.alpha,
                      self.space.mode, seed=rung)
        return result["kept"], {"tests": result["tests"], "leader": result["leader"]}

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self._trials[trial.trial_id] = trial
        super().on_trial_add(tune_controller, trial)

    def _seed(self, trial_id: str) -> int:
        trial = self._trials.get(trial_id)
        return int(trial.config.get("train.seed", 0)) if trial is not None else 0

    def _val_scores(self, trial_id: str, rung: int) -> Path | None:
        """The trial's per-image val scores at ``rung`` in its directory on the storage (filed before the trial
        reported the rung)."""
        trial = self._trials.get(trial_id)
        if trial is None:
            return None
        path = self.experiment / Path(trial.path).name / "probes" / f"epoch_{rung:03d}_val.npz"
        return path if path.is_file() else None
