"""Read a sweep's experiment directory into tidy tables (no Ray needed; partial experiments welcome).

Layout (written by ``trainables/sweep.py`` and ``trainables/trial.py``)::

    EXPERIMENT_DIR/sweep.json               how the sweep was started (metric, milestones, ...)
    EXPERIMENT_DIR/space.yaml               the search space (read by search_spaces.loader, which also
                                            defines the arms); its description is the question
    EXPERIMENT_DIR/experiment_state-*.json  Tune's trial list: status, config, error file
    EXPERIMENT_DIR/<trainable>_<id>_.../    result.json (one line per milestone), error.txt,
        probes/epoch_XXX.json               val and test probe results
        probes/epoch_XXX_test.npz           (N_test, L) scores and targets, same image order everywhere

Tables: :func:`load_trials` (one row per trial), :func:`load_curves` (one row per trial and
milestone); :func:`load_scores` returns one trial's per-image test scores.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmsn.errors import ConfigError, DataError
from search_spaces.loader import INACTIVE, NO_EHR, SEED_KEY, Arm, Axis, Space, load_space
from search_spaces.loader import encode_value as encode

COMPLETED, STOPPED_EARLY, FAILED, UNFINISHED = "completed", "stopped_early", "failed", "unfinished"
# Tune names a trial's directory <trainable>_<id>_...; a trial directory is one that holds our files.
_TRIAL_DIR = re.compile(r"_(?P<id>[0-9a-f]{5}_\d{5})(?:_|$)")
_PROBE = re.compile(r"^epoch_(?P<epoch>\d+)\.json$")
_PROBE_NPZ = re.compile(r"^epoch_(?P<epoch>\d+)_test\.npz$")
_EVAL = re.compile(r"^epoch_(?P<epoch>\d+)_eval\.json$")  # the evaluation protocol's (mmsn.protocol)
_EVAL_NPZ = re.compile(r"^epoch_(?P<epoch>\d+)_eval_(?P<name>.+)_test\.npz$")


@dataclass(frozen=True)
class ExperimentInfo:
    """What the sweep asked and how: sweep.json and the space as it ran (search_spaces.loader, smoke
    overrides applied). ``space`` is None when space.yaml cannot be loaded (see notes)."""

    path: Path
    name: str
    description: str
    metric: str
    milestones: tuple[int, ...]
    scheduler: str
    search: str
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]
    num_samples: int
    smoke: bool
    base: dict[str, Any]
    notes: tuple[str, ...] = ()
    space: Space | None = None
    cache: str | None = None  # the sweep's cache directory, as sweep.json records it
    protocol: dict[str, Any] | None = None  # the evaluation protocol (mmsn.protocol.Protocol.to_dict), if any


@dataclass
class TrialRecord:
    """Everything read from one trial: Tune's view (may be missing) and its directory (may be missing)."""

    trial: str
    tune_status: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    dir: Path | None = None
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> last result.json line
    probes: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> probes/epoch_XXX.json
    npz: dict[int, Path] = field(default_factory=dict)  # epoch -> probes/epoch_XXX_test.npz
    error: str | None = None
    last_result: dict[str, Any] = field(default_factory=dict)
    protocol: dict[int, dict[str, Any]] = field(default_factory=dict)  # epoch -> probes/epoch_XXX_eval.json
    protocol_npz: dict[int, dict[str, Path]] = field(default_factory=dict)  # epoch -> score name -> npz

    @property
    def epoch(self) -> int:
        """Last milestone reached (0 if none)."""
        return max([*self.results, *self.probes, int(self.last_result.get("epoch") or 0)], default=0)


# --- experiment-level files ---------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _load_space(experiment: Path, sweep: dict[str, Any], notes: list[str]) -> Space | None:
    """The space as the sweep ran it: its copy in the experiment, else the file it was started from
    (a base config named by a relative path resolves only there)."""
    errors = []
    for path in (experiment / "space.yaml", sweep.get("space")):
        if path and Path(path).is_file():
            try:
                return load_space(path, smoke=bool(sweep.get("smoke")))
            except ConfigError as err:
                errors.append(error_summary(str(err)))
    notes.append(f"the search space could not be loaded ({errors[0] if errors else 'no space.yaml'}): arms are "
                 "each trial's EHR variant and objective, and no grid size is checked")
    return None


