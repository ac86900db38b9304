"""Benchmark tasks of design.md §3, each a DPP cvxpy problem with batched parameter values.

A task gives the cvxpy problem, its parameters and variable, a seeded batch of parameter
values (float64 torch tensors, batch first), and, where the peer applies, the equivalent
qpth call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cvxpy as cp
import torch


@dataclass
class Task:
    name: str
    description: str
    problem: cp.Problem
    parameters: list[cp.Parameter]
    variable: cp.Variable
    values: list[torch.Tensor]
    # qpth form (Q, p, G, h, A, b) built from `values`, or None when qpth does not apply
    qpth_args: Callable[[list[torch.Tensor]], tuple] | None = None
    peers: tuple[str, ...] = field(default=("cvxpylayers",))
    extras: dict = field(default_factory=dict)  # sizes the non-cvxpy peers need


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _qpth_q(L: torch.Tensor, eps: float) -> torch.Tensor:
    """Q = LᵀL + εI, the objective ½‖Lx‖² + ½ε‖x‖² in qpth's form."""
    return L.transpose(1, 2) @ L + eps * torch.eye(L.shape[-1], dtype=L.dtype)


def dense_qp(batch: int = 128, n: int = 100, m: int = 100, seed: int = 0) -> Task:
    """T1: min ½‖Lx‖² + pᵀx + ½ε‖x‖²  s.t. Gx ≤ h, all batched (h = G z₀ + s₀: feasible)."""
    g = _gen(seed)
    L = cp.Parameter((n, n))
    p = cp.Parameter(n)
    G = cp.Parameter((m, n))
    h = cp.Parameter(m)
    x = cp.Variable(n)
    eps = 1e-3
    problem = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(L @ x) + p @ x + 0.5 * eps * cp.sum_squares(x)),
        [G @ x <= h],
    )
    Lv = torch.randn(batch, n, n, generator=g, dtype=torch.float64) / n**0.5
    pv = torch.randn(batch, n, generator=g, dtype=torch.float64)
    Gv = torch.randn(batch, m, n, generator=g, dtype=torch.float64)
    z0 = torch.randn(batch, n, generator=g, dtype=torch.float64)
    hv = (Gv @ z0.unsqueeze(-1)).squeeze(-1) + torch.rand(
        batch, m, generator=g, dtype=torch.float64
    )

    def qpth_args(vals):
        Lq, pq, Gq, hq = vals
        empty = torch.empty(0, dtype=Lq.dtype)
        return _qpth_q(Lq, eps), pq, Gq, hq, empty, empty

    return Task(
        "T1",
        f"dense QP n={n} m={m} B={batch}",
        problem,
        [L, p, G, h],
        x,
        [Lv, pv, Gv, hv],
        qpth_args,
        ("cvxpylayers", "qpth", "proxsuite", "osqp"),
    )


def box_qp_uniform(batch: int = 128, n: int = 100, seed: int = 11) -> Task:
    """T2: min ½‖Ux‖² + qᵀx + ½·1e-3‖x‖²  s.t. |x| ≤ 1, with U uniform on [0, 1] and
    q = 10·randn per element (Q = UᵀU + 1e-3·I: ~63% of the bounds active)."""
    g = _gen(seed)
    U = cp.Parameter((n, n))
    q = cp.Parameter(n)
    x = cp.Variable(n)
    eps = 1e-3
    problem = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(U @ x) + q @ x + 0.5 * eps * cp.sum_squares(x)),
        [x <= 1, x >= -1],
    )
    Uv = torch.rand(batch, n, n, generator=g, dtype=torch.float64)
    qv = 10 * torch.randn(batch, n, generator=g, dtype=torch.float64)

    def qpth_args(vals):
        Uq, qq = vals
        eye = torch.eye(n, dtype=Uq.dtype)
        empty = torch.empty(0, dtype=Uq.dtype)
        ones = torch.ones(2 * n, dtype=Uq.dtype)
        return _qpth_q(Uq, eps), qq, torch.cat([eye, -eye]), ones, empty, empty

    return Task(
        "T2",
        f"box QP, Q = UᵀU + 1e-3·I, U uniform, q = 10·randn, n={n} B={batch}",
        problem,
        [U, q],
        x,
        [Uv, qv],
        qpth_args,
        ("cvxpylayers", "qpth", "proxsuite", "osqp"),
    )


