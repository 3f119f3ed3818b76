"""DINO (Caron et al., ICCV 2021, arXiv:2104.14294), the CXR-EHR-MSN paper's self-distillation baseline.

Student = online encoder + ``DINOHead``; teacher = EMA of both (momentum cosine ``dino.ema_start`` ->
``ema_end``), image-only unless the fusion has ``in_target``. Multi-crop with MSN's views: the target
and anchor crops are DINO's two global views (teacher and student), the focal crops its local views
(student only). The teacher output is centred (EMA of its batch mean, all-reduced under DDP) and
sharpened by a temperature warmed up from ``warmup_teacher_temp``; the loss is ``mmsn.losses.dino_loss``
(equal to ``lightly.loss.DINOLoss``). The student's EHR fusion acts on every student view.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from mmsn.config import Config, DINOConfig
from mmsn.losses import dino_loss, teacher_temperature, update_center
from mmsn.models.backbone import ViTEncoder
from mmsn.models.heads import DINOHead
from mmsn.objectives.base import Batch, DataShape, FusedOnline, LossOutput, ema_update, frozen_copy, full_precision
from mmsn.schedules import cosine
from mmsn.views import MultiCropViews


class DINO(FusedOnline):
    """Self-distillation with no labels, on 2 global + ``views.n_focal`` local crops."""

    part_names = ("teacher_entropy",)
    center: Tensor  # (1, K) buffer: EMA of the teacher's batch-mean output

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__()
        self.dino: DINOConfig = cfg.dino
        self.build_online(cfg.model, cfg.ehr, cfg.views.size, data.ehr_width)
        m = cfg.model
        self.head = DINOHead(self.encoder.embed_dim, m.head_hidden, m.head_out, m.n_prototypes)
        self.teacher_encoder = frozen_copy(self.encoder)
        self.teacher_head = frozen_copy(self.head)
        fuse_teacher = self.ehr_embed is not None and self.fusion.in_target
        self.teacher_ehr_embed = frozen_copy(self.ehr_embed) if fuse_teacher and self.ehr_embed is not None else None
        self.teacher_fusion = frozen_copy(self.fusion) if fuse_teacher else None
        self.register_buffer("center", torch.zeros(1, m.n_prototypes))  # (1, K), saved with the checkpoint
        self.views = MultiCropViews(cfg.views)

    def _pairs(self) -> Iterator[tuple[nn.Module, nn.Module]]:
        yield self.encoder, self.teacher_encoder
        yield self.head, self.teacher_head
        if self.teacher_ehr_embed is not None and self.ehr_embed is not None:
            yield self.ehr_embed, self.teacher_ehr_embed
        if self.teacher_fusion is not None:
            yield self.fusion, self.teacher_fusion

    def schedules(self, step: int, total_steps: int, steps_per_epoch: int) -> dict[str, float]:
        d, epoch = self.dino, step / max(steps_per_epoch, 1)
        return {"ema": cosine(step, total_steps, d.ema_start, d.ema_end),
                "teacher_temp": teacher_temperature(epoch, d.warmup_teacher_temp, d.teacher_temp,
                                                    d.warmup_teacher_temp_epochs),
                "epoch": epoch}

    def _teacher(self, views: Tensor, ehr: Tensor | None) -> Tensor:
        """Global views (2B, 1, S, S) -> teacher logits (2B, K), no gradient."""
        if self.teacher_ehr_embed is None or self.teacher_fusion is None:
            return self.teacher_head(self.teacher_encoder(views))  # type: ignore[no-any-return]
        assert ehr is not None, "the teacher fuses EHR (fusion.in_target) but the batch has none"
        e = self.teacher_ehr_embed(ehr.to(views.dtype)).repeat(2, 1)
        h = self.teacher_encoder(views, None, self.teacher_fusion.extra_tokens(e))
        return self.teacher_head(self.teacher_fusion(h, e))  # type: ignore[no-any-return]

    def forward(self, batch: Batch, generator: torch.Generator | None,
                schedules: Mapping[str, float]) -> LossOutput:
        g1, g2, local = self.views(batch.images, generator)
        b = batch.size
        globals_ = torch.cat([g1, g2])  # (2B, 1, S, S), view-major
        e = self.embed_ehr(batch.ehr, g1.dtype)  # (B, E) or None
        feats = [self.fused_features(globals_, e.repeat(2, 1) if e is not None else None)]  # [(2B, d)]
        if local is not None:
            feats.append(self.fused_features(local, e.repeat(local.shape[0] // b, 1) if e is not None else None))
        student = self.head(torch.cat(feats))  # (S*B, K)
        with torch.no_grad():
            teacher = self._teacher(globals_, batch.ehr)  # (2B, K)
        with full_precision(student):
            t = teacher.float().view(2, b, -1)  # (T=2, B, K)
            s = student.float().view(-1, b, student.shape[-1])  # (S, B, K)
            loss = dino_loss(t, s, self.center, schedules["teacher_temp"], self.dino.student_temp)
            with torch.no_grad():
                probs = torch.softmax((t - self.center) / schedules["teacher_temp"], dim=-1)
                entropy = -(torch.special.xlogy(probs, probs)).sum(-1).mean()
                # As DINO: the centre moves after the loss used it, by the (all-reduced) teacher batch mean.
                self.center.copy_(update_center(self.center, t, self.dino.center_momentum, gather_distributed=True))
        return LossOutput(loss, {"teacher_entropy": entropy})

    def before_optimizer_step(self, schedules: Mapping[str, float]) -> None:
        """DINO freezes the last head layer for the first epochs: its gradients are dropped, so AdamW skips it."""
        if schedules["epoch"] < self.dino.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None

    def after_step(self, schedules: Mapping[str, float]) -> None:
        ema_update(self._pairs(), schedules["ema"])

    def eval_encoder(self) -> ViTEncoder:
        """The teacher encoder (DINO and CXR-EHR-MSN evaluate the teacher)."""
        return self.teacher_encoder


__all__ = ["DINO"]
