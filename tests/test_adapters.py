"""Real-dataset adapters on tiny trees in the official layouts: values, images, clear errors."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsn.data.chexpert import load_chexpert
from mmsn.data.ehr_columns import CHEXPERT_EHR, MIMIC_EHR, NIH14_EHR
from mmsn.data.images import FileImages, read_grey, to_square
from mmsn.data.labels import CHEXPERT_LABELS, NIH14_LABELS
from mmsn.data.mimic import load_mimic
from mmsn.data.nih14 import load_nih14
from mmsn.data.source import Source
from mmsn.errors import ConfigError, DataError
from tests.fixtures_real import (
    D1,
    D2,
    D3,
    D4,
    D5,
    D6,
    HEIGHT,
    WIDTH,
    make_chexpert_tree,
    make_mimic_tree,
    make_nih14_tree,
)

Loader = Callable[[Path | None, int], Source]
CXR = Path("mimic-cxr-jpg/2.0.0")


def row(source: Source, image_id: str) -> pd.Series:
    table = source.table.set_index("image_id")
    return table.loc[image_id]


def positives(r: pd.Series, labels: tuple[str, ...]) -> set[str]:
    return {label for label in labels if r[label] == 1}


def edit_csv(path: Path, data_row: int, column: str, value: str) -> None:
    """Set one cell (1-based data row) keeping every other cell's text as is."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[data_row - 1, column] = value
    frame.to_csv(path, index=False)


def check_contract(source: Source, labels: tuple[str, ...]) -> None:
    table = source.table
    assert table["image_id"].is_unique
    assert all(table[label].dtype == np.int8 for label in labels)
    assert set(table[list(labels)].to_numpy().ravel()) <= {0, 1}
    assert all(col.name in table for col in source.ehr)
    assert isinstance(source.image, FileImages) and len(source.image) == len(table)
    restored = pickle.loads(pickle.dumps(source.image))
    for i in range(len(table)):
        img = restored(i, 16)
        assert img.shape == (16, 16) and img.dtype == np.uint8


# ------------------------------------------------------------------------------------------------
# NIH-14


def test_nih14_labels_ehr_and_all_images(tmp_path: Path) -> None:
    source = load_nih14(make_nih14_tree(tmp_path), seed=0)
    check_contract(source, NIH14_LABELS)
    assert source.labels == NIH14_LABELS and source.ehr == NIH14_EHR
    assert len(source.table) == 6 and "official_split" not in source.table
    first = row(source, "00000001_001.png")
    assert positives(first, NIH14_LABELS) == {"Cardiomegaly", "Emphysema"}
    got = (first["patient_id"], first["age"], first["sex"], first["view"], first["followup"])
    assert got == ("1", 58, "M", "PA", 1)
    assert positives(row(source, "00000002_000.png"), NIH14_LABELS) == set()  # No Finding kept, all 0
    typo = row(source, "00000003_000.png")
    assert np.isnan(typo["age"]) and typo["sex"] == "F"  # age 413 -> missing
    assert positives(typo, NIH14_LABELS) == {"Effusion", "Infiltration", "Pleural_Thickening"}
    assert row(source, "00000003_001.png")["view"] == "AP"
    assert source.files[0].endswith("Data_Entry_2017_v2020.csv")


def test_nih14_without_csv_uses_bundled_csv_for_images_on_disk(tmp_path: Path) -> None:
    root = make_nih14_tree(tmp_path)
    (root / "Data_Entry_2017_v2020.csv").unlink()
    (root / "images_002" / "images" / "00000004_000.png").unlink()
    source = load_nih14(root, seed=0)
    assert sorted(source.table["image_id"]) == ["00000001_000.png", "00000001_001.png", "00000002_000.png",
                                                "00000003_000.png", "00000003_001.png"]
    assert source.files[0].endswith("Data_Entry_2017_v2020.csv.gz") and "bundled" in source.notes["rows"]


def test_nih14_images_8_and_16_bit_crop_and_pad(tmp_path: Path) -> None:
    root = make_nih14_tree(tmp_path)
    grey16 = read_grey(root / "images_002" / "images" / "00000003_001.png")
    assert grey16.dtype == np.float32 and grey16.shape == (HEIGHT, WIDTH)
    full = to_square(grey16, HEIGHT, "pad")  # own min/max -> 0..255; no resize at this size
    assert full[:, 5:-5].min() == 0 and full.max() == 255
    crop, pad = (FileImages((str(root / "images_001" / "images" / "00000001_000.png"),), a) for a in ("crop", "pad"))
    assert crop(0, 24).min() >= 100  # rows ramp 100..149: no black anywhere
    padded = pad(0, 25)  # 40 x 50 -> 50 x 50 with 5 black columns each side -> 25 x 25
    assert padded.shape == (25, 25) and padded[:, 0].max() == 0 and padded[:, 12].min() >= 100
    rgba = FileImages((str(root / "images_002" / "images" / "00000004_000.png"),))(0, 8)
    assert rgba.shape == (8, 8) and rgba.min() >= 100


# ------------------------------------------------------------------------------------------------
# CheXpert


