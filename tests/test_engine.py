"""The engine: loss falls, resume is bit for bit, non-finite loss stops, TensorBoard and files."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
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


# --- the GPU step, checked on the CPU (Run.lazy, per-rank RNG, CUDA RNG in checkpoints, checkpointing) ---

class HostReads:
    """Counts reads of tensor values on the host (what drains a GPU's queue) while active."""

    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count, self.active = 0, False
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(tensor: torch.Tensor, *args: object, _original: object = original, **kwargs: object) -> object:
                if self.active:
                    self.count += 1
                return _original(tensor, *args, **kwargs)  # type: ignore[operator]

            monkeypatch.setattr(torch.Tensor, name, counted)


def test_a_lazy_step_reads_nothing_and_skips_a_non_finite_update(synthetic_cache: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from mmsn.engine import read_scalars, step

    cache = open_cache(synthetic_cache)
    run = build_run(load_config(None, TINY_RUN), cache, lazy=True)
    assert run.optimizer.defaults["fused"]  # the optimiser that skips a step on a device flag
    reads = HostReads(monkeypatch)
    batch = Batch(torch.from_numpy(cache.images[cache.rows("train")[:32]].copy()),
                  torch.from_numpy(run.train_set.ehr[:32]))
    reads.active = True
    scalars = step(run, batch)
    reads.active = False
    assert reads.count == 0  # losses, parts and grad norm stay on the device
    assert read_scalars(run, scalars)["loss"] > 0

    diverging = build_run(load_config(None, TINY_RUN + ["msn.temperature=1e-30"]), cache, lazy=True)
    trained = dict(diverging.objective.named_parameters())
    before = {k: p.detach().clone() for k, p in trained.items() if p.requires_grad}
    scalars = step(diverging, batch)  # not finite at step 0: decided on the device, not raised here
    assert all(torch.equal(before[k], trained[k]) for k in before)  # the non-finite update was never applied
    with pytest.raises(NonFiniteLossError, match="step 0: loss is (nan|inf) .its update skipped"):
        read_scalars(diverging, scalars)


def test_a_lazy_epoch_reads_the_host_once_per_log_interval(synthetic_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import mmsn.engine as engine

    run = build_run(load_config(None, TINY_RUN + ["train.log_every=2", "train.max_steps_per_epoch=5"]),
                    open_cache(synthetic_cache), lazy=True)
    reads = HostReads(monkeypatch)
    original, logged = engine.step, []

    def counted_step(run: engine.Run, batch: Batch) -> engine.Scalars:
        reads.active = True
        try:
            return original(run, batch)
        finally:
            reads.active = False

    monkeypatch.setattr(engine, "step", counted_step)
    metrics = engine.train_epoch(run, on_step=logged.append)
    assert reads.count == 0  # no step read anything: only the logged steps and the epoch's means do
    assert [round(s["lr"], 12) for s in logged] and len(logged) == 3  # steps 2, 4 and the last (5)
    assert metrics["loss"] > 0 and run.step == 5


def test_global_rng_differs_by_rank_and_repeats_for_a_step(synthetic_cache: Path) -> None:
    """Drop-path and dropout draw from the global RNG: seeded per (seed, step, rank), so ranks differ and a
    resumed or retried step draws what the uninterrupted one drew."""
    from mmsn.engine import step

    cache = open_cache(synthetic_cache)
    cfg = load_config(None, TINY_RUN + ["model.drop_path=0.3"])
    draws = []
    for rank in (0, 1, 0):
        run = build_run(cfg, cache, rank=rank)
        batch = Batch(torch.from_numpy(cache.images[cache.rows("train")[:32]].copy()),
                      torch.from_numpy(run.train_set.ehr[:32]))
        step(run, batch)
        draws.append(torch.rand(4))  # where the step left the global stream
    assert not torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])


def test_a_checkpoint_from_two_gpus_resumes_where_fewer_are_visible(synthetic_cache: Path) -> None:
    from mmsn.engine import load_state_dict, state_dict

    cache = open_cache(synthetic_cache)
    run = build_run(load_config(None, TINY_RUN), cache)
    saved = state_dict(run)
    assert "cuda" not in saved["rng"]  # a CPU run saves no GPU's RNG
    # as an older version wrote it on a 2-GPU node: every visible GPU's CUDA RNG state
    gpu_state = torch.zeros(16, dtype=torch.uint8)
    for cuda in ([gpu_state, gpu_state.clone()], gpu_state):
        state = {**saved, "rng": {**saved["rng"], "cuda": cuda}}
        resumed = build_run(load_config(None, TINY_RUN), cache)
        load_state_dict(resumed, state)  # on a run without a GPU: the GPU states are not needed
        assert resumed.step == run.step


def counted(forward: Callable[..., torch.Tensor], counts: list[int], i: int, *args: object) -> torch.Tensor:
    counts[i] += 1
    return forward(*args)


def test_grad_checkpointing_recomputes_every_block_in_backward(synthetic_cache: Path) -> None:
    cache = open_cache(synthetic_cache)
    calls = {}
    for checkpointing in (False, True):
        run = build_run(load_config(None, TINY_RUN + [f"model.grad_checkpointing={str(checkpointing).lower()}"]),
                        cache)
        blocks = run.objective.encoder.vit.blocks
        counts = [0] * len(blocks)
        for i, block in enumerate(blocks):  # counts every run of the block's forward, recomputation included
            block.forward = functools.partial(counted, block.forward, counts, i)
        batch = Batch(torch.from_numpy(cache.images[cache.rows("train")[:32]].copy()),
                      torch.from_numpy(run.train_set.ehr[:32]))
        train_step(run, batch)
        calls[checkpointing] = counts
    # one forward per online view batch (anchor, focal) without; each again in backward with checkpointing
    assert calls[True] == [2 * c for c in calls[False]] and min(calls[False]) > 0
