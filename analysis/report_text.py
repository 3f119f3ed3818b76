"""The words of ``report.md``: one small function per section, all from tables already computed.

Only aggregate numbers, trial ids (Tune's, e.g. ``bf9c6_00001``), arm names and label names are
written; error messages arrive scrubbed of paths and id-like tokens (``load.error_summary``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.load import FAILED, STOPPED_EARLY, UNFINISHED, ExperimentInfo, expected_trials
from analysis.stats import (
    BASELINE,
    BETTER,
    BOOTSTRAP,
    INSUFFICIENT,
    NO_BASELINE,
    REFERENCE,
    SEEDS,
    WORSE,
    contradictions,
)


@dataclass(frozen=True)
class ProtocolFindings:
    """The evaluation protocol's part of the analysis: one ranking per (eval_dataset, label_fraction),
    stacked; each arm's standard deviation over label draws; each dataset's labels and the shared ones;
    the seconds each trial's protocol probes took."""

    rankings: pd.DataFrame
    spreads: pd.DataFrame
    labels: dict[str, list[str]]
    shared: list[str]
    seconds: pd.DataFrame
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Findings:
    """Everything the report needs; ``figures`` maps a figure's role to its file name in the report dir."""

    info: ExperimentInfo
    trials: pd.DataFrame
    ranking: pd.DataFrame
    per_label: pd.DataFrame
    notes: tuple[str, ...]
    metric: str
    metric_label: str
    baseline: str
    n_boot: int
    seed: int
    figures: dict[str, str]
    protocol: ProtocolFindings | None = None
    effect: float = 0.02  # the difference the seed counts are worked out for (mmsn analyze --effect)


def num(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def interval(value: Any, lo: Any, hi: Any, spec: str = ".4f") -> str:
    """"0.7512 [0.7401, 0.7623]", or just the value when there is no interval."""
    if isinstance(lo, float) and math.isnan(lo):
        return num(value, spec)
    return f"{num(value, spec)} [{num(lo, spec)}, {num(hi, spec)}]"


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    cells = df.astype(str).map(lambda s: s.replace("|", "\\|"))
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _header(f: Findings) -> str:
    info, t = f.info, f.trials
    counts = t["status"].value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s.replace('_', ' ')}" for s in ("completed", STOPPED_EARLY, FAILED,
                                                                             UNFINISHED))
    smoke = " (smoke run: tiny data, the numbers mean nothing)" if info.smoke else ""
    return (f"# EHR ablation analysis: {info.name}\n\n"
            f"**Question.** {info.description or '(the space file states no description)'}\n\n"
            f"- experiment: `{info.path.name}`{smoke}\n"
            f"- trials: {len(t)} ({status})\n"
            f"- search: {info.search}; scheduler: {info.scheduler} acting on {info.metric} at milestones "
            f"{', '.join(map(str, info.milestones)) or '?'}\n"
            f"- ranked by: **{f.metric_label}** at each trial's last milestone; baseline: `{f.baseline}`\n")


def _space(f: Findings) -> str:
    info = f.info
    if not info.axes:
        return "## Search space\n\n_(space.yaml not available)_\n"
    rows = pd.DataFrame([{"axis": a.key, "kind": a.kind, "values": ", ".join(map(str, a.values)),
                          "only when": "; ".join(f"{k} in {', '.join(map(str, v))}" for k, v in a.when)}
                         for a in info.axes])
    seeds = ", ".join(map(str, info.seeds)) or "?"
    return f"## Search space\n\n{md_table(rows)}\nSeeds (`train.seed`): {seeds}.\n"


