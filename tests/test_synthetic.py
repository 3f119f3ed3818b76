"""The synthetic default: real NIH-14 rows, deterministic images with visible, non-trivial findings."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mmsn.data.labels import NIH14_LABELS
from mmsn.data.source import Source
from mmsn.data.synthetic import HEART, load_synthetic


@pytest.fixture(scope="module")
def source() -> Source:
    return load_synthetic(None, 0)


def test_table_keeps_the_real_nih_metadata(source: Source) -> None:
    t = source.table
    assert len(t) == 112120 and t["image_id"].is_unique
    assert t[list(NIH14_LABELS)].isin([0, 1]).all().all()
    prevalence = t[list(NIH14_LABELS)].mean()
    assert prevalence.idxmax() == "Infiltration" and prevalence.idxmin() == "Hernia"
    assert t.groupby("patient_id").size().max() > 50  # patients keep all their images
    assert 0.08 < t["icu"].mean() < 0.16 and 0.02 < t["hosp_death"].mean() < 0.07
    assert 0.01 < t["view"].isna().mean() < 0.03 and 0.01 < t["age"].isna().mean() < 0.03
    assert "SIMULATED" in source.notes["stay"]
    assert all(c.source.startswith("simulated") for c in source.ehr if c.group == "stay")


def test_simulated_stay_follows_the_findings(source: Source) -> None:
    t = source.table
    assert t.loc[t["Edema"] == 1, "icu"].mean() > 1.5 * t.loc[t["Edema"] == 0, "icu"].mean()


def test_images_are_deterministic_per_seed_and_row(source: Source) -> None:
    for size in (32, 64):
        a, b = source.image(123, size), source.image(123, size)
        assert a.shape == (size, size) and a.dtype == np.uint8 and a.std() > 10
        assert np.array_equal(a, b)
    other = load_synthetic(None, 1).image(123, 32)
    assert not np.array_equal(other, source.image(123, 32))
    again = pickle.loads(pickle.dumps(source.image))
    assert np.array_equal(again(77, 32), source.image(77, 32))


def heart_brightness(source: Source, rows: np.ndarray, size: int = 64) -> np.ndarray:
    """Mean brightness of a band at the heart's level just lateral to its usual border."""
    y = int((HEART[0] + 1) / 2 * size)
    band = slice(int(0.62 * size), int(0.72 * size))  # patient's left heart border region
    return np.array([source.image(int(r), size)[y - 2:y + 2, band].mean() for r in rows])


def test_cardiomegaly_and_ap_magnify_the_heart(source: Source) -> None:
    t = source.table
    pa = t["view"] == "PA"
    normal = np.flatnonzero((t[list(NIH14_LABELS)].sum(axis=1) == 0) & pa)[:150]
    large = np.flatnonzero((t["Cardiomegaly"] == 1) & pa)[:150]
    ap = np.flatnonzero((t[list(NIH14_LABELS)].sum(axis=1) == 0) & (t["view"] == "AP"))[:150]
    assert heart_brightness(source, large).mean() > heart_brightness(source, normal).mean() + 3
    assert heart_brightness(source, ap).mean() > heart_brightness(source, normal).mean()


def test_findings_are_learnable_but_not_trivially(source: Source) -> None:
    t = source.table
    rows = np.random.default_rng(0).choice(len(t), 1500, replace=False)
    x = np.stack([source.image(int(r), 32)[::2, ::2] for r in rows]).reshape(len(rows), -1) / 255.0
    aurocs = {}
    for label in ("Infiltration", "Effusion", "Atelectasis"):
        y = t[label].to_numpy()[rows]
        model = LogisticRegression(C=0.1, max_iter=500).fit(x[:1000], y[:1000])
        aurocs[label] = roc_auc_score(y[1000:], model.decision_function(x[1000:]))
    assert max(aurocs.values()) > 0.6, aurocs
    assert max(aurocs.values()) < 0.97, aurocs
