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
from torch import Tensor, nn
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


class NonFiniteGuard:
    """The non-finite check of a lazily read run, kept on the device: the first step whose (all-reduced)
    loss was not finite, and that loss. ``found_inf`` is what the fused optimiser skips an update on."""

    def __init__(self, device: torch.device) -> None:
        self.first = torch.full((), -1.0, device=device)  # the first bad step since the last read; -1: none
        self.loss = torch.zeros((), device=device)

    def step(self, step: int, loss: Tensor) -> Tensor:
        """Record this step's loss (a device scalar); returns found_inf (1.0 when it is not finite)."""
        bad = ~torch.isfinite(loss)
        new = bad & (self.first < 0)
        self.first = torch.where(new, torch.full_like(self.first, float(step)), self.first)
        self.loss = torch.where(new, loss.detach().float(), self.loss)
        return bad.float()


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
    # Losses stay on the device and are read on the host only when logged (one sync per train.log_every
    # steps); a non-finite loss is decided on the device, its update skipped by the fused optimiser, and raised
    # at the next read. On CUDA; on the CPU a read costs nothing and every step is checked before its update.
    lazy: bool = False
    guard: NonFiniteGuard | None = None

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
              world_size: int = 1, wrap: Callable[[nn.Module], nn.Module] | None = None,
              lazy: bool | None = None) -> Run:
    """Build the objective and the optimiser for ``cfg`` on ``cache``'s train split.

    ``wrap`` (e.g. Ray Train's ``prepare_model``) turns the objective into its DDP wrapper; ``lazy`` (default:
    on CUDA) reads losses on the host only when logged (``Run.lazy``).
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
    lazy = device.type == "cuda" if lazy is None else lazy
    # fused: one kernel per parameter group on CUDA, and the only AdamW that can skip a step on a device flag
    optimizer = torch.optim.AdamW(objective.param_groups(cfg.optim.weight_decay), lr=cfg.optim.start_lr,
                                  betas=cfg.optim.betas, fused=lazy)
    return Run(cfg=cfg, objective=objective, net=net, optimizer=optimizer, ehr_encoder=encoder,
               train_set=train_set, device=device,
               amp_dtype=resolve_amp(cfg, device), rank=rank, world_size=world_size,
               steps_per_epoch=steps_per_epoch(cfg, len(train_set), world_size), lazy=lazy,
               guard=NonFiniteGuard(device) if lazy else None)


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


def _step_seed(run: Run, stream: int) -> int:
    return int(np.random.SeedSequence([run.cfg.train.seed, run.step, run.rank, stream]).generate_state(1)[0])


def step_generator(run: Run) -> torch.Generator:
    """Views and masks of step s on worker r come from (seed, s, r) alone: resume needs no replay."""
    return torch.Generator(device=run.device).manual_seed(_step_seed(run, 0))


Scalars = dict[str, Tensor | float]  # a step's logged values: device scalars (lazy runs) or floats


def train_step(run: Run, batch: Batch) -> dict[str, float]:
    """One optimiser step on a batch (uint8 images (B,H,W), EHR (B,w), ...); returns the logged scalars:
    ``loss``, the objective's parts, ``grad_norm`` and the schedule values, read on the host."""
    return read_scalars(run, step(run, batch))


def step(run: Run, batch: Batch) -> Scalars:
    """One optimiser step, reading nothing on the host when the run is lazy (see ``Run.lazy``)."""
    sched = apply_schedules(run)
    gen = step_generator(run)
    # The global RNG (drop-path, dropout) from (seed, step, rank) too: it differs by rank, and a resumed or
    # retried run draws what the uninterrupted one drew.
    torch.manual_seed(_step_seed(run, 1))
    batch = batch.to(run.device)
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        out = run.net(batch, gen, sched)
    run.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    loss = _global_mean(out.loss)
    if run.guard is not None:
        run.optimizer.found_inf = run.guard.step(run.step, loss)  # type: ignore[attr-defined]  # fused AdamW reads it
    else:  # read now, before the optimiser step, so a NaN never reaches the weights
        _raise_if_not_finite(run.step, float(loss), {k: float(v.detach()) for k, v in out.parts.items()}, sched)
    run.objective.before_optimizer_step(sched)
    grad_norm = _clip(run)
    run.optimizer.step()
    run.objective.after_step(sched)
    run.step += 1
    return {"loss": loss, **{k: v.detach() for k, v in out.parts.items()}, "grad_norm": grad_norm, **sched}


