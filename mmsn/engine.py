"""The pretraining engine: one pure-PyTorch step and epoch used alone (``mmsn pretrain``) and by Ray Train.

The engine does not know which objective runs (mmsn.objectives): it sets the schedules, runs the
objective's forward under autocast, back-propagates, checks the loss on every rank, clips, steps
AdamW and calls the objective's hooks. Pieces: ``build_run`` (objective, optimiser), ``make_loader``
(distributed sampler over the train split), ``train_epoch``,
``state_dict`` / ``load_state_dict`` (everything needed to resume bit for bit). Schedules are pure
functions of the global step (mmsn.schedules), so a resumed run continues the same schedule.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from mmsn.config import Config, objective_spec, to_dict
from mmsn.data.cache import Cache
from mmsn.data.dataset import CacheImages, EHRTargets, fit_ehr_encoder, split_dataset
from mmsn.data.ehr import EHREncoder
from mmsn.errors import MMSNError
from mmsn.objectives import Batch, DataShape, Objective, build_objective
from mmsn.schedules import cosine, learning_rate

Log = Callable[[str], None]


class NonFiniteLossError(MMSNError):
    """The loss became NaN/inf: the run stops instead of training on garbage."""


@dataclass
class Run:
    """Everything one pretraining run holds; ``net`` is ``objective`` or its DDP wrapper."""

    cfg: Config
    objective: Objective
    net: nn.Module
    optimizer: torch.optim.Optimizer
    ehr_encoder: EHREncoder
    train_set: CacheImages
    device: torch.device
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    rank: int = 0
    world_size: int = 1
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # epochs completed

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch


def resolve_device(cfg: Config) -> torch.device:
    if cfg.train.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.train.device == "cuda" and not torch.cuda.is_available():
        raise MMSNError("train.device: cuda requested but no GPU is visible")
    return torch.device(cfg.train.device)


def resolve_amp(cfg: Config, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on GPU (auto), fp32 on CPU; explicit 'bf16' also works on CPU."""
    if cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def steps_per_epoch(cfg: Config, n_train: int, world_size: int) -> int:
    steps = n_train // (cfg.train.batch_size * world_size)
    if steps == 0:
        raise MMSNError(f"train.batch_size {cfg.train.batch_size} x {world_size} workers exceeds the "
                        f"{n_train} train images of the cache; lower train.batch_size")
    cap = cfg.train.max_steps_per_epoch
    return min(steps, cap) if cap else steps


