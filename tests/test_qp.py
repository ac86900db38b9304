"""The QP fast path: the batched interior-point solver, its backward, detection, fallback."""

import dataclasses

import cvxpy as cp
import numpy as np
import pytest
import torch
from problems import CASES, solve_reference

from cvxlayer import CvxpyLayer, SolverError, Status, solve_qp
from cvxlayer.fastpaths import QPForm, qp_form
from cvxlayer.fastpaths.qp import QPData, qp_solve_differentiable
from cvxlayer.fastpaths.qp_form import QP_MIN_BATCH
from cvxlayer.solvers import ipm

TIGHT = {"eps": 1e-9, "max_iters": 200_000}


def _random_qp(rng, n=6, m=5, p=2, batch=3):
    """Strictly convex, feasible QPs (h = G z₀ + s₀, b = A z₀) as float64 tensors."""
    L = rng.standard_normal((batch, n, n)) / np.sqrt(n)
    Q = L @ L.transpose(0, 2, 1) + 0.1 * np.eye(n)
    q = rng.standard_normal((batch, n))
    G = rng.standard_normal((batch, m, n))
    z0 = rng.standard_normal((batch, n))
    h = np.einsum("bij,bj->bi", G, z0) + rng.uniform(0.1, 1.0, (batch, m))
    A = rng.standard_normal((batch, p, n))
    b = np.einsum("bij,bj->bi", A, z0)
    return [torch.tensor(t) for t in (Q, q, G, h, A, b)]