def _ranking(f: Findings) -> str:
    r = f.ranking
    if r.empty:
        return ("## Ranking\n\nNo completed, stopped or running trial has reached a milestone with a value of "
                "the metric: nothing to rank (failed trials are listed below).\n")
    table = pd.DataFrame({
        "rank": r["rank"], "arm": r["arm"], "seeds": [f"{s} (n={n})" for s, n in zip(r["seeds"], r["n_trials"])],
        "epochs": r["epochs"],
        f"{f.metric_label} [95% CI]": [interval(*v) for v in zip(r["mean"], r["ci_lo"], r["ci_hi"])],
        "diff to baseline [95% CI]": [interval(*v, spec="+.4f") for v in zip(r["diff"], r["diff_lo"], r["diff_hi"])],
        "p (Holm)": [num(p, ".3g") for p in r["p_holm"]], "verdict": [power_verdict(v, m) for v, m in
                                                                     zip(r["verdict"], r["mde"])],
        "MDE (80 %)": [num(m, ".3f") for m in r["mde"]],
        f"seeds for {f.effect:+.3f}": [seeds_text(k) for k in r["seeds_for_effect"]],
        "method": [m or c for m, c in zip(r["test_method"], r["ci_method"])]})
    clashes = contradictions(r)
    check = ("Ordering check: " + ("; ".join(clashes) if clashes else "each difference has the sign of the arm's "
                                   "mean minus its baseline's") + ".")
    return (f"## Ranking\n\nArms whose trials all reached the last milestone come first, sorted by mean "
            f"{f.metric_label} over seeds at it; arms stopped earlier follow, sorted by their mean at the epoch they "
            f"reached (see *epochs*), so means taken at different epochs are never interleaved. Differences are to "
            f"{_baseline_words(f.baseline)}, paired at the latest milestone both reached. {check} {_agreement(f)}"
            f"\n\n{md_table(table)}\n\n{POWER_NOTE}\n")


def power_verdict(verdict: str, mde: float) -> str:
    """A "no evidence" verdict says what the comparison could have found: "no evidence: below the detectable
    effect of X" (its MDE at 80 % power)."""
    if verdict == "no evidence" and isinstance(mde, float) and not math.isnan(mde):
        return f"no evidence: below the detectable effect of {mde:.3f}"
    return verdict


def seeds_text(k: float) -> str:
    if isinstance(k, float) and math.isnan(k):
        return "- (one seed)"
    return "more test images" if k == math.inf else str(int(k))


POWER_NOTE = ("*MDE (80 %)*: the smallest true difference each comparison would detect with 80 % power at the "
              "level Holm's first step holds it to (alpha over the number of comparisons), from the spread of its "
              "paired bootstrap (images and seeds resampled): a verdict of *no evidence* means no difference of that "
              "size or more, not no difference. *seeds for* the stated effect: the seeds per arm the comparison would "
              "need to detect it (the seed part of the spread shrinks with more seeds; \"more test images\" when the "
              "test set alone is too small).")


def val_test_agreement(trials: pd.DataFrame) -> tuple[float, int]:
    """Spearman correlation between the arms' mean val and mean test macro AUROC at each trial's last
    milestone (how far the scheduler's view, val, ranks the arms as the test split does), and the count."""
    from scipy.stats import spearmanr

    ranked = trials[trials["status"] != "failed"].dropna(subset=["val_auroc", "test_auroc"])
    means = ranked.groupby("arm")[["val_auroc", "test_auroc"]].mean()
    if len(means) < 3:
        return math.nan, len(means)
    return float(spearmanr(means["val_auroc"], means["test_auroc"])[0]), len(means)


def _agreement(f: Findings) -> str:
    rho, n = val_test_agreement(f.trials)
    if math.isnan(rho):
        return f"Val-vs-test agreement: too few arms ({n}) for a rank correlation."
    return (f"Val-vs-test agreement of the arms (what the scheduler saw against the test split): Spearman rho = "
            f"{rho:.2f} over {n} arms.")


def _baseline_words(baseline: str) -> str:
    if baseline == "ehr=none":
        return ("the same setting without EHR input or target (`ehr=none`: mrm_ehr against mae, msn_supcon "
                "against msn, supcon_ehr against SupCon with each image its own class)")
    return f"the baseline `{baseline}` of the same setting"