def read_info(experiment: Path) -> ExperimentInfo:
    """sweep.json + the space; a missing or unreadable file is noted, never fatal."""
    notes: list[str] = []
    sweep = _read_json(experiment / "sweep.json")
    if not isinstance(sweep, dict):
        notes.append("sweep.json missing or unreadable: milestones taken from the trials")
        sweep = {}
    space = _load_space(experiment, sweep, notes)
    milestones = sweep.get("milestones") or (space.scheduler.milestones if space else [])
    return ExperimentInfo(
        path=experiment, name=str(sweep.get("name") or (space.name if space else experiment.name)),
        description=space.description if space else "", metric=str(sweep.get("metric") or "val_auroc"),
        milestones=tuple(int(m) for m in milestones), scheduler=space.scheduler.type if space else "?",
        search=space.search.algorithm if space else "?", axes=space.axes if space else (),
        seeds=space.seeds if space else (), num_samples=space.search.num_samples if space else 1,
        smoke=bool(sweep.get("smoke")), base=dict(space.base_overrides) if space else {}, notes=tuple(notes),
        space=space, cache=sweep.get("cache"), protocol=sweep.get("protocol"))


def expected_trials(info: ExperimentInfo) -> int | None:
    """How many trials the sweep creates: known for a grid whose space loads, else None."""
    return info.space.expected_trials() if info.space is not None else None


# --- per-trial files -----------------------------------------------------------------------------


def flatten_config(config: Any) -> dict[str, Any]:
    """Tune's trial config -> flat dotted keys. Older sweeps nest everything under "params"."""
    if not isinstance(config, dict):
        return {}
    if set(config) == {"params"} and isinstance(config["params"], dict):
        config = config["params"]
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in flatten_config(value).items()})
        else:
            flat[str(key)] = encode(value)
    return flat


def _tune_trials(experiment: Path) -> dict[str, dict[str, Any]] | None:
    """trial id -> {status, config, dir, error_filename, last_result} from the newest
    experiment_state-*.json; None if there is none (the sweep has not written one yet)."""
    states = sorted(experiment.glob("experiment_state-*.json"), key=lambda p: (p.stat().st_mtime, p.name))
    state = _read_json(states[-1]) if states else None
    if not isinstance(state, dict):
        return None
    out = {}
    for pair in state.get("trial_data") or []:
        try:
            trial, runtime = json.loads(pair[0]), json.loads(pair[1])
        except (json.JSONDecodeError, TypeError, IndexError):
            continue
        out[str(trial["trial_id"])] = {
            "status": trial.get("status"), "config": trial.get("config"), "dir": trial.get("relative_logdir"),
            "error_filename": runtime.get("error_filename"), "last_result": runtime.get("last_result") or {}}
    return out


def _result_lines(trial_dir: Path) -> dict[int, dict[str, Any]]:
    """epoch -> result.json line; a half-written last line (trial still running) is skipped."""
    out: dict[int, dict[str, Any]] = {}
    try:
        lines = (trial_dir / "result.json").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(result, dict) and result.get("epoch") is not None:
            out[int(result["epoch"])] = result  # a resumed trial may repeat an epoch: keep the latest
    return out


def _probes(trial_dir: Path) -> tuple[dict[int, dict[str, Any]], dict[int, Path]]:
    probes, npz = {}, {}
    for path in sorted((trial_dir / "probes").glob("epoch_*")):
        match = _PROBE.match(path.name)
        if match and isinstance(probe := _read_json(path), dict):
            probes[int(match["epoch"])] = probe
        elif match := _PROBE_NPZ.match(path.name):
            npz[int(match["epoch"])] = path
    return probes, npz


def _protocol(trial_dir: Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Path]]]:
    """The evaluation protocol's summaries and per-image test scores, by epoch."""
    summaries: dict[int, dict[str, Any]] = {}
    npz: dict[int, dict[str, Path]] = {}
    for path in sorted((trial_dir / "probes").glob("epoch_*_eval*")):
        if (match := _EVAL.match(path.name)) and isinstance(summary := _read_json(path), dict):
            summaries[int(match["epoch"])] = summary
        elif match := _EVAL_NPZ.match(path.name):
            npz.setdefault(int(match["epoch"]), {})[match["name"]] = path
    return summaries, npz


