"""A trial's own state between Tune reports (no Ray cluster): which milestone reports a restarted trial
sends again, and which saved state it starts from."""

from __future__ import annotations

import json
from pathlib import Path

from mmsn.checkpoint import RUN_INFO
from trainables.state import REPORTED, TrialState, newest, replace_dir


def test_only_the_reports_tune_did_not_log_are_sent_again(tmp_path: Path) -> None:
    own, logged = TrialState(tmp_path / "own"), tmp_path / "trial" / "result.json"
    for epoch in (1, 2, 4):
        own.keep_report({"epoch": epoch, "val_auroc": 0.5 + epoch / 100, "variant": "none", "skip": [1]})
    assert [m["epoch"] for m in own.unlogged(logged)] == [1, 2, 4]  # no log yet: all of them
    logged.parent.mkdir()
    logged.write_text("".join(json.dumps({"epoch": e, "val_auroc": 0.5}) + "\n" for e in (1, 2)))
    again = own.unlogged(logged)
    assert again == [{"epoch": 4, "val_auroc": 0.54, "variant": "none"}]  # as sent, plain values only
    assert sorted(p.name for p in (own.own / REPORTED).iterdir()) == ["epoch_001.json", "epoch_002.json",
                                                                      "epoch_004.json"]


def state(path: Path, epoch: int) -> Path:
    path.mkdir(parents=True)
    (path / RUN_INFO).write_text(json.dumps({"epoch": epoch}))
    return path


def test_a_restarted_trial_starts_from_its_newest_state(tmp_path: Path) -> None:
    tune = state(tmp_path / "tune_checkpoint", 1)
    assert newest(tune, tmp_path / "missing", None) == tune
    # Tune logged the epoch-2 report but was interrupted before it registered that checkpoint
    own = TrialState(tmp_path / "own")
    kept = own.milestone_dir(2)
    kept.parent.mkdir(parents=True)
    replace_dir(state(tmp_path / "writing", 2), kept)
    assert own.start(tune) == kept and json.loads((kept / RUN_INFO).read_text()) == {"epoch": 2}
    replace_dir(state(tmp_path / "next", 3), own.own / "latest")  # moved whole, nothing left beside it
    assert own.start(tune) == own.own / "latest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own", "tune_checkpoint"]
    own.prune(3)  # a newer milestone was written: the older milestone states go (Tune holds them)
    assert not kept.exists() and own.start(tune) == own.own / "latest"
    own.clear_states()  # a PBT clone trains on from its donor's checkpoint
    assert own.start(tune) == tune


def test_a_finished_trial_keeps_only_the_checkpoint_tune_registered(tmp_path: Path) -> None:
    from trainables.sweep import prune_checkpoints

    for name in ("checkpoint_000000", "checkpoint_000001", "checkpoint_000002"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_text(name)
    (tmp_path / "encoders").mkdir()
    # checkpoint_000000 was written before an interrupt and never registered; 000001 is Tune's
    prune_checkpoints(tmp_path, str(tmp_path / "checkpoint_000001"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000001", "encoders"]
    (tmp_path / "checkpoint_000003").mkdir()
    prune_checkpoints(tmp_path, None)  # none registered: the newest stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000003", "encoders"]


def test_a_milestone_probed_beside_training_equals_the_probe_in_place(synthetic_cache: Path, tmp_path: Path) -> None:
    """``resources.probe: beside``: the loop writes the milestone's state unprobed, marked as a milestone, and
    trains on; a probe of that state later (trainables.worker.probe_beside) files what rank 0 would have."""
    import numpy as np

    from mmsn.checkpoint import load_state
    from mmsn.config import load_config
    from mmsn.data.cache import open_cache
    from mmsn.engine import build_run, load_state_dict
    from mmsn.loop import Milestones, probe_state, run_info, train
    from tests.conftest import TINY_RUN
    from trainables.state import is_milestone_state, is_probed

    cache, cfg = open_cache(synthetic_cache), load_config(None, TINY_RUN)
    place, beside = TrialState(tmp_path / "in_place"), TrialState(tmp_path / "beside")
    sent: dict[str, list[int]] = {"in_place": [], "beside": []}
    train(build_run(cfg, cache), 2, cache, Milestones(frozenset({1, 2})), place.sink(sent["in_place"].append))
    besides = Milestones(frozenset({1, 2}), beside=True)
    train(build_run(cfg, cache), 2, cache, besides, beside.sink(sent["beside"].append))
    assert sent == {"in_place": [1, 2], "beside": [1, 2]}  # each milestone sent once its state was written
    first = beside.milestone_dir(1)
    # unprobed but a milestone, and still there after milestone 2: its probe may not have started yet
    assert is_milestone_state(first, 1) and not is_probed(first, 1) and "val_auroc" not in run_info(first)
    assert not is_milestone_state(beside.milestone_dir(2), 1)
    run = build_run(cfg, cache)
    load_state_dict(run, load_state(first))
    probe_state(run, cache, besides, first, None)
    expected = place.milestone_dir(1)  # in place: probed, and kept until milestone 1 is reported
    assert is_probed(expected, 1) and is_probed(first, 1)
    assert run_info(first)["val_auroc"] == run_info(expected)["val_auroc"]
    assert run_info(first)["rankme"] == run_info(expected)["rankme"]
    for split in ("val", "test"):
        ours, theirs = (np.load(d / "probes" / f"epoch_001_{split}.npz") for d in (first, expected))
        assert np.array_equal(ours["scores"], theirs["scores"], equal_nan=True)  # nan: a label with no positive
        assert np.array_equal(ours["targets"], theirs["targets"])
    beside.prune(2)  # milestone 2 reported: the older one goes
    assert not first.exists() and beside.milestone_dir(2).exists()