VERSUS = "vs_msn_"  # prefix of the objectives-vs-vanilla-MSN columns of the ranking (analysis.report)


def _arm_list(arms: Sequence[str]) -> str:
    """Arms in code type: an arm may be called `none` (fusion none), which must not read as "no arm"."""
    return ", ".join(f"`{a}`" for a in arms) or "no arm"


def _tested(r: pd.DataFrame, prefix: str, verdict: str) -> str:
    return _arm_list(r.loc[r[f"{prefix}verdict"] == verdict, "arm"].tolist())


def _two_questions(f: Findings) -> str:
    """Each arm against its own EHR-free counterpart and against vanilla MSN, one row per arm."""
    r = f.ranking[f.ranking["verdict"] != REFERENCE]
    if r.empty or f"{VERSUS}verdict" not in r:
        return ""
    table = pd.DataFrame({
        "arm": r["arm"], f"{f.metric_label} [95% CI]": [interval(*v) for v in zip(r["mean"], r["ci_lo"], r["ci_hi"])],
        "without EHR": [b if b != a else "(itself)" for a, b in zip(r["arm"], r["baseline"].fillna("-"))],
        "EHR's effect [95% CI]": [interval(*v, spec="+.4f") for v in zip(r["diff"], r["diff_lo"], r["diff_hi"])],
        "p (Holm)": [num(p, ".3g") for p in r["p_holm"]], "verdict": r["verdict"],
        "vs vanilla MSN [95% CI]": [interval(*v, spec="+.4f") for v in zip(
            r[f"{VERSUS}diff"], r[f"{VERSUS}diff_lo"], r[f"{VERSUS}diff_hi"])],
        "p (Holm) vs MSN": [num(p, ".3g") for p in r[f"{VERSUS}p_holm"]], "verdict vs MSN": r[f"{VERSUS}verdict"]})
    return ("## Two questions side by side\n\n"
            "**Does each objective's use of the EHR help it?** Each arm against the same setting without EHR "
            "input or target (mrm_ehr against mae, msn_supcon against msn, supcon_ehr against SupCon with each "
            "image its own class, a fused arm against the same objective unfused). **Is any objective better "
            "than vanilla MSN?** Each arm against MSN without EHR. Paired over seeds on the same test images; "
            "Holm's correction runs within each question.\n\n"
            f"- EHR helps: {_tested(r, '', BETTER)}; EHR hurts: {_tested(r, '', WORSE)}.\n"
            f"- Better than vanilla MSN: {_tested(r, VERSUS, BETTER)}; worse: {_tested(r, VERSUS, WORSE)}.\n\n"
            + md_table(table))


# column prefix -> the reference each arm is tested against (analysis.report computes, this section shows)
REFERENCE_FAMILIES = (("vs_pixels_", "raw pixels"), ("vs_random_", "random init"))


def _references(f: Findings) -> str:
    """Where each arm stands against what needs no pretraining, on the same test images."""
    r = f.ranking
    refs = r[r["verdict"] == REFERENCE]
    if r.empty:
        return ""
    if refs.empty:
        return ("## Against the references\n\nNo reference rows (random init, raw pixels, EHR only) were "
                "computed for this experiment: see the notes below.\n")
    shown = [(p, name) for p, name in REFERENCE_FAMILIES if f"{p}verdict" in r]
    arms = r[r["verdict"] != REFERENCE]
    table = pd.DataFrame({"arm": arms["arm"], f"{f.metric_label} [95% CI]": [
        interval(*v) for v in zip(arms["mean"], arms["ci_lo"], arms["ci_hi"])]})
    for prefix, name in shown:
        table[f"vs {name} [95% CI]"] = [interval(*v, spec="+.4f") for v in zip(
            arms[f"{prefix}diff"], arms[f"{prefix}diff_lo"], arms[f"{prefix}diff_hi"])]
        table[f"p (Holm) vs {name}"] = [num(p, ".3g") for p in arms[f"{prefix}p_holm"]]
        table[f"verdict vs {name}"] = arms[f"{prefix}verdict"]
    values = "; ".join(f"**{row.arm}** {interval(row.mean, row.ci_lo, row.ci_hi)}" for row in refs.itertuples())
    beats = "".join(f"\n- Better than {name}: {_tested(arms, p, BETTER)}; worse: {_tested(arms, p, WORSE)}."
                    for p, name in shown)
    return ("## Against the references\n\nA representation is only worth ranking if its probe beats what needs no "
            "pretraining. On the same test images, with the same bootstrap (mmsn.references): random init = the "
            "same architecture untrained, raw pixels = the probe on the image pooled to 16 x 16, EHR only = the "
            f"probe on every EHR column and no image. {values}.\n{beats}\n\n" + md_table(table))


