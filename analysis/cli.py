"""``mmsn analyze EXPERIMENT_DIR``: print the ranking of EHR variants and write the report.

Wired into the ``mmsn`` console script by ``trainables/cli.py`` (like ``sweep``). Heavy imports
(pandas, matplotlib) happen only when the command runs, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", type=Path, metavar="EXPERIMENT_DIR",
                   help="a sweep's experiment directory (STORAGE/NAME, holding sweep.json and the trial dirs)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: EXPERIMENT_DIR/analysis)")
    p.add_argument("--metric", choices=("test_auroc", "val_auroc"), default="test_auroc",
                   help="what to rank by; test_auroc uses the per-image test scores (default: test_auroc)")
    p.add_argument("--baseline", default="ehr=none",
                   help="baseline: ehr=none (each arm's own setting without EHR input or target: mrm_ehr against "
                        "mae, msn_supcon against msn), KEY=VALUE matching one variant per setting (fusion=none, "
                        "variant=film:demographic) or a full variant name such as concat_anchor:demographic "
                        "(default: ehr=none). A sweep of several objectives also tests each arm against vanilla MSN")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default: 0)")
    p.add_argument("--effect", type=float, default=0.02,
                   help="the AUROC difference each comparison's seed count is worked out for: how many seeds per "
                        "arm would detect it with 80 %% power (default: 0.02, about the gain CXR-EHR-MSN reports)")
    p.add_argument("--no-references", dest="references", action="store_false",
                   help="do not compute the reference rows (random init, raw pixels, EHR only; computed once into "
                        "EXPERIMENT_DIR/references when the sweep's cache is here, then reused)")


def analyze_command(args: argparse.Namespace) -> None:
    """Handler: run the analysis, print the ranking table and where the report is."""
    from analysis.report import analyze, format_ranking

    result = analyze(args.experiment, args.out, args.metric, args.baseline, args.n_boot, args.seed, args.references,
                     args.effect)
    print(format_ranking(result.ranking))
    for note in result.notes:
        print(f"note: {note}")
    print(f"\nreport: {result.report}")


def add_analyze_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``analyze`` to a subparsers object (what ``trainables/cli.py`` passes in ``extra``)."""
    p = sub.add_parser("analyze", help="rank EHR variants of a finished sweep, test them, write a report")
    add_arguments(p)
    p.set_defaults(func=analyze_command)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.cli EXPERIMENT_DIR ...`` (the same as ``mmsn analyze``)."""
    from mmsn.cli import standalone

    return standalone("python -m analysis.cli", __doc__.splitlines()[0], add_arguments, analyze_command, argv)


if __name__ == "__main__":
    sys.exit(main())
