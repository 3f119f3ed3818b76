"""The report's figures, each readable on its own (title, axis labels, legend).

Figures are drawn on ``matplotlib.figure.Figure`` objects and saved with the Agg renderer, never
through pyplot: nothing global changes, so a notebook importing this keeps its own backend, and no
display is needed on a cluster node.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from analysis.load import COMPLETED, FAILED, STOPPED_EARLY, UNFINISHED
from analysis.stats import BASELINE, BETTER, INSUFFICIENT, NO_BASELINE, NO_EVIDENCE, REFERENCE, WORSE

VERDICT_STYLE = {  # verdict -> (colour, marker, legend text)
    BETTER: ("#1a9850", "o", "better than baseline"),
    WORSE: ("#d73027", "o", "worse than baseline"),
    NO_EVIDENCE: ("#4d4d4d", "o", "no evidence of a difference"),
    BASELINE: ("#2166ac", "D", "baseline"),
    INSUFFICIENT: ("#bababa", "s", "insufficient data"),
    NO_BASELINE: ("#9970ab", "s", "no baseline to compare with"),
    REFERENCE: ("#e08214", "^", "reference (random init, raw pixels, EHR only)"),
}
END_MARKER = {COMPLETED: ("o", "completed"), STOPPED_EARLY: ("x", "stopped early by the scheduler"),
              FAILED: ("v", "failed"), UNFINISHED: (">", "still running / unfinished")}


def arm_colors(arms: Sequence[str]) -> dict[str, tuple[float, float, float, float]]:
    """A stable colour per arm (sorted names), distinct up to 20 arms, then sampled from a colormap."""
    names = sorted(set(arms))
    if len(names) <= 20:  # qualitative maps take integer indices
        cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
        return {name: cmap(i) for i, name in enumerate(names)}
    cmap = matplotlib.colormaps["turbo"]
    return {name: cmap(float(p)) for name, p in zip(names, np.linspace(0.05, 0.95, len(names)))}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _message(path: Path, title: str, text: str) -> Path:
    """A figure that says why there is nothing to draw (so the report's links never break)."""
    fig = Figure(figsize=(7, 2.5))
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return _save(fig, path)


def plot_ranking(ranking: pd.DataFrame, path: Path, metric_label: str) -> Path:
    """Horizontal 95 % CIs of each arm's mean, best at the top, coloured by verdict; a dashed line
    at the baseline's mean."""
    rows = ranking.dropna(subset=["mean"])
    title = f"EHR variants ranked by {metric_label} (mean over seeds, 95 % CI)"
    if rows.empty:
        return _message(path, title, "no trial reached a milestone: nothing to rank")
    fig = Figure(figsize=(8.5, 1.4 + 0.42 * len(rows)))
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]  # best on top
    for yi, row in zip(y, rows.itertuples()):
        colour, marker, _ = VERDICT_STYLE.get(row.verdict, VERDICT_STYLE[NO_EVIDENCE])
        err = np.array([[row.mean - row.ci_lo], [row.ci_hi - row.mean]])
        ax.errorbar(row.mean, yi, xerr=None if np.isnan(err).any() else err, fmt=marker, color=colour,
                    ecolor=colour, capsize=4, markersize=7)
    for base in rows.loc[rows["verdict"] == BASELINE, "mean"]:
        ax.axvline(base, color=VERDICT_STYLE[BASELINE][0], linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{a} (baseline)" if v == BASELINE else a for a, v in zip(rows["arm"], rows["verdict"])])
    no_ci = rows["ci_lo"].isna().any()
    ax.set_xlabel(f"{metric_label} (mean over seeds)" + ("; no bar: no CI (one seed and no per-image scores)"
                                                         if no_ci else ""))
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.08)
    present = [v for v in VERDICT_STYLE if v in set(rows["verdict"])]
    handles = [Line2D([], [], color=VERDICT_STYLE[v][0], marker=VERDICT_STYLE[v][1], linestyle="",
                      label=VERDICT_STYLE[v][2] + (" (dashed: its mean)" if v == BASELINE else "")) for v in present]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small",
              title="verdict (Holm-adjusted)")
    return _save(fig, path)


