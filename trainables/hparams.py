"""TensorBoard's HParams view of an experiment: ``tensorboard --logdir EXPERIMENT`` lists every trial with
its searched axes (an inactive conditional axis as ``-``) and its metrics (the probe's val and test macro
AUROC, read from the scalars rank 0 writes at each milestone; their last value is what the table shows).

The experiment's configuration (the axes and the metrics) is written once, in ``EXPERIMENT/hparams/``; each
trial writes its session (its axis values) into its own ``tb/`` when it first starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from search_spaces.loader import INACTIVE, SEED_KEY, Space, grid_points

METRICS = ("probe/val_macro_auroc", "probe/test_macro_auroc", "probe/rankme")
SUFFIX = ".hparams"  # the event file of a trial's session: written once per trial


def _keys(space: Space) -> list[str]:
    return [a.key for a in space.axes] + [SEED_KEY]


def hparam_values(space: Space, params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's axis values as HParams shows them: numbers as numbers, everything else (lists, names, and
    every value of a conditional axis, which may be inactive) as text."""
    conditional = {a.key for a in space.axes if a.when}
    out: dict[str, Any] = {}
    for key in _keys(space):
        value = params.get(key, INACTIVE)
        plain_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        out[key] = value if plain_number and key not in conditional else str(value)
    return out


def write_experiment(experiment: Path, space: Space) -> None:
    """The experiment's HParams configuration: every axis (with its values, where they are discrete) and
    the metrics."""
    sample = grid_points(space)[0] if space.search.algorithm == "grid" else {}
    values = hparam_values(space, {**{a.key: a.values[0] for a in space.axes}, SEED_KEY: space.seeds[0], **sample})
    discrete: dict[str, list[Any]] = {}
    for axis in space.axes:
        if axis.kind in ("choice", "grid") and isinstance(values[axis.key], str):
            discrete[axis.key] = sorted({str(v) for v in axis.values} | ({INACTIVE} if axis.when else set()))
    experiment_summary, _, _ = hparams(values, dict.fromkeys(METRICS, 0.0), hparam_domain_discrete=discrete)
    writer = SummaryWriter(str(experiment / "hparams"))
    try:
        writer.file_writer.add_summary(experiment_summary)
    finally:
        writer.close()


def write_session(tb_dir: Path, space: Space, params: Mapping[str, Any]) -> None:
    """The trial's HParams session (its axis values) in its TensorBoard directory, once."""
    if list(tb_dir.glob(f"*{SUFFIX}")):
        return
    _, session, _ = hparams(hparam_values(space, params), {})
    writer = SummaryWriter(str(tb_dir), filename_suffix=SUFFIX)
    try:
        writer.file_writer.add_summary(session)
    finally:
        writer.close()


__all__ = ["METRICS", "hparam_values", "write_experiment", "write_session"]
