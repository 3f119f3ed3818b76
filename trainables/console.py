"""What a sweep prints (Tune's own output is off unless ``--verbose``): a status line at most once a minute
and whenever a trial changes state, one line per trial milestone, one line per trial end with its reason
(completed, stopped by the scheduler at epoch E, failed with the last line of its error). The end of the
sweep prints the ranking and the paths (trainables.summary)."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mmsn.errors import MMSNError
from mmsn.metrics import collapsing
from search_spaces.loader import Space


def _name(space: Space, trial: Any, result: dict[str, Any] | None = None) -> str:
    """``[id] arm seed s``: the trial's arm (its EHR use and the setting of the other searched keys)."""
    seed = trial.config.get("train.seed", "?")
    arm = (result or {}).get("arm")
    if arm is None:
        try:
            arm = space.arm(dict(trial.config)).name
        except (MMSNError, KeyError, TypeError):  # the console never fails a sweep
            arm = str((result or {}).get("variant", "?"))
    return f"[{trial.trial_id}] {arm} seed {seed}"


def _error_line(trial: Any) -> str:
    from analysis.load import error_summary

    try:
        return error_summary(Path(trial.error_file).read_text(errors="replace"))
    except (OSError, TypeError):
        return "no error file"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Console(Callback):  # type: ignore[misc]
    """The sweep's console (see the module docstring); ``every_s``: the longest silence of the status line."""

    def __init__(self, space: Space, every_s: float = 60.0) -> None:
        self.space, self.every_s = space, every_s
        self.start = time.time()
        self.last_print, self.last_counts = 0.0, ""
        self.best: tuple[float, str] | None = None

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.space.metric, math.nan)
        if isinstance(value, (int, float)) and not math.isnan(value):
            better = self.best is None or (value > self.best[0] if self.space.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), str(result.get("arm", result.get("variant", "?"))))
        rank, floor = result.get("rankme"), result.get("rankme_untrained")
        effective = f", RankMe {rank:.1f}" if isinstance(rank, (int, float)) else ""
        if isinstance(rank, (int, float)) and isinstance(floor, (int, float)) and collapsing(rank, floor):
            effective += f" BELOW the untrained encoder's {floor:.1f}: collapsing?"
        late = result.get("probe_lag_seconds")
        probes = (f"probed beside training, {late:.0f} s after its state" if isinstance(late, (int, float))
                  else f"{result.get('probe_seconds', 0):.0f} s probes")
        print(f"{_name(self.space, trial, result)}: epoch {result.get('epoch')} val AUROC {value:.4f}{effective} "
              f"(trial {result.get('trial_seconds', 0):.0f} s so far: {result.get('train_seconds', 0):.0f} s "
              f"epochs, {probes})", flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        epoch, last = result.get("epoch", 0), self.space.epochs
        if epoch and epoch < last:
            why = f"stopped by the scheduler ({self.space.scheduler.type}) at epoch {epoch} of {last}"
        elif epoch:
            why = f"completed (epoch {epoch})"
        else:
            why = "ended before its first milestone"
        print(f"{_name(self.space, trial, result)}: {why}", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        print(f"{_name(self.space, trial, trial.last_result)}: failed: {_error_line(trial)}", flush=True)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        counts = Counter(str(t.status).lower() for t in trials)
        text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        now = time.time()
        if text == self.last_counts and now - self.last_print < self.every_s:
            return
        self.last_print, self.last_counts = now, text
        best = f"; best val AUROC {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        print(f"[{_duration(now - self.start)}] trials: {text}{best}", flush=True)


__all__ = ["Console"]
