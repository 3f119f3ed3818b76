"""Configs: YAML -> typed dataclasses once; unknown keys and bad values are errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmsn.config import Config, flat_fields, from_dict, load_config, to_dict
from mmsn.errors import ConfigError
from mmsn.schedules import cosine, ema_momentum, learning_rate

CONFIGS = Path(__file__).resolve().parents[1] / "mmsn" / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.001\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'optim\.learning_rate'.*optim\.lr"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("mask.ratio=0.99", "mask.ratio"), ("train.batch_size=1", "train.batch_size"),
    ("optim.lr=fast", "optim.lr"), ("views.focal_size=128", "views.focal_size"),
    ("train.precision=fp8", "train.precision"), ("views.global_scale=[0.5]", "views.global_scale"),
    ("probe.features=patch_max", "probe.features"), ("probe.last_blocks=0", "probe.last_blocks"),
])
def test_out_of_range_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_overrides_parse_yaml_values() -> None:
    cfg = load_config(None, ["optim.lr=3e-4", "ehr.features=[age, view]", "mask.focal=false"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.ehr.features == ("age", "view")
    assert cfg.mask.focal is False


def test_flat_fields_cover_every_section() -> None:
    keys = flat_fields()
    assert {"optim.lr", "mask.ratio", "ehr.fusion", "ehr.features", "train.seed"} <= set(keys)


def test_schedules_are_pure_functions_of_step() -> None:
    assert learning_rate(0, 100, 10, 2e-4, 1e-3, 1e-6) == pytest.approx(2e-4)
    assert learning_rate(10, 100, 10, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-3)
    assert learning_rate(100, 100, 10, 2e-4, 1e-3, 1e-6) == pytest.approx(1e-6)
    assert cosine(50, 100, 0.04, 0.4) == pytest.approx(0.22)
    assert ema_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
