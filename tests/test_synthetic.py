"""The synthetic default: real NIH-14 rows, deterministic films with visible, non-trivial findings."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mmsn.data.labels import NIH14_LABELS
from mmsn.data.source import Source
from mmsn.data.synthetic import SyntheticRenderer, load_synthetic, parametric_templates, templates, xrv_data_dir
from mmsn.errors import DataError


@pytest.fixture(scope="module")
def source() -> Source:
    return load_synthetic(None, 0)


def rows_where(source: Source, mask: pd.Series, n: int) -> np.ndarray:
    return np.flatnonzero(mask.to_numpy())[:n]


def test_table_keeps_the_real_nih_metadata(source: Source) -> None:
    t = source.table
    assert len(t) == 112120 and source.dataset == "synthetic"
    assert t["image_id"].is_unique and t["image_id"].str.startswith("syn-").all()
    assert t["patient_id"].str.startswith("nih-").all()
    assert t.groupby("patient_id").size().max() > 50  # patients keep all their images
    labels = t[list(NIH14_LABELS)]
    assert (labels.dtypes == np.int8).all() and labels.isin([0, 1]).all().all()
    prevalence = labels.mean()
    assert prevalence.idxmax() == "Infiltration" and prevalence.idxmin() == "Hernia"
    assert 0.5 < (labels.sum(axis=1) == 0).mean() < 0.6  # NIH-14: ~54 % "No Finding"
    assert t["age"].dtype == np.float64 and t["followup"].dtype == np.float64 and t["age"].max() <= 120
    assert set(t["sex"].dropna()) == {"M", "F"} and set(t["view"].dropna()) == {"PA", "AP"}


def test_stay_is_simulated_and_flagged(source: Source) -> None:
    t = source.table
    assert set(t["icu"].unique()) == {0.0, 1.0} and set(t["hosp_death"].unique()) == {0.0, 1.0}
    assert 0.10 < t["icu"].mean() < 0.15 and 0.03 < t["hosp_death"].mean() < 0.06
    assert t.loc[t["Edema"] == 1, "icu"].mean() > 2 * t.loc[t["Edema"] == 0, "icu"].mean()
    assert t.loc[t["icu"] == 1, "hosp_death"].mean() > 2 * t.loc[t["icu"] == 0, "hosp_death"].mean()
    assert "SIMULATED" in source.notes["stay"]
    assert all(c.source.startswith("simulated") for c in source.ehr if c.group == "stay")
    assert {"rows", "images", "stay", "missing"} <= set(source.notes)


def test_some_view_and_age_are_blanked(source: Source) -> None:
    t = source.table
    assert 0.01 < t["view"].isna().mean() < 0.03 and 0.01 < t["age"].isna().mean() < 0.03
    assert t["sex"].notna().all()
    again = load_synthetic(None, 0).table  # deterministic for a seed
    assert again["view"].isna().equals(t["view"].isna()) and again["icu"].equals(t["icu"])


def test_images_are_deterministic_per_seed_and_row(source: Source) -> None:
    for size in (32, 64):
        a, b = source.image(123, size), source.image(123, size)
        assert a.shape == (size, size) and a.dtype == np.uint8 and a.std() > 10
        assert np.array_equal(a, b)
    r = source.image
    assert isinstance(r, SyntheticRenderer)
    other = SyntheticRenderer(r.labels, r.age, r.female, r.ap, seed=1)
    assert not np.array_equal(other(123, 32), source.image(123, 32))
    assert not np.array_equal(source.image(124, 32), source.image(123, 32))


def test_the_same_film_at_every_size(source: Source) -> None:
    small = source.image(2024, 32).astype(float)
    large = source.image(2024, 128).astype(float).reshape(32, 4, 32, 4).mean(axis=(1, 3))
    assert np.corrcoef(small.ravel(), large.ravel())[0, 1] > 0.9


def test_renderer_pickles_and_rejects_bad_rows(source: Source) -> None:
    again = pickle.loads(pickle.dumps(source.image))
    assert np.array_equal(again(77, 32), source.image(77, 32))
    with pytest.raises(DataError, match="row 999999"):
        source.image(999999, 32)


def heart_border(img: np.ndarray) -> float:
    """u of the left heart border (image right) at the heart's widest level: the first column
    right of the midline darker than halfway between mediastinum and lung (exposure-invariant)."""
    size = img.shape[0]
    u = (np.arange(size) + 0.5) / size * 2 - 1
    profile = img[int(0.575 * size):int(0.7 * size)].mean(axis=0)  # v in [0.15, 0.4]
    half = (profile[(u > 0) & (u < 0.15)].mean() + profile[(u > 0.3) & (u < 0.85)].min()) / 2
    beyond = np.flatnonzero((u > 0.15) & (profile < half))
    return float(u[beyond[0]]) if len(beyond) else 1.0


def test_cardiomegaly_and_ap_widen_the_heart(source: Source) -> None:
    t = source.table
    normal = t[list(NIH14_LABELS)].sum(axis=1) == 0
    width = lambda rows: np.mean([heart_border(source.image(int(r), 64)) for r in rows])  # noqa: E731
    pa_normal = width(rows_where(source, normal & (t["view"] == "PA"), 100))
    assert width(rows_where(source, (t["Cardiomegaly"] == 1) & (t["view"] == "PA"), 100)) > pa_normal + 0.04
    assert width(rows_where(source, normal & (t["view"] == "AP"), 100)) > pa_normal + 0.02


def test_findings_are_learnable_but_not_trivially(source: Source) -> None:
    t = source.table
    rows = np.random.default_rng(0).choice(len(t), 1500, replace=False)
    x = np.stack([source.image(int(r), 32)[::2, ::2] for r in rows]).reshape(len(rows), -1) / 255.0
    aurocs = {}
    for label in ("Infiltration", "Effusion", "Atelectasis"):
        y = t[label].to_numpy()[rows]
        model = LogisticRegression(C=0.1, max_iter=500).fit(x[:1000], y[:1000])
        aurocs[label] = roc_auc_score(y[1000:], model.decision_function(x[1000:]))
    assert max(aurocs.values()) > 0.55, aurocs
    assert max(aurocs.values()) < 0.97, aurocs


def test_root_may_name_another_csv_or_its_folder(tmp_path: Path) -> None:
    bundled = pd.read_csv(xrv_data_dir() / "Data_Entry_2017_v2020.csv.gz", nrows=300)
    bundled.to_csv(tmp_path / "Data_Entry_2017.csv", index=False)
    by_folder = load_synthetic(tmp_path, 3)
    by_file = load_synthetic(tmp_path / "Data_Entry_2017.csv", 3)
    assert len(by_folder.table) == 300 and by_folder.table.equals(by_file.table)
    assert by_folder.files == (str(tmp_path / "Data_Entry_2017.csv"),)
    assert by_folder.image(299, 32).shape == (32, 32)
    with pytest.raises(DataError, match="Data_Entry_2017"):
        load_synthetic(tmp_path / "nowhere", 0)


def test_parametric_lungs_stand_in_without_the_masks(monkeypatch: pytest.MonkeyPatch, source: Source) -> None:
    shapes = parametric_templates()
    assert all(0.1 < (s.mask > 0.5).mean() < 0.6 for s in shapes)
    monkeypatch.setattr(templates, "_TEMPLATES", (shapes, "parametric"))
    img = source.image(5, 64)
    assert img.shape == (64, 64) and img.std() > 10