_SCRUB = [
    (re.compile(r"\S*[/\\]\S*"), "<path>"),  # file paths can name patients, studies and images
    (re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4,}){2,}\b", re.I), "<id>"),  # DICOM-like ids
    (re.compile(r"\b[A-Za-z]*\d{5,}\b"), "<id>"),  # p10000032, s50414267, long numbers
]


def error_summary(text: str, limit: int = 160) -> str:
    """The line of a Tune error.txt that says what went wrong (the exception line, not the
    traceback), with paths and id-like tokens removed so no patient or image id leaks out."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure #")]
    exception = re.compile(r"^[A-Za-z_][\w.]*(\([\w.]+\))?: \S")
    picked = next((ln for ln in reversed(lines) if exception.match(ln) and not ln.startswith("File ")),
                  lines[0] if lines else "no error message")
    for pattern, replacement in _SCRUB:
        picked = pattern.sub(replacement, picked)
    return picked if len(picked) <= limit else picked[:limit - 3] + "..."


def _error(trial_dir: Path | None, error_filename: str | None) -> str | None:
    candidates = [Path(error_filename)] if error_filename else []
    if trial_dir is not None:
        candidates = [trial_dir / c for c in candidates] + candidates + [trial_dir / "error.txt"]
    for path in candidates:
        try:
            return error_summary(path.read_text(errors="replace"))
        except OSError:
            continue
    return None


def read_records(experiment: Path) -> tuple[list[TrialRecord], list[str]]:
    """One record per trial known to Tune or present as a directory, plus notes on what is missing."""
    if not experiment.is_dir():
        raise DataError(f"EXPERIMENT_DIR {experiment}: not a directory")
    tune, notes = _tune_trials(experiment), []
    dirs = {m["id"]: p for p in experiment.iterdir() if p.is_dir() and (m := _TRIAL_DIR.search(p.name))
            and ((p / "probes").is_dir() or (p / "result.json").is_file() or (p / "error.txt").is_file())}
    if tune is None:
        notes.append("no experiment_state-*.json: trial statuses inferred from the trial directories")
        tune = {}
    if not tune and not dirs:
        raise DataError(f"EXPERIMENT_DIR {experiment}: no trials found (no experiment_state-*.json "
                        "trials and no trial directories with probes/ or result.json)")
    records = []
    for trial in sorted(set(tune) | set(dirs)):
        t = tune.get(trial, {})
        trial_dir = experiment / t["dir"] if t.get("dir") and (experiment / t["dir"]).is_dir() else dirs.get(trial)
        rec = TrialRecord(trial, t.get("status"), flatten_config(t.get("config")), trial_dir,
                          last_result=t.get("last_result") or {})
        if trial_dir is not None:
            rec.results = _result_lines(trial_dir)
            rec.probes, rec.npz = _probes(trial_dir)
            rec.protocol, rec.protocol_npz = _protocol(trial_dir)
            if not rec.params and rec.results:
                rec.params = flatten_config(rec.results[max(rec.results)].get("config"))
        if rec.tune_status == "ERROR" or (rec.tune_status is None and trial_dir and (trial_dir / "error.txt").exists()):
            rec.error = _error(trial_dir, t.get("error_filename")) or "no error file"
        records.append(rec)
    return records, notes


# --- tables ----------------------------------------------------------------------------------------


def last_milestone(info: ExperimentInfo, records: list[TrialRecord]) -> int:
    """The trials' full length: the sweep's last milestone, else the furthest any trial got."""
    return info.milestones[-1] if info.milestones else max((r.epoch for r in records), default=0)


def status_of(rec: TrialRecord, last: int, scheduler: str) -> tuple[str, str]:
    """(completed | stopped_early | failed | unfinished, the reason in words)."""
    epoch = rec.epoch
    if rec.error is not None:
        return FAILED, f"failed: {rec.error}"
    if rec.tune_status in ("TERMINATED", None) and epoch >= last > 0:
        return COMPLETED, "completed"
    if rec.tune_status == "TERMINATED":
        if epoch == 0:
            return STOPPED_EARLY, "stopped before its first milestone"
        if scheduler in ("asha", "hyperband", "halving", "racing", "pbt"):
            return STOPPED_EARLY, f"stopped by scheduler ({scheduler}) at epoch {epoch} of {last}"
        return STOPPED_EARLY, f"stopped at epoch {epoch} of {last} (time budget or stopper; scheduler {scheduler})"
    if epoch == 0:
        return UNFINISHED, f"not started ({rec.tune_status or 'no result yet'})"
    return UNFINISHED, f"unfinished ({rec.tune_status or 'no Tune state'}) at epoch {epoch} of {last}"


@dataclass(frozen=True)
class ArmsOf:
    """A trial's EHR use, its arm and the two arms it is measured against (names of loader.Arm)."""

    variant: str
    fusion: str
    features: str | None
    arm: str
    context: str
    ehr_free: str  # the same setting without EHR input or target (its own name for an EHR-free arm)
    vanilla: str | None  # vanilla MSN in the same setting, when the sweep compares objectives


