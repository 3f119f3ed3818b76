"""VICReg and DINO losses: equal lightly's (values and gradients), their terms behave, and VICReg's
gathered statistics and DINO's center are exact under 2-worker DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mmsn.losses import (
    VICRegLossOutput,
    covariance_term,
    dino_loss,
    invariance_term,
    teacher_temperature,
    update_center,
    variance_term,
    vicreg_loss,
)
from tests.conftest import free_port
from tests.gloo import gloo_group


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- VICReg ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(8, 16), (32, 64), (5, 3), (2, 4)])
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.5, 3.0)])
def test_vicreg_equals_lightly_with_gradients(shape: tuple[int, int], weights: tuple[float, float, float]) -> None:
    from lightly.loss import VICRegLoss

    # Scaled down so some dimensions have std < 1 and the variance hinge is active.
    ours_in = [(0.7 * _randn(*shape, seed=s)).requires_grad_() for s in (1, 2)]
    ref_in = [t.detach().clone().requires_grad_() for t in ours_in]
    ours = vicreg_loss(*ours_in, *weights, eps=1e-4)
    ref = VICRegLoss(*weights, gather_distributed=False, eps=1e-4)(*ref_in)
    assert isinstance(ours, VICRegLossOutput)
    assert ours.variance > 0
    torch.testing.assert_close(ours.loss, ref, rtol=0, atol=1e-6)
    sim, var, cov = weights
    torch.testing.assert_close(ours.loss, sim * ours.invariance + var * ours.variance + cov * ours.covariance,
                               rtol=0, atol=1e-12)
    ours.loss.backward()
    ref.backward()
    for mine, theirs in zip(ours_in, ref_in):
        assert mine.grad is not None and theirs.grad is not None
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=0, atol=1e-6)


def test_invariance_term_is_zero_for_equal_branches_and_mean_squared_difference() -> None:
    z = _randn(6, 4)
    assert invariance_term(z, z).item() == 0.0
    torch.testing.assert_close(invariance_term(z, z + 0.5), torch.tensor(0.25, dtype=torch.float64))


def test_variance_term_zero_above_unit_std_and_maximal_at_collapse() -> None:
    eps = 1e-4
    wide = torch.tensor([[2.0, -3.0], [-2.0, 3.0]] * 4, dtype=torch.float64)  # per-dim std > 1
    assert variance_term(wide, eps).item() == 0.0
    collapsed = torch.ones(8, 5, dtype=torch.float64)
    assert variance_term(collapsed, eps).item() == pytest.approx(1.0 - eps**0.5)
    # The hinge is on the std: halving a sub-unit spread raises the penalty.
    narrow = 0.5 * _randn(64, 5)
    assert variance_term(0.5 * narrow, eps) > variance_term(narrow, eps) > 0


def test_covariance_term_zero_for_decorrelated_columns_and_shift_invariant() -> None:
    # Columns 1-3 of a Sylvester-Hadamard matrix: zero mean, mutually orthogonal, so uncorrelated.
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    hadamard = torch.kron(torch.kron(h2, h2), h2)  # (8, 8)
    decorrelated = hadamard[:, 1:4] * torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    assert covariance_term(decorrelated).item() == pytest.approx(0.0, abs=1e-12)
    correlated = torch.cat([decorrelated[:, :1], decorrelated[:, :1]], dim=1)  # two equal columns
    # cov = [[v, v], [v, v]] with v = 8/7: two off-diagonal entries v**2, over D = 2.
    assert covariance_term(correlated).item() == pytest.approx((8 / 7) ** 2)
    z = _randn(10, 6)
    torch.testing.assert_close(covariance_term(z + 3.0), covariance_term(z), rtol=0, atol=1e-12)


def test_vicreg_half_precision_is_computed_in_float32() -> None:
    z_a, z_b = (_randn(8, 16, seed=s).to(torch.bfloat16) for s in (1, 2))
    out = vicreg_loss(z_a, z_b)
    assert all(t.dtype == torch.float32 for t in out) and torch.isfinite(out.loss)


@pytest.mark.parametrize("kwargs,name", [
    ({"sim_weight": -1.0}, "sim_weight"),
    ({"var_weight": -0.1}, "var_weight"),
    ({"cov_weight": float("nan")}, "cov_weight"),
    ({"eps": 0.0}, "eps"),
    ({"eps": -1e-4}, "eps"),
])
def test_vicreg_bad_hyper_parameters(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        vicreg_loss(_randn(4, 3), _randn(4, 3), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape_a,shape_b", [((4, 3), (4, 2)), ((4, 3), (5, 3)), ((1, 3), (1, 3)),
                                             ((4,), (4,)), ((2, 4, 3), (2, 4, 3))])
def test_vicreg_bad_shapes_name_them(shape_a: tuple[int, ...], shape_b: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=rf"z_a \({shape_a[0]},.*z_b \({shape_b[0]},"):
        vicreg_loss(torch.zeros(shape_a), torch.zeros(shape_b))


# --- DINO -----------------------------------------------------------------------------------------

WARMUP_TEMP, TEACHER_TEMP, WARMUP_EPOCHS, STUDENT_TEMP, MOMENTUM = 0.04, 0.07, 30, 0.1, 0.9


def _dino_inputs(t_views: int, s_views: int, batch: int, k: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    teacher = 2.0 * _randn(t_views, batch, k, seed=seed)
    student = 2.0 * _randn(s_views, batch, k, seed=seed + 1)
    # The first T student views see the teacher's global crops: make them related, not equal.
    student[:t_views] = teacher + 0.5 * _randn(t_views, batch, k, seed=seed + 2)
    center = 0.5 * _randn(1, k, seed=seed + 3)
    return teacher, student, center


@pytest.mark.parametrize("t_views,s_views,batch,k", [(2, 2, 4, 8), (2, 6, 5, 16), (1, 3, 3, 7), (2, 4, 1, 5)])
@pytest.mark.parametrize("epoch", [0, 7, 29, 45])
def test_dino_equals_lightly_with_gradients_and_center(t_views: int, s_views: int, batch: int, k: int,
                                                       epoch: int) -> None:
    from lightly.loss import DINOLoss

    teacher, student, center = _dino_inputs(t_views, s_views, batch, k, seed=epoch)
    ref = DINOLoss(k, WARMUP_TEMP, TEACHER_TEMP, WARMUP_EPOCHS, STUDENT_TEMP, MOMENTUM)
    ref.center = center.reshape(1, 1, k).clone()  # lightly keeps it (1, 1, K)
    ours_student = student.clone().requires_grad_()
    ref_student = student.clone().requires_grad_()

    temperature = teacher_temperature(epoch, WARMUP_TEMP, TEACHER_TEMP, WARMUP_EPOCHS)
    ours = dino_loss(teacher, ours_student, center, temperature, STUDENT_TEMP)
    theirs = ref(list(teacher), list(ref_student), epoch=epoch)  # lightly updates its center here
    # lightly holds the temperature as a float32 tensor; that rounding moves the loss by ~1e-9.
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    ours.backward()
    theirs.backward()
    assert ours_student.grad is not None and ref_student.grad is not None
    torch.testing.assert_close(ours_student.grad, ref_student.grad, rtol=0, atol=1e-6)

    new_center = update_center(center, teacher, MOMENTUM)
    torch.testing.assert_close(new_center.reshape(1, 1, k), ref.center, rtol=0, atol=1e-12)


def test_dino_teacher_gets_no_gradient_and_half_precision_is_float32() -> None:
    teacher, student, center = _dino_inputs(2, 4, 3, 6)
    teacher.requires_grad_()
    student.requires_grad_()
    dino_loss(teacher, student, center, 0.04).backward()
    assert teacher.grad is None and student.grad is not None
    loss = dino_loss(teacher.detach().half(), student.detach().bfloat16(), center.float(), 0.04)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_dino_loss_ignores_same_view_pairs() -> None:
    """With S = T = 2 only the crossed pairs count: swapping the student's views changes the loss,
    and the loss equals the mean of the two crossed cross-entropies computed by hand."""
    teacher, student, center = _dino_inputs(2, 2, 4, 5)
    targets = torch.softmax((teacher - center) / 0.05, dim=-1)
    log_probs = torch.log_softmax(student / STUDENT_TEMP, dim=-1)
    crossed = -(targets[0] * log_probs[1]).sum(-1).mean() - (targets[1] * log_probs[0]).sum(-1).mean()
    torch.testing.assert_close(dino_loss(teacher, student, center, 0.05), crossed / 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(dino_loss(teacher, student, center.reshape(-1), 0.05), crossed / 2,
                               rtol=0, atol=1e-12)


def test_update_center_is_pure_ema() -> None:
    teacher, _, center = _dino_inputs(2, 2, 4, 5)
    before = center.clone()
    new = update_center(center, teacher, 0.9)
    assert torch.equal(center, before) and new.shape == center.shape and new.dtype == center.dtype
    torch.testing.assert_close(new, 0.9 * center + 0.1 * teacher.mean(dim=(0, 1)), rtol=0, atol=1e-12)
    assert torch.equal(update_center(center, teacher, 1.0), center)
    torch.testing.assert_close(update_center(center.reshape(-1), teacher, 0.0), teacher.mean(dim=(0, 1)))
    assert update_center(center.float(), teacher.bfloat16(), 0.9).dtype == torch.float32


@pytest.mark.parametrize("warmup_epochs", [30, 10, 2])
def test_teacher_temperature_matches_lightly_schedule(warmup_epochs: int) -> None:
    from lightly.loss import DINOLoss

    ref = DINOLoss(8, WARMUP_TEMP, TEACHER_TEMP, warmup_epochs)
    for epoch in range(warmup_epochs + 5):
        # lightly's own branch: the linspace while epoch < warmup, then the constant.
        expected = float(ref.teacher_temp_schedule[epoch]) if epoch < warmup_epochs else TEACHER_TEMP
        ours = teacher_temperature(epoch, WARMUP_TEMP, TEACHER_TEMP, warmup_epochs)
        assert ours == pytest.approx(expected, rel=1e-6), epoch


def test_teacher_temperature_between_and_after_epochs() -> None:
    args = (WARMUP_TEMP, TEACHER_TEMP)
    assert teacher_temperature(0, *args, 11) == WARMUP_TEMP
    assert teacher_temperature(10, *args, 11) == pytest.approx(TEACHER_TEMP)  # reached at W - 1
    assert teacher_temperature(2.5, *args, 11) == pytest.approx(0.5 * (teacher_temperature(2, *args, 11)
                                                                       + teacher_temperature(3, *args, 11)))
    assert teacher_temperature(10.5, *args, 11) == pytest.approx(TEACHER_TEMP)
    assert teacher_temperature(0, *args, 0) == TEACHER_TEMP  # no warm-up
    assert teacher_temperature(0, *args, 1) == WARMUP_TEMP  # a one-point linspace
    assert teacher_temperature(1, *args, 1) == TEACHER_TEMP


@pytest.mark.parametrize("call,name", [
    (lambda: teacher_temperature(-1, 0.04, 0.07, 30), "epoch"),
    (lambda: teacher_temperature(0, 0.04, 0.07, -1), "warmup_epochs"),
    (lambda: teacher_temperature(0, 0.0, 0.07, 30), "warmup_teacher_temp"),
    (lambda: teacher_temperature(0, 0.04, -0.07, 30), "teacher_temp"),
    (lambda: dino_loss(*_dino_inputs(2, 4, 3, 5), teacher_temp=0.0), "teacher_temp"),
    (lambda: dino_loss(*_dino_inputs(2, 4, 3, 5), teacher_temp=0.04, student_temp=-0.1), "student_temp"),
    (lambda: update_center(_randn(1, 5), _randn(2, 3, 5), 1.5), "momentum"),
])
def test_dino_bad_hyper_parameters(call: object, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()  # type: ignore[operator]


@pytest.mark.parametrize("t_shape,s_shape,c_shape", [
    ((2, 3, 5), (1, 3, 5), (1, 5)),  # S < T
    ((1, 3, 5), (1, 3, 5), (1, 5)),  # no pair of different views
    ((2, 3, 5), (4, 2, 5), (1, 5)),  # batch differs
    ((2, 3, 5), (4, 3, 6), (1, 5)),  # K differs
    ((2, 3, 5), (4, 3, 5), (2, 5)),  # center not (1, K)
    ((2, 3, 5), (4, 3, 5), (1, 1, 5)),
    ((3, 5), (4, 3, 5), (1, 5)),  # teacher not 3-D
    ((2, 3, 5), (12, 5), (1, 5)),  # student not 3-D
])
def test_dino_bad_shapes_name_them(t_shape: tuple[int, ...], s_shape: tuple[int, ...],
                                   c_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(\d"):
        dino_loss(torch.zeros(t_shape), torch.zeros(s_shape), torch.zeros(c_shape), 0.04)


# --- two workers (gloo on CPU): gathered VICReg statistics and the DINO center ---------------------

WORLD, BATCH, DIM, T_VIEWS, K = 2, 8, 6, 2, 5


def _vicreg_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return 0.7 * _randn(BATCH, DIM, seed=1), 0.7 * _randn(BATCH, DIM, seed=2)


def _worker(rank: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, WORLD, port):
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        z_a, z_b = (z[rows].clone().requires_grad_() for z in _vicreg_inputs())
        out = vicreg_loss(z_a, z_b, gather_distributed=True)
        out.loss.backward()
        teacher, _, center = _dino_inputs(T_VIEWS, T_VIEWS, BATCH, K)
        new_center = update_center(center, teacher[:, rows], MOMENTUM, gather_distributed=True)
        torch.save({"out": [t.detach() for t in out], "grad_a": z_a.grad, "grad_b": z_b.grad,
                    "center": new_center}, Path(out_dir) / f"rank{rank}.pt")


def test_two_workers_match_one_process(tmp_path: Path) -> None:
    """Each worker holds N = B/W rows; worker r's loss is ``25 inv_r + 25 var + cov`` where var and
    cov use the gathered (global) batch and inv_r only its own rows (as lightly and the paper's code).

    Values: var and cov equal the whole-batch ones on every worker; inv_r is a mean over N*D entries,
    so with equal halves the mean over workers of inv_r, and hence of the loss, is the whole-batch one.
    Gradients: d inv_r / d z_r is W times the whole-batch invariance gradient of those rows (1/(N D)
    against 1/(B D)); the gather's backward sums all W workers' identical gradients of var + cov,
    which is W times the whole-batch one. So each worker's gradient is W times the whole-batch
    gradient of its rows, and DDP's mean over workers recovers the whole-batch gradient.
    The DINO center is the all-reduced mean, identical to the whole-batch update on every worker.
    """
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    z_a, z_b = (z.requires_grad_() for z in _vicreg_inputs())
    whole = vicreg_loss(z_a, z_b)
    whole.loss.backward()
    assert z_a.grad is not None and z_b.grad is not None
    teacher, _, center = _dino_inputs(T_VIEWS, T_VIEWS, BATCH, K)
    whole_center = update_center(center, teacher, MOMENTUM)

    outs = [VICRegLossOutput(*p["out"]) for p in parts]
    torch.testing.assert_close(sum(o.loss for o in outs) / WORLD, whole.loss.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sum(o.invariance for o in outs) / WORLD, whole.invariance.detach(),
                               rtol=0, atol=1e-12)
    for rank, (part, out) in enumerate(zip(parts, outs)):
        torch.testing.assert_close(out.variance, whole.variance.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(out.covariance, whole.covariance.detach(), rtol=0, atol=1e-12)
        rows = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        torch.testing.assert_close(part["grad_a"] / WORLD, z_a.grad[rows], rtol=0, atol=1e-10)
        torch.testing.assert_close(part["grad_b"] / WORLD, z_b.grad[rows], rtol=0, atol=1e-10)
        torch.testing.assert_close(part["center"], whole_center, rtol=0, atol=1e-12)
