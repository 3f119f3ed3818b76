"""MIMIC-CXR-JPG (+ MIMIC-IV for age, sex and the inpatient stay) adapter -> :class:`Source`.

Official layouts, searched under ``--root`` up to three folder levels deep (so a PhysioNet download
``physionet.org/files/{mimic-cxr-jpg/2.1.0, mimiciv/2.2/hosp, mimiciv/2.2/icu}`` works as is)::

    mimic-cxr-2.0.0-metadata.csv(.gz)   required: dicom_id, subject_id, study_id, ViewPosition, ...
    mimic-cxr-2.0.0-chexpert.csv(.gz)   required: subject_id, study_id, the 14 CheXpert labels
    mimic-cxr-2.0.0-split.csv(.gz)      optional: official train/validate/test -> official_split
    files/pXX/pSUBJECT/sSTUDY/DICOM.jpg next to the metadata file (or in --root)
    patients.csv(.gz)                   optional (MIMIC-IV hosp/): gender, anchor_age, anchor_year
    admissions.csv(.gz)                 optional (MIMIC-IV hosp/): admittime, dischtime, hospital_expire_flag
    icustays.csv(.gz)                   optional (MIMIC-IV icu/): intime, outtime

torchxrayvision's MIMIC_Dataset is not used: it joins labels onto metadata the other way round
(keeping label rows without images), zeroes Support Devices when No Finding = 1, and knows nothing
of MIMIC-IV; plain pandas reads the files and vectorised merges scale to the 377k images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from mmsn.data.chexpert import chexpert_labels
from mmsn.data.ehr_columns import MIMIC_EHR
from mmsn.data.images import (
    FileImages,
    as_category,
    existing,
    missing_image_error,
    numeric_column,
    raise_first_bad,
    read_csv,
    require_columns,
    require_root,
    require_rows,
    row_ref,
)
from mmsn.data.labels import CHEXPERT_LABEL_POLICY, CHEXPERT_LABELS
from mmsn.data.source import Source
from mmsn.errors import DataError

LAYOUT = "the folder holding MIMIC-CXR-JPG (metadata/chexpert CSVs, files/) and optionally MIMIC-IV"
META, LABELS, SPLIT = "mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-split.csv"
PATIENTS, ADMISSIONS, ICUSTAYS = "patients.csv", "admissions.csv", "icustays.csv"
META_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition",
                "PatientOrientationCodeSequence_CodeMeaning", "StudyDate", "StudyTime")
VIEWS = ("PA", "AP", "LATERAL", "LL")
_ORIENTATION = {"erect": "Erect", "recumbent": "Recumbent"}
_SPLIT = {"train": "train", "validate": "val", "test": "test"}
_SEARCH_DEPTH = 3
_ID_FOLDER = re.compile(r"^[ps]\d+$")  # pXX / pSUBJECT / sSTUDY image folders: never searched
MAX_AGE = 120


def load_mimic(root: Path | None, seed: int) -> Source:
    """Load MIMIC-CXR-JPG (+ MIMIC-IV) from the official layouts; ``seed`` is unused."""
    root = require_root(root, "mimic", LAYOUT)
    found = find_files(root, (META, LABELS, SPLIT, PATIENTS, ADMISSIONS, ICUSTAYS))
    meta_csv, labels_csv = found[META], found[LABELS]
    if meta_csv is None or labels_csv is None:
        name = META if meta_csv is None else LABELS
        raise DataError(f"mimic: {name}(.gz) not found under {root} (searched {_SEARCH_DEPTH} levels deep)")
    images = read_metadata(meta_csv)
    table = images.merge(read_labels(labels_csv), on=["subject_id", "study_id"], how="inner")
    notes = base_notes(len(images) - len(table), len(images), images)
    if len(table) == 0:
        raise DataError(f"mimic: no image of {meta_csv} has a labelled study in {labels_csv}")
    table = table.sort_values("meta_row", kind="stable").reset_index(drop=True)
    table["patient_id"] = table["subject_id"].astype(str)
    paths = image_paths(table, meta_csv, root)
    add_demographics(table, found[PATIENTS], notes)
    add_stays(table, found[ADMISSIONS], found[ICUSTAYS], notes)
    split_csv = found[SPLIT]
    if split_csv is not None:
        add_official_split(table, split_csv, notes)
    files = tuple(str(p) for p in found.values() if p is not None)
    columns = ["image_id", "patient_id", *CHEXPERT_LABELS, *(c.name for c in MIMIC_EHR)]
    columns += ["official_split"] if "official_split" in table else []
    return Source("mimic", table[columns], CHEXPERT_LABELS, MIMIC_EHR, FileImages(tuple(paths)),
                  files=files, notes=notes)


def find_files(root: Path, names: tuple[str, ...]) -> dict[str, Path | None]:
    """Each name (or name.gz) in the shallowest folder that has it, breadth first from root."""
    folders, frontier = [root], [root]
    for _ in range(_SEARCH_DEPTH):
        frontier = [sub for folder in frontier for sub in _subfolders(folder)]
        folders += frontier
    found: dict[str, Path | None] = {}
    for name in names:
        hits = (folder / f for folder in folders for f in (name, f"{name}.gz"))
        found[name] = next((p for p in hits if p.is_file()), None)
    return found


def _subfolders(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []  # unreadable folder: simply not searched
    return [folder / n for n in names if not _ID_FOLDER.match(n)]


def id_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """An integer id column (subject_id, study_id): numeric, never blank, no fractions."""
    values = numeric_column(frame, column, path)
    bad = values.isna() | (values != np.floor(values))
    if bad.any():
        row = int(frame.index[bad.to_numpy().argmax()])
        raise DataError(f"{path}: column {column!r}, {row_ref(path, row)}: {frame[column].loc[row]!r} is not an id")
    return values.astype(np.int64)


def datetime_column(frame: pd.DataFrame, column: str, path: Path, fmt: str = "ISO8601") -> pd.Series:
    """datetime64[ns] (blank -> NaT); an unparsable cell is a DataError naming file, column, row."""
    raw = frame[column]
    values = pd.to_datetime(raw.astype(object).where(raw.notna(), None), format=fmt, errors="coerce")
    raise_first_bad(raw, values, column, path, "is not a date/time")
    return values.astype("datetime64[ns]")


def read_metadata(path: Path) -> pd.DataFrame:
    """One row per image: ids, canonical view/orientation, study year and datetime, CSV row."""
    require_columns(read_csv(path, nrows=0).columns, META_COLUMNS, path)
    frame = read_csv(path, usecols=list(META_COLUMNS), dtype={"dicom_id": str})
    require_rows(frame, path)
    blank = frame["dicom_id"].isna() | (frame["dicom_id"].astype(str).str.strip() == "")
    if blank.any():
        raise DataError(f"{path}: column 'dicom_id', {row_ref(path, int(blank.to_numpy().argmax()))} is blank")
    duplicated = frame["dicom_id"].duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().argmax())
        raise DataError(f"{path}: {row_ref(path, row)}: dicom_id {frame['dicom_id'][row]!r} is repeated")
    date = numeric_column(frame, "StudyDate", path)
    as_text = date.fillna(0).astype(np.int64).astype(str).where(date.notna())  # 21800506.0 -> "21800506"
    day = datetime_column(pd.DataFrame({"StudyDate": as_text}), "StudyDate", path, fmt="%Y%m%d")
    hhmmss = numeric_column(frame, "StudyTime", path)  # HHMMSS.fff read as a number: 74502.0 = 07:45:02
    seconds = (hhmmss // 10000) * 3600 + (hhmmss // 100 % 100) * 60 + hhmmss % 100
    view = frame["ViewPosition"].astype(str).str.strip().str.upper()
    orientation = frame["PatientOrientationCodeSequence_CodeMeaning"].astype(str).str.strip().str.lower()
    return pd.DataFrame({
        "meta_row": frame.index.to_numpy(),
        "image_id": frame["dicom_id"].astype(str).str.strip(),
        "subject_id": id_column(frame, "subject_id", path),
        "study_id": id_column(frame, "study_id", path),
        "view": as_category(view.where(view.isin(VIEWS))),
        "view_raw": as_category(view.where(frame["ViewPosition"].notna())),
        "orientation": as_category(orientation.map(_ORIENTATION)),
        "study_year": day.dt.year.astype(np.float64),
        "study_time": day + pd.to_timedelta(seconds, unit="s"),  # unknown time -> NaT -> stay missing
    })


def read_labels(path: Path) -> pd.DataFrame:
    """(subject_id, study_id) -> 14 int8 labels; a repeated study is an error."""
    frame = read_csv(path)
    require_columns(frame.columns, ("subject_id", "study_id", *CHEXPERT_LABELS), path)
    require_rows(frame, path)
    keys = pd.DataFrame({"subject_id": id_column(frame, "subject_id", path),
                         "study_id": id_column(frame, "study_id", path)})
    duplicated = keys.duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().argmax())
        raise DataError(f"{path}: {row_ref(path, row)}: study {keys['study_id'][row]} is labelled twice")
    return pd.concat([keys, chexpert_labels(frame, path)], axis=1)


def base_notes(dropped: int, total: int, images: pd.DataFrame) -> dict[str, str]:
    """Notes for the label policy, dropped unlabelled images and the view mapping."""
    other = images["view_raw"][images["view"].isna() & images["view_raw"].notna()].value_counts()
    return {
        "labels": CHEXPERT_LABEL_POLICY + "; No Finding = 1 zeroes other findings except Support Devices",
        "rows": f"{dropped} of {total} images dropped: their study has no row in {LABELS} "
                "(unlabelled studies; all-zero labels would claim 'no finding')",
        "view": f"ViewPosition kept if in {', '.join(VIEWS)}; other values -> missing"
                + ("" if other.empty else " (" + ", ".join(f"{k}: {v}" for k, v in other.items()) + ")"),
        "orientation": "PatientOrientationCodeSequence_CodeMeaning Erect/Recumbent; anything else -> missing",
    }


def image_paths(table: pd.DataFrame, meta_csv: Path, root: Path) -> list[str]:
    """files/pXX/pSUBJECT/sSTUDY/DICOM.jpg under the metadata's folder (else --root); all must exist."""
    base = meta_csv.parent / "files"
    base = Path(os.path.abspath(base if base.is_dir() else root / "files"))
    subject = table["subject_id"].astype(str)
    relative = ("p" + subject.str[:2] + "/p" + subject + "/s" + table["study_id"].astype(str)
                + "/" + table["image_id"] + ".jpg")
    paths = [os.path.join(base, r) for r in relative]
    found = existing(paths)
    if not found.all():
        first = int((~found).argmax())
        raise missing_image_error(meta_csv, int(table["meta_row"][first]), paths[first],
                                  int((~found).sum()), len(paths))
    return paths


