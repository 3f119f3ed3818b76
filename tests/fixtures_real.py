"""Tiny fake NIH-14, CheXpert and MIMIC-CXR-JPG/MIMIC-IV trees in the official layouts.

Plain functions (not pytest fixtures) so other tests, e.g. the prepare CLI end to end, can reuse
them: ``make_nih14_tree(tmp_path) -> root`` etc., where ``root`` is what ``--root`` should be.
CSV headers are copied from the real files; rows include the awkward cases the adapters must
handle (blank and -1 labels, Unknown sex, age 413, missing ViewPosition, a study outside any
admission, an ICU stay spanning a study, patients with several images). Images are 40 x 50
(portrait) with a vertical ramp 100..149 so crop/pad results are predictable.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 40, 50

NIH_HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")
# (row, images_0XX folder, image kind)
NIH_ROWS = (
    ("00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143", "images_001", "L"),
    ("00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143", "images_001", "L"),
    ("00000002_000.png,No Finding,0,2,80,M,AP,2500,2048,0.171,0.171", "images_001", "L"),
    ("00000003_000.png,Effusion|Infiltration|Pleural_Thickening,0,3,413,F,PA,2992,2991,0.143,0.143",
     "images_002", "L"),
    ("00000003_001.png,Hernia,1,3,74,F,AP,3056,2544,0.139,0.139", "images_002", "I;16"),
    ("00000004_000.png,Mass|Nodule,0,4,25,F,PA,2048,2500,0.168,0.168", "images_002", "RGBA"),
)

CHEXPERT_HEADER = ("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
                   "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
                   "Pleural Effusion,Pleural Other,Fracture,Support Devices")
_P = "CheXpert-v1.0-small"
CHEXPERT_TRAIN = (
    f"{_P}/train/patient00001/study1/view1_frontal.jpg,Female,68,Frontal,AP,1.0,,,,,,,,,0.0,,,,1.0",
    f"{_P}/train/patient00002/study2/view1_frontal.jpg,Female,87,Frontal,AP,,,-1.0,1.0,,-1.0,-1.0,,-1.0,,-1.0,,1.0,",
    f"{_P}/train/patient00002/study1/view1_frontal.jpg,Female,83,Frontal,AP,,,,1.0,,,-1.0,,,,,,1.0,",
    f"{_P}/train/patient00002/study1/view2_lateral.jpg,Female,83,Lateral,,,,,1.0,,,,,,,,,1.0,",
    f"{_P}/train/patient00003/study1/view1_frontal.jpg,Unknown,0,Frontal,LL,,,,,,1.0,,,,,,,,",
    f"{_P}/train/patient00004/study1/view1_frontal.jpg,Male,41,Frontal,PA,,,,,,,,,,,1.0,,,",
)
CHEXPERT_VALID = (
    (f"{_P}/valid/patient64541/study1/view1_frontal.jpg,Male,73,Frontal,AP,0.0,1.0,1.0,1.0,0.0,0.0,0.0,0.0,0.0,"
     "0.0,0.0,0.0,0.0,0.0"),
    (f"{_P}/valid/patient64542/study1/view1_frontal.jpg,Male,70,Frontal,RL,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,"
     "0.0,0.0,0.0,0.0,0.0"),
)

MIMIC_META_HEADER = ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,"
                     "StudyDate,StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                     "PatientOrientationCodeSequence_CodeMeaning")
D1, D2, D3 = ("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014", "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962",
              "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab")
D4, D5, D6 = ("68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714", "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4",
              "fffabebf-74fd3a1f-673b6b41-96ec0ac9-2ab69818")
MIMIC_META = (
    (f"{D1},10000032,50414267,CHEST (PA AND LAT),PA,3056,2544,21800506,213014.531,CHEST (PA AND LAT),"
     "postero-anterior,Erect"),
    (f"{D2},10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544,21800506,213014.531,CHEST (PA AND LAT),"
     "lateral,Erect"),
    (f"{D3},10000032,53189527,CHEST (PORTABLE AP),AP,2705,2539,21800626,165500.312,CHEST (PORTABLE AP),"
     "antero-posterior,Recumbent"),
    f"{D4},10000764,57375967,CHEST (PA AND LAT),,3056,2544,21341015,074502.000,CHEST (PA AND LAT),,",
    (f"{D5},10000935,50578979,CHEST (PORTABLE AP),AP AXIAL,2544,3056,21870613,120000.000,CHEST (PORTABLE AP),"
     "antero-posterior,Recumbent"),
    (f"{D6},10000935,55555555,CHEST (PORTABLE AP),AP,2544,3056,21870614,120000.000,CHEST (PORTABLE AP),"
     "antero-posterior,Recumbent"),  # its study has no -chexpert.csv row: dropped
)
MIMIC_LABEL_HEADER = ("subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,Enlarged Cardiomediastinum,"
                      "Fracture,Lung Lesion,Lung Opacity,No Finding,Pleural Effusion,Pleural Other,Pneumonia,"
                      "Pneumothorax,Support Devices")
MIMIC_LABELS = (
    "10000032,50414267,,,,,,,,,1.0,,,,,",
    "10000032,53189527,0.0,-1.0,,1.0,,,,,,1.0,,,,1.0",
    "10000764,57375967,,,-1.0,,,,,,,,,1.0,,",
    "10000935,50578979,,,,,,0.0,,1.0,,,,,,",
)
MIMIC_SPLIT = ("dicom_id,study_id,subject_id,split", f"{D1},50414267,10000032,train",
               f"{D2},50414267,10000032,train", f"{D3},53189527,10000032,train",
               f"{D4},57375967,10000764,validate", f"{D5},50578979,10000935,test", f"{D6},55555555,10000935,test")
MIMIC_PATIENTS = ("subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod",
                  "10000032,F,52,2180,2014 - 2016,2180-09-09", "10000764,M,86,2132,2011 - 2013,",
                  "19999999,M,40,2150,2008 - 2010,")  # 10000935 has no row: age/sex missing
MIMIC_ADMISSIONS = (
    ("subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,admission_location,"
    "discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag"),
    ("10000032,22841357,2180-03-01 08:00:00,2180-03-05 10:00:00,,EW EMER.,P1,EMERGENCY ROOM,HOME,Other,"
    "ENGLISH,WIDOWED,WHITE,,,0"),
    ("10000032,22595853,2180-05-06 19:17:00,2180-05-07 17:15:00,,URGENT,P2,TRANSFER FROM HOSPITAL,HOME,Other,"
    "ENGLISH,WIDOWED,WHITE,,,0"),
    ("10000032,29079034,2180-06-26 10:00:00,2180-07-01 12:00:00,2180-07-01 12:00:00,EW EMER.,P3,"
    "EMERGENCY ROOM,DIED,Other,ENGLISH,WIDOWED,WHITE,,,1"),
    # ends before 10000764's study (2134-10-15): flag 1 must NOT be used -> hosp_death 0
    ("10000764,27897940,2134-10-01 10:00:00,2134-10-10 10:00:00,2134-10-10 10:00:00,URGENT,P4,"
    "TRANSFER FROM HOSPITAL,DIED,Medicare,ENGLISH,MARRIED,WHITE,,,1"),
)
MIMIC_ICUSTAYS = (
    "subject_id,hadm_id,stay_id,first_careunit,last_careunit,intime,outtime,los",
    "10000032,29079034,39553978,MICU,MICU,2180-06-26 12:00:00,2180-06-27 10:00:00,0.9",  # spans D3
    "10000764,27897940,30000001,MICU,MICU,2134-10-02 00:00:00,2134-10-05 00:00:00,3.0",
)


def write_image(path: Path, kind: str = "L") -> Path:
    """A 40 x 50 portrait film: rows ramp 100..149 (8-bit) or 1000 + 40 * row + col (16-bit)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ramp = np.repeat(np.arange(100, 100 + HEIGHT, dtype=np.uint8)[:, None], WIDTH, axis=1)
    if kind == "I;16":
        img = Image.fromarray((1000 + np.arange(HEIGHT * WIDTH).reshape(HEIGHT, WIDTH)).astype(np.uint16))
    elif kind in ("RGB", "RGBA"):
        img = Image.fromarray(ramp).convert(kind)
    else:
        img = Image.fromarray(ramp)
    img.save(path)
    return path


