"""The engine: loss falls, resume is bit for bit, non-finite loss stops, TensorBoard and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

from mmsn.checkpoint import load_encoder
from mmsn.config import load_config
from mmsn.data.cache import open_cache
from mmsn.engine import NonFiniteLossError, build_run, train_step
from mmsn.objectives import Batch
from mmsn.pretrain import pretrain
from tests.conftest import TINY_RUN


def test_loss_falls_over_a_few_steps(synthetic_cache: Path) -> None:
    cfg = load_config(None, TINY_RUN + ["optim.lr=3e-3", "optim.start_lr=3e-3", "optim.warmup_epochs=0",
                                        "train.seed=1"])
    cache = open_cache(synthetic_cache)
    run = build_run(cfg, cache)
    batch = Batch(torch.from_numpy(cache.images[cache.rows("train")[:32]].copy()),
                  torch.from_numpy(run.train_set.ehr[:32]))
    losses = []
    for _ in range(12):
        run.step = 0  # same views every step: the loss on one fixed batch must go down
        losses.append(train_step(run, batch)["loss"])
    assert losses[-1] < losses[0] - 0.05, losses


def test_resume_equals_uninterrupted(synthetic_cache: Path, tmp_path: Path) -> None:
    cache = open_cache(synthetic_cache)
    cfg = load_config(None, TINY_RUN + ["train.epochs=3"])
    pretrain(cfg, cache, tmp_path / "straight", log=lambda _: None)
    short = load_config(None, TINY_RUN + ["train.epochs=3"])

    stopped: list[int] = []

    def stop_after_first(run, metrics) -> None:
        if run.epoch == 1:
            stopped.append(run.epoch)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(short, cache, tmp_path / "resumed", log=lambda _: None, on_epoch=stop_after_first)
    assert stopped == [1]
    lines: list[str] = []
    pretrain(short, cache, tmp_path / "resumed", log=lines.append)
    assert any("resumed" in line and "epoch 1" in line for line in lines)
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 9
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_non_finite_loss_stops_the_run(synthetic_cache: Path, tmp_path: Path) -> None:
    cfg = load_config(None, TINY_RUN + ["msn.temperature=1e-30"])
    with pytest.raises(NonFiniteLossError, match="step 0: loss is"):
        pretrain(cfg, open_cache(synthetic_cache), tmp_path / "run", log=lambda _: None)


def test_run_dir_has_timm_encoder_events_and_probe(synthetic_cache: Path, tmp_path: Path) -> None:
    cfg = load_config(None, TINY_RUN)
    info = pretrain(cfg, open_cache(synthetic_cache), tmp_path / "run", log=lambda _: None)
    assert 0.0 <= info["metrics"]["probe"]["macro_auroc"] <= 1.0
    import mmsn.models  # noqa: F401  registers vit_nano with timm

    vit = timm.create_model("vit_nano", in_chans=1, num_classes=0, img_size=32,
                            checkpoint_path=str(tmp_path / "run" / "encoder.pth"))
    encoder, _ = load_encoder(tmp_path / "run")
    x = torch.randn(2, 1, 32, 32)
    assert torch.allclose(vit.eval()(x), encoder(x), atol=1e-5)
    events = list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/cross_entropy", "train/me_max", "train/lr", "train/ema",
            "train/images_per_s", "probe/val_macro_auroc"} <= tags
    assert json.loads((tmp_path / "run" / "run.json").read_text())["epoch"] == 2


def test_compiled_blocks_give_the_eager_step_and_the_same_state_dict(synthetic_cache: Path) -> None:
    """train.compile compiles each transformer block in place: same loss, same state-dict keys (so
    checkpoints and timm encoder exports do not change). Dynamo's eager backend here: inductor's CPU
    code generation takes minutes (benchmarks/gpu_check.sh times the real one on a GPU)."""
    from mmsn.engine import compile_blocks

    cache = open_cache(synthetic_cache)
    cfg = load_config(None, TINY_RUN)
    runs = [build_run(cfg, cache) for _ in range(2)]
    assert compile_blocks(runs[1].objective, backend="eager") == 4  # 2 blocks each in the online and EMA ViT
    batch = Batch(torch.from_numpy(cache.images[cache.rows("train")[:16]].copy()),
                  torch.from_numpy(runs[0].train_set.ehr[:16]))
    eager, compiled = (train_step(run, batch)["loss"] for run in runs)
    assert compiled == pytest.approx(eager, abs=1e-5)
    assert list(runs[0].objective.state_dict()) == list(runs[1].objective.state_dict())
    assert load_config(None, ["train.compile=true"]).train.compile
