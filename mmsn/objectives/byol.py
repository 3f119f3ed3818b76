"""BYOL (Grill et al., NeurIPS 2020, arXiv:2006.07733), the MLVICX paper's baseline, with optional EHR fusion.

Online branch: encoder (+ EHR fusion) -> projector -> predictor; target branch: the EMA of the encoder and
projector (and of the EHR encoder and fusion when ``fusion.in_target``), momentum cosine ``byol.ema_start``
-> ``ema_end``. Two global views (MSN's target/anchor crops) go through both branches; each view's online
prediction regresses the other view's target projection (``mmsn.losses.byol_loss``, 4 + 4 x lightly's
``NegativeCosineSimilarity`` composition). The online encoder is probed, as BYOL evaluates it. The EHR is
fused into both online views (side information for predicting the other view's target).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from mmsn.config import Config, require
from mmsn.losses import byol_loss
from mmsn.models.backbone import ViTEncoder
from mmsn.models.heads import MLPHead
from mmsn.objectives.base import Batch, DataShape, EMATargetBranch, LossOutput, full_precision
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.schedules import cosine
from mmsn.views import MultiCropViews


@dataclass(frozen=True)
class BYOLConfig:
    """BYOL: the target's EMA and the predictor. The projector is model.head_hidden wide and outputs
    model.head_out (paper: 4096 / 256); the predictor maps head_out -> head_out through its own hidden width."""

    ema_start: float = 0.99  # target EMA momentum at step 0 (paper: 0.996 at batch 4096; lightly: 0.99)
    ema_end: float = 1.0  # at the last step (cosine, as the paper)
    predictor_hidden: int = 0  # predictor hidden width; 0 = model.head_hidden (paper: 4096)

    def __post_init__(self) -> None:
        require(0 <= self.ema_start <= self.ema_end <= 1, "byol.ema_start", "need 0 <= ema_start <= ema_end <= 1")
        require(self.predictor_hidden >= 0, "byol.predictor_hidden", "must be >= 0 (0: model.head_hidden)")


class BYOL(EMATargetBranch):
    """Online encoder + projector (``head``) + predictor; EMA target of encoder + projector."""

    part_names: tuple[str, ...] = ()
    target_encoder: ViTEncoder  # the EMA target branch (EMATargetBranch.build_target)
    target_head: MLPHead

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__()
        self.byol: BYOLConfig = cfg.byol
        m = cfg.model
        self.build_online(m, cfg.ehr, cfg.views.size, data.ehr_width)
        self.head = MLPHead(self.encoder.embed_dim, m.head_hidden, m.head_out)  # the projector
        self.predictor = MLPHead(m.head_out, self.byol.predictor_hidden or m.head_hidden, m.head_out)
        self.build_target()
        self.views = MultiCropViews(dataclasses.replace(cfg.views, n_focal=0))

    def schedules(self, step: int, total_steps: int, steps_per_epoch: int) -> dict[str, float]:
        return {"ema": cosine(step, total_steps, self.byol.ema_start, self.byol.ema_end)}

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        v1, v2, _ = self.views(batch.images, generator)
        b = batch.size
        views = torch.cat([v1, v2])  # (2B, 1, S, S), view-major
        e = self.embed_ehr(batch.ehr, v1.dtype)  # (B, E) or None
        # one pass over both views, so the heads' BatchNorm normalises over them together
        p = self.predictor(self.head(self.fused_features(views, e.repeat(2, 1) if e is not None else None)))
        with torch.no_grad():
            z = self.target_head(self.target_features(views, batch.ehr, repeat=2))  # (2B, D)
        with full_precision(p):
            loss = byol_loss(p[:b].float(), z[b:].float(), p[b:].float(), z[:b].float())
        return LossOutput(loss, {})

    def after_step(self, schedules: Mapping[str, float]) -> None:
        self.update_target(schedules["ema"])

    def eval_encoder(self) -> ViTEncoder:
        """The online encoder (BYOL's evaluation)."""
        return self.encoder


SPEC = ObjectiveSpec(name="byol", build=BYOL, section="byol", config=BYOLConfig)

__all__ = ["BYOL", "BYOLConfig", "SPEC"]
