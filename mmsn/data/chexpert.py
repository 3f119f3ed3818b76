"""CheXpert adapter: ``train.csv`` / ``valid.csv`` + JPEGs -> :class:`Source`.

Official layout, ``--root`` being the ``CheXpert-v1.0-small`` (or ``CheXpert-v1.0``) folder::

    train.csv, valid.csv                    (either or both)
    train/patient00001/study1/view1_frontal.jpg ...

The CSV ``Path`` column is relative to --root's *parent* ("CheXpert-v1.0-small/train/..."); paths are
resolved against root.parent, root, and root with the first component dropped, in that order, so a
renamed folder still works. No official split is recorded: the official valid set is 200 studies,
too small for model selection, so prepare's patient-level split covers both files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmsn.data.ehr_columns import CHEXPERT_EHR
from mmsn.data.images import (
    XRV_PARSE_ERRORS,
    FileImages,
    as_category,
    existing,
    missing_image_error,
    numeric_column,
    read_csv,
    require_columns,
    require_root,
    require_rows,
    row_ref,
)
from mmsn.data.labels import CHEXPERT_LABEL_POLICY, CHEXPERT_LABELS
from mmsn.data.source import Source
from mmsn.errors import DataError

LAYOUT = "the CheXpert-v1.0(-small) folder holding train.csv and/or valid.csv and train/, valid/"
CSV_NAMES = ("train.csv", "valid.csv")
REQUIRED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS)
MAX_AGE = 120
_SEX = {"male": "M", "female": "F"}  # "Unknown" and blank -> missing
# Frontal films carry AP/PA; a handful say LL or RL (lateral decubitus-like), kept as one "LL".
_FRONTAL_VIEW = {"AP": "AP", "PA": "PA", "LL": "LL", "RL": "LL"}
# "No Finding" = 1 overrides other positives except Support Devices, as torchxrayvision does; on
# labeller output it is a no-op (the labeller sets No Finding only when nothing else is positive).
_NOT_OVERRIDDEN = ("No Finding", "Support Devices")


def load_chexpert(root: Path | None, seed: int) -> Source:
    """Load CheXpert from its official layout; ``seed`` is unused (nothing is sampled)."""
    root = require_root(root, "chexpert", LAYOUT)
    csvs = [root / name for name in CSV_NAMES if (root / name).is_file()]
    if not csvs:
        raise DataError(f"chexpert: neither train.csv nor valid.csv in {root} ({LAYOUT})")
    notes = {
        "labels": CHEXPERT_LABEL_POLICY + "; No Finding = 1 zeroes other findings except Support Devices",
        "age": f"Age 0 (3 rows of an all-adult release; torchxrayvision also drops it) or > {MAX_AGE} -> missing",
        "sex": "Male/Female -> M/F; Unknown or blank -> missing",
        "view": "Lateral -> LATERAL; Frontal -> AP/PA column (AP, PA; LL and RL -> LL; blank -> missing)",
        "split": "no official_split: the official valid.csv (200 studies) is too small; both files are pooled",
    }
    tables, paths = [], []
    for csv in csvs:
        frame, parser_note = read_chexpert_csv(csv, root)
        if parser_note:
            notes[f"parser {csv.name}"] = parser_note
        tables.append(build_table(frame, csv))
        paths.extend(resolve_paths(frame, csv, root))
    table = pd.concat(tables, ignore_index=True)
    duplicated = table["image_id"].duplicated()
    if duplicated.any():
        raise DataError(f"chexpert: image {table['image_id'][duplicated].iloc[0]!r} is listed twice in {root}")
    return Source("chexpert", table, CHEXPERT_LABELS, CHEXPERT_EHR, FileImages(tuple(paths)),
                  files=tuple(str(c) for c in csvs), notes=notes)


def read_chexpert_csv(csv: Path, root: Path) -> tuple[pd.DataFrame, str]:
    """The CSV via torchxrayvision's CheX_Dataset (RangeIndex = data row), else pandas with a note."""
    import torchxrayvision as xrv  # heavy import (torch): only when a real dataset is loaded

    require_columns(read_csv(csv, nrows=0).columns, REQUIRED, csv)
    try:
        # views=["*"], unique_patients=False: keep every image (xrv defaults keep one PA per patient)
        frame = xrv.datasets.CheX_Dataset(imgpath=str(root), csvpath=str(csv), views=["*"],
                                          unique_patients=False).csv
        note = ""
    except XRV_PARSE_ERRORS as err:
        # xrv derives patient ids by splitting Path on "train/" whenever the CSV's own path contains
        # "train" (so valid.csv under e.g. /data/train_sets/ fails) and does Age * 1.0 (a non-numeric
        # age fails with a bare TypeError). pandas reads the same file; our checks below name bad cells.
        frame = read_csv(csv)
        note = f"torchxrayvision.CheX_Dataset failed ({type(err).__name__}: {err}); read with pandas"
    require_rows(frame, csv)
    return frame, note


