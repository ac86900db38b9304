"""Geometric programs (gp=True): solutions against cvxpy's own DGP solve, gradients."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer

TIGHT = {"eps": 1e-9, "max_iters": 200_000}


def _gp():
    """cvxpy's DGP tutorial problem: max volume box-like program with parameters a, b, c."""
    x, y, z = cp.Variable(pos=True), cp.Variable(pos=True), cp.Variable(pos=True)
    a, b = cp.Parameter(pos=True), cp.Parameter(pos=True)
    c = cp.Parameter()  # an exponent: enters the log problem as it is
    constraints = [a * (x * y + x * z + y * z) <= b, x >= y**c]
    return cp.Problem(cp.Minimize(1 / (x * y * z)), constraints), [a, b, c], [x, y, z]


VALUES = [
    torch.tensor([2.0, 1.5, 3.0], dtype=torch.float64),
    torch.tensor([1.0, 2.0, 0.7], dtype=torch.float64),
    torch.tensor([0.5, 0.3, 1.2], dtype=torch.float64),
]


def test_gp_matches_cvxpy_dgp_solve_batched_and_in_any_parameter_order():
    prob, params, variables = _gp()
    order = [2, 0, 1]
    layer = CvxpyLayer(prob, [params[k] for k in order], variables, gp=True)
    outputs = layer(*[VALUES[k] for k in order], solver_args=TIGHT)
    for i in range(3):
        for prm, v in zip(params, VALUES):
            prm.value = float(v[i])
        prob.solve(gp=True, solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10)
        for var, out in zip(variables, outputs):
            np.testing.assert_allclose(float(out[i]), var.value, rtol=5e-5)  # Clarabel: ~1e-5


def test_gp_gradients_match_finite_differences():
    prob, params, variables = _gp()
    layer = CvxpyLayer(prob, params, variables, gp=True)
    leaves = [v.clone().requires_grad_() for v in VALUES]
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss(vals):
        return sum(wk * out.sum() for wk, out in zip(w, layer(*vals, solver_args=TIGHT)))

    loss(leaves).backward()
    step = 1e-5
    for k in range(3):
        direction = torch.zeros_like(VALUES[k])
        direction[0] = 1.0
        plus = [v + step * direction if j == k else v for j, v in enumerate(VALUES)]
        minus = [v - step * direction if j == k else v for j, v in enumerate(VALUES)]
        fd = (loss(plus) - loss(minus)) / (2 * step)
        torch.testing.assert_close(leaves[k].grad[0], fd, atol=1e-4, rtol=1e-3)


def test_gp_duals_match_cvxpy_and_are_differentiable():
    """Duals of a GP are those of its log-space convex form, as cvxpy reports them."""
    x, y, z = cp.Variable(pos=True), cp.Variable(pos=True), cp.Variable(pos=True)
    a, b, c = cp.Parameter(pos=True), cp.Parameter(pos=True), cp.Parameter()
    cons = [a * (x * y + x * z + y * z) <= b, x >= y**c, x * y == a * z]
    prob = cp.Problem(cp.Minimize(1 / (x * y * z)), cons)
    duals = [con.dual_variables[0] for con in cons]
    layer = CvxpyLayer(prob, [a, b, c], [x, *duals], gp=True)
    outputs = layer(*VALUES, solver_args=TIGHT)
    for i in range(3):
        for prm, v in zip((a, b, c), VALUES):
            prm.value = float(v[i])
        prob.solve(gp=True, solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10)
        for var, out in zip([x, *duals], outputs):
            np.testing.assert_allclose(float(out[i]), var.value, rtol=1e-4, atol=1e-6)
    leaf = VALUES[1].clone().requires_grad_()
    layer(VALUES[0], leaf, VALUES[2], solver_args=TIGHT)[1].sum().backward()
    step = 1e-5
    fd = [
        (
            layer(VALUES[0], VALUES[1] + step * e, VALUES[2], solver_args=TIGHT)[1].sum()
            - layer(VALUES[0], VALUES[1] - step * e, VALUES[2], solver_args=TIGHT)[1].sum()
        )
        / (2 * step)
        for e in torch.eye(3, dtype=torch.float64)
    ]
    torch.testing.assert_close(leaf.grad, torch.stack(fd), atol=1e-4, rtol=1e-3)


