"""The QP path's dual active set (DAQP) on the cases it decides itself: a singular Q, and
weakly active constraints, whose derivative follows a stated rule."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, solve_qp
from cvxlayer.fastpaths import active_set, active_set_kernels, qp


def test_singular_q_is_solved_by_proximal_iterations():
    """Q = 0 (a box LP): DAQP's proximal outer iterations reach the vertex −sign(q)."""
    n = 4
    q = torch.tensor([[1.0, -2.0, 0.5, -0.1]], dtype=torch.float64)
    G = torch.cat([torch.eye(n), -torch.eye(n)]).double()
    h = torch.ones(2 * n, dtype=torch.float64)
    Q = torch.zeros(n, n, dtype=torch.float64)
    z, lam, _, solved, *_ = active_set.solve_each(
        Q[None].numpy(), q.numpy(), G[None].numpy(), h[None].numpy(),
        np.zeros((1, 0, n)), np.zeros((1, 0)), 1e-9, 1,
    )  # fmt: skip
    assert solved[0]
    np.testing.assert_allclose(z[0], -np.sign(q[0].numpy()), atol=1e-12)
    # multipliers in our signs: Qz + q + Gᵀλ = 0, λ ≥ 0
    np.testing.assert_allclose(q[0].numpy() + G.numpy().T @ lam[0], 0, atol=1e-12)
    assert (lam >= 0).all()
    torch.testing.assert_close(
        solve_qp(Q, q, G, h, method="active_set"), -torch.sign(q), atol=1e-12, rtol=0
    )