def _clarabel_qp(Q, q, G, h, A, b):
    x = cp.Variable(q.shape[0])
    cons = []
    if G.shape[0]:
        cons.append(G @ x <= h)
    if A.shape[0]:
        cons.append(A @ x == b)
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + q @ x
    prob = cp.Problem(cp.Minimize(objective), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return x.value


@pytest.fixture(params=["active_set", "ipm", "ipm-torch"])
def method(request, monkeypatch):
    """The QP path's methods; "ipm-torch": the interior point as on CUDA tensors (the torch
    engine, and the torch factorization in the backward), run on the CPU."""
    if request.param == "ipm-torch":
        monkeypatch.setattr(ipm, "_compiled_engine", lambda: None)
        return "ipm"
    return request.param


@pytest.mark.parametrize("shape", [(6, 5, 2), (6, 8, 0), (6, 0, 3), (5, 0, 0)])
def test_solve_qp_matches_clarabel(shape, method):
    n, m, p = shape
    data = _random_qp(np.random.default_rng(0), n, m, p)
    z, status, iterations = solve_qp(*data, eps=1e-10, return_status=True, method=method)
    assert all(s is Status.SOLVED for s in status)
    for i in range(z.shape[0]):
        ref = _clarabel_qp(*(t[i].numpy() for t in data))
        np.testing.assert_allclose(z[i].numpy(), ref, atol=1e-6)
    if m == 0 and method == "ipm":  # one KKT solve, plus refinement by the same factor
        assert int(iterations.max()) <= 3


def test_solve_qp_shared_arguments_broadcast_and_unbatched_call():
    Q, q, G, h, A, b = _random_qp(np.random.default_rng(1), batch=2)
    z = solve_qp(Q[0], q, G[0], h[0] + 10.0, eps=1e-10)  # shared Q, G, h; batched q
    assert z.shape == q.shape
    for i in range(2):
        ref = _clarabel_qp(
            Q[0].numpy(),
            q[i].numpy(),
            G[0].numpy(),
            h[0].numpy() + 10,
            A[0, :0].numpy(),
            b[0, :0].numpy(),
        )
        np.testing.assert_allclose(z[i].numpy(), ref, atol=1e-6)
    single = solve_qp(Q[0], q[0], G[0], h[0], A[0], b[0])
    assert single.shape == (Q.shape[-1],)


def test_solve_qp_gradcheck(method):
    data = _random_qp(np.random.default_rng(2), n=4, m=3, p=1, batch=2)
    leaves = tuple(t.clone().requires_grad_() for t in data)
    assert torch.autograd.gradcheck(
        lambda *a: solve_qp(*a, eps=1e-10, method=method), leaves, atol=1e-4, rtol=1e-3
    )


def test_solve_qp_gradients_of_duals_match_finite_differences(method):
    """λ and ν are differentiable too (through the layer's y)."""
    from cvxlayer.fastpaths.qp import QPData, qp_solve_differentiable

    data = _random_qp(np.random.default_rng(3), n=5, m=4, p=2, batch=1)
    weights = [
        torch.randn(1, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        for k in (5, 4, 2)
    ]

    def loss(h):
        qp = QPData(*data[:3], h, *data[4:])
        z, lam, nu, _ = qp_solve_differentiable(qp, 1e-11, 1e-11, method=method)
        return sum((w * t).sum() for w, t in zip(weights, (z, lam, nu)))

    h = data[3].clone().requires_grad_()
    loss(h).backward()
    direction = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=h.dtype)
    step = 1e-6
    fd = (loss(data[3] + step * direction) - loss(data[3] - step * direction)) / (2 * step)
    torch.testing.assert_close((h.grad * direction).sum(), fd, atol=1e-5, rtol=1e-4)


def test_solve_qp_errors(method):
    Q, q, G, h, A, b = _random_qp(np.random.default_rng(4))
    with pytest.raises(ValueError, match="G with h"):
        solve_qp(Q, q, G)
    with pytest.raises(ValueError, match="Inconsistent batch sizes"):
        solve_qp(Q[:2], q, G, h)
    with pytest.raises(ValueError, match="G has shape"):
        solve_qp(Q, q, G[:, :, :-1], h)
    with pytest.raises(ValueError, match="NaN"):
        solve_qp(Q, q * float("nan"), G, h)
    G_box = torch.cat([torch.eye(6), -torch.eye(6)]).double()
    h_box = torch.ones(3, 12, dtype=torch.float64)
    h_box[1, :6], h_box[1, 6:] = -1.0, -2.0  # element 1: x ≤ −1 and x ≥ 2
    with pytest.raises(SolverError, match="element"):
        solve_qp(Q, q, G_box, h_box, method=method)
    z, status, _ = solve_qp(Q, q, G_box, h_box, return_status=True, method=method)
    assert status[1] is not Status.SOLVED and status[0] is Status.SOLVED
    with pytest.raises(ValueError, match="unknown QP method"):
        solve_qp(Q, q, G, h, method="simplex")


def test_float32_converges_to_its_tolerance(method):
    """float32 stops at eps ≥ 1e-4 (relative residuals); with Q's smallest eigenvalue 0.1
    that leaves the solution within ~1e-2 of float64's."""
    data = _random_qp(np.random.default_rng(5))
    z64 = solve_qp(*data)
    z32 = solve_qp(*(t.float() for t in data), eps=1e-5, method=method)
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), z64, atol=2e-2, rtol=0)


# ---- the layer: detection, agreement with the generic path and Clarabel, fallback ----


def _batch(case, seed, size):
    rng = np.random.default_rng(seed)
    draws = [case.draw(rng) for _ in range(size)]
    return [torch.tensor(np.stack(v), dtype=torch.float64) for v in zip(*draws)]


def _qp_forms():
    n = 4
    x = cp.Variable(n)
    L, Qc = cp.Parameter((n, n)), np.diag(np.arange(1.0, n + 1))
    q, G, h = cp.Parameter(n), cp.Parameter((3, n)), cp.Parameter(3)
    return {
        "sum_squares(L @ x)": (
            cp.Problem(cp.Minimize(cp.sum_squares(L @ x) + q @ x), [G @ x <= h]),
            [L, q, G, h],
        ),
        "quad_form(x, Q)": (
            cp.Problem(cp.Minimize(cp.quad_form(x, Qc) + q @ x), [G @ x <= h]),
            [q, G, h],
        ),
        "box": (cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [x <= 1, x >= -1]), [q]),
        "LP": (cp.Problem(cp.Minimize(q @ x), [x >= 0, cp.sum(x) == 1]), [q]),
        "equality only": (cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [cp.sum(x) == 1]), [q]),
    }


