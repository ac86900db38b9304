"""The interior-point mode on what makes interior points fail: certificates inside a batch,
degenerate programs (redundant and rank-deficient equalities, free variables, the smallest
cones, LPs), float32, and mixed cones with their duals against Clarabel."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, Status

TIGHT = {"eps": 1e-9}


def _clarabel(prob, params, values, outputs):
    for p, v in zip(params, values):
        p.value = v
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return [o.value for o in outputs]


def _check_batch(prob, params, outputs, batch, atol=1e-6, mode="ipm"):
    layer = CvxpyLayer(prob, params, outputs, mode=mode, fast_path=False)
    tensors = [torch.as_tensor(np.stack(v)) for v in zip(*batch)]
    got, info = layer(*tensors, solver_args=TIGHT, return_status=True)
    assert info.mode == mode and all(s is Status.SOLVED for s in info.status), info.status
    for i, values in enumerate(batch):
        for out, ref in zip(got, _clarabel(prob, params, values, outputs)):
            np.testing.assert_allclose(out[i].numpy(), ref, atol=atol)
    return info


def test_certificates_inside_a_batch():
    """min y + w z  s.t. lo ≤ y ≤ 1, z ≥ 0: infeasible where lo > 1 (whatever w), unbounded
    where it is feasible and w < 0; the others solved exactly."""
    lo, w = cp.Parameter(name="lo"), cp.Parameter(name="w")
    y, z = cp.Variable(name="y"), cp.Variable(name="z")
    prob = cp.Problem(cp.Minimize(y + w * z), [y >= lo, y <= 1, z >= 0])
    layer = CvxpyLayer(prob, [lo, w], [y, z], mode="ipm", fast_path=False)
    lo_t = torch.tensor([0.0, 2.0, 0.5, 0.25, 3.0], dtype=torch.float64)
    w_t = torch.tensor([1.0, 1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    (y_out, z_out), info = layer(lo_t, w_t, solver_args=TIGHT, return_status=True)
    S = Status
    assert info.status == (S.SOLVED, S.INFEASIBLE, S.UNBOUNDED, S.SOLVED, S.INFEASIBLE)
    torch.testing.assert_close(y_out[[0, 3]], lo_t[[0, 3]], atol=1e-8, rtol=0)
    torch.testing.assert_close(
        z_out[[0, 3]], torch.zeros(2, dtype=torch.float64), atol=1e-8, rtol=0
    )
    assert torch.isnan(y_out[1]) and torch.isnan(y_out[4])  # no solution: NaN, not a guess


def test_redundant_and_rank_deficient_equalities():
    """The same equality three times (and a combination of two others), a free variable
    that only the objective bounds, and the smallest SOC (size 2: |x₁| ≤ t)."""
    n = 4
    c = cp.Parameter(n)
    x, free, t = cp.Variable(n), cp.Variable(), cp.Variable()
    cons = [
        cp.sum(x) == 1,
        cp.sum(x) == 1,
        2 * cp.sum(x) == 2,
        x[0] - x[1] == 0,
        x[1] - x[2] == 0,
        x[0] - x[2] == 0,  # the difference of the two above
        x >= 0,
        cp.SOC(t, x[3:4]),
    ]
    prob = cp.Problem(cp.Minimize(c @ x + cp.square(free - c[0]) + t), cons)
    rng = np.random.default_rng(0)
    _check_batch(prob, [c], [x, free, t], [[rng.standard_normal(n)] for _ in range(4)])


def test_degenerate_lp_vertex():
    """An LP whose solution is a degenerate vertex (more active constraints than variables)."""
    c = cp.Parameter(2)
    x = cp.Variable(2)
    cons = [x >= 0, x[0] + x[1] <= 1, x[0] <= 1, x[1] <= 1, x[0] + 2 * x[1] <= 1]
    prob = cp.Problem(cp.Minimize(c @ x), cons)
    batch = [[np.array([-1.0, -1.0])], [np.array([-1.0, 0.5])], [np.array([0.2, -1.0])]]
    _check_batch(prob, [c], [x], batch)


@pytest.mark.parametrize("mode", ["ipm", "clarabel"])
def test_mixed_cones_and_their_duals_match_clarabel(mode):
    """Nonnegative, second-order and PSD cones and equalities in one program; primal
    variables and every constraint's dual variable against Clarabel."""
    k = 3
    C = cp.Parameter((k, k), symmetric=True)
    g = cp.Parameter(k)
    X, y = cp.Variable((k, k), symmetric=True), cp.Variable(k)
    cons = [X >> 0, cp.norm(y - g) <= 1, y >= -0.5, cp.trace(X) + cp.sum(y) == 1]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C) + cp.sum_squares(y)), cons)
    outputs = [X, y] + [con.dual_variables[0] for con in cons]
    rng = np.random.default_rng(1)

    def draw():
        M = rng.standard_normal((k, k))
        return [(M + M.T) / 2, 0.3 * rng.standard_normal(k)]  # feasible: y = g − t·1 fits

    _check_batch(prob, [C, g], outputs, [draw() for _ in range(3)], atol=2e-6, mode=mode)


