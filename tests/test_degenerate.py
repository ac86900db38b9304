"""Near-degenerate problems and what each must return (issue 10), on the QP path and the
generic path: duplicate constraints, zero rows, badly scaled data, nearly infeasible."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, Status

PATHS = {"qp": {"fast_path": True}, "scs": {"fast_path": False, "mode": "scs"}}
TIGHT = {"eps": 1e-9, "max_iters": 200_000}


def _box_layer(path, duplicate=False):
    n = 3
    p, lo, hi = cp.Parameter(n), cp.Parameter(n), cp.Parameter(n)
    x = cp.Variable(n)
    cons = [x >= lo, x <= hi] + ([x <= hi] if duplicate else [])
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), cons)
    return CvxpyLayer(prob, [p, lo, hi], [x], **PATHS[path])


def _box_answer(p, lo, hi):
    return torch.minimum(torch.maximum(p, lo), hi)


P = torch.tensor([[2.0, -3.0, 0.2], [0.5, 0.5, -0.5]], dtype=torch.float64)
LO = -torch.ones(2, 3, dtype=torch.float64)
HI = torch.ones(2, 3, dtype=torch.float64)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_duplicate_constraints_solve_and_differentiate(path):
    layer = _box_layer(path, duplicate=True)
    p = P.clone().requires_grad_()
    (x,), info = layer(p, LO, HI, solver_args=TIGHT, return_status=True)
    assert all(s is Status.SOLVED for s in info.status)
    torch.testing.assert_close(x, _box_answer(P, LO, HI), atol=1e-6, rtol=0)
    x.sum().backward()  # multipliers are not unique; the primal derivative is
    torch.testing.assert_close(p.grad, ((P > LO) & (P < HI)).double(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_zero_rows(path):
    """A zero row 0·x ≤ h is redundant for h ≥ 0 and infeasible for h < 0."""
    n, m = 2, 3
    q, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [G @ x <= h])
    layer = CvxpyLayer(prob, [q, G, h], [x], **PATHS[path])
    Gv = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64).expand(2, m, n)
    hv = torch.tensor([[1.0, 0.0, 1.0], [1.0, -1.0, 1.0]], dtype=torch.float64)
    qv = torch.tensor([[2.0, 0.5], [2.0, 0.5]], dtype=torch.float64)
    (x,), info = layer(qv, Gv, hv, solver_args=TIGHT, return_status=True)
    assert info.status[0] is Status.SOLVED
    torch.testing.assert_close(
        x[0], torch.tensor([1.0, 0.5], dtype=torch.float64), atol=1e-6, rtol=0
    )
    assert info.status[1] in (Status.INFEASIBLE, Status.INFEASIBLE_INACCURATE)


@pytest.mark.parametrize("scale", [1e-8, 1e8])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_badly_scaled_data(path, scale):
    """Scaling the whole problem (objective and bounds) by `scale` scales the solution. The
    absolute tolerance is the user's to scale with the data (the objective is ∝ scale²):
    with the default eps_abs a problem at 1e-8 is "solved" by any point near 0."""
    layer = _box_layer(path)
    args = {"eps_abs": 1e-9 * min(scale, 1.0) ** 2, "eps_rel": 1e-9, "max_iters": 200_000}
    (x,), info = layer(P * scale, LO * scale, HI * scale, solver_args=args, return_status=True)
    assert all(s is Status.SOLVED for s in info.status), info.status
    torch.testing.assert_close(x / scale, _box_answer(P, LO, HI), atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_nearly_infeasible_box(path):
    """lo and hi 1e-9 apart: the solution is pinned between them."""
    layer = _box_layer(path)
    hi = LO + 1e-9
    (x,), info = layer(P, LO, hi, solver_args=TIGHT, return_status=True)
    assert all(s is Status.SOLVED for s in info.status), info.status
    torch.testing.assert_close(x, LO, atol=1e-6, rtol=0)
    assert np.isfinite(x.numpy()).all()


@pytest.mark.parametrize("failed_gradient", ["zero", "nan"])
@pytest.mark.parametrize(
    "options",
    [
        {"fast_path": True},
        *({"fast_path": False, "mode": m} for m in ("scs", "torch", "scs-block")),
    ],
)
def test_nan_element_is_reported_and_the_others_solved(options, failed_gradient):
    """With return_status, an element whose parameters hold NaN/inf is not solved: status
    "invalid_input", NaN outputs, zero (or NaN) gradient; the other elements are answered as
    if it were not there. Without return_status the call raises, naming the parameter."""
    n = 3
    p, lo, hi = cp.Parameter(n, name="p"), cp.Parameter(n), cp.Parameter(n)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= lo, x <= hi])
    layer = CvxpyLayer(prob, [p, lo, hi], [x], **options)
    pv = torch.tensor([[2.0, -3.0, 0.2], [0.5, float("nan"), 0.1], [0.3, 0.4, -2.0]])
    pv = pv.double().requires_grad_()
    lo_v, hi_v = -torch.ones(3, n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    args = {"eps": 1e-9, "failed_gradient": failed_gradient, "max_batch": 2}
    (out,), info = layer(pv, lo_v, hi_v, solver_args=args, return_status=True)
    assert info.status[1] is Status.INVALID_INPUT and info.status[0].ok and info.status[2].ok
    assert torch.isnan(out[1]).all()
    keep = [0, 2]
    expected = _box_answer(pv.detach()[keep], lo_v[keep], hi_v)
    torch.testing.assert_close(out[keep], expected, atol=1e-6, rtol=0)
    out[keep].sum().backward()
    inside = ((expected > -1) & (expected < 1)).double()  # d clip(p)/dp
    torch.testing.assert_close(pv.grad[keep], inside, atol=1e-5, rtol=0)
    if failed_gradient == "zero":
        assert (pv.grad[1] == 0).all()
    else:
        assert torch.isnan(pv.grad[1]).all()
    with pytest.raises(ValueError, match="'p' contains NaN"):
        layer(pv, lo_v, hi_v)


def test_nonpositive_gp_parameter_is_an_invalid_element_with_return_status():
    x = cp.Variable(pos=True)
    a = cp.Parameter(pos=True)
    prob = cp.Problem(cp.Minimize(x + a / x))  # x* = √a
    layer = CvxpyLayer(prob, [a], [x], gp=True)
    av = torch.tensor([4.0, -1.0, 9.0], dtype=torch.float64)
    (out,), info = layer(av, solver_args={"eps": 1e-9}, return_status=True)
    assert [s.value for s in info.status] == ["solved", "invalid_input", "solved"]
    torch.testing.assert_close(out[[0, 2]], torch.tensor([2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="must be positive"):
        layer(av)