@pytest.mark.parametrize("form", sorted(_qp_forms()))
def test_qp_structured_problems_take_the_qp_path(form):
    prob, params = _qp_forms()[form]
    layer = CvxpyLayer(prob, params, prob.variables())
    assert isinstance(layer.fast_path, QPForm)
    assert "QP with" in repr(layer)
    assert CvxpyLayer(prob, params, prob.variables(), fast_path=False).fast_path is None


@pytest.mark.parametrize("name", ["socp", "exp", "psd"])
def test_cone_problems_do_not_take_the_qp_path(name):
    case = CASES[name]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    assert layer.fast_path is None
    with pytest.raises(ValueError, match="does not have that structure"):
        CvxpyLayer(case.problem, case.parameters, case.variables, fast_path="qp")
    with pytest.raises(ValueError, match="unknown fast_path"):
        CvxpyLayer(case.problem, case.parameters, case.variables, fast_path="lqr!")


def test_lifted_variables_are_eliminated():
    case = CASES["qp"]  # ½‖Lx‖²: cvxpy lifts t = Lx
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    assert layer.fast_path.elim.size == 4 and layer.fast_path.keep.size == 4


@pytest.mark.parametrize("form", sorted(_qp_forms()))
def test_qp_path_matches_generic_path_and_clarabel(form):
    prob, params = _qp_forms()[form]
    rng = np.random.default_rng(7)
    values = []
    for prm in params:
        v = rng.standard_normal((3, *prm.shape))
        if prm.name() == "h" or prm.shape == (3,):
            v = np.abs(v) + 0.5
        values.append(torch.tensor(v))
    fast = CvxpyLayer(prob, params, prob.variables(), fast_path="qp")
    generic = CvxpyLayer(prob, params, prob.variables(), fast_path=False, mode="scs")
    leaves = [[v.clone().requires_grad_() for v in values] for _ in range(2)]
    (x_fast,), info = fast(*leaves[0], solver_args=TIGHT, return_status=True)
    (x_gen,) = generic(*leaves[1], solver_args=TIGHT)
    assert info.mode == "qp"
    torch.testing.assert_close(x_fast, x_gen, atol=1e-6, rtol=0)
    for i in range(3):
        for prm, v in zip(params, values):
            prm.value = v[i].numpy()
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        np.testing.assert_allclose(x_fast[i].detach().numpy(), prob.variables()[0].value, atol=1e-6)
    w = torch.linspace(-1, 1, x_fast[0].numel(), dtype=torch.float64)
    (x_fast * w).sum().backward()
    (x_gen * w).sum().backward()
    for a, b in zip(leaves[0], leaves[1]):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def test_qp_path_against_clarabel_on_the_equality_case():
    case = CASES["qp"]
    values = _batch(case, seed=8, size=3)
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    (x,) = layer(*values, solver_args=TIGHT)
    for i in range(3):
        (ref,) = solve_reference(case, [v[i].numpy() for v in values])
        np.testing.assert_allclose(x[i].numpy(), ref, atol=1e-6)


def test_unsolved_elements_fall_back_to_the_generic_mode():
    n = 3
    x, lo = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= lo, x <= 1])
    layer = CvxpyLayer(prob, [lo], [x], fast_path="qp")
    lo_v = torch.tensor([[0.5, 0.2, -1.0], [2.0, 0.0, 0.0], [-1.0, -1.0, 0.3]], dtype=torch.float64)
    lo_v.requires_grad_()
    (sol,), info = layer(lo_v, return_status=True)
    assert info.mode == "qp+scs"
    assert info.status[1] is Status.INFEASIBLE
    assert info.status[0] is Status.SOLVED and info.status[2] is Status.SOLVED
    torch.testing.assert_close(sol[0], lo_v[0].detach().clamp(min=0), atol=1e-5, rtol=0)
    sol[[0, 2]].sum().backward()
    assert torch.isfinite(lo_v.grad).all() and (lo_v.grad[1] == 0).all()
    with pytest.raises(SolverError, match="element 1: infeasible"):
        layer(lo_v)


