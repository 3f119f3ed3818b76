"""The ``mmsn`` console script: mmsn's own commands plus ``sweep`` (Ray) and ``analyze``.

Ray is imported only when ``mmsn sweep`` runs, so ``mmsn data ...`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mmsn.cli import main as mmsn_main


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from trainables.sweep import add_arguments, sweep_command

    p = sub.add_parser("sweep", help="run a Ray Tune + Optuna sweep over a search-space YAML")
    add_arguments(p)
    p.set_defaults(func=sweep_command)


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    from analysis.cli import add_analyze_parser

    add_analyze_parser(sub)


def main(argv: Sequence[str] | None = None) -> int:
    return mmsn_main(argv, extra=[_add_sweep, _add_analyze])


if __name__ == "__main__":
    sys.exit(main())
