"""The compiled CPU interior point (mode "ipm" on CPU tensors: zero, nonnegative,
second-order, exponential and power cones) against its reference, the torch engine
("ipm-torch"), and against Clarabel."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, Status
from cvxlayer.diff.dense import ResidualMapAdjoint
from cvxlayer.solvers import ipm_compiled

TIGHT = {"eps": 1e-8}
n, m = 6, 8  # m > n: ‖Ax − b‖ stays away from the cone's apex (a kink) at the solution


def _problems():
    x = cp.Variable(n)
    A, b, c = cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(n)
    return (
        {
            "lp": cp.Problem(cp.Minimize(c @ x), [A @ x <= b, x >= -1, x <= 1]),
            "qp with equalities": cp.Problem(
                cp.Minimize(cp.sum_squares(x - c)), [A @ x <= b, cp.sum(x) == 1]
            ),
            "soc constraint": cp.Problem(cp.Minimize(c @ x), [cp.norm(A @ x - b) <= 1, x >= -1]),
            "soc objective": cp.Problem(cp.Minimize(cp.norm(A @ x - b) + cp.sum_squares(x - c))),
        },
        [A, b, c],
        x,
    )


def _values(batch: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, m, n, generator=gen, dtype=torch.float64),
        torch.rand(batch, m, generator=gen, dtype=torch.float64) + 0.1,
        torch.randn(batch, n, generator=gen, dtype=torch.float64),
    ]


@pytest.mark.parametrize("name", list(_problems()[0]))
def test_compiled_engine_matches_the_torch_engine_and_clarabel(name):
    """Same algorithm, two engines: the same statuses and solutions (both at eps² inside
    a well-conditioned program: agreement to ~1e-10; 1e-7 leaves room for the stalls'
    best-iterate rule, which can stop them an iteration apart), and Clarabel's solution
    at 1e-10 within 1e-6."""
    problems, params, x = _problems()
    prob = problems[name]
    assert ipm_compiled.supports(CvxpyLayer(prob, params, [x]).compiled.structure.cones)
    vals = _values(4, seed=3)
    out = {}
    for mode in ("ipm", "ipm-torch"):
        layer = CvxpyLayer(prob, params, [x], mode=mode, fast_path=False)
        (sol,), info = layer(*vals, solver_args=TIGHT, return_status=True)
        out[mode] = sol, info.status
    assert out["ipm"][1] == out["ipm-torch"][1]
    solved = torch.tensor([s is Status.SOLVED for s in out["ipm"][1]])
    assert solved.any()
    ours, reference = out["ipm"][0][solved], out["ipm-torch"][0][solved]
    torch.testing.assert_close(ours, reference, atol=1e-7, rtol=0)
    i = int(solved.nonzero()[0])
    for param, value in zip(params, vals):
        param.value = value[i].numpy()
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    np.testing.assert_allclose(out["ipm"][0][i].numpy(), x.value, atol=1e-6)


def _nonsymmetric_problems():
    """Programs with exponential and power cones, and a batch of their parameters."""
    k = 6
    y, x, G = cp.Variable(k), cp.Parameter(k), cp.Parameter((3, k))
    entropy = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1, G @ y <= 0.4])
    ball = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.pnorm(y, 1.5, approx=False) <= 1])
    mixed = cp.Problem(  # both families and a second-order cone
        cp.Minimize(-x @ y - cp.sum(cp.entr(y)) + cp.norm(G @ y)),
        [cp.pnorm(y, 3, approx=False) <= 0.8, cp.sum(y) == 1],
    )
    gen = torch.Generator().manual_seed(21)
    xs = 2 * torch.randn(4, k, generator=gen, dtype=torch.float64)
    Gs = torch.rand(4, 3, k, generator=gen, dtype=torch.float64)
    return {
        "exponential": (entropy, [x, G], [xs, Gs]),
        "power": (ball, [x], [xs]),
        "mixed": (mixed, [x, G], [xs, Gs]),
    }, y


@pytest.mark.parametrize("name", ["exponential", "power", "mixed"])
def test_nonsymmetric_cones_match_the_torch_engine_and_clarabel(name):
    """Exponential and power cones in the compiled engine: the torch engine's statuses
    (two elements of the exponential batch are infeasible: G y ≤ 0.4 misses the simplex)
    and solutions, and Clarabel's at 1e-12. Near these barriers' boundary progress stalls
    from μ ~ 1e-10 on, where the interior point's x is accurate to ~1e-6 only (the torch
    engine's: measured ≤ 3.5e-6 from Clarabel at 1e-12, checked at 1e-5); the compiled
    engine polishes its answer by Newton steps (`cvxlayer.solvers.polish`): measured ≤ 1e-8
    from Clarabel at 1e-12 (whose own answer at 1e-10 moves by 2e-6), checked at 1e-7."""
    problems, y = _nonsymmetric_problems()
    prob, params, vals = problems[name]
    out = {}
    for mode in ("ipm", "ipm-torch"):
        layer = CvxpyLayer(prob, params, [y], mode=mode, fast_path=False)
        assert layer.compiled.structure.cones.exp or layer.compiled.structure.cones.power
        (sol,), info = layer(*vals, solver_args=TIGHT, return_status=True)
        out[mode] = sol, info.status
    assert out["ipm"][1] == out["ipm-torch"][1]
    solved = [i for i, s in enumerate(out["ipm"][1]) if s is Status.SOLVED]
    assert solved
    torch.testing.assert_close(
        out["ipm"][0][solved], out["ipm-torch"][0][solved], atol=1e-5, rtol=0
    )
    for i in solved:
        for param, value in zip(params, vals):
            param.value = value[i].numpy()
        prob.solve(
            solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=200
        )
        np.testing.assert_allclose(out["ipm"][0][i].numpy(), y.value, atol=1e-7)


@pytest.mark.parametrize("name", ["exponential", "power", "mixed"])
def test_kkt_backward_on_nonsymmetric_cones_matches_the_residual_map(name):
    """Backward "kkt" with exponential and power cones (H = D⁻¹(I − D), D the dual
    projection's derivative in closed form, `cvxlayer.diff.kkt`) against the residual map
    at the same solution, the primal and every dual as outputs, infeasible elements left
    out. Measured
    ≤ 1.5e-6 relative (the solutions' ~1e-6 accuracy on these cones, and H clipped at
    1e8); checked at 1e-5."""
    problems, y = _nonsymmetric_problems()
    prob, params, vals = problems[name]
    grads = _kkt_and_dense_gradients(prob, params, y, vals, seed=2)
    for ours, ref in zip(grads["kkt"], grads["dense"]):
        scale = float(ref.abs().max())
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * max(scale, 1.0))


def test_infeasible_and_unbounded_elements_inside_a_batch():
    """min c·x s.t. ‖x‖ ≤ t, x ≥ a: with a = (−1, −1), t = 1, c = (1, 0) the solution is
    (−1, 0); with a = (2, 2) no point of the ball satisfies x ≥ a (infeasible). Then
    min c·x s.t. x₀ ≥ a₀, ‖x₁‖ ≤ x₀ + 1: solved for c = (1, 0), unbounded for c = (−1, 0)."""
    x = cp.Variable(2)
    a, t, c = cp.Parameter(2), cp.Parameter(nonneg=True), cp.Parameter(2)
    ball = cp.Problem(cp.Minimize(c @ x), [cp.norm(x) <= t, x >= a])
    layer = CvxpyLayer(ball, [a, t, c], [x], mode="ipm", fast_path=False)
    a_v = torch.tensor([[-1.0, -1.0], [2.0, 2.0]], dtype=torch.float64)
    t_v = torch.tensor([1.0, 1.0], dtype=torch.float64)
    c_v = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    (sol,), info = layer(a_v, t_v, c_v, return_status=True)
    assert info.status == (Status.SOLVED, Status.INFEASIBLE)
    torch.testing.assert_close(sol[0], torch.tensor([-1.0, 0.0]).double(), atol=1e-6, rtol=0)
    half = cp.Problem(cp.Minimize(c @ x), [x[0] >= a[0], cp.norm(x[1:]) <= x[0] + 1])
    layer = CvxpyLayer(half, [a, c], [x], mode="ipm", fast_path=False)
    c_v = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    (sol,), info = layer(a_v, c_v, return_status=True)
    assert info.status == (Status.SOLVED, Status.UNBOUNDED)


def test_float32_inputs_give_float32_outputs():
    problems, params, x = _problems()
    layer = CvxpyLayer(problems["soc constraint"], params, [x], mode="ipm", fast_path=False)
    vals = _values(3, seed=5)
    (y32,), info = layer(*(v.float() for v in vals), return_status=True)
    assert y32.dtype == torch.float32
    (y64,), info64 = layer(*vals, solver_args=TIGHT, return_status=True)
    solved = torch.tensor([s is Status.SOLVED for s in info.status])
    assert solved.any() and info.status == info64.status
    # float32's tolerance is floored at 1e-4 (its data are rounded to ~1e-7 relative)
    torch.testing.assert_close(y32[solved].double(), y64[solved], atol=1e-3, rtol=0)


def test_gradients_through_the_compiled_forward_pass_gradcheck():
    problems, params, x = _problems()
    layer = CvxpyLayer(problems["soc objective"], params, [x], mode="ipm", fast_path=False)
    leaves = [v.requires_grad_(True) for v in _values(2, seed=7)]
    # at eps 1e-10 the solutions carry ~1e-11 of noise from one parameter value to the next
    # (measured: difference quotients with step 1e-6 wander by 1e-5): with step 1e-4 that is
    # ≤ 1e-7, and the quotient's truncation O(step²) ~1e-8 (measured 3e-8 off the analytic
    # derivative), well inside atol 1e-5
    torch.autograd.gradcheck(
        lambda *a: layer(*a, solver_args={"eps": 1e-10})[0], leaves, eps=1e-4, atol=1e-5,
        rtol=1e-3,
    )  # fmt: skip


def _kkt_and_dense_gradients(prob, params, variable, vals, seed):
    """{backward: parameter gradients} of a random linear loss on the primal and every
    dual output, solved elements only, for backward "kkt" and "dense" (mode "ipm")."""
    duals = [c.dual_variables[0] for c in prob.constraints]
    grads = {}
    for backward in ("kkt", "dense"):
        layer = CvxpyLayer(prob, params, [variable, *duals], mode="ipm", fast_path=False)
        leaves = [v.clone().requires_grad_(True) for v in vals]
        outputs, info = layer(
            *leaves, solver_args={**TIGHT, "backward": backward}, return_status=True
        )
        solved = torch.tensor([s is Status.SOLVED for s in info.status])
        gen = torch.Generator().manual_seed(seed)
        loss = sum(
            (torch.randn(out.shape, generator=gen, dtype=torch.float64) * out)[solved].sum()
            for out in outputs
        )
        loss.backward()
        grads[backward] = [leaf.grad for leaf in leaves]
    return grads


@pytest.mark.parametrize("name", list(_problems()[0]))
def test_kkt_backward_matches_the_residual_map(name):
    """Backward "kkt" (through the interior point's KKT system at its interior solution)
    against the residual map's dense derivative at the same solution, with the primal
    and every constraint's dual as outputs. The two agree in the limit μ → 0; at the
    ipm modes' eps² (gap ~1e-16 here) and the kkt backward's clip of H at 1e8, to ~1e-8
    relative (measured ≤ 5e-8): 1e-6 leaves a margin."""
    problems, params, x = _problems()
    prob = problems[name]
    grads = _kkt_and_dense_gradients(prob, params, x, _values(4, seed=11), seed=1)
    for ours, ref in zip(grads["kkt"], grads["dense"]):
        scale = float(ref.abs().max())
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6 * max(scale, 1.0))


def test_auto_backward_takes_the_kkt_route_at_interior_solutions(monkeypatch):
    """backward="auto" uses the KKT adjoint after mode "ipm" (interior solutions) and the
    residual map after native SCS (solutions on the cones' boundary)."""
    routes = []
    residual_map = ResidualMapAdjoint.vjp

    def recorded(self, *args):
        routes.append(mode)
        return residual_map(self, *args)

    monkeypatch.setattr(ResidualMapAdjoint, "vjp", recorded)
    problems, params, x = _problems()
    for mode in ("ipm", "scs"):
        layer = CvxpyLayer(problems["soc objective"], params, [x], mode=mode, fast_path=False)
        leaves = [v.requires_grad_(True) for v in _values(2, seed=13)]
        layer(*leaves, solver_args=TIGHT)[0].sum().backward()
    assert routes == ["scs"]


def test_auto_runs_the_compiled_engine_on_dense_batches_only():
    """mode="auto" on CPU tensors: the compiled interior point on batches with enough work
    (B ≥ 8 and B·(n + m) ≥ 1000) of programs whose A is dense enough (the SOCP here: ~25%
    nonzero, n + m = 43), native SCS for a single element, for B = 8 of this small program,
    and for a sparse program (a chain of differences: ~3% nonzero), where SCS's sparse
    factorization wins (docs/benchmarks.md)."""
    gen = torch.Generator().manual_seed(17)
    k = 10
    y, x, M = cp.Variable(k), cp.Parameter(k), cp.Parameter((k, k))
    dense = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.norm(M @ y) <= 1])
    layer = CvxpyLayer(dense, [x, M], [y], fast_path=False)
    for batch, mode in ((1, "scs"), (8, "scs"), (32, "ipm")):
        noise = torch.randn(batch, k, k, generator=gen, dtype=torch.float64)
        values = [
            torch.randn(batch, k, generator=gen, dtype=torch.float64),
            torch.eye(k, dtype=torch.float64) + 0.3 * noise,
        ]
        (_,), info = layer(*values, return_status=True)
        assert info.mode == mode
    n = 60
    z, d = cp.Variable(n), cp.Parameter(n - 1)
    chain = cp.Problem(cp.Minimize(cp.sum_squares(z) + cp.norm(z[:3])), [cp.diff(z) >= d])
    layer = CvxpyLayer(chain, [d], [z], fast_path=False)
    (_,), info = layer(
        torch.rand(32, n - 1, generator=gen, dtype=torch.float64),
        return_status=True,
    )
    assert info.mode == "scs"


def test_compiling_is_announced_once_on_stderr(monkeypatch, capsys):
    """One line on stderr per process, at the first kernel without a cached build; and
    `_cached` finds a compiled kernel's index in numba's cache."""
    from cvxlayer.solvers import numba_cache, residual_kernels

    kernel = residual_kernels.largest
    kernel(np.ones(3))  # compiled (and cached) here if it was not already
    assert numba_cache._cached(kernel)
    monkeypatch.setattr(numba_cache, "_announced", False)
    monkeypatch.setattr(numba_cache, "_checked", set())
    monkeypatch.setattr(numba_cache, "_cached", lambda k: k == "cached")
    numba_cache.announce_compile("cached")
    assert capsys.readouterr().err == ""
    numba_cache.announce_compile("first")
    numba_cache.announce_compile("second")
    assert capsys.readouterr().err.count("cvxlayer: compiling") == 1


def _psd_problems():
    """Programs with PSD cones (side 3), and a batch of their parameters: the nearest
    matrix of the spectraplex's hull (PSD and orthant rows), and a linear objective with a
    Frobenius-norm term (PSD, second-order and equality rows)."""
    k = 3
    X, C = cp.Variable((k, k), symmetric=True), cp.Parameter((k, k), symmetric=True)
    nearest = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0, cp.trace(X) <= 1])
    linear = cp.Problem(
        cp.Minimize(cp.trace(C @ X) + cp.norm(X - np.eye(k) / k, "fro")),
        [X >> 0, cp.trace(X) == 1],
    )
    gen = torch.Generator().manual_seed(5)
    M = torch.randn(4, k, k, generator=gen, dtype=torch.float64)
    return {"nearest": nearest, "linear": linear}, [C], X, [M + M.transpose(1, 2)]


