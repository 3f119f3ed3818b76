"""DINO (Caron et al., ICCV 2021, arXiv:2104.14294): ``dino_loss``, the centering EMA
``update_center`` and the teacher-temperature warm-up ``teacher_temperature``, as pure functions."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mmsn.losses.distributed import _world_size


def _check_center(center: Tensor, teacher_out: Tensor) -> None:
    """Raise ValueError unless teacher_out is (T, B, K) and center (K,) or (1, K)."""
    if teacher_out.dim() != 3 or center.shape not in ((teacher_out.shape[-1],), (1, teacher_out.shape[-1])):
        raise ValueError(f"teacher_out {tuple(teacher_out.shape)} must be (T, B, K) and center "
                         f"{tuple(center.shape)} (K,) or (1, K)")


def _check_dino_args(teacher_out: Tensor, student_out: Tensor, center: Tensor, teacher_temp: float,
                     student_temp: float) -> None:
    """Raise ValueError on temperatures <= 0 or shapes other than (T, B, K), (S >= T, B, K), (1, K)."""
    for name, temperature in (("teacher_temp", teacher_temp), ("student_temp", student_temp)):
        if not temperature > 0:
            raise ValueError(f"{name} must be > 0, got {temperature}")
    _check_center(center, teacher_out)
    t_views, batch = teacher_out.shape[:2]
    # S >= 2 so that at least one (teacher view, other student view) pair exists.
    if (student_out.dim() != 3 or student_out.shape[1:] != teacher_out.shape[1:] or batch == 0
            or not 1 <= t_views <= student_out.shape[0] or student_out.shape[0] < 2):
        raise ValueError(f"student_out {tuple(student_out.shape)} must be (S, B, K) with S >= T and S >= 2 "
                         f"for teacher_out {tuple(teacher_out.shape)} (T, B, K)")


def dino_loss(teacher_out: Tensor, student_out: Tensor, center: Tensor, teacher_temp: float,
              student_temp: float = 0.1) -> Tensor:
    """DINO loss (section 3.1, Algorithm 1): teacher (T, B, K), student (S, B, K), center (K,) or (1, K)
    -> scalar.

    The mean over the T*S - T pairs (teacher view i, student view j != i; the first T student views
    are the teacher's global views) of the batch-mean cross-entropy
    ``H(softmax((t_i - center) / teacher_temp), log_softmax(s_j / student_temp))``. The teacher
    targets get no gradient. Equals ``lightly.loss.DINOLoss`` with the same center and temperature,
    which uses the center *before* this step's update: call ``update_center`` afterwards.
    Half precision is computed in float32.
    """
    _check_dino_args(teacher_out, student_out, center, teacher_temp, student_temp)
    dtype = torch.promote_types(torch.promote_types(teacher_out.dtype, student_out.dtype), torch.float32)
    with torch.no_grad():
        centered = teacher_out.to(dtype) - center.to(dtype).reshape(1, 1, -1)  # (T, B, K)
        targets = F.softmax(centered / teacher_temp, dim=-1)
    log_probs = F.log_softmax(student_out.to(dtype) / student_temp, dim=-1)  # (S, B, K)
    # (T, S): cross-entropy of every teacher view to every student view, averaged over the batch.
    cross_entropy = -torch.einsum("tbk,sbk->ts", targets, log_probs) / teacher_out.shape[1]
    same_view = torch.eye(*cross_entropy.shape, dtype=torch.bool, device=cross_entropy.device)
    return cross_entropy[~same_view].mean()


@torch.no_grad()
def update_center(center: Tensor, teacher_out: Tensor, momentum: float, gather_distributed: bool = False) -> Tensor:
    """DINO's centering EMA: ``momentum * center + (1 - momentum) * mean_{views, batch}(teacher_out)``.

    center (K,) or (1, K), teacher_out (T, B, K) -> new center of the shape and dtype of ``center``;
    the argument is not modified. Under torch.distributed with ``gather_distributed`` the batch mean
    is averaged over workers (equal per-worker batches), as DINO's ``update_center`` and lightly's
    ``center_mean``. DINO and lightly update after computing the loss with the old center.
    """
    _check_center(center, teacher_out)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    dtype = torch.promote_types(torch.promote_types(teacher_out.dtype, center.dtype), torch.float32)
    batch_center = teacher_out.detach().to(dtype).mean(dim=(0, 1))  # (K,)
    world_size = _world_size(gather_distributed)
    if world_size > 1:
        dist.all_reduce(batch_center)
        batch_center = batch_center / world_size
    new_center = center.detach().to(dtype) * momentum + batch_center.reshape(center.shape) * (1.0 - momentum)
    return new_center.to(center.dtype)


def teacher_temperature(epoch: float, warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: float) -> float:
    """DINO's teacher temperature at ``epoch``: linear from ``warmup_teacher_temp``, then ``teacher_temp``.

    As DINO's ``np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs)`` followed by the
    constant, which lightly's ``DINOLoss(epoch=...)`` indexes: at an integer epoch e < W it is the
    e-th of W evenly spaced values, so ``teacher_temp`` is reached at epoch W - 1 (W = 1 gives
    ``warmup_teacher_temp`` for epoch 0, W = 0 no warm-up). Fractional epochs (per-step schedules)
    follow the same line. A pure function of the epoch, so resuming is indexing.
    """
    if not epoch >= 0 or not warmup_epochs >= 0:
        raise ValueError(f"epoch ({epoch}) and warmup_epochs ({warmup_epochs}) must be >= 0")
    if not warmup_teacher_temp > 0 or not teacher_temp > 0:
        raise ValueError(f"warmup_teacher_temp ({warmup_teacher_temp}) and teacher_temp ({teacher_temp}) must be > 0")
    if epoch >= warmup_epochs:
        return teacher_temp
    if warmup_epochs <= 1:
        return warmup_teacher_temp  # a one-point linspace holds only its start
    progress = min(epoch / (warmup_epochs - 1), 1.0)
    return warmup_teacher_temp + progress * (teacher_temp - warmup_teacher_temp)


__all__ = ["dino_loss", "teacher_temperature", "update_center"]
