"""Constrained LQR (MPC): the interior point with the Riccati recursion (`fastpaths/mpc.py`)
against Clarabel, finite differences and the QP path, and the layer's detection."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer
from cvxlayer.fastpaths.mpc import mpc

CLARABEL_TIGHT = {"tol_gap_abs": 1e-11, "tol_gap_rel": 1e-11, "tol_feas": 1e-11}


def _box_lqr(n, m, T, form="abs", state_bound=None):
    """min ½Σ‖x_t‖² + ½Σ‖u_t‖² s.t. the dynamics and |u_t| ≤ u_max (written with abs, or as
    two bounds), optionally |x_t| ≤ state_bound; A, B, x_init and u_max are parameters."""
    A, Bm, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
    u_max = cp.Parameter(nonneg=True)
    X, U = cp.Variable((n, T + 1)), cp.Variable((m, T))
    cons = [X[:, 0] == x0] + [X[:, t + 1] == A @ X[:, t] + Bm @ U[:, t] for t in range(T)]
    if form == "abs":
        cons.append(cp.abs(U) <= u_max)
    else:
        cons += [U - u_max <= 0, -U - u_max <= 0]
    if state_bound is not None:
        cons.append(cp.abs(X[:, 1:]) <= state_bound)
    cost = 0.5 * cp.sum_squares(X) + 0.5 * cp.sum_squares(U)
    return cp.Problem(cp.Minimize(cost), cons), [A, Bm, x0, u_max], [X, U]


def _values(seed, B, n, m, spread=0.1, x_scale=1.0, u_max=0.3):
    gen = torch.Generator().manual_seed(seed)
    A = torch.eye(n, dtype=torch.float64) + spread * torch.randn(
        B, n, n, generator=gen, dtype=torch.float64
    )
    Bm = torch.randn(B, n, m, generator=gen, dtype=torch.float64)
    x0 = x_scale * torch.randn(B, n, generator=gen, dtype=torch.float64)
    return [A, Bm, x0, torch.full((B,), u_max, dtype=torch.float64)]


def _clarabel(prob, params, variables, values, i):
    for p, v in zip(params, values):
        p.value = v[i].numpy()
    prob.solve(solver=cp.CLARABEL, **CLARABEL_TIGHT)
    return [v.value for v in variables]


@pytest.mark.parametrize("form", ["abs", "bounds"])
def test_layer_detects_mpc_and_matches_clarabel(form):
    prob, params, variables = _box_lqr(4, 2, 8, form)
    layer = CvxpyLayer(prob, params, variables)
    assert layer.fast_path.name == "mpc"
    assert "MPC with 4 states, 2 controls, horizon 8" in layer.fast_path.describe()
    values = _values(0, 6, 4, 2)
    (x, u), info = layer(*values, return_status=True)
    assert info.mode == "mpc"
    assert float(u.abs().amax()) > 0.3 - 1e-9  # bounds are active
    for i in range(6):
        xr, ur = _clarabel(prob, params, variables, values, i)
        # the polished active set's answer: Clarabel's to its own accuracy
        np.testing.assert_allclose(u[i].numpy(), ur, atol=1e-7)
        np.testing.assert_allclose(x[i].numpy(), xr, atol=1e-7)


def test_mpc_gradients_match_finite_differences():
    prob, params, variables = _box_lqr(3, 2, 6)
    values = _values(1, 3, 3, 2, spread=0.3)
    layer = CvxpyLayer(prob, params, variables)
    w = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(2, 6)

    def loss(vals):
        x, u = layer(*vals)
        return (u * w).sum() + x.square().sum()

    leaves = [v.clone().requires_grad_() for v in values]
    loss(leaves).backward()
    # central differences along random directions: truncation O(h²) ~ 1e-10 relative and
    # rounding ~1e-14 / h (the answer is its active set's exact solution): 1e-7 holds
    gen = torch.Generator().manual_seed(2)
    h = 1e-5
    for k, value in enumerate(values):
        direction = torch.randn(value.shape, generator=gen, dtype=torch.float64)
        shift = [v.clone() for v in values]
        shift[k] = value + h * direction
        up = loss(shift)
        shift[k] = value - h * direction
        down = loss(shift)
        fd = float(up - down) / (2 * h)
        exact = float((leaves[k].grad * direction).sum())
        assert abs(fd - exact) <= 1e-7 * max(1.0, abs(fd))


def test_mpc_function_gradcheck():
    """`mpc` with general stage rows (inputs and states), every input, at a nondegenerate
    solution; gradcheck's central differences (h = 1e-6) against the tolerance 1e-5."""
    gen = torch.Generator().manual_seed(3)
    B, n, m, S = 2, 2, 2, 4
    N = n + m

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    R = 0.5 * randn(B, S, N, N)
    C = R @ R.transpose(-1, -2) + torch.eye(N, dtype=torch.float64)
    c = 0.5 * randn(B, S, N)
    eye = torch.eye(n, dtype=torch.float64).expand(B, S - 1, n, n)
    F = torch.cat([eye, randn(B, S - 1, n, m)], -1)
    f = 0.1 * randn(B, S - 1, n)
    G = torch.cat([torch.eye(N, dtype=torch.float64), -torch.eye(N, dtype=torch.float64)])
    G = G.expand(B, S, 2 * N, N) + 0.05 * randn(B, S, 2 * N, N)
    h = 0.4 + 0.1 * randn(B, S, 2 * N).abs()
    x0 = 0.1 * randn(B, n)  # inside stage 0's state rows
    rows = np.full(S, 2 * N)
    xi, _, mu, status, _ = mpc(x0, C, c, F, f, G, h, rows, 1e-10, 1e-10)
    assert all(st.ok for st in status) and int((mu > 1e-6).sum()) >= 2  # some rows active

    def run(*args):
        xi, lam, mu, _, _ = mpc(*args, rows, 1e-10, 1e-10)
        return xi, lam, mu

    inputs = [t.clone().requires_grad_() for t in (x0, C, c, F, f, G, h)]
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_unstable_dynamics_over_long_horizons_converge():
    """|eig A| up to ~1.3 over 30 and 150 steps: the states grow by 1e2 to 1e7 and the
    multipliers by far more; every element is solved by the interior point itself (no
    generic fallback, never a false 'infeasible'), at 30 steps within 1e-6 (relative to the
    states' size) of Clarabel, which fails beyond ~40 steps here."""
    for T in (30, 150):
        prob, params, variables = _box_lqr(10, 2, T)
        values = _values(12, 4, 10, 2)
        (x, u), info = CvxpyLayer(prob, params, variables)(*values, return_status=True)
        assert info.mode == "mpc" and all(st.ok for st in info.status)
        assert int(info.iterations.max()) <= 40
        assert float(u.abs().amax()) <= 0.3 + 1e-9
        if T == 30:
            for i in range(4):
                xr, ur = _clarabel(prob, params, variables, values, i)
                scale = max(1.0, float(np.abs(xr).max()))
                np.testing.assert_allclose(u[i].numpy(), ur, atol=1e-6 * scale)
                np.testing.assert_allclose(x[i].numpy(), xr, atol=1e-6 * scale)


