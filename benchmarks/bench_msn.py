"""Training-step speed of an objective: ours (``mmsn.engine.train_step``) against the same step composed
from lightly parts (msn, vicreg, dino; mlvicx has no lightly counterpart and is timed alone), plus the
linear probe's cost relative to one pretraining epoch, peak memory and (on a GPU) model FLOPs
utilisation. See benchmarks/README.md for what every figure means.

Both implementations do the same work per step on the same uint8 batch, already on the device, with
the same views (``mmsn.views.MultiCropViews``), AdamW, clipping, EMA and precision:
- msn: 1 target + 1 anchor at --size, --n-focal focal views at --focal-size; masked anchor + focal
  forward, unmasked EMA-target forward, MSN loss with learnable prototypes, EMA update;
- vicreg: two views at --size through one encoder and a 3-layer expander, VICReg loss;
- dino: 2 global views (teacher and student) + --n-focal local views (student), DINO head, centring,
  DINO loss, teacher EMA update;
then backward, grad-norm clip, AdamW step, the loss read back for the log. Data loading is excluded
from both: it is the same DataLoader either way.

    python benchmarks/bench_msn.py                       # CPU default, < 2 min on 2 cores
    python benchmarks/bench_msn.py --objective vicreg    # (and dino, mlvicx)
    python benchmarks/bench_msn.py --device cuda --precision bf16 --backbone vit_small_patch16_224 \\
        --size 224 --focal-size 96 --n-focal 10 --batch 128
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightly
import numpy as np
import timm
import torch
from common import PeakMemory, Timing, print_table, random_source, synchronize, try_synthetic
from lightly.loss import DINOLoss as LightlyDINOLoss
from lightly.loss import MSNLoss as LightlyMSNLoss
from lightly.loss import VICRegLoss as LightlyVICRegLoss
from lightly.models.modules.heads import DINOProjectionHead, MSNProjectionHead, VICRegProjectionHead
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from lightly.models.utils import deactivate_requires_grad, random_token_mask, update_momentum
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from mmsn.config import Config, EHRConfig, ModelConfig, ObjectiveConfig, TrainConfig, ViewsConfig
from mmsn.data.cache import Cache, open_cache
from mmsn.data.dataset import CacheImages
from mmsn.data.prepare import prepare
from mmsn.engine import Run, build_run, resolve_amp, train_step
from mmsn.evaluate import probe_encoder
from mmsn.models.backbone import create_vit
from mmsn.objectives import OBJECTIVES, Batch
from mmsn.objectives.base import decay_groups
from mmsn.views import MultiCropViews

Step = Callable[[], float]  # one training step; returns the logged loss


class Built(NamedTuple):
    """What a builder hands to the measurement: the step and what it trains."""

    step: Step
    model: nn.Module
    optimizer: torch.optim.Optimizer
    run: Run | None  # ours only: steps per epoch and the encoder to probe


SPLIT = (0.7, 0.15, 0.15)
QUICKSTART_HEAD = (512, 128, 256)  # head hidden, head out = prototype dim, K (mmsn/configs/quickstart.yaml)
PAPER_HEAD = (2048, 256, 1024)  # MSN ViT-S/16 (docs/method.md)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="msn")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--backbone", default="vit_micro", help="vit_micro, vit_nano or a timm ViT name")
    p.add_argument("--patch-size", type=int, default=0, help="0: the backbone's own")
    p.add_argument("--size", type=int, default=64, help="target/anchor view side (and cache side) in px")
    p.add_argument("--focal-size", type=int, default=32)
    p.add_argument("--n-focal", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per implementation before timing")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--head", type=int, nargs=3, metavar=("HIDDEN", "OUT", "K"), default=None,
                   help=f"head widths and prototypes; default {QUICKSTART_HEAD} for vit_micro/vit_nano, "
                        f"{PAPER_HEAD} (the paper's) for timm ViTs")
    p.add_argument("--cache", type=Path, default=None, help="a prepared cache; default: a synthetic one")
    p.add_argument("--n-images", type=int, default=1000, help="images of the cache made when --cache is not given")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="GPU peak dense bf16 TFLOP/s for MFU (H100 SXM: 989; H200: 989)")
    p.add_argument("--no-probe", action="store_true", help="skip the probe timing")
    p.add_argument("--compile", action="store_true", help="train.compile: torch.compile each transformer block")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also print torch.profiler's top ops over N steps of ours and of the reference")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    return args


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model (as lscpu's "Model name") and torch's thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), None)
    return f"{model or platform.processor() or 'CPU'} ({torch.get_num_threads()} torch threads)"


# --- the cache -----------------------------------------------------------------------------------


def make_cache(args: argparse.Namespace, workdir: Path) -> tuple[Cache, str]:
    """``--cache`` as given, else a fresh synthetic cache (random uint8 images if synthetic fails)."""
    if args.cache is not None:
        return open_cache(args.cache), f"given: {args.cache}"
    source, why = try_synthetic(0)
    if source is not None:
        try:
            start = time.perf_counter()
            path = prepare(source, workdir / "synthetic", size=args.size, seed=0, split=SPLIT, n=args.n_images)
            return open_cache(path), f"synthetic, {args.n_images} images at {args.size} px " \
                                     f"(prepared in {time.perf_counter() - start:.1f} s)"
        except Exception as err:  # noqa: BLE001 - the generator is being written: any failure falls back
            why = f"{type(err).__name__}: {err}"
    print(f"NOTE: synthetic source unavailable ({why}); using a cache of random uint8 images instead")
    path = prepare(random_source(args.n_images), workdir / "random", size=args.size, seed=0, split=SPLIT,
                   n=args.n_images)
    return open_cache(path), f"random uint8 images (synthetic unavailable), {args.n_images} at {args.size} px"


def first_batch(train_set: CacheImages, n: int, device: torch.device) -> Batch:
    """The first ``n`` train items as the DataLoader collates them (uint8 images, EHR rows and the EHR
    targets an objective reads: records, pseudo-labels), on ``device``."""
    items = [train_set[k] for k in range(n)]
    return Batch(**{key: torch.stack([item[key] for item in items]) for key in items[0]}).to(device)


def bench_config(args: argparse.Namespace, device: torch.device, fusion: str) -> Config:
    small = args.backbone in ("vit_micro", "vit_nano")
    hidden, out, k = args.head or (QUICKSTART_HEAD if small else PAPER_HEAD)
    return Config(
        views=ViewsConfig(size=args.size, focal_size=args.focal_size, n_focal=args.n_focal),
        model=ModelConfig(backbone=args.backbone, patch_size=args.patch_size, head_hidden=hidden, head_out=out,
                          n_prototypes=k),
        ehr=EHRConfig(fusion=fusion),
        objective=ObjectiveConfig(args.objective),
        train=TrainConfig(batch_size=args.batch, precision=args.precision, device=device.type, compile=args.compile),
    )


# --- ours ----------------------------------------------------------------------------------------


def build_ours(cfg: Config, cache: Cache, device: torch.device) -> Built:
    """Our real training step (``mmsn.engine.train_step``) on a fixed batch."""
    run = build_run(cfg, cache, device)
    batch = first_batch(run.train_set, cfg.train.batch_size, device)

    def step() -> float:
        return train_step(run, batch)["loss"]

    return Built(step, run.objective, run.optimizer, run)


# --- the lightly reference -----------------------------------------------------------------------


class LightlyMSN(nn.Module):
    """lightly's MSN example model (examples/pytorch/msn.py) around our timm ViT.

    Differences from the example, both to make it a fair and correct reference: the prototypes
    are passed to the loss as a parameter (the example passes ``.data``, so they never train), and
    the token count given to ``random_token_mask`` includes the CLS token (the example leaves it out,
    so the last patch is never kept).
    """

    def __init__(self, vit: nn.Module, hidden: int, out: int, k: int, mask_ratio: float) -> None:
        super().__init__()
        self.mask_ratio = mask_ratio
        # "skip": keep timm's initialisation (the same weights as ours for the same seed).
        self.anchor_backbone = MaskedVisionTransformerTIMM(vit, weight_initialization="skip",
                                                           pos_embed_initialization="skip")
        self.anchor_head = MSNProjectionHead(vit.embed_dim, hidden, out)
        self.backbone = copy.deepcopy(self.anchor_backbone)  # the EMA target
        self.head = copy.deepcopy(self.anchor_head)
        deactivate_requires_grad(self.backbone)
        deactivate_requires_grad(self.head)
        self.prototypes = nn.Linear(out, k, bias=False)  # (K, D) weight, learnable

    def forward_target(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(images=x))

    def forward_masked(self, x: Tensor) -> Tensor:
        vit = self.anchor_backbone.vit
        patch = vit.patch_embed.patch_size[0]
        tokens = vit.num_prefix_tokens + (x.shape[-2] // patch) * (x.shape[-1] // patch)
        idx_keep, _ = random_token_mask((x.shape[0], tokens), self.mask_ratio, device=x.device)  # (N, keep)
        return self.anchor_head(self.anchor_backbone(images=x, idx_keep=idx_keep))


class LightlyVICReg(nn.Module):
    """lightly's VICReg example (examples/pytorch/vicreg.py) around our timm ViT: backbone CLS ->
    ``VICRegProjectionHead`` (3 layers), ``VICRegLoss``."""

    def __init__(self, vit: nn.Module, hidden: int, out: int) -> None:
        super().__init__()
        self.backbone = vit
        self.projection_head = VICRegProjectionHead(vit.embed_dim, hidden, out, num_layers=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.projection_head(self.backbone(x))  # type: ignore[no-any-return]


class LightlyDINO(nn.Module):
    """lightly's DINO example (examples/pytorch/dino.py) around our timm ViT: student and EMA teacher,
    ``DINOProjectionHead`` (weight-normed last layer), ``DINOLoss`` with centring."""

    def __init__(self, vit: nn.Module, hidden: int, bottleneck: int, out: int) -> None:
        super().__init__()
        self.student_backbone = vit
        self.student_head = DINOProjectionHead(vit.embed_dim, hidden, bottleneck, out)
        self.teacher_backbone = copy.deepcopy(vit)
        self.teacher_head = DINOProjectionHead(vit.embed_dim, hidden, bottleneck, out)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def student(self, x: Tensor) -> Tensor:
        return self.student_head(self.student_backbone(x))  # type: ignore[no-any-return]

    def teacher(self, x: Tensor) -> Tensor:
        return self.teacher_head(self.teacher_backbone(x))  # type: ignore[no-any-return]


def reference_parts(cfg: Config, cache: Cache, device: torch.device, model: nn.Module) -> tuple[
        Tensor, torch.optim.Optimizer, list[nn.Parameter]]:
    """Ours' batch (B, H, W) uint8, the AdamW optimiser (same groups rule) and the trainable parameters."""
    rows = cache.rows("train")[: cfg.train.batch_size]  # what first_batch takes for ours
    images = torch.from_numpy(np.stack([cache.images[r] for r in rows])).to(device)
    # Our grouping rule (no decay on 1-D, bias, tokens, pos-embed, prototypes), lightly's parameter names.
    groups = decay_groups(model.named_parameters(), cfg.optim.weight_decay, ("prototypes", "mask_token"))
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.start_lr, betas=cfg.optim.betas)
    return images, optimizer, [p for p in model.parameters() if p.requires_grad]


