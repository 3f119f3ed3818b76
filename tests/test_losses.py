"""MSN loss: equals lightly's on one process, trains the prototypes, and is exact under 2-worker DDP."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mmsn.losses import MSNLoss, MSNLossOutput, mean_entropy_penalty, prototype_logits, sharpen, sinkhorn
from tests.conftest import free_port
from tests.gloo import gloo_group


def _inputs(batch: int, views: int, dim: int, k: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(batch * views, dim, generator=g, dtype=torch.float64)
    targets = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    prototypes = torch.randn(k, dim, generator=g, dtype=torch.float64)
    return anchors, targets, prototypes


@pytest.mark.parametrize("batch,views,dim,k", [(8, 1, 16, 10), (6, 3, 32, 64), (16, 11, 8, 5)])
@pytest.mark.parametrize("iterations", [0, 3])
@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_equals_lightly_with_gradients(batch: int, views: int, dim: int, k: int, iterations: int,
                                       weight: float) -> None:
    from lightly.loss import MSNLoss as LightlyMSNLoss

    ours_in = [t.requires_grad_() for t in _inputs(batch, views, dim, k)]
    ref_in = [t.detach().clone().requires_grad_() for t in ours_in]
    ours = MSNLoss(0.1, iterations, weight, gather_distributed=True)(*ours_in, target_sharpen_temperature=0.25)
    ref = LightlyMSNLoss(0.1, iterations, weight, gather_distributed=False)(*ref_in, target_sharpen_temperature=0.25)
    assert isinstance(ours, MSNLossOutput)
    torch.testing.assert_close(ours.loss, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours.loss, ours.cross_entropy + weight * ours.me_max, rtol=0, atol=1e-12)
    ours.loss.backward()
    ref.backward()
    for mine, theirs in ((ours_in[0], ref_in[0]), (ours_in[2], ref_in[2])):  # anchors, prototypes
        assert mine.grad is not None and theirs.grad is not None
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=1e-6)
    assert ours_in[1].grad is None or torch.all(ours_in[1].grad == 0)  # targets: no gradient


def test_prototypes_receive_gradient() -> None:
    anchors, targets, prototypes = _inputs(8, 2, 16, 12)
    prototypes.requires_grad_()
    MSNLoss()(anchors, targets, prototypes).loss.backward()
    assert prototypes.grad is not None and prototypes.grad.abs().sum() > 0


def test_half_precision_inputs_are_computed_in_float32() -> None:
    anchors, targets, prototypes = (t.to(torch.bfloat16) for t in _inputs(8, 2, 16, 12))
    out = MSNLoss()(anchors, targets, prototypes)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_sharpen_keeps_argmax_and_lowers_entropy() -> None:
    p = torch.softmax(torch.randn(32, 20, generator=torch.Generator().manual_seed(1)), dim=1)
    q = sharpen(p, 0.25)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(32))
    assert torch.equal(q.argmax(dim=1), p.argmax(dim=1))
    assert torch.all(-(q * q.log()).sum(dim=1) < -(p * p.log()).sum(dim=1))  # entropy drops
    torch.testing.assert_close(sharpen(p, 1.0), p)


def test_sinkhorn_marginals() -> None:
    batch, k = 12, 8
    g = torch.Generator().manual_seed(2)
    p = sharpen(torch.softmax(torch.randn(batch, k, generator=g, dtype=torch.float64) * 3, dim=1), 0.25)
    before = (p.sum(dim=0) - batch / k).abs().max()
    q3 = sinkhorn(p, iterations=3)
    # The last step normalises samples: each row is an assignment summing to exactly 1 ...
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(batch, dtype=torch.float64), rtol=0, atol=1e-12)
    # ... while the prototype sums only move towards B/K, and reach it as iterations grow.
    assert (q3.sum(dim=0) - batch / k).abs().max() < before
    q_many = sinkhorn(p, iterations=500)
    torch.testing.assert_close(q_many.sum(dim=0), torch.full((k,), batch / k, dtype=torch.float64),
                               rtol=0, atol=1e-6)
    assert torch.equal(sinkhorn(p, iterations=0), p)
    assert torch.all(q3 >= 0)


def test_me_max_is_zero_when_uniform_and_log_k_when_one_hot() -> None:
    k = 7
    assert mean_entropy_penalty(torch.full((k,), 1.0 / k)).item() == pytest.approx(0.0, abs=1e-6)
    assert mean_entropy_penalty(torch.eye(k)[0]).item() == pytest.approx(math.log(k))


@pytest.mark.parametrize("kwargs,name", [
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"sinkhorn_iterations": -1}, "sinkhorn_iterations"),
    ({"regularization_weight": -0.5}, "regularization_weight"),
])
def test_bad_arguments(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MSNLoss(**kwargs)  # type: ignore[arg-type]


def test_bad_shapes_and_sharpen_temperature() -> None:
    anchors, targets, prototypes = _inputs(4, 2, 8, 5)
    with pytest.raises(ValueError, match="anchors"):
        MSNLoss()(anchors[:7], targets, prototypes)
    with pytest.raises(ValueError, match="target_sharpen_temperature"):
        MSNLoss()(anchors, targets, prototypes, target_sharpen_temperature=0.0)


# --- two workers (gloo on CPU): the split batch must reproduce the whole-batch quantities ---------

WORLD, BATCH, VIEWS, DIM, K = 2, 8, 3, 16, 10


def _rows_of(rank: int) -> torch.Tensor:
    """Anchor rows of worker ``rank``'s half of the batch, in its own view-major order."""
    half = BATCH // WORLD
    return torch.cat([v * BATCH + rank * half + torch.arange(half) for v in range(VIEWS)])