def add_demographics(table: pd.DataFrame, patients_csv: Path | None, notes: dict[str, str]) -> None:
    """sex = patients.gender; age at study = anchor_age + (study year - anchor_year)."""
    if patients_csv is None:
        table["age"], table["sex"] = np.nan, None
        notes["demographic"] = f"{PATIENTS}(.gz) not found: age and sex all missing"
        return
    frame = read_csv(patients_csv)
    require_columns(frame.columns, ("subject_id", "gender", "anchor_age", "anchor_year"), patients_csv)
    patients = pd.DataFrame({
        "subject_id": id_column(frame, "subject_id", patients_csv),
        "gender": frame["gender"].astype(str).str.strip().str.upper(),
        "anchor_age": numeric_column(frame, "anchor_age", patients_csv),
        "anchor_year": numeric_column(frame, "anchor_year", patients_csv),
    })
    if patients["subject_id"].duplicated().any():
        row = int(patients["subject_id"].duplicated().to_numpy().argmax())
        raise DataError(f"{patients_csv}: {row_ref(patients_csv, row)}: subject_id is repeated")
    joined = table[["subject_id"]].merge(patients, on="subject_id", how="left")  # keeps table order
    age = joined["anchor_age"] + (table["study_year"] - joined["anchor_year"])
    table["age"] = age.where((age >= 0) & (age <= MAX_AGE))
    table["sex"] = as_category(joined["gender"].where(joined["gender"].isin(["M", "F"])))
    notes["demographic"] = (f"age = anchor_age + StudyDate year - anchor_year ({PATIENTS}); "
                            f"{int(joined['anchor_age'].isna().sum())} images of subjects without a row -> missing")


