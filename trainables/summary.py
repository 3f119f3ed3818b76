"""End-of-sweep summary: the best trial, the experiment path and a ranking of the EHR variants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from search_spaces.loader import Space


def trial_rows(results: Any) -> pd.DataFrame:
    """One row per trial from a Tune ResultGrid: variant, status, epochs, last val AUROC, test AUROC
    of the last milestone probed (from the trial's probes/ directory)."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        test = None
        probes = sorted((Path(result.path) / "probes").glob("epoch_*.json")) if result.path else []
        if probes:
            test = json.loads(probes[-1].read_text())["test"]["macro_auroc"]
        rows.append({"trial": Path(result.path).name if result.path else "?",
                     "variant": metrics.get("variant", "?"), "status": "ERROR" if result.error else "OK",
                     "epoch": metrics.get("epoch", 0), "val_auroc": metrics.get("val_auroc"),
                     "test_auroc": test, "trial_seconds": metrics.get("trial_seconds", 0.0)})
    return pd.DataFrame(rows)


def ranking(table: pd.DataFrame) -> pd.DataFrame:
    ok = table[table["val_auroc"].notna()]
    grouped = ok.groupby("variant").agg(trials=("trial", "count"), max_epoch=("epoch", "max"),
                                        val_auroc=("val_auroc", "mean"), test_auroc=("test_auroc", "mean"))
    return grouped.sort_values("val_auroc", ascending=False)


def print_summary(results: Any, space: Space, experiment: Path) -> None:
    table = trial_rows(results)
    errors = int((table["status"] == "ERROR").sum()) if len(table) else 0
    print(f"\n{len(table)} trials ({errors} failed) in {experiment}")
    if len(table) and table["val_auroc"].notna().any():
        best = results.get_best_result(metric=space.metric, mode=space.mode, scope="all")
        print(f"best trial: {Path(best.path).name} {best.metrics.get('variant')} "
              f"val AUROC {best.metrics.get('val_auroc'):.4f} at epoch {best.metrics.get('epoch')}")
        print("\nEHR variants ranked by mean val macro AUROC (test AUROC: last milestone reached):")
        print(ranking(table).to_string(float_format=lambda v: f"{v:.4f}"))
    print(f"\nexperiment: {experiment}\n  tensorboard --logdir {experiment}")