def test_infeasible_state_bounds_get_a_status_and_the_rest_is_solved():
    prob, params, variables = _box_lqr(3, 1, 5, state_bound=0.5)
    values = _values(4, 3, 3, 1, spread=0.0, x_scale=0.05)
    values[2][1] = torch.tensor([20.0, 0.0, 0.0], dtype=torch.float64)  # cannot be reached
    layer = CvxpyLayer(prob, params, variables)
    (x, u), info = layer(*values, return_status=True)
    assert info.mode.startswith("mpc+")  # element 1 went to the generic mode
    assert info.status[1].value.startswith("infeasible")
    for i in (0, 2):
        assert info.status[i].ok
        _, ur = _clarabel(prob, params, variables, values, i)
        np.testing.assert_allclose(u[i].numpy(), ur, atol=1e-7)


def test_float32_inputs_keep_their_dtype():
    prob, params, variables = _box_lqr(3, 2, 5)
    values = _values(5, 2, 3, 2)
    (x64, u64) = CvxpyLayer(prob, params, variables)(*values)
    (x32, u32) = CvxpyLayer(prob, params, variables)(*[v.float() for v in values])
    assert u32.dtype == torch.float32
    torch.testing.assert_close(u32, u64.float(), atol=1e-5, rtol=0)


def test_warm_start_from_a_previous_call():
    """The previous call's SolveInfo starts the next one (shifted by a step, as in
    receding-horizon control): same answers (both polished to their active set's exact
    solution), fewer iterations when restarting the same problem; bad warm starts raise."""
    prob, params, variables = _box_lqr(4, 2, 10)
    layer = CvxpyLayer(prob, params, variables)
    values = _values(6, 5, 4, 2)
    (x, u), info = layer(*values, return_status=True)
    (x2, u2), info2 = layer(*values, solver_args={"warm_start": info}, return_status=True)
    torch.testing.assert_close(u2, u, atol=1e-8, rtol=0)
    assert int(info2.iterations.sum()) < int(info.iterations.sum())
    # one step later: x_0 moves on, the guess is shifted; chunks get their rows
    A, Bm = values[0], values[1]
    values[2] = (A @ values[2].unsqueeze(-1) + Bm @ u[:, :, :1]).squeeze(-1)
    cold = layer(*values)
    args = {"warm_start": info, "warm_start_shift": 1, "max_batch": 2}
    (x3, u3), info3 = layer(*values, solver_args=args, return_status=True)
    assert info3.mode == "mpc" and all(st.ok for st in info3.status)
    torch.testing.assert_close(u3, cold[1], atol=1e-8, rtol=0)
    with pytest.raises(ValueError, match="same batch size"):
        layer(*[v[:2] for v in values], solver_args={"warm_start": info})
    with pytest.warns(UserWarning, match="warm_start.*SolveInfo"):  # not ours: ignored
        layer(*values, solver_args={"warm_start": u})


