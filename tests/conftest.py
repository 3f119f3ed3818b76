"""Shared fixtures: tiny hand-made sources and caches (CPU, milliseconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsn.data.source import EHRColumn, Source

TINY_LABELS = ("A", "B", "C")
TINY_EHR = (
    EHRColumn("age", "demographic", "continuous", "Age"),
    EHRColumn("sex", "demographic", "categorical", "Sex"),
    EHRColumn("view", "scan", "categorical", "View"),
    EHRColumn("icu", "stay", "binary", "ICU"),
)


class GradientImages:
    """Picklable getter: a deterministic gradient per row, so caches can be compared byte for byte."""

    def __call__(self, i: int, size: int) -> np.ndarray:
        ramp = np.linspace(0, 1, size, dtype=np.float32)
        return ((ramp[None, :] * ramp[:, None] * 200 + i) % 256).astype(np.uint8)


def tiny_source(n_patients: int = 40, per_patient: int = 3, seed: int = 0) -> Source:
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    table = pd.DataFrame({
        "image_id": [f"img{i:04d}" for i in range(n)],
        "patient_id": [f"p{i // per_patient:03d}" for i in range(n)],
        **{label: rng.integers(0, 2, n).astype(np.int8) for label in TINY_LABELS},
        "age": np.where(rng.random(n) < 0.1, np.nan, rng.uniform(20, 90, n)),
        "sex": rng.choice(["F", "M"], n).astype(object),
        "view": pd.Series(rng.choice(["PA", "AP", None], n, p=[0.5, 0.4, 0.1]), dtype=object),
        "icu": rng.integers(0, 2, n).astype(float),
    })
    return Source("tiny", table, TINY_LABELS, TINY_EHR, GradientImages(), files=("tiny.csv",))


@pytest.fixture
def source() -> Source:
    return tiny_source()


@pytest.fixture
def tiny_cache(tmp_path: Path, source: Source) -> Path:
    from mmsn.data.prepare import prepare

    return prepare(source, tmp_path / "cache", size=16, seed=0, split=(0.6, 0.2, 0.2), n=None)
