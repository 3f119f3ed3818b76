"""Supervised contrastive (Khosla et al., NeurIPS 2020, arXiv:2004.11362): ``supcon_loss`` (L_out)
and its parts ``supcon_masks`` and ``supcon_anchor_losses``."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from mmsn.losses.distributed import _all_gather_labels, _GatherLayer, _world_size


def _check_supcon_args(z: Tensor, labels: Tensor, temperature: float) -> None:
    """Raise ValueError on ``temperature <= 0``, z other than (N >= 1, D) or labels other than integer (N,)."""
    if not temperature > 0:  # also rejects NaN
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if z.dim() != 2 or z.shape[0] == 0 or labels.shape != (z.shape[0],):
        raise ValueError(f"z {tuple(z.shape)} must be (N, D) with N >= 1 and labels {tuple(labels.shape)} (N,)")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels {tuple(labels.shape)} must be an integer tensor, got {labels.dtype}")


def supcon_masks(anchor_labels: Tensor, contrast_labels: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
    """Self and positive masks of SupCon: (M,), (N,) int labels -> two (M, N) bool masks.

    Anchor i is contrast row ``offset + i`` (its own row of the global batch under DDP).
    ``positive[i, j]``: j is not i, and both labels are equal and not missing (negative, e.g. -1),
    so a missing label is never a positive and an anchor with a missing label has none.
    """
    rows = torch.arange(anchor_labels.shape[0], device=anchor_labels.device)
    is_self = torch.zeros(anchor_labels.shape[0], contrast_labels.shape[0], dtype=torch.bool,
                          device=anchor_labels.device)
    is_self[rows, offset + rows] = True
    same = anchor_labels[:, None] == contrast_labels[None, :]  # (M, N)
    positive = same & (anchor_labels[:, None] >= 0) & ~is_self
    return is_self, positive


def supcon_anchor_losses(anchors: Tensor, contrast: Tensor, is_self: Tensor, positive: Tensor,
                         temperature: float) -> Tensor:
    """Per-anchor SupCon L_out (Khosla et al. eq. 2): (M, D), (N, D), (M, N), (M, N) -> (M,).

    ``mean_{p in P(i)} -log( exp(a_i.c_p / T) / sum_{j != i} exp(a_i.c_j / T) )``, the denominator over
    every other contrast row (positives, negatives and missing-label rows alike). Rows need to be
    unit vectors for the dot product to be a cosine. Anchors without positives get 0; every row must
    have at least one non-self contrast row (else its log-softmax is undefined).
    """
    logits = (anchors @ contrast.T / temperature).masked_fill(is_self, float("-inf"))  # (M, N)
    # The detached row max cancels in the log-softmax; it keeps exp() from overflowing.
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    # masked_fill, not a product with the mask: the self entry is -inf and 0 * -inf is NaN.
    n_positives = positive.sum(dim=1).clamp(min=1)
    return -log_prob.masked_fill(~positive, 0.0).sum(dim=1) / n_positives


def supcon_loss(z: Tensor, labels: Tensor, temperature: float = 0.07, gather_distributed: bool = False) -> Tensor:
    """Supervised contrastive loss L_out (Khosla et al. 2020, eq. 2), as used by OLIVES with clinical
    pseudo-labels: z (N, D), labels (N,) int -> scalar.

    N = V*B: every view of the batch stacked, each with its sample's label (repeat the labels per
    view). z is L2-normalised here (a no-op on unit rows, and the gradient through an upstream
    ``F.normalize`` is unchanged). A label < 0 (-1) is missing: such a row is never a positive and,
    as an anchor, contributes nothing, but it stays in every denominator as a contrast sample.
    The loss is the mean over anchors with at least one positive of ``supcon_anchor_losses``;
    with no such anchor it is 0, still attached to the graph (zero gradients).

    Equals ``pytorch_metric_learning.losses.SupConLoss(temperature)(z, labels)`` (tested to 1e-5 in
    float64, values and gradients) whenever no label is missing and the batch holds at least two
    classes. pml normalises with its CosineSimilarity, takes per-anchor ``-sum_P log_prob / (|P| + tiny)``
    over all j != i, and its AvgNonZeroReducer averages the anchors whose loss is > 0 (those with a
    positive, barring float underflow); it returns 0 when the batch has no positive pair *or no
    negative pair*. The latter differs from L_out: a batch of one class here gives the non-zero
    L_out (as the SupContrast code OLIVES uses), which pulls the batch towards uniform similarities.

    Under torch.distributed with ``gather_distributed`` the contrast set is the global batch
    (autograd-aware all-gather of z, all-gather of labels; equal per-worker N); a worker's anchors
    are its own rows. The per-anchor losses are summed and divided by the all-reduced number of
    anchors with a positive, times W: so the mean over workers of the loss is the whole-batch loss
    exactly, even when workers hold different numbers of such anchors, and DDP's gradient mean is
    the whole-batch gradient. One worker's value alone is not the batch loss (log the mean).
    Half precision is computed in float32; float64 stays.
    """
    _check_supcon_args(z, labels, temperature)
    dtype = torch.promote_types(z.dtype, torch.float32)  # T = 0.07 softmaxes are too coarse in bf16
    anchors = F.normalize(z.to(dtype), dim=1)
    labels = labels.to(device=z.device, dtype=torch.int64)
    contrast, contrast_labels, offset = anchors, labels, 0
    world_size = _world_size(gather_distributed)
    if world_size > 1:
        contrast = _GatherLayer.apply(anchors)  # (W*N, D)
        contrast_labels = _all_gather_labels(labels)  # (W*N,)
        offset = dist.get_rank() * z.shape[0]
    if contrast.shape[0] < 2:
        return anchors.sum() * 0.0  # a single sample has no positive, nor a softmax over others
    is_self, positive = supcon_masks(labels, contrast_labels, offset)
    n_anchors = positive.any(dim=1).sum()
    if world_size > 1:
        dist.all_reduce(n_anchors)
    losses = supcon_anchor_losses(anchors, contrast, is_self, positive, temperature)  # (N,)
    # No anchor with a positive: every loss is 0, so clamping gives 0 without a host sync on n_anchors.
    return losses.sum() * world_size / n_anchors.clamp(min=1)


__all__ = ["supcon_anchor_losses", "supcon_loss", "supcon_masks"]
