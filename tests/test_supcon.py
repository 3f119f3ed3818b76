"""Supervised contrastive loss: equals pytorch-metric-learning's SupConLoss (values and gradients),
follows Khosla et al.'s L_out with missing labels, and is exact under 2-worker DDP."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from mmsn.losses import supcon_loss, supcon_masks
from tests.conftest import free_port
from tests.gloo import gloo_group


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _labels(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _reference(z: torch.Tensor, labels: list[int], temperature: float) -> torch.Tensor:
    """L_out with explicit loops over anchors and positives, in float64: the definition, not the code."""
    z = F.normalize(z.double(), dim=1)
    n = z.shape[0]
    anchor_losses = []
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[i] >= 0 and labels[p] == labels[i]]
        if not positives:
            continue
        others = [j for j in range(n) if j != i]
        log_denominator = torch.logsumexp(torch.stack([z[i] @ z[j] / temperature for j in others]), dim=0)
        terms = [-(z[i] @ z[p] / temperature - log_denominator) for p in positives]
        anchor_losses.append(torch.stack(terms).mean())
    return torch.stack(anchor_losses).mean() if anchor_losses else z.sum() * 0.0


# Label patterns with at least one positive pair and one negative pair and no missing label (pml's
# domain): a few classes, all distinct but one pair, one anchor per class without a positive.
PML_CASES = [
    ((8, 4), [0, 1, 0, 1, 2, 2, 0, 1]),
    ((16, 32), [i % 3 for i in range(16)]),
    ((5, 3), [7, 3, 7, 9, 11]),  # one positive pair, three anchors without positives
    ((12, 8), [0] * 6 + [1] * 5 + [2]),  # imbalanced, a singleton class
    ((6, 2), [4, 4, 4, 4, 4, 5]),
]


@pytest.mark.parametrize("shape,labels", PML_CASES)
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("normalised", [True, False])
def test_supcon_equals_pml_with_gradients(shape: tuple[int, int], labels: list[int], temperature: float,
                                          normalised: bool) -> None:
    from pytorch_metric_learning.losses import SupConLoss

    raw = _randn(*shape, seed=len(labels))
    z = F.normalize(raw, dim=1) if normalised else 3.0 * raw
    ours_in, ref_in = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = supcon_loss(ours_in, _labels(labels), temperature)
    ref = SupConLoss(temperature=temperature)(ref_in, _labels(labels))
    assert ours.dtype == torch.float64 and ours > 0
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, _reference(z, labels, temperature), rtol=0, atol=1e-10)
    ours.backward()
    ref.backward()
    assert ours_in.grad is not None and ref_in.grad is not None
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("labels", [
    [0, -1, 0, 1, -1, 1, 2, -1],  # missing labels among classes
    [-1, -1, 3, 3, -1, 5],  # a missing-label pair is not a positive pair
    [2, 2, 2, 2, 2, 2],  # one class: pml returns 0, L_out does not
    [-1, 0, 0, 0],  # every labelled sample is positive to the others, the missing one only contrasts
])
def test_supcon_missing_labels_and_one_class_follow_the_definition(labels: list[int]) -> None:
    z = F.normalize(_randn(len(labels), 5, seed=3), dim=1).requires_grad_()
    ref_z = z.detach().clone().requires_grad_()
    ours = supcon_loss(z, _labels(labels), 0.1)
    ref = _reference(ref_z, labels, 0.1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    ours.backward()
    ref.backward()
    assert z.grad is not None and ref_z.grad is not None
    torch.testing.assert_close(z.grad, ref_z.grad, rtol=0, atol=1e-10)


def test_one_class_batch_is_where_pml_differs() -> None:
    """pml returns 0 when no pair is negative; L_out (SupContrast, OLIVES) does not."""
    from pytorch_metric_learning.losses import SupConLoss

    z, labels = F.normalize(_randn(6, 5, seed=4), dim=1), _labels([2] * 6)
    assert SupConLoss(temperature=0.1)(z, labels).item() == 0.0
    assert supcon_loss(z, labels, 0.1).item() > math.log(5)  # above the uniform-softmax value


def test_missing_label_rows_are_contrast_samples() -> None:
    """Moving a missing-label row changes the loss of the labelled anchors (it is in their denominator)
    but it gets a gradient only as a negative, never pulled towards anyone."""
    z = F.normalize(_randn(5, 4, seed=1), dim=1)
    labels = _labels([0, 0, 1, 1, -1])
    moved = z.clone()
    moved[4] = z[0]  # the unlabelled row now sits on anchor 0
    assert supcon_loss(moved, labels) > supcon_loss(z, labels)
    all_missing = _labels([-1] * 5)
    z_leaf = z.clone().requires_grad_()
    loss = supcon_loss(z_leaf, all_missing)
    loss.backward()
    assert loss.item() == 0.0 and z_leaf.grad is not None and torch.count_nonzero(z_leaf.grad) == 0


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [-1, -1, -1], [5]])
def test_supcon_without_positives_is_zero_with_a_graph(labels: list[int]) -> None:
    z = _randn(len(labels), 3).requires_grad_()
    loss = supcon_loss(z, _labels(labels))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert z.grad is not None and torch.equal(z.grad, torch.zeros_like(z))


def test_supcon_masks_exclude_self_and_missing() -> None:
    is_self, positive = supcon_masks(_labels([1, -1]), _labels([0, 1, -1, 1, -1]), offset=1)
    assert is_self.tolist() == [[False, True, False, False, False], [False, False, True, False, False]]
    # Anchor 0 (label 1) is contrast row 1: its positive is row 3 only; the missing anchor has none.
    assert positive.tolist() == [[False, False, False, True, False], [False] * 5]


def test_supcon_falls_when_positives_align() -> None:
    """The loss is lower when same-label rows coincide and classes point apart, and the bound
    ``log(N - 1)`` is what a collapsed embedding pays (every softmax uniform over the N - 1 others)."""
    labels = _labels([0, 1, 2, 0, 1, 2])
    centres = torch.eye(3, dtype=torch.float64)
    clustered = centres[labels] + 0.01 * _randn(6, 3)
    random = _randn(6, 3, seed=5)
    assert supcon_loss(clustered, labels) < supcon_loss(random, labels)
    collapsed = torch.ones(6, 3, dtype=torch.float64)
    assert supcon_loss(collapsed, labels).item() == pytest.approx(math.log(5))


def test_supcon_invariant_to_batch_order() -> None:
    z, labels = _randn(10, 4, seed=2), _labels([0, 1, 2, -1, 0, 1, 2, 0, -1, 1])
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(supcon_loss(z[order], labels[order]), supcon_loss(z, labels), rtol=0, atol=1e-12)


def test_supcon_half_precision_is_computed_in_float32() -> None:
    z = _randn(8, 16).to(torch.bfloat16)
    labels = _labels([0, 1] * 4)
    loss = supcon_loss(z, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(loss, supcon_loss(z.float(), labels), rtol=0, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -0.07, float("nan")])
def test_supcon_bad_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(_randn(4, 3), _labels([0, 0, 1, 1]), temperature)


@pytest.mark.parametrize("z_shape,label_shape", [((4, 3), (3,)), ((4,), (4,)), ((2, 4, 3), (8,)),
                                                 ((0, 3), (0,)), ((4, 3), (4, 1))])
def test_supcon_bad_shapes_name_them(z_shape: tuple[int, ...], label_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"z \({z_shape[0]},.*labels \({label_shape[0]},"):
        supcon_loss(torch.zeros(z_shape), torch.zeros(label_shape, dtype=torch.int64))


def test_supcon_float_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="integer"):
        supcon_loss(_randn(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]))


# --- two workers (gloo on CPU): the gathered contrast set must reproduce the whole batch -----------

WORLD, LOCAL, DIM = 2, 6, 5
# Whole-batch labels, worker r holding rows r*LOCAL:(r+1)*LOCAL. In the first pattern worker 0 has
# 5 anchors with a positive and worker 1 has 2 (different counts on purpose: the all-reduced count
# keeps the mean over workers exact), and classes 0 and 2 have positives on both workers, so those
# exist only in the global contrast set. In the second worker 0 has no anchor with a positive: its
# rows are only negatives (and missing-label contrast samples) of worker 1's anchors.
PATTERNS = [
    [0, 0, 1, 1, 2, -1, 3, 4, 5, 0, -1, 2],
    [7, 8, 9, 10, -1, 11, 12, 12, -1, 13, 13, -1],
]


def _dist_inputs(pattern: int) -> tuple[torch.Tensor, torch.Tensor]:
    return F.normalize(_randn(WORLD * LOCAL, DIM, seed=10 + pattern), dim=1), _labels(PATTERNS[pattern])


def _worker(rank: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, WORLD, port):
        results = []
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        for pattern in range(len(PATTERNS)):
            z, labels = _dist_inputs(pattern)
            local = z[rows].clone().requires_grad_()
            loss = supcon_loss(local, labels[rows], 0.07, gather_distributed=True)
            loss.backward()
            results.append({"loss": loss.detach(), "grad": local.grad})
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def test_two_workers_match_one_process(tmp_path: Path) -> None:
    """Worker r's loss is ``W * sum_{i in r} l_i / n`` with n the global count of anchors with a
    positive, so the mean over workers is ``sum_i l_i / n``, the whole-batch loss. A row's gradient
    on its worker collects its anchor term there and, through the gather's summed backward, its
    contrast terms on every worker: W times the whole-batch gradient; DDP's mean divides by W."""
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for pattern in range(len(PATTERNS)):
        z, labels = _dist_inputs(pattern)
        z.requires_grad_()
        whole = supcon_loss(z, labels, 0.07)
        whole.backward()
        assert z.grad is not None
        torch.testing.assert_close(whole.detach(), _reference(z.detach(), PATTERNS[pattern], 0.07),
                                   rtol=0, atol=1e-10)
        mean = sum(p[pattern]["loss"] for p in parts) / WORLD
        torch.testing.assert_close(mean, whole.detach(), rtol=0, atol=1e-12)
        for rank, part in enumerate(parts):
            rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
            torch.testing.assert_close(part[pattern]["grad"] / WORLD, z.grad[rows], rtol=0, atol=1e-10)
    # Pattern 1: worker 0 has no anchor with a positive, yet its rows get gradients as worker 1's negatives.
    assert parts[0][1]["loss"].item() == 0.0 and torch.count_nonzero(parts[0][1]["grad"]) > 0
