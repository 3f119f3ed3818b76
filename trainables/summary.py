"""End of a sweep: the best trial, the ranking of the EHR variants (analysis/) and where things are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmsn.errors import MMSNError
from search_spaces.loader import Space


def print_summary(results: Any, space: Space, experiment: Path, analyze_it: bool = True) -> bool:
    """Print the best trial by the scheduler's metric, then run ``mmsn analyze`` on the experiment (unless not
    ``analyze_it``: a full storage). Returns whether the arms were ranked."""
    errors = sum(1 for r in results if r.error)
    print(f"\n{len(results)} trials ({errors} failed) in {experiment}")
    try:
        best = results.get_best_result(metric=space.metric, mode=space.mode, scope="all")
        print(f"best trial by {space.metric}: {Path(best.path).name} ({best.metrics.get('variant')}) "
              f"{best.metrics.get(space.metric):.4f} at epoch {best.metrics.get('epoch')}")
    except (RuntimeError, KeyError, TypeError):
        print("no trial reported a result")
        return False
    if not analyze_it:
        print(f"analysis skipped (the storage is full): run `mmsn analyze {experiment}` once there is room")
        return False
    from analysis.report import analyze, format_ranking

    try:
        result = analyze(experiment)
    except MMSNError as err:  # the sweep's results stay valid even if the analysis cannot run
        print(f"analysis skipped: {err}")
        return False
    print("\nArms ranked by test macro AUROC (diff: paired to the same setting without EHR"
          + (", and to vanilla MSN" if any(c.startswith("vs_msn_") for c in result.ranking) else "") + "):")
    print(format_ranking(result.ranking))
    if "protocol" in result.files:
        print(f"\nevaluation protocol (each dataset x label fraction ranked the same way): "
              f"{result.files['ranking_csv']} (eval_dataset, label_fraction), {result.files['protocol']}")
    print(f"\nreport: {result.report}\nexperiment: {experiment}\n  tensorboard --logdir {experiment}")
    return True