def add_stays(table: pd.DataFrame, admissions_csv: Path | None, icustays_csv: Path | None,
              notes: dict[str, str]) -> None:
    """hosp_death / icu of the admission / ICU stay spanning the study time (none spanning -> 0)."""
    if admissions_csv is None:
        table["hosp_death"] = np.nan
    else:
        adm = read_intervals(admissions_csv, "admittime", "dischtime", "hospital_expire_flag")
        table["hosp_death"] = spanning_value(table, adm)
    if icustays_csv is None:
        table["icu"] = np.nan
    else:
        table["icu"] = spanning_value(table, read_intervals(icustays_csv, "intime", "outtime", None))
    absent = [n for n, p in ((ADMISSIONS, admissions_csv), (ICUSTAYS, icustays_csv)) if p is None]
    notes["stay"] = (
        "hosp_death = hospital_expire_flag of the admission whose [admittime, dischtime] spans the study "
        "(StudyDate + StudyTime); icu = 1 if an ICU stay's [intime, outtime] spans it; no spanning stay -> 0 "
        "(as CXR-EHR-MSN: missing admission = alive, not in ICU); the latest stay starting before the study "
        "is the one tested (overlapping stays of one patient are rare); unknown study time -> missing"
        + (f"; {' and '.join(absent)} not found: those columns are all missing" if absent else ""))


