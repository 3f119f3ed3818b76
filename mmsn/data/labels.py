"""The 14 findings of each dataset family, in the order the cache stores them."""

from __future__ import annotations

# NIH ChestX-ray14 (Wang et al. 2017), spelled as in Data_Entry_2017*.csv "Finding Labels".
NIH14_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)

# CheXpert labeller output, shared by CheXpert and MIMIC-CXR-JPG (-chexpert.csv).
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)

# CheXpert-style labels are 1 (positive), 0 (negative), -1 (uncertain) or blank (not mentioned).
# Following CXR-EHR-MSN (docs/data.md, Datasets) uncertain and blank both map to 0 ("U-zeros").
CHEXPERT_LABEL_POLICY = "1 -> 1; 0, -1 (uncertain) and blank (not mentioned) -> 0 (U-zeros)"
