"""Pixel normalisation shared by pretraining and evaluation.

CXR-EHR-MSN normalised differently in pretraining and in the linear probe (docs/data.md, Pixels);
here one function serves both, so the encoder always sees the same input distribution.
"""

from __future__ import annotations

import torch

# Fixed constants rather than dataset statistics: caches of different datasets then feed an encoder
# the same scale, and a checkpoint needs no per-dataset normaliser to be reused.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.25


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W) or (B, 1, H, W) grey -> float32 (B, 1, H, W) normalised encoder input."""
    x = images if images.dim() == 4 else images.unsqueeze(1)
    return (x.float() / 255.0 - PIXEL_MEAN) / PIXEL_STD
