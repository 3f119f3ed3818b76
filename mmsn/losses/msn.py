"""The MSN objective: prototype assignment, sharpening, Sinkhorn balancing, mean-entropy maximisation.

Follows Assran et al., "Masked Siamese Networks for Label-Efficient Learning" (ECCV 2022,
arXiv:2204.07141) and its code (facebookresearch/msn ``src/losses.py``); ``lightly.loss.MSNLoss``
computes the same total on one process and is the numerical reference of the tests
(docs/method.md, The loss). Differences from lightly, all deliberate:

- the me-max term averages the anchor probabilities over *all* DDP workers (as the original
  ``AllReduce``), not only the local batch;
- the loss returns its two terms as well as the total, for logging;
- half-precision inputs are computed in float32 (softmax over K prototypes at T=0.1 and the
  entropy of a near-uniform mean are too coarse in bf16).

The module owns no parameters: prototypes are an argument, so they stay in the model, train by
gradient (lightly's example and CXR-EHR-MSN pass ``prototypes.data``, which freezes them) and are
kept out of the target encoder's EMA.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmsn.losses.distributed import _AllReduceMean, _world_size


def prototype_logits(queries: Tensor, prototypes: Tensor, temperature: float) -> Tensor:
    """Cosine similarity / temperature: (B, D), (K, D) -> (B, K). Inputs need not be normalised."""
    return F.normalize(queries, dim=1) @ F.normalize(prototypes, dim=1).T / temperature


def sharpen(probabilities: Tensor, temperature: float) -> Tensor:
    """``p ** (1/T)`` renormalised over the last dim: (..., K) -> (..., K).

    MSN sharpens the target assignment (T=0.25) so that anchors are pulled to confident targets,
    which together with me-max avoids collapse to the uniform assignment.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    sharp = probabilities ** (1.0 / temperature)
    return sharp / sharp.sum(dim=-1, keepdim=True)


@torch.no_grad()
def sinkhorn(probabilities: Tensor, iterations: int = 3, gather_distributed: bool = False) -> Tensor:
    """Sinkhorn-Knopp balancing of a (B, K) assignment; returns (B, K), each row summing to 1.

    As facebookresearch/msn ``distributed_sinkhorn`` (and SwAV): the transposed (K, B) matrix is
    scaled so each prototype row carries 1/K of the mass and each sample column 1/B, alternately,
    ``iterations`` times, then multiplied by B. The last step is the column one, so every sample's
    assignment sums to exactly 1; the per-prototype sums are only pulled towards B/K (they reach
    it as the iterations grow). Under torch.distributed with ``gather_distributed`` the total and the
    per-prototype sums are all-reduced and B is the global batch, so a batch split over equal-sized
    workers gets the assignment of the whole batch. ``iterations <= 0`` returns the input.
    """
    if iterations <= 0:
        return probabilities
    world_size = _world_size(gather_distributed)
    q = probabilities.T.clone()  # (K, B): clone because the steps below are in place
    n_prototypes, batch = q.shape[0], q.shape[1] * world_size
    total = q.sum()
    if world_size > 1:
        dist.all_reduce(total)
    q /= total
    for _ in range(iterations):
        row_sum = q.sum(dim=1, keepdim=True)  # (K, 1): mass per prototype, over the global batch
        if world_size > 1:
            dist.all_reduce(row_sum)
        q /= row_sum
        q /= n_prototypes
        q /= q.sum(dim=0, keepdim=True)  # (1, B): columns are local, no reduction needed
        q /= batch
    q *= batch
    return q.T


def mean_entropy_penalty(mean_probabilities: Tensor) -> Tensor:
    """me-max term ``log K - H(pbar)`` of a (K,) distribution: 0 when uniform, log K when one-hot.

    Minimising it maximises the entropy of the *average* anchor prediction, so all prototypes are
    used while each prediction stays confident (MSN section 3).
    """
    entropy = -torch.special.xlogy(mean_probabilities, mean_probabilities).sum()  # 0 log 0 = 0
    return math.log(mean_probabilities.shape[0]) - entropy


