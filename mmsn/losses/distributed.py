"""torch.distributed helpers of the losses: the worker count to reduce over, all-reduce and all-gather.

``_AllReduceMean`` (MSN me-max) and ``_GatherLayer`` (VICReg statistics, SupCon contrast set) are
autograd-aware; ``_all_gather_labels`` carries no gradient. The collectives assume equal per-worker batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def _world_size(gather_distributed: bool) -> int:
    """Workers to reduce over: 1 unless asked to and a process group is running."""
    if gather_distributed and dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


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


def _all_gather_labels(labels: Tensor) -> Tensor:
    """(N,) -> (W*N,) in rank order, without gradient (labels have none)."""
    parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, labels.contiguous())
    return torch.cat(parts)
