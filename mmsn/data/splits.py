"""Patient-level train/val/test splits, fixed by seed before any pretraining (docs/data.md, Splits by patient)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mmsn.errors import DataError

SPLITS: tuple[str, str, str] = ("train", "val", "test")


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> (0.7, 0.1, 0.2); three non-negative numbers summing to 1."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise DataError(f"--split {text!r}: expected three numbers like 0.7,0.1,0.2") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise DataError(f"--split {text!r}: expected three non-negative fractions summing to 1")
    return parts  # type: ignore[return-value]


def patient_split(patient_ids: pd.Series, fractions: tuple[float, float, float], seed: int) -> np.ndarray:
    """Assign every image the split of its patient, so no patient spans two splits.

    Patients (not images) are shuffled with ``seed`` and cut by the fractions of the patient count.
    Returns an object array (N,) of "train" / "val" / "test".
    """
    patients = np.array(sorted(pd.unique(patient_ids.astype(str))))
    order = np.random.default_rng(seed).permutation(len(patients))
    counts = _patient_counts(len(patients), fractions)
    names = np.repeat(np.array(SPLITS, dtype=object), counts)
    of_patient = dict(zip(patients[order], names))
    return patient_ids.astype(str).map(of_patient).to_numpy(dtype=object)


def _patient_counts(n_patients: int, fractions: tuple[float, float, float]) -> list[int]:
    """Round cumulative fractions so counts add up to ``n_patients``; a requested split is never empty."""
    edges = np.round(np.cumsum((0.0,) + tuple(fractions)) * n_patients).astype(int)
    counts = [int(c) for c in np.diff(edges)]
    counts[-1] += n_patients - sum(counts)
    for name, frac, count in zip(SPLITS, fractions, counts):
        if frac > 0 and count == 0:
            raise DataError(
                f"split {fractions}: the {name} set would be empty with {n_patients} patients; "
                "use more images (--n) or larger fractions"
            )
    return counts
