"""EHR as a training target: SupCon pseudo-labels (OLIVES) and MRM record targets, fit on train only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsn.data.cache import Cache, open_cache
from mmsn.data.source import EHRColumn
from mmsn.data.targets import (
    PseudoLabeler,
    PseudoLabelSpec,
    RecordEncoder,
    bin_codes,
    bin_edges,
    check_pseudo_label_specs,
    fit_pseudo_labels,
    fit_record_targets,
)
from mmsn.errors import ConfigError, DataError

COLUMNS = (
    EHRColumn("age", "demographic", "continuous", "Age"),
    EHRColumn("sex", "demographic", "categorical", "Sex"),
    EHRColumn("view", "scan", "categorical", "View"),
    EHRColumn("icu", "stay", "binary", "ICU"),
)


def _table() -> pd.DataFrame:
    """Six rows: four train, two test; the test rows hold an unseen view, a missing value per column
    and an age far outside the train range."""
    return pd.DataFrame({
        "patient_id": ["pt-01", "pt-01", "pt-02", "pt-03", "pt-04", "pt-04"],
        "split": ["train", "train", "train", "train", "test", "test"],
        "age": [20.0, 40.0, np.nan, 80.0, 200.0, np.nan],
        "sex": ["F", "M", "M", None, "F", "X"],
        "view": pd.Series(["PA", "AP", "PA", "AP", "LL", None], dtype=object),
        "icu": [0.0, 1.0, 1.0, np.nan, 0.0, np.nan],
    })


def _train(table: pd.DataFrame) -> np.ndarray:
    return (table["split"] == "train").to_numpy()


@pytest.fixture
def cache(tiny_cache: Path) -> Cache:
    return open_cache(tiny_cache)


# --- pseudo-labels --------------------------------------------------------------------------------


def test_quantile_bins_hold_about_equal_train_counts(cache: Cache) -> None:
    table, train = cache.table, cache.table["split"].to_numpy() == "train"
    labeler = fit_pseudo_labels(table, cache.ehr_columns, [PseudoLabelSpec("age", bins=4)], train)
    codes = labeler.transform(table)[:, 0]
    present = train & table["age"].notna().to_numpy()
    counts = np.bincount(codes[present], minlength=4)
    assert labeler.n_classes == (4,) and counts.sum() == present.sum()
    assert counts.max() - counts.min() <= 1  # 65 distinct train ages over 4 bins
    assert np.all(codes[~table["age"].notna().to_numpy()] == -1)
    # Bins are ordered by age: every age in bin b is below every age in bin b + 1.
    ages = table["age"].to_numpy()
    for b in range(3):
        assert ages[present & (codes == b)].max() < ages[present & (codes == b + 1)].min()


def test_width_bins_have_equal_widths_over_the_train_range(cache: Cache) -> None:
    table, train = cache.table, cache.table["split"].to_numpy() == "train"
    labeler = fit_pseudo_labels(table, cache.ehr_columns, [PseudoLabelSpec("age", bins=5, binning="width")], train)
    edges = np.asarray(labeler.codes[0].edges)
    ages = table["age"].to_numpy()[train]
    low, high = np.nanmin(ages), np.nanmax(ages)
    full = np.concatenate([[low], edges, [high]])
    np.testing.assert_allclose(np.diff(full), (high - low) / 5)
    codes = labeler.transform(table)[:, 0]
    assert set(codes[train & ~np.isnan(table["age"].to_numpy())]) == set(range(5))


def test_bins_outside_the_train_range_go_to_the_end_bins_and_ties_merge() -> None:
    edges = bin_edges(np.array([1.0, 2.0, 3.0, 4.0]), 2, "width")
    np.testing.assert_array_equal(bin_codes(np.array([-5.0, 2.4, 2.5, 99.0, np.nan]), edges), [0, 0, 1, 1, -1])
    # Three quarters of the values tie at 0: the quantile edges at 0 merge, leaving 2 bins of 4 asked.
    tied = bin_edges(np.array([0.0] * 9 + [1.0, 2.0, 3.0]), 4, "quantile")
    assert len(tied) == 1
    assert set(bin_codes(np.array([0.0] * 9 + [1.0, 2.0, 3.0]), tied)) == {0, 1}


def test_categories_fit_on_train_missing_and_unseen_are_minus_one() -> None:
    table = _table()
    specs = [PseudoLabelSpec("sex"), PseudoLabelSpec("view"), PseudoLabelSpec("icu"),
             PseudoLabelSpec("age", bins=2, binning="width")]
    labeler = fit_pseudo_labels(table, COLUMNS, specs, _train(table))
    codes = labeler.transform(table)
    assert codes.dtype == np.int64 and codes.shape == (6, 4)
    # sex: train F, M (sorted) -> 0, 1; None -> -1; "X" only in test -> -1.
    assert codes[:, 0].tolist() == [0, 1, 1, -1, 0, -1]
    # view: train AP, PA -> 0, 1; "LL" unseen -> -1; None -> -1.
    assert codes[:, 1].tolist() == [1, 0, 1, 0, -1, -1]
    assert codes[:, 2].tolist() == [0, 1, 1, -1, 0, -1]
    # age: width edge at 50 over the train range 20..80; 200 is in the top bin, NaN -> -1.
    assert codes[:, 3].tolist() == [0, 0, -1, 1, 1, -1]
    assert labeler.names == ("sex", "view", "icu", "age:width2") and labeler.weights == (1.0,) * 4


def test_patient_labels_equal_within_and_differ_across_patients(cache: Cache) -> None:
    table, train = cache.table, cache.table["split"].to_numpy() == "train"
    labeler = fit_pseudo_labels(table, cache.ehr_columns, [PseudoLabelSpec("patient")], train)
    codes = labeler.transform(table)[:, 0]
    patients = table["patient_id"].to_numpy()
    assert labeler.n_classes == (len(set(patients[train])),)
    for patient in set(patients[train]):
        assert len(set(codes[patients == patient])) == 1
    train_codes = {p: codes[patients == p][0] for p in set(patients[train])}
    assert len(set(train_codes.values())) == len(train_codes) and min(train_codes.values()) >= 0
    assert np.all(codes[~train] == -1)  # splits are patient-level: no val/test patient is known


def test_patient_ids_stay_out_of_repr_and_saved_state(cache: Cache) -> None:
    table, train = cache.table, cache.table["split"].to_numpy() == "train"
    labeler = fit_pseudo_labels(table, cache.ehr_columns, [PseudoLabelSpec("patient")], train)
    saved = json.dumps(labeler.to_dict())
    for text in (repr(labeler), saved):
        assert not any(str(p) in text for p in table["patient_id"].unique())
    with pytest.raises(ValueError, match="patient mapping is not saved"):
        PseudoLabeler.from_dict(json.loads(saved))


def test_pseudo_labeler_round_trip_gives_identical_transforms(cache: Cache) -> None:
    table, train = cache.table, cache.table["split"].to_numpy() == "train"
    specs = [PseudoLabelSpec("age", 0.5, bins=3), PseudoLabelSpec("sex"), PseudoLabelSpec("view", 2.0),
             PseudoLabelSpec("icu"), PseudoLabelSpec("patient"), PseudoLabelSpec("age", bins=4, binning="width")]
    labeler = fit_pseudo_labels(table, cache.ehr_columns, specs, train)
    loaded = PseudoLabeler.from_dict(json.loads(json.dumps(labeler.to_dict())), table, train)
    assert loaded == labeler
    np.testing.assert_array_equal(loaded.transform(table), labeler.transform(table))
    assert loaded.weights == (0.5, 1.0, 2.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("spec,match", [
    (PseudoLabelSpec("weight"), r"supcon\.labels\[0\]\.column: unknown column 'weight'; valid: age, sex, view, "
                                r"icu, patient"),
    (PseudoLabelSpec("age"), r"supcon\.labels\[0\]\.bins: continuous column 'age' needs bins >= 2"),
    (PseudoLabelSpec("age", bins=1), r"supcon\.labels\[0\]\.bins must be 0 .* >= 2, got 1"),
    (PseudoLabelSpec("age", bins=-3), r"supcon\.labels\[0\]\.bins"),
    (PseudoLabelSpec("sex", bins=3), r"supcon\.labels\[0\]\.bins: only continuous .* 'sex' is categorical"),
    (PseudoLabelSpec("patient", bins=3), r"supcon\.labels\[0\]\.bins: only continuous"),
    (PseudoLabelSpec("age", bins=3, binning="kmeans"), r"supcon\.labels\[0\]\.binning: .*'kmeans'; "
                                                       r"valid: quantile, width"),
    (PseudoLabelSpec("sex", weight=-1.0), r"supcon\.labels\[0\]\.weight must be .* >= 0"),
    (PseudoLabelSpec("sex", weight=float("nan")), r"supcon\.labels\[0\]\.weight"),
    (PseudoLabelSpec("sex", weight=0.0), r"supcon\.labels: every weight is 0"),
])
def test_bad_specs_name_the_key(spec: PseudoLabelSpec, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_pseudo_label_specs([spec], COLUMNS)
    with pytest.raises(ConfigError, match=match):
        fit_pseudo_labels(_table(), COLUMNS, [spec], _train(_table()))


def test_bad_spec_lists_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^supcon\.labels: name at least one"):
        check_pseudo_label_specs([], COLUMNS)
    with pytest.raises(ConfigError, match=r"supcon\.labels\[2\]: repeats pseudo-label 'age'"):
        check_pseudo_label_specs([PseudoLabelSpec("age", bins=3), PseudoLabelSpec("sex"),
                                  PseudoLabelSpec("age", 2.0, bins=3)], COLUMNS)
    check_pseudo_label_specs([PseudoLabelSpec("age", bins=3), PseudoLabelSpec("age", bins=5)], COLUMNS)
    with pytest.raises(ConfigError, match=r"^objective\.supcon\.labels\[1\]\.column"):
        check_pseudo_label_specs([PseudoLabelSpec("sex"), PseudoLabelSpec("bmi")], COLUMNS, "objective.supcon.labels")


@pytest.mark.parametrize("column,values,match", [
    ("age", [np.nan] * 4, r"supcon\.labels\[0\]\.column: 'age' is missing on every train row"),
    ("age", [50.0, 50.0, np.nan, 50.0], r"supcon\.labels\[0\]\.column: 'age' takes a single bin"),
    ("sex", [None] * 4, r"supcon\.labels\[0\]\.column: 'sex' is missing on every train row"),
    ("sex", ["F", "F", None, "F"], r"supcon\.labels\[0\]\.column: 'sex' takes a single value"),
    ("icu", [1.0, 1.0, 1.0, np.nan], r"supcon\.labels\[0\]\.column: 'icu' takes a single value"),
    ("patient_id", ["pt-01"] * 4, r"supcon\.labels\[0\]\.column: patient takes a single value"),
])
def test_columns_missing_or_constant_over_train_name_the_key(column: str, values: list[object],
                                                             match: str) -> None:
    table = _table()
    table[column] = pd.Series(values + list(table[column][4:]), dtype=object if column != "age" else float)
    spec = PseudoLabelSpec("patient" if column == "patient_id" else column, bins=3 if column == "age" else 0)
    with pytest.raises(ConfigError, match=match) as err:
        fit_pseudo_labels(table, COLUMNS, [spec], _train(table))
    assert "pt-0" not in str(err.value)  # no patient id in any message


def test_bad_data_is_a_data_error() -> None:
    table = _table()
    with pytest.raises(DataError, match="'view'"):
        fit_pseudo_labels(table.drop(columns="view"), COLUMNS, [PseudoLabelSpec("view")], _train(table))
    table["icu"] = [0.0, 2.0, 1.0, 0.0, 0.0, 1.0]
    with pytest.raises(DataError, match="binary EHR column 'icu'"):
        fit_pseudo_labels(table, COLUMNS, [PseudoLabelSpec("icu")], _train(table))
    with pytest.raises(DataError, match="train split is empty"):
        fit_pseudo_labels(table, COLUMNS, [PseudoLabelSpec("sex")], np.zeros(6, dtype=bool))


# --- record targets (MRM) -------------------------------------------------------------------------


def test_record_targets_use_train_stats_missing_is_nan_or_minus_one() -> None:
    table = _table()
    encoder = fit_record_targets(table, COLUMNS, _train(table))
    assert encoder.field_names == ("sex", "view", "icu", "age")
    assert encoder.n_classes == (2, 2, 2)  # sex F/M, view AP/PA, icu binary
    cat, cont = encoder.transform(table)
    assert cat.dtype == np.int64 and cat.shape == (6, 3)
    assert cont.dtype == np.float32 and cont.shape == (6, 1)
    assert cat.tolist() == [[0, 1, 0], [1, 0, 1], [1, 1, 1], [-1, 0, -1], [0, -1, 0], [-1, -1, -1]]
    # Train ages 20, 40, 80 (NaN skipped): mean 140/3, population std; test's 200 does not move them.
    train_ages = np.array([20.0, 40.0, 80.0])
    expected = (np.array([20.0, 40.0, np.nan, 80.0, 200.0, np.nan]) - train_ages.mean()) / train_ages.std()
    np.testing.assert_allclose(cont[:, 0], expected.astype(np.float32), rtol=1e-6)
    assert np.isnan(cont[[2, 5], 0]).all()
    assert encoder.continuous_fields[0].mean == pytest.approx(train_ages.mean())


def test_record_targets_on_the_tiny_cache(cache: Cache) -> None:
    table, train = cache.table, cache.table["split"].to_numpy() == "train"
    encoder = fit_record_targets(table, cache.ehr_columns, train)
    cat, cont = encoder.transform(table)
    assert encoder.field_names == ("sex", "view", "icu", "age") and encoder.n_classes == (2, 2, 2)
    assert np.array_equal(cat[:, 1] == -1, table["view"].isna().to_numpy())
    assert np.array_equal(np.isnan(cont[:, 0]), table["age"].isna().to_numpy())
    standardised = cont[train, 0][~np.isnan(cont[train, 0])]
    assert abs(standardised.mean()) < 1e-5 and standardised.std() == pytest.approx(1.0, abs=1e-5)


def test_binary_has_two_classes_even_if_train_holds_one() -> None:
    table = _table()
    table["icu"] = [1.0, 1.0, 1.0, np.nan, 0.0, 1.0]
    encoder = fit_record_targets(table, [c for c in COLUMNS if c.name == "icu"], _train(table))
    assert encoder.n_classes == (2,)
    assert encoder.transform(table).categorical[:, 0].tolist() == [1, 1, 1, -1, 0, 1]


def test_record_encoder_round_trip_gives_identical_transforms(cache: Cache) -> None:
    table, train = cache.table, cache.table["split"].to_numpy() == "train"
    encoder = fit_record_targets(table, cache.ehr_columns, train)
    loaded = RecordEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    assert loaded == encoder
    for mine, theirs in zip(loaded.transform(table), encoder.transform(table)):
        np.testing.assert_array_equal(mine, theirs)


def test_record_target_errors_name_the_key() -> None:
    table = _table()
    with pytest.raises(ConfigError, match=r"^mrm\.fields: name at least one"):
        fit_record_targets(table, [], _train(table))
    table["view"] = pd.Series([None, None, None, None, "PA", "AP"], dtype=object)
    with pytest.raises(ConfigError, match=r"^mrm\.record: column 'view' is missing on every train row"):
        fit_record_targets(table, COLUMNS, _train(table), key="mrm.record")
    with pytest.raises(ValueError, match="train_mask"):
        fit_record_targets(table, COLUMNS, np.ones(3, dtype=bool))