def box_qp(batch: int = 128, n: int = 100, seed: int = 1) -> Task:
    """T2-normal (the earlier T2): min ½‖Lx‖² + pᵀx + ½ε‖x‖²  s.t. −1 ≤ x ≤ 1."""
    g = _gen(seed)
    L = cp.Parameter((n, n))
    p = cp.Parameter(n)
    x = cp.Variable(n)
    eps = 1e-3
    problem = cp.Problem(
        cp.Minimize(0.5 * cp.sum_squares(L @ x) + p @ x + 0.5 * eps * cp.sum_squares(x)),
        [x <= 1, x >= -1],
    )
    Lv = torch.randn(batch, n, n, generator=g, dtype=torch.float64) / n**0.5
    pv = 3 * torch.randn(batch, n, generator=g, dtype=torch.float64)

    def qpth_args(vals):
        Lq, pq = vals
        eye = torch.eye(n, dtype=Lq.dtype)
        empty = torch.empty(0, dtype=Lq.dtype)
        return (
            _qpth_q(Lq, eps),
            pq,
            torch.cat([eye, -eye]),
            torch.ones(2 * n, dtype=Lq.dtype),
            empty,
            empty,
        )

    return Task(
        "T2-normal",
        f"box QP, L normal, n={n} B={batch}",
        problem,
        [L, p],
        x,
        [Lv, pv],
        qpth_args,
        ("cvxpylayers", "qpth", "proxsuite", "osqp"),
    )


def ellipsoid_projection(batch: int = 128, n: int = 50, seed: int = 2) -> Task:
    """T5-soc: min ½‖y − x‖²  s.t. ‖F y − g‖ ≤ 1 (second-order cones)."""
    gen = _gen(seed)
    x = cp.Parameter(n)
    F = cp.Parameter((n, n))
    g = cp.Parameter(n)
    y = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x)), [cp.norm(F @ y - g) <= 1])
    Fv = (
        torch.eye(n, dtype=torch.float64)
        + 0.3 * torch.randn(batch, n, n, generator=gen, dtype=torch.float64) / n**0.5
    )
    gv = 0.1 * torch.randn(batch, n, generator=gen, dtype=torch.float64)
    xv = 2 * torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return Task(
        "T5-soc", f"ellipsoid projection n={n} B={batch}", problem, [x, F, g], y, [xv, Fv, gv]
    )


def soc_projection(batch: int = 128, n: int = 40, m: int = 30, seed: int = 7) -> Task:
    """T5a: min ‖y − x‖²  s.t. ‖A y − b‖₂ ≤ 1 (one second-order cone), A (m × n) and b shared,
    x batched."""
    gen = _gen(seed)
    x, A, b = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    y = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.norm(A @ y - b) <= 1])
    Av = torch.randn(m, n, generator=gen, dtype=torch.float64) / m**0.5
    bv = 0.1 * torch.randn(m, generator=gen, dtype=torch.float64)
    xv = 2 * torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return Task("T5a", f"SOC projection n={n} m={m} B={batch}", problem, [x, A, b], y, [xv, Av, bv])


def psd_projection(batch: int = 128, k: int = 10, seed: int = 8) -> Task:
    """T5c: the nearest PSD matrix to a symmetric C: min ‖X − C‖_F²  s.t. X ⪰ 0 (side k)."""
    gen = _gen(seed)
    C = cp.Parameter((k, k), symmetric=True)
    X = cp.Variable((k, k), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0])
    M = torch.randn(batch, k, k, generator=gen, dtype=torch.float64)
    return Task(
        "T5c", f"nearest PSD k={k} B={batch}", problem, [C], X, [(M + M.transpose(1, 2)) / 2]
    )


def entropy_projection(batch: int = 128, n: int = 40, k: int = 10, seed: int = 9) -> Task:
    """T5b: min −xᵀy − Σ entr(y)  s.t. 1ᵀy = 1, G y ≤ 0.55 (exponential cones), G (k × n)
    shared, x batched."""
    gen = _gen(seed)
    x, G = cp.Parameter(n), cp.Parameter((k, n))
    y = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1, G @ y <= 0.55])
    Gv = torch.rand(k, n, generator=gen, dtype=torch.float64)
    xv = 2 * torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return Task("T5b", f"entropy, linear constraints n={n} B={batch}", problem, [x, G], y, [xv, Gv])


def pnorm_projection(batch: int = 128, n: int = 40, p: float = 1.5, seed: int = 10) -> Task:
    """T5d: min ‖y − x‖²  s.t. ‖y‖_p ≤ 1 (power cones: cvxpy's exact form, approx=False),
    x batched."""
    gen = _gen(seed)
    x = cp.Parameter(n)
    y = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.pnorm(y, p, approx=False) <= 1])
    xv = 2 * torch.randn(batch, n, generator=gen, dtype=torch.float64) / n**0.5
    return Task("T5d", f"p-norm ball projection p={p} n={n} B={batch}", problem, [x], y, [xv])