@pytest.mark.parametrize("fast_path", [True, False])
def test_quad_form_with_a_psd_parameter_equals_the_sqrt_form(fast_path):
    """½ quad_form(x, Q) with Q = LᵀL a PSD parameter, against ½‖Lx‖² with L a parameter."""
    n = 3
    x = cp.Variable(n)
    Q, L, q = cp.Parameter((n, n), PSD=True), cp.Parameter((n, n)), cp.Parameter(n)
    cons = [x >= -1]
    quad = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x), cons)
    sqrt = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), cons)
    layer_q = CvxpyLayer(quad, [Q, q], [x], fast_path=fast_path)
    layer_l = CvxpyLayer(sqrt, [L, q], [x], fast_path=fast_path)
    gen = torch.Generator().manual_seed(9)
    Lv = torch.randn(2, n, n, generator=gen, dtype=torch.float64) + 2 * torch.eye(n)
    qv = 3 * torch.randn(2, n, generator=gen, dtype=torch.float64)
    leaves = [Lv.clone().requires_grad_(), Lv.clone().requires_grad_()]
    (x_q,) = layer_q(leaves[0].transpose(1, 2) @ leaves[0], qv, solver_args=TIGHT)
    (x_l,) = layer_l(leaves[1], qv, solver_args=TIGHT)
    torch.testing.assert_close(x_q, x_l, atol=1e-6, rtol=0)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (x_q * w).sum().backward()
    (x_l * w).sum().backward()
    torch.testing.assert_close(leaves[0].grad, leaves[1].grad, atol=1e-5, rtol=1e-5)


def test_quad_form_with_a_parameter_in_a_constraint_is_not_dpp():
    n = 2
    x, P = cp.Variable(n), cp.Parameter((n, n), PSD=True)
    prob = cp.Problem(cp.Minimize(cp.sum(x)), [cp.quad_form(x, P) <= 1])
    with pytest.raises(ValueError, match="not DPP"):
        CvxpyLayer(prob, [P], [x])


def test_sums_and_negations_of_psd_quad_forms():
    """maximize −(quad_form(x, Q1) + quad_form(x, Q2))/2 − qᵀx equals the problem with Q1 + Q2;
    a parameter times a parametric quad_form is not DPP."""
    n = 3
    x = cp.Variable(n)
    Q1, Q2 = cp.Parameter((n, n), PSD=True), cp.Parameter((n, n), PSD=True)
    Q, q = cp.Parameter((n, n), PSD=True), cp.Parameter(n)
    cons = [x >= -1, cp.sum(x) <= 1]
    split = cp.Problem(
        cp.Maximize(-0.5 * (cp.quad_form(x, Q1) + cp.quad_form(x, Q2)) - q @ x), cons
    )
    joint = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, Q) + q @ x), cons)
    gen = torch.Generator().manual_seed(4)
    M1, M2 = (torch.randn(2, n, n, generator=gen, dtype=torch.float64) for _ in range(2))
    A1, A2 = M1 @ M1.transpose(1, 2), M2 @ M2.transpose(1, 2) + torch.eye(n)
    qv = 3 * torch.randn(2, n, generator=gen, dtype=torch.float64)
    for fast_path in (True, False):
        (x_split,) = CvxpyLayer(split, [Q1, Q2, q], [x], fast_path=fast_path)(
            A1, A2, qv, solver_args=TIGHT
        )
        (x_joint,) = CvxpyLayer(joint, [Q, q], [x], fast_path=fast_path)(
            A1 + A2, qv, solver_args=TIGHT
        )
        torch.testing.assert_close(x_split, x_joint, atol=1e-6, rtol=0)
    t = cp.Parameter(nonneg=True)
    with pytest.raises(ValueError, match="not DPP"):
        CvxpyLayer(cp.Problem(cp.Minimize(t * cp.quad_form(x, Q)), cons), [t, Q], [x])


def test_large_sparse_qp_stays_on_the_sparse_generic_path_unless_asked():
    """n · (n + m) above the QP path's dense limit: automatic choice declines it (the generic
    modes keep the data sparse); fast_path="qp" still forces it."""
    import scipy.sparse as sp

    from cvxlayer.fastpaths import QP_DENSE_LIMIT

    n, m = 1500, 2000
    assert n * (n + m) > QP_DENSE_LIMIT
    G = sp.random(m, n, density=3 / n, random_state=0, format="csr") + sp.eye(m, n)
    c, h = cp.Parameter(n), cp.Parameter(m)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(c @ x + 0.5 * cp.sum_squares(x)), [G @ x <= h])
    assert CvxpyLayer(prob, [c, h], [x]).fast_path is None
    assert CvxpyLayer(prob, [c, h], [x], fast_path="qp").fast_path.name == "qp"