@pytest.mark.parametrize("name", ["nearest", "linear"])
def test_psd_cones_match_the_torch_engine_and_clarabel(name):
    """PSD cones in the compiled engine: the torch engine's statuses and solutions (the same
    iterates: measured ≤ 5e-15 apart; checked at 1e-7 as above) and Clarabel's at 1e-10
    (measured ≤ 2.2e-10 apart) within 1e-6."""
    problems, params, X, vals = _psd_problems()
    prob = problems[name]
    out = {}
    for mode in ("ipm", "ipm-torch"):
        layer = CvxpyLayer(prob, params, [X], mode=mode, fast_path=False)
        assert layer.compiled.structure.cones.psd
        (sol,), info = layer(*vals, solver_args=TIGHT, return_status=True)
        out[mode] = sol, info.status
    assert list(out["ipm"][1]) == list(out["ipm-torch"][1]) == [Status.SOLVED] * 4
    torch.testing.assert_close(out["ipm"][0], out["ipm-torch"][0], atol=1e-7, rtol=0)
    for i in range(4):
        params[0].value = vals[0][i].numpy()
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
        np.testing.assert_allclose(out["ipm"][0][i].numpy(), X.value, atol=1e-6)


@pytest.mark.parametrize("mode", ["ipm", "scs"])
@pytest.mark.parametrize("name", ["nearest", "linear"])
def test_kkt_backward_on_psd_cones_matches_the_residual_map(name, mode):
    """Backward "kkt" with PSD cones (H the complementarity's linearization in the
    eigenbasis of Y − S, `psd_kernels.adjoint_scaling`) against the residual map at the
    same solution, primal and duals as outputs: at the interior point's interior solution
    and at native SCS's on the boundary (the route backward "auto" takes after SCS on such
    programs). Measured ≤ 8e-8 relative (H clipped at 1e8); checked at 1e-6."""
    problems, params, X, vals = _psd_problems()
    prob = problems[name]
    duals = [c.dual_variables[0] for c in prob.constraints]
    grads = {}
    for backward in ("kkt", "dense"):
        layer = CvxpyLayer(prob, params, [X, *duals], mode=mode, fast_path=False)
        leaves = [v.clone().requires_grad_(True) for v in vals]
        outputs = layer(*leaves, solver_args={**TIGHT, "backward": backward})
        gen = torch.Generator().manual_seed(4)
        loss = sum(
            (torch.randn(out.shape, generator=gen, dtype=torch.float64) * out).sum()
            for out in outputs
        )
        loss.backward()
        grads[backward] = leaves[0].grad
    scale = float(grads["dense"].abs().max())
    torch.testing.assert_close(grads["kkt"], grads["dense"], rtol=0, atol=1e-6 * scale)