def _worker(rank: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, WORLD, port):
        anchors, targets, prototypes = _inputs(BATCH, VIEWS, DIM, K)
        half = BATCH // WORLD
        local_anchors = anchors[_rows_of(rank)].clone().requires_grad_()
        local_targets = targets[rank * half:(rank + 1) * half]
        prototypes.requires_grad_()
        out = MSNLoss(0.1, 3, 1.0, gather_distributed=True)(local_anchors, local_targets, prototypes)
        out.loss.backward()
        probs = torch.softmax(prototype_logits(local_targets, prototypes.detach(), 0.1), dim=1)
        assignment = sinkhorn(sharpen(probs, 0.25), 3, gather_distributed=True)
        torch.save({"me_max": out.me_max.detach(), "assignment": assignment,
                    "anchor_grad": local_anchors.grad, "prototype_grad": prototypes.grad},
                   Path(out_dir) / f"rank{rank}.pt")


def test_two_workers_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    anchors, targets, prototypes = _inputs(BATCH, VIEWS, DIM, K)
    anchors.requires_grad_()
    prototypes.requires_grad_()
    whole = MSNLoss(0.1, 3, 1.0, gather_distributed=False)(anchors, targets, prototypes)
    whole.loss.backward()
    probs = torch.softmax(prototype_logits(targets, prototypes.detach(), 0.1), dim=1)
    assignment = sinkhorn(sharpen(probs, 0.25), 3)
    assert anchors.grad is not None and prototypes.grad is not None

    for rank, part in enumerate(parts):
        torch.testing.assert_close(part["me_max"], whole.me_max.detach(), rtol=0, atol=1e-12)
        half = BATCH // WORLD
        torch.testing.assert_close(part["assignment"], assignment[rank * half:(rank + 1) * half],
                                   rtol=0, atol=1e-12)
        # Pass-through backward: each worker's gradient is W x its share; DDP's mean divides by W.
        torch.testing.assert_close(part["anchor_grad"] / WORLD, anchors.grad[_rows_of(rank)],
                                   rtol=0, atol=1e-10)
    ddp_mean = sum(p["prototype_grad"] for p in parts) / WORLD
    torch.testing.assert_close(ddp_mean, prototypes.grad, rtol=0, atol=1e-10)
