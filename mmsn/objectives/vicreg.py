"""VICReg (Bardes et al., ICLR 2022, arXiv:2105.04906) on two global views, with optional EHR fusion.

Both views go through the same online encoder and a 3-layer expander; the loss is
``mmsn.losses.vicreg_loss`` (equal to ``lightly.loss.VICRegLoss``). There is no EMA target. EHR fusion
follows CXR-EHR-MSN's asymmetry: the first view ("anchor") is fused, the second stays image-only,
so the EHR is side information for matching the other view, not a shared shortcut that makes the two
embeddings equal; a fusion with ``in_target`` (concat_both) fuses both views.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mmsn.config import Config, require
from mmsn.losses import vicreg_loss
from mmsn.models.backbone import ViTEncoder
from mmsn.models.heads import Expander
from mmsn.objectives.base import Batch, DataShape, FusedOnline, LossOutput, full_precision
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.views import MultiCropViews


@dataclass(frozen=True)
class VICRegConfig:
    """VICReg (Bardes et al. 2022) on two views; the expander is model.head_hidden wide, 3 layers, and
    outputs model.head_out (paper: 8192 / 8192)."""

    sim_weight: float = 25.0  # invariance (MSE) weight (paper: 25)
    var_weight: float = 25.0  # variance hinge weight (paper: 25)
    cov_weight: float = 1.0  # covariance weight (paper: 1)
    eps: float = 1e-4  # inside the sqrt of the variance

    _section: ClassVar[str] = "vicreg"  # where error messages point (MLVICX reuses these checks)

    def __post_init__(self) -> None:
        prefix = self._section
        for key in ("sim_weight", "var_weight", "cov_weight"):
            require(0 <= getattr(self, key) <= 1000, f"{prefix}.{key}", "must be in [0, 1000]")
        require(0 < self.eps < 1, f"{prefix}.eps", "must be in (0, 1)")


class VICReg(FusedOnline):
    """Two views (MSN's target/anchor crops: ``views.size``, ``views.global_scale``), one encoder."""

    part_names: tuple[str, ...] = ("invariance", "variance", "covariance")

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__()
        self.vic_cfg: VICRegConfig = cfg.vicreg
        self.build_online(cfg.model, cfg.ehr, cfg.views.size, data.ehr_width)
        self.expander = Expander(self.encoder.embed_dim, cfg.model.head_hidden, cfg.model.head_out)
        self.views = MultiCropViews(dataclasses.replace(cfg.views, n_focal=0))

    def vic_loss(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The VIC loss of two (B, D) embeddings in float32, and its unweighted parts."""
        c = self.vic_cfg
        with full_precision(z_a):
            out = vicreg_loss(z_a.float(), z_b.float(), c.sim_weight, c.var_weight, c.cov_weight, c.eps,
                              gather_distributed=True)
        return out.loss, {"invariance": out.invariance, "variance": out.variance, "covariance": out.covariance}

    def two_views(self, batch: Batch, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor | None]:
        """(view a (B, 1, S, S), view b (B, 1, S, S), EHR embedding (B, E) or None)."""
        a, b, _ = self.views(batch.images, generator)
        return a, b, self.embed_ehr(batch.ehr, a.dtype)

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        a, b, e = self.two_views(batch, generator)
        h_a = self.fused_features(a, e)  # (B, d)
        h_b = self.fused_features(b, e if self.fusion.in_target else None)  # (B, d)
        # The expander runs per view, so its BatchNorm normalises each branch on its own (as VICReg).
        loss, parts = self.vic_loss(self.expander(h_a), self.expander(h_b))
        return LossOutput(loss, parts)

    def eval_encoder(self) -> ViTEncoder:
        """VICReg has no target: the online encoder is the representation."""
        return self.encoder


SPEC = ObjectiveSpec(name="vicreg", build=VICReg, section="vicreg", config=VICRegConfig)

__all__ = ["SPEC", "VICRegConfig", "VICReg"]