def test_weakly_active_rows_are_differentiated_as_not_binding():
    """Projection z = min(a, h) with a_0 = h_0: row 0 is weakly active (λ_0 = 0, s_0 = 0),
    and z is not differentiable there. The rule (both methods): a row with λ = 0 is left out
    of the active set, so the derivative is that of the side where it does not bind,
    dz_0/da_0 = 1 and dz_0/dh_0 = 0: the one-sided derivatives for a_0 decreasing and h_0
    increasing, checked here by one-sided differences (exact: z is piecewise linear)."""
    n = 4
    a = torch.tensor([1.0, 0.3, -2.0, 5.0], dtype=torch.float64)
    h = torch.ones(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    for method in ("active_set", "ipm"):
        a_leaf, h_leaf = a.clone().requires_grad_(), h.clone().requires_grad_()
        z = solve_qp(eye, -a_leaf, eye, h_leaf, eps=1e-10, method=method)
        torch.testing.assert_close(z.detach(), torch.minimum(a, h), atol=1e-9, rtol=0)
        z[0].backward()
        assert torch.allclose(a_leaf.grad, eye[0]) and torch.all(h_leaf.grad == 0)
        t = 1e-3
        down = solve_qp(eye, -(a - t * eye[0]), eye, h, eps=1e-10, method=method)
        up = solve_qp(eye, -a, eye, h + t * eye[0], eps=1e-10, method=method)
        assert abs((z[0].item() - down[0].item()) / t - 1) < 1e-6
        assert abs((up[0].item() - z[0].item()) / t) < 1e-6


def test_layer_gradients_match_diffcp_with_equalities_and_active_rows():
    """A batched QP with equalities and inequalities (several active in each element) on the
    QP path (the active set): gradients w.r.t. every parameter equal diffcp's derivative
    at Clarabel's solution (eps 1e-10). Ours is the derivative at the exact solution of the
    active set; diffcp's is taken at an interior point whose active rows keep slacks of
    ~1e-9 (with multipliers ~1), which moves it by ~1e-5 relative (measured 6e-6 on a
    largest entry of 2.5; central differences of Clarabel's solutions at 1e-12 agree with
    ours to 1e-9 there): hence 1e-4 relative here. gradcheck (tests/test_qp.py) checks the
    active set's derivative itself to its own bound."""
    n, m, p, B = 6, 8, 2, 3
    gen = torch.Generator().manual_seed(21)
    x = cp.Variable(n)
    L, q = cp.Parameter((n, n)), cp.Parameter(n)
    G, h, A, b = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter((p, n)), cp.Parameter(p)
    objective = 0.5 * cp.sum_squares(L @ x) + q @ x
    prob = cp.Problem(cp.Minimize(objective), [G @ x <= h, A @ x == b])
    params = [L, q, G, h, A, b]
    z0 = torch.randn(B, n, generator=gen, dtype=torch.float64)
    values = [
        torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(B, n, n, generator=gen).double(),
        3 * torch.randn(B, n, generator=gen, dtype=torch.float64),
        torch.randn(B, m, n, generator=gen, dtype=torch.float64),
    ]
    values.append((values[2] @ z0.unsqueeze(-1)).squeeze(-1) + 0.1)
    values.append(torch.randn(B, p, n, generator=gen, dtype=torch.float64))
    values.append((values[4] @ z0.unsqueeze(-1)).squeeze(-1))
    w = torch.randn(B, n, generator=gen, dtype=torch.float64)
    grads = {}
    for name, layer, args in (  # fmt: skip
        ("qp", CvxpyLayer(prob, params, [x]), {"eps": 1e-10}),
        (
            "diffcp",
            CvxpyLayer(
                prob,
                params,
                [x],
                mode="clarabel",
                fast_path=False,
                solver_args={"backward": "diffcp"},
            ),
            {"eps": 1e-10},
        ),
    ):
        leaves = [v.clone().requires_grad_(True) for v in values]
        (sol,), info = layer(*leaves, solver_args=args, return_status=True)
        (w * sol).sum().backward()
        grads[name] = [leaf.grad for leaf in leaves]
        if name == "qp":
            assert info.mode == "qp"
    active = (values[3] - (values[2] @ sol.detach().unsqueeze(-1)).squeeze(-1)) < 1e-8
    assert active.sum(1).min() >= 1  # every element has active rows
    for ours, ref in zip(grads["qp"], grads["diffcp"]):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_backward_is_the_active_sets_exact_kkt_system_at_large_multipliers():
    """Box-constrained LQR (written with abs, so with auxiliary variables whose rows can all
    be inactive) as a QP with large multipliers: the backward solves the active set's KKT
    system exactly (active rows as equalities, the others left out). Reference: the residual
    map's dense derivative at native SCS's solution to 1e-11 (an independent method). With
    H = 1e-8 / 1e8 standing for the two kinds of rows the gradients were 1.4e-4 off."""
    n, m, T = 3, 2, 6
    A, Bm, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
    X, U = cp.Variable((n, T + 1)), cp.Variable((m, T))
    cons = [X[:, 0] == x0, cp.abs(U) <= 0.3]
    cons += [X[:, t + 1] == A @ X[:, t] + Bm @ U[:, t] for t in range(T)]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X) + cp.sum_squares(U)), cons)
    gen = torch.Generator().manual_seed(1)
    f64 = {"generator": gen, "dtype": torch.float64}
    values = [
        torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(3, n, n, **f64),
        torch.randn(3, n, m, **f64),
        torch.randn(3, n, **f64),
    ]
    weights = torch.linspace(-1, 1, m * T, dtype=torch.float64).reshape(m, T)
    grads = []
    for fast_path, args in (("qp", {}), (False, {"eps": 1e-11, "max_iters": 200_000})):
        layer = CvxpyLayer(prob, [A, Bm, x0], [X, U], fast_path=fast_path)
        leaves = [v.clone().requires_grad_() for v in values]
        x, u = layer(*leaves, solver_args=args)
        ((u * weights).sum() + x.square().sum()).backward()
        grads.append([leaf.grad for leaf in leaves])
    for g_qp, g_ref in zip(*grads):
        torch.testing.assert_close(g_qp, g_ref, rtol=1e-6, atol=1e-6 * float(g_ref.abs().max()))


