"""Projection heads: MSN's head and prototypes (docs/method.md; facebookresearch/msn ``src/deit.py``),
VICReg's expander (lightly ``VICRegProjectionHead``) and DINO's head (facebookresearch/dino ``DINOHead``)."""

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


class Expander(nn.Module):
    """VICReg's 3-layer expander: Linear-BN-ReLU-Linear-BN-ReLU-Linear, (N, in_dim) -> (N, out)
    (paper: 8192-8192-8192; MLVICX: 4096)."""

    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # type: ignore[no-any-return]


class MLPHead(nn.Module):
    """BYOL's projector and predictor: Linear-BN-ReLU-Linear, (N, in_dim) -> (N, out) (Grill et al.: hidden
    4096, out 256; lightly ``BYOLProjectionHead`` / ``BYOLPredictionHead``)."""

    def __init__(self, in_dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                    nn.Linear(hidden, out))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # type: ignore[no-any-return]


class DINOHead(nn.Module):
    """DINO's head: MLP (Linear-GELU-Linear-GELU-Linear to ``bottleneck``), L2 normalisation, then a
    weight-normalised Linear(bottleneck, out) without bias whose norm is fixed to 1 (``norm_last_layer``).

    (N, in_dim) -> (N, out) logits; the loss divides by its temperatures. Paper: hidden 2048,
    bottleneck 256, out 65536 (CXR-EHR-MSN: 1024). No BatchNorm (DINO's ViT default).
    """

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        last = nn.utils.parametrizations.weight_norm(nn.Linear(bottleneck, out, bias=False))
        # DINO fixes the magnitude g = 1 and trains only the direction: a stabler start.
        last.parametrizations.weight.original0.data.fill_(1.0)  # type: ignore[union-attr,operator]
        last.parametrizations.weight.original0.requires_grad_(False)  # type: ignore[union-attr,operator]
        self.last_layer = last

    def forward(self, x: Tensor) -> Tensor:
        z = nn.functional.normalize(self.mlp(x), dim=-1)  # (N, bottleneck)
        return self.last_layer(z)  # type: ignore[no-any-return]


def init_prototypes(k: int, dim: int) -> nn.Parameter:
    """K learnable prototypes (k, dim), uniform in +-1/sqrt(dim) as in MSN.

    They are trained by gradient (unlike lightly's example and CXR-EHR-MSN, which pass ``.data`` to
    the loss and so never train them), get no weight decay and are not part of the EMA target.
    """
    bound = 1.0 / math.sqrt(dim)
    return nn.Parameter(torch.empty(k, dim).uniform_(-bound, bound))


__all__ = ["DINOHead", "Expander", "MLPHead", "ProjectionHead", "init_prototypes"]