def read_scalars(run: Run, scalars: Scalars) -> dict[str, float]:
    """The scalars on the host, in one device-to-host copy; a lazy run raises NonFiniteLossError here for a
    step since the last read whose loss was not finite (its update was skipped)."""
    keys = [k for k, v in scalars.items() if isinstance(v, Tensor)]
    tensors = [scalars[k].float() for k in keys]  # type: ignore[union-attr]
    if run.guard is not None:
        tensors += [run.guard.first, run.guard.loss]
    values = torch.stack(tensors).tolist() if tensors else []
    host = {k: float(v) for k, v in scalars.items() if not isinstance(v, Tensor)}
    host.update(zip(keys, values))
    if run.guard is not None and values[-2] >= 0:
        _raise_if_not_finite(int(values[-2]), values[-1], {}, {"lr": float("nan")})
    return host


def _raise_if_not_finite(step: int, loss: float, parts: dict[str, float], sched: dict[str, float]) -> None:
    if math.isfinite(loss):
        return
    detail = ", ".join(f"{k} {v:.4g}" for k, v in parts.items())
    lr = f"lr {sched['lr']:.3g}" if math.isfinite(sched["lr"]) else "its update skipped"
    raise NonFiniteLossError(f"step {step}: loss is {loss} ({detail}{', ' if detail else ''}{lr}); "
                             "lower optim.lr or check the data")


def _global_mean(loss: Tensor) -> Tensor:
    """The loss averaged over DDP workers, on the device. A NaN/inf on any rank poisons the sum, so every
    rank sees it at the same step instead of one rank leaving the others in a collective."""
    value = loss.detach().clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(value)
        value /= torch.distributed.get_world_size()
    return value


def _clip(run: Run) -> Tensor:
    params = [p for g in run.optimizer.param_groups for p in g["params"] if p.grad is not None]
    max_norm = run.cfg.optim.clip_grad if run.cfg.optim.clip_grad > 0 else float("inf")
    return torch.nn.utils.clip_grad_norm_(params, max_norm).detach()


def train_epoch(run: Run, log: Log | None = None,
                on_step: Callable[[dict[str, float]], None] | None = None) -> dict[str, float]:
    """Train ``run.epoch``; returns mean loss parts and images/s. ``on_step`` sees the scalars of every
    ``train.log_every``-th step and the epoch's last (the steps a lazy run reads on the host)."""
    run.net.train()
    loader = make_loader(run, run.epoch)
    sums: Scalars = {}
    start, n_images = time.perf_counter(), 0
    averaged = ("loss", *run.objective.part_names)
    n_steps = max(1, min(len(loader), run.steps_per_epoch))
    for k, item in enumerate(loader):
        if k >= run.steps_per_epoch:
            break
        batch = Batch(**item)
        scalars = step(run, batch)
        n_images += batch.size
        for key in averaged:  # summed in float64, as the floats they are read as
            value = scalars[key]
            sums[key] = sums.get(key, 0.0) + (value.double() if isinstance(value, Tensor) else value)
        if run.step % run.cfg.train.log_every == 0 or k + 1 == n_steps:
            host = read_scalars(run, scalars)
            host["images_per_s"] = n_images * run.world_size / (time.perf_counter() - start)
            if on_step is not None:
                on_step(host)
            if log is not None:
                log(progress_line(run, k + 1, host, time.perf_counter() - start))
    run.epoch += 1
    seconds = time.perf_counter() - start
    means = read_scalars(run, {k: v / n_steps for k, v in sums.items()})
    return {**means, "epoch_seconds": seconds, "images_per_s": n_images * run.world_size / max(seconds, 1e-9)}


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
    if run.device.type == "cuda":  # the run's own GPU only: a resume may see fewer or other GPUs
        rng["cuda"] = torch.cuda.get_rng_state(run.device)
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
    cuda = rng.get("cuda")
    if isinstance(cuda, (list, tuple)):  # saved by an older version: every visible GPU's; the first was the run's
        cuda = cuda[0] if cuda else None
    if cuda is not None and run.device.type == "cuda":
        torch.cuda.set_rng_state(cuda, run.device)