def optimise(loss: Tensor, optimizer: torch.optim.Optimizer, trainable: list[nn.Parameter], clip: float) -> float:
    """The step's tail, the same for every reference: backward, clip, AdamW step, loss read back."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, clip)
    optimizer.step()
    return float(loss.item())


def reference_vit(cfg: Config, device: torch.device) -> nn.Module:
    torch.manual_seed(cfg.train.seed)
    return create_vit(cfg.model.backbone, cfg.views.size, cfg.model.patch_size, cfg.model.drop_path).to(device)


def build_msn_reference(cfg: Config, cache: Cache, device: torch.device) -> Built:
    """The lightly MSN composition with our views, optimiser, clipping, EMA and precision, on ours' batch."""
    m = cfg.model
    model = LightlyMSN(reference_vit(cfg, device), m.head_hidden, m.head_out, m.n_prototypes, cfg.mask.ratio).to(device)
    images, optimizer, trainable = reference_parts(cfg, cache, device, model)
    loss_fn = LightlyMSNLoss(cfg.msn.temperature, cfg.msn.sinkhorn_iterations, cfg.msn.me_max_weight)
    views, amp = MultiCropViews(cfg.views), resolve_amp(cfg, device)
    count = [0]

    def step() -> float:
        gen = torch.Generator(device=device).manual_seed(count[0])
        target, anchor, focal = views(images, gen)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            with torch.no_grad():
                target_out = model.forward_target(target)  # (B, D)
            outs = [model.forward_masked(v) for v in (anchor, focal) if v is not None]
            anchor_out = torch.cat(outs)  # (B*(1+F), D), view-major as the loss expects
        loss = loss_fn(anchor_out.float(), target_out.float(), model.prototypes.weight, cfg.msn.target_temperature)
        value = optimise(loss, optimizer, trainable, cfg.optim.clip_grad)
        update_momentum(model.anchor_backbone, model.backbone, cfg.msn.ema_start)
        update_momentum(model.anchor_head, model.head, cfg.msn.ema_start)
        count[0] += 1
        return value

    return Built(step, model, optimizer, None)