def test_dependent_active_rows_leave_the_batched_kkt_solve_for_the_engine():
    """Two copies of one active row make the active set's KKT matrix singular: the batched
    LU reports it and the element goes to the compiled engine's regularized solve. With
    Q = I and rows e₀ (twice) active, [Q Cᵀ; C 0](x, w) = (g, 0) has the unique x =
    (0, g₁, g₂); only the split w₀ + w₁ = g₀ of the multipliers is not unique."""
    Q = torch.eye(3, dtype=torch.float64).expand(2, 3, 3)
    G = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    G = G.expand(2, 3, 3)
    active = torch.tensor([[True, True, False]] * 2)
    g = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    none = torch.zeros(2, 0, 3, dtype=torch.float64)  # no equality rows
    arrays = [t.numpy() for t in (Q, none, G, active)]
    bounds = active_set.bound_rows(arrays[2])[:2]  # row 0 bounds z₀; its copy stays general
    *_, ok = qp._active_set_kkt(*arrays, g.numpy(), np.zeros((2, 0)), np.zeros((2, 3)), bounds)
    assert not ok.any()
    data = qp.QPData(Q, g, G, torch.ones(2, 3, dtype=torch.float64), none, none[:, :, 0])
    system = qp.active_set_system(data, active, factor=False)
    x, w, _ = qp._adjoint_solve(data, system, g, torch.zeros_like(g), none[:, :, 0])
    torch.testing.assert_close(
        x, torch.stack([torch.zeros(2), g[:, 1], g[:, 2]], 1), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(w[:, 0] + w[:, 1], g[:, 0], atol=1e-9, rtol=0)
    assert (w[:, 2] == 0).all()


def test_least_distance_form_gives_daqps_solutions_and_the_same_backward():
    """DAQP in least-distance form (Q = L Lᵀ, u = Lᵀz) returns the solutions and
    multipliers of DAQP on Q itself; an element whose Q is singular (here 0: a box LP
    written with general rows) keeps Q and DAQP's proximal iterations. The backward through
    the factors (`active_set_kernels.adjoint`, one Cholesky of M_E M_Eᵀ) solves the active
    set's KKT system as the batched LU does (`_active_set_kkt`), to rounding."""
    n, m, p, B = 5, 10, 2, 4
    gen = torch.Generator().manual_seed(7)
    f64 = {"generator": gen, "dtype": torch.float64}
    R = torch.randn(B, n, n, **f64)
    Q = R @ R.transpose(1, 2) + 0.1 * torch.eye(n, dtype=torch.float64)
    Q[3] = 0.0
    G = torch.randn(B, m, n, **f64)
    G[3, :n], G[3, n : 2 * n] = torch.eye(n), -torch.eye(n)  # rows, not bounds: G[3] ≠ G[0]
    z0 = 0.1 * torch.randn(B, n, **f64)
    h = (G @ z0.unsqueeze(-1)).squeeze(-1) + 0.1 * torch.rand(B, m, **f64)
    h[3] = 1.0
    A = torch.randn(B, p, n, **f64)
    b = (A @ z0.unsqueeze(-1)).squeeze(-1)
    q = 3 * torch.randn(B, n, **f64)
    arrays = [t.numpy() for t in (Q, q, G, h, A, b)]
    plain = active_set.solve_each(*arrays, 1e-10, 1)
    *factored, ldp = active_set.solve_each(*arrays, 1e-10, 1, factor=True)
    assert plain[3].all() and factored[3].all()
    assert ldp.ok.tolist() == [True, True, True, False]
    for a, b_ in zip(plain[:3], factored[:3]):
        np.testing.assert_allclose(a, b_, atol=1e-9, rtol=0)
    z, lam, nu = factored[:3]
    assert ((lam > 0).sum(1)[:3] >= 1).all()  # active rows in every factored element
    g_x, g_nu, g_lam = (torch.randn(B, k, **f64).numpy() for k in (n, p, m))
    active = lam > 0
    out = (np.zeros((B, n)), np.zeros((B, p)), np.zeros((B, m)), np.zeros(B, dtype=bool))
    index = np.flatnonzero(ldp.ok)
    active_set_kernels.adjoint(ldp, *arrays[:1], A.numpy(), G.numpy(), active, g_x, g_nu,
                               g_lam, index, 1e-11, out)  # fmt: skip
    none = (np.zeros(0, dtype=np.int64),) * 2
    x_lu, w_lu, v_lu, ok = qp._active_set_kkt(
        Q.numpy(), A.numpy(), G.numpy(), active, g_x, g_nu, g_lam, none
    )
    assert out[3][index].all() and ok[index].all()
    for ours, lu in zip(out[:3], (x_lu, v_lu, w_lu)):
        np.testing.assert_allclose(ours[index], lu[index], atol=1e-10, rtol=0)


def test_dependent_active_rows_leave_the_least_distance_backward_for_the_engine():
    """Two copies of one active row make M_E M_Eᵀ singular: the least-distance backward
    reports the element, and the compiled engine's regularized solve takes it (the unique
    x and the split of the multipliers as in the test above)."""
    Q = (2 * torch.eye(3, dtype=torch.float64)).repeat(2, 1, 1)
    G = torch.tensor([[1.0, 1, 0], [1.0, 1, 0], [0, 1.0, 1]], dtype=torch.float64)
    G = G.repeat(2, 1, 1)
    active = torch.tensor([[True, True, False]] * 2)
    g = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    none = torch.zeros(2, 0, 3, dtype=torch.float64)
    data = qp.QPData(Q, g, G, torch.ones(2, 3, dtype=torch.float64), none, none[:, :, 0])
    ldp = active_set_kernels.least_distance(Q.numpy(), g.numpy(), G.numpy())
    out = (np.zeros((2, 3)), np.zeros((2, 0)), np.zeros((2, 3)), np.zeros(2, dtype=bool))
    arrays = [t.numpy() for t in (Q, none, G, active)]
    active_set_kernels.adjoint(
        ldp, *arrays, g.numpy(), np.zeros((2, 0)), np.zeros((2, 3)), np.arange(2), 1e-11, out
    )
    assert ldp.ok.all() and not out[3].any()
    system = qp.active_set_system(data, active, factor=False)
    x, w, _ = qp._adjoint_solve(
        data, system, g, torch.zeros_like(g), none[:, :, 0], data.arrays(), ldp
    )
    # x ⟂ (1, 1, 0) on the active row's null space: 2x = g − (w₀ + w₁)(1, 1, 0)
    c = (g[:, 0] + g[:, 1]) / 2
    expected = torch.stack([g[:, 0] - c, g[:, 1] - c, g[:, 2]], 1) / 2
    torch.testing.assert_close(x, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(w[:, 0] + w[:, 1], c, atol=1e-9, rtol=0)
    assert (w[:, 2] == 0).all()


def test_active_bounds_leave_the_batched_kkt_system_and_match_the_engine(monkeypatch):
    """Bounds lo_j ≤ x_j ≤ hi_j that are active fix their variable in the backward's
    batched solve (the rest is solved on the free variables); the gradients are those of
    the compiled engine's solve of the whole system, and of the residual map at native
    SCS's solution (an independent method)."""
    n = 6
    x, L, q, c = cp.Variable(n), cp.Parameter((n, n)), cp.Parameter(n), cp.Parameter(n)
    lo, hi = cp.Parameter(n), cp.Parameter(n)  # bounds' gradients are their multipliers'
    cons = [x <= hi, x >= lo, cp.sum(x) == 0.3, c @ x <= 0.5]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), cons)
    gen = torch.Generator().manual_seed(4)
    f64 = {"generator": gen, "dtype": torch.float64}
    values = [
        torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(4, n, n, **f64),
        3 * torch.randn(4, n, **f64),  # large enough for several bounds to be active
        torch.randn(4, n, **f64),
        -1 - 0.1 * torch.rand(4, n, **f64),
        1 + 0.1 * torch.rand(4, n, **f64),
    ]
    weights = torch.randn(4, n, **f64)

    def gradients(**kwargs):
        layer = CvxpyLayer(prob, [L, q, c, lo, hi], [x], **kwargs)
        leaves = [v.clone().requires_grad_() for v in values]
        (sol,) = layer(*leaves, solver_args={"eps": 1e-10, "max_iters": 100_000})
        (sol * weights).sum().backward()
        return sol.detach(), [leaf.grad for leaf in leaves]

    sol, batched = gradients()
    at_bound = ((sol - values[3]).abs() < 1e-9) | ((sol - values[4]).abs() < 1e-9)
    assert at_bound.sum() >= 4 and (batched[3] != 0).any() and (batched[4] != 0).any()
    monkeypatch.setattr(qp, "_BATCHED_KKT_MAX", 0)  # every element through the engine
    _, engine = gradients()
    _, residual_map = gradients(fast_path=False, mode="scs")
    for a, b, r in zip(batched, engine, residual_map):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(a, r, atol=1e-6 * float(r.abs().max()), rtol=1e-6)


