"""EHR as a training *target*: pseudo-labels for SupCon and record targets for masked record modelling.

Two encoders, both fit on the train split only and both pure numpy/pandas (docs/objectives.md):

- :class:`PseudoLabeler` turns EHR columns (and the patient id) into integer class codes, one column
  per :class:`PseudoLabelSpec`, for the clinically-labelled supervised contrastive loss of OLIVES
  (positives = samples with an equal, or equally binned, clinical value; one SupCon term per label,
  summed with the spec weights). -1 marks a missing value: it is never a positive.
- :class:`RecordEncoder` turns the EHR row into MRM targets (the tabular analogue of MRM's report
  completion): class indices for categorical and binary fields, standardised values for continuous
  ones; the masking of fields is left to the model.

Patient ids are mapped to integer codes in memory only: they never appear in a repr, an error
message or ``to_dict``; a saved labeler rebuilds the patient mapping from the cache table on load.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mmsn.data.source import EHRColumn
from mmsn.errors import ConfigError, DataError

PATIENT = "patient"  # pseudo-label column meaning the patient id (OLIVES' "patient" label)
PATIENT_ID_COLUMN = "patient_id"
BINNINGS = ("quantile", "width")


# --- shared helpers -----------------------------------------------------------------------------


def _train_mask(train_mask: np.ndarray, n_rows: int) -> np.ndarray:
    """Check ``train_mask`` is a boolean (n_rows,) mask with at least one row; return it as bool."""
    mask = np.asarray(train_mask)
    if mask.dtype != np.bool_ or mask.shape != (n_rows,):
        raise ValueError(f"train_mask {mask.shape} {mask.dtype} must be a boolean mask ({n_rows},) of the table rows")
    if not mask.any():
        raise DataError("the train split is empty: targets are fit on train rows only")
    return mask


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """The raw column ``name`` of a cache table, or a DataError saying it is absent."""
    if name not in table.columns:
        raise DataError(f"table has no column {name!r}; is it a cache table with this EHR column?")
    return table[name]


def category_keys(values: pd.Series) -> np.ndarray:
    """(N,) raw values -> (N,) object array of their ``str`` form, None where missing (NaN/None/NA)."""
    present = values.notna().to_numpy()
    keys = np.full(len(values), None, dtype=object)
    keys[present] = [str(v) for v in values.to_numpy(dtype=object)[present]]
    return keys


def binary_keys(values: pd.Series, name: str) -> np.ndarray:
    """(N,) 0/1 values (any numeric dtype) -> (N,) object array of "0"/"1", None where missing.

    Any other value is bad data (binary columns are 0/1 by the Source contract), so DataError.
    """
    present = values.notna().to_numpy()
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    if np.any(present & (x != 0) & (x != 1)):
        raise DataError(f"binary EHR column {name!r} holds values other than 0/1")
    keys = np.full(len(values), None, dtype=object)
    keys[present] = np.where(x[present] == 1, "1", "0")
    return keys


def encode_categories(keys: np.ndarray, categories: Sequence[str]) -> np.ndarray:
    """(N,) keys -> (N,) int64 index into ``categories``; -1 for missing keys and unseen categories."""
    return pd.Categorical(keys, categories=list(categories)).codes.astype(np.int64)


def _numeric(values: pd.Series) -> np.ndarray:
    """(N,) -> (N,) float64, NaN where missing or not a number."""
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)


# --- pseudo-labels for SupCon (OLIVES) ----------------------------------------------------------


@dataclass(frozen=True)
class PseudoLabelSpec:
    """One SupCon pseudo-label: which EHR value makes two samples positives.

    column:  an EHR column of the cache (``age``, ``sex``, ``view``, ...) or ``"patient"`` (the
             patient id: all images of a patient are positives, as OLIVES' patient label).
    weight:  weight of this label's SupCon term in the sum (OLIVES: an unweighted sum, 1 each).
    bins:    0 = the values themselves are the classes (categorical, binary, patient); >= 2 bins a
             continuous column (required there: raw continuous values almost never tie).
    binning: ``"quantile"``: edges at train quantiles, so train bins hold about equal counts;
             ``"width"``: equal-width bins over the train range.
    """

    column: str
    weight: float = 1.0  # OLIVES sums its terms unweighted
    bins: int = 0  # no binning
    binning: str = "quantile"  # equal train counts per bin, robust to skewed ages


def _check_spec(spec: PseudoLabelSpec, kinds: Mapping[str, str], at: str) -> None:
    """Raise ConfigError naming ``at.<field>`` for one spec that cannot work with these columns."""
    if spec.column != PATIENT and spec.column not in kinds:
        raise ConfigError(f"{at}.column: unknown column {spec.column!r}; valid: {', '.join([*kinds, PATIENT])}")
    if not (isinstance(spec.weight, int | float) and math.isfinite(spec.weight) and spec.weight >= 0):
        raise ConfigError(f"{at}.weight must be a finite number >= 0, got {spec.weight!r}")
    if spec.binning not in BINNINGS:
        raise ConfigError(f"{at}.binning: unknown binning {spec.binning!r}; valid: {', '.join(BINNINGS)}")
    if not isinstance(spec.bins, int) or isinstance(spec.bins, bool) or spec.bins < 0 or spec.bins == 1:
        raise ConfigError(f"{at}.bins must be 0 (no binning) or an integer >= 2, got {spec.bins!r}")
    kind = "patient id" if spec.column == PATIENT else kinds[spec.column]
    if kind == "continuous" and spec.bins == 0:
        raise ConfigError(f"{at}.bins: continuous column {spec.column!r} needs bins >= 2 "
                          "(its raw values almost never tie, so they would give no positives)")
    if kind != "continuous" and spec.bins:
        raise ConfigError(f"{at}.bins: only continuous columns are binned; {spec.column!r} is {kind}")


def check_pseudo_label_specs(specs: Sequence[PseudoLabelSpec], columns: Sequence[EHRColumn],
                             key: str = "supcon.labels") -> None:
    """Validate specs against the cache's EHR columns without reading data (config load time).

    Raises ConfigError naming ``key`` or ``key[i].<field>``: no spec, an unknown column (listing
    the valid ones and "patient"), a bad weight, binning or bin count, bins on a non-continuous
    column or none on a continuous one, a repeated spec, or all weights 0.
    """
    if not specs:
        raise ConfigError(f"{key}: name at least one pseudo-label column")
    kinds = {c.name: c.kind for c in columns}
    for i, spec in enumerate(specs):
        _check_spec(spec, kinds, f"{key}[{i}]")
    seen = [(s.column, s.bins, s.binning if s.bins else "") for s in specs]
    for i, item in enumerate(seen):
        if item in seen[:i]:
            raise ConfigError(f"{key}[{i}]: repeats pseudo-label {specs[i].column!r} with the same binning")
    if not any(s.weight > 0 for s in specs):
        raise ConfigError(f"{key}: every weight is 0, so the SupCon loss would be 0")


def bin_edges(x: np.ndarray, bins: int, binning: str) -> np.ndarray:
    """Interior bin edges fit on train values: (n,) float64 without NaN -> (k - 1,) increasing, k <= bins.

    ``bin_codes`` puts ``x`` in bin ``#edges <= x`` (bins closed on the left), so values outside
    the train range fall in the first or last bin. Tied quantiles merge bins, and an edge at the
    train minimum would leave an empty first bin, so both are dropped: k can be < ``bins``.
    """
    low, high = float(x.min()), float(x.max())
    if binning == "quantile":
        interior = np.quantile(x, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    else:
        interior = low + (high - low) * np.arange(1, bins) / bins
    return np.unique(interior[interior > low])


def bin_codes(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N,) float64 values, (k - 1,) interior edges -> (N,) int64 bin in [0, k); -1 where NaN."""
    codes = np.searchsorted(edges, x, side="right").astype(np.int64)
    return np.where(np.isnan(x), -1, codes)


@dataclass(frozen=True)
class LabelCode:
    """How one fitted pseudo-label is computed.

    kind "categorical" or "binary" (the column's kind): class = index in ``categories`` (train
    values, sorted). kind "bins" (continuous columns): class = bin of ``edges`` (interior edges, see
    ``bin_edges``). kind "patient": class = index of the patient id among the train patients, held
    in ``patients`` - in memory only: kept out of the repr and of ``to_dict``.
    """

    column: str
    kind: str
    categories: tuple[str, ...] = ()
    edges: tuple[float, ...] = ()
    patients: tuple[str, ...] = field(default=(), repr=False)

    @property
    def n_classes(self) -> int:
        if self.kind == "bins":
            return len(self.edges) + 1
        return len(self.patients) if self.kind == "patient" else len(self.categories)

    def encode(self, table: pd.DataFrame) -> np.ndarray:
        """(N,) int64 classes of the table rows; -1 where missing or unseen in train."""
        if self.kind == "bins":
            return bin_codes(_numeric(_column(table, self.column)), np.asarray(self.edges))
        if self.kind == "patient":
            return encode_categories(category_keys(_column(table, PATIENT_ID_COLUMN)), self.patients)
        return encode_categories(_keys(table, self.column, self.kind), self.categories)


def _keys(table: pd.DataFrame, name: str, kind: str) -> np.ndarray:
    """Class keys of a binary column or any other discrete one: (N,) object, None where missing."""
    values = _column(table, name)
    return binary_keys(values, name) if kind == "binary" else category_keys(values)


def fit_label_code(table: pd.DataFrame, spec: PseudoLabelSpec, column_kind: str, train: np.ndarray,
                   at: str) -> LabelCode:
    """Fit one pseudo-label on the train rows. ``column_kind``: the EHR kind of the spec's column
    (anything for "patient"). ConfigError at ``at.column`` if it is all missing or constant there
    (one class cannot tell positives from negatives)."""
    what = "patient" if spec.column == PATIENT else repr(spec.column)  # never an id in a message
    if column_kind == "continuous":
        x = _numeric(_column(table, spec.column))[train]
        x = x[~np.isnan(x)]
        if x.size == 0:
            raise ConfigError(f"{at}.column: {what} is missing on every train row")
        code = LabelCode(spec.column, "bins", edges=tuple(float(e) for e in bin_edges(x, spec.bins, spec.binning)))
    else:
        name = PATIENT_ID_COLUMN if spec.column == PATIENT else spec.column
        keys = _keys(table, name, column_kind)[train]
        seen = pd.unique(keys[pd.notna(keys)])
        if seen.size == 0:
            raise ConfigError(f"{at}.column: {what} is missing on every train row")
        if spec.column == PATIENT:
            code = LabelCode(PATIENT, "patient", patients=tuple(str(k) for k in seen))
        else:
            code = LabelCode(spec.column, column_kind, categories=tuple(sorted(str(k) for k in seen)))
    if code.n_classes < 2:
        raise ConfigError(f"{at}.column: {what} takes a single {'bin' if code.kind == 'bins' else 'value'} "
                          "over the train split, so it gives no negatives; drop it or change its bins")
    return code


@dataclass(frozen=True)
class PseudoLabeler:
    """Fitted pseudo-labels: ``transform`` gives (N, L) int64 classes, one column per spec, -1 missing."""

    specs: tuple[PseudoLabelSpec, ...]
    codes: tuple[LabelCode, ...]

    @property
    def weights(self) -> tuple[float, ...]:
        return tuple(float(s.weight) for s in self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        """One name per label for logging its SupCon term: ``sex``, ``age:quantile4``, ``patient``."""
        return tuple(f"{s.column}:{s.binning}{s.bins}" if s.bins else s.column for s in self.specs)

    @property
    def n_classes(self) -> tuple[int, ...]:
        """Classes per label (bins after merging ties; train patients for "patient")."""
        return tuple(c.n_classes for c in self.codes)

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        """(N rows) -> (N, L) int64 class codes; -1 where the value is missing or was unseen in train
        (so every val/test row is -1 for "patient": splits are patient-level)."""
        if not self.codes:
            return np.zeros((len(table), 0), dtype=np.int64)
        return np.stack([c.encode(table) for c in self.codes], axis=1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state for a checkpoint: specs, categories and bin edges. Nothing about patients
        is saved (not even their number): ``from_dict`` rebuilds that mapping from the cache table."""
        codes = [{"column": c.column, "kind": c.kind, "categories": list(c.categories), "edges": list(c.edges)}
                 for c in self.codes]
        return {"specs": [asdict(s) for s in self.specs], "codes": codes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], table: pd.DataFrame | None = None,
                  train_mask: np.ndarray | None = None) -> PseudoLabeler:
        """Inverse of ``to_dict``. A "patient" label needs the cache ``table`` and its ``train_mask``:
        its mapping was not saved and is refit from the train rows (the same cache gives the same codes)."""
        specs = tuple(PseudoLabelSpec(**s) for s in data["specs"])
        codes = []
        for i, (spec, c) in enumerate(zip(specs, data["codes"])):
            if c["kind"] == "patient":
                if table is None or train_mask is None:
                    raise ValueError("the patient mapping is not saved: pass the cache table and its train_mask")
                train = _train_mask(train_mask, len(table))
                codes.append(fit_label_code(table, spec, "patient", train, f"labels[{i}]"))
            else:
                codes.append(LabelCode(c["column"], c["kind"], tuple(c["categories"]),
                                       tuple(float(e) for e in c["edges"])))
        return cls(specs, tuple(codes))


def fit_pseudo_labels(table: pd.DataFrame, columns: Sequence[EHRColumn], specs: Sequence[PseudoLabelSpec],
                      train_mask: np.ndarray, key: str = "supcon.labels") -> PseudoLabeler:
    """Fit SupCon pseudo-labels (OLIVES) on the train rows of a cache table.

    table: the cache table (``patient_id`` and the raw EHR columns); columns: the cache's
    ``ehr_columns``; train_mask: (N,) bool, True on train rows - categories and bin edges see only
    them. Raises ConfigError naming ``key`` / ``key[i].<field>`` (see ``check_pseudo_label_specs``,
    plus a column all missing or constant over train) and DataError for a column absent from the table.
    """
    check_pseudo_label_specs(specs, columns, key)
    train = _train_mask(train_mask, len(table))
    kinds = {c.name: c.kind for c in columns}
    codes = tuple(fit_label_code(table, s, PATIENT if s.column == PATIENT else kinds[s.column], train, f"{key}[{i}]")
                  for i, s in enumerate(specs))
    return PseudoLabeler(tuple(specs), codes)


# --- record targets for masked record modelling (MRM with the EHR row as the record) -------------


@dataclass(frozen=True)
class RecordField:
    """One fitted EHR field of the record.

    kind (the column's EHR kind) "categorical" or "binary": target = class index in ``categories``
    (train values sorted; binary is always ("0", "1"), 2 classes even if train holds one). kind
    "continuous": target = ``(x - mean) / std`` with the train mean and (population) std; std 1
    when train is constant.
    """

    name: str
    kind: str
    categories: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0


class RecordTargets(NamedTuple):
    """categorical (N, n_cat) int64, -1 missing or unseen; continuous (N, n_cont) float32, NaN missing."""

    categorical: np.ndarray
    continuous: np.ndarray


def fit_record_field(column: EHRColumn, values: pd.Series, train: np.ndarray, key: str) -> RecordField:
    """Fit one field on the train rows; ConfigError at ``key`` if the column is missing on all of them."""
    if column.kind == "binary":
        return RecordField(column.name, "binary", categories=("0", "1"))
    if column.kind == "categorical":
        keys = category_keys(values)[train]
        categories = tuple(sorted({str(k) for k in keys if k is not None}))
        if not categories:
            raise ConfigError(f"{key}: column {column.name!r} is missing on every train row; leave it out")
        return RecordField(column.name, "categorical", categories=categories)
    x = _numeric(values)[train]
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise ConfigError(f"{key}: column {column.name!r} is missing on every train row; leave it out")
    std = float(x.std())
    return RecordField(column.name, "continuous", mean=float(x.mean()), std=std if std > 0 else 1.0)


@dataclass(frozen=True)
class RecordEncoder:
    """Fitted MRM record targets. Categorical fields come first in the target layout, then continuous,
    each group in the cache's column order (``field_names``), so a (N, n_fields) visibility mask
    splits as ``[:, :n_categorical]`` / ``[:, n_categorical:]``."""

    fields: tuple[RecordField, ...]

    @property
    def categorical_fields(self) -> tuple[RecordField, ...]:
        """Categorical and binary fields, in the cache's column order."""
        return tuple(f for f in self.fields if f.kind != "continuous")

    @property
    def continuous_fields(self) -> tuple[RecordField, ...]:
        return tuple(f for f in self.fields if f.kind == "continuous")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in (*self.categorical_fields, *self.continuous_fields))

    @property
    def n_classes(self) -> tuple[int, ...]:
        """Classes of each categorical field, in target order (2 for binary)."""
        return tuple(len(f.categories) for f in self.categorical_fields)

    def transform(self, table: pd.DataFrame) -> RecordTargets:
        """Table rows -> RecordTargets (categorical (N, n_cat) int64, continuous (N, n_cont) float32)."""
        n = len(table)
        categorical = [encode_categories(_keys(table, f.name, f.kind), f.categories) for f in self.categorical_fields]
        continuous = [(_numeric(_column(table, f.name)) - f.mean) / f.std for f in self.continuous_fields]
        cat = np.stack(categorical, axis=1) if categorical else np.zeros((n, 0), dtype=np.int64)
        cont = np.stack(continuous, axis=1).astype(np.float32) if continuous else np.zeros((n, 0), np.float32)
        return RecordTargets(cat, cont)

    def to_dict(self) -> dict[str, Any]:
        return {"fields": [asdict(f) for f in self.fields]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordEncoder:
        return cls(tuple(RecordField(**{**f, "categories": tuple(f["categories"])}) for f in data["fields"]))


def fit_record_targets(table: pd.DataFrame, columns: Sequence[EHRColumn], train_mask: np.ndarray,
                       key: str = "mrm.fields") -> RecordEncoder:
    """Fit MRM record targets for ``columns`` (e.g. ``resolve_features(cfg, cache.ehr_columns)``) on
    the train rows: categories and mean/std see only them. ConfigError naming ``key`` when there are
    no columns or a column is missing on every train row; DataError for a column absent from the table."""
    if not columns:
        raise ConfigError(f"{key}: name at least one EHR column to reconstruct")
    train = _train_mask(train_mask, len(table))
    return RecordEncoder(tuple(fit_record_field(c, _column(table, c.name), train, key) for c in columns))


__all__ = ["BINNINGS", "PATIENT", "LabelCode", "PseudoLabelSpec", "PseudoLabeler", "RecordEncoder", "RecordField",
           "RecordTargets", "bin_codes", "bin_edges", "binary_keys", "category_keys", "check_pseudo_label_specs",
           "encode_categories", "fit_label_code", "fit_pseudo_labels", "fit_record_field", "fit_record_targets"]
