"""BYOL (Grill et al., "Bootstrap your own latent", NeurIPS 2020, arXiv:2006.07733): the symmetrised
regression loss of the online predictions to the target projections, as a pure function ``byol_loss``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_byol_args(p1: Tensor, z2: Tensor, p2: Tensor, z1: Tensor, eps: float) -> None:
    """Raise ValueError on ``eps <= 0`` or inputs that are not four equal (N >= 1, D) tensors."""
    if not eps > 0:  # also rejects NaN
        raise ValueError(f"eps must be > 0, got {eps}")
    shapes = [tuple(t.shape) for t in (p1, z2, p2, z1)]
    if p1.dim() != 2 or p1.shape[0] == 0 or any(shape != shapes[0] for shape in shapes):
        raise ValueError(f"p1, z2, p2, z1 {shapes} must all be (N, D) with N >= 1")


def _regression(p: Tensor, z: Tensor, eps: float) -> Tensor:
    """Per-sample BYOL regression ``2 - 2 cos(p, z)`` = ``||p/|p| - z/|z|||^2``: (N, D), (N, D) -> (N,).

    z is detached (the stop-gradient on the target branch)."""
    p_unit = F.normalize(p, dim=1, eps=eps)
    z_unit = F.normalize(z.detach(), dim=1, eps=eps)
    return 2.0 - 2.0 * (p_unit * z_unit).sum(dim=1)


def byol_loss(p1: Tensor, z2: Tensor, p2: Tensor, z1: Tensor, *, eps: float = 1e-6) -> Tensor:
    """BYOL loss (Grill et al. section 3.1, eq. 2 symmetrised): four (N, D) tensors -> scalar in [0, 8].

    p1, p2 are the online predictor outputs of views 1 and 2; z1, z2 the target projections of the
    same views (the EMA encoder's), which get no gradient (detached here). Per sample i,
    ``L_i = (2 - 2 cos(p1_i, z2_i)) + (2 - 2 cos(p2_i, z1_i))``: the two symmetric directions are
    *summed*, as the paper's ``L^BYOL = L + L~``, and the loss is the mean over the N samples. So

        byol_loss = 4 - 2 * mean_i cos(p1_i, z2_i) - 2 * mean_i cos(p2_i, z1_i),

    0 when every prediction points along its target and 8 when every one points opposite.
    Invariant to positive scaling of any input row (of norm above eps).

    lightly's examples compose ``l = 0.5 * (NegativeCosineSimilarity()(p1, z2) +
    NegativeCosineSimilarity()(p2, z1))``, each term ``-mean_i cos``, so the two losses are related
    exactly by ``byol_loss = 4 + 4 * l`` (``l = byol_loss / 4 - 1``, in [-1, 1]); the gradients w.r.t.
    p1 and p2 are 4 times lightly's (lightly's example detaches z by running the target branch
    without gradient; here the detach is inside).

    Rows are L2-normalised with ``F.normalize(eps=eps)``: ``x / max(|x|, eps)``, BYOL's
    official ``l2_normalize`` (``x * rsqrt(max(|x|^2, 1e-12))``) for the default eps, so an all-zero row has cosine
    0 rather than NaN. The loss is a per-sample mean, so with equal per-worker batches the mean over
    DDP workers is the whole-batch loss without any gather. Half precision is computed in float32;
    float64 stays.
    """
    _check_byol_args(p1, z2, p2, z1, eps)
    dtype = torch.float32
    for t in (p1, z2, p2, z1):
        dtype = torch.promote_types(dtype, t.dtype)
    p1, z2, p2, z1 = (t.to(dtype) for t in (p1, z2, p2, z1))
    return (_regression(p1, z2, eps) + _regression(p2, z1, eps)).mean()


__all__ = ["byol_loss"]