def _how(row: Any) -> str:
    pairing = (f"paired over {row.n_pairs} seed(s)" if row.paired
               else f"unpaired, {row.n_trials} trial(s) vs the baseline's")
    method = "image+seed bootstrap" if row.test_method == BOOTSTRAP else "seed-level t statistics"
    return f"{pairing}, at epoch {row.compared_at_epoch}, {method}"


def _verdict_sentence(row: Any, metric_label: str) -> str:
    d = f"{num(row.diff, '+.4f')} {metric_label}"
    ci = "" if math.isnan(row.diff_lo) else f" (95 % CI {num(row.diff_lo, '+.4f')} to {num(row.diff_hi, '+.4f')})"
    p = f"Holm-adjusted p = {num(row.p_holm, '.3g')}"
    if row.verdict == BASELINE:
        return f"- **{row.arm}** is the baseline ({interval(row.mean, row.ci_lo, row.ci_hi)})."
    if row.verdict == REFERENCE:
        return f"- **{row.arm}** is a reference ({interval(row.mean, row.ci_lo, row.ci_hi)}; see above)."
    if row.verdict == NO_BASELINE:
        return f"- **{row.arm}**: no usable baseline trial in its setting, so it is not tested."
    if row.verdict == INSUFFICIENT and not row.compared_at_epoch:
        return f"- **{row.arm}** vs **{row.baseline}**: not tested, no milestone reached by both."
    if row.verdict == INSUFFICIENT:
        return (f"- **{row.arm}** vs **{row.baseline}**: insufficient data to test (difference {d} at epoch "
                f"{row.compared_at_epoch}; a t-test needs two seeds when per-image scores are missing).")
    if row.verdict in (BETTER, WORSE):
        return f"- **{row.arm}** is **{row.verdict}** than **{row.baseline}**: {d}{ci}, {p}; {_how(row)}."
    power = "" if math.isnan(row.mde) else f" It is below the detectable effect of {row.mde:.3f} (80 % power)"
    more = "" if math.isnan(row.seeds_for_effect) else (
        "; more test images, not seeds, would be needed to detect the stated effect" if row.seeds_for_effect == math.inf
        else f"; {int(row.seeds_for_effect)} seed(s) per arm would detect the stated effect")
    return (f"- **{row.arm}**: no evidence of a difference from **{row.baseline}**: {d}{ci}, {p}; "
            f"{_how(row)}.{power}{more}{'.' if power else ''}")


def _verdicts(f: Findings) -> str:
    if f.ranking.empty:
        return ""
    lines = [_verdict_sentence(row, f.metric_label) for row in f.ranking.itertuples()]
    better = f.ranking.loc[f.ranking["verdict"] == BETTER, "arm"].tolist()
    worse = f.ranking.loc[f.ranking["verdict"] == WORSE, "arm"].tolist()
    tested = f.ranking["p_holm"].notna().any()
    summary = (f"Better than their baseline (Holm-adjusted p < 0.05): {_arm_list(better)}. "
               f"Worse: {_arm_list(worse)}." if tested
               else "No comparison could be tested yet (see below for why).")
    return "## Verdicts\n\n" + summary + "\n\n" + "\n".join(lines) + "\n"


