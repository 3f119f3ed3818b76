"""analysis: read finished (or running) sweeps, rank EHR variants, test them, draw and report.

``analyze(EXPERIMENT_DIR)`` writes ``EXPERIMENT_DIR/analysis/report.md``; ``load_trials``,
``load_curves`` and ``load_scores`` give the tables and arrays for a notebook; ``analysis.stats``
holds the statistics as pure functions. Never imports ray or optuna.

Names are imported lazily, so ``mmsn --help`` (which imports :mod:`analysis.cli`) does not load
pandas or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "analyze": "analysis.report", "format_ranking": "analysis.report", "AnalysisResult": "analysis.report",
    "load_trials": "analysis.load", "load_curves": "analysis.load", "load_scores": "analysis.load",
    "rank_scores": "analysis.stats", "compare_arms": "analysis.stats",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