def test_chexpert_labels_ehr_and_ids(tmp_path: Path) -> None:
    source = load_chexpert(make_chexpert_tree(tmp_path), seed=0)
    check_contract(source, CHEXPERT_LABELS)
    assert source.ehr == CHEXPERT_EHR and len(source.table) == 8
    assert "official_split" not in source.table
    healthy = row(source, "train/patient00001/study1/view1_frontal.jpg")
    assert positives(healthy, CHEXPERT_LABELS) == {"No Finding", "Support Devices"}
    uncertain = row(source, "train/patient00002/study2/view1_frontal.jpg")  # -1 -> 0, blank -> 0
    assert positives(uncertain, CHEXPERT_LABELS) == {"Lung Opacity", "Fracture"}
    assert (uncertain["patient_id"], uncertain["age"], uncertain["sex"], uncertain["view"]) == \
        ("patient00002", 87, "F", "AP")
    assert row(source, "train/patient00002/study1/view2_lateral.jpg")["view"] == "LATERAL"
    unknown = row(source, "train/patient00003/study1/view1_frontal.jpg")
    assert unknown["sex"] is None and np.isnan(unknown["age"]) and unknown["view"] == "LL"
    assert row(source, "train/patient00004/study1/view1_frontal.jpg")["view"] == "PA"
    assert row(source, "valid/patient64542/study1/view1_frontal.jpg")["view"] == "LL"  # RL -> LL
    assert (source.table["patient_id"] == "patient00002").sum() == 3


def test_chexpert_renamed_root_and_train_in_parent_path(tmp_path: Path) -> None:
    # A folder named "train..." above valid.csv trips torchxrayvision's patient-id parsing (pandas
    # fallback, noted); a renamed dataset folder is found by dropping Path's first component.
    root = make_chexpert_tree(tmp_path / "train_sets")
    renamed = root.rename(root.parent / "chexpert")
    source = load_chexpert(renamed, seed=0)
    assert len(source.table) == 8 and "parser valid.csv" in source.notes
    assert source.image(7, 8).shape == (8, 8)


# ------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG + MIMIC-IV


def test_mimic_labels_ehr_stays_and_split(tmp_path: Path) -> None:
    source = load_mimic(make_mimic_tree(tmp_path), seed=0)
    check_contract(source, CHEXPERT_LABELS)
    assert source.ehr == MIMIC_EHR
    assert list(source.table["image_id"]) == [D1, D2, D3, D4, D5]  # D6: unlabelled study dropped
    assert "1 of 6" in source.notes["rows"]
    pa, lateral = row(source, D1), row(source, D2)
    assert positives(pa, CHEXPERT_LABELS) == {"No Finding"}
    got = (pa["patient_id"], pa["age"], pa["sex"], pa["view"], pa["orientation"])
    assert got == ("10000032", 52, "F", "PA", "Erect")
    assert (pa["hosp_death"], pa["icu"]) == (0, 0)  # admission 19:17 spans the 21:30 study, flag 0
    assert lateral["view"] == "LATERAL"
    icu = row(source, D3)  # admission with flag 1 and an ICU stay both span the study
    assert positives(icu, CHEXPERT_LABELS) == {"Edema", "Pleural Effusion", "Support Devices"}  # -1 -> 0
    assert (icu["view"], icu["orientation"], icu["hosp_death"], icu["icu"]) == ("AP", "Recumbent", 1, 1)
    outside = row(source, D4)  # died in an admission that ended before the study: not this one
    assert (outside["age"], outside["sex"], outside["hosp_death"], outside["icu"]) == (88, "M", 0, 0)
    assert outside["view"] is None and outside["orientation"] is None
    assert positives(outside, CHEXPERT_LABELS) == {"Pneumonia"}
    orphan = row(source, D5)  # no patients row; "AP AXIAL" -> missing view
    assert np.isnan(orphan["age"]) and orphan["sex"] is None and orphan["view"] is None
    assert list(source.table["official_split"]) == ["train", "train", "train", "val", "test"]
    assert D6 not in set(source.table["image_id"])


def test_mimic_without_mimic_iv_leaves_those_columns_missing(tmp_path: Path) -> None:
    root = make_mimic_tree(tmp_path)
    shutil.rmtree(root / "mimiciv")
    source = load_mimic(root, seed=0)
    assert len(source.table) == 5
    for column in ("age", "hosp_death", "icu"):
        assert source.table[column].isna().all()
    assert source.table["sex"].isna().all() and source.table["view"].notna().any()
    assert "not found" in source.notes["stay"] and "not found" in source.notes["demographic"]


# ------------------------------------------------------------------------------------------------
# image helpers


def test_to_square_modes_and_intensity() -> None:
    portrait = np.full((60, 30), 200, np.uint8)
    assert to_square(portrait, 30, "crop").min() == 200  # the middle 30 rows, untouched
    padded = to_square(portrait, 60, "pad")
    assert padded[:, :15].max() == 0 and padded[:, 15:45].min() == 200
    ramp = np.linspace(-3.0, 7.0, 100 * 100, dtype=np.float32).reshape(100, 100)
    out = to_square(ramp, 100)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert to_square(np.full((10, 10), 5.0), 4).max() == 0  # flat non-uint8 image: black, no NaN
    with pytest.raises(ConfigError, match="aspect"):
        to_square(portrait, 8, "stretch")


