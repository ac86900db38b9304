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