class MSNLossOutput(NamedTuple):
    """Scalar tensors: ``loss = cross_entropy + regularization_weight * me_max``."""

    loss: Tensor
    cross_entropy: Tensor
    me_max: Tensor


class MSNLoss(nn.Module):
    """MSN loss: cross-entropy of anchor predictions to sharpened, balanced target assignments
    plus the mean-entropy-maximisation regulariser. Parameter-free (prototypes are an argument).

    Args:
        temperature: softmax temperature of the cosine similarities to the prototypes (paper 0.1).
        sinkhorn_iterations: Sinkhorn steps on the targets; 0 disables balancing (paper 3).
        regularization_weight: weight of the me-max term (paper 1.0); 0 leaves it out of the loss
            (it is still returned, detached, for logging).
        gather_distributed: under torch.distributed, balance targets and average the me-max
            distribution over all workers (the original MSN); assumes equal per-worker batches.
    """

    def __init__(self, temperature: float = 0.1, sinkhorn_iterations: int = 3,
                 regularization_weight: float = 1.0, gather_distributed: bool = True) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if sinkhorn_iterations < 0:
            raise ValueError(f"sinkhorn_iterations must be >= 0, got {sinkhorn_iterations}")
        if not regularization_weight >= 0:
            raise ValueError(f"regularization_weight must be >= 0, got {regularization_weight}")
        self.temperature = temperature
        self.sinkhorn_iterations = sinkhorn_iterations
        self.regularization_weight = regularization_weight
        self.gather_distributed = gather_distributed

    def forward(self, anchors: Tensor, targets: Tensor, prototypes: Tensor,
                target_sharpen_temperature: float = 0.25) -> MSNLossOutput:
        """anchors (B*V, D) view-major (row v*B+b belongs to target b), targets (B, D), prototypes
        (K, D) -> MSNLossOutput of scalars. Targets get no gradient; anchors and prototypes do."""
        batch = targets.shape[0]
        if targets.dim() != 2 or anchors.dim() != 2 or batch == 0 or anchors.shape[0] % batch:
            raise ValueError(f"anchors {tuple(anchors.shape)} must be (B*V, D) for targets "
                             f"{tuple(targets.shape)} (B, D)")
        if not target_sharpen_temperature > 0:
            raise ValueError(f"target_sharpen_temperature must be > 0, got {target_sharpen_temperature}")
        # bf16/fp16 (autocast) are too coarse for K-way softmaxes and entropies; float64 stays.
        dtype = torch.promote_types(anchors.dtype, torch.float32)
        anchors, targets, prototypes = anchors.to(dtype), targets.to(dtype), prototypes.to(dtype)

        anchor_logits = prototype_logits(anchors, prototypes, self.temperature)  # (B*V, K)
        with torch.no_grad():
            target_probs = F.softmax(prototype_logits(targets, prototypes, self.temperature), dim=1)
            target_probs = sharpen(target_probs, target_sharpen_temperature)
            target_probs = sinkhorn(target_probs, self.sinkhorn_iterations, self.gather_distributed)
            views = anchors.shape[0] // batch
            target_probs = target_probs.repeat(views, 1)  # (B*V, K), view-major like the anchors

        cross_entropy = -(target_probs * F.log_softmax(anchor_logits, dim=1)).sum(dim=1).mean()
        mean_probs = F.softmax(anchor_logits, dim=1).mean(dim=0)  # (K,)
        if _world_size(self.gather_distributed) > 1:
            mean_probs = _AllReduceMean.apply(mean_probs)
        me_max = mean_entropy_penalty(mean_probs)
        if self.regularization_weight > 0:
            loss = cross_entropy + self.regularization_weight * me_max
        else:
            loss, me_max = cross_entropy, me_max.detach()
        return MSNLossOutput(loss, cross_entropy, me_max)


__all__ = ["MSNLoss", "MSNLossOutput", "mean_entropy_penalty", "prototype_logits", "sharpen", "sinkhorn"]
