"""MSN projection head and prototypes (RESEARCH.md section 1; facebookresearch/msn ``src/deit.py``)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """MSN's 3-layer head: Linear-BN-GELU-Linear-BN-GELU-Linear, (N, in_dim) -> (N, out).

    Paper sizes: in_dim = d, hidden 2048, out 256. BatchNorm needs at least 2 rows in training mode;
    the model feeds all anchor-side views of a batch through the head at once (as MSN does).
    """

    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.out = in_dim, hidden, out
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.GELU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_dim) -> (N, out), not normalised (the loss L2-normalises)."""
        return self.layers(x)  # type: ignore[no-any-return]


def init_prototypes(k: int, dim: int) -> nn.Parameter:
    """K learnable prototypes (k, dim), uniform in +-1/sqrt(dim) as in MSN.

    They are trained by gradient (unlike lightly's example and CXR-EHR-MSN, which pass ``.data`` to
    the loss and so never train them), get no weight decay and are not part of the EMA target.
    """
    bound = 1.0 / math.sqrt(dim)
    return nn.Parameter(torch.empty(k, dim).uniform_(-bound, bound))


__all__ = ["ProjectionHead", "init_prototypes"]
