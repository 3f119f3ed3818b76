"""Is there a representation worth ranking? Reference rows beside pretrained encoders, on one cache's test split.

Prints test macro AUROC with its 95 % bootstrap CI for: the reference rows (``random init``, ``raw pixels``,
``EHR only``; ``supervised`` with ``--supervised``), then each run directory given (``mmsn pretrain --out``;
its image-only target encoder), for every probe feature kind asked for, and each row's paired difference
to ``raw pixels`` and to ``random init`` on the same test images and resamples (analysis.stats).

    python benchmarks/bench_signal.py --cache experiments/caches/synthetic-64px-... --run /tmp/run
    python benchmarks/bench_signal.py --cache C --run R1 --run R2 --features cls,cls_mean,last_cls:2
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from analysis.stats import build_bank, difference, macro, percentile_ci
from mmsn.checkpoint import load_encoder, run_config
from mmsn.config import Config, load_config
from mmsn.data.cache import Cache, open_cache
from mmsn.evaluate import probe_encoder
from mmsn.probe import ProbeResult
from mmsn.references import compute

ROOT = Path(__file__).resolve().parents[1]
BASES = ("raw pixels", "random init")


def feature_kinds(text: str) -> list[tuple[str, int]]:
    """``cls,cls_mean,last_cls:2`` -> [(kind, last_blocks)] (last_blocks 4 unless given)."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        kind, _, k = item.partition(":")
        out.append((kind, int(k or 4)))
    return out


def with_features(cfg: Config, kind: str, k: int) -> Config:
    return dataclasses.replace(cfg, probe=dataclasses.replace(cfg.probe, features=kind, last_blocks=k))


def run_rows(runs: list[Path], cache: Cache, kinds: list[tuple[str, int]],
             device: torch.device) -> dict[str, dict[str, ProbeResult]]:
    rows: dict[str, dict[str, ProbeResult]] = {}
    for run in runs:
        encoder, cfg = load_encoder(run)
        for kind, k in kinds:
            feature = f"{kind}:{k}" if kind == "last_cls" else kind
            name = f"{run.name} [{cfg.objective.name}, fusion {cfg.ehr.fusion}, {feature}]"
            rows[name] = probe_encoder(encoder.to(device), cache, with_features(cfg, kind, k).probe, cfg.views.size,
                                       device, ("val", "test"))
    return rows


def print_table(rows: dict[str, dict[str, ProbeResult]], labels: list[str], n_boot: int) -> None:
    test = {name: r["test"] for name, r in rows.items()}
    first = next(iter(test.values()))
    bank = build_bank({n: r.scores for n, r in test.items()}, first.targets, labels, n_boot=n_boot)
    boot = macro(bank.boot, bank.valid)  # (B, K)
    point = macro(bank.point, bank.valid)  # (K,)
    lo, hi = percentile_ci(boot)
    rng = np.random.default_rng(0)
    width = max(len(n) for n in rows) + 2
    head = "".join(f"{'vs ' + b:>26}" for b in BASES if b in rows)
    print(f"{'row':<{width}}{'val':>8}{'test macro AUROC [95% CI]':>30}{head}")
    for k, name in enumerate(bank.keys):
        line = f"{name:<{width}}{rows[name]['val'].macro_auroc:>8.4f}{point[k]:>12.4f} [{lo[k]:.4f}, {hi[k]:.4f}]"
        for base in (b for b in BASES if b in rows):
            j = bank.keys.index(base)
            d, dlo, dhi, _ = difference(point[[k]], point[[j]], boot[:, [k]], boot[:, [j]], rng)
            line += f"{'':>4}{float(d):+.4f} [{float(dlo):+.4f}, {float(dhi):+.4f}]" if j != k else f"{'':>26}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--run", type=Path, action="append", default=[], help="run directory (repeatable)")
    parser.add_argument("--config", type=Path, default=None,
                        help="recipe of the references (default: the first run's, else the quickstart's)")
    parser.add_argument("--features", default="cls", help="probe feature kinds, e.g. cls,cls_mean,last_cls:2")
    parser.add_argument("--supervised", action="store_true", help="add the supervised reference (it trains)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args()
    cache, device = open_cache(args.cache), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = (load_config(args.config) if args.config else run_config(args.run[0]) if args.run
           else load_config(ROOT / "mmsn" / "configs" / "quickstart.yaml"))
    start = time.time()
    names = ["random init", "raw pixels", "EHR only", *(["supervised"] if args.supervised else [])]
    rows = compute(cache, cfg, device, names)
    rows.update(run_rows(args.run, cache, feature_kinds(args.features), device))
    print(f"cache {args.cache} ({cache.meta.get('dataset')}, {len(cache.rows('test'))} test / "
          f"{len(cache.rows('val'))} val images); references with {cfg.model.backbone} at {cfg.views.size} px")
    print_table(rows, list(cache.labels), args.bootstrap)
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