def _figures(f: Findings) -> str:
    captions = {
        "ranking": "Ranking with 95 % CIs (colour: verdict; dashed: the baseline's mean).",
        "curves": "Probe val AUROC per milestone, as the scheduler saw it (x: stopped early).",
        "labels": "Per-label differences to the baseline (blue better, red worse; * CI excludes 0, uncorrected).",
        "compute": "Metric vs compute per trial with the Pareto front.",
        "protocol": "Evaluation protocol: metric against the fraction of train labels (log x), one panel per dataset.",
    }
    parts = [f"### {captions[k]}\n\n![{k}]({name})\n" for k, name in f.figures.items()]
    return "## Figures\n\n" + "\n".join(parts)


def _labels(f: Findings) -> str:
    pl = f.per_label.dropna(subset=["diff"])
    if pl.empty:
        return ""
    lines = []
    for arm, g in pl.groupby("arm", sort=False):
        sig = g["lo"].notna()
        helps = g[sig & (g["lo"] > 0)].sort_values("diff", ascending=False)
        hurts = g[sig & (g["hi"] < 0)].sort_values("diff")
        words = [f"helps {', '.join(f'{r.label} ({r.diff:+.3f})' for r in helps.itertuples())}" if len(helps) else "",
                 f"hurts {', '.join(f'{r.label} ({r.diff:+.3f})' for r in hurts.itertuples())}" if len(hurts) else ""]
        top = g.loc[g["diff"].abs().idxmax()]
        said = "; ".join(w for w in words if w) or (
            "no label's CI excludes 0" if sig.any() else
            f"largest per-label change {top['label']} ({top['diff']:+.3f}; no CI without per-image scores)")
        lines.append(f"- **{arm}** vs {g['baseline'].iloc[0]}: {said}")
    return ("## Which findings each variant helps or hurts\n\nPer-label differences whose 95 % CI excludes 0 "
            "(exploratory: not corrected for the number of labels); see `per_label.csv` for all.\n\n"
            + "\n".join(lines) + "\n")


def _trial_list(t: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"trial": t["trial"], "arm": t["arm"], "seed": [num(s, ".0f") for s in t["seed"]],
                         "epoch reached": t["epoch"], "reason": t["stop_reason"]})


def _stopped(f: Findings) -> str:
    t = f.trials[f.trials["status"] == STOPPED_EARLY]
    intro = ("The scheduler stops trials whose val AUROC trails at a milestone; they are ranked at the epoch "
             "where they stopped, and compared with their baseline at that epoch.\n\n")
    return "## Stopped early\n\n" + (intro + md_table(_trial_list(t)) if len(t) else "No trial was stopped early.\n")


def _compute(f: Findings) -> str:
    t = f.trials
    columns = {"trials": ("trial", "count"), "trial_seconds": ("trial_seconds", "sum"),
               "gpu_seconds": ("gpu_seconds", "sum")}
    if f.protocol is not None:  # the protocol's probes, part of the trial-seconds of the trials that ran it
        t = t.merge(f.protocol.seconds, on="trial", how="left")
        columns["protocol_seconds"] = ("protocol_seconds", "sum")
    by_arm = t.groupby("arm").agg(**columns).reset_index()
    for column in columns:
        if column != "trials":
            by_arm[column] = by_arm[column].map(lambda v: num(v, ".0f"))
    total, gpu = t["trial_seconds"].sum(), t["gpu_seconds"].sum()
    return ("## Compute spent\n\n"
            f"{num(total, '.0f')} trial-seconds in all ({total / 3600:.2f} h; pretraining + probes to each trial's "
            f"last milestone), {num(gpu, '.0f')} GPU-seconds. Work after a failed or stopped trial's last milestone "
            "is not recorded.\n\n" + md_table(by_arm))