def test_psd_scaling_matrices_match_the_operators():
    """`psd_kernels`' svec matrices of H (general √M and √M = 1) and W⁻ᵀ against the
    operators applied to each basis vector, and the backward's H at a point of the central
    path (S Y = μI) against Nesterov–Todd's there."""
    from cvxlayer.cones import psd_kernels as pk

    rng = np.random.default_rng(0)
    k = 4
    size = k * (k + 1) // 2
    F = rng.standard_normal((k, k)) + 3 * np.eye(k)
    F_inv = np.linalg.inv(F)
    root = rng.uniform(0.5, 2.0, (k, k))
    root = (root + root.T) / 2

    def columns(inverse, transpose, root, h=False):
        out, column = np.empty((size, size)), np.empty(size)
        for j in range(size):
            basis = np.zeros(size)
            basis[j] = 1.0
            if h:
                pk.apply_h(F, F_inv, root, k, basis, column, 0, False)
            else:
                pk.apply_w(F, F_inv, root, k, basis, column, 0, inverse, transpose)
            out[:, j] = column
        return out

    for r in (root, np.ones((k, k))):
        H = np.empty((size, size))
        pk.h_matrix(F, r, k, H)
        np.testing.assert_allclose(H, columns(False, False, r, h=True), atol=1e-12)
        W = np.empty((size, size))
        pk.winv_t_matrix(F_inv, r, k, W)
        np.testing.assert_allclose(W, columns(True, True, r), atol=1e-12)
    # central path: S = Q diag(s) Qᵀ, Y = Q diag(μ/s) Qᵀ
    Q = np.linalg.qr(rng.standard_normal((k, k)))[0]
    s_eig = rng.uniform(0.1, 2.0, k)
    S, Y = ((Q * d) @ Q.T for d in (s_eig, 1e-2 / s_eig))
    s, y = np.empty(size), np.empty(size)
    pk.to_vec(S, k, s, 0)
    pk.to_vec(Y, k, y, 0)
    nt = [np.empty((k, k)) for _ in range(3)]
    pk.scaling(s, y, 0, k, *nt, np.empty(k), np.empty(size))
    exact = [np.empty((k, k)) for _ in range(3)]
    pk.adjoint_scaling(s, y, 0, k, *exact, 1e8)
    H_nt, H_exact = np.empty((size, size)), np.empty((size, size))
    pk.h_matrix(nt[0], nt[2], k, H_nt)
    pk.h_matrix(exact[0], exact[2], k, H_exact)
    np.testing.assert_allclose(H_exact, H_nt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["qp with equalities", "soc objective"])