def softmax(batch: int = 128, d: int = 50, seed: int = 3) -> Task:
    """T5-exp: softmax as argmin −xᵀy − H(y) s.t. 1ᵀy = 1 (exponential cones)."""
    gen = _gen(seed)
    x = cp.Parameter(d)
    y = cp.Variable(d)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1])
    xv = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    return Task("T5-exp", f"softmax d={d} B={batch}", problem, [x], y, [xv])


def nearest_psd(batch: int = 128, k: int = 10, seed: int = 4) -> Task:
    """T5-psd: min ‖X − C‖_F²  s.t. X ⪰ 0, tr X ≤ 1 (a PSD cone of side k)."""
    gen = _gen(seed)
    C = cp.Parameter((k, k), symmetric=True)
    X = cp.Variable((k, k), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X - C)), [X >> 0, cp.trace(X) <= 1])
    M = torch.randn(batch, k, k, generator=gen, dtype=torch.float64)
    return Task(
        "T5-psd", f"nearest PSD k={k} B={batch}", problem, [C], X, [(M + M.transpose(1, 2)) / 2]
    )


def lqr_control(batch: int = 128, n: int = 10, m: int = 2, T: int = 5, seed: int = 5) -> Task:
    """T3: min ½Σ‖x_t‖² + ½Σ‖u_t‖²  s.t. x_0 = x_init, x_{t+1} = A x_t + B u_t (A, B, x_init
    batched); the controls U (m × T) are the output."""
    gen = _gen(seed)
    A, B, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
    X, U = cp.Variable((n, T + 1)), cp.Variable((m, T))
    cost = 0.5 * cp.sum_squares(X) + 0.5 * cp.sum_squares(U)
    dynamics = [X[:, 0] == x0] + [X[:, t + 1] == A @ X[:, t] + B @ U[:, t] for t in range(T)]
    Av = torch.eye(n, dtype=torch.float64) + 0.1 * torch.randn(
        batch, n, n, generator=gen, dtype=torch.float64
    )
    Bv = torch.randn(batch, n, m, generator=gen, dtype=torch.float64)
    x0v = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return Task(
        "T3",
        f"LQR n={n} m={m} T={T} B={batch}",
        cp.Problem(cp.Minimize(cost), dynamics),
        [A, B, x0],
        U,
        [Av, Bv, x0v],
        peers=("cvxpylayers", "mpc.pytorch"),
        extras={"n": n, "m": m, "T": T},
    )


def box_lqr(
    batch: int = 128, n: int = 10, m: int = 2, T: int = 10, u_max: float = 0.3, seed: int = 12
) -> Task:
    """T7 (box-constrained MPC): T3 with |u_t| ≤ u_max (A, B, x_init batched)."""
    task = lqr_control(batch, n, m, T, seed)
    X, U = task.problem.variables()
    X, U = (X, U) if X.shape[0] == n else (U, X)
    constraints = task.problem.constraints + [cp.abs(U) <= u_max]
    return Task(
        "T7",
        f"box-constrained LQR n={n} m={m} T={T} |u|<={u_max} B={batch}",
        cp.Problem(task.problem.objective, constraints),
        task.parameters,
        U,
        task.values,
        peers=("cvxpylayers", "mpc.pytorch"),
        extras={**task.extras, "u_max": u_max},
    )


def lml_projection(batch: int = 128, d: int = 1000, k: int = 5, seed: int = 6) -> Task:
    """T4: the LML projection min −xᵀy − Σ H_b(y_i) s.t. 1ᵀy = k."""
    gen = _gen(seed)
    x, y = cp.Parameter(d), cp.Variable(d)
    objective = -x @ y - cp.sum(cp.entr(y) + cp.entr(1 - y))
    xv = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    return Task(
        "T4",
        f"LML d={d} k={k} B={batch}",
        cp.Problem(cp.Minimize(objective), [cp.sum(y) == k]),
        [x],
        y,
        [xv],
        peers=("cvxpylayers", "lml-bisection"),
        extras={"k": k},
    )


TASKS: dict[str, Callable[..., Task]] = {
    "T1": dense_qp,
    "T2": box_qp_uniform,
    "T2-normal": box_qp,
    "T5-soc": ellipsoid_projection,
    "T5a": soc_projection,
    "T5b": entropy_projection,
    "T5c": psd_projection,
    "T5d": pnorm_projection,
    "T5-exp": softmax,
    "T5-psd": nearest_psd,
    "T3": lqr_control,
    "T7": box_lqr,
    "T7-T100": lambda batch=32: box_lqr(batch, T=100),
    "T4": lml_projection,
    "T4-d100": lambda batch=128: lml_projection(batch, d=100),
    "T4-d10000": lambda batch=128: lml_projection(batch, d=10_000),
}