def _pinned_problem(n=4):
    """A QP whose variable W̃ is pinned to a parameter (W̃ = W keeps W̃ x DPP) and appears in
    an inequality and an equality besides: z = argmin ‖z − W̃x − b‖² s.t. 1ᵀz + ΣW̃ ≤ 3,
    z₀ + W̃₀₀ = c, z ≥ −1."""
    x, W, b, c = cp.Parameter(n), cp.Parameter((n, n)), cp.Parameter(n), cp.Parameter()
    W_var, z = cp.Variable((n, n)), cp.Variable(n)
    cons = [W_var == W, cp.sum(z) + cp.sum(W_var) <= 3, z[0] + W_var[0, 0] == c, z >= -1]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(z - W_var @ x - b)), cons)
    return prob, [x, W, b, c], [z, W_var] + [con.dual_variables[0] for con in cons]


def _matches_generic_path(prob, params, outputs) -> CvxpyLayer:
    """The QP path's outputs and gradients on `_pinned_problem`'s data against the generic
    path's, both solved to 1e-10; returns the QP path's layer."""
    fast = CvxpyLayer(prob, params, outputs)
    generic = CvxpyLayer(prob, params, outputs, fast_path=False)
    gen = torch.Generator().manual_seed(3)
    W = 0.2 * torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    values = [
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
        W,
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
        W[:, 0, 0] + torch.rand(3, generator=gen, dtype=torch.float64),  # feasible: z₀ ∈ [0, 1]
    ]
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in fast(*values)]
    results = []
    for layer in (fast, generic):
        leaves = [v.clone().requires_grad_() for v in values]
        outs = layer(*leaves, solver_args={"eps": 1e-10})
        sum((w * o).sum() for w, o in zip(weights, outs)).backward()
        results.append((outs, [leaf.grad for leaf in leaves]))
    (fast_out, fast_grad), (gen_out, gen_grad) = results
    # both solve to 1e-10 (the QP path polishes to its active set's exact solution)
    for a, b in zip(fast_out, gen_out):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    for a, b in zip(fast_grad, gen_grad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return fast


def test_pinned_variables_are_eliminated_and_match_the_generic_path():
    fast = _matches_generic_path(*_pinned_problem())
    assert isinstance(fast.fast_path, QPForm) and fast.fast_path.pinned == 16
    assert fast.fast_path.keep.size == 4  # only z remains: the 16 entries of W̃ are gone
    assert fast.fast_path.duals and fast.fast_path.elim_read


@pytest.mark.parametrize("read", [1, 2])
def test_primal_outputs_leave_out_duals_and_unread_eliminated_variables(read):
    """Without dual outputs the QP path computes no y and s, and differentiates the
    eliminated W̃ only where it is an output: same outputs and gradients either way."""
    prob, params, outputs = _pinned_problem()
    fast = _matches_generic_path(prob, params, outputs[:read])  # z, or z and W̃
    assert not fast.fast_path.duals and fast.fast_path.elim_read == (read == 2)


def test_auto_takes_the_qp_path_on_the_cpu_by_size_and_batch(monkeypatch):
    """On the CPU, QPs up to _ALWAYS_MAX_N variables take the QP path (the active set
    per element) at any batch size; larger ones with a sparse G (this box) from
    QP_MIN_BATCH elements (below, the generic auto mode, native SCS for this small
    program, beats the batched interior point), with a dense G at any batch size. All
    answer the same."""
    n = 8  # the box's G is then sparse (`GPattern`), a dense one's is not
    x, lo = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x)), [x >= lo, x <= 1])
    layer = CvxpyLayer(prob, [lo], [x])
    gen = torch.Generator().manual_seed(5)
    small = {1: "qp", QP_MIN_BATCH - 1: "qp"}
    large = {1: "scs", QP_MIN_BATCH - 1: "scs", QP_MIN_BATCH: "qp"}
    for limit, cases in ((n, small), (n - 1, large)):
        monkeypatch.setattr(qp_form, "_ALWAYS_MAX_N", limit)
        for batch, mode in cases.items():
            lo_v = torch.rand(batch, n, generator=gen, dtype=torch.float64) - 0.5
            (sol,), info = layer(lo_v, return_status=True)
            assert info.mode == mode, (limit, batch)
            torch.testing.assert_close(sol, lo_v.clamp(min=0), atol=1e-5, rtol=0)
    M = cp.Parameter((n, n))
    dense = cp.Problem(cp.Minimize(cp.sum_squares(x - lo)), [M @ x <= 1])
    layer = CvxpyLayer(dense, [M, lo], [x])
    assert layer.fast_path.g_pattern is None
    lo_v = torch.rand(1, n, generator=gen, dtype=torch.float64)
    (sol,), info = layer(torch.eye(n, dtype=torch.float64)[None], lo_v, return_status=True)
    assert info.mode == "qp"  # _ALWAYS_MAX_N is still n − 1 here
    torch.testing.assert_close(sol, lo_v.clamp(max=1), atol=1e-6, rtol=0)


