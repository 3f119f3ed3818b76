"""Search spaces load and validate without Ray; typos fail naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsn.errors import ConfigError
from search_spaces.loader import (
    INACTIVE,
    check_scheduler,
    grid_points,
    load_space,
    shipped_spaces,
    suggest,
    variant_name,
)

QUICK = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


@pytest.mark.parametrize("path", shipped_spaces(), ids=lambda p: p.name)
@pytest.mark.parametrize("smoke", [False, True])
def test_every_shipped_space_loads(path: Path, smoke: bool) -> None:
    space = load_space(path, smoke=smoke)
    assert space.axes and space.scheduler.milestones
    assert space.config({}).train.epochs == space.epochs


def test_quickstart_grid_has_vanilla_once_and_features_only_when_fused() -> None:
    points = grid_points(load_space(QUICK))
    variants = [variant_name(load_space(QUICK).config(p)) for p in points]
    assert variants == ["none", "concat_anchor:demographic", "concat_anchor:scan", "concat_anchor:stay"]
    assert "ehr.features" not in points[0]


def test_inactive_axis_value_is_ignored() -> None:
    space = load_space(QUICK)
    cfg = space.config({"ehr.fusion": "none", "ehr.features": INACTIVE, "train.seed": 3})
    assert cfg.ehr.fusion == "none" and cfg.train.seed == 3


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("axes: {optim.lrr: {choice: [0.1]}}", r"space\.yaml: axes\.optim\.lrr: unknown config key 'optim\.lrr'"),
    ("axes: {optim.lr: {uniform: [0.1]}}", r"axes\.optim\.lr: uniform needs \[low, high\]"),
    ("axes: {mask.ratio: {choice: [0.99]}}", r"space\.yaml: mask\.ratio: 0\.99 not in"),
    ("axes: {ehr.fusion: {choice: [none]}}\nscheduler: {type: bohb}", r"scheduler\.type 'bohb'"),
    ("axes: {ehr.fusion: {choice: [none]}}\nschedular: {type: asha}", r"unknown key 'schedular'"),
    ("axes: {ehr.fusion: {choice: [none]}}\nresources: {gpu: 1}", r"unknown key 'resources\.gpu'"),
    ("axes: {ehr.fusion: {choice: [none]}}\nscheduler: {milestones: [4, 2]}", r"strictly increasing"),
    ("axes: {optim.lr: {loguniform: [0.0001, 0.01]}}\nsearch: {algorithm: grid}", r"every axis must be choice"),
    ("axes: {ehr.features: {choice: [[age]], when: {ehr.fusionn: [film]}}}", r"when: unknown config key"),
    ("axes: {ehr.fusion: {grid: [none]}}\nsearch: {order: random}", r"search\.order 'random'"),
])
def test_invalid_spaces_name_key_and_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_space(write(tmp_path, text))


@pytest.mark.parametrize("text, message", [
    # a per-trial scheduler would rank the seeds of one arm against each other
    ("axes: {ehr.fusion: {grid: [none]}}\nseeds: [0, 1]\nscheduler: {type: asha}", r"2 runs of an arm"),
    ("axes: {ehr.fusion: {grid: [none]}}\nsearch: {num_samples: 2}\nscheduler: {type: hyperband}",
     r"hyperband compares trials one by one"),
    ("axes: {ehr.fusion: {choice: [none]}}\nsearch: {algorithm: optuna}\nscheduler: {type: halving}",
     r"halving ranks the arms of a grid"),
    ("axes: {ehr.fusion: {grid: [none]}}\nscheduler: {type: halving, milestones: [4]}", r"at least two milestones"),
])
def test_a_sweep_refuses_a_scheduler_that_cannot_rank_its_arms(tmp_path: Path, text: str, message: str) -> None:
    space = load_space(write(tmp_path, text))  # loads (an old experiment's analysis reads it) ...
    with pytest.raises(ConfigError, match=message):  # ... but does not run
        check_scheduler(space)


class FakeTrial:
    """The part of optuna.Trial that define-by-run uses; records what was asked."""

    def __init__(self) -> None:
        self.params: dict[str, object] = {}

    def suggest_categorical(self, name: str, choices: list) -> object:
        self.params[name] = choices[-1]
        return choices[-1]

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.params[name] = low
        return low

    def suggest_int(self, name: str, low: int, high: int) -> int:
        self.params[name] = low
        return low


def test_define_by_run_asks_conditional_axes_only_when_active(tmp_path: Path) -> None:
    path = write(tmp_path, "axes:\n  ehr.fusion: {choice: [film, none]}\n"
                           "  ehr.features: {choice: [[age], [age, view]], when: {ehr.fusion: [film]}}\n")
    trial = FakeTrial()
    params = suggest(load_space(path), trial)
    assert params == {"ehr.fusion": "none", "train.seed": 0}
    assert "ehr.features" not in trial.params


def test_list_valued_axes_of_numbers_are_searchable(tmp_path: Path) -> None:
    path = tmp_path / "lists.yaml"
    path.write_text("axes:\n  optim.betas: {choice: [[0.9, 0.999], [0.9, 0.95]]}\n"
                    "  probe.l2_grid: {choice: [[0.1, 1, 10]]}\n  views.global_scale: {choice: [[0.5, 1.0]]}\n")
    space = load_space(path)
    cfgs = [space.config(p) for p in grid_points(space)]
    assert sorted(c.optim.betas for c in cfgs) == [(0.9, 0.95), (0.9, 0.999)]
    assert cfgs[0].probe.l2_grid == (0.1, 1.0, 10.0) and cfgs[0].views.global_scale == (0.5, 1.0)


def test_data_cache_is_keyed_on_the_whole_spec_and_the_renderer(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import mmsn.data.synthetic
    from trainables.sweep import ensure_cache

    base = load_space(Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml", smoke=True)

    def space(**data: object):  # type: ignore[no-untyped-def]
        return dataclasses.replace(base, data=dataclasses.replace(base.data, n=80, size=16, **data))

    first = ensure_cache(space(), tmp_path)
    stamp = (first / "meta.json").stat().st_mtime_ns
    assert ensure_cache(space(), tmp_path) == first and (first / "meta.json").stat().st_mtime_ns == stamp  # reused
    other = ensure_cache(space(split="0.5,0.25,0.25"), tmp_path)
    assert other != first and '"split": "0.5,0.25,0.25"' in (other / "data_spec.json").read_text()
    monkeypatch.setattr(mmsn.data.synthetic, "RENDERER_VERSION", mmsn.data.synthetic.RENDERER_VERSION + 1)
    assert ensure_cache(space(), tmp_path) not in (first, other)  # other films: a new cache


def test_halving_keeps_the_best_arms_by_their_mean_whatever_the_order() -> None:
    from trainables.halving import keep_arms

    scores = {"a": 0.61, "b": 0.70, "c": 0.55, "d": 0.66, "e": float("nan")}
    assert keep_arms(scores, 2) == ["b", "d", "a"]  # ceil(5 / 2); NaN ranks last
    assert keep_arms(dict(reversed(list(scores.items()))), 2) == ["b", "d", "a"]
    assert keep_arms(scores, 4) == ["b", "d"] and keep_arms({"a": 0.5}, 3) == ["a"]
    assert keep_arms({"x": 0.5, "w": 0.5, "y": 0.4}, 2) == ["w", "x"]  # ties by name: the same on every run
    assert keep_arms({"a": 0.2, "b": 0.1}, 2, mode="min") == ["b"]


def test_grid_order_is_shuffled_by_the_search_seed_unless_given(tmp_path: Path) -> None:
    from trainables.sweep import build_search

    def order(text: str) -> list:
        search = build_search(load_space(write(tmp_path, text)), tmp_path)[0]
        return [p["optim.lr"] for p in search._points_to_evaluate]

    axes = "axes: {optim.lr: {grid: [0.1, 0.01, 0.001, 0.0001, 0.00001]}}\n"
    given = order(axes + "search: {order: given}")
    assert given == [0.1, 0.01, 0.001, 0.0001, 0.00001]
    shuffled = order(axes)
    assert sorted(shuffled) == sorted(given) and shuffled != given
    assert order(axes) == shuffled and order(axes + "search: {seed: 1}") != shuffled