def write_lines(path: Path, lines: tuple[str, ...] | list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        import gzip

        with gzip.open(path, "wt", newline="") as f:
            f.write("\n".join(lines) + "\n")
    else:
        path.write_text("\n".join(lines) + "\n")
    return path


def make_nih14_tree(base: Path) -> Path:
    """``base/nih14``: Data_Entry_2017_v2020.csv and images_001/images, images_002/images."""
    root = Path(base) / "nih14"
    write_lines(root / "Data_Entry_2017_v2020.csv", [NIH_HEADER, *(row for row, _, _ in NIH_ROWS)])
    for row, folder, kind in NIH_ROWS:
        write_image(root / folder / "images" / row.split(",")[0], kind)
    return root


def make_chexpert_tree(base: Path) -> Path:
    """``base/CheXpert-v1.0-small``: train.csv, valid.csv, train/ and valid/ JPEGs."""
    root = Path(base) / _P
    write_lines(root / "train.csv", [CHEXPERT_HEADER, *CHEXPERT_TRAIN])
    write_lines(root / "valid.csv", [CHEXPERT_HEADER, *CHEXPERT_VALID])
    for i, row in enumerate(CHEXPERT_TRAIN + CHEXPERT_VALID):
        relative = row.split(",")[0]
        write_image(Path(base) / relative, "RGB" if i == 5 else "L")  # one RGB JPEG
    return root


def make_mimic_tree(base: Path) -> Path:
    """``base/mimic``: mimic-cxr-jpg/2.0.0/{CSVs .gz, files/} and mimiciv/2.2/{hosp,icu}/ (3 levels)."""
    root = Path(base) / "mimic"
    cxr = root / "mimic-cxr-jpg" / "2.0.0"
    write_lines(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", [MIMIC_META_HEADER, *MIMIC_META])
    write_lines(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz", [MIMIC_LABEL_HEADER, *MIMIC_LABELS])
    write_lines(cxr / "mimic-cxr-2.0.0-split.csv.gz", MIMIC_SPLIT)
    for row in MIMIC_META:
        dicom, subject, study = row.split(",")[:3]
        write_image(cxr / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg")
    iv = root / "mimiciv" / "2.2"
    write_lines(iv / "hosp" / "patients.csv.gz", MIMIC_PATIENTS)
    write_lines(iv / "hosp" / "admissions.csv.gz", MIMIC_ADMISSIONS)
    write_lines(iv / "icu" / "icustays.csv.gz", MIMIC_ICUSTAYS)
    return root
