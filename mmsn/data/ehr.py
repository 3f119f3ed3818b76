"""EHR encoding: raw cache columns -> one float vector per image (pure functions, no torch).

A feature subset is named by groups and/or columns (``["demographic"]``, ``["age", "view"]``).
Categorical columns become one-hot; continuous columns are standardised with statistics fit on the
train split only; binary columns stay 0/1. Every feature with missing values in the cache gets an
indicator column and its value is set to 0 (the train mean, after standardisation), so "missing" is
information the model can use rather than an imputed guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from mmsn.data.source import EHRColumn
from mmsn.errors import ConfigError


def resolve_features(requested: Sequence[str], available: Sequence[EHRColumn]) -> tuple[EHRColumn, ...]:
    """Expand group names (and ``"all"``) into columns, in the cache's column order.

    Raises ConfigError naming the unknown entry and listing the valid groups and columns.
    """
    groups = {c.group for c in available}
    names = {c.name for c in available}
    chosen: set[str] = set()
    for item in requested:
        if item == "all":
            chosen |= names
        elif item in groups:
            chosen |= {c.name for c in available if c.group == item}
        elif item in names:
            chosen.add(item)
        else:
            raise ConfigError(
                f"unknown EHR feature {item!r}; valid groups: {', '.join(sorted(groups))}, 'all'; "
                f"valid columns: {', '.join(c.name for c in available)}"
            )
    return tuple(c for c in available if c.name in chosen)


@dataclass(frozen=True)
class ColumnCode:
    """How one raw column is encoded: its kind, its categories or statistics, its missing flag."""

    name: str
    kind: str
    categories: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0
    has_missing: bool = False

    @property
    def width(self) -> int:
        body = len(self.categories) if self.kind == "categorical" else 1
        return body + int(self.has_missing)

    def feature_names(self) -> list[str]:
        body = [f"{self.name}={c}" for c in self.categories] if self.kind == "categorical" else [self.name]
        return body + ([f"{self.name}:missing"] if self.has_missing else [])

    def encode(self, values: pd.Series) -> np.ndarray:
        """(N,) raw values -> (N, width) float32."""
        missing = values.isna().to_numpy()
        if self.kind == "categorical":
            as_text = values.astype(object).where(~values.isna(), None)
            body = np.stack([(as_text == c).to_numpy() for c in self.categories], axis=1).astype(np.float32)
            # A category never seen when fitting is treated as missing, not as a silent all-zero row.
            missing = missing | (body.sum(axis=1) == 0)
        else:
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            missing = missing | np.isnan(x)
            z = (x - self.mean) / self.std if self.kind == "continuous" else x
            body = np.where(missing, 0.0, z)[:, None].astype(np.float32)
        if self.has_missing:
            body = np.concatenate([body, missing[:, None].astype(np.float32)], axis=1)
        return body


def fit_column(column: EHRColumn, values: pd.Series, train: np.ndarray) -> ColumnCode:
    """Fit one column: categories and missingness from the whole cache, statistics from train rows."""
    has_missing = bool(values.isna().any())
    if column.kind == "categorical":
        cats = tuple(sorted(str(v) for v in pd.unique(values.dropna())))
        return ColumnCode(column.name, column.kind, categories=cats, has_missing=has_missing)
    if column.kind == "binary":
        return ColumnCode(column.name, column.kind, has_missing=has_missing)
    x = pd.to_numeric(values[train], errors="coerce").to_numpy(dtype=np.float64)
    x = x[~np.isnan(x)]
    mean = float(x.mean()) if x.size else 0.0
    std = float(x.std()) if x.size > 1 and x.std() > 0 else 1.0
    return ColumnCode(column.name, column.kind, mean=mean, std=std, has_missing=has_missing)


@dataclass(frozen=True)
class EHREncoder:
    """Encodes the chosen EHR columns of a cache table into a float32 matrix (N, width)."""

    codes: tuple[ColumnCode, ...]

    @classmethod
    def fit(cls, table: pd.DataFrame, columns: Sequence[EHRColumn], train: np.ndarray) -> EHREncoder:
        """``train``: boolean mask (N,) of train-split rows; only they shape the statistics."""
        return cls(tuple(fit_column(c, table[c.name], train) for c in columns))

    @property
    def width(self) -> int:
        return sum(c.width for c in self.codes)

    @property
    def feature_names(self) -> list[str]:
        return [name for c in self.codes for name in c.feature_names()]

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        if not self.codes:
            return np.zeros((len(table), 0), dtype=np.float32)
        return np.concatenate([c.encode(table[c.name]) for c in self.codes], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {"codes": [asdict(c) for c in self.codes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EHREncoder:
        return cls(tuple(ColumnCode(**{**c, "categories": tuple(c["categories"])}) for c in data["codes"]))