def _folded_problems():
    n = 4
    x, w_var = cp.Variable(n), cp.Variable(n)
    q, w, Lc = cp.Parameter(n), cp.Parameter(n), np.triu(np.ones((n, n))) + np.eye(n)
    box = cp.Problem(cp.Minimize(cp.sum_squares(x - q)), [x <= 1, x >= -1])
    coupled = [x + w_var <= 1, w_var == w, cp.sum(x) == 0.5]  # w_var pinned to w
    pinned = cp.Problem(cp.Minimize(cp.sum_squares(Lc @ x + w_var) + q @ x), coupled)
    return {"box": (box, [q], box.constraints), "pinned": (pinned, [q, w], coupled)}


@pytest.mark.parametrize("name", sorted(_folded_problems()))
def test_a_fixed_elimination_is_folded_into_the_map_and_changes_nothing(name):
    """With a_E, A_RK and P free of parameters the reduced QP is formed at compile time
    (`qp_form.folded_rows`); the answers, duals and gradients are those of the per-call
    reduction to rounding."""
    prob, params, constraints = _folded_problems()[name]
    x = prob.variables()[0]
    duals = [c.dual_variables[0] for c in constraints]
    layer = CvxpyLayer(prob, params, [x, *duals])
    assert layer.fast_path.folded and layer.fast_path.elim.size > 0
    per_call = CvxpyLayer(prob, params, [x, *duals])
    form = per_call.fast_path
    pieces = qp_form.Pieces.from_rows(qp_form.raw_rows(form))
    per_call.fast_path = dataclasses.replace(form, pieces=pieces, folded=False)
    gen = torch.Generator().manual_seed(11)
    values = [torch.randn(5, *p.shape, generator=gen, dtype=torch.float64) for p in params]
    results = []
    for lay in (layer, per_call):
        leaves = [v.clone().requires_grad_() for v in values]
        (outs, info) = lay(*leaves, solver_args={"eps": 1e-10}, return_status=True)
        assert info.mode == "qp" and all(s is Status.SOLVED for s in info.status)
        weights = torch.Generator().manual_seed(12)
        sum(
            (torch.randn(o.shape, generator=weights, dtype=o.dtype) * o).sum() for o in outs
        ).backward()
        results.append((outs, [leaf.grad for leaf in leaves]))
    (outs_a, grads_a), (outs_b, grads_b) = results
    # both solve the same QP (Q and q formed in another order: rounding, ~1e-15 relative)
    for a, b in zip([*outs_a, *grads_a], [*outs_b, *grads_b]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    # and the folded one is the problem's solution (Clarabel at 1e-10)
    for i in range(2):
        for p, v in zip(params, values):
            p.value = v[i].numpy()
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        np.testing.assert_allclose(outs_a[0][i].detach().numpy(), x.value, atol=1e-6)


def test_a_gram_objective_is_differentiated_through_its_rank_two_gradient(method):
    """Q = Q₀ + Tᵀ diag(p) T given as `gram` (how the QP path passes ½‖Lz‖²): the solution
    and the gradients in T and p are those of the same QP with Q formed by autograd."""
    gen = torch.Generator().manual_seed(5)
    B, n, e, m = 3, 4, 5, 6
    f64 = {"generator": gen, "dtype": torch.float64}
    T0, p0 = torch.randn(B, e, n, **f64), torch.rand(B, e, **f64) + 0.5
    Q0 = 0.1 * torch.eye(n, dtype=torch.float64).expand(B, n, n)
    q, G = torch.randn(B, n, **f64), torch.randn(B, m, n, **f64)
    h = torch.rand(B, m, **f64)  # z = 0 is feasible; some rows are active
    none = torch.zeros(B, 0, n, dtype=torch.float64)
    w = torch.randn(B, n, **f64)
    grads = []
    for gram in (True, False):
        T, p = T0.clone().requires_grad_(), p0.clone().requires_grad_()
        Q = Q0 if gram else Q0 + T.transpose(1, 2) @ (p.unsqueeze(-1) * T)
        data = QPData(Q, q, G, h, none, none[:, :, 0])
        z, *_ = qp_solve_differentiable(
            data, 1e-10, 1e-10, method=method, gram=(T, p) if gram else None
        )
        (z * w).sum().backward()
        grads.append((z.detach(), T.grad, p.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_pieces_that_are_parameters_are_views_of_theta():
    """G in G x ≤ h and L of ½‖Lx‖² are read from θ̃ as strided views (no gather): the
    pieces and their gradients are the sparse map's exactly; a piece whose entries are
    mixed (b = h + h2, two parameters per entry) stays on the map."""
    n, m = 4, 3
    x = cp.Variable(n)
    L, G, h, h2 = cp.Parameter((n, n)), cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(m)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(L @ x) + cp.sum(x)), [G @ x <= h + h2])
    form = CvxpyLayer(prob, [L, G, h, h2], [x]).fast_path
    assert {"A_RK", "G"} <= set(form.pieces.views) and "b" in form.pieces.shapes
    mapped = qp_form.Pieces.from_rows(qp_form.raw_rows(form), strided=False)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(2, form.linear.matrix.shape[1], generator=gen, dtype=torch.float64)
    theta.requires_grad_()
    a, b = form.pieces(theta), mapped(theta)
    assert set(a) == set(b)
    weights = {
        key: torch.randn(v.shape, generator=gen, dtype=torch.float64) for key, v in a.items()
    }
    grads = []
    for pieces in (a, b):
        loss = sum((weights[key] * v).sum() for key, v in pieces.items())
        grads.append(torch.autograd.grad(loss, theta)[0])
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-14, rtol=0)