def build_vicreg_reference(cfg: Config, cache: Cache, device: torch.device) -> Built:
    """lightly's VICReg parts with our two views, optimiser, clipping and precision, on ours' batch."""
    model = LightlyVICReg(reference_vit(cfg, device), cfg.model.head_hidden, cfg.model.head_out).to(device)
    images, optimizer, trainable = reference_parts(cfg, cache, device, model)
    v = cfg.vicreg
    loss_fn = LightlyVICRegLoss(v.sim_weight, v.var_weight, v.cov_weight, eps=v.eps)
    views, amp = MultiCropViews(dataclasses.replace(cfg.views, n_focal=0)), resolve_amp(cfg, device)
    count = [0]

    def step() -> float:
        a, b, _ = views(images, torch.Generator(device=device).manual_seed(count[0]))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            z_a, z_b = model(a), model(b)
        count[0] += 1
        return optimise(loss_fn(z_a.float(), z_b.float()), optimizer, trainable, cfg.optim.clip_grad)

    return Built(step, model, optimizer, None)


def build_dino_reference(cfg: Config, cache: Cache, device: torch.device) -> Built:
    """lightly's DINO parts with our multi-crop views, optimiser, clipping, EMA and precision."""
    m, d = cfg.model, cfg.dino
    model = LightlyDINO(reference_vit(cfg, device), m.head_hidden, m.head_out, m.n_prototypes).to(device)
    images, optimizer, trainable = reference_parts(cfg, cache, device, model)
    loss_fn = LightlyDINOLoss(m.n_prototypes, d.warmup_teacher_temp, d.teacher_temp,
                              int(d.warmup_teacher_temp_epochs), d.student_temp, d.center_momentum).to(device)
    views, amp = MultiCropViews(cfg.views), resolve_amp(cfg, device)
    count = [0]

    def step() -> float:
        g1, g2, local = views(images, torch.Generator(device=device).manual_seed(count[0]))
        b = images.shape[0]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            with torch.no_grad():
                teacher = model.teacher(torch.cat([g1, g2])).float().chunk(2)
            student = [model.student(torch.cat([g1, g2]))]
            if local is not None:
                student.append(model.student(local))
            student_views = torch.cat(student).float().split(b)
        loss = loss_fn(list(teacher), list(student_views), epoch=0)
        value = optimise(loss, optimizer, trainable, cfg.optim.clip_grad)
        update_momentum(model.student_backbone, model.teacher_backbone, d.ema_start)
        update_momentum(model.student_head, model.teacher_head, d.ema_start)
        count[0] += 1
        return value

    return Built(step, model, optimizer, None)


