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


@pytest.fixture(scope="session")
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real synthetic cache: 600 images at 32 px (seconds to render), shared by the session."""
    from mmsn.data.prepare import prepare
    from mmsn.data.registry import load_source

    out = tmp_path_factory.mktemp("synthetic") / "cache"
    return prepare(load_source("synthetic", None, 0), out, size=32, seed=0, split=(0.6, 0.2, 0.2), n=600)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for gloo groups and Ray heads)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray_cli() -> str:
    """The ``ray`` command of the test's interpreter (even when the venv is not activated)."""
    import sys

    return str(Path(sys.executable).with_name("ray"))


TINY_RUN = [
    "views.size=32", "views.focal_size=16", "views.n_focal=2", "model.backbone=vit_nano",
    "model.head_hidden=64", "model.head_out=32", "model.n_prototypes=32", "ehr.embed_dim=16",
    "train.batch_size=32", "train.epochs=2", "train.max_steps_per_epoch=3", "train.log_every=1",
    "probe.bootstrap=50", "ehr.features=[demographic, scan]",
]
