"""Multimodal Masked Siamese Network (the base objective): backbone, EHR fusion, head and prototypes.

Composition follows dino's ``MultiCropWrapper`` and lightly's MSN heads: the anchor branch is
``ViTEncoder`` -> (``EHREmbed``, ``Fusion``) -> ``ProjectionHead``; the target branch is an EMA copy
of the encoder and head (and of the EHR encoder and fusion when ``fusion.in_target``) that never
receives gradients. Prototypes are learnable, shared by both branches and never EMA'd. The loss
is ``mmsn.losses.MSNLoss`` on ``(anchor_out, target_out, prototypes)``; docs/method.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mmsn.config import Config, EHRConfig, MaskConfig, ModelConfig, ViewsConfig, require
from mmsn.losses import MSNLoss
from mmsn.models.backbone import ViTEncoder, random_token_mask
from mmsn.models.heads import ProjectionHead, init_prototypes
from mmsn.objectives.base import Batch, DataShape, EMATargetBranch, LossOutput, full_precision
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.schedules import ema_momentum
from mmsn.views import MultiCropViews


@dataclass(frozen=True)
class MSNConfig:
    """MSN (docs/method.md, The loss): lightly's MSNLoss arguments and the EMA of the target branch."""

    temperature: float = 0.1  # anchor softmax temperature
    target_temperature: float = 0.25  # sharpening temperature of target probabilities
    sinkhorn_iterations: int = 3  # 0 disables Sinkhorn balancing
    me_max_weight: float = 1.0  # weight of the mean-entropy-maximisation term
    ema_start: float = 0.996  # EMA momentum of the target encoder at step 0
    ema_end: float = 1.0  # EMA momentum at the last step (linear)

    def __post_init__(self) -> None:
        require(self.temperature > 0, "msn.temperature", "must be > 0")
        require(self.target_temperature > 0, "msn.target_temperature", "must be > 0")
        require(self.sinkhorn_iterations >= 0, "msn.sinkhorn_iterations", "must be >= 0")
        require(0 <= self.me_max_weight <= 100, "msn.me_max_weight", "must be in [0, 100]")
        require(0 <= self.ema_start <= self.ema_end <= 1, "msn.ema_start", "need 0 <= ema_start <= ema_end <= 1")