# objective -> the same step from lightly's parts (MLVICX has none in lightly)
REFERENCES: dict[str, Callable[[Config, Cache, torch.device], Built]] = {
    "msn": build_msn_reference, "vicreg": build_vicreg_reference, "dino": build_dino_reference}


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One implementation under test and what was measured of it (seconds, MiB, FLOPs per step)."""

    name: str
    built: Built
    flops: int
    step_mib: float = 0.0  # transient peak of one step above what was held before it
    seconds: list[float] = field(default_factory=list)


def count_flops(step: Step) -> int:
    """FLOPs of one whole step (views, forwards, backward, optimiser) by FlopCounterMode.

    It counts matmuls, convolutions and attention kernels (forward and backward), not elementwise
    ops: the usual convention for model FLOPs. The target's no-grad forward is included: it is work
    every MSN step must do.
    """
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def set_up(name: str, build: Callable[[], Built], warmup: int) -> Variant:
    """Build, run the warm-up steps, count FLOPs on one more."""
    built = build()
    for _ in range(warmup):
        built.step()
    return Variant(name, built, count_flops(built.step))


def state_mib(built: Built) -> float:
    """Bytes held between steps, counted tensor by tensor: parameters (the EMA target's too),
    buffers, gradients and optimiser state. Counted rather than measured so that one-time costs
    of whichever variant runs first (thread pools, kernel caches) do not land on it."""
    params = list(built.model.parameters())
    tensors = [*params, *built.model.buffers(), *(p.grad for p in params if p.grad is not None),
               *(t for state in built.optimizer.state.values() for t in state.values() if torch.is_tensor(t))]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def measure_step_memory(variants: list[Variant], memory: PeakMemory) -> None:
    """Transient peak of one step of each variant, after all are set up and warm.

    Measuring here rather than during set-up keeps one-time costs of the first variant (thread
    pools, kernel caches) out of its figure; the others' held memory is the same for everyone.
    """
    for v in variants:
        memory.reset()
        v.built.step()
        v.step_mib = memory.peak_mib() - memory.start_mib


def time_interleaved(variants: list[Variant], steps: int, device: torch.device) -> None:
    """Time ``steps`` steps of each variant, round-robin with a rotating order.

    On a shared machine the load drifts; interleaving spreads that drift over all variants
    instead of penalising whichever happened to run during a busy minute.
    """
    for i in range(steps):
        k = i % len(variants)
        for v in variants[k:] + variants[:k]:
            synchronize(device)
            start = time.perf_counter()
            v.built.step()
            synchronize(device)
            v.seconds.append(time.perf_counter() - start)


def summarise(v: Variant, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    t = Timing.of(v.seconds)
    state = state_mib(v.built)
    achieved = v.flops / t.median / 1e12
    mfu = achieved / args.peak_tflops if device.type == "cuda" and args.precision == "bf16" else None
    return {"name": v.name, "median_s": t.median, "min_s": t.minimum, "max_s": t.maximum, "steps": t.n,
            "images_per_s": args.batch / t.median, "flops_per_step": v.flops, "achieved_tflops": achieved,
            "mfu": mfu, "state_mib": state, "step_mib": v.step_mib, "total_mib": state + v.step_mib,
            "trainable_params": sum(p.numel() for p in v.built.model.parameters() if p.requires_grad)}


def print_profile(v: Variant, steps: int, device: torch.device) -> None:
    """torch.profiler's top 12 ops by self time over ``steps`` steps: where a difference comes from."""
    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            v.built.step()
        synchronize(device)
    print(f"\nprofile of {v.name}, {steps} steps:")
    print(prof.key_averages().table(sort_by="self_device_time_total" if gpu else "self_cpu_time_total",
                                    row_limit=12, max_name_column_width=40))


def time_probe(run: Run, cache: Cache, device: torch.device) -> dict[str, Any]:
    """``probe_encoder`` on the cache (features of train + val, L2 grid, bootstrap as configured)."""
    run.objective.eval()  # as the engine probes: the eval encoder, no dropout
    start = time.perf_counter()
    out = probe_encoder(run.objective.eval_encoder(), cache, run.cfg.probe, run.cfg.views.size, device)
    result = out["val"]
    seconds = time.perf_counter() - start
    run.objective.train()
    return {"seconds": seconds, "fit_and_bootstrap_seconds": result.seconds, "sizes": result.sizes,
            "bootstrap": run.cfg.probe.bootstrap, "l2_grid": list(run.cfg.probe.l2_grid)}


# --- report --------------------------------------------------------------------------------------


def print_results(rows: list[dict[str, Any]], memory: PeakMemory) -> None:
    header = ["implementation", "ms/step", "min", "max", "img/s", "GFLOP/step", "TFLOP/s", "MFU",
              "state MiB", "step MiB", "total MiB"]
    print_table(header, [[r["name"], f"{1e3 * r['median_s']:.1f}", f"{1e3 * r['min_s']:.1f}",
                          f"{1e3 * r['max_s']:.1f}", f"{r['images_per_s']:.1f}", f"{r['flops_per_step'] / 1e9:.2f}",
                          f"{r['achieved_tflops']:.4f}", "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %",
                          f"{r['state_mib']:.0f}", f"{r['step_mib']:.0f}", f"{r['total_mib']:.0f}"] for r in rows])
    print(f"ms/step: median of {rows[0]['steps']} timed steps per implementation, interleaved round-robin; "
          "GFLOP/step: FlopCounterMode on one whole step (matmul/conv/attention: forward, backward, target forward)")
    print("memory: state = tensors held between steps (weights and EMA target, buffers, grads, AdamW moments), "
          f"counted; step = peak of one step above the level before it ({memory.kind}); total = state + step")


def print_probe(probe: dict[str, Any], epoch_s: float, steps_per_epoch: int, step_s: float) -> None:
    sizes = ", ".join(f"{k} {v}" for k, v in probe["sizes"].items())
    print(f"probe: {probe['seconds']:.2f} s (features of train + val, then L-BFGS over {len(probe['l2_grid'])} "
          f"L2 strengths and {probe['bootstrap']} bootstrap resamples, {probe['fit_and_bootstrap_seconds']:.2f} s "
          f"of it; {sizes} images)")
    print(f"one pretraining epoch: {steps_per_epoch} steps x {1e3 * step_s:.1f} ms = {epoch_s:.2f} s "
          "(ours, fusion none, data loading excluded)")
    print(f"probe / epoch: {probe['seconds'] / epoch_s:.2f}")


def print_setup(args: argparse.Namespace, device: torch.device, cfg: Config, cache_desc: str) -> None:
    print(f"device: {device.type}, {device_name(device)}; torch {torch.__version__}, timm {timm.__version__}, "
          f"lightly {lightly.__version__}")
    print(f"cache: {cache_desc}")
    print(f"objective {args.objective}, backbone {args.backbone}, views {args.size} px + {args.n_focal} x "
          f"{args.focal_size} px, batch {args.batch}, {args.precision}, "
          f"head {cfg.model.head_hidden}/{cfg.model.head_out}, "
          f"K {cfg.model.n_prototypes}, mask {cfg.mask.ratio if args.objective == 'msn' else '-'}, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    print(f"{load_line(device)}\n")


def load_line(device: torch.device) -> str:
    """The 1-minute load average: on a shared CPU, timings taken under load > cores are not comparable."""
    if device.type == "cuda" or not hasattr(os, "getloadavg"):
        return ""
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    busy = f"  WARNING: above the {cores} cores, other processes share them" if load > cores else ""
    return f"load average (1 min): {load:.2f} on {cores} cores{busy}"


def run_benchmark(args: argparse.Namespace, device: torch.device, memory: PeakMemory,
                  cache: Cache) -> tuple[list[Variant], dict[str, Any] | None]:
    """Set up the variants one by one (ours, lightly's where it has the objective, ours with fusion), time
    them interleaved, then probe ours (fusion none)."""
    plain, concat = bench_config(args, device, "none"), bench_config(args, device, "concat_anchor")
    variants = [set_up("ours: train_step, fusion none", lambda: build_ours(plain, cache, device), args.warmup)]
    reference = REFERENCES.get(args.objective)
    if reference is not None:
        variants.append(set_up("reference: lightly parts, fusion none", lambda: reference(plain, cache, device),
                               args.warmup))
    variants.append(set_up("ours: train_step, fusion concat_anchor", lambda: build_ours(concat, cache, device),
                           args.warmup))
    measure_step_memory(variants, memory)
    time_interleaved(variants, args.steps, device)
    run = variants[0].built.run
    probe = time_probe(run, cache, device) if run is not None and not args.no_probe else None
    return variants, probe


def report(args: argparse.Namespace, device: torch.device, memory: PeakMemory, variants: list[Variant],
           probe: dict[str, Any] | None, cache_desc: str) -> dict[str, Any]:
    """Print the table, the ours/reference ratio and the probe line; return every figure."""
    rows = [summarise(v, args, device) for v in variants]
    print_results(rows, memory)
    ratio = None
    if rows[1]["name"].startswith("reference"):
        ratio = rows[0]["median_s"] / rows[1]["median_s"]
        print(f"\nours / reference, time per step ({args.objective}, fusion none): {ratio:.3f} "
              f"({'< 1: ours faster' if ratio < 1 else '>= 1: ours slower'})")
    else:
        print(f"\n{args.objective}: lightly has no such objective; ours is timed alone")
    run = variants[0].built.run
    steps_per_epoch = run.steps_per_epoch if run is not None else 0
    epoch_s = steps_per_epoch * rows[0]["median_s"]
    if probe is not None:
        print_probe(probe, epoch_s, steps_per_epoch, rows[0]["median_s"])
    print(load_line(device))
    return {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "device": device_name(device), "cache": cache_desc, "memory_kind": memory.kind, "results": rows,
            "ours_over_reference": ratio, "steps_per_epoch": steps_per_epoch, "epoch_seconds": epoch_s,
            "probe": probe, "probe_over_epoch": None if probe is None else probe["seconds"] / epoch_s}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = pick_device(args.device)
    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory(prefix="bench_msn_") as tmp:
        cache, cache_desc = make_cache(args, Path(tmp))
        print_setup(args, device, bench_config(args, device, "none"), cache_desc)
        variants, probe = run_benchmark(args, device, memory, cache)
        figures = report(args, device, memory, variants, probe, cache_desc)
        for v in variants[:2] if args.profile else []:
            print_profile(v, args.profile, device)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
