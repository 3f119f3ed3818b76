"""A trial's own state between Tune reports (no Ray cluster): which milestone reports a restarted trial
sends again, and which saved state it starts from."""

from __future__ import annotations

import json
from pathlib import Path

from mmsn.checkpoint import RUN_INFO
from trainables.trial import REPORTED, _keep_report, _newest, _replace_dir, unlogged_reports


def test_only_the_reports_tune_did_not_log_are_sent_again(tmp_path: Path) -> None:
    own, logged = tmp_path / "own", tmp_path / "trial" / "result.json"
    for epoch in (1, 2, 4):
        _keep_report(own, {"epoch": epoch, "val_auroc": 0.5 + epoch / 100, "variant": "none", "skip": [1]})
    assert [m["epoch"] for m in unlogged_reports(own, logged)] == [1, 2, 4]  # no log yet: all of them
    logged.parent.mkdir()
    logged.write_text("".join(json.dumps({"epoch": e, "val_auroc": 0.5}) + "\n" for e in (1, 2)))
    again = unlogged_reports(own, logged)
    assert again == [{"epoch": 4, "val_auroc": 0.54, "variant": "none"}]  # as sent, plain values only
    assert sorted(p.name for p in (own / REPORTED).iterdir()) == ["epoch_001.json", "epoch_002.json",
                                                                  "epoch_004.json"]


def test_a_restarted_trial_starts_from_its_newest_state(tmp_path: Path) -> None:
    def state(name: str, epoch: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / RUN_INFO).write_text(json.dumps({"epoch": epoch}))
        return path

    tune, latest = state("tune_checkpoint", 1), state("staging", 2)
    assert _newest(tune, tmp_path / "missing", None) == tune
    # Tune logged the epoch-2 report but was interrupted before it registered that checkpoint
    kept = tmp_path / "latest"
    _replace_dir(latest, kept)
    assert _newest(tune, kept) == kept and json.loads((kept / RUN_INFO).read_text()) == {"epoch": 2}
    _replace_dir(state("next", 3), kept)  # replaced whole, no leftovers beside it
    assert json.loads((kept / RUN_INFO).read_text())["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "next", "staging", "tune_checkpoint"]


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
