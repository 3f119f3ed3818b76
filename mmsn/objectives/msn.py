"""Multimodal Masked Siamese Network (the base objective): backbone, EHR fusion, head and prototypes.

Composition follows dino's ``MultiCropWrapper`` and lightly's MSN heads: the anchor branch is
``ViTEncoder`` -> (``EHREmbed``, ``Fusion``) -> ``ProjectionHead``; the target branch is an EMA copy
of the encoder and head (and of the EHR encoder and fusion when ``fusion.in_target``) that never
receives gradients. Prototypes are learnable, shared by both branches and never EMA'd. The loss
is ``mmsn.losses.MSNLoss`` on ``(anchor_out, target_out, prototypes)``; RESEARCH.md section 1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from mmsn.config import Config, EHRConfig, MaskConfig, ModelConfig, MSNConfig, ViewsConfig
from mmsn.losses import MSNLoss
from mmsn.models.backbone import ViTEncoder, random_token_mask
from mmsn.models.heads import ProjectionHead, init_prototypes
from mmsn.objectives.base import Batch, DataShape, FusedOnline, LossOutput, ema_update, frozen_copy, full_precision
from mmsn.schedules import ema_momentum
from mmsn.views import MultiCropViews


class MultimodalMSN(FusedOnline):
    """MSN with EHR fused into the anchor branch (CXR-EHR-MSN) or per ``EHRConfig.fusion``.

    Args:
        model, mask, ehr: the typed configs; ``ehr_width``: columns of the EHR row (0 with fusion none);
        img_size: target/anchor side in px, the grid of the position embedding; ``msn``: loss and EMA;
        ``views``: the multi-crop views ``forward`` makes (default: ``ViewsConfig`` at ``img_size``).
    """

    part_names: tuple[str, ...] = ("cross_entropy", "me_max")

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

        self.target_encoder = frozen_copy(self.encoder)
        self.target_head = frozen_copy(self.head)
        fuse_target = self.ehr_embed is not None and self.fusion.in_target
        self.target_ehr_embed = frozen_copy(self.ehr_embed) if fuse_target and self.ehr_embed is not None else None
        self.target_fusion = frozen_copy(self.fusion) if fuse_target else None

    @classmethod
    def from_config(cls, cfg: Config, data: DataShape) -> MultimodalMSN:
        return cls(cfg.model, cfg.mask, cfg.ehr, data.ehr_width, cfg.views.size, cfg.msn, cfg.views)

    def _pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        """(anchor module, its EMA target) pairs; prototypes are deliberately absent."""
        yield self.encoder, self.target_encoder
        yield self.head, self.target_head
        if self.target_ehr_embed is not None and self.ehr_embed is not None:
            yield self.ehr_embed, self.target_ehr_embed
        if self.target_fusion is not None:
            yield self.fusion, self.target_fusion

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
            target_feats = self._target_features(target, ehr)  # (B, d)
        return torch.cat(feats), target_feats

    def _target_features(self, x: Tensor, ehr: Tensor | None) -> Tensor:
        """Unmasked EMA branch: (B, 1, S, S) -> (B, d); fuses EHR only when ``fusion.in_target``."""
        if self.target_ehr_embed is None or self.target_fusion is None:
            return self.target_encoder(x)  # type: ignore[no-any-return]
        if ehr is None:
            raise ValueError("the target branch fuses EHR (fusion.in_target) but ehr=None")
        e = self.target_ehr_embed(ehr.to(self.prototypes.dtype))
        h = self.target_encoder(x, None, self.target_fusion.extra_tokens(e))
        return self.target_fusion(h, e)  # type: ignore[no-any-return]

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

    def update_target(self, momentum: float) -> None:
        """EMA step: target = momentum * target + (1 - momentum) * anchor, for every branch pair."""
        ema_update(self._pairs(), momentum)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Evaluation features: the target encoder's CLS (B, d) of images (B, 1, H, W); no EHR, head or mask."""
        return self.target_encoder(x)  # type: ignore[no-any-return]

    def eval_encoder(self) -> ViTEncoder:
        """The EMA target encoder (MSN evaluates the target, RESEARCH.md section 2)."""
        return self.target_encoder


__all__ = ["MultimodalMSN"]
