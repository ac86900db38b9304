"""A small library of parametrized problems, feasible by construction, with random values.

Each builder returns a `Case`: the cvxpy problem, its parameters and requested variables,
and a function that draws parameter values (numpy, unbatched) from a generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cvxpy as cp
import numpy as np


@dataclass
class Case:
    name: str
    problem: cp.Problem
    parameters: list[cp.Parameter]
    variables: list[cp.Variable]
    draw: Callable[[np.random.Generator], list[np.ndarray]]


def qp(n: int = 4, m: int = 3, p: int = 2) -> Case:
    """min ½‖Lx‖² + qᵀx  s.t. Gx ≤ h, Ax = b  (h = G z₀ + s₀, b = A z₀: feasible)."""
    L = cp.Parameter((n, n))
    q = cp.Parameter(n)
    G = cp.Parameter((m, n))
    h = cp.Parameter(m)
    A = cp.Parameter((p, n))
    b = cp.Parameter(p)
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L @ x) + q @ x), [G @ x <= h, A @ x == b])

    def draw(rng):
        Lv = rng.standard_normal((n, n)) + 2 * np.eye(n)
        Gv, Av, z0 = (
            rng.standard_normal((m, n)),
            rng.standard_normal((p, n)),
            rng.standard_normal(n),
        )
        return [Lv, rng.standard_normal(n), Gv, Gv @ z0 + rng.uniform(0.5, 1, m), Av, Av @ z0]

    return Case("qp", prob, [L, q, G, h, A, b], [x], draw)


def socp(n: int = 3) -> Case:
    """Projection onto an ellipsoid: min ½‖y − p‖²  s.t. ‖F y − g‖ ≤ 1."""
    F = cp.Parameter((n, n))
    g = cp.Parameter(n)
    p = cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - p)), [cp.norm(F @ y - g) <= 1])

    def draw(rng):
        Fv = rng.standard_normal((n, n)) + 2 * np.eye(n)
        return [Fv, rng.standard_normal(n) * 0.3, 3 * rng.standard_normal(n)]

    return Case("socp", prob, [F, g, p], [y], draw)


def exp_cone(n: int = 4) -> Case:
    """Entropy-regularized linear program over the simplex with a cap (exp cones):
    min −θᵀy − Σ entr(y) + ½‖y‖²·0  s.t. 1ᵀy = 1, y ≤ u."""
    theta = cp.Parameter(n)
    u = cp.Parameter(n, nonneg=True)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(-theta @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1, y <= u])

    def draw(rng):
        return [rng.standard_normal(n), rng.uniform(0.26, 0.45, n)]  # caps bind, sum > 1

    return Case("exp", prob, [theta, u], [y], draw)


def psd(k: int = 3) -> Case:
    """Nearest PSD matrix with a trace bound: min ‖X − C‖_F²  s.t. X ⪰ 0, tr X ≤ t."""
    C = cp.Parameter((k, k), symmetric=True)
    t = cp.Parameter(nonneg=True)
    X = cp.Variable((k, k), symmetric=True)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0, cp.trace(X) <= t])

    def draw(rng):
        M = rng.standard_normal((k, k))
        return [(M + M.T) / 2, np.array(rng.uniform(0.3, 0.6))]  # the trace bound binds

    return Case("psd", prob, [C, t], [X], draw)


def power_cone(n: int = 3) -> Case:
    """Projection of a point P (3 × n) onto a product of 3-d power cones (column i in K_αᵢ)
    under a budget on the first row: min ½‖V − P‖²  s.t. (V₀ᵢ, V₁ᵢ, V₂ᵢ) ∈ K_αᵢ, 1ᵀV₀ ≤ s."""
    P = cp.Parameter((3, n))
    s = cp.Parameter(nonneg=True)
    V = cp.Variable((3, n))
    alpha = np.linspace(0.25, 0.75, n)
    constraints = [cp.PowCone3D(V[0], V[1], V[2], alpha), cp.sum(V[0]) <= s]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(V - P) / 2), constraints)

    def draw(rng):
        point = rng.standard_normal((3, n)) + np.array([[1.5], [1.0], [0.0]])
        return [point, np.array(rng.uniform(0.5, 1.0))]

    return Case("pow", prob, [P, s], [V], draw)


CASES = {c.name: c for c in (qp(), socp(), exp_cone(), psd(), power_cone())}


def solve_reference(case: Case, values: list[np.ndarray]) -> list[np.ndarray]:
    """The requested variables, solved by cvxpy with Clarabel at tight tolerances."""
    for param, value in zip(case.parameters, values):
        param.value = value
    case.problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    assert case.problem.status == cp.OPTIMAL, case.problem.status
    return [np.asarray(v.value) for v in case.variables]
