"""Dataset name -> adapter. Adapters are imported lazily: each pulls in its own parsing code."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from mmsn.data.ehr_columns import CHEXPERT_EHR, MIMIC_EHR, NIH14_EHR, SYNTHETIC_EHR
from mmsn.data.source import EHRColumn, Source
from mmsn.errors import DataError, unknown_name


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one dataset: ``module.function(root, seed) -> Source``."""

    module: str
    function: str
    needs_root: bool
    default_n: int | None  # images drawn when --n is not given (None: all)
    description: str
    ehr: tuple[EHRColumn, ...]  # its caches' EHR columns: configs are checked against them before data is read


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec("mmsn.data.synthetic", "load_synthetic", False, 3000,
                             "procedural CXRs on real NIH-14 metadata (the embedded default)", SYNTHETIC_EHR),
    "synthetic_b": DatasetSpec("mmsn.data.synthetic", "load_synthetic_b", False, 3000,
                               "the synthetic default through another site's scanner (a transfer dataset)",
                               SYNTHETIC_EHR),
    "nih14": DatasetSpec("mmsn.data.nih14", "load_nih14", True, None, "NIH ChestX-ray14", NIH14_EHR),
    "chexpert": DatasetSpec("mmsn.data.chexpert", "load_chexpert", True, None, "CheXpert", CHEXPERT_EHR),
    "mimic": DatasetSpec("mmsn.data.mimic", "load_mimic", True, None, "MIMIC-CXR-JPG + MIMIC-IV", MIMIC_EHR),
}


def dataset_columns(name: str) -> tuple[EHRColumn, ...]:
    """The EHR columns of dataset ``name``'s caches; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise DataError(unknown_name("dataset", name, DATASETS))
    return DATASETS[name].ehr


def load_source(name: str, root: Path | None, seed: int) -> Source:
    """Run the adapter of dataset ``name``; an unknown name lists the known ones."""
    if name not in DATASETS:
        raise DataError(unknown_name("dataset", name, DATASETS))
    spec = DATASETS[name]
    if spec.needs_root and root is None:
        raise DataError(f"dataset {name!r} needs --root RAW_DIR (the official {spec.description} layout)")
    if root is not None and not Path(root).exists():
        raise DataError(f"--root {root}: no such directory")
    load = getattr(importlib.import_module(spec.module), spec.function)
    return load(None if root is None else Path(root), seed)  # type: ignore[no-any-return]
