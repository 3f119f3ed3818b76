"""The MSN objective: prototype assignment, sharpening, Sinkhorn balancing, mean-entropy maximisation.

Follows Assran et al., "Masked Siamese Networks for Label-Efficient Learning" (ECCV 2022,
arXiv:2204.07141) and its code (facebookresearch/msn ``src/losses.py``); ``lightly.loss.MSNLoss``
computes the same total on one process and is the numerical reference of the tests
(RESEARCH.md section 1). Differences from lightly, all deliberate:

- the me-max term averages the anchor probabilities over *all* DDP workers (as the original
  ``AllReduce``), not only the local batch;
- the loss returns its two terms as well as the total, for logging;
- half-precision inputs are computed in float32 (softmax over K prototypes at T=0.1 and the
  entropy of a near-uniform mean are too coarse in bf16).

The module owns no parameters: prototypes are an argument, so they stay in the model, train by
gradient (lightly's example and CXR-EHR-MSN pass ``prototypes.data``, which freezes them) and are
kept out of the target encoder's EMA.

The VICReg and DINO losses of the alternative objectives follow at the end of the module, as pure
functions (``vicreg_loss``, ``dino_loss``, ``update_center``, ``teacher_temperature``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _world_size(gather_distributed: bool) -> int:
    """Workers to reduce over: 1 unless asked to and a process group is running."""
    if gather_distributed and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


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


class _AllReduceMean(torch.autograd.Function):
    """Mean over workers whose backward passes the gradient through unchanged.

    As facebookresearch/msn ``AllReduce``: every worker gets the same upstream gradient; DDP then
    averages parameter gradients over the W workers, which supplies the 1/W of the mean.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        world_size = dist.get_world_size()
        x = x.contiguous() / world_size
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


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



# --- VICReg (Bardes et al., ICLR 2022, arXiv:2105.04906) -------------------------------------------


class _GatherLayer(torch.autograd.Function):
    """All-gather along dim 0, (N, D) -> (W*N, D), whose backward sums every worker's gradient of the
    gathered tensor and returns this worker's (N, D) slice.

    As facebookresearch/vicreg ``FullGatherLayer`` and ``lightly.utils.dist.GatherLayer``: each worker
    differentiates its own copy of the global statistics, so the summed gradient of a row is W times
    its gradient in the whole-batch loss; DDP's mean over workers supplies the 1/W. Assumes equal
    per-worker batches (``all_gather`` needs equal shapes).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


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


# --- DINO (Caron et al., ICCV 2021, arXiv:2104.14294) ----------------------------------------------


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


# --- Supervised contrastive (Khosla et al., NeurIPS 2020, arXiv:2004.11362) -----------------------


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


def _all_gather_labels(labels: Tensor) -> Tensor:
    """(N,) -> (W*N,) in rank order, without gradient (labels have none)."""
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)


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


__all__ = ["MSNLoss", "MSNLossOutput", "VICRegLossOutput", "covariance_term", "dino_loss", "invariance_term",
           "mean_entropy_penalty", "prototype_logits", "sharpen", "sinkhorn", "supcon_anchor_losses", "supcon_loss",
           "supcon_masks", "teacher_temperature", "update_center", "variance_term", "vicreg_loss"]
