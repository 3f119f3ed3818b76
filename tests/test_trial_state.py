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