def test_unreadable_images_name_the_file(tmp_path: Path) -> None:
    root = make_chexpert_tree(tmp_path)
    source = load_chexpert(root, seed=0)
    garbage, truncated = Path(source.image.paths[0]), Path(source.image.paths[1])
    garbage.write_bytes(b"not a jpeg at all")
    truncated.write_bytes(truncated.read_bytes()[:200])
    for i, path in ((0, garbage), (1, truncated)):
        with pytest.raises(DataError, match=str(path)):
            source.image(i, 16)
    garbage.unlink()
    with pytest.raises(DataError, match="not found"):
        read_grey(garbage)


# ------------------------------------------------------------------------------------------------
# bad input: each error names the file, the row and/or the column


@pytest.mark.parametrize("load", [load_nih14, load_chexpert, load_mimic])
def test_missing_root(load: Loader, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--root is required"):
        load(None, 0)
    with pytest.raises(DataError, match="no such directory"):
        load(tmp_path / "absent", 0)


def test_nih14_bad_inputs(tmp_path: Path) -> None:
    root = make_nih14_tree(tmp_path)
    csv = root / "Data_Entry_2017_v2020.csv"
    original = csv.read_text()
    edit_csv(csv, 2, "Patient Age", "fifty")
    with pytest.raises(DataError, match=r"Data_Entry_2017_v2020.csv.*'Patient Age'.*data row 2 \(line 3\)"):
        load_nih14(root, 0)
    csv.write_text(original)
    edit_csv(csv, 4, "Finding Labels", "Effusion|Tumour")
    with pytest.raises(DataError, match="data row 4.*unknown finding 'Tumour'"):
        load_nih14(root, 0)
    pd.read_csv(csv).drop(columns="View Position").to_csv(csv, index=False)
    with pytest.raises(DataError, match="Data_Entry_2017_v2020.csv: missing required column.*'View Position'"):
        load_nih14(root, 0)
    csv.write_text(original)
    (root / "images_001" / "images" / "00000002_000.png").unlink()
    with pytest.raises(DataError, match=r"data row 3 \(line 4\) references image 00000002_000.png"):
        load_nih14(root, 0)
    csv.write_text(original.splitlines()[0] + "\n")
    with pytest.raises(DataError, match="Data_Entry_2017_v2020.csv: no data rows"):
        load_nih14(root, 0)
    csv.write_text("")
    with pytest.raises(DataError, match="Data_Entry_2017_v2020.csv: empty file"):
        load_nih14(root, 0)


def test_chexpert_bad_inputs(tmp_path: Path) -> None:
    root = make_chexpert_tree(tmp_path)
    train = root / "train.csv"
    original = train.read_text()
    edit_csv(train, 3, "Age", "eighty")
    with pytest.raises(DataError, match=r"train.csv: column 'Age', train.csv data row 3 \(line 4\): 'eighty'"):
        load_chexpert(root, 0)
    train.write_text(original)
    edit_csv(train, 2, "Edema", "2.0")
    with pytest.raises(DataError, match="column 'Edema'.*data row 2.*not one of 1, 0, -1"):
        load_chexpert(root, 0)
    train.write_text(original)
    pd.read_csv(train).drop(columns="Frontal/Lateral").to_csv(train, index=False)
    with pytest.raises(DataError, match="train.csv: missing required column.*'Frontal/Lateral'"):
        load_chexpert(root, 0)
    train.write_text(original)
    (tmp_path / "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg").unlink()
    with pytest.raises(DataError, match="train.csv data row 6.*patient00004/study1/view1_frontal.jpg"):
        load_chexpert(root, 0)
    train.unlink()
    (root / "valid.csv").unlink()
    with pytest.raises(DataError, match="neither train.csv nor valid.csv"):
        load_chexpert(root, 0)


def test_mimic_bad_inputs(tmp_path: Path) -> None:
    root = make_mimic_tree(tmp_path)
    meta = root / CXR / "mimic-cxr-2.0.0-metadata.csv.gz"
    admissions = root / "mimiciv/2.2/hosp/admissions.csv.gz"
    original = meta.read_bytes()
    pd.read_csv(meta).drop(columns="StudyDate").to_csv(meta, index=False)
    with pytest.raises(DataError, match="metadata.csv.gz: missing required column.*'StudyDate'"):
        load_mimic(root, 0)
    meta.write_bytes(original)
    edit_csv(admissions, 3, "admittime", "yesterday")
    with pytest.raises(DataError, match=r"admissions.csv.gz: column 'admittime', .*data row 3.*'yesterday'"):
        load_mimic(root, 0)
    admissions.unlink()
    (root / CXR / "files/p10/p10000764/s57375967" / f"{D4}.jpg").unlink()
    with pytest.raises(DataError, match=f"metadata.csv.gz data row 4 .*references image .*{D4}.jpg"):
        load_mimic(root, 0)
    (root / CXR / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-chexpert.csv"):
        load_mimic(root, 0)
