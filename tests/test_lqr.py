"""LQR: the Riccati solver and its backward, and the layer's detection of LQR problems."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, lqr, solve_qp
from cvxlayer.fastpaths import LQRForm

TIGHT = {"eps": 1e-10, "max_iters": 200_000}


def _random_lqr(rng, B=2, n=3, m=2, T=4):
    N = n + m
    R = rng.standard_normal((B, T, N, N))
    C = R @ R.transpose(0, 1, 3, 2) + 0.5 * np.eye(N)
    c = rng.standard_normal((B, T, N))
    F = 0.5 * rng.standard_normal((B, T - 1, n, N))
    f = rng.standard_normal((B, T - 1, n))
    x0 = rng.standard_normal((B, n))
    return [torch.tensor(t) for t in (x0, C, c, F, f)]


def _as_qp(x0, C, c, F, f):
    """The same problem as a QP in z = (τ_0, …, τ_{T−1})."""
    B, T, N, _ = C.shape
    n = x0.shape[1]
    Q = torch.zeros(B, T * N, T * N, dtype=C.dtype)
    for t in range(T):
        Q[:, t * N : (t + 1) * N, t * N : (t + 1) * N] = C[:, t]
    A = torch.zeros(B, T * n, T * N, dtype=C.dtype)
    b = torch.zeros(B, T * n, dtype=C.dtype)
    A[:, :n, :n] = torch.eye(n)
    b[:, :n] = x0
    for t in range(T - 1):
        r = (t + 1) * n
        A[:, r : r + n, (t + 1) * N : (t + 1) * N + n] = torch.eye(n)
        A[:, r : r + n, t * N : (t + 1) * N] = -F[:, t]
        b[:, r : r + n] = f[:, t]
    return Q, c.reshape(B, -1), A, b


def test_lqr_matches_the_kkt_solution():
    data = _random_lqr(np.random.default_rng(0))
    x, u, _ = lqr(*data)
    Q, q, A, b = _as_qp(*data)
    z = solve_qp(Q, q, A=A, b=b, eps=1e-12)
    torch.testing.assert_close(torch.cat([x, u], -1).reshape(z.shape), z, atol=1e-9, rtol=0)


def test_lqr_gradcheck_all_inputs_and_outputs():
    data = _random_lqr(np.random.default_rng(1), B=1, n=2, m=1, T=3)
    leaves = tuple(t.clone().requires_grad_() for t in data)
    assert torch.autograd.gradcheck(lambda *a: lqr(*a), leaves)


def test_lqr_shared_arguments_and_errors():
    x0, C, c, F, f = _random_lqr(np.random.default_rng(2))
    x, u, lam = lqr(x0, C[0], c, F[0], f)  # shared costs and dynamics
    assert x.shape == (2, 4, 3) and u.shape == (2, 4, 2) and lam.shape == (2, 4, 3)
    x1, _, _ = lqr(x0[0], C[0], c[0], F[0], f[0])
    assert x1.shape == (4, 3)
    with pytest.raises(ValueError, match="shapes"):
        lqr(x0, C, c[:, :-1], F, f)


def _control_problem(n=3, m=2, T=5, bounds=False, terminal=False):
    A, Bm, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
    W = cp.Parameter((n, n))  # state cost weight: ‖W x_t‖², lifted by cvxpy
    X, U = cp.Variable((n, T + 1)), cp.Variable((m, T))
    cost = sum(cp.sum_squares(W @ X[:, t]) for t in range(T + 1)) + cp.sum_squares(U)
    cons = [X[:, 0] == x0] + [X[:, t + 1] == A @ X[:, t] + Bm @ U[:, t] for t in range(T)]
    if bounds:
        cons.append(cp.abs(U) <= 0.5)
    if terminal:
        cons.append(X[:, T] == 0)
    return cp.Problem(cp.Minimize(cost), cons), [A, Bm, x0, W], [X, U]


def _values(rng, B=3, n=3, m=2):
    return [
        torch.tensor(0.5 * rng.standard_normal((B, n, n))),
        torch.tensor(rng.standard_normal((B, n, m))),
        torch.tensor(rng.standard_normal((B, n))),
        torch.tensor(np.eye(n) + 0.3 * rng.standard_normal((B, n, n))),
    ]


def test_layer_detects_lqr_and_matches_generic_path_and_clarabel():
    prob, params, variables = _control_problem()
    fast = CvxpyLayer(prob, params, variables)
    assert isinstance(fast.fast_path, LQRForm)
    generic = CvxpyLayer(prob, params, variables, fast_path=False)
    values = _values(np.random.default_rng(3))
    leaves = [[v.clone().requires_grad_() for v in values] for _ in range(2)]
    (x1, u1), info = fast(*leaves[0], return_status=True)
    (x2, u2) = generic(*leaves[1], solver_args=TIGHT)
    assert info.mode == "lqr"
    torch.testing.assert_close(x1, x2, atol=1e-7, rtol=0)
    torch.testing.assert_close(u1, u2, atol=1e-7, rtol=0)
    for i in range(3):
        for prm, v in zip(params, values):
            prm.value = v[i].numpy()
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        np.testing.assert_allclose(u1[i].detach().numpy(), variables[1].value, atol=1e-6)
    w = torch.linspace(-1, 1, u1[0].numel(), dtype=torch.float64).reshape(u1[0].shape)
    ((u1 * w).sum() + x1.square().sum()).backward()
    ((u2 * w).sum() + x2.square().sum()).backward()
    for p, q in zip(*leaves):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["bounds", "terminal"])
def test_constrained_control_problems_on_the_qp_path(variant):
    """Bounds make it MPC (tests/test_mpc.py), a terminal equality a general QP; the QP
    path, asked for by name, solves both."""
    prob, params, variables = _control_problem(**{variant: True})
    path = CvxpyLayer(prob, params, variables).fast_path
    assert path.name == ("mpc" if variant == "bounds" else "qp")
    layer = CvxpyLayer(prob, params, variables, fast_path="qp")  # any batch size
    values = _values(np.random.default_rng(4))
    (x, u), info = layer(*values, return_status=True)
    assert info.mode in ("qp", "qp+scs")
    if variant == "bounds":
        assert float(u.abs().max()) <= 0.5 + 1e-6