def _missing(f: Findings) -> str:
    t, r, info = f.trials, f.ranking, f.info
    lines = [f"- {note}" for note in f.notes]
    expected = expected_trials(info)
    if expected is not None and expected != len(t):
        lines.append(f"- the grid has {expected} trials; {len(t)} were found")
    if info.seeds and not r.empty:
        for row in r[r["verdict"] != REFERENCE].itertuples():
            have = {int(s) for s in str(row.seeds).split(",") if s}
            lacking = [s for s in info.seeds if s not in have]
            if lacking:
                lines.append(f"- {row.arm}: no ranked trial for seed(s) {', '.join(map(str, lacking))}")
    failed, unfinished = t[t["status"] == FAILED], t[t["status"] == UNFINISHED]
    text = "## Missing, failed and unfinished\n\n" + ("\n".join(lines) + "\n\n" if lines else "")
    text += "**Failed** (not ranked; the last line of each error, paths and ids removed):\n\n"
    text += md_table(_trial_list(failed)) + "\n"
    text += "**Unfinished** (ranked provisionally at the last milestone reached):\n\n"
    return text + md_table(_trial_list(unfinished))


def method_text(n_boot: int, seed: int, methods: set[str]) -> str:
    """The statistical method in words, for the methods actually used."""
    parts = ["## Statistical method",
             "Macro AUROC is the mean over labels with both classes present in the test set of each label's "
             "AUROC (Mann-Whitney U, ties counted one half), from the trial's linear probe at a milestone."]
    if BOOTSTRAP in methods:
        parts.append(
            f"**Image + seed bootstrap** (B = {n_boot}, seed {seed}). Every trial scores the same test images in "
            "the same order, so each bootstrap draw resamples the test images once, with replacement, for all "
            "trials, and also resamples each arm's seeds with replacement. An arm's value is the mean over its "
            "seeds; its 95 % CI is the 2.5-97.5 percentile of the draws, so it pools test-set sampling and "
            "seed-to-seed variation (with one seed it reflects test-set sampling only). The difference to the "
            "baseline is paired: per draw, the mean over the resampled common seeds of (variant - baseline) AUROC "
            "on the same resampled images, at the latest milestone both trials reached. Its two-sided p-value is "
            "2 min(P(d <= 0), P(d >= 0)) over the draws, floored at 1/(B+1). Arms without one trial per seed "
            "are compared unpaired (trials of each side resampled independently). With several seeds this is "
            "conservative: seed-to-seed spread that is itself test-set noise is counted by both resamplings "
            "(in null simulations it flagged no false differences with 3 seeds, about 2.5 % per direction "
            "with one seed).")
    if SEEDS in methods:
        parts.append(
            "**Seed-level fallback** (arms without per-image scores, or the val metric, whose per-image scores "
            "are not saved): the reported macro AUROCs are averaged over seeds with a t interval; the difference "
            "to the baseline uses a paired t-test over common seeds (Welch's t-test when unpaired). With a single "
            "seed there is no test: the verdict is \"insufficient data\".")
    parts.append(
        "p-values of all variant-vs-baseline comparisons are adjusted with Holm's step-down method. Verdict: "
        "**better** if the adjusted p < 0.05 and the difference is positive, **worse** if adjusted p < 0.05 and "
        "negative, otherwise **no evidence** (not proof of equality). Per-label differences use the same draws; "
        "their CIs are not corrected for multiplicity. Failed trials are excluded from the ranking and listed above.")
    return "\n\n".join(parts) + "\n"


