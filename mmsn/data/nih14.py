"""NIH ChestX-ray14 adapter: ``Data_Entry_2017*.csv`` + ``images*/`` -> :class:`Source`.

Official layout (NIH box / Kaggle), ``--root`` being the folder that holds::

    Data_Entry_2017_v2020.csv        (or Data_Entry_2017.csv; v2020 is preferred when both exist)
    images/00000001_000.png ...      or  images_001/images/*.png ... images_012/images/*.png

Parsing goes through ``torchxrayvision.datasets.NIH_Dataset`` (it also accepts the v2020 file's
"Patient Sex" header). Without a CSV in --root, xrv's bundled ``Data_Entry_2017_v2020.csv.gz`` is
used, restricted to the images found on disk (e.g. only some images_0XX archives downloaded).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmsn.data.ehr_columns import NIH14_EHR
from mmsn.data.images import (
    XRV_PARSE_ERRORS,
    FileImages,
    as_category,
    missing_image_error,
    numeric_column,
    read_csv,
    require_columns,
    require_root,
    require_rows,
    row_ref,
)
from mmsn.data.labels import NIH14_LABELS
from mmsn.data.source import Source
from mmsn.errors import DataError

LAYOUT = "the folder holding Data_Entry_2017*.csv and images/ or images_0XX/images/"
REQUIRED = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
            "Patient Gender", "View Position")
MAX_AGE = 120  # the 2017 CSV has ages such as 148 and 413 (typos); v2020 fixed them


def load_nih14(root: Path | None, seed: int) -> Source:
    """Load NIH ChestX-ray14 from its official layout; ``seed`` is unused (nothing is sampled)."""
    root = require_root(root, "nih14", LAYOUT)
    images = find_images(root)
    csv = find_csv(root)
    notes = {"labels": "Finding Labels split on '|'; 'No Finding' (and blank) -> all 14 labels 0, image kept",
             "age": f"Patient Age > {MAX_AGE} (typos in the 2017 CSV) -> missing",
             "view": "View Position PA/AP kept; any other value -> missing"}
    entries, csv_file = read_entries(root, csv)
    paths = entries["Image Index"].astype(str).map(images)
    if csv is None:  # bundled CSV: keep what was downloaded
        kept = paths.notna().to_numpy()
        notes["rows"] = (f"no Data_Entry_2017*.csv in {root}: used torchxrayvision's bundled {csv_file.name}, "
                         f"kept the {int(kept.sum())} of {len(kept)} rows whose image is on disk")
        entries, paths = entries[kept], paths[kept]
        if len(entries) == 0:
            raise DataError(f"nih14: no Data_Entry_2017*.csv in {root} and none of the bundled CSV's "
                            f"images under {root}/images or {root}/images_0XX/images")
    elif paths.isna().any():
        first = int(np.argmax(paths.isna().to_numpy()))
        raise missing_image_error(csv_file, int(entries.index[first]), entries["Image Index"].iloc[first],
                                  int(paths.isna().sum()), len(paths))
    table = build_table(entries, csv_file)
    return Source("nih14", table, NIH14_LABELS, NIH14_EHR, FileImages(tuple(paths)),
                  files=(str(csv_file),), notes=notes)


def find_csv(root: Path) -> Path | None:
    """``Data_Entry_2017_v2020.csv`` if present, else the first other ``Data_Entry_2017*.csv``."""
    found = sorted(p for p in root.glob("Data_Entry_2017*.csv*") if p.is_file())
    preferred = [p for p in found if p.name.startswith("Data_Entry_2017_v2020.csv")]
    candidates = preferred or found
    return candidates[0] if candidates else None


def find_images(root: Path) -> dict[str, str]:
    """Image file name -> absolute path over images/ and images_0XX/images/ (one scandir each)."""
    folders = [root / "images", *sorted(root.glob("images_*/images")), *sorted(root.glob("images_*"))]
    found: dict[str, str] = {}
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.name.lower().endswith(".png") and entry.is_file():
                        found.setdefault(entry.name, os.path.abspath(entry.path))
    return found


def read_entries(root: Path, csv: Path | None) -> tuple[pd.DataFrame, Path]:
    """The CSV via torchxrayvision, indexed by 0-based CSV data row; bad cells named by row."""
    import torchxrayvision as xrv  # heavy import (torch): only when a real dataset is loaded

    csv_file = csv if csv is not None else Path(xrv.datasets.datapath) / "Data_Entry_2017_v2020.csv.gz"
    header = read_csv(csv_file, nrows=0).rename(columns={"Patient Sex": "Patient Gender"})
    require_columns(header.columns, REQUIRED, csv_file)
    try:
        # views=["*"] and unique_patients=False: keep every image (xrv defaults keep one PA per patient)
        frame = xrv.datasets.NIH_Dataset(imgpath=str(root), csvpath=str(csv_file), views=["*"],
                                         unique_patients=False).csv
    except XRV_PARSE_ERRORS as err:  # xrv fails with a bare TypeError/KeyError: find the bad cell for the user
        raw = read_csv(csv_file).rename(columns={"Patient Sex": "Patient Gender"})
        validate(raw, csv_file)
        raise DataError(f"{csv_file}: torchxrayvision could not parse it ({type(err).__name__}: {err})") from err
    frame = frame.set_index("index")  # xrv's reset_index() kept the original row positions
    frame.index.name = None
    require_rows(frame, csv_file)
    validate(frame, csv_file)
    return frame, csv_file


def validate(frame: pd.DataFrame, csv: Path) -> None:
    """Numeric columns are numeric, ids are present and unique, findings are known names."""
    require_rows(frame, csv)
    for column in ("Patient Age", "Follow-up #"):
        numeric_column(frame, column, csv)
    for column in ("Image Index", "Patient ID"):
        blank = frame[column].isna()
        if blank.any():
            raise DataError(f"{csv}: column {column!r}, {row_ref(csv, int(frame.index[blank.argmax()]))} is blank")
    duplicated = frame["Image Index"].duplicated()
    if duplicated.any():
        row = int(frame.index[duplicated.argmax()])
        raise DataError(f"{csv}: {row_ref(csv, row)}: Image Index {frame['Image Index'].loc[row]!r} is repeated")
    label_matrix(frame, csv)


def label_matrix(frame: pd.DataFrame, csv: Path) -> pd.DataFrame:
    """int8 (N, 14) from "Finding Labels" (e.g. "Effusion|Mass"); an unknown finding is an error."""
    findings = frame["Finding Labels"].fillna("").astype(str).str.replace(" ", "", regex=False)
    dummies = findings.str.get_dummies(sep="|")
    known = {label.replace(" ", "") for label in NIH14_LABELS} | {"NoFinding"}
    unknown = [c for c in dummies.columns if c and c not in known]  # "" = blank cell
    if unknown:
        row = int(frame.index[dummies[unknown[0]].to_numpy().argmax()])
        raise DataError(f"{csv}: column 'Finding Labels', {row_ref(csv, row)}: unknown finding {unknown[0]!r} "
                        f"(known: {', '.join(NIH14_LABELS)}, No Finding)")
    return pd.DataFrame({label: dummies.get(label, 0) for label in NIH14_LABELS}, index=frame.index).astype(np.int8)


def build_table(entries: pd.DataFrame, csv: Path) -> pd.DataFrame:
    """The Source table: ids, 14 labels, canonical EHR columns (missing = NaN/None)."""
    age = numeric_column(entries, "Patient Age", csv)
    sex = entries["Patient Gender"].astype(str).str.strip().str.upper()
    view = entries["View Position"].astype(str).str.strip().str.upper()
    table = pd.DataFrame({
        "image_id": entries["Image Index"].astype(str),
        "patient_id": entries["Patient ID"].astype(str).str.strip(),
    })
    table = pd.concat([table, label_matrix(entries, csv)], axis=1)
    table["age"] = age.where((age >= 0) & (age <= MAX_AGE))
    table["sex"] = as_category(sex.where(sex.isin(["M", "F"])))
    table["view"] = as_category(view.where(view.isin(["PA", "AP"])))
    table["followup"] = numeric_column(entries, "Follow-up #", csv)
    return table.reset_index(drop=True)
