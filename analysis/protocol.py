"""The evaluation protocol in the analysis (mmsn.protocol): one ranking per (evaluation dataset, label
fraction), with the statistics of the primary ranking.

Each trial's protocol results become pseudo-trials, one per label draw, whose seed is
``seed * DRAW_BASE + draw``: arms are then paired on the same pretraining seed *and* the same labelled
patients, and the draws enter an arm's CI as seeds do. Reference rows (random init, raw pixels, EHR only)
are probed on the same draws and paired draw by draw. The primary dataset at the probe's own label
fraction is the primary ranking itself and is not repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import ExperimentInfo, TrialRecord

DRAW_BASE = 1000  # pseudo-seed = seed * DRAW_BASE + draw


@dataclass(frozen=True)
class Evaluation:
    """One (dataset, label fraction) of the protocol."""

    dataset: str
    fraction: float

    @property
    def name(self) -> str:
        return f"{self.dataset} @ {self.fraction:g}"


@dataclass
class ProtocolView:
    """The pseudo-trials of one evaluation: records, their trials table, and the reference records."""

    evaluation: Evaluation
    records: list[TrialRecord] = field(default_factory=list)
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    references: list[TrialRecord] = field(default_factory=list)


def evaluations(info: ExperimentInfo) -> list[Evaluation]:
    """Every (dataset, fraction) the sweep's protocol evaluates but the primary ranking (the primary
    dataset at the probe's label fraction), primary dataset first."""
    if not info.protocol:
        return []
    primary = info.protocol["targets"][0][0]
    own = info.space.base.probe.label_fraction if info.space is not None else 1.0
    return [Evaluation(str(key), float(f)) for key, _ in info.protocol["targets"] for f in info.protocol["fractions"]
            if not (key == primary and math.isclose(float(f), own))]


def pseudo_trial(trial: str, evaluation: Evaluation, draw: int) -> str:
    return f"{trial}~{evaluation.dataset}~f{evaluation.fraction:g}~d{draw}"


def _results(rec: TrialRecord, evaluation: Evaluation) -> dict[int, dict[int, dict[str, Any]]]:
    """draw -> epoch -> the protocol result of this trial for ``evaluation``."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for epoch, summary in rec.protocol.items():
        for result in summary.get("results", []):
            if result.get("dataset") == evaluation.dataset and math.isclose(float(result["fraction"]),
                                                                            evaluation.fraction):
                out.setdefault(int(result["draw"]), {})[epoch] = result
    return out


def view(evaluation: Evaluation, records: list[TrialRecord], trials: pd.DataFrame) -> ProtocolView:
    """The pseudo-trials of ``evaluation`` (records and trials table) built from the real ones."""
    from mmsn.protocol import score_name

    rows, pseudo = [], []
    by_trial = trials.set_index("trial")
    for rec in records:
        if rec.trial not in by_trial.index:
            continue
        for draw, by_epoch in sorted(_results(rec, evaluation).items()):
            name = score_name(evaluation.dataset, evaluation.fraction, draw)
            npz = {e: rec.protocol_npz[e][name] for e in by_epoch if name in rec.protocol_npz.get(e, {})}
            key, last = pseudo_trial(rec.trial, evaluation, draw), by_epoch[max(by_epoch)]
            probes = {e: {"val": r.get("val"), "test": r.get("test")} for e, r in by_epoch.items()}
            pseudo.append(TrialRecord(key, rec.tune_status, rec.params, rec.dir, probes=probes, npz=npz,
                                      error=rec.error))
            row = by_trial.loc[rec.trial].to_dict()
            seed = row.get("seed")
            row.update(trial=key, epoch=max(by_epoch), has_scores=bool(npz),
                       seed=(0 if seed is None or pd.isna(seed) else int(seed)) * DRAW_BASE + draw,
                       test_auroc=_macro(last, "test"), val_auroc=_macro(last, "val"))
            rows.append(row)
    return ProtocolView(evaluation, pseudo, pd.DataFrame(rows))


def _macro(result: dict[str, Any], split: str) -> float:
    value = (result.get(split) or {}).get("macro_auroc")
    return math.nan if value is None else float(value)


def reference_records(info: ExperimentInfo, evaluation: Evaluation, compute: bool) -> list[TrialRecord]:
    """The reference rows of ``evaluation`` on each of its label draws (``params["draw"]``), computed into
    ``EXPERIMENT_DIR/references/protocol/<dataset>`` once when the dataset's cache is on this machine."""
    from mmsn import references

    targets = dict((str(k), str(c)) for k, c in (info.protocol or {}).get("targets", []))
    where = info.path / "references" / "protocol" / evaluation.dataset
    cache_dir, draws = targets.get(evaluation.dataset), int((info.protocol or {}).get("draws", 1))
    found: dict[tuple[str, float, int], tuple[dict, Path]] = {}
    if compute and info.space is not None and cache_dir and (Path(cache_dir) / "meta.json").is_file():
        import torch

        from mmsn.data.cache import open_cache

        found = references.ensure_protocol(where, open_cache(cache_dir), info.space.base, torch.device("cpu"),
                                           [evaluation.fraction], draws)
    else:
        for d in range(draws if evaluation.fraction < 1 else 1):
            found |= {(name, evaluation.fraction, d): v
                      for name, v in references.read(where, suffix=f"_f{evaluation.fraction:g}_d{d}").items()}
    return [TrialRecord(f"reference:{references.REFERENCES[name]}:{evaluation.dataset}:f{fraction:g}:d{d}",
                        "TERMINATED", {"arm": name, "draw": d}, where, probes={0: payload}, npz={0: npz})
            for (name, fraction, d), (payload, npz) in sorted(found.items())]


def draw_spread(view_: ProtocolView) -> pd.DataFrame:
    """Per arm: the standard deviation over label draws of the test macro AUROC (each draw averaged over
    seeds) and the number of draws: how much a fraction's result depends on which patients were labelled."""
    t = view_.trials
    if t.empty:
        return pd.DataFrame(columns=["arm", "draw_sd", "draws"])
    t = t.assign(draw=t["seed"].astype(int) % DRAW_BASE)
    per_draw = t.groupby(["arm", "draw"])["test_auroc"].mean().reset_index()
    spread = per_draw.groupby("arm")["test_auroc"].agg(
        draw_sd=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else math.nan, draws="count")
    return spread.reset_index()


def shared_findings(info: ExperimentInfo, records: list[TrialRecord]) -> tuple[dict[str, list[str]], list[str]]:
    """(dataset -> its label names, the findings every evaluated dataset has): comparisons across datasets
    are of macro AUROCs over different label sets unless the sets agree."""
    labels: dict[str, list[str]] = {}
    for rec in records:
        for summary in rec.protocol.values():
            for key, names in (summary.get("labels") or {}).items():
                labels.setdefault(str(key), list(names))
    common = sorted(set.intersection(*(set(v) for v in labels.values()))) if labels else []
    return labels, common


def protocol_seconds(records: list[TrialRecord]) -> pd.DataFrame:
    """Per trial: the seconds its protocol probes took (all milestones where it ran)."""
    rows = [{"trial": r.trial, "protocol_seconds": sum(float(s.get("seconds") or 0.0) for s in r.protocol.values())}
            for r in records if r.protocol]
    return pd.DataFrame(rows, columns=["trial", "protocol_seconds"])
