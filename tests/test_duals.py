"""Constraint duals as layer outputs: values against Clarabel for every cone, gradients."""

import cvxpy as cp
import numpy as np
import pytest
import torch
from problems import CASES, solve_reference

from cvxlayer import CvxpyLayer

TIGHT = {"eps": 1e-10, "max_iters": 200_000}


def _batch(case, seed, size):
    rng = np.random.default_rng(seed)
    draws = [case.draw(rng) for _ in range(size)]
    return [torch.tensor(np.stack(v), dtype=torch.float64) for v in zip(*draws)]


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_duals_match_clarabel(name, fast_path):
    case = CASES[name]
    duals = [c.dual_variables[0] for c in case.problem.constraints]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables + duals, fast_path=fast_path)
    values = _batch(case, seed=0, size=2)
    outputs = layer(*values, solver_args=TIGHT)
    for i in range(2):
        solve_reference(case, [v[i].numpy() for v in values])
        for dual, out in zip(duals, outputs[len(case.variables) :]):
            assert out[i].shape == dual.shape
            np.testing.assert_allclose(out[i].numpy(), np.asarray(dual.value), atol=2e-5)


def test_multi_argument_soc_duals():
    """cp.SOC(t, x) has two dual variables (for t and for x)."""
    n = 3
    p = cp.Parameter(n)
    x, t = cp.Variable(n), cp.Variable()
    con = cp.SOC(t, x - p)
    prob = cp.Problem(cp.Minimize(t + cp.sum_squares(x)), [con])
    layer = CvxpyLayer(prob, [p], [x, *con.dual_variables])
    pv = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    _, dual_t, dual_x = layer(pv, solver_args=TIGHT)
    p.value = pv.numpy()
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    np.testing.assert_allclose(dual_t.numpy(), con.dual_variables[0].value, atol=1e-6)
    np.testing.assert_allclose(dual_x.numpy(), np.ravel(con.dual_variables[1].value), atol=1e-6)


@pytest.mark.parametrize("fast_path", [True, False])
def test_dual_gradients_gradcheck(fast_path):
    """The multiplier of a box constraint, λ(p) = max(p − 1, 0)·2, through both paths."""
    n = 3
    p = cp.Parameter(n)
    x = cp.Variable(n)
    con = x <= 1
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [con])
    layer = CvxpyLayer(prob, [p], [con.dual_variables[0]], fast_path=fast_path)
    pv = torch.tensor([[2.0, 0.3, 1.7], [-1.0, 3.0, 0.2]], dtype=torch.float64)
    (lam,) = layer(pv, solver_args=TIGHT)
    torch.testing.assert_close(lam, 2 * (pv - 1).clamp(min=0), atol=1e-6, rtol=0)
    leaf = pv.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v: layer(v, solver_args=TIGHT)[0], (leaf,), atol=1e-5, rtol=1e-4
    )


def test_dual_of_a_foreign_constraint_is_an_error():
    x, p = cp.Variable(2), cp.Parameter(2)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0])
    other = x <= 5
    with pytest.raises(ValueError, match="dual variable of one of its constraints"):
        CvxpyLayer(prob, [p], [other.dual_variables[0]])


def test_entropy_fast_path_steps_aside_for_duals():
    d = 4
    x, y = cp.Parameter(d), cp.Variable(d)
    con = cp.sum(y) == 1
    prob = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [con])
    layer = CvxpyLayer(prob, [x], [y, con.dual_variables[0]])
    assert layer.fast_path is None
    xv = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    y_val, nu = layer(xv, solver_args=TIGHT)
    torch.testing.assert_close(y_val, torch.softmax(xv, 0), atol=1e-6, rtol=0)
    # stationarity −x + log y + 1 + ν = 0 with Σy = 1: ν = logsumexp(x) − 1 (cvxpy's sign)
    torch.testing.assert_close(nu, torch.logsumexp(xv, 0) - 1, atol=1e-6, rtol=0)