class MultimodalMSN(EMATargetBranch):
    """MSN with EHR fused into the anchor branch (CXR-EHR-MSN) or per ``EHRConfig.fusion``.

    Args:
        model, mask, ehr: the typed configs; ``ehr_width``: columns of the EHR row (0 with fusion none);
        img_size: target/anchor side in px, the grid of the position embedding; ``msn``: loss and EMA;
        ``views``: the multi-crop views ``forward`` makes (default: ``ViewsConfig`` at ``img_size``).
    """

    part_names: tuple[str, ...] = ("cross_entropy", "me_max")
    target_encoder: ViTEncoder  # the EMA target branch (EMATargetBranch.build_target)
    target_head: ProjectionHead

    def __init__(self, model: ModelConfig, mask: MaskConfig, ehr: EHRConfig, ehr_width: int,
                 img_size: int, msn: MSNConfig | None = None, views: ViewsConfig | None = None) -> None:
        super().__init__()
        self.mask = mask
        self.msn = msn or MSNConfig()
        self.views = MultiCropViews(views or ViewsConfig(size=img_size, focal_size=img_size // 2))
        self.build_online(model, ehr, img_size, ehr_width)
        dim = self.encoder.embed_dim
        self.head = ProjectionHead(dim, model.head_hidden, model.head_out)
        self.prototypes = init_prototypes(model.n_prototypes, model.head_out)  # (K, D)
        self.loss_fn = MSNLoss(self.msn.temperature, self.msn.sinkhorn_iterations, self.msn.me_max_weight)

        self.build_target()  # prototypes are not part of it: shared by both branches, never EMA'd

    @classmethod
    def from_config(cls, cfg: Config, data: DataShape) -> MultimodalMSN:
        return cls(cfg.model, cfg.mask, cfg.ehr, data.ehr_width, cfg.views.size, cfg.msn, cfg.views)

    def _anchor_features(self, x: Tensor, e: Tensor | None, masked: bool,
                         generator: torch.Generator | None) -> Tensor:
        """Views (N, 1, s, s) + their EHR embeddings (N, E) -> fused CLS features (N, d), masked per config."""
        keep = None
        if masked and self.mask.ratio > 0:
            n = self.encoder.n_patches((x.shape[-2], x.shape[-1]))
            keep = random_token_mask(x.shape[0], n, self.mask.ratio, self.mask.per_sample, x.device,
                                     generator)  # (N, n_keep)
        return self.fused_features(x, e, keep)

    def outputs(self, target: Tensor, anchors: Tensor, focals: Tensor | None, ehr: Tensor | None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """One MSN step's outputs, before the loss.

        target, anchors: (B, 1, S, S); focals: (B*F, 1, s, s) view-major (row v*B+b is image b) or None;
        ehr: (B, w) float or None (fusion none). Returns ``anchor_out`` (B*(1+F), D), view-major with
        the anchor rows first, and ``target_out`` (B, D), head outputs not normalised (the loss does).
        The anchor is masked with ``mask.ratio``; focal views only when ``mask.focal``.
        """
        anchor_feats, target_feats = self.features(target, anchors, focals, ehr, generator)
        # One head pass over all views, so BatchNorm normalises over them together (as MSN does).
        anchor_out = self.head(anchor_feats)  # (B*(1+F), D)
        with torch.no_grad():
            target_out = self.target_head(target_feats)  # (B, D)
        return anchor_out, target_out

    def features(self, target: Tensor, anchors: Tensor, focals: Tensor | None, ehr: Tensor | None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The fused CLS features before the heads: anchor side (B*(1+F), d) view-major, target (B, d)."""
        b = anchors.shape[0]
        e = self.embed_ehr(ehr, self.prototypes.dtype)  # (B, E) or None
        feats = [self._anchor_features(anchors, e, True, generator)]  # [(B, d)]
        if focals is not None and focals.shape[0] > 0:
            n_focal = focals.shape[0] // b
            # The same EHR embedding serves every view of an image (paper); view-major repeat.
            e_focal = e.repeat(n_focal, 1) if e is not None else None  # (B*F, E)
            feats.append(self._anchor_features(focals, e_focal, self.mask.focal, generator))  # (B*F, d)
        with torch.no_grad():
            target_feats = self.target_features(target, ehr)  # (B, d)
        return torch.cat(feats), target_feats

    def schedules(self, step: int, total_steps: int, steps_per_epoch: int) -> dict[str, float]:
        return {"ema": ema_momentum(step, total_steps, self.msn.ema_start, self.msn.ema_end)}

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        """Multi-crop views of the batch (target, anchor, focal), both branches, the MSN loss."""
        target, anchor, focal = self.views(batch.images, generator)
        anchor_out, target_out = self.outputs(target, anchor, focal, batch.ehr, generator)
        return self.msn_loss(anchor_out, target_out)

    def msn_loss(self, anchor_out: Tensor, target_out: Tensor) -> LossOutput:
        with full_precision(anchor_out):
            out = self.loss_fn(anchor_out.float(), target_out.float(), self.prototypes,
                               self.msn.target_temperature)
        return LossOutput(out.loss, {"cross_entropy": out.cross_entropy, "me_max": out.me_max})

    def after_step(self, schedules: Mapping[str, float]) -> None:
        self.update_target(schedules["ema"])

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Evaluation features: the target encoder's CLS (B, d) of images (B, 1, H, W); no EHR, head or mask."""
        return self.target_encoder(x)  # type: ignore[no-any-return]

    def eval_encoder(self) -> ViTEncoder:
        """The EMA target encoder (MSN evaluates the target, docs/method.md)."""
        return self.target_encoder


SPEC = ObjectiveSpec(name="msn", build=MultimodalMSN.from_config, section="msn", config=MSNConfig)

__all__ = ["SPEC", "MSNConfig", "MultimodalMSN"]