def test_without_the_compiled_kernels_the_qp_path_solves_it(monkeypatch):
    """Where the compiled interior point does not run (no numba; CUDA tensors take the same
    branch), the MPC path hands the problem to the QP path: same answers."""
    from cvxlayer.fastpaths import mpc as mpc_module

    prob, params, variables = _box_lqr(3, 2, 5)
    values = _values(7, 3, 3, 2)
    layer = CvxpyLayer(prob, params, variables)
    (_, u_mpc), info = layer(*values, return_status=True)
    monkeypatch.setattr(mpc_module, "kernels", lambda: None)
    assert layer.fast_path.pays_off(3, torch.device("cpu"), "scs")
    leaves = [v.clone().requires_grad_() for v in values]
    (_, u_qp), info_qp = layer(*leaves, return_status=True)
    assert all(st.ok for st in info_qp.status)
    torch.testing.assert_close(u_qp, u_mpc, atol=1e-7, rtol=0)
    u_qp.sum().backward()
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves)


def test_mpc_gradients_match_the_residual_maps_dense_derivative():
    """Against diffcp's method (the residual map's dense derivative, `fast_path=False`, at
    native SCS's solution to 1e-11), with state and control bounds active."""
    prob, params, variables = _box_lqr(3, 2, 5, form="bounds", state_bound=0.7)
    values = _values(8, 3, 3, 2, spread=0.3, x_scale=0.5)  # a state bound is active
    grads = []
    for fast_path, args in ((True, {}), (False, {"eps": 1e-11, "max_iters": 200_000})):
        layer = CvxpyLayer(prob, params, variables, fast_path=fast_path)
        leaves = [v.clone().requires_grad_() for v in values]
        x, u = layer(*leaves, solver_args=args)
        (
            u.sum() + (x * torch.linspace(-1, 1, 18, dtype=torch.float64).reshape(3, 6)).sum()
        ).backward()
        grads.append([leaf.grad for leaf in leaves])
    assert CvxpyLayer(prob, params, variables).fast_path.name == "mpc"
    for g_mpc, g_ref in zip(*grads):
        torch.testing.assert_close(g_mpc, g_ref, rtol=1e-6, atol=1e-6 * float(g_ref.abs().max()))


def test_mpc_function_names_a_wrong_shape():
    B, n, m, S = 2, 2, 1, 3
    N = n + m
    zeros = {"dtype": torch.float64}
    args = [
        torch.zeros(B, n, **zeros),
        torch.eye(N, **zeros).expand(B, S, N, N),
        torch.zeros(B, S, N, **zeros),
        torch.zeros(B, S - 1, n, N, **zeros),
        torch.zeros(B, S - 1, n, **zeros),
        torch.zeros(B, S, 2, N, **zeros),
        torch.ones(B, S, 2, **zeros),
    ]
    rows = np.full(S, 2)
    xi, *_ = mpc(*args, rows)
    assert xi.shape == (B, S, N)
    bad = list(args)
    bad[3] = torch.zeros(B, S, n, N, **zeros)  # one stage too many
    with pytest.raises(ValueError, match="F has shape"):
        mpc(*bad, rows)
    with pytest.raises(ValueError, match="rows must lie"):
        mpc(*args, np.full(S, 3))
