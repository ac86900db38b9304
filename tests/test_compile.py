"""The compile stage against cvxpy's own numbers."""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch
from problems import CASES, solve_reference

from cvxlayer import CvxpyLayer
from cvxlayer.compile import compile_problem


def test_parametric_map_reproduces_cvxpy_data():
    """P, A, b, c from our torch map equal cvxpy's get_problem_data at the same values."""
    for case in CASES.values():
        values = case.draw(np.random.default_rng(7))
        for param, value in zip(case.parameters, values):
            param.value = value
        data, _, _ = case.problem.get_problem_data(cp.SCS, solver_opts={"use_quad_obj": True})
        compiled = compile_problem(case.problem, case.parameters, case.variables)
        program = compiled.cone_program([torch.as_tensor(v)[None] for v in values])
        ((A, b, c, P),) = program.to_scipy()
        np.testing.assert_allclose(A.toarray(), data["A"].toarray(), atol=1e-12, err_msg=case.name)
        np.testing.assert_allclose(b, data["b"], atol=1e-12, err_msg=case.name)
        np.testing.assert_allclose(c, data["c"], atol=1e-12, err_msg=case.name)
        P_ref = np.triu(data["P"].toarray()) if data.get("P") is not None else None
        if P is None:
            assert P_ref is None or not P_ref.any(), case.name
        else:
            np.testing.assert_allclose(P.toarray(), P_ref, atol=1e-12, err_msg=case.name)


def test_map_is_differentiable_to_parameters():
    case = CASES["qp"]
    compiled = compile_problem(case.problem, case.parameters, case.variables)
    values = [
        torch.as_tensor(v)[None].requires_grad_() for v in case.draw(np.random.default_rng(8))
    ]
    program = compiled.cone_program(values)
    program.b.sum().backward()
    h, b = values[3], values[5]  # b = [b_eq; h] up to order: both feed the offset vector
    assert torch.all(h.grad == 1) and torch.all(b.grad == 1)


def test_lowered_variables_are_recovered():
    """Diagonal and PSD variables come back full, matching cvxpy's own solution."""
    C = cp.Parameter((3, 3), symmetric=True)
    D = cp.Variable((3, 3), diag=True)
    X = cp.Variable((3, 3), PSD=True)
    prob = cp.Problem(
        cp.Minimize(cp.sum_squares(X - C) + cp.sum_squares(D - C)), [cp.trace(X) <= 1]
    )
    M = np.random.default_rng(9).standard_normal((3, 3))
    Cv = M + M.T
    layer = CvxpyLayer(prob, [C], [D, X])
    D_out, X_out = layer(torch.as_tensor(Cv), solver_args={"eps": 1e-10})
    C.value = Cv
    prob.solve(solver=cp.CLARABEL)
    np.testing.assert_allclose(D_out.numpy(), D.value.toarray(), atol=1e-5)
    np.testing.assert_allclose(X_out.numpy(), X.value, atol=1e-5)


def test_symmetric_parameter_reads_its_upper_triangle():
    """cvxpylayers' convention: a non-symmetric value of a symmetric parameter is its upper
    triangle mirrored (with a warning); the gradient is the sensitivity to C_ij (i ≤ j) with
    both mirrored entries moving, zero below the diagonal. Checked by gradcheck on every
    entry of a non-symmetric value (central differences, step 1e-6: error ~h² + eps/h)."""
    case = CASES["psd"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    C, t = (torch.as_tensor(v) for v in case.draw(np.random.default_rng(11)))
    upper = torch.triu(C)
    mirrored = upper + upper.T - torch.diag(torch.diag(C))
    skewed = mirrored + torch.tril(torch.ones(3, 3, dtype=torch.float64), -1)
    args = {"eps": 1e-10}
    with pytest.warns(UserWarning, match="upper triangle"):
        (X_skewed,) = layer(skewed, t, solver_args=args)
    (X,) = layer(mirrored, t, solver_args=args)
    torch.testing.assert_close(X_skewed, X, atol=1e-9, rtol=0)
    (ref,) = solve_reference(case, [mirrored.numpy(), t.numpy()])
    np.testing.assert_allclose(X.numpy(), ref, atol=1e-5)

    leaf = skewed.clone().requires_grad_()
    (out,) = layer(leaf, t, solver_args=args)
    weights = torch.arange(9.0, dtype=torch.float64).reshape(3, 3)
    (out * weights).sum().backward()
    assert torch.all(torch.tril(leaf.grad, -1) == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.autograd.gradcheck(
            lambda c: (layer(c, t, solver_args=args)[0] * weights).sum(),
            (skewed.clone().requires_grad_(),),
            eps=1e-6,
            atol=1e-5,
            rtol=1e-4,
        )
