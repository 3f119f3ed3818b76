"""VICReg (Bardes et al., ICLR 2022, arXiv:2105.04906): invariance, variance and covariance terms
and their weighted sum ``vicreg_loss``, a pure function equal to ``lightly.loss.VICRegLoss``."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mmsn.losses.distributed import _GatherLayer, _world_size


def invariance_term(z_a: Tensor, z_b: Tensor) -> Tensor:
    """VICReg invariance s(Z, Z') (eq. 5): mean squared difference over all N*D entries,
    (N, D), (N, D) -> scalar. 0 when the two branches agree."""
    return F.mse_loss(z_a, z_b)


def variance_term(x: Tensor, eps: float) -> Tensor:
    """VICReg variance v(Z) (eq. 1, gamma = 1): mean over D of ``relu(1 - sqrt(Var_N + eps))``,
    (N, D) -> scalar, with the unbiased variance over the batch. 0 once every dimension's
    regularised std reaches 1; ``1 - sqrt(eps)`` for a collapsed (constant) embedding."""
    std = torch.sqrt(x.var(dim=0) + eps)  # (D,)
    return F.relu(1.0 - std).mean()


def covariance_term(x: Tensor) -> Tensor:
    """VICReg covariance c(Z) (eq. 3-4): sum of squared off-diagonal entries of the (D, D) batch
    covariance (unbiased, N - 1) divided by D, (N, D) -> scalar. 0 for decorrelated dimensions."""
    x = x - x.mean(dim=0)
    cov = x.T @ x / (x.shape[0] - 1)  # (D, D)
    diagonal = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    # Masking (not subtracting the diagonal's squares) keeps the small off-diagonal sum exact.
    return cov.masked_fill(diagonal, 0.0).pow(2).sum() / x.shape[1]


class VICRegLossOutput(NamedTuple):
    """Scalar tensors: ``loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance``.

    ``variance`` is the mean of the two branches' terms and ``covariance`` their sum, as the
    official code and lightly (so the paper's default weights 25/25/1 keep their meaning)."""

    loss: Tensor
    invariance: Tensor
    variance: Tensor
    covariance: Tensor


def _check_vicreg_args(z_a: Tensor, z_b: Tensor, weights: dict[str, float], eps: float) -> None:
    """Raise ValueError on negative weights, ``eps <= 0`` or embeddings that are not equal (N >= 2, D)."""
    for name, weight in weights.items():
        if not weight >= 0:  # also rejects NaN
            raise ValueError(f"{name} must be >= 0, got {weight}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if z_a.dim() != 2 or z_a.shape != z_b.shape or z_a.shape[0] < 2:
        raise ValueError(f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} must both be (N, D) with N >= 2")


def vicreg_loss(z_a: Tensor, z_b: Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, eps: float = 1e-4, gather_distributed: bool = False) -> VICRegLossOutput:
    """VICReg loss of two branches' embeddings (N, D), (N, D) -> VICRegLossOutput of scalars.

    Equals ``lightly.loss.VICRegLoss(sim_weight, var_weight, cov_weight, gather_distributed, eps)``
    (and facebookresearch/vicreg ``main_vicreg.py``). Under torch.distributed with
    ``gather_distributed`` the variance and covariance use the global batch (autograd-aware
    all-gather), while the invariance stays per-worker: with equal per-worker batches its mean over
    workers is the global one, so the mean over workers of ``loss`` is the whole-batch loss and
    DDP's gradient mean gives the whole-batch gradient. Half precision is computed in float32.
    """
    weights = {"sim_weight": sim_weight, "var_weight": var_weight, "cov_weight": cov_weight}
    _check_vicreg_args(z_a, z_b, weights, eps)
    # bf16 variances of near-collapsed embeddings and D x D covariances are too coarse; float64 stays.
    dtype = torch.promote_types(torch.promote_types(z_a.dtype, z_b.dtype), torch.float32)
    z_a, z_b = z_a.to(dtype), z_b.to(dtype)
    invariance = invariance_term(z_a, z_b)
    if _world_size(gather_distributed) > 1:
        z_a, z_b = _GatherLayer.apply(z_a), _GatherLayer.apply(z_b)  # (W*N, D) each
    variance = 0.5 * (variance_term(z_a, eps) + variance_term(z_b, eps))
    covariance = covariance_term(z_a) + covariance_term(z_b)
    loss = sim_weight * invariance + var_weight * variance + cov_weight * covariance
    return VICRegLossOutput(loss, invariance, variance, covariance)


__all__ = ["VICRegLossOutput", "covariance_term", "invariance_term", "variance_term", "vicreg_loss"]
