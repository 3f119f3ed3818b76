"""``analyze(EXPERIMENT_DIR)``: which EHR data, fused how, helps - and is the difference real?

Reads the experiment (:mod:`analysis.load`), ranks the arms and tests each against its baseline
(:mod:`analysis.stats`), draws the figures (:mod:`analysis.plots`) and writes ``report.md``,
``ranking.csv``, ``per_label.csv``, ``trials.parquet`` and the PNGs into ``EXPERIMENT_DIR/analysis``.
Everything is written to a temporary directory first and renamed into place, so an interrupted
run leaves either the previous analysis or the new one, never half of one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import plots, protocol
from analysis.load import (
    COMPLETED,
    STOPPED_EARLY,
    UNFINISHED,
    ExperimentInfo,
    TrialRecord,
    curves_from,
    load_records,
    read_scores,
)
from analysis.protocol import DRAW_BASE
from analysis.report_text import (
    REFERENCE_FAMILIES,
    VERSUS,
    Findings,
    ProtocolFindings,
    interval,
    num,
    report_markdown,
)
from analysis.stats import EFFECT, REFERENCE, ScoreBank, build_bank, compare_arms, needed_scores
from mmsn.errors import ConfigError

METRICS = {"test_auroc": "test macro AUROC", "val_auroc": "val macro AUROC"}
EHR_FREE = "ehr=none"  # the default baseline: each arm's own EHR-free counterpart
RANKED = (COMPLETED, STOPPED_EARLY, UNFINISHED)  # failed trials are reported, not ranked
BASELINE_ALIASES = {"fusion": "fusion", "ehr.fusion": "fusion", "features": "features", "ehr.features": "features"}
FIGURES = {"ranking": "ranking.png", "curves": "val_curves.png", "labels": "per_label_diff.png",
           "compute": "auroc_vs_compute.png"}
PROTOCOL_FIGURE = "protocol_auroc_vs_fraction.png"  # with an evaluation protocol only


@dataclass(frozen=True)
class AnalysisResult:
    """What :func:`analyze` found and wrote (paths are final, inside ``out``)."""

    ranking: pd.DataFrame
    per_label: pd.DataFrame
    trials: pd.DataFrame
    out: Path
    report: Path
    files: dict[str, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def counterparts(ranked: pd.DataFrame, column: str) -> dict[str, str | None]:
    """arm -> the arm named in ``column`` (ehr_free_arm, vanilla_arm) when that arm has ranked trials."""
    arms = set(ranked["arm"])
    pairs = ranked.drop_duplicates("arm").set_index("arm")[column]
    return {arm: base if isinstance(base, str) and base in arms else None for arm, base in pairs.items()}


def resolve_baseline(trials: pd.DataFrame, ranked: pd.DataFrame, spec: str) -> dict[str, str | None]:
    """arm -> its baseline arm. ``ehr=none`` (the default): the same setting without EHR input or
    target (search_spaces.loader.Space.counterpart: mrm_ehr against mae, msn_supcon against msn,
    supcon_ehr against SupCon with each image its own class). Otherwise a baseline in the same
    context from ``fusion=none``, ``features=...``, ``variant=...``, any ``hyper.parameter=value`` or a
    full variant/arm name. Raises ConfigError if ``spec`` matches no trial or several arms of one context."""
    if spec == EHR_FREE:
        return counterparts(ranked, "ehr_free_arm")
    key, sep, value = spec.partition("=")
    if sep:
        column = BASELINE_ALIASES.get(key.strip(), key.strip())
        if column not in trials:
            known = ["fusion", "features", "variant", *(c for c in trials if "." in c and "/" not in c)]
            raise ConfigError(f"--baseline {spec!r}: unknown key {key!r}; use one of {', '.join(known)}")
        match = trials[column].astype(str) == value.strip()
    else:
        match = (trials["variant"] == spec) | (trials["arm"] == spec)
    if not match.any():
        variants = ", ".join(sorted(set(trials["variant"])))
        raise ConfigError(f"--baseline {spec!r} matches no trial; variants: {variants}")
    chosen = ranked[match.reindex(ranked.index, fill_value=False)]
    out: dict[str, str | None] = {}
    for context, group in ranked.groupby("context"):
        bases = sorted(set(chosen.loc[chosen["context"] == context, "arm"]))
        if len(bases) > 1:
            raise ConfigError(f"--baseline {spec!r} matches several arms ({', '.join(bases)}); name one variant")
        out.update({arm: bases[0] if bases else None for arm in group["arm"].unique()})
    return out


def _evals(curves: pd.DataFrame, ranked: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows of ranked trials at each milestone with a value of ``metric`` (for compare_arms)."""
    ev = curves[curves["trial"].isin(ranked["trial"])].dropna(subset=[metric])
    ev = ev.assign(value=ev[metric], epoch=ev["epoch"].astype(int))
    prefix = f"{metric}/"
    return ev, {c[len(prefix):]: c for c in ev if c.startswith(prefix)}


