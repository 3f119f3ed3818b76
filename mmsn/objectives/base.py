"""The interface every pretraining objective implements, and the pieces objectives share.

The engine (mmsn.engine) only sees :class:`Objective`: it sets the schedules, runs ``forward`` under
autocast, back-propagates ``LossOutput.loss``, steps the optimiser and calls ``after_step``. What an
objective computes - its views, masks, branches and loss - stays inside its own file
(``mmsn/objectives/<name>.py``); the math of each loss is a pure function in ``mmsn.losses``.
Every objective exports a plain timm state dict of its image-only encoder, so probes and users'
code never import the objective's classes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from mmsn.config import EHRConfig, ModelConfig
from mmsn.models.backbone import ViTEncoder, create_vit, disable_drop_path
from mmsn.models.fusion import EHREmbed, Fusion, build_fusion

M = TypeVar("M", bound=nn.Module)


@dataclass
class Batch:
    """One training batch. ``images`` (B, H, W) uint8 (views are made on the device by the objective);
    ``ehr_input`` (B, w) float, the fusion's input (w = 0 with ``ehr.fusion: none``). ``ehr_targets``
    and ``pseudo_labels`` are for objectives that use the EHR as a target, independently of the input."""

    images: Tensor
    ehr_input: Tensor
    ehr_targets: Tensor | None = None
    pseudo_labels: Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        def move(v: Tensor | None) -> Tensor | None:
            return v.to(device, non_blocking=True) if v is not None else None

        return Batch(self.images.to(device, non_blocking=True), self.ehr_input.to(device, non_blocking=True),
                     move(self.ehr_targets), move(self.pseudo_labels))

    @property
    def ehr(self) -> Tensor | None:
        """The fusion input, or None when the run fuses no EHR."""
        return self.ehr_input if self.ehr_input.shape[-1] else None

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class DataShape:
    """What an objective's layers depend on in the data: the fusion input's width and, for masked record
    modelling, the record fields (class count per categorical field, 0 per continuous one)."""

    ehr_width: int = 0
    record_classes: tuple[int, ...] = ()


class LossOutput(NamedTuple):
    """The scalar loss to back-propagate and its named parts (scalar tensors) for the logs."""

    loss: Tensor
    parts: dict[str, Tensor]


class Objective(nn.Module):
    """A pretraining objective. Subclasses set ``part_names`` (the keys of ``LossOutput.parts``)."""

    part_names: tuple[str, ...] = ()  # class-level: the keys of LossOutput.parts

    def schedules(self, step: int, total_steps: int, steps_per_epoch: int) -> dict[str, float]:
        """Objective-specific schedule values for ``step`` (EMA momentum, temperatures), pure functions
        of the step; the engine logs them and passes them to ``forward`` and the step hooks."""
        return {}

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def before_optimizer_step(self, schedules: Mapping[str, float]) -> None:
        """Called after backward and before clipping (e.g. DINO drops the last layer's gradients)."""

    def after_step(self, schedules: Mapping[str, float]) -> None:
        """Called after the optimiser step (EMA targets move here)."""

    def eval_encoder(self) -> ViTEncoder:  # pragma: no cover - abstract
        """The image-only encoder that is exported to ``encoder.pth`` and probed."""
        raise NotImplementedError

    def image_encoder_state_dict(self) -> dict[str, Tensor]:
        """The eval encoder's timm state dict, e.g. for ``timm.create_model(name, num_classes=0,
        in_chans=1, img_size=..., checkpoint_path=file)``."""
        return {k: v.detach().clone() for k, v in self.eval_encoder().vit.state_dict().items()}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        return decay_groups(self.named_parameters(), weight_decay)


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 no_decay: tuple[str, ...] = ("prototypes",)) -> list[dict[str, Any]]:
    """AdamW groups: decay and no-decay (``"apply_wd": False``, skipped by the weight-decay schedule).

    No decay on biases, norm weights and every 1-D parameter, the position embedding, CLS/register
    tokens and names containing a ``no_decay`` key (MSN's prototypes); parameters without gradient
    (EMA targets) are left out.
    """
    decayed: list[nn.Parameter] = []
    plain: list[nn.Parameter] = []
    for name, p in named:
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(".bias") or any(
            key in name for key in ("pos_embed", "cls_token", "reg_token", *no_decay))
        (plain if skip else decayed).append(p)
    return [{"params": decayed, "weight_decay": weight_decay, "apply_wd": True},
            {"params": plain, "weight_decay": 0.0, "apply_wd": False}]


def frozen_copy(module: M) -> M:
    """EMA target of ``module``: same weights, no gradients, no stochastic depth."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    # As DINO's teacher: the target's prediction should be a deterministic function of its weights.
    disable_drop_path(target)
    return target


@torch.no_grad()
def ema_update(pairs: Iterator[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * online, for every (online, target) pair."""
    for online, target in pairs:
        t_params: list[Tensor] = list(target.parameters())
        a_params: list[Tensor] = [p.detach() for p in online.parameters()]
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, a_params, alpha=1.0 - momentum)