def chexpert_labels(frame: pd.DataFrame, csv: Path) -> pd.DataFrame:
    """int8 (N, 14) from CheXpert-labeller columns (1, 0, -1, blank) by CHEXPERT_LABEL_POLICY.

    Shared with the MIMIC-CXR-JPG adapter, whose -chexpert.csv uses the same coding.
    """
    values = {}
    for label in CHEXPERT_LABELS:
        column = numeric_column(frame, label, csv)
        bad = column.notna() & ~column.isin([1.0, 0.0, -1.0])
        if bad.any():
            row = int(frame.index[bad.to_numpy().argmax()])
            raise DataError(f"{csv}: column {label!r}, {row_ref(csv, row)}: {frame[label].loc[row]!r} "
                            f"is not one of 1, 0, -1 or blank")
        values[label] = (column == 1.0).to_numpy()
    healthy = values["No Finding"]
    for label in CHEXPERT_LABELS:
        if label not in _NOT_OVERRIDDEN:
            values[label] = values[label] & ~healthy
    return pd.DataFrame(values, index=frame.index).astype(np.int8)


def build_table(frame: pd.DataFrame, csv: Path) -> pd.DataFrame:
    """The Source table rows of one CSV: ids, labels, canonical EHR (missing = NaN/None)."""
    path = frame["Path"].astype(str).str.strip()
    patient = path.str.extract(r"(patient\d+)", expand=False)
    if patient.isna().any():
        row = int(frame.index[patient.isna().to_numpy().argmax()])
        raise DataError(f"{csv}: column 'Path', {row_ref(csv, row)}: {path.loc[row]!r} has no patientNNNNN folder")
    age = numeric_column(frame, "Age", csv)
    sex = frame["Sex"].astype(str).str.strip().str.lower().map(_SEX)
    table = pd.DataFrame({"image_id": dataset_relative(path), "patient_id": patient})
    table = pd.concat([table, chexpert_labels(frame, csv)], axis=1)
    table["age"] = age.where((age > 0) & (age <= MAX_AGE))
    table["sex"] = as_category(sex)
    table["view"] = as_category(view_of(frame))
    return table.reset_index(drop=True)


def dataset_relative(path: pd.Series) -> pd.Series:
    """"CheXpert-v1.0-small/train/p/s/v.jpg" -> "train/p/s/v.jpg": ids independent of the folder name."""
    return path.str.replace(r"^(?!(?:train|valid|test)/)[^/]+/", "", regex=True)


def view_of(frame: pd.DataFrame) -> pd.Series:
    """Canonical view: LATERAL for laterals, else the AP/PA value mapped by _FRONTAL_VIEW."""
    side = frame["Frontal/Lateral"].astype(str).str.strip().str.lower()
    frontal = frame["AP/PA"].astype(str).str.strip().str.upper().map(_FRONTAL_VIEW)
    view = pd.Series(None, index=frame.index, dtype=object)
    view[side == "lateral"] = "LATERAL"
    is_frontal = (side == "frontal").to_numpy()
    view[is_frontal] = frontal[is_frontal].astype(object)
    return view


def resolve_paths(frame: pd.DataFrame, csv: Path, root: Path) -> list[str]:
    """Absolute image paths: root.parent/Path, root/Path, root/Path-minus-first-component, in order."""
    relative = frame["Path"].astype(str).str.strip().tolist()
    stripped = dataset_relative(pd.Series(relative)).tolist()
    base = Path(os.path.abspath(root))
    candidates = ([str(base.parent / p) for p in relative], [str(base / p) for p in relative],
                  [str(base / p) for p in stripped])
    resolved = np.full(len(relative), None, dtype=object)
    for paths in candidates:
        todo = np.flatnonzero(pd.isna(resolved))
        if len(todo) == 0:
            break
        found = existing([paths[i] for i in todo])
        resolved[todo[found]] = [paths[i] for i in todo[found]]
    missing = pd.isna(resolved)
    if missing.any():
        first = int(missing.argmax())
        where = f"{relative[first]} (looked under {base.parent} and {base})"
        raise missing_image_error(csv, int(frame.index[first]), where, int(missing.sum()), len(relative))
    return [str(p) for p in resolved]