def _labels(records: list[TrialRecord]) -> list[str] | None:
    """Label names in score-column order (the probe's per_label order)."""
    for rec in records:
        for probe in rec.probes.values():
            names = list((probe.get("test") or {}).get("per_label") or {})
            if names:
                return names
    return None


def _bank(records: list[TrialRecord], keys: set[tuple[str, int]], n_boot: int,
          seed: int) -> tuple[ScoreBank | None, list[str]]:
    """Bootstrap the per-image test scores that exist among ``keys``; notes say what is missing."""
    paths = {(r.trial, e): p for r in records for e, p in r.npz.items()}
    have = sorted(k for k in keys if k in paths)
    notes = []
    if len(have) < len(keys):
        missing = sorted({t for t, _ in keys - set(have)})
        notes.append(f"{len(missing)} trial(s) lack per-image test scores (probes/epoch_XXX_test.npz) at the "
                     f"epochs compared ({', '.join(missing)}); their arms use the seed-level fallback")
    if not have:
        return None, notes
    scores, targets = {}, None
    for key in have:
        s, t = read_scores(paths[key])
        if targets is None:
            targets = t
        elif t.shape != targets.shape or not np.array_equal(t, targets):
            return None, notes + ["test targets differ between trials (different caches?): the image "
                                  "bootstrap is impossible, every arm uses the seed-level fallback"]
        scores[key] = s
    assert targets is not None
    labels = _labels(records)
    labels = labels if labels and len(labels) == targets.shape[1] else None
    return build_bank(scores, targets, labels, n_boot, seed), notes


def _parquet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns mixing types (a hyper-parameter that is 0.1 in one trial and "a" in another)
    become strings, which Arrow can store."""
    out = df.copy()
    for column in out.select_dtypes(include="object").columns:
        kinds = {type(v) for v in out[column].dropna()}
        if len(kinds) > 1:
            out[column] = out[column].map(lambda v: v if pd.isna(v) else str(v))
    return out


def _write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a sibling temp dir, then swap it in for ``out`` (two renames)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _check_args(metric: str, n_boot: int, effect: float = EFFECT) -> None:
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}; valid: {', '.join(METRICS)}")
    if n_boot < 1:
        raise ConfigError(f"--n-boot {n_boot}: need at least 1 bootstrap draw (1000 recommended)")
    if not 0 < effect < 1:
        raise ConfigError(f"--effect {effect}: an AUROC difference in (0, 1), e.g. 0.02")


def _status_counts(ranking: pd.DataFrame, ranked: pd.DataFrame) -> pd.DataFrame:
    """Add how many of each arm's trials the scheduler stopped early or are still unfinished."""
    counts = pd.crosstab(ranked["arm"], ranked["status"]).reindex(columns=[STOPPED_EARLY, UNFINISHED], fill_value=0)
    counts = counts.rename(columns={STOPPED_EARLY: "n_stopped_early", UNFINISHED: "n_unfinished"})
    return ranking.merge(counts, left_on="arm", right_index=True, how="left").fillna(
        {"n_stopped_early": 0, "n_unfinished": 0}).astype({"n_stopped_early": int, "n_unfinished": int})


VERSUS_COLUMNS = ("baseline", "diff", "diff_lo", "diff_hi", "p_holm", "verdict", "mde", "test_method")