def _cells(r: pd.DataFrame, spreads: pd.DataFrame) -> pd.DataFrame:
    """Long table -> one row per arm, one column per (dataset @ fraction): mean [CI] (sd over draws) and
    the difference to the baseline with its verdict."""
    sd = spreads.set_index(["arm", "eval_dataset", "label_fraction"])["draw_sd"] if not spreads.empty else {}
    cells = []
    for row in r.itertuples():
        spread = sd.get((row.arm, row.eval_dataset, row.label_fraction), math.nan) if len(sd) else math.nan
        value = interval(row.mean, row.ci_lo, row.ci_hi, ".3f") + ("" if pd.isna(spread) else f" sd {spread:.3f}")
        versus = "" if pd.isna(row.diff) else f"; {num(row.diff, '+.3f')} {row.verdict}"
        cells.append({"arm": row.arm, "column": f"{row.eval_dataset} @ {row.label_fraction:g}",
                      "cell": value + versus})
    table = pd.DataFrame(cells).pivot(index="arm", columns="column", values="cell").fillna("-")
    return table.reset_index()


def _protocol(f: Findings, stacked: pd.DataFrame | None) -> str:
    p, info = f.protocol, f.info
    if p is None or stacked is None or info.protocol is None:
        return ""
    targets = [k for k, _ in info.protocol["targets"]]
    fractions = ", ".join(f"{x:g}" for x in info.protocol["fractions"])
    label_sets = "; ".join(f"{k}: {len(v)} findings" for k, v in p.labels.items())
    same = len({tuple(v) for v in p.labels.values()}) <= 1
    shared = ("every dataset has the same findings" if same else
              f"shared findings ({len(p.shared)}): {', '.join(p.shared)}; macro AUROCs over other label sets are "
              "compared within a dataset, never across")
    seconds, trial_s = p.seconds["protocol_seconds"], f.trials.set_index("trial")["trial_seconds"]
    share = seconds.sum() / trial_s.reindex(p.seconds["trial"]).sum() if len(seconds) else math.nan
    cost = (f"The protocol's probes took {num(seconds.mean(), '.1f')} s per trial on average "
            f"({num(100 * share, '.1f')} % of those trials' seconds)." if len(seconds) else "")
    return ("## Evaluation protocol: other datasets, fewer labels\n\n"
            f"Each trial's frozen encoder (after its last milestone) was probed on {', '.join(targets)} with "
            f"{fractions} of each dataset's train labels (whole patients; {info.protocol['draws']} seeded draws "
            "below 1, the same draws for every arm and reference, paired draw by draw like seeds). Each dataset "
            f"keeps its own labels and its own split ({label_sets}; {shared}). A label with no positive among a "
            "draw's train images is missing, not 0.5. Cells: mean over seeds and draws [95 % CI], the standard "
            "deviation over draws (sd), and the difference to the baseline with its verdict (Holm within each "
            f"column). The primary dataset at the probe's own fraction is the ranking above. {cost}\n\n"
            + md_table(_cells(stacked, p.spreads)))