def test_the_interior_point_reads_a_sparse_g_on_its_pattern():
    """The QP path's interior point builds its cone program on G's structural nonzeros
    (`GPattern`); a box QP min ½‖z‖² + qᵀz s.t. −½ ≤ z ≤ ½ solved that way is the clamp of
    −q, with gradients those of the dense G."""
    from cvxlayer.fastpaths.qp import GPattern

    B, n = 3, 6
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(B, n, generator=gen, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    G = torch.cat([eye, -eye]).expand(B, 2 * n, n).contiguous()
    h = torch.full((B, 2 * n), 0.5, dtype=torch.float64)
    none = (torch.zeros(B, 0, n, dtype=torch.float64), torch.zeros(B, 0, dtype=torch.float64))
    pattern = GPattern.from_mask(G[0].numpy() != 0)
    assert pattern is not None
    grads = []
    for g_pattern in (pattern, None):
        q_leaf = q.clone().requires_grad_()
        data = QPData(eye.expand(B, n, n), q_leaf, G, h, *none, g_pattern)
        z, *_, result = qp_solve_differentiable(data, method="ipm")
        assert all(s is Status.SOLVED for s in result.status)
        torch.testing.assert_close(z, (-q).clamp(-0.5, 0.5), atol=1e-9, rtol=0)
        z.pow(2).sum().backward()
        grads.append(q_leaf.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-9, rtol=0)