def arms_of(params: dict[str, Any], recorded: str | None, info: ExperimentInfo,
            stored: Any = None) -> ArmsOf:
    """What the trial stored (``stored``: its ``arm.json``, written once when it started); for a trial of an
    older sweep, the space's description of its params (search_spaces.loader.Space.describe); when the
    space cannot be loaded, the recorded variant within its objective."""
    if not isinstance(stored, dict) and info.space is not None:
        try:
            stored = info.space.describe(params)
        except ConfigError:
            stored = None
    if isinstance(stored, dict):
        return ArmsOf(stored["variant"], stored["fusion"], stored["features"], stored["arm"], stored["context"],
                      stored["ehr_free_arm"], stored["vanilla_arm"])
    variant = recorded or "unknown"
    fusion, _, features = variant.partition(":")
    objective = params.get("objective.name")
    setting = (("objective.name", objective),) if objective not in (None, INACTIVE) else ()
    arm = Arm(variant, setting)
    return ArmsOf(variant, fusion, features or None, arm.name, arm.context, Arm(NO_EHR, setting).name, None)


def _probe_value(probe: dict[str, Any] | None, split: str) -> float:
    value = ((probe or {}).get(split) or {}).get("macro_auroc")
    return math.nan if value is None else float(value)


def _per_label(probe: dict[str, Any] | None, split: str) -> dict[str, float]:
    labels = ((probe or {}).get(split) or {}).get("per_label") or {}
    return {f"{split}_auroc/{name}": math.nan if d.get("auroc") is None else float(d["auroc"])
            for name, d in labels.items()}


def _rankme(rec: TrialRecord, epoch: int) -> dict[str, float]:
    """RankMe of the trial's val features at ``epoch`` and of its encoder before training (NaN when absent)."""
    probe = rec.probes.get(epoch) or {}
    result = rec.results.get(epoch) or {}
    value = probe.get("rankme", result.get("rankme"))
    floor = next((r["rankme_untrained"] for r in rec.results.values() if r.get("rankme_untrained") is not None),
                 None)
    return {"rankme": math.nan if value is None else float(value),
            "rankme_untrained": math.nan if floor is None else float(floor)}


def _compute(rec: TrialRecord, epoch: int) -> dict[str, float]:
    result = rec.results.get(epoch) or (rec.last_result if rec.last_result.get("epoch") == epoch else {})
    return {k: float(result[k]) if result.get(k) is not None else math.nan for k in ("trial_seconds", "gpu_seconds")}


def _trial_row(rec: TrialRecord, info: ExperimentInfo, last: int) -> dict[str, Any]:
    status, reason = status_of(rec, last, info.scheduler)
    epoch = rec.epoch
    result = rec.results.get(epoch) or {}
    stored = _read_json(rec.dir / "arm.json") if rec.dir is not None else None
    arms = arms_of(rec.params, result.get("variant"), info, stored)
    val = _probe_value(rec.probes.get(epoch), "val")
    seed = rec.params.get(SEED_KEY, info.base.get(SEED_KEY))
    return {
        "trial": rec.trial, "status": status, "stop_reason": reason, "variant": arms.variant, "arm": arms.arm,
        "context": arms.context, "ehr_free_arm": arms.ehr_free, "vanilla_arm": arms.vanilla, "fusion": arms.fusion,
        "features": arms.features or math.nan, "seed": math.nan if seed in (None, INACTIVE) else int(seed),
        "epoch": epoch, "max_epoch": last, **_compute(rec, epoch),
        "val_auroc": float(result["val_auroc"]) if math.isnan(val) and result.get("val_auroc") is not None else val,
        "test_auroc": _probe_value(rec.probes.get(epoch), "test"), "has_scores": epoch in rec.npz,
        **_rankme(rec, epoch),
        "dir": rec.dir.name if rec.dir else math.nan,
        **{k: math.nan if v == INACTIVE else v for k, v in rec.params.items()},
        **_per_label(rec.probes.get(epoch), "test"),
    }


