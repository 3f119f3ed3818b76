"""Faults of two kinds. A trial's own (a diverging loss, a bad setting: mmsn's own errors) is a result: recorded,
never retried into the same failure. The infrastructure's (a full disk, a dead node, a killed process) is
survived: finished trials are kept, the sweep stops launching into a full storage, and ``--resume`` continues
the trials it interrupted from their last state. The exit status and the last lines say which happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

# mmsn's own errors (mmsn.errors, mmsn.engine.NonFiniteLossError): a trial that raises one failed on its own
OWN_FAULTS = ("NonFiniteLossError", "ConfigError", "DataError", "MMSNError")
EXIT_INFRASTRUCTURE, EXIT_STORAGE_FULL, EXIT_NO_RANKING = 1, 3, 4


def own_fault(error: str) -> bool:
    """Whether a trial's error (its text: the exception's type and message) is the trial's own."""
    return re.search(rf"\b({'|'.join(OWN_FAULTS)})\b", error) is not None


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


RESERVE = ".mmsn-reserve"  # in the experiment: space kept back for the sweep's last writes when the disk fills
RESERVE_BYTES = 16 * 2**20


class StorageGuard(Callback):  # type: ignore[misc]
    """Stops the sweep before it launches trials into a full storage: when the free space under ``storage`` is
    below ``need`` bytes (about one more state and its Tune copy), or a trial failed with "No space left on
    device". It stops Tune the way an interrupt does (unfinished trials stay unfinished for ``--resume``);
    ``full`` then says where and how much was free. The experiment keeps a reserve file (``reserve()``)
    that is released when it stops, so Tune's last snapshot of the experiment is written whole even when
    something else filled the disk at once (a torn snapshot would make ``--resume`` fail)."""

    def __init__(self, storage: Path, need: int, every_s: float = 2.0) -> None:
        self.storage, self.need, self.every_s = storage, need, every_s
        self.full: str | None = None
        self._checked = 0.0
        self._reserve: Path | None = None

    def reserve(self, experiment: Path, size: int = RESERVE_BYTES) -> None:
        """Hold ``size`` bytes in ``experiment`` until the sweep stops (best effort on a full disk)."""
        path = experiment / RESERVE
        try:
            with path.open("wb") as out:
                out.truncate(0)
                for _ in range(size // 2**20):
                    out.write(b"\0" * 2**20)  # written, not sparse: the blocks are really held
            self._reserve = path
        except OSError:
            path.unlink(missing_ok=True)

    def release(self) -> None:
        if self._reserve is not None:
            self._reserve.unlink(missing_ok=True)
            self._reserve = None

    def free(self) -> int:
        return shutil.disk_usage(self.storage).free

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.full or time.time() - self._checked < self.every_s:
            return
        self._checked = time.time()
        if (free := self.free()) < self.need:
            self._stop(f"{self.storage} has {mib(free)} free, less than the {mib(self.need)} a trial's next state "
                       "needs")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        try:
            text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else ""
        except OSError:
            text = ""
        if "No space left on device" in text or "Errno 28" in text:
            self._stop(f"{self.storage} is full ({mib(self.free())} free): trial {trial.trial_id} could not write")

    def _stop(self, why: str) -> None:
        if self.full is None:
            self.release()
            self.full = why
            print(f"STORAGE FULL: {why}; stopping the sweep (finished trials are kept)", flush=True)
            os.kill(os.getpid(), signal.SIGINT)  # Tune's own interrupt: state saved, trials resumable


class NodeWatch(Callback):  # type: ignore[misc]
    """A fixed cluster that lost the node a trial needs must not hang in silence. When a trial waits
    (PENDING) and no alive node can hold it, the driver says at once which trial waits for what, against the
    nodes alive; unless the sweep waits for the cluster to grow (``wait``), it stops after ``grace_s`` seconds
    (unfinished trials stay unfinished for ``--resume``) and ``stuck`` says why."""

    def __init__(self, resources: Any, driver: float, grace_s: float, wait: bool, every_s: float = 5.0) -> None:
        self.resources, self.driver, self.grace_s, self.wait, self.every_s = resources, driver, grace_s, wait, every_s
        self.stuck: str | None = None
        self._since: float | None = None
        self._said = ""
        self._checked = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.stuck or time.time() - self._checked < self.every_s:
            return
        self._checked = time.time()
        waiting = [t for t in trials if str(t.status) == "PENDING"]
        if not waiting:
            self._since, self._said = None, ""
            return
        from trainables.resources import cluster_nodes, unmet

        nodes = cluster_nodes()
        problems = unmet(self.resources, nodes, self.driver)
        if not problems:
            self._since, self._said = None, ""
            return
        alive = ", ".join(f"{n.cpus:g} CPU / {n.gpus:g} GPU" for n in nodes) or "none"
        what = (f"{len(waiting)} trial(s) waiting ({waiting[0].trial_id}, ...): {'; '.join(problems)} "
                f"(alive nodes: {alive})")
        self._since = self._since or time.time()
        if what != self._said:
            self._said = what
            then = ("waiting for the cluster to grow (--wait-for-resources)" if self.wait else
                    f"the sweep stops in {self.grace_s / 60:g} min unless a node that fits joins")
            print(f"NO NODE FITS: {what}; {then}", flush=True)
        if not self.wait and time.time() - self._since >= self.grace_s:
            self.stuck = f"no alive node could hold a trial for {self.grace_s / 60:g} min: {what}"
            print(f"STOPPING: {self.stuck}", flush=True)
            os.kill(os.getpid(), signal.SIGINT)  # Tune's own interrupt: finished trials kept, the rest resumable


@dataclass
class Outcome:
    """How a sweep ended: the exit status and one last line per cause."""

    code: int = 0
    lines: list[str] = field(default_factory=list)

    def add(self, code: int, line: str) -> None:
        self.code = self.code or code
        self.lines.append(line)


def outcome(results: Any, guard: StorageGuard | None, ranked: bool, watch: NodeWatch | None = None) -> Outcome:
    """Exit 0 when the sweep produced its ranking and no trial failed for an infrastructure reason."""
    out = Outcome()
    if guard is not None and guard.full:
        out.add(EXIT_STORAGE_FULL, f"storage full: {guard.full}; free space, then run the same command with --resume")
    if watch is not None and watch.stuck:
        out.add(EXIT_INFRASTRUCTURE, f"stopped: {watch.stuck}; add a node that fits, then run the same command with "
                                     "--resume (or pass --wait-for-resources on a cluster that grows)")
    infra = [r for r in results if r.error is not None and not own_fault(f"{type(r.error).__name__}: {r.error}")]
    own = [r for r in results if r.error is not None and r not in infra]
    if infra:
        names = ", ".join(Path(r.path).name.split("_")[2] + "_" + Path(r.path).name.split("_")[3] for r in infra)
        out.add(EXIT_INFRASTRUCTURE, f"{len(infra)} trial(s) failed for an infrastructure reason ({names}): run the "
                                     "same command with --resume to continue them from their last state")
    if own:
        out.lines.append(f"{len(own)} trial(s) failed on their own (a result, not retried): see the report")
    stopped = (guard is not None and guard.full) or (watch is not None and watch.stuck)
    if not ranked and not stopped:  # (a stopped sweep skips the analysis itself)
        out.add(EXIT_NO_RANKING, "no ranking: no trial reported a result")
    return out


__all__ = ["EXIT_INFRASTRUCTURE", "EXIT_NO_RANKING", "EXIT_STORAGE_FULL", "NodeWatch", "Outcome", "StorageGuard",
           "outcome", "own_fault"]
