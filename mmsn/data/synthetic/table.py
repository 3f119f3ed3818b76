"""The synthetic dataset's table: every real NIH-14 metadata row bundled with torchxrayvision, with
synthetic ids, SIMULATED inpatient-stay columns (``icu``, ``hosp_death``) and seeded blanks."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from mmsn.data.ehr_columns import SYNTHETIC_EHR
from mmsn.data.images import read_csv, require_columns
from mmsn.data.labels import NIH14_LABELS
from mmsn.data.nih14 import REQUIRED, build_table, find_csv, validate
from mmsn.errors import DataError

CSV_NAME = "Data_Entry_2017_v2020.csv.gz"  # in torchxrayvision/data
BLANK_FRACTION = 0.02  # of view and of age, each, blanked at random (seeded)
ICU_PREVALENCE, DEATH_PREVALENCE = 0.12, 0.045  # simulated stay targets (MIMIC-like inpatient mix)

# Simulated stay: log-odds added per present finding (AP films = bed-bound, sicker patients).
ICU_WEIGHTS = {"Edema": 1.4, "Pneumothorax": 1.3, "Consolidation": 1.1, "Pneumonia": 1.0,
               "Effusion": 0.9, "Cardiomegaly": 0.6, "Atelectasis": 0.5, "Emphysema": 0.4,
               "Mass": 0.4, "Infiltration": 0.3, "Hernia": 0.3, "Fibrosis": 0.3}
DEATH_WEIGHTS = {"Edema": 1.0, "Mass": 0.9, "Pneumonia": 0.8, "Consolidation": 0.7, "Effusion": 0.7,
                 "Pneumothorax": 0.6, "Fibrosis": 0.5, "Cardiomegaly": 0.4, "Emphysema": 0.3}


# --------------------------------------------------------------------------------------- table
def xrv_data_dir() -> Path:
    """torchxrayvision's bundled data folder, found without importing it (the import pulls in torch)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise DataError("synthetic: torchxrayvision is not installed (it ships the NIH-14 metadata); "
                        "install it or pass --root pointing at a Data_Entry_2017*.csv")
    return Path(spec.origin).parent / "data"


def resolve_csv(root: Path | None) -> Path:
    """The metadata CSV: ``root`` itself, the Data_Entry_2017*.csv(.gz) in folder ``root``, or xrv's."""
    if root is None:
        return xrv_data_dir() / CSV_NAME
    root = Path(root)
    if root.is_file():
        return root
    found = find_csv(root) if root.is_dir() else None
    if found is None:
        raise DataError(f"synthetic: --root {root}: not a Data_Entry_2017*.csv(.gz) file nor a folder holding one")
    return found


def read_metadata(csv: Path) -> pd.DataFrame:
    """The NIH-14 table (same parsing and checks as the nih14 adapter): ids, 14 labels, EHR."""
    raw = read_csv(csv).rename(columns={"Patient Sex": "Patient Gender"})
    require_columns(raw.columns, REQUIRED, csv)
    validate(raw, csv)
    return build_table(raw, csv)


def intercept_for(score: np.ndarray, prevalence: float) -> float:
    """Intercept b with mean(sigmoid(score + b)) == prevalence (bisection: the mean is monotone in b)."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(score + mid)))) < prevalence:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def simulate_stay(labels: np.ndarray, age: np.ndarray, ap: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SIMULATED (icu, hosp_death) float 0/1 arrays from a logistic model of age, view and findings.

    ICU odds rise with age, AP view and acute findings (edema, pneumothorax, consolidation, ...);
    death odds rise more steeply with age, with ICU and with edema/mass/pneumonia. Intercepts are
    calibrated so ICU ~12 % and death ~4.5 % over the rows given.
    """
    rng = np.random.default_rng([seed, 7])
    age = np.where(np.isfinite(age), age, np.nanmedian(age))
    w_icu = np.array([ICU_WEIGHTS.get(n, 0.1) for n in NIH14_LABELS])
    w_death = np.array([DEATH_WEIGHTS.get(n, 0.1) for n in NIH14_LABELS])
    score = 0.02 * (age - 50) + 1.0 * ap + labels @ w_icu
    p_icu = 1 / (1 + np.exp(-(score + intercept_for(score, ICU_PREVALENCE))))
    icu = (rng.random(len(age)) < p_icu).astype(np.float64)
    score = 0.045 * (age - 50) + 0.5 * ap + labels @ w_death + 1.5 * icu
    p_death = 1 / (1 + np.exp(-(score + intercept_for(score, DEATH_PREVALENCE))))
    death = (rng.random(len(age)) < p_death).astype(np.float64)
    return icu, death


def synthetic_table(meta: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Synthetic ids, simulated stay columns and seeded blanks on top of the real NIH-14 rows."""
    table = meta.copy()
    table["image_id"] = [f"syn-{k:06d}" for k in range(len(table))]  # never the real file names
    table["patient_id"] = "nih-" + table["patient_id"].astype(str)
    labels = table[list(NIH14_LABELS)].to_numpy(np.float64)
    ap = (table["view"] == "AP").to_numpy(np.float64)
    table["icu"], table["hosp_death"] = simulate_stay(labels, table["age"].to_numpy(np.float64), ap, seed)
    rng = np.random.default_rng([seed, 11])
    blank_view, blank_age = rng.random(len(table)) < BLANK_FRACTION, rng.random(len(table)) < BLANK_FRACTION
    table["view"] = table["view"].astype(object).where(~blank_view, None)
    table["age"] = table["age"].where(~blank_age)
    return table[["image_id", "patient_id", *NIH14_LABELS, *(c.name for c in SYNTHETIC_EHR)]]
