"""MLVICX (azad6629/mlvicx): VICReg at two levels, L = VIC(global) + lambda * VIC(multi-level).

How the paper's ResNet maps to a ViT, and where we differ (docs/objectives.md, MLVICX):
- Paper: the feature maps of 5 ResNet-18 stages (after CBAM attention) are resized to 64 x 64,
  1x1-convolved to 512 channels, summed, pooled to 4 x 4, flattened and expanded by a 3-layer MLP.
- Here: the "stages" are ViT blocks at ``mlvicx.levels`` fractions of the depth (default 1/4, 1/2,
  3/4, 1: blocks 2, 5, 8, 11 of a 12-block ViT). A ViT keeps one token grid at every depth, so no
  resizing is needed; each level's tokens are layer-normed and linearly projected to
  ``mlvicx.level_dim`` (the 1x1 conv), the levels are summed and mean-pooled over the patch tokens
  (global pooling instead of 4 x 4: the projection is linear, so the sum commutes with the pooling),
  then expanded. No CBAM attention blocks. The projections are built in ``__init__`` (the
  reference creates them lazily inside ``forward``, after the optimiser, so they never train).
- Global level: the final CLS feature (fused with the EHR like VICReg's first view) -> expander.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from mmsn.config import Config, require
from mmsn.models.heads import Expander
from mmsn.objectives.base import Batch, DataShape, LossOutput
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.objectives.vicreg import VICReg, VICRegConfig


@dataclass(frozen=True)
class MLVICXConfig(VICRegConfig):
    """MLVICX (azad6629/mlvicx): VIC(global) + multi_level_weight * VIC(multi-level). The levels are
    ViT blocks given as fractions of the depth (the paper's ResNet stages); see mmsn/objectives/mlvicx.py."""

    _section: ClassVar[str] = "mlvicx"

    multi_level_weight: float = 1.0  # lambda of the multi-level term (paper code: 1)
    levels: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)  # blocks at these fractions of the depth
    level_dim: int = 0  # width of each level's projection before the sum; 0 = the backbone width

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 <= self.multi_level_weight <= 100, "mlvicx.multi_level_weight", "must be in [0, 100]")
        require(len(self.levels) > 0 and all(0 < f <= 1 for f in self.levels), "mlvicx.levels",
                 "fractions of the depth in (0, 1], at least one")
        require(self.level_dim >= 0, "mlvicx.level_dim", "must be >= 0")


def level_blocks(depth: int, fractions: tuple[float, ...]) -> list[int]:
    """Block indices at ``fractions`` of ``depth``: ceil(f * depth) - 1, deduplicated, sorted.
    ``level_blocks(12, (0.25, 0.5, 0.75, 1))`` -> [2, 5, 8, 11]; a 2-block ViT gets [0, 1]."""
    return sorted({max(0, math.ceil(f * depth - 1e-9) - 1) for f in fractions})


class MLVICX(VICReg):
    """VICReg on the global CLS features plus VICReg on summed multi-level block features."""

    part_names = ("global", "multi_level", "invariance", "variance", "covariance")

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__(cfg, data)
        self.vic_cfg = cfg.mlvicx
        self.multi_level_weight = cfg.mlvicx.multi_level_weight
        dim = self.encoder.embed_dim
        width = cfg.mlvicx.level_dim or dim
        self.blocks = level_blocks(self.encoder.depth, cfg.mlvicx.levels)
        self.level_proj = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, width)) for _ in self.blocks)
        self.level_expander = Expander(width, cfg.model.head_hidden, cfg.model.head_out)

    def features(self, x: Tensor, e: Tensor | None) -> tuple[Tensor, Tensor]:
        """View (B, 1, S, S) -> (fused CLS (B, d), summed multi-level feature (B, width))."""
        extra = self.fusion.extra_tokens(e) if e is not None else None
        final, levels = self.encoder.forward_tokens(x, None, extra, self.blocks)
        h = self.fusion(final[:, 0], e) if e is not None else final[:, 0]
        n_patches = self.encoder.n_patches((x.shape[-2], x.shape[-1]))
        start = self.encoder.n_prefix_tokens
        # Patch tokens only: the CLS and any fusion token are not part of the image's feature map.
        pooled = [proj(t[:, start:start + n_patches]).mean(dim=1) for proj, t in zip(self.level_proj, levels)]
        return h, torch.stack(pooled).sum(dim=0)

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        a, b, e = self.two_views(batch, generator)
        h_a, m_a = self.features(a, e)
        h_b, m_b = self.features(b, e if self.fusion.in_target else None)
        global_loss, parts = self.vic_loss(self.expander(h_a), self.expander(h_b))
        level_loss, _ = self.vic_loss(self.level_expander(m_a), self.level_expander(m_b))
        loss = global_loss + self.multi_level_weight * level_loss
        return LossOutput(loss, {"global": global_loss, "multi_level": level_loss, **parts})


SPEC = ObjectiveSpec(name="mlvicx", build=MLVICX, section="mlvicx", config=MLVICXConfig)

__all__ = ["SPEC", "MLVICXConfig", "MLVICX", "level_blocks"]