def compile_blocks(module: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` every timm transformer block in place (regional compilation: one small graph
    compiled once and reused by every block and view size, parameters and state-dict keys unchanged, so
    checkpoints and exported encoders are the same as eager ones). Returns how many blocks."""
    from timm.models.vision_transformer import Block

    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def build_run(cfg: Config, cache: Cache, device: torch.device | None = None, rank: int = 0,
              world_size: int = 1, wrap: Callable[[nn.Module], nn.Module] | None = None) -> Run:
    """Build the objective and the optimiser for ``cfg`` on ``cache``'s train split.

    ``wrap`` (e.g. Ray Train's ``prepare_model``) turns the objective into its DDP wrapper.
    """
    device = device or resolve_device(cfg)
    torch.manual_seed(cfg.train.seed)  # same init on every worker, before DDP broadcasts anyway
    encoder = fit_ehr_encoder(cache, cfg.ehr.features, cfg.ehr.fusion)
    spec = objective_spec(cfg.objective.name)
    targets = spec.ehr_targets(cfg, cache) if spec.ehr_targets is not None else EHRTargets()
    train_set = split_dataset(cache, "train", encoder, targets)
    objective = build_objective(cfg, DataShape(encoder.width, targets.record_classes)).to(device)
    if cfg.train.compile:
        compile_blocks(objective)
    net = wrap(objective) if wrap is not None else objective
    optimizer = torch.optim.AdamW(objective.param_groups(cfg.optim.weight_decay), lr=cfg.optim.start_lr,
                                  betas=cfg.optim.betas)
    return Run(cfg=cfg, objective=objective, net=net, optimizer=optimizer, ehr_encoder=encoder,
               train_set=train_set, device=device,
               amp_dtype=resolve_amp(cfg, device), rank=rank, world_size=world_size,
               steps_per_epoch=steps_per_epoch(cfg, len(train_set), world_size))


def make_loader(run: Run, epoch: int) -> DataLoader:
    """This worker's shard of the train split for ``epoch``, shuffled by (seed, epoch)."""
    sampler: DistributedSampler = DistributedSampler(
        run.train_set, num_replicas=run.world_size, rank=run.rank, shuffle=True,
        seed=run.cfg.train.seed, drop_last=True)
    sampler.set_epoch(epoch)
    return DataLoader(run.train_set, batch_size=run.cfg.train.batch_size, sampler=sampler, drop_last=True,
                      num_workers=run.cfg.train.num_workers, pin_memory=run.device.type == "cuda",
                      persistent_workers=False)


def apply_schedules(run: Run) -> dict[str, float]:
    """Set lr and weight decay of the optimiser for the current step; return them and the objective's
    own schedule values (e.g. MSN's EMA momentum ``ema``)."""
    o, total = run.cfg.optim, run.total_steps
    warmup = int(round(o.warmup_epochs * run.steps_per_epoch))
    lr = learning_rate(run.step, total, warmup, o.start_lr, o.lr, o.final_lr)
    wd = cosine(run.step, total, o.weight_decay, o.final_weight_decay)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
        if group.get("apply_wd", True):
            group["weight_decay"] = wd
    return {"lr": lr, "weight_decay": wd, **run.objective.schedules(run.step, total, run.steps_per_epoch)}


def step_generator(run: Run) -> torch.Generator:
    """Views and masks of step s on worker r come from (seed, s, r) alone: resume needs no replay."""
    seed = int(np.random.SeedSequence([run.cfg.train.seed, run.step, run.rank]).generate_state(1)[0])
    return torch.Generator(device=run.device).manual_seed(seed)


def train_step(run: Run, batch: Batch) -> dict[str, float]:
    """One optimiser step on a batch (uint8 images (B,H,W), EHR (B,w), ...); returns the logged scalars:
    ``loss``, the objective's parts, ``grad_norm`` and the schedule values."""
    sched = apply_schedules(run)
    gen = step_generator(run)
    batch = batch.to(run.device)
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        out = run.net(batch, gen, sched)
    run.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    # Read the loss only after backward is queued (one host sync per step, at its end), but before the
    # optimiser step, so a NaN never reaches the weights.
    loss = _global_mean(out.loss)
    parts = {k: float(v.item()) for k, v in out.parts.items()}
    if not math.isfinite(loss):
        detail = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
        raise NonFiniteLossError(f"step {run.step}: loss is {loss} ({detail}{', ' if detail else ''}"
                                 f"lr {sched['lr']:.3g}); lower optim.lr or check the data")
    run.objective.before_optimizer_step(sched)
    grad_norm = _clip(run)
    run.optimizer.step()
    run.objective.after_step(sched)
    run.step += 1
    return {"loss": loss, **parts, "grad_norm": grad_norm, **sched}


def _global_mean(loss: torch.Tensor) -> float:
    """The loss averaged over DDP workers. A NaN/inf on any rank poisons the sum, so every rank
    raises NonFiniteLossError at the same step instead of one rank leaving the others in a collective."""
    value = loss.detach().clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return float(value.item())


def _clip(run: Run) -> float:
    params = [p for g in run.optimizer.param_groups for p in g["params"] if p.grad is not None]
    max_norm = run.cfg.optim.clip_grad if run.cfg.optim.clip_grad > 0 else float("inf")
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm))


def train_epoch(run: Run, log: Log | None = None,
                on_step: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train ``run.epoch``; returns mean loss parts and images/s. ``on_step`` sees every step's scalars."""
    run.net.train()
    loader = make_loader(run, run.epoch)
    sums: dict[str, float] = {}
    start, n_images = time.perf_counter(), 0
    averaged = ("loss", *run.objective.part_names)
    for k, item in enumerate(loader):
        if k >= run.steps_per_epoch:
            break
        batch = Batch(**item)
        scalars = train_step(run, batch)
        n_images += batch.size
        scalars["images_per_s"] = n_images * run.world_size / (time.perf_counter() - start)
        for key in averaged:
            sums[key] = sums.get(key, 0.0) + scalars[key]
        if on_step is not None:
            on_step(scalars)
        if log is not None and (run.step % run.cfg.train.log_every == 0 or k + 1 == run.steps_per_epoch):
            log(progress_line(run, k + 1, scalars, time.perf_counter() - start))
    run.epoch += 1
    steps = max(1, min(len(loader), run.steps_per_epoch))
    seconds = time.perf_counter() - start
    return {**{k: v / steps for k, v in sums.items()}, "epoch_seconds": seconds,
            "images_per_s": n_images * run.world_size / max(seconds, 1e-9)}


def progress_line(run: Run, k: int, s: dict[str, float], elapsed: float) -> str:
    remaining_steps = run.total_steps - run.step
    eta = remaining_steps * elapsed / max(k, 1)
    parts = " ".join(f"{name} {s[name]:.4f}" for name in run.objective.part_names)
    ema = f" ema {s['ema']:.4f}" if "ema" in s else ""
    return (f"epoch {run.epoch + 1}/{run.cfg.train.epochs} step {k}/{run.steps_per_epoch} "
            f"loss {s['loss']:.4f}{f' ({parts})' if parts else ''} "
            f"lr {s['lr']:.2e}{ema} {s['images_per_s']:.0f} img/s eta {_duration(eta)}")


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def state_dict(run: Run) -> dict[str, Any]:
    """Everything needed to resume bit for bit: weights, optimiser, counters, RNG states, config."""
    rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"model": run.objective.state_dict(), "optimizer": run.optimizer.state_dict(), "step": run.step,
            "epoch": run.epoch, "config": to_dict(run.cfg), "ehr_encoder": run.ehr_encoder.to_dict(), "rng": rng}


def load_state_dict(run: Run, state: dict[str, Any]) -> None:
    run.objective.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.step, run.epoch = int(state["step"]), int(state["epoch"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