def read_intervals(path: Path, start: str, end: str, flag: str | None) -> pd.DataFrame:
    """subject_id, start, end (datetime64[ns]) and value (the flag, or 1.0 for ICU stays)."""
    frame = read_csv(path)
    require_columns(frame.columns, ("subject_id", start, end) + ((flag,) if flag else ()), path)
    value = numeric_column(frame, flag, path) if flag else pd.Series(1.0, index=frame.index)
    bad = value.notna() & ~value.isin([0.0, 1.0])
    if bad.any():
        row = int(frame.index[bad.to_numpy().argmax()])
        raise DataError(f"{path}: column {flag!r}, {row_ref(path, row)}: {frame[flag].loc[row]!r} is not 0 or 1")
    return pd.DataFrame({"subject_id": id_column(frame, "subject_id", path),
                         "start": datetime_column(frame, start, path),
                         "end": datetime_column(frame, end, path), "value": value})


def spanning_value(table: pd.DataFrame, intervals: pd.DataFrame) -> np.ndarray:
    """Per image: value of the subject's latest interval starting at or before the study if it
    also ends at or after it, else 0; NaN when the study time is unknown. One merge_asof, O(N log N)."""
    out = np.full(len(table), np.nan)
    known = table["study_time"].notna().to_numpy()
    left = pd.DataFrame({"subject_id": table["subject_id"].to_numpy()[known],
                         "when": table["study_time"].to_numpy()[known],
                         "pos": np.flatnonzero(known)}).sort_values("when", kind="stable")
    right = intervals.dropna(subset=["start"]).sort_values("start", kind="stable")
    merged = pd.merge_asof(left, right, left_on="when", right_on="start", by="subject_id",
                           direction="backward")
    inside = merged["end"].notna() & (merged["when"] <= merged["end"])
    out[merged["pos"].to_numpy()] = np.where(inside, merged["value"], 0.0)
    return out


def add_official_split(table: pd.DataFrame, split_csv: Path, notes: dict[str, str]) -> None:
    """official_split from the split CSV by dicom_id: train / validate -> val / test."""
    frame = read_csv(split_csv, dtype={"dicom_id": str})
    require_columns(frame.columns, ("dicom_id", "split"), split_csv)
    names = frame["split"].astype(str).str.strip().str.lower()
    bad = ~names.isin(list(_SPLIT))
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise DataError(f"{split_csv}: column 'split', {row_ref(split_csv, row)}: {frame['split'][row]!r} "
                        f"is not one of {', '.join(_SPLIT)}")
    if frame["dicom_id"].duplicated().any():
        row = int(frame["dicom_id"].duplicated().to_numpy().argmax())
        raise DataError(f"{split_csv}: {row_ref(split_csv, row)}: dicom_id {frame['dicom_id'][row]!r} is repeated")
    lookup = dict(zip(frame["dicom_id"].astype(str).str.strip(), names.map(_SPLIT)))
    table["official_split"] = as_category(table["image_id"].map(lookup))
    notes["split"] = (f"official_split from {SPLIT} (validate -> val); "
                      f"{int(table['official_split'].isna().sum())} images not in it -> None")