def test_a_previous_solution_warm_starts_the_active_set():
    """`solver_args={"warm_start": info}` on the QP path: DAQP's working set starts from
    the constraints active at the previous solution, so a nearby problem takes fewer
    active-set iterations, and the answer is the cold solve's."""
    n = 20
    x, y = cp.Parameter(n), cp.Variable(n)
    M = np.random.default_rng(2).standard_normal((3 * n, n))
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [M @ y <= 1])
    layer = CvxpyLayer(prob, [x], [y])
    gen = torch.Generator().manual_seed(3)
    x0 = 3 * torch.randn(4, n, generator=gen, dtype=torch.float64)
    x1 = x0 + 0.01 * torch.randn(4, n, generator=gen, dtype=torch.float64)
    _, info = layer(x0, return_status=True)
    (cold,), cold_info = layer(x1, return_status=True)
    (warm,), warm_info = layer(x1, solver_args={"warm_start": info}, return_status=True)
    assert warm_info.mode == "qp" and (cold_info.iterations >= 5).all()
    assert (warm_info.iterations < cold_info.iterations).all()
    torch.testing.assert_close(warm, cold, atol=1e-9, rtol=0)


def test_solve_qp_takes_a_previous_solution_as_its_warm_start():
    """`solve_qp(..., warm_start=z_prev)`: same answer as a cold solve, fewer active-set
    iterations on a nearby problem; a start of the wrong shape is an error."""
    gen = torch.Generator().manual_seed(6)
    n, m = 15, 45
    Q = torch.eye(n, dtype=torch.float64)
    G = torch.randn(m, n, generator=gen, dtype=torch.float64)
    h = torch.ones(m, dtype=torch.float64)
    q0 = 3 * torch.randn(3, n, generator=gen, dtype=torch.float64)
    q1 = q0 + 0.01 * torch.randn(3, n, generator=gen, dtype=torch.float64)
    z0 = solve_qp(Q, q0, G, h, eps=1e-10)
    cold, _, cold_its = solve_qp(Q, q1, G, h, eps=1e-10, return_status=True)
    warm, _, warm_its = solve_qp(Q, q1, G, h, eps=1e-10, return_status=True, warm_start=z0)
    torch.testing.assert_close(warm, cold, atol=1e-9, rtol=0)
    assert (cold_its >= 5).all() and (warm_its < cold_its).all()
    with pytest.raises(ValueError, match="warm_start has shape"):
        solve_qp(Q, q1, G, h, warm_start=z0[:2])


