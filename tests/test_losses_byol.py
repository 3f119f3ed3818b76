"""BYOL loss: equals lightly's NegativeCosineSimilarity composition under ``byol = 4 + 4 * lightly``
(values and gradients, float64), stops the gradient into the targets, and behaves (0 aligned, 8 opposite,
scale invariant)."""

from __future__ import annotations

import pytest
import torch

from mmsn.losses import byol_loss


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _inputs(shape: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    """p1, z2, p2, z1: random float64 (N, D), p correlated with its target so cosines span a range."""
    z2, z1 = _randn(*shape, seed=seed + 1), _randn(*shape, seed=seed + 2)
    p1 = 0.5 * z2 + _randn(*shape, seed=seed + 3)
    p2 = -0.3 * z1 + _randn(*shape, seed=seed + 4)
    return [p1, z2, p2, z1]


@pytest.mark.parametrize("shape", [(8, 16), (32, 128), (1, 3), (5, 2)])
def test_byol_equals_lightly_composition_with_gradients(shape: tuple[int, int]) -> None:
    from lightly.loss import NegativeCosineSimilarity

    ours_in = [t.clone().requires_grad_() for t in _inputs(shape)]
    p1, z2, p2, z1 = [t.detach().clone().requires_grad_() for t in ours_in]
    ours = byol_loss(*ours_in)
    criterion = NegativeCosineSimilarity()
    # lightly's BYOL example: the target branch runs without gradient, so its projections are detached.
    ref = 0.5 * (criterion(p1, z2.detach()) + criterion(p2, z1.detach()))

    assert ours.dtype == torch.float64 and ours.shape == ()
    torch.testing.assert_close(ours, 4.0 + 4.0 * ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    for mine, theirs in ((ours_in[0], p1), (ours_in[2], p2)):
        assert mine.grad is not None and theirs.grad is not None
        torch.testing.assert_close(mine.grad, 4.0 * theirs.grad, rtol=1e-10, atol=1e-13)
    assert ours_in[1].grad is None and ours_in[3].grad is None  # stop-gradient on z2, z1


def test_byol_targets_get_no_gradient_even_when_they_require_it() -> None:
    p1, z2, p2, z1 = [t.requires_grad_() for t in _inputs((6, 10), seed=5)]
    loss = byol_loss(p1, z2, p2, z1)
    grads = torch.autograd.grad(loss, [p1, z2, p2, z1], allow_unused=True)
    assert grads[0] is not None and grads[2] is not None
    assert grads[1] is None and grads[3] is None


def test_byol_is_zero_when_predictions_point_along_their_targets() -> None:
    z2, z1 = _randn(16, 32, seed=1), _randn(16, 32, seed=2)
    row_scale = torch.rand(16, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.1
    loss = byol_loss(3.0 * z2, z2, row_scale * z1, z1)
    torch.testing.assert_close(loss, torch.zeros((), dtype=torch.float64), rtol=0.0, atol=1e-12)


def test_byol_is_eight_for_opposite_directions_and_four_for_one_opposite_or_orthogonal() -> None:
    z2, z1 = _randn(16, 32, seed=1), _randn(16, 32, seed=2)
    eight, four = torch.tensor(8.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)
    torch.testing.assert_close(byol_loss(-2.0 * z2, z2, -0.5 * z1, z1), eight, rtol=0.0, atol=1e-12)
    torch.testing.assert_close(byol_loss(-z2, z2, z1, z1), four, rtol=0.0, atol=1e-12)  # 4 + 0
    # Orthogonal in both directions: cos = 0, so each direction contributes 2.
    e = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(byol_loss(e[[0, 1]], e[[2, 3]], e[[1, 2]], e[[3, 0]]), four, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byol_is_within_zero_and_eight(seed: int) -> None:
    loss = byol_loss(*_inputs((12, 7), seed=seed))
    assert 0.0 <= loss.item() <= 8.0


def test_byol_is_invariant_to_positive_scaling_of_predictions_and_targets() -> None:
    inputs = _inputs((10, 24), seed=7)
    generator = torch.Generator().manual_seed(8)
    scaled = [t * (torch.rand(10, 1, generator=generator, dtype=torch.float64) * 100.0 + 1e-3) for t in inputs]
    torch.testing.assert_close(byol_loss(*scaled), byol_loss(*inputs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(byol_loss(*[7.5 * t for t in inputs]), byol_loss(*inputs), rtol=1e-12, atol=1e-12)


def test_byol_zero_rows_are_finite_and_half_precision_is_float32() -> None:
    p1, z2, p2, z1 = [t.requires_grad_() for t in _inputs((4, 8), seed=9)]
    with torch.no_grad():
        p1[0] = 0.0  # cosine 0 with its target: that sample's first direction costs 2
    loss = byol_loss(p1, z2, p2, z1)
    loss.backward()
    assert torch.isfinite(loss) and p1.grad is not None and torch.isfinite(p1.grad).all()
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity
        expected = (2.0 + (2.0 - 2.0 * cos(p1[1:], z2[1:])).sum() + (2.0 - 2.0 * cos(p2, z1)).sum()) / 4
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-12, atol=1e-12)
    half = byol_loss(*[t.detach().to(torch.bfloat16) for t in _inputs((4, 8), seed=9)])
    assert half.dtype == torch.float32 and torch.isfinite(half)


@pytest.mark.parametrize("shapes", [[(4, 8), (4, 8), (4, 8), (4, 9)], [(4, 8), (3, 8), (4, 8), (4, 8)],
                                    [(4,), (4,), (4,), (4,)], [(0, 8), (0, 8), (0, 8), (0, 8)]])
def test_byol_rejects_mismatched_or_non_matrix_inputs(shapes: list[tuple[int, ...]]) -> None:
    with pytest.raises(ValueError, match="must all be"):
        byol_loss(*[torch.zeros(shape) for shape in shapes])


def test_byol_rejects_non_positive_eps() -> None:
    with pytest.raises(ValueError, match="eps"):
        p1, z2, p2, z1 = _inputs((2, 3))
        byol_loss(p1, z2, p2, z1, eps=0.0)