def _side_by_side(ranking: pd.DataFrame, families: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The ranking with each arm's other comparisons (vanilla MSN, the references) beside the first."""
    for prefix, versus in families.items():
        if not versus.empty:
            extra = versus.set_index("arm")[list(VERSUS_COLUMNS)].add_prefix(prefix)
            ranking = ranking.merge(extra, left_on="arm", right_index=True, how="left")
    return ranking


def _reference_records(info: ExperimentInfo, compute: bool) -> tuple[list[TrialRecord], list[str]]:
    """The reference probes (mmsn.references) of the sweep's cache, as records named ``reference:<slug>``:
    computed into EXPERIMENT_DIR/references once (when the cache is here), else read from there."""
    from mmsn import references

    where, cache_dir, notes = info.path / "references", info.cache, []
    found = references.read(where)
    if compute and info.space is not None and cache_dir and (Path(cache_dir) / "meta.json").is_file():
        import torch

        from mmsn.data.cache import open_cache

        found = references.ensure(where, open_cache(cache_dir), info.space.base, torch.device("cpu"))
    elif compute and not found:
        notes.append("no reference rows: the sweep's cache is not on this machine (or the space did not load); "
                     "`mmsn reference CACHE --out EXPERIMENT_DIR/references` computes them")
    records = [TrialRecord(f"reference:{references.REFERENCES[name]}", "TERMINATED", {"arm": name}, where,
                           probes={0: payload}, npz={0: npz}) for name, (payload, npz) in found.items()]
    return records, notes


def _with_references(evals: pd.DataFrame, refs: list[TrialRecord],
                     metric: str) -> tuple[pd.DataFrame, list[TrialRecord]]:
    """Reference rows at every evaluated epoch and seed, with the same scores (a reference does not
    depend on the trials' seeds or length), so every arm is paired with each reference seed by seed."""
    split = metric.split("_")[0]
    epochs = sorted(int(e) for e in evals["epoch"].unique())
    seeds = sorted(int(s) for s in evals["seed"].dropna().unique()) or [0]
    rows, seeded = [], []
    for rec in refs:
        probe = rec.probes[0]
        per_label = {f"{metric}/{k}": v.get("auroc") for k, v in (probe[split].get("per_label") or {}).items()}
        for seed in seeds:
            if "draw" in rec.params and seed % DRAW_BASE != rec.params["draw"]:
                continue  # a protocol reference pairs with the pseudo-seeds of its own label draw
            trial = f"{rec.trial}:{seed}"
            seeded.append(TrialRecord(trial, rec.tune_status, rec.params, rec.dir, probes={e: probe for e in epochs},
                                      npz={e: rec.npz[0] for e in epochs}))
            rows += [{"trial": trial, "arm": rec.params["arm"], "seed": seed, "epoch": epoch,
                      "value": probe[split]["macro_auroc"], **per_label} for epoch in epochs]
    return (pd.concat([evals, pd.DataFrame(rows)], ignore_index=True) if rows else evals), seeded


def _compare(records: list[TrialRecord], trials: pd.DataFrame, curves: pd.DataFrame, metric: str, baseline: str,
             n_boot: int, seed: int, refs: list[TrialRecord],
             effect: float = EFFECT) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(ranking, per-label differences, notes): the statistics on the trials that can be ranked, the
    reference rows beside them. Besides each arm's baseline, each arm is tested against the raw-pixels
    and random-init references and, when the sweep compares objectives, against vanilla MSN: each
    question is its own Holm family."""
    ranked = trials[trials["status"].isin(RANKED) & (trials["epoch"] > 0)]
    baseline_of = resolve_baseline(trials, ranked, baseline)
    evals, label_columns = _evals(curves, ranked, metric)
    notes: list[str] = []
    if ranked.empty or evals.empty:
        notes.append("no completed, stopped or running trial has reached a milestone with a value of the "
                     "metric: nothing is ranked yet")
    if any(v is None for v in baseline_of.values()):
        notes.append(f"baseline `{baseline}` has no ranked trial in some settings: those arms are not tested")
    evals, refs = _with_references(evals, refs, metric) if not evals.empty else (evals, [])
    names = {r.params["arm"] for r in refs}
    families = {"vs_msn_": counterparts(ranked, "vanilla_arm") if ranked["vanilla_arm"].notna().any() else {}}
    families |= {prefix: {arm: name for arm in baseline_of} for prefix, name in REFERENCE_FAMILIES
                 if name in names}
    bank = None
    if metric == "test_auroc" and not evals.empty:
        needed = set().union(*(needed_scores(evals, of) for of in (baseline_of, *families.values())))
        bank, more = _bank(records + refs, needed, n_boot, seed)
        notes += more
    elif metric == "val_auroc":
        notes.append("val_auroc: per-image val scores are not saved, so the seed-level analysis is used")
    ranking, per_label = compare_arms(evals, baseline_of, bank, label_columns, seed, effect=effect)
    ranking.loc[ranking["arm"].isin(names), "verdict"] = REFERENCE
    versus = {prefix: compare_arms(evals, of, bank, label_columns, seed, effect=effect)[0]
              for prefix, of in families.items() if of}
    ranking = _side_by_side(_status_counts(ranking, ranked), versus)
    for prefix in versus:  # a reference is compared with nothing
        ranking.loc[ranking["arm"].isin(names), f"{prefix}verdict"] = "-"
    return ranking, per_label, notes


def _protocol(info: ExperimentInfo, records: list[TrialRecord], trials: pd.DataFrame, metric: str,
              baseline: str, n_boot: int, seed: int, compute: bool, effect: float = EFFECT) -> ProtocolFindings | None:
    """The evaluation protocol's rankings, one per (dataset, fraction), stacked, with each arm's spread
    over label draws (None when the sweep ran no protocol)."""
    evals = protocol.evaluations(info)
    if not evals:
        return None
    parts, spreads, notes = [], [], []
    for ev in evals:
        v = protocol.view(ev, records, trials)
        if v.trials.empty:
            notes.append(f"{ev.name}: no trial has protocol results yet (they come after a trial's last milestone)")
            continue
        refs = protocol.reference_records(info, ev, compute)
        ranking, _, more = _compare(v.records, v.trials, curves_from(v.records, v.trials), metric, baseline, n_boot,
                                    seed, refs, effect)
        parts.append(ranking.assign(eval_dataset=ev.dataset, label_fraction=ev.fraction))
        spreads.append(protocol.draw_spread(v).assign(eval_dataset=ev.dataset, label_fraction=ev.fraction))
        notes += [f"{ev.name}: {n}" for n in more]
    labels, common = protocol.shared_findings(info, records)
    return ProtocolFindings(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(),
                            pd.concat(spreads, ignore_index=True) if spreads else pd.DataFrame(),
                            labels, common, protocol.protocol_seconds(records), tuple(notes))


def stacked_ranking(findings: Findings) -> pd.DataFrame:
    """ranking.csv: the primary ranking (the primary dataset at the probe's label fraction) and, with a
    protocol, one ranking per (evaluation dataset, label fraction) below it."""
    f = findings
    own = f.info.space.base.probe.label_fraction if f.info.space is not None else 1.0
    name = (f.info.protocol["targets"][0][0] if f.info.protocol else
            f.info.space.data.dataset if f.info.space is not None else "primary")
    primary = f.ranking.assign(eval_dataset=name, label_fraction=own)
    if f.protocol is None or f.protocol.rankings.empty:
        return primary
    return pd.concat([primary, f.protocol.rankings], ignore_index=True)


def _write_all(tmp: Path, findings: Findings, curves: pd.DataFrame, metric: str) -> None:
    """Every output file, into ``tmp`` (renamed into place by the caller)."""
    f, names = findings, FIGURES
    plots.plot_ranking(f.ranking, tmp / names["ranking"], f.metric_label)
    plots.plot_curves(curves, tmp / names["curves"], f.info.milestones)
    plots.plot_label_heatmap(f.per_label, tmp / names["labels"], f.metric_label.replace(" macro", ""))
    plots.plot_compute(f.trials, tmp / names["compute"], metric, f.metric_label)
    stacked = stacked_ranking(f)
    if f.protocol is not None:
        plots.plot_protocol(stacked, tmp / PROTOCOL_FIGURE, f.metric_label)
    stacked.to_csv(tmp / "ranking.csv", index=False)
    f.per_label.to_csv(tmp / "per_label.csv", index=False)
    _parquet_safe(f.trials).to_parquet(tmp / "trials.parquet", index=False)
    (tmp / "report.md").write_text(report_markdown(f, stacked))


def analyze(experiment: Path, out: Path | None = None, metric: str = "test_auroc", baseline: str = EHR_FREE,
            n_boot: int = 1000, seed: int = 0, references: bool = True, effect: float = EFFECT) -> AnalysisResult:
    """Rank the experiment's EHR variants against ``baseline`` and write the report into ``out``
    (default ``EXPERIMENT_DIR/analysis``): report.md, ranking.csv, per_label.csv, trials.parquet
    and four PNGs. ``metric``: test_auroc (image+seed bootstrap where per-image scores exist) or
    val_auroc (seed level). ``references``: compute the reference rows (mmsn.references: random init, raw
    pixels, EHR only) into EXPERIMENT_DIR/references when the sweep's cache is here; they are shown
    whenever they exist. ``effect``: the difference each comparison's seed count is worked out for
    (ranking.csv ``seeds_for_effect``). Raises MMSNError subclasses for a bad directory or argument."""
    _check_args(metric, n_boot, effect)
    experiment = Path(experiment)
    info, records, trials, notes = load_records(experiment)
    curves = curves_from(records, trials)
    refs, ref_notes = _reference_records(info, references)
    ranking, per_label, more = _compare(records, trials, curves, metric, baseline, n_boot, seed, refs, effect)
    found = _protocol(info, records, trials, metric, baseline, n_boot, seed, references, effect)
    more = ref_notes + more + list(found.notes if found else ())
    figures = {**FIGURES, **({"protocol": PROTOCOL_FIGURE} if found is not None else {})}
    findings = Findings(info, trials, ranking, per_label, tuple(notes + more), metric, METRICS[metric], baseline,
                        n_boot, seed, figures, found, effect)
    out = Path(out) if out is not None else experiment / "analysis"
    _write_atomically(out, lambda tmp: _write_all(tmp, findings, curves, metric))
    files = {**{k: out / v for k, v in figures.items()}, "ranking_csv": out / "ranking.csv",
             "per_label_csv": out / "per_label.csv", "trials_parquet": out / "trials.parquet"}
    return AnalysisResult(ranking, per_label, trials, out, out / "report.md", files, findings.notes)


def format_ranking(ranking: pd.DataFrame) -> str:
    """A compact text table of the ranking for the terminal: diff is to each arm's baseline (by default
    its EHR-free counterpart), and to vanilla MSN when the sweep compares objectives."""
    if ranking.empty:
        return "(nothing ranked yet)"
    table = pd.DataFrame({
        "#": ranking["rank"], "arm": ranking["arm"], "n": ranking["n_trials"], "epochs": ranking["epochs"],
        "mean [95% CI]": [interval(*v) for v in zip(ranking["mean"], ranking["ci_lo"], ranking["ci_hi"])],
        "diff [95% CI]": [interval(*v, spec="+.4f") for v in zip(ranking["diff"], ranking["diff_lo"],
                                                                 ranking["diff_hi"])],
        "p_holm": [num(p, ".3g") for p in ranking["p_holm"]], "verdict": ranking["verdict"],
        "MDE": [num(m, ".3f") for m in ranking["mde"]]})
    if f"{VERSUS}verdict" in ranking:
        table["vs vanilla MSN [95% CI]"] = [interval(*v, spec="+.4f") for v in zip(
            ranking[f"{VERSUS}diff"], ranking[f"{VERSUS}diff_lo"], ranking[f"{VERSUS}diff_hi"])]
        table["p_holm vs MSN"] = [num(p, ".3g") for p in ranking[f"{VERSUS}p_holm"]]
        table["verdict vs MSN"] = ranking[f"{VERSUS}verdict"]
    return table.to_string(index=False)