def test_kkt_backward_eliminates_lifted_variables_exactly(name, monkeypatch):
    """The adjoint kernel on dense matrices eliminates the lifted variables (cvxpy's t = x − c
    of sum_squares: here 6 of them) before factoring, as the forward does; its solution
    equals the full system's to rounding (measured ≤ 2e-11 relative on T5a; checked at
    1e-9 here, where the systems' condition numbers stay below 1e6)."""
    problems, params, x = _problems()
    prob = problems[name]
    layer = CvxpyLayer(prob, params, [x], mode="ipm", fast_path=False)
    lifted = ipm_compiled.lifted_columns(layer.compiled.structure)
    assert lifted[0].size == n
    calls = []
    original = ipm_compiled.adjoint_each
    monkeypatch.setattr(
        ipm_compiled, "adjoint_each", lambda *args: calls.append(args) or original(*args)
    )
    leaves = [v.requires_grad_(True) for v in _values(4, seed=17)]
    layer(*leaves, solver_args=TIGHT)[0].sum().backward()
    args = list(calls[0])
    # gradients on x and y, the defining rows' y included; none on s: it enters both solves
    # only through gy − H gs, which H (clipped to [1e-8, 1e8]) would scale, and with it
    # both solves' rounding, by up to 1e8
    rng = np.random.default_rng(3)
    args[12:15] = (
        rng.standard_normal(args[12].shape),
        rng.standard_normal(args[13].shape),
        0 * args[14],
    )
    solutions = []
    for chosen in (lifted, ipm_compiled.NONE_LIFTED):
        args[7] = chosen
        u, v = np.zeros_like(args[15]), np.zeros_like(args[16])
        ok = np.zeros(len(u), dtype=bool)
        original(*args[:15], u, v, np.arange(len(u)), ok)
        assert ok.all()
        solutions.append(np.concatenate([u, v], 1))
    reduced, full = solutions
    np.testing.assert_allclose(reduced, full, rtol=0, atol=1e-9 * np.abs(full).max())