@pytest.mark.parametrize("m, p", [(6, 2), (6, 0), (0, 2)])
def test_compiled_stopping_rule_is_the_torch_rule(m, p):
    """`active_set_kernels.converged` (the compiled twin checking the active set's
    solutions) decides as `qp._Iterate.converged` on the same points: DAQP's solutions
    moved by 0 to 1e-3, so that some pass eps = 1e-6 and some do not."""
    gen = np.random.default_rng(7 + m + p)
    B, n = 16, 5
    U = gen.standard_normal((B, n, n))
    Q = U @ U.transpose(0, 2, 1) + np.eye(n)
    q, G, A = (gen.standard_normal(shape) for shape in ((B, n), (B, m, n), (B, p, n)))
    z0 = gen.standard_normal((B, n, 1))  # a feasible point
    h, b = (G @ z0)[..., 0] + 1, (A @ z0)[..., 0]
    z, lam, nu, solved, *_ = active_set.solve_each(Q, q, G, h, A, b, 1e-10, 1)
    assert solved.all()
    shift = np.repeat([0.0, 1e-9, 1e-6, 1e-3], B // 4)[:, None]
    z, lam, nu = (t + shift * gen.standard_normal(t.shape) for t in (z, lam, nu))
    lam = np.abs(lam)
    s, ok = active_set_kernels.converged(Q, q, G, h, A, b, (z, lam, nu), 1e-6, 1e-6)
    data = qp.QPData(*(torch.from_numpy(t) for t in (Q, q, G, h, A, b)))
    z_t, lam_t, nu_t = (torch.from_numpy(t) for t in (z, lam, nu))
    s_t = (data.h - qp.g_mv(data, z_t)).clamp(min=0)
    expected = qp._Iterate(data, z_t, s_t, lam_t, nu_t).converged(data, 1e-6, 1e-6)
    # the products sum in another order: rounding of n·ε·‖G‖‖z‖ (~1e-15 here)
    np.testing.assert_allclose(s, s_t.numpy(), rtol=0, atol=1e-13)
    np.testing.assert_array_equal(ok, expected.numpy())
    assert ok.any() and not ok.all()
