"""The evaluation protocol (mmsn.protocol) without Ray: label draws by patient, labels a draw cannot learn
reported as missing, fractions refused before any trial, evaluation caches without the primary's patients,
and the space section's bad input named by key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsn.config import ProbeConfig
from mmsn.data.cache import open_cache
from mmsn.errors import ConfigError, DataError
from mmsn.probe import run_probe
from mmsn.protocol import Protocol, check_fractions, draw_seeds, run_protocol, score_name
from search_spaces.loader import load_space


def test_a_label_without_positives_in_the_draw_is_missing_not_half() -> None:
    rng = np.random.default_rng(0)
    x = {s: rng.normal(size=(n, 6)) for s, n in (("train", 300), ("val", 200), ("test", 200))}
    y = {s: (v[:, :3] > 0).astype(np.int8) for s, v in x.items()}
    y["train"][:, 2] = 0  # no positive to learn label C from; val and test have both classes
    result = run_probe(x, y, ("A", "B", "C"), ProbeConfig(l2_grid=(1e-2,), bootstrap=20), eval_split="test")
    assert np.isnan(result.per_label["C"]["auroc"]) and result.scores is not None
    assert np.isnan(result.scores[:, 2]).all() and np.isfinite(result.scores[:, :2]).all()
    assert result.macro_auroc == pytest.approx(np.mean([result.per_label[k]["auroc"] for k in "AB"]))


def test_protocol_probes_every_target_fraction_and_draw(synthetic_cache: Path) -> None:
    torch.manual_seed(0)

    def pooled(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)

    protocol = Protocol((("synthetic", str(synthetic_cache)), ("again", str(synthetic_cache))), (0.3, 1.0), 2)
    summary, scores = run_protocol(pooled, protocol, ProbeConfig(bootstrap=10, seed=5), 32, torch.device("cpu"))
    got = [(r["dataset"], r["fraction"], r["draw"], r["seed"]) for r in summary["results"]]
    assert got == [("synthetic", 0.3, 0, 5), ("synthetic", 0.3, 1, 6), ("synthetic", 1.0, 0, 5),
                   ("again", 0.3, 0, 5), ("again", 0.3, 1, 6), ("again", 1.0, 0, 5)]
    assert draw_seeds(1.0, 3, 5) == [5] and draw_seeds(0.1, 3, 5) == [5, 6, 7]
    cache = open_cache(synthetic_cache)
    n_test = len(cache.rows("test"))
    assert set(scores) == {score_name(d, f, k) for d, f, k, _ in got}
    assert all(s.shape == (n_test, len(cache.labels)) for s, _ in scores.values())
    sizes = [r["test"]["sizes"]["train"] for r in summary["results"][:3]]
    assert sizes[0] < sizes[2] and sizes[1] < sizes[2]  # fewer labelled images below 1
    # the same draw gives the same probe whichever target list it is in: draws depend on their seed only
    assert scores["synthetic_f0.3_d1"][0].tobytes() == scores["again_f0.3_d1"][0].tobytes()
    text = json.dumps(summary, allow_nan=False)
    assert "nih-" not in text and "syn-" not in text  # no patient or image ids


def test_a_fraction_with_no_positive_to_learn_is_refused(tiny_cache: Path) -> None:
    cache = open_cache(tiny_cache)
    check_fractions("tiny", cache, (0.5, 1.0), 3, 0)  # 24 patients x 3 images: fine
    labels = cache.table[list(cache.labels)].to_numpy().copy()
    labels[:] = 0
    labels[0, 0] = 1  # one positive image in the whole cache
    cache.table[list(cache.labels)] = labels
    with pytest.raises(DataError, match=r"evaluate\.label_fractions: 0\.05 of tiny's train split .* no positive"):
        check_fractions("tiny", cache, (0.05,), 3, 0)


def test_an_evaluation_cache_shares_no_patient_with_the_primary(tmp_path: Path) -> None:
    from search_spaces.loader import DataSpec
    from trainables.caches import ensure_data

    primary = ensure_data(DataSpec("synthetic", size=16, n=200, seed=0, split="0.6,0.2,0.2"), tmp_path)
    other = ensure_data(DataSpec("synthetic_b", size=16, n=200, seed=0, split="0.6,0.2,0.2"), tmp_path,
                        exclude_of=primary)
    a, b = open_cache(primary), open_cache(other)
    assert not set(a.table["patient_id"]) & set(b.table["patient_id"])
    assert b.meta["dataset"] == "synthetic_b" and b.meta["excluded"]["images"] > 0
    assert "scanner" in b.meta["notes"] and "another site" in b.meta["notes"]["scanner"]
    assert not np.array_equal(a.images[0], b.images[0])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text("axes: {ehr.fusion: {grid: [none]}}\n" + text)
    return path


@pytest.mark.parametrize("text, message", [
    ("evaluate: {label_fractions: [0, 0.1]}", r"evaluate\.label_fractions: \[0\.0, 0\.1\]: distinct fractions"),
    ("evaluate: {label_fractions: [1.5]}", r"evaluate\.label_fractions"),
    ("evaluate: {label_fractions: 0.1}", r"evaluate\.label_fractions: a list"),
    ("evaluate: {draws: 0}", r"evaluate\.draws: 0"),
    ("evaluate: {datasets: [{dataset: chexpart}]}", r"evaluate\.datasets\[0\]\.dataset: unknown dataset 'chexpart'"),
    ("evaluate: {datasets: [{dataset: nih14, sise: 64}]}", r"unknown key 'evaluate\.datasets\[0\]\.sise'"),
    ("evaluate: {datasets: [{dataset: nih14, size: 8}]}", r"evaluate\.datasets\[0\]\.size: 8 not in"),
    ("evaluate: {dataset: [{dataset: nih14}]}", r"unknown key 'evaluate\.dataset'"),
])
def test_bad_evaluate_sections_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(write(tmp_path, text))


def test_a_missing_evaluation_root_fails_before_ray(tmp_path: Path) -> None:
    from trainables.caches import check_roots

    space = load_space(write(tmp_path, f"evaluate: {{datasets: [{{dataset: nih14, root: {tmp_path / 'nope'}}}]}}"))
    with pytest.raises(ConfigError, match=r"evaluate\.datasets\[0\]\.root: .*nope is not a readable directory"):
        check_roots(space, tmp_path)
    space = load_space(write(tmp_path, "evaluate: {datasets: [{dataset: chexpert}]}"))
    with pytest.raises(ConfigError, match=r"evaluate\.datasets\[0\]\.root: dataset 'chexpert' needs the folder"):
        check_roots(space, tmp_path)