@contextmanager
def full_precision(x: Tensor) -> Iterator[None]:
    """Autocast off for loss math (softmaxes over K prototypes, entropies, covariances are too coarse
    in bf16); the engine runs ``forward`` under autocast, this scopes the exception."""
    with torch.autocast(x.device.type, enabled=False):
        yield


class FusedOnline(Objective):
    """Objectives whose online branch is encoder -> (EHR embedding, fusion): the one place fusion is
    wired, so every objective fuses EHR the same way (``build_online`` makes ``encoder``, ``ehr_embed``,
    ``fusion``; these attribute names are MSN's checkpoint keys)."""

    encoder: ViTEncoder
    ehr_embed: EHREmbed | None
    fusion: Fusion

    def build_online(self, model: ModelConfig, ehr: EHRConfig, img_size: int, ehr_width: int) -> None:
        """``img_size``: the global views' side (the position-embedding grid); ``ehr_width``: EHR columns."""
        self.encoder = ViTEncoder(create_vit(model.backbone, img_size, model.patch_size, model.drop_path))
        self.encoder.vit.set_grad_checkpointing(model.grad_checkpointing)
        embed, fusion = build_fusion(ehr.fusion, self.encoder.embed_dim, ehr_width, ehr.embed_dim, ehr.hidden)
        self.ehr_embed = embed
        self.fusion = fusion

    def embed_ehr(self, ehr: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """EHR row (B, w) -> embedding (B, E); None when the strategy uses no EHR."""
        if self.ehr_embed is None:
            return None
        if ehr is None:
            raise ValueError(f"fusion {type(self.fusion).__name__} needs the EHR batch, got ehr=None")
        return self.ehr_embed(ehr.to(dtype))  # type: ignore[no-any-return]

    def fused_features(self, x: Tensor, e: Tensor | None, keep: Tensor | None = None) -> Tensor:
        """Views (N, 1, s, s) + their EHR embeddings (N, E) or None -> fused CLS features (N, d)."""
        tokens = self.fusion.extra_tokens(e) if e is not None else None
        h = self.encoder(x, keep, tokens)  # (N, d)
        return self.fusion(h, e) if e is not None else h


class EMATargetBranch(FusedOnline):
    """A fused online branch with an EMA copy as its target (MSN's target, DINO's teacher), built, run and
    moved here once. The copy is ``<target_prefix>_encoder`` and ``_head``, plus ``_ehr_embed`` and ``_fusion``
    when the fusion acts in the target too (``fusion.in_target``); those attribute names are the checkpoint
    keys. The online head is ``self.head``."""

    target_prefix: ClassVar[str] = "target"
    head: nn.Module
    _BRANCH: ClassVar[tuple[str, ...]] = ("encoder", "head", "ehr_embed", "fusion")

    def build_target(self) -> None:
        """The EMA copy of the online branch as it is now (call after ``build_online`` and the head)."""
        fuse = self.ehr_embed is not None and self.fusion.in_target
        for name in self._BRANCH:
            online = getattr(self, name)
            setattr(self, f"{self.target_prefix}_{name}",
                    frozen_copy(online) if name in ("encoder", "head") or fuse else None)

    def _target(self, name: str) -> Any:
        return getattr(self, f"{self.target_prefix}_{name}")

    def ema_pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        """(online module, its EMA copy) pairs; parameters outside the branch (MSN's prototypes) have none."""
        for name in self._BRANCH:
            if self._target(name) is not None:
                yield getattr(self, name), self._target(name)

    def update_target(self, momentum: float) -> None:
        """EMA step: target = momentum * target + (1 - momentum) * online, for every branch pair."""
        ema_update(self.ema_pairs(), momentum)

    def target_features(self, x: Tensor, ehr: Tensor | None, repeat: int = 1) -> Tensor:
        """The unmasked target branch before its head: views (R*B, 1, S, S) -> CLS features (R*B, d), fused
        only when ``fusion.in_target``; the views are ``repeat`` (R) view-major blocks of the batch and ``ehr``
        (B, w) is the batch's EHR."""
        embed, fusion = self._target("ehr_embed"), self._target("fusion")
        if embed is None or fusion is None:
            return self._target("encoder")(x)  # type: ignore[no-any-return]
        if ehr is None:
            raise ValueError("the target branch fuses EHR (fusion.in_target) but ehr=None")
        e = embed(ehr.to(x.dtype)).repeat(repeat, 1)  # (R*B, E)
        h = self._target("encoder")(x, None, fusion.extra_tokens(e))
        return fusion(h, e)  # type: ignore[no-any-return]


__all__ = ["Batch", "DataShape", "EMATargetBranch", "FusedOnline", "LossOutput", "Objective", "decay_groups",
           "ema_update", "frozen_copy", "full_precision"]
