"""Schedules as pure functions of the global step, so resuming is indexing, not replaying.

Follows dino ``utils.cosine_scheduler`` / nanoGPT ``get_lr``; values of the original MSN in
docs/method.md, Optimisation (lr warm-up then cosine, weight-decay cosine, EMA momentum linear).
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total``); clamped outside."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))


def learning_rate(step: int, total: int, warmup: int, start_lr: float, peak_lr: float, final_lr: float) -> float:
    """Linear warm-up ``start_lr -> peak_lr`` over ``warmup`` steps, then cosine to ``final_lr``."""
    if step < warmup:
        return start_lr + (peak_lr - start_lr) * step / warmup
    return cosine(step - warmup, total - warmup, peak_lr, final_lr)


def ema_momentum(step: int, total: int, start: float, end: float) -> float:
    """Target-encoder EMA momentum, linear from ``start`` to ``end`` over the run."""
    if total <= 0:
        return end
    return start + (end - start) * min(max(step / total, 0.0), 1.0)
