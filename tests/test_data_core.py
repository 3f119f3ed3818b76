"""The cache contract: patient-level splits, atomic writes, determinism, EHR encoding, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmsn.data.cache import open_cache
from mmsn.data.ehr import EHREncoder, resolve_features
from mmsn.data.prepare import prepare, subsample
from mmsn.data.splits import parse_fractions, patient_split
from mmsn.errors import ConfigError, DataError
from tests.conftest import TINY_EHR, tiny_source


def test_split_is_disjoint_by_patient_and_near_fractions() -> None:
    pids = pd.Series([f"p{i // 4}" for i in range(4000)])
    split = patient_split(pids, (0.7, 0.1, 0.2), seed=3)
    per_patient = pd.DataFrame({"p": pids, "s": split}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()
    shares = pd.Series(split).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.01)
    assert shares["val"] == pytest.approx(0.1, abs=0.01)


def test_split_depends_on_seed_only() -> None:
    pids = pd.Series([f"p{i}" for i in range(100)])
    assert (patient_split(pids, (0.7, 0.1, 0.2), 1) == patient_split(pids, (0.7, 0.1, 0.2), 1)).all()
    assert (patient_split(pids, (0.7, 0.1, 0.2), 1) != patient_split(pids, (0.7, 0.1, 0.2), 2)).any()


@pytest.mark.parametrize("text", ["0.7,0.3", "0.5,0.5,0.5", "a,b,c", "-0.1,0.6,0.5"])
def test_bad_split_fractions(text: str) -> None:
    with pytest.raises(DataError, match="--split"):
        parse_fractions(text)


def test_split_that_empties_a_set_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="val set would be empty"):
        prepare(tiny_source(n_patients=3), tmp_path / "c", size=16, seed=0, split=(0.9, 0.05, 0.05), n=None)
    assert not (tmp_path / "c").exists()


def test_subsample_keeps_patients_whole() -> None:
    table = tiny_source(n_patients=50, per_patient=3).table
    rows = subsample(table, 30, seed=0)
    assert len(rows) == 30 and len(set(rows)) == 30
    counts = table.iloc[rows]["patient_id"].value_counts()
    assert (counts == 3).all()


def test_cache_contract(tiny_cache: Path, source) -> None:
    cache = open_cache(tiny_cache)
    assert cache.images.shape == (120, 16, 16) and cache.images.dtype == np.uint8
    assert isinstance(cache.images, np.memmap)
    assert list(cache.table.columns[:3]) == ["image_id", "patient_id", "split"]
    assert cache.table.groupby("patient_id")["split"].nunique().max() == 1
    meta = json.loads((tiny_cache / "meta.json").read_text())
    assert meta["ehr_groups"] == {"demographic": ["age", "sex"], "scan": ["view"], "stay": ["icu"]}
    assert meta["counts"]["images"] == 120 and meta["split"]["seed"] == 0
    # image k of the cache is the getter's image for the table row it came from
    k = 7
    src_row = int(np.flatnonzero(source.table["image_id"] == cache.table["image_id"][k])[0])
    assert (cache.images[k] == source.image(src_row, 16)).all()
    assert not list(tiny_cache.parent.glob(".cache.tmp-*"))


def test_same_seed_same_cache_bytes(tmp_path: Path) -> None:
    a = prepare(tiny_source(), tmp_path / "a", size=16, seed=5, split=(0.6, 0.2, 0.2), n=60)
    b = prepare(tiny_source(), tmp_path / "b", size=16, seed=5, split=(0.6, 0.2, 0.2), n=60)
    for name in ("images.npy", "table.parquet", "meta.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_existing_cache_is_not_overwritten_without_flag(tiny_cache: Path, source) -> None:
    with pytest.raises(DataError, match="--overwrite"):
        prepare(source, tiny_cache, size=16, seed=0, split=(0.6, 0.2, 0.2), n=None)
    prepare(source, tiny_cache, size=24, seed=0, split=(0.6, 0.2, 0.2), n=None, overwrite=True)
    assert open_cache(tiny_cache).size == 24


class FailingImages:
    def __call__(self, i: int, size: int) -> np.ndarray:
        if i == 50:
            raise DataError("images/img0050.png: cannot identify image file")
        return np.zeros((size, size), np.uint8)


def test_failure_midway_leaves_nothing(tmp_path: Path) -> None:
    src = tiny_source()
    src.image = FailingImages()
    with pytest.raises(DataError, match="img0050.png"):
        prepare(src, tmp_path / "c", size=16, seed=0, split=(0.6, 0.2, 0.2), n=None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", [8, 4096])
def test_size_out_of_range(tmp_path: Path, size: int) -> None:
    with pytest.raises(DataError, match="--size"):
        prepare(tiny_source(), tmp_path / "c", size=size, seed=0, split=(0.6, 0.2, 0.2), n=None)


def test_contract_violations_name_the_key(tmp_path: Path) -> None:
    src = tiny_source()
    src.table = src.table.drop(columns=["age"])
    with pytest.raises(DataError, match=r"missing columns \['age'\]"):
        prepare(src, tmp_path / "c", size=16, seed=0, split=(0.6, 0.2, 0.2), n=None)
    src = tiny_source()
    src.table.loc[5, "B"] = 2
    with pytest.raises(DataError, match="label 'B' row 5"):
        prepare(src, tmp_path / "c", size=16, seed=0, split=(0.6, 0.2, 0.2), n=None)
    src = tiny_source()
    src.table = src.table.iloc[:0]
    with pytest.raises(DataError, match="empty"):
        prepare(src, tmp_path / "c", size=16, seed=0, split=(0.6, 0.2, 0.2), n=None)


def test_open_cache_names_missing_file(tiny_cache: Path) -> None:
    (tiny_cache / "table.parquet").unlink()
    with pytest.raises(DataError, match="table.parquet"):
        open_cache(tiny_cache)


def test_resolve_features_groups_and_columns() -> None:
    assert [c.name for c in resolve_features(["demographic"], TINY_EHR)] == ["age", "sex"]
    assert [c.name for c in resolve_features(["view", "age"], TINY_EHR)] == ["age", "view"]
    assert len(resolve_features(["all"], TINY_EHR)) == 4
    with pytest.raises(ConfigError, match=r"unknown EHR feature 'weight'.*demographic.*age, sex, view, icu"):
        resolve_features(["weight"], TINY_EHR)


def test_ehr_encoding_matches_hand_computation() -> None:
    table = pd.DataFrame({
        "age": [20.0, 40.0, np.nan, 100.0],
        "sex": ["F", "M", "F", "M"],
        "view": ["PA", None, "AP", "LATERAL"],
        "icu": [0.0, 1.0, 1.0, np.nan],
    })
    train = np.array([True, True, True, False])  # the test row (age 100) must not shape the stats
    enc = EHREncoder.fit(table, TINY_EHR, train)
    assert enc.feature_names == ["age", "age:missing", "sex=F", "sex=M", "view=AP", "view=LATERAL",
                                 "view=PA", "view:missing", "icu", "icu:missing"]
    assert enc.width == 10
    x = enc.transform(table)
    mean, std = 30.0, 10.0  # train ages 20 and 40
    expected = np.array([
        [(20 - mean) / std, 0, 1, 0, 0, 0, 1, 0, 0, 0],
        [(40 - mean) / std, 0, 0, 1, 0, 0, 0, 1, 1, 0],
        [0, 1, 1, 0, 1, 0, 0, 0, 1, 0],
        [(100 - mean) / std, 0, 0, 1, 0, 1, 0, 0, 0, 1],
    ], dtype=np.float32)
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    again = EHREncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    np.testing.assert_array_equal(again.transform(table), x)


def test_unseen_category_counts_as_missing() -> None:
    table = pd.DataFrame({"age": [1.0, 2.0], "sex": ["F", "M"], "view": ["PA", None],
                          "icu": [0.0, 1.0]})
    enc = EHREncoder.fit(table, TINY_EHR[2:3], np.array([True, True]))
    x = enc.transform(pd.DataFrame({"view": ["LL"]}))
    assert x.tolist() == [[0.0, 1.0]]


def test_worker_processes_give_the_same_cache(tmp_path: Path) -> None:
    a = prepare(tiny_source(), tmp_path / "a", size=16, seed=0, split=(0.6, 0.2, 0.2), n=None)
    b = prepare(tiny_source(), tmp_path / "b", size=16, seed=0, split=(0.6, 0.2, 0.2), n=None, workers=2)
    assert (a / "images.npy").read_bytes() == (b / "images.npy").read_bytes()