def plot_curves(curves: pd.DataFrame, path: Path, milestones: Sequence[int] = ()) -> Path:
    """Probe val macro AUROC per milestone for every trial, coloured by arm; the last point's
    marker says how the trial ended (x: stopped early by the scheduler)."""
    title = "Probe val macro AUROC per milestone (what the scheduler saw)"
    data = curves.dropna(subset=["val_auroc"])
    if data.empty:
        return _message(path, title, "no trial has reported a milestone yet")
    colours = arm_colors(data["arm"].tolist())
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for _, trial in data.sort_values("epoch").groupby("trial"):
        colour = colours[trial["arm"].iloc[0]]
        ax.plot(trial["epoch"], trial["val_auroc"], color=colour, marker=".", alpha=0.8, linewidth=1.2)
        marker, _ = END_MARKER.get(trial["status"].iloc[-1], ("o", ""))
        ax.plot(trial["epoch"].iloc[-1], trial["val_auroc"].iloc[-1], color=colour, marker=marker,
                markersize=10, markeredgewidth=2, linestyle="")
    handles = [Line2D([], [], color=c, linewidth=2, label=a) for a, c in colours.items()]
    handles += [Line2D([], [], color="black", marker=m, linestyle="", markersize=8, label=f"last point: {text}")
                for status, (m, text) in END_MARKER.items() if status in set(data["status"])]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", title="arm")
    if milestones:
        ax.set_xticks(list(milestones))
    ax.set_xlabel("epoch (milestones: a linear probe ran and Tune got its val AUROC)")
    ax.set_ylabel("val macro AUROC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_label_heatmap(per_label: pd.DataFrame, path: Path, metric_label: str) -> Path:
    """Arms x labels: difference to the baseline (diverging colours centred at 0; * = 95 % CI
    excludes 0, not corrected for multiplicity)."""
    title = f"Per-label {metric_label} difference to the baseline"
    data = per_label.dropna(subset=["diff"])
    if data.empty:
        return _message(path, title, "no variant could be compared with a baseline")
    diff = data.pivot_table(index="arm", columns="label", values="diff", aggfunc="first", sort=False)
    sig = data.assign(sig=((data["lo"] > 0) | (data["hi"] < 0)).astype(float)).pivot_table(
        index="arm", columns="label", values="sig", aggfunc="first", sort=False).reindex_like(diff)
    extent = float(np.nanmax(np.abs(diff.to_numpy()))) or 1e-3
    fig = Figure(figsize=(1.6 + 0.75 * diff.shape[1], 1.8 + 0.45 * diff.shape[0]))
    ax = fig.subplots()
    image = ax.imshow(diff.to_numpy(float), cmap="RdBu", aspect="auto",
                      norm=TwoSlopeNorm(vcenter=0.0, vmin=-extent, vmax=extent))
    if diff.size <= 400:  # numbers stay legible up to about 20 x 20 cells
        for (i, j), value in np.ndenumerate(diff.to_numpy(float)):
            if not np.isnan(value):
                star = "*" if sig.iloc[i, j] == 1 else ""  # NaN (no CI) compares False
                ax.text(j, i, f"{value:+.3f}{star}", ha="center", va="center", fontsize=7,
                        color="white" if abs(value) > 0.6 * extent else "black")
    ax.set_xticks(range(diff.shape[1]), diff.columns, rotation=45, ha="right")
    ax.set_yticks(range(diff.shape[0]), diff.index)
    ax.set_xlabel("finding (label)")
    ax.set_ylabel("arm (vs its baseline)")
    ax.set_title(title + "\n(blue: variant better, red: worse; * 95 % CI excludes 0, uncorrected)", fontsize=10)
    fig.colorbar(image, ax=ax, label="variant AUROC - baseline AUROC")
    return _save(fig, path)


def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both axes (cost no higher and value no lower,
    one strictly), ordered by cost: the best value reachable for each compute budget."""
    order = np.lexsort((-value, cost))  # by cost, then best value first
    front, best = [], -np.inf
    for i in order:
        if value[i] > best:
            front.append(i)
            best = value[i]
    return np.array(front, dtype=int)


def plot_compute(trials: pd.DataFrame, path: Path, metric: str, metric_label: str) -> Path:
    """Each trial's metric at its last milestone against its compute, with the Pareto front."""
    title = f"{metric_label} vs compute per trial (dashed: Pareto front of trials that did not fail)"
    data = trials.dropna(subset=[metric, "trial_seconds"])
    if data.empty:
        return _message(path, title, "no trial has both a metric and its compute recorded")
    colours = arm_colors(trials["arm"].tolist())
    fig = Figure(figsize=(9, 5))
    ax = fig.subplots()
    for status, (marker, _) in END_MARKER.items():
        part = data[data["status"] == status]
        ax.scatter(part["trial_seconds"], part[metric], c=[colours[a] for a in part["arm"]], marker=marker, s=50)
    ok = data[data["status"] != FAILED]  # a failed trial is no option to choose, whatever it scored
    cost, value = ok["trial_seconds"].to_numpy(float), ok[metric].to_numpy(float)
    front = pareto_front(cost, value)
    ax.step(cost[front], value[front], where="post", color="black", linewidth=1, linestyle="--")
    middle = (cost.min() + cost.max()) / 2 if len(cost) else 0.0
    for i in front:  # labels point inwards so they stay inside the axes
        right = cost[i] > middle
        ax.annotate(ok["arm"].iloc[i], (cost[i], value[i]), textcoords="offset points", fontsize=7,
                    xytext=(-6, 6) if right else (6, 6), ha="right" if right else "left")
    ax.margins(x=0.08, y=0.08)
    spread = data["trial_seconds"].to_numpy(float)
    if spread.min() > 0 and spread.max() / spread.min() > 20:
        ax.set_xscale("log")
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=a) for a, c in colours.items()
               if a in set(data["arm"])]
    handles += [Line2D([], [], color="black", marker=m, linestyle="", label=t) for s, (m, t) in END_MARKER.items()
                if s in set(data["status"])]
    handles.append(Line2D([], [], color="black", linestyle="--", label="Pareto front"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    ax.set_xlabel("trial seconds (pretraining + probes, cumulative to the last milestone)")
    ax.set_ylabel(f"{metric_label} at the last milestone reached")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


REFERENCE_LINES = {"raw pixels": "--", "random init": ":", "EHR only": "-.", "supervised": (0, (5, 1, 1, 1))}


def plot_protocol(ranking: pd.DataFrame, path: Path, metric_label: str) -> Path:
    """The evaluation protocol: each arm's mean (95 % CI) against the label fraction (log x), one panel per
    evaluation dataset; reference rows dashed and grey."""
    rows = ranking.dropna(subset=["mean"])
    title = f"{metric_label} against the fraction of train labels, per evaluation dataset"
    if rows.empty or "eval_dataset" not in rows:
        return _message(path, title, "no protocol result yet: nothing to plot")
    datasets = list(dict.fromkeys(rows["eval_dataset"]))
    arms = sorted(set(rows.loc[rows["verdict"] != REFERENCE, "arm"]))
    colours = arm_colors(arms)
    fig = Figure(figsize=(4.6 * len(datasets) + 2.6, 4.2))
    axes = fig.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets):
        part = rows[rows["eval_dataset"] == dataset]
        for arm, line in part.groupby("arm"):
            line = line.sort_values("label_fraction")
            reference = (line["verdict"] == REFERENCE).all()
            err = np.vstack([line["mean"] - line["ci_lo"], line["ci_hi"] - line["mean"]])
            style = ({"color": "#7f7f7f", "linestyle": REFERENCE_LINES.get(arm, "--"), "marker": "^"}
                     if reference else {"color": colours[arm], "linestyle": "-", "marker": "o"})
            ax.errorbar(line["label_fraction"], line["mean"], yerr=None if np.isnan(err).any() else err,
                        capsize=3, label=arm, **style)
        ax.set_xscale("log")
        fractions = sorted(set(part["label_fraction"]))
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.set_xlabel("fraction of train labels (whole patients; log scale)")
        ax.set_ylabel(f"{metric_label} (mean, 95 % CI)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    handles, names = axes[-1].get_legend_handles_labels()
    axes[-1].legend(handles, names, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small",
                    title="arm (grey: reference)")
    fig.suptitle(title)
    return _save(fig, path)