def load_records(experiment: Path) -> tuple[ExperimentInfo, list[TrialRecord], pd.DataFrame, list[str]]:
    """(info, records, trials table, notes) in one read of the directory (what the report uses)."""
    experiment = Path(experiment)
    records, notes = read_records(experiment)
    info = read_info(experiment)
    last = last_milestone(info, records)
    trials = pd.DataFrame([_trial_row(r, info, last) for r in records])
    label_cols = sorted(c for c in trials if c.startswith("test_auroc/"))
    trials = trials[[c for c in trials if not c.startswith("test_auroc/")] + label_cols]
    return info, records, trials, list(info.notes) + notes


def load_trials(experiment: Path) -> pd.DataFrame:
    """One row per trial: ``trial, status, stop_reason, variant, fusion, features, seed, epoch``
    (last milestone reached), ``max_epoch, trial_seconds, gpu_seconds, val_auroc, test_auroc`` (at
    that milestone), ``has_scores, dir``, every hyper-parameter under its dotted name (``-`` as
    NaN), ``test_auroc/<label>``, and ``context, arm``. Raises DataError if there are no trials."""
    return load_records(experiment)[2]


def curves_from(records: list[TrialRecord], trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (trial, milestone) reached: val/test macro and per-label AUROC, cumulative compute."""
    meta = trials.set_index("trial")[["variant", "arm", "seed", "status"]]
    rows = []
    for rec in records:
        for epoch in sorted(set(rec.results) | set(rec.probes)):
            probe, result = rec.probes.get(epoch), rec.results.get(epoch) or {}
            val = _probe_value(probe, "val")
            if math.isnan(val) and result.get("val_auroc") is not None:
                val = float(result["val_auroc"])
            rows.append({"trial": rec.trial, **meta.loc[rec.trial].to_dict(), "epoch": epoch, "val_auroc": val,
                         "test_auroc": _probe_value(probe, "test"), **_compute(rec, epoch), **_rankme(rec, epoch),
                         "has_scores": epoch in rec.npz, **_per_label(probe, "val"), **_per_label(probe, "test")})
    columns = ["trial", "variant", "arm", "seed", "status", "epoch", "val_auroc", "test_auroc", "rankme",
               "rankme_untrained", "trial_seconds", "gpu_seconds", "has_scores"]
    return pd.DataFrame(rows, columns=columns + sorted({k for r in rows for k in r} - set(columns)))


def load_curves(experiment: Path) -> pd.DataFrame:
    """One row per trial and milestone: ``trial, variant, arm, seed, status, epoch, val_auroc,
    test_auroc, trial_seconds, gpu_seconds, has_scores`` and per-label ``val_auroc/<label>``,
    ``test_auroc/<label>`` (the scheduler acted on ``val_auroc``)."""
    _, records, trials, _ = load_records(experiment)
    return curves_from(records, trials)


def read_scores(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as data:
        return np.asarray(data["scores"], dtype=np.float32), np.asarray(data["targets"], dtype=np.int8)


def load_scores(experiment: Path, trial: str, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N_test, L) float32, targets (N_test, L) int8) of a trial's test probe at ``epoch``
    (default: the last milestone it reached). Raises DataError if the trial or its npz is missing."""
    records, _ = read_records(Path(experiment))
    rec = next((r for r in records if r.trial == trial), None)
    if rec is None:
        raise DataError(f"{experiment}: no trial {trial!r}; trials: {', '.join(r.trial for r in records)}")
    epoch = rec.epoch if epoch is None else epoch
    if epoch not in rec.npz:
        have = ", ".join(str(e) for e in sorted(rec.npz)) or "none"
        raise DataError(f"{experiment}: trial {trial} has no test scores at epoch {epoch} (npz epochs: {have})")
    return read_scores(rec.npz[epoch])
