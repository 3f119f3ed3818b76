"""The contract between a dataset adapter and ``prepare``: one row per image plus an image getter.

Every adapter (synthetic, nih14, chexpert, mimic) returns a :class:`Source`; ``mmsn.data.prepare``
validates it, assigns the patient-level split, renders/resizes the images once and writes the cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

EHRGroup = Literal["demographic", "scan", "stay"]
EHRKind = Literal["continuous", "categorical", "binary"]
EHR_GROUPS: tuple[str, ...] = ("demographic", "scan", "stay")
EHR_KINDS: tuple[str, ...] = ("continuous", "categorical", "binary")


@dataclass(frozen=True)
class EHRColumn:
    """One raw EHR column of the cache table.

    name:   canonical column name in ``table.parquet`` (``age``, ``sex``, ``view``, ...), the same
            across datasets so a feature subset such as ``["age", "view"]`` means one thing everywhere.
    group:  the feature group it belongs to (demographic, scan, stay).
    kind:   continuous (standardised), categorical (one-hot) or binary (0/1).
    source: where it came from in the raw files, recorded in meta.json for provenance.
    """

    name: str
    group: str
    kind: str
    source: str


# (row position, size) -> uint8 array (size, size). Must raise DataError naming the file on failure.
ImageGetter = Callable[[int, int], np.ndarray]


@dataclass
class Source:
    """What an adapter hands to ``prepare``.

    table: one row per image with columns ``image_id`` (unique str), ``patient_id`` (str), every
        label in ``labels`` (int8 0/1 after the adapter's documented uncertain/missing mapping),
        every EHR column named in ``ehr`` (NaN or None = missing; missing is data, not an error),
        and optionally ``official_split`` (train/val/test) when the dataset ships one.
    image: getter for row ``i`` of ``table`` at a given size (see :data:`ImageGetter`). It must be
        picklable (a module-level class instance) so prepare can fan out to worker processes.
    files: the source files that were read (recorded in meta.json).
    notes: documented choices, e.g. ``{"labels": "uncertain (-1) and missing -> 0"}``.
    """

    dataset: str
    table: pd.DataFrame
    labels: tuple[str, ...]
    ehr: tuple[EHRColumn, ...]
    image: ImageGetter
    files: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)