def test_float32_runs_in_float32_to_its_floor():
    x = cp.Parameter(5)
    y = cp.Variable(5)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.norm(y) <= 1, y >= -0.2])
    layer = CvxpyLayer(prob, [x], [y], mode="ipm", fast_path=False)
    gen = torch.Generator().manual_seed(2)
    x32 = 2 * torch.randn(4, 5, generator=gen)
    (y32,), info = layer(x32, return_status=True)
    assert y32.dtype == torch.float32 and all(s is Status.SOLVED for s in info.status)
    (y64,) = layer(x32.double(), solver_args=TIGHT)
    # float32's tolerance is floored at 1e-4; its interior point aims at 1e-6 (module docs)
    torch.testing.assert_close(y32.double(), y64, atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "mode, line", [("ipm", "[ipm] element 0: solved in"), ("ipm-torch", "[ipm] iter  0")]
)
def test_verbose_prints_progress(capsys, mode, line):
    """The torch engine prints a table per iteration, the compiled one a line per element."""
    x = cp.Parameter(2)
    y = cp.Variable(2)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0])
    layer = CvxpyLayer(prob, [x], [y], mode=mode, fast_path=False)
    layer(torch.tensor([1.0, -1.0], dtype=torch.float64), solver_args={"verbose": True})
    out = capsys.readouterr().out
    assert line in out and "res_pri" in out


@pytest.mark.parametrize("mode", ["ipm", "clarabel"])
def test_exponential_cone_certificates_inside_a_batch(mode):
    """min w·y  s.t. exp(y₀) ≤ b, y₁ ≥ 0: solved (y = (log b, 0)) where w = (−1, 1), b > 0;
    unbounded where w₁ < 0; infeasible where b < 0."""
    w, b = cp.Parameter(2), cp.Parameter()
    y = cp.Variable(2)
    prob = cp.Problem(cp.Minimize(w @ y), [cp.exp(y[0]) <= b, y[1] >= 0])
    layer = CvxpyLayer(prob, [w, b], [y], mode=mode, fast_path=False)
    w_t = torch.tensor([[-1.0, 1.0], [-1.0, -1.0], [-1.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
    b_t = torch.tensor([2.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    (y_out,), info = layer(w_t, b_t, solver_args=TIGHT, return_status=True)
    S = Status
    assert info.status == (S.SOLVED, S.UNBOUNDED, S.INFEASIBLE, S.SOLVED)
    expected = torch.stack([b_t[[0, 3]].log(), torch.zeros(2, dtype=torch.float64)], 1)
    torch.testing.assert_close(y_out[[0, 3]], expected, atol=1e-6, rtol=0)
    assert torch.isnan(y_out[2]).all()


@pytest.mark.parametrize("mode", ["ipm", "clarabel"])
def test_every_cone_family_in_one_program_matches_clarabel(mode):
    """Equalities, nonnegative, second-order, PSD, exponential and power cones (α = 0.1 …
    0.9) together; primal variables and each constraint's dual against Clarabel."""
    k = 2
    C, g = cp.Parameter((k, k), symmetric=True), cp.Parameter(3)
    X, y, u = cp.Variable((k, k), symmetric=True), cp.Variable(3), cp.Variable(3)
    alphas = [0.1, 0.5, 0.9]
    cons = [
        X >> 0,
        cp.norm(y - g) <= 1,
        u >= 0.05,
        cp.sum(u) + cp.trace(X) == 2,
        cp.sum(cp.entr(u)) >= -1,
        cp.PowCone3D(u, 1 + y, 0.3 * y, alphas),
    ]
    objective = cp.sum_squares(X - C) + cp.sum_squares(y) - cp.sum(cp.log(u))
    prob = cp.Problem(cp.Minimize(objective), cons)
    outputs = [X, y, u] + [con.dual_variables[0] for con in cons[:5]]
    rng = np.random.default_rng(2)

    def draw():
        M = rng.standard_normal((k, k))
        return [(M + M.T) / 2, 0.3 * rng.standard_normal(3)]

    # exponential/power cones: the iteration's tail stalls ~1e-6 from the exact duals, and
    # Clarabel's own are good to ~1e-6 here (docs/benchmarks.md, issue 16)
    _check_batch(prob, [C, g], outputs, [draw() for _ in range(3)], atol=1e-5, mode=mode)


def test_geometric_program_matches_clarabel():
    """A GP (gp=True: exponential cones after the log change of variables) by the interior
    point against cvxpy's own DGP solve."""
    x, y, z = cp.Variable(pos=True), cp.Variable(pos=True), cp.Variable(pos=True)
    a, b = cp.Parameter(pos=True), cp.Parameter(pos=True)
    prob = cp.Problem(cp.Minimize(1 / (x * y * z)), [a * (x * y + x * z + y * z) <= b, x >= 2 * y])
    layer = CvxpyLayer(prob, [a, b], [x, y, z], gp=True, mode="ipm")
    a_t = torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    b_t = torch.tensor([1.5, 2.0, 0.3], dtype=torch.float64)
    outputs, info = layer(a_t, b_t, solver_args=TIGHT, return_status=True)
    assert info.mode == "ipm" and all(s is Status.SOLVED for s in info.status)
    for i in range(3):
        a.value, b.value = float(a_t[i]), float(b_t[i])
        prob.solve(gp=True, solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10)
        for var, out in zip((x, y, z), outputs):
            # Clarabel's DGP answers here are good to ~1e-5 (SCS at eps 1e-11 agrees with
            # ours to 1.4e-6 and with Clarabel to 1e-5), as in test_gp
            np.testing.assert_allclose(float(out[i]), var.value, rtol=5e-5)
