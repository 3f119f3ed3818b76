"""Canonical EHR columns of the cache, per dataset (docs/data.md, EHR feature groups).

Canonical names are shared across datasets so that a feature subset such as ``["age", "view"]``
means the same thing on every cache. Categorical values are normalised by the adapters:
sex in {"F", "M"}; view in {"PA", "AP", "LATERAL", "LL"}; orientation in {"Erect", "Recumbent"}.
"""

from __future__ import annotations

from mmsn.data.source import EHRColumn

NIH14_EHR: tuple[EHRColumn, ...] = (
    EHRColumn("age", "demographic", "continuous", "Patient Age"),
    EHRColumn("sex", "demographic", "categorical", "Patient Gender"),
    EHRColumn("view", "scan", "categorical", "View Position"),
    EHRColumn("followup", "scan", "continuous", "Follow-up #"),
)

# The synthetic default keeps the real NIH-14 columns and adds a *simulated* inpatient-stay group,
# drawn from the findings and age (see mmsn/data/synthetic.py); it is labelled so in meta.json.
SYNTHETIC_EHR: tuple[EHRColumn, ...] = NIH14_EHR + (
    EHRColumn("hosp_death", "stay", "binary", "simulated from findings and age"),
    EHRColumn("icu", "stay", "binary", "simulated from findings and age"),
)

CHEXPERT_EHR: tuple[EHRColumn, ...] = (
    EHRColumn("age", "demographic", "continuous", "Age"),
    EHRColumn("sex", "demographic", "categorical", "Sex"),
    EHRColumn("view", "scan", "categorical", "Frontal/Lateral + AP/PA"),
)

MIMIC_EHR: tuple[EHRColumn, ...] = (
    EHRColumn("age", "demographic", "continuous", "patients.anchor_age + study year - anchor_year"),
    EHRColumn("sex", "demographic", "categorical", "patients.gender"),
    EHRColumn("view", "scan", "categorical", "metadata.ViewPosition"),
    EHRColumn("orientation", "scan", "categorical", "metadata.PatientOrientationCodeSequence_CodeMeaning"),
    EHRColumn("hosp_death", "stay", "binary", "admissions.hospital_expire_flag of the admission spanning the study"),
    EHRColumn("icu", "stay", "binary", "icustays: an ICU stay spans the study time"),
)
