"""Gradients: closed forms, finite differences, gradcheck, and diffcp's own adjoint."""

import cvxpy as cp
import diffcp
import numpy as np
import pytest
import torch
from problems import CASES

from cvxlayer import CvxpyLayer

MODES = ["ipm", "torch", "scs", "scs-block"]
TIGHT = {"eps": 1e-10, "max_iters": 200_000}


def _batch(case, seed, size):
    rng = np.random.default_rng(seed)
    draws = [case.draw(rng) for _ in range(size)]
    return [torch.tensor(np.stack(v), dtype=torch.float64) for v in zip(*draws)]


def _relu_layer(n, mode):
    x = cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0])
    return CvxpyLayer(prob, [x], [y], mode=mode, fast_path=False)


def _sigmoid_layer(n, mode):
    x = cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y) + cp.entr(1.0 - y))))
    return CvxpyLayer(prob, [x], [y], mode=mode, fast_path=False)


def _softmax_layer(n, mode):
    x = cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1])
    return CvxpyLayer(prob, [x], [y], mode=mode, fast_path=False)


def _jacobian(layer, x):
    return torch.autograd.functional.jacobian(lambda t: layer(t, solver_args=TIGHT)[0], x)


@pytest.mark.parametrize("mode", MODES)
def test_relu_output_and_jacobian(mode):
    x = torch.tensor([-1.5, -0.2, 0.3, 2.0], dtype=torch.float64)
    layer = _relu_layer(4, mode)
    (y,) = layer(x, solver_args=TIGHT)
    torch.testing.assert_close(y, torch.relu(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(_jacobian(layer, x), torch.diag((x > 0).double()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_sigmoid_output_and_jacobian(mode):
    x = torch.tensor([-2.0, -0.5, 0.1, 1.7], dtype=torch.float64)
    layer = _sigmoid_layer(4, mode)
    (y,) = layer(x, solver_args=TIGHT)
    s = torch.sigmoid(x)
    torch.testing.assert_close(y, s, atol=1e-5, rtol=0)
    torch.testing.assert_close(_jacobian(layer, x), torch.diag(s * (1 - s)), atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_softmax_output_and_jacobian(mode):
    x = torch.tensor([0.3, -1.0, 1.2, 0.0], dtype=torch.float64)
    layer = _softmax_layer(4, mode)
    (y,) = layer(x, solver_args=TIGHT)
    s = torch.softmax(x, 0)
    torch.testing.assert_close(y, s, atol=1e-5, rtol=0)
    expected = torch.diag(s) - torch.outer(s, s)
    torch.testing.assert_close(_jacobian(layer, x), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradient_matches_finite_differences(name, mode):
    """Directional derivative of L = Σ w ⊙ x*(θ) along a random direction, all parameters."""
    case = CASES[name]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, mode=mode, fast_path=False)
    values = _batch(case, seed=10, size=2)
    gen = torch.Generator().manual_seed(0)
    directions = [torch.randn(v.shape, generator=gen, dtype=torch.float64) for v in values]
    if name == "psd":  # keep the symmetric parameter symmetric
        directions[0] = directions[0] + directions[0].transpose(1, 2)
    weights = None

    def loss(vals):
        nonlocal weights
        outputs = layer(*vals, solver_args=TIGHT)
        if weights is None:
            weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in outputs]
        return sum((w * o).sum() for w, o in zip(weights, outputs))

    leaves = [v.clone().requires_grad_() for v in values]
    loss(leaves).backward()
    analytic = sum((leaf.grad * d).sum() for leaf, d in zip(leaves, directions))
    h = 1e-5
    plus = loss([v + h * d for v, d in zip(values, directions)])
    minus = loss([v - h * d for v, d in zip(values, directions)])
    numeric = (plus - minus) / (2 * h)
    assert abs(analytic.item() - numeric.item()) <= 1e-4 * max(1.0, abs(numeric.item()))
    # parameters that appear only in constraints get a gradient too
    assert all(leaf.grad.abs().sum() > 0 for leaf in leaves)


@pytest.mark.parametrize("mode, backward", [(m, "dense") for m in MODES] + [("torch", "lsqr")])
def test_gradcheck_small_socp(mode, backward):
    case = CASES["socp"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, mode=mode, fast_path=False)
    values = [v[0].clone().requires_grad_() for v in _batch(case, seed=3, size=1)]
    assert torch.autograd.gradcheck(
        lambda *vals: layer(*vals, solver_args={**TIGHT, "backward": backward})[0],
        values,
        eps=1e-6,
        atol=1e-5,
        rtol=1e-3,
    )


def test_shared_parameter_gradient_is_sum_over_batch():
    case = CASES["qp"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    values = _batch(case, seed=4, size=3)
    shared_L = values[0][0].clone().requires_grad_()
    (x,) = layer(shared_L, *values[1:], solver_args=TIGHT)
    x.sum().backward()
    per_element = torch.zeros_like(shared_L)
    for i in range(3):
        L_i = values[0][0].clone().requires_grad_()
        (xi,) = layer(L_i, *[v[i] for v in values[1:]], solver_args=TIGHT)
        xi.sum().backward()
        per_element += L_i.grad
    torch.testing.assert_close(shared_L.grad, per_element, atol=1e-6, rtol=1e-5)


def test_diffcp_adjoint_matches_diffcp_public_api():
    """Our use of diffcp's kernels gives the same (dA, db, dc) as diffcp.solve_and_derivative."""
    from cvxlayer.diff import get_adjoint, solve_and_differentiate
    from cvxlayer.solvers import SolveSettings, get_solver

    case = CASES["socp"]
    layer = CvxpyLayer(
        case.problem, case.parameters, case.variables, solver_args={"backward": "diffcp"}
    )  # compiles without a quadratic P
    values = [v[:1] for v in _batch(case, seed=5, size=1)]
    assert layer.compiled.structure.p_indices is None
    program = layer.compiled.cone_program(values)
    A = program.A.clone().requires_grad_()
    b = program.b.clone().requires_grad_()
    c = program.c.clone().requires_grad_()
    program = type(program)(program.structure, A, b, c)
    sol = solve_and_differentiate(
        program,
        get_solver("scs"),
        SolveSettings(eps_abs=1e-12, eps_rel=1e-12),
        get_adjoint("diffcp"),
    )
    gen = torch.Generator().manual_seed(1)
    dx = torch.randn(sol.x.shape, generator=gen, dtype=torch.float64)
    dy = torch.randn(sol.y.shape, generator=gen, dtype=torch.float64)
    ((sol.x * dx).sum() + (sol.y * dy).sum()).backward()

    ((A_sp, b_np, c_np, _),) = program.to_scipy()
    cone_dict = program.structure.cones.to_scs()
    *_, adjoint = diffcp.solve_and_derivative(
        A_sp.copy(), b_np, c_np, cone_dict, mode="dense", eps_abs=1e-12, eps_rel=1e-12
    )
    dA_ref, db_ref, dc_ref = adjoint(dx[0].numpy(), dy[0].numpy(), np.zeros_like(b_np))
    rows, cols = program.structure.a_coords()
    np.testing.assert_allclose(A.grad[0].numpy(), dA_ref.toarray()[rows, cols], atol=1e-6)
    np.testing.assert_allclose(b.grad[0].numpy(), db_ref, atol=1e-6)
    np.testing.assert_allclose(c.grad[0].numpy(), dc_ref, atol=1e-6)


def _weighted_gradients(case, backward: str, mode: str = "auto", with_solution: bool = False):
    """Gradients of Σ w ⊙ x* (w = 0, 1, 2, …) w.r.t. every parameter, 3 elements, seed 6
    (and x* with `with_solution`)."""
    layer = CvxpyLayer(
        case.problem,
        case.parameters,
        case.variables,
        mode=mode,
        solver_args={"backward": backward},
        fast_path=False,
    )
    leaves = [v.clone().requires_grad_() for v in _batch(case, seed=6, size=3)]
    (x,) = layer(*leaves, solver_args=TIGHT)
    w = torch.arange(x[0].numel(), dtype=torch.float64).reshape(x[0].shape)
    (x * w).sum().backward()
    grads = [leaf.grad for leaf in leaves]
    return (x.detach(), grads) if with_solution else grads


# the adjoint evaluated a distance δ from the solution moves by ≲ L·δ; on these cases
# L ≲ 1e3 (measured: 5.7e-5 relative gradient change on pow at δ ~ 1e-7)
_ADJOINT_LIPSCHITZ = 1e4


@pytest.mark.parametrize("name", sorted(CASES))
def test_interior_point_gradients_match_diffcp(name):
    """The interior point's solutions (inside the cones by O(μ)) differentiated by our dense
    backward give diffcp's gradients (on SCS's solution, diffcp's own dense derivative; for
    power cones, which diffcp lacks, our dense backward on SCS's solution).

    The interior point stalls at ~1e-7 on exponential and power cones (SCS at eps 1e-10 is
    ~1e-10): the gradients differ by what the adjoint moves over the solutions' distance δ,
    measured here, so the tolerance is max(1e-6, L·δ) with L = `_ADJOINT_LIPSCHITZ`."""
    case = CASES[name]
    x_ipm, ours = _weighted_gradients(case, "dense", mode="ipm", with_solution=True)
    reference = "dense" if name == "pow" else "diffcp"
    x_ref, refs = _weighted_gradients(case, reference, mode="scs", with_solution=True)
    delta = (x_ipm - x_ref).abs().max().item()
    tol = max(1e-6, _ADJOINT_LIPSCHITZ * delta)
    for got, ref in zip(ours, refs):
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_own_backwards_match_diffcp(name):
    """Our batched dense and LSQR adjoints (with P) against diffcp's (conic form), every cone
    diffcp supports (for power cones, dense and LSQR against each other; finite differences
    check them above)."""
    case = CASES[name]
    reference = "dense" if name == "pow" else "diffcp"
    grads = {
        backward: _weighted_gradients(case, backward) for backward in {"dense", "lsqr", reference}
    }
    for ours in ("dense", "lsqr"):
        for got, ref in zip(grads[ours], grads[reference]):
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_diffcp_backward_on_quadratic_compile_is_a_clear_error():
    case = CASES["qp"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)  # P kept
    values = [v.requires_grad_() for v in _batch(case, seed=7, size=1)]
    with pytest.raises(NotImplementedError, match="backward': 'diffcp'"):
        layer(*values, solver_args={"backward": "diffcp"})


def test_backward_survives_set_num_threads():
    """torch 2.13 CPU returns invalid batched-LU pivots after set_num_threads for some sizes
    (here B=4, N=400); the dense backward must still give the right gradient."""
    from cvxlayer.diff.dense import solve_transposed_system

    torch.set_num_threads(torch.get_num_threads())
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(4, 400, 400, generator=gen, dtype=torch.float64)
    rhs = torch.randn(4, 400, generator=gen, dtype=torch.float64)
    r = solve_transposed_system(J.transpose(1, 2), rhs)
    torch.testing.assert_close((J.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1), rhs)


def test_auto_backward_switches_to_lsqr_above_the_dense_limit(monkeypatch):
    import cvxlayer.diff.dense as dense

    case = CASES["socp"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)

    def gradients():
        leaves = [v.clone().requires_grad_() for v in _batch(case, seed=9, size=2)]
        layer(*leaves, solver_args=TIGHT)[0].sum().backward()
        return [leaf.grad for leaf in leaves]

    expected = gradients()  # small problem: dense
    original, calls = dense.lsqr, []

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(dense, "lsqr", spy)
    monkeypatch.setattr(dense, "DENSE_LIMIT", 3)  # now every problem counts as large
    for got, ref in zip(gradients(), expected):
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    assert calls


def test_a_numerically_singular_jacobian_gets_the_least_squares_solution():
    """A degenerate program's residual-map Jacobian is singular, and rounding leaves LU a
    pivot of ~ε‖J‖ instead of 0: the LU solve was of order 1/ε (gradients of 1e16 in a
    supply-chain policy's training). Jᵀ = U diag(σ) Vᵀ with σ_min = 0 formed in floating
    point is such a matrix; the backward's solve must return pinv's minimum-norm least-
    squares solution (to pinv's own accuracy, ~N ε κ of the nonsingular part ≈ 1e-12)."""
    from cvxlayer.diff.dense import solve_transposed_system

    gen = torch.Generator().manual_seed(0)
    N = 12
    U, _ = torch.linalg.qr(torch.randn(3, N, N, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(3, N, N, generator=gen, dtype=torch.float64))
    sigma = torch.linspace(1.0, 0.1, N, dtype=torch.float64).repeat(3, 1)
    sigma[:2, -1] = 0.0  # elements 0, 1 singular; element 2 regular
    Jt = U @ torch.diag_embed(sigma) @ V.transpose(1, 2)
    rhs = torch.randn(3, N, generator=gen, dtype=torch.float64)
    pivots = torch.linalg.lu_factor(Jt)[0].diagonal(dim1=1, dim2=2).abs().amin(1)
    assert (pivots[:2] > 0).all()  # not exactly singular to LU: the case that went wrong
    r = solve_transposed_system(Jt.clone(), rhs.clone())
    expected = (torch.linalg.pinv(Jt) @ rhs.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(r, expected, atol=1e-10, rtol=1e-10)
    assert r.abs().max() < 100


def test_compiled_residual_system_is_the_torch_assembly():
    """The residual map's Jᵀ and right-hand side formed by the compiled kernel
    (`dense_kernels`, zero, nonnegative and second-order rows) equal the torch assembly
    (`ConeProjector` blocks, `residual_jacobian_t`) to rounding, with a P, at points v that
    put the second-order block inside its cone (element 0), in the polar cone (element 1)
    and on neither side (element 2), and the orthant's rows on both sides of 0."""
    from cvxlayer.cones.projections import ConeProjector
    from cvxlayer.diff import dense, dense_kernels
    from cvxlayer.program import SparseOps

    n = 5
    x, M, y = cp.Parameter(n), cp.Parameter((n, n)), cp.Variable(n)
    constraints = [cp.norm(M @ y) <= 1, y >= -1, cp.sum(y) == 0.5]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x) + cp.sum(y)), constraints)
    layer = CvxpyLayer(prob, [x, M], [y], fast_path=False)
    gen = torch.Generator().manual_seed(11)
    values = [torch.randn(3, *s, generator=gen, dtype=torch.float64) for s in [(n,), (n, n)]]
    program = layer.compiled.cone_program(values)
    st = program.structure
    assert st.cones.zero and st.cones.nonneg and st.cones.soc and program.P is not None
    v = torch.randn(3, st.m, generator=gen, dtype=torch.float64)
    first = st.cones.zero + st.cones.nonneg  # the second-order block's head
    v[0, first], v[1, first] = 100.0, -100.0
    grads = [torch.randn(3, k, generator=gen, dtype=torch.float64) for k in (st.n, st.m, st.m)]
    ops = SparseOps.of(st, program.b.device)
    layout = dense._compiled_layout(program)
    Jt, rhs = dense_kernels.system(
        ops.arrays(program.A, program.P), v.numpy(), tuple(g.numpy() for g in grads), layout
    )
    projector = ConeProjector.of(st.cones)
    blocks = projector.jacobian_blocks(v, dual=True)
    dx, dy, ds = grads
    rhs_ref = torch.cat([dx, projector.apply_blocks(blocks, dy + ds) - ds], 1)
    Jt_ref = dense.residual_jacobian_t(
        *ops.dense(program.A, program.P), projector.dense(blocks, rhs_ref[:, st.n :])
    )
    # the same sums in another order: entries of D are ≤ 1, of A ≤ 2.3, at most m = 18 terms
    # (rounding ≲ 18 · 2.3 · ε ≈ 1e-14)
    torch.testing.assert_close(torch.as_tensor(Jt), Jt_ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(torch.as_tensor(rhs), rhs_ref, atol=1e-13, rtol=0)


def _nearest_psd():
    """min ‖X − C‖_F² s.t. X ⪰ 0: cvxpy lifts X − C into variables of equality rows, and
    the objective is quadratic in them."""
    C, X = cp.Parameter((4, 4), symmetric=True), cp.Variable((4, 4), symmetric=True)
    return cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0]), [C], [X], [(4, 4)]


def _linear_lifted():
    """min wᵀt s.t. t = M x, ‖x‖ ≤ 1, exp(x₀) ≤ ½: t is lifted and the objective linear;
    w's gradient is −r_E (the eliminated part of the adjoint), and t and the defining rows'
    dual as outputs put right-hand sides on both eliminated parts."""
    M, w, x, t = cp.Parameter((3, 3)), cp.Parameter(3), cp.Variable(3), cp.Variable(3)
    # the exponential cone active: an inactive one left this system singular (κ ~ 1e16)
    constraints = [t == M @ x, cp.norm(x) <= 1, cp.exp(x[0]) <= 0.5]
    outputs = [x, t, constraints[0].dual_variables[0]]
    return cp.Problem(cp.Minimize(w @ t), constraints), [M, w], outputs, [(3, 3), (3,)]


@pytest.mark.parametrize("build", [_nearest_psd, _linear_lifted])
def test_residual_map_with_lifted_variables_eliminated_is_the_full_system(build, monkeypatch):
    """The dense backward eliminates lifted variables and their defining rows before its LU
    (`dense._dense_solve`, T5c: 310 → 110 rows); the gradients equal the full system's,
    with a quadratic and with a linear objective."""
    from cvxlayer.diff import dense
    from cvxlayer.solvers.ipm import _lifted_columns

    prob, params, outputs, shapes = build()
    layer = CvxpyLayer(prob, params, outputs, mode="scs", fast_path=False)
    assert _lifted_columns(layer.compiled.structure)[0].size > 0
    gen = torch.Generator().manual_seed(4)
    values = [torch.randn(3, *s, generator=gen, dtype=torch.float64) for s in shapes]
    values = [(v + v.transpose(1, 2)) / 2 for v in values] if build is _nearest_psd else values

    def gradients():
        leaves = [v.clone().requires_grad_() for v in values]
        outs = layer(*leaves, solver_args={"eps": 1e-9, "backward": "dense"})
        loss = 0
        for out in outs:
            weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
            loss = loss + (weights * out.flatten()).sum()
        loss.backward()
        return [leaf.grad for leaf in leaves]

    reduced = gradients()
    monkeypatch.setattr(
        dense, "_dense_solve",
        lambda st, A, P, D, rhs: dense.solve_transposed_system(
            dense.residual_jacobian_t(A, P, D), rhs
        ),
    )  # fmt: skip
    for got, ref in zip(reduced, gradients()):
        assert got.abs().max() > 0
        # two exact solves of one system at the same solution: they differ by rounding
        # amplified by its condition (κ ≲ 300 for both problems here: ~1e-13)
        torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-8)
