"""DINO (Caron et al., ICCV 2021, arXiv:2104.14294), the CXR-EHR-MSN paper's self-distillation baseline.

Student = online encoder + ``DINOHead``; teacher = EMA of both (momentum cosine ``dino.ema_start`` ->
``ema_end``), image-only unless the fusion has ``in_target``. Multi-crop with MSN's views: the target
and anchor crops are DINO's two global views (teacher and student), the focal crops its local views
(student only). The teacher output is centred (EMA of its batch mean, all-reduced under DDP) and
sharpened by a temperature warmed up from ``warmup_teacher_temp``; the loss is ``mmsn.losses.dino_loss``
(equal to ``lightly.loss.DINOLoss``). The student's EHR fusion acts on every student view.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from mmsn.config import Config, require
from mmsn.losses import dino_loss, teacher_temperature, update_center
from mmsn.models.backbone import ViTEncoder
from mmsn.models.heads import DINOHead
from mmsn.objectives.base import Batch, DataShape, EMATargetBranch, LossOutput, full_precision
from mmsn.objectives.spec import ObjectiveSpec
from mmsn.schedules import cosine
from mmsn.views import MultiCropViews


@dataclass(frozen=True)
class DINOConfig:
    """DINO (Caron et al. 2021), the CXR-EHR-MSN baseline: teacher = EMA of the student, centring,
    teacher-temperature warm-up, multi-crop with MSN's views (2 global to the teacher, all to the student).
    The head is model.head_hidden wide, bottleneck model.head_out, and model.n_prototypes outputs."""

    teacher_temp: float = 0.04  # teacher softmax temperature after warm-up (lightly: 0.04)
    warmup_teacher_temp: float = 0.04  # teacher temperature at epoch 0 (DINO: 0.04)
    warmup_teacher_temp_epochs: float = 0.0  # linear warm-up length (CXR-EHR-MSN: 5; DINO: 30)
    student_temp: float = 0.1  # student softmax temperature
    center_momentum: float = 0.9  # EMA of the teacher-output centre
    ema_start: float = 0.996  # teacher EMA momentum at step 0
    ema_end: float = 1.0  # at the last step (cosine, as DINO)
    freeze_last_layer_epochs: float = 0.0  # epochs without gradient steps on the last head layer (DINO: 1)

    def __post_init__(self) -> None:
        for key in ("teacher_temp", "warmup_teacher_temp", "student_temp"):
            require(0 < getattr(self, key) <= 10, f"dino.{key}", "must be in (0, 10]")
        require(self.warmup_teacher_temp_epochs >= 0, "dino.warmup_teacher_temp_epochs", "must be >= 0")
        require(0 <= self.center_momentum < 1, "dino.center_momentum", "must be in [0, 1)")
        require(0 <= self.ema_start <= self.ema_end <= 1, "dino.ema_start", "need 0 <= ema_start <= ema_end <= 1")
        require(self.freeze_last_layer_epochs >= 0, "dino.freeze_last_layer_epochs", "must be >= 0")


class DINO(EMATargetBranch):
    """Self-distillation with no labels, on 2 global + ``views.n_focal`` local crops."""

    target_prefix: ClassVar[str] = "teacher"  # teacher_encoder, teacher_head, ...
    head: DINOHead
    teacher_encoder: ViTEncoder
    teacher_head: DINOHead

    part_names = ("teacher_entropy",)
    center: Tensor  # (1, K) buffer: EMA of the teacher's batch-mean output

    def __init__(self, cfg: Config, data: DataShape) -> None:
        super().__init__()
        self.dino: DINOConfig = cfg.dino
        self.build_online(cfg.model, cfg.ehr, cfg.views.size, data.ehr_width)
        m = cfg.model
        self.head = DINOHead(self.encoder.embed_dim, m.head_hidden, m.head_out, m.n_prototypes)
        self.build_target()
        self.register_buffer("center", torch.zeros(1, m.n_prototypes))  # (1, K), saved with the checkpoint
        self.views = MultiCropViews(cfg.views)

    def schedules(self, step: int, total_steps: int, steps_per_epoch: int) -> dict[str, float]:
        d, epoch = self.dino, step / max(steps_per_epoch, 1)
        return {"ema": cosine(step, total_steps, d.ema_start, d.ema_end),
                "teacher_temp": teacher_temperature(epoch, d.warmup_teacher_temp, d.teacher_temp,
                                                    d.warmup_teacher_temp_epochs),
                "epoch": epoch}

    def _teacher(self, views: Tensor, ehr: Tensor | None) -> Tensor:
        """Global views (2B, 1, S, S) -> teacher logits (2B, K), no gradient."""
        return self.teacher_head(self.target_features(views, ehr, repeat=2))  # type: ignore[no-any-return]

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
        self.update_target(schedules["ema"])

    def eval_encoder(self) -> ViTEncoder:
        """The teacher encoder (DINO and CXR-EHR-MSN evaluate the teacher)."""
        return self.teacher_encoder


SPEC = ObjectiveSpec(name="dino", build=DINO, section="dino", config=DINOConfig)

__all__ = ["DINO", "DINOConfig", "SPEC"]