def test_gp_errors():
    prob, params, variables = _gp()
    layer = CvxpyLayer(prob, params, variables, gp=True)
    with pytest.raises(ValueError, match="must be positive"):
        layer(-VALUES[0], VALUES[1], VALUES[2])
    x, p = cp.Variable(pos=True), cp.Parameter(pos=True)
    not_dgp = cp.Problem(cp.Minimize(x - p), [x >= 1])
    with pytest.raises(ValueError, match="not DGP"):
        CvxpyLayer(not_dgp, [p], [x], gp=True)


def test_gp_duals_agree_across_modes():
    x, y = cp.Variable(pos=True), cp.Variable(pos=True)
    a, b = cp.Parameter(pos=True), cp.Parameter(pos=True)
    cons = [a * (x + y) <= b, x * y >= a]
    prob = cp.Problem(cp.Minimize(1 / (x * y**2)), cons)
    outputs = [x, y] + [con.dual_variables[0] for con in cons]
    values = [
        torch.tensor([1.0, 0.5], dtype=torch.float64),
        torch.tensor([4.0, 3.0], dtype=torch.float64),
    ]
    results = {
        mode: torch.stack(
            CvxpyLayer(prob, [a, b], outputs, gp=True, mode=mode)(*values, solver_args=TIGHT)
        )
        for mode in ("torch", "scs", "scs-block")
    }
    for mode in ("torch", "scs-block"):
        torch.testing.assert_close(results[mode], results["scs"], atol=1e-6, rtol=1e-6)
    assert torch.isfinite(results["scs"]).all() and (results["scs"][2:].abs() > 0).any()


def test_one_gp_in_both_parameter_orders():
    """Two layers over one problem whose parameters hold no values (cvxpy's DGP reduction,
    asked to canonicalize the same problem twice, refreshed log-parameters from those empty
    values and failed): both compile, and agree in value and gradient, whatever the order
    of `parameters=`, with cvxpy's DGP solve and with finite differences."""
    prob, params, variables = _gp()
    order = [2, 1, 0]
    layers = [
        CvxpyLayer(prob, params, variables, gp=True),
        CvxpyLayer(prob, [params[k] for k in order], variables, gp=True),
    ]
    assert all(p.value is None for p in params)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    results = []
    for layer, perm in zip(layers, ([0, 1, 2], order)):
        leaves = [VALUES[k].clone().requires_grad_() for k in range(3)]
        outputs = layer(*[leaves[k] for k in perm], solver_args=TIGHT)
        sum(wk * out.sum() for wk, out in zip(w, outputs)).backward()
        results.append((torch.stack(outputs).detach(), [leaf.grad for leaf in leaves]))
    # each solve meets eps = 1e-9 on the log problem: both agree far below Clarabel's 1e-5
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-7, rtol=1e-7)
    for g0, g1 in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-6)
    for i in range(3):
        for prm, v in zip(params, VALUES):
            prm.value = float(v[i])
        prob.solve(gp=True, solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10)
        for var, out in zip(variables, results[1][0]):
            np.testing.assert_allclose(float(out[i]), var.value, rtol=5e-5)  # Clarabel: ~1e-5
    # central differences, step 1e-5: truncation ~1e-10 · |f‴|, solver error 1e-9 / 1e-5
    layer, step = layers[1], 1e-5
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[1] = step

        def loss(values, layer=layer):
            outputs = layer(*[values[j] for j in order], solver_args=TIGHT)
            return sum(wk * out.sum() for wk, out in zip(w, outputs))

        plus = [v + e if j == k else v for j, v in enumerate(VALUES)]
        minus = [v - e if j == k else v for j, v in enumerate(VALUES)]
        fd = (loss(plus) - loss(minus)) / (2 * step)
        torch.testing.assert_close(results[1][1][k][1], fd, atol=1e-4, rtol=1e-3)
