"""`mmsn data prepare` / `mmsn data info` end to end, on each real adapter's fixture tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mmsn.cli import main
from mmsn.data.cache import open_cache
from tests.fixtures_real import make_chexpert_tree, make_mimic_tree, make_nih14_tree

TREES = {"nih14": make_nih14_tree, "chexpert": make_chexpert_tree, "mimic": make_mimic_tree}


@pytest.mark.parametrize("dataset", sorted(TREES))
def test_prepare_then_info_on_fixture_tree(dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = TREES[dataset](tmp_path / "raw")
    out = tmp_path / "cache"
    assert main(["data", "prepare", "--dataset", dataset, "--root", str(root), "--out", str(out),
                 "--size", "32", "--split", "0.34,0.33,0.33"]) == 0
    cache = open_cache(out)
    assert cache.meta["dataset"] == dataset and cache.images.shape[1:] == (32, 32)
    assert cache.table.groupby("patient_id")["split"].nunique().max() == 1
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "label prevalence" in text and "EHR columns" in text and "train" in text


def test_synthetic_prepare_via_console_script(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    done = subprocess.run([sys.executable, "-m", "mmsn.cli", "data", "prepare", "--dataset", "synthetic",
                           "--n", "200", "--size", "32", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "dataset=synthetic" in done.stdout and "stay" in done.stdout
    assert open_cache(out).images.shape == (200, 32, 32)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "padchest"], "unknown dataset 'padchest'; valid: chexpert, mimic, nih14, synthetic"),
    (["--dataset", "nih14"], "--root"),
    (["--dataset", "synthetic", "--size", "2000"], "--size 2000"),
    (["--dataset", "synthetic", "--split", "0.9,0.2"], "--split"),
    (["--dataset", "synthetic", "--n", "2", "--split", "0.5,0.25,0.25"], "empty"),
])
def test_bad_input_exits_non_zero_and_writes_nothing(argv: list[str], message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cache"
    assert main(["data", "prepare", "--out", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".cache*"))
