"""The ``mmsn`` command: ``data prepare|info``, ``pretrain``, ``probe``, ``reference`` (``sweep``, ``analyze``:
trainables.cli).

User errors (MMSNError) print one clear line to stderr and exit 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mmsn.errors import MMSNError


def _add_data(sub: argparse._SubParsersAction) -> None:
    from mmsn.data.registry import DATASETS

    data = sub.add_parser("data", help="prepare and inspect data caches")
    dsub = data.add_subparsers(dest="data_command", required=True)
    p = dsub.add_parser("prepare", help="write a cache (images.npy, table.parquet, meta.json)")
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--root", type=Path, default=None, help="raw dataset directory (official layout)")
    p.add_argument("--out", type=Path, required=True, help="cache directory to create")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, subsample and synthesis")
    p.add_argument("--n", type=int, default=None,
                   help="number of images, drawn by whole patients (default: all; synthetic: 3000)")
    p.add_argument("--split", default="0.7,0.1,0.2",
                   help="train,val,test fractions of patients, or 'official' where the dataset has one")
    p.add_argument("--workers", type=int, default=1, help="processes rendering/resizing images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing cache at --out")
    p.set_defaults(func=_data_prepare)
    i = dsub.add_parser("info", help="print counts, label prevalence and EHR missing rates")
    i.add_argument("cache", type=Path)
    i.set_defaults(func=_data_info)


def _data_prepare(args: argparse.Namespace) -> None:
    from mmsn.data.cache import describe, open_cache
    from mmsn.data.prepare import prepare
    from mmsn.data.registry import DATASETS, load_source
    from mmsn.data.splits import parse_fractions

    split = "official" if args.split == "official" else parse_fractions(args.split)
    source = load_source(args.dataset, args.root, args.seed)
    n = args.n if args.n is not None else DATASETS[args.dataset].default_n
    out = prepare(source, args.out, size=args.size, seed=args.seed, split=split, n=n,
                  workers=args.workers, overwrite=args.overwrite)
    print(describe(open_cache(out)))


def _data_info(args: argparse.Namespace) -> None:
    from mmsn.data.cache import describe, open_cache

    print(describe(open_cache(args.cache)))


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="multimodal MSN pretraining on a cache (resumes if --out has a checkpoint)")
    p.add_argument("--config", type=Path, default=None, help="YAML config (default: the CPU quickstart defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--data", type=Path, required=True, help="cache directory from 'mmsn data prepare'")
    p.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, TensorBoard events)")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    from mmsn.config import load_config
    from mmsn.data.cache import open_cache
    from mmsn.pretrain import pretrain

    cfg = load_config(args.config, args.overrides)
    cache = open_cache(args.data)
    info = pretrain(cfg, cache, args.out, log=lambda line: print(line, flush=True))
    print(f"done: {info['epoch']} epochs, {info['step']} steps -> {args.out}")


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="linear probe of a run's image-only target encoder")
    p.add_argument("--checkpoint", type=Path, required=True, help="run directory from 'mmsn pretrain'")
    p.add_argument("--data", type=Path, required=True, help="cache directory")
    p.add_argument("--label-fraction", type=float, default=None, help="fraction of train labels (by patient)")
    p.add_argument("--split", choices=("val", "test"), default="val", help="split to report (L2 is chosen on val)")
    p.add_argument("--random-init", action="store_true",
                   help="probe a randomly initialised encoder of the run's architecture (a baseline)")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> None:
    import dataclasses
    import json

    from mmsn.checkpoint import load_encoder
    from mmsn.data.cache import open_cache
    from mmsn.engine import resolve_device
    from mmsn.evaluate import probe_encoder

    encoder, cfg = load_encoder(args.checkpoint, random_init=args.random_init)
    probe_cfg = cfg.probe
    if args.label_fraction is not None:
        probe_cfg = dataclasses.replace(probe_cfg, label_fraction=args.label_fraction)
    device = resolve_device(cfg)
    result = probe_encoder(encoder.to(device), open_cache(args.data), probe_cfg, cfg.views.size, device,
                           (args.split,))[args.split]
    payload = {**result.to_json_dict(), "checkpoint": str(args.checkpoint), "random_init": args.random_init}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"{args.split} macro AUROC {result.macro_auroc:.4f} "
          f"[{result.macro_ci[0]:.4f}, {result.macro_ci[1]:.4f}] -> {args.out}")


def _add_reference(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reference", help="the reference probes a representation must beat: random init, raw "
                                         "pixels, EHR only (on the cache's val and test splits)")
    p.add_argument("cache", type=Path, help="cache directory")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config whose architecture, seed and probe are used (default: the quickstart)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="directory for <reference>.json and _test.npz (default: CACHE/references/<fingerprint>)")
    p.add_argument("--supervised", action="store_true",
                   help="also the supervised reference: the architecture trained on the train labels (it trains)")
    p.set_defaults(func=_reference)


def _reference(args: argparse.Namespace) -> None:
    from mmsn import references
    from mmsn.config import load_config
    from mmsn.data.cache import open_cache
    from mmsn.engine import resolve_device

    cfg, cache = load_config(args.config, args.overrides), open_cache(args.cache)
    out = args.out or args.cache / "references" / references.fingerprint(cache, cfg)
    names = (*references.DEFAULT, *(["supervised"] if args.supervised else []))
    for name, (payload, _) in references.ensure(out, cache, cfg, resolve_device(cfg), names).items():
        val, test = payload["val"], payload["test"]
        print(f"{name:12s} val {val['macro_auroc']:.4f}  test {test['macro_auroc']:.4f} "
              f"[{test['macro_ci'][0]:.4f}, {test['macro_ci'][1]:.4f}]")
    print(f"-> {out}")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_data, _add_pretrain, _add_probe,
                                                                 _add_reference]


Adder = Callable[[argparse._SubParsersAction], None]


def build_parser(extra: Sequence[Adder] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmsn", description="Which EHR data, fused how, makes self-supervised CXR representations better.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in [*COMMANDS, *extra]:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None, extra: Sequence[Adder] = ()) -> int:
    """Run one command. ``extra`` adds commands defined outside mmsn (trainables: sweep, analyze),
    so this package never imports Ray."""
    return run_parser(build_parser(extra), argv)


def run_parser(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse and run ``args.func`` (its return value, if any, is the exit status); a user error prints one line
    and returns 2 (nothing half-written)."""
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except MMSNError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    return int(code or 0)


def standalone(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None],
               command: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None) -> int:
    """Run one command as its own program (``python -m trainables.sweep``, ``python -m analysis.cli``)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    parser.set_defaults(func=command)
    return run_parser(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