def _rankme_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per arm: mean RankMe at each trial's last milestone, its encoder's before training, and val AUROC."""
    ranked = trials[trials["status"] != "failed"].dropna(subset=["rankme"])
    group = ["objective.name", "arm"] if "objective.name" in ranked else ["arm"]
    return ranked.groupby(group, dropna=False)[["rankme", "rankme_untrained", "val_auroc"]].mean().reset_index()


def _rankme(f: Findings) -> str:
    """RankMe beside the probe: each arm's value, its collapse floor, and how well it ranks arms like val AUROC."""
    if "rankme" not in f.trials or f.trials["rankme"].isna().all():
        return ""
    from analysis.stats import rank_agreement
    from mmsn.metrics import collapsing

    arms = _rankme_table(f.trials)
    collapsed = arms[[collapsing(r, u) for r, u in zip(arms["rankme"], arms["rankme_untrained"])]]
    table = pd.DataFrame({"arm": arms["arm"], "RankMe": [num(v, ".2f") for v in arms["rankme"]],
                          "untrained": [num(v, ".2f") for v in arms["rankme_untrained"]],
                          "val AUROC": [num(v) for v in arms["val_auroc"]],
                          "collapse?": ["yes" if collapsing(r, u) else "" for r, u in
                                        zip(arms["rankme"], arms["rankme_untrained"])]})
    groups = [("all arms", arms)]
    if "objective.name" in arms and arms["objective.name"].nunique() > 1:
        groups += [(f"objective {name}", part) for name, part in arms.groupby("objective.name") if len(part) >= 3]
    lines = []
    for name, part in groups:
        a = rank_agreement(part["rankme"], part["val_auroc"], n_boot=f.n_boot, seed=f.seed)
        if math.isnan(a["spearman"]):
            lines.append(f"- {name}: too few arms ({int(a['n'])}) for a rank correlation")
            continue
        rho = interval(a["spearman"], a["spearman_lo"], a["spearman_hi"], ".2f")
        tau = interval(a["kendall"], a["kendall_lo"], a["kendall_hi"], ".2f")
        lines.append(f"- {name} ({int(a['n'])} arms): Spearman rho {rho}, Kendall tau {tau} (95 % CIs over arms)")
    alarm = (f"**{len(collapsed)} arm(s) below their untrained encoder's RankMe** (collapsing?): "
             f"{_arm_list(collapsed['arm'].tolist())}." if len(collapsed) else "No arm fell below its untrained "
             "encoder's RankMe.")
    return ("## RankMe (label-free)\n\nRankMe is the effective rank of the val features the probe extracted at "
            "each milestone (Garrido et al., ICML 2023): no labels, no extra forward pass. It is meant for comparing "
            "runs of one method. A trial whose RankMe falls below 95 % of its own encoder's before training is losing "
            f"dimensions it started with. {alarm}\n\nAgreement with the probe's val AUROC across arms:\n\n"
            + "\n".join(lines) + "\n\n" + md_table(table) + "\n")


def _racing(f: Findings) -> str:
    """Racing's decisions (EXPERIMENT_DIR/halving/state.json): per rung, each arm's lag behind the leader with
    its one-sided p, Holm-adjusted, and whether it was stopped."""
    if f.info.scheduler != "racing":
        return ""
    import json

    try:
        decided = json.loads((f.info.path / "halving" / "state.json").read_text()).get("decided", {})
    except (OSError, ValueError):
        return "## Racing decisions\n\nNo decision was recorded (halving/state.json missing).\n"
    rows = [{"rung (epoch)": rung, "leader": d.get("leader", "-"), "arm": arm,
             "lag behind the leader (val AUROC)": num(t["difference"], "+.4f"), "p (one-sided)": num(t["p"], ".3g"),
             "p (Holm)": num(t["p_holm"], ".3g"), "stopped": "yes" if t["stopped"] else "no"}
            for rung, d in sorted(decided.items(), key=lambda kv: int(kv[0])) for arm, t in d.get("tests", {}).items()]
    text = ("## Racing decisions\n\nAt each rung an arm is stopped only when the val images show it behind the "
            "rung's leader: its lag (the leader's val macro AUROC minus its own, paired over images and the seeds "
            "both ran, bootstrapped) tested one-sided and Holm-corrected over the arms compared, at most (1 - 1/rf) "
            "of the arms per rung.\n\n")
    return text + (md_table(pd.DataFrame(rows)) if rows else "No rung was decided yet.") + "\n"


def report_markdown(f: Findings, stacked: pd.DataFrame | None = None) -> str:
    """The report; ``stacked``: ranking.csv's rows (the primary ranking and the protocol's)."""
    methods = set(f.ranking["test_method"]) | set(f.ranking["ci_method"]) if not f.ranking.empty else set()
    sections = [_header(f), _space(f), _ranking(f), _two_questions(f), _references(f), _rankme(f), _racing(f),
                _protocol(f, stacked), _verdicts(f), _figures(f), _labels(f), _stopped(f), _compute(f), _missing(f),
                method_text(f.n_boot, f.seed, methods)]
    return "\n".join(s for s in sections if s)
