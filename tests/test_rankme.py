"""RankMe (Garrido et al., ICML 2023): the effective rank of the probe's val features, a label-free signal;
a space may schedule on it, except for objectives whose embeddings it cannot rank."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmsn.errors import ConfigError
from mmsn.metrics import rankme
from search_spaces.loader import HERE, load_space


def test_rankme_is_the_entropy_rank_of_the_singular_values() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16))
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(x) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    # a rank-k matrix with equal singular values has effective rank k; one direction (collapse) has 1
    q, _ = np.linalg.qr(rng.normal(size=(500, 8)))
    assert rankme(q[:, :3] @ np.eye(3, 16)) == pytest.approx(3.0, rel=1e-4)
    assert rankme(np.outer(rng.normal(size=500), rng.normal(size=16))) == pytest.approx(1.0, abs=1e-3)
    assert rankme(np.eye(16)) == pytest.approx(16.0, rel=1e-4)
    assert rankme(np.zeros((5, 4))) == 1.0
    with pytest.raises(ValueError, match="non-empty"):
        rankme(np.zeros((0, 4)))


def space_with(tmp_path: Path, **edit: object) -> Path:
    raw = yaml.safe_load((HERE / "quickstart.yaml").read_text())
    raw.update(edit)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_space_may_schedule_on_rankme_but_not_for_reconstruction_objectives(tmp_path: Path) -> None:
    assert load_space(space_with(tmp_path, metric={"name": "rankme", "mode": "max"})).metric == "rankme"
    mae = space_with(tmp_path, metric={"name": "rankme", "mode": "max"},
                     axes={"objective.name": {"grid": ["msn", "mae"]}})
    with pytest.raises(ConfigError, match="metric.name rankme: RankMe cannot rank runs of mae"):
        load_space(mae)
    with pytest.raises(ConfigError, match="metric.mode: rankme is maximised"):
        load_space(space_with(tmp_path, metric={"name": "rankme", "mode": "min"}))
