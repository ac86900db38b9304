"""Programs with no inequality rows, or none at all (m = 0), in every mode: unconstrained
QPs and least squares, equality-only problems, a linear objective without constraints
(unbounded), and the smallest constrained program. Values against closed forms, gradients
by `gradcheck`.

Tolerances: every solve runs at eps = 1e-10 on data of norm ~1, so each solution is
accurate to ≲ 1e-9 (values are checked at 1e-6). gradcheck's central differences with step
h = 1e-6 then err by ≲ 1e-9 / h = 1e-3 from the solves' error (plus O(h²) from curvature):
gradcheck runs with atol = rtol = 1e-3.
"""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, Status

MODES = [
    ("scs", False),
    ("scs-block", False),
    ("ipm", False),
    ("torch", False),
    ("clarabel", False),
    ("scs", "qp"),
]
EPS = {"eps": 1e-10, "max_iters": 200_000}
n = 3


def _ids(mode):
    return f"{mode[0]}-{mode[1] or 'generic'}"


def _spd(gen, batch):
    M = torch.randn(batch, n, n, generator=gen, dtype=torch.float64)
    return M @ M.transpose(1, 2) + torch.eye(n, dtype=torch.float64)


def _layer(prob, params, variables, mode):
    return CvxpyLayer(prob, params, variables, mode=mode[0], fast_path=mode[1])


def _check(layer, inputs, expected, atol=1e-6):
    """Values against `expected` (callable of the inputs), then gradcheck of the layer."""
    (x,), info = layer(*inputs, solver_args=EPS, return_status=True)
    assert all(s is Status.SOLVED for s in info.status), info.status
    torch.testing.assert_close(x, expected(*inputs), atol=atol, rtol=0)
    leaves = [t.clone().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(
        lambda *a: layer(*a, solver_args=EPS)[0], leaves, eps=1e-6, atol=1e-3, rtol=1e-3
    )


@pytest.mark.parametrize("mode", MODES, ids=_ids)
@pytest.mark.parametrize("batch", [None, 1, 4])
def test_unconstrained_qp_with_psd_parameter(mode, batch):
    """min xᵀQx + qᵀx: x = −½ Q⁻¹ q."""
    Q, q, x = cp.Parameter((n, n), PSD=True), cp.Parameter(n), cp.Variable(n)
    layer = _layer(cp.Problem(cp.Minimize(cp.quad_form(x, Q) + q @ x)), [Q, q], [x], mode)
    gen = torch.Generator().manual_seed(0)
    Qv, qv = _spd(gen, batch or 1), torch.randn(batch or 1, n, generator=gen, dtype=torch.float64)
    if batch is None:
        Qv, qv = Qv[0], qv[0]
    _check(layer, (Qv, qv), lambda Q, q: -0.5 * torch.linalg.solve(Q, q))


@pytest.mark.parametrize("mode", MODES, ids=_ids)
def test_several_quad_forms_and_combined_parameters(mode):
    """min xᵀQ₁x + xᵀQ₂x + (q − r)ᵀx: x = −½ (Q₁ + Q₂)⁻¹ (q − r)."""
    Q1, Q2 = cp.Parameter((n, n), PSD=True), cp.Parameter((n, n), PSD=True)
    q, r, x = cp.Parameter(n), cp.Parameter(n), cp.Variable(n)
    objective = cp.quad_form(x, Q1) + cp.quad_form(x, Q2) + (q - r) @ x
    layer = _layer(cp.Problem(cp.Minimize(objective)), [Q1, Q2, q, r], [x], mode)
    gen = torch.Generator().manual_seed(1)
    inputs = (_spd(gen, 2), _spd(gen, 2), *torch.randn(2, 2, n, generator=gen, dtype=torch.float64))
    _check(layer, inputs, lambda Q1, Q2, q, r: -0.5 * torch.linalg.solve(Q1 + Q2, q - r))


@pytest.mark.parametrize("mode", MODES, ids=_ids)
def test_maximize_concave_least_squares(mode):
    """max −‖Fx − g‖² − ‖x‖² + (−h)ᵀx: x = (FᵀF + I)⁻¹ (Fᵀg − h/2)."""
    F, g, h, x = cp.Parameter((4, n)), cp.Parameter(4), cp.Parameter(n), cp.Variable(n)
    objective = -cp.sum_squares(F @ x - g) - cp.sum_squares(x) + (-h) @ x
    layer = _layer(cp.Problem(cp.Maximize(objective)), [F, g, h], [x], mode)
    gen = torch.Generator().manual_seed(2)
    inputs = tuple(
        torch.randn(3, *s, generator=gen, dtype=torch.float64) for s in [(4, n), (4,), (n,)]
    )

    def expected(F, g, h):
        H = F.transpose(1, 2) @ F + torch.eye(n, dtype=torch.float64)
        return torch.linalg.solve(H, (F.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1) - h / 2)

    _check(layer, inputs, expected)


@pytest.mark.parametrize("mode", MODES, ids=_ids)
def test_linear_objective_without_constraints_is_unbounded(mode):
    c, x = cp.Parameter(n), cp.Variable(n)
    layer = _layer(cp.Problem(cp.Minimize(c @ x)), [c], [x], mode)
    c_val = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 0.0]], dtype=torch.float64)
    _, info = layer(c_val, return_status=True)
    assert all(s in (Status.UNBOUNDED, Status.UNBOUNDED_INACCURATE) for s in info.status)


@pytest.mark.parametrize("mode", MODES, ids=_ids)
def test_equality_constraints_only(mode):
    """min ‖x − p‖² s.t. Fx = g: x = p − Fᵀ(FFᵀ)⁻¹(Fp − g)."""
    p, F, g, x = cp.Parameter(n), cp.Parameter((2, n)), cp.Parameter(2), cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [F @ x == g])
    layer = _layer(prob, [p, F, g], [x], mode)
    gen = torch.Generator().manual_seed(3)
    inputs = tuple(
        torch.randn(2, *s, generator=gen, dtype=torch.float64) for s in [(n,), (2, n), (2,)]
    )

    def expected(p, F, g):
        r = (F @ p.unsqueeze(-1)).squeeze(-1) - g
        lam = torch.linalg.solve(F @ F.transpose(1, 2), r)
        return p - (F.transpose(1, 2) @ lam.unsqueeze(-1)).squeeze(-1)

    _check(layer, inputs, expected)


@pytest.mark.parametrize("mode", MODES, ids=_ids)
def test_one_variable_one_constraint(mode):
    """min (x − p)² s.t. x ≥ 0: x = max(p, 0) (away from the kink)."""
    p, x = cp.Parameter(1), cp.Variable(1)
    layer = _layer(cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0]), [p], [x], mode)
    p_val = torch.tensor([[-0.7], [0.4], [1.3]], dtype=torch.float64)
    _check(layer, (p_val,), lambda p: p.clamp(min=0))


def test_unconstrained_qp_takes_the_fast_path_at_any_batch():
    """Without inequality rows the QP path's interior point is one linear solve: it pays
    off even for one element on the CPU."""
    Q, q, x = cp.Parameter((n, n), PSD=True), cp.Parameter(n), cp.Variable(n)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(cp.quad_form(x, Q) + q @ x)), [Q, q], [x])
    gen = torch.Generator().manual_seed(5)
    Qv, qv = _spd(gen, 1), torch.randn(1, n, generator=gen, dtype=torch.float64)
    (xs,), info = layer(Qv, qv, return_status=True)
    assert info.mode == "qp"
    torch.testing.assert_close(xs, -0.5 * torch.linalg.solve(Qv, qv), atol=1e-10, rtol=0)
    assert np.isfinite(xs.numpy()).all()
