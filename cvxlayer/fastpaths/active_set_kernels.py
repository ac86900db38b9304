"""The active set's QPs in least-distance form (numba): the factors that DAQP solves with
(`LeastDistance`, `least_distance`), and the backward through them (`adjoint`).

With E the rows of [A; G] held with equality at the solution (A's, and G's active rows) and
w = 0 on G's others, the adjoint system is

    [Q  Eᵀ] [x]   [g_x]
    [E  0 ] [w] = [r  ]   (r: g_ν and g_λ on E's rows).

With Q = L Lᵀ and M = [A; G] L⁻ᵀ from the forward, a = L⁻¹g_x and M_E = E L⁻ᵀ:

    M_E M_Eᵀ w = M_E a − r,   x = L⁻ᵀ(a − M_Eᵀ w),

one Cholesky factorization of |E| × |E| per element (no factorization of Q, no product
with Q⁻¹: both were paid in the forward), then iterative refinement on the exact system.
M_E M_Eᵀ squares the conditioning of E's rows, so an element whose residual does not reach
rounding is reported, and the caller solves it by the regularized route.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from cvxlayer.solvers.elementwise import for_chunks
from cvxlayer.solvers.ipm_compiled import (
    chol_solve_in_place,
    forward_substitution,
    lower_solve_in_place,
    lower_t_solve_in_place,
)
from cvxlayer.solvers.numba_cache import announce_compile
from cvxlayer.solvers.residual_kernels import largest

_OPTIONS = {"cache": True, "nogil": True}
_REFINE = 2  # refinement steps (each one a solve with the factors)
# a Cholesky pivot below this times the largest (squared) leaves Q to DAQP, whose test it is
# (DAQP_DEFAULT_ZERO_TOL): DAQP then regularizes a nearly singular Q by its proximal method
_PIVOT_TOL = 1e-11


@dataclass(frozen=True, eq=False)
class LeastDistance:
    """Each element's QP in least-distance form: with Q = L Lᵀ (Cholesky) and u = Lᵀz,

        ½zᵀQz + qᵀz = ½‖u‖² + fᵀu,  f = L⁻¹q,    [A; G] z = M u,  M = [A; G] L⁻ᵀ,

    which DAQP solves with an identity Hessian, and whose factors also solve the active
    set's KKT system (`adjoint`). L (B, n, n), M (B, p + m, n), f (B, n); ok (B,) where
    they were formed (not where Q's Cholesky factorization failed or had a pivot below
    `_PIVOT_TOL`: DAQP then takes Q)."""

    L: np.ndarray
    M: np.ndarray
    f: np.ndarray
    ok: np.ndarray

    def recover(self, i: int, u: np.ndarray) -> None:
        """u ← z = L⁻ᵀu for element i."""
        lower_t_solve_in_place(self.L[i], u)


@njit(**_OPTIONS)
def _factor_each(Q, q, rows, L, M, f, index, ok):
    """The least-distance form of the elements in `index` (`LeastDistance`'s arrays)."""
    for i in index:
        try:
            L[i] = np.linalg.cholesky(Q[i])
        except Exception:
            continue
        pivots = np.diag(L[i]) ** 2
        if pivots.min() <= _PIVOT_TOL * pivots.max():
            continue
        M[i] = forward_substitution(L[i], np.ascontiguousarray(rows[i].T)).T
        f[i] = q[i]
        lower_solve_in_place(L[i], f[i])
        ok[i] = True


def least_distance(
    Q: np.ndarray, q: np.ndarray, rows: np.ndarray, workers: int | None = None
) -> LeastDistance:
    """The `LeastDistance` form of QPs with Q (B, n, n), q (B, n) and constraint rows
    [A; G] (B, p + m, n), over `workers` threads of the kept pool (`for_chunks`)."""
    (B, n), r = q.shape, rows.shape[1]
    # written here, not by np.zeros' lazily mapped pages: the threads' first writes to
    # them fault concurrently (measured, T1: 27–34 ms a call that way, 15–20 this way)
    L, M = np.full((B, n, n), 0.0), np.full((B, r, n), 0.0)
    ldp = LeastDistance(L, M, np.zeros((B, n)), np.zeros(B, dtype=bool))

    announce_compile(_factor_each)

    def run(chunk):
        _factor_each(Q, q, rows, ldp.L, ldp.M, ldp.f, chunk, ldp.ok)

    for_chunks(run, range(B), workers, blas=workers != 1)
    return ldp


@njit(**_OPTIONS)
def _converged_each(Q, q, G, h, A, b, z, lam, nu, eps_abs, eps_rel, s, ok, index):
    """`qp._Iterate.converged` (the compiled twin of its rule, on one element at a time)
    for the elements in `index` of batch-first arrays; writes s = max(h − Gz, 0)."""
    for i in index:
        Qz, Gz, Az = Q[i] @ z[i], G[i] @ z[i], A[i] @ z[i]
        Gt_lam, At_nu = lam[i] @ G[i], nu[i] @ A[i]
        s[i] = np.maximum(h[i] - Gz, 0.0)
        res_pri = max(largest(Gz + s[i] - h[i]), largest(Az - b[i]))
        scale_pri = max(largest(Gz), largest(s[i]), largest(h[i]), largest(Az))
        scale_pri = max(scale_pri, largest(b[i]))
        res_dual = largest(Qz + q[i] + Gt_lam + At_nu)
        scale_dual = max(largest(Qz), largest(Gt_lam), largest(At_nu), largest(q[i]))
        gap = s[i] @ lam[i] if s.shape[1] else 0.0
        dual_obj = (h[i] @ lam[i] if h.shape[1] else 0.0) + (b[i] @ nu[i] if b.shape[1] else 0.0)
        scale_gap = max(abs(z[i] @ Qz), abs(q[i] @ z[i]), abs(dual_obj))
        ok[i] = (
            res_pri <= eps_abs + eps_rel * scale_pri
            and res_dual <= eps_abs + eps_rel * scale_dual
            and gap <= eps_abs + eps_rel * scale_gap
        )


def converged(
    Q: np.ndarray,
    q: np.ndarray,
    G: np.ndarray,
    h: np.ndarray,
    A: np.ndarray,
    b: np.ndarray,
    solution: tuple[np.ndarray, np.ndarray, np.ndarray],
    eps_abs: float,
    eps_rel: float,
    workers: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each element's solution = (z (B, n), λ (B, m), ν (B, p)) passes the QP
    path's stopping rule (`qp._Iterate.converged`) on the data Q (B, n, n), q (B, n),
    G (B, m, n), h (B, m), A (B, p, n), b (B, p); over `workers` threads of the kept pool.
    Returns the slacks s = max(h − Gz, 0) (B, m) and (B,) bool."""
    Q, q, G, h, A, b, z, lam, nu = (
        np.ascontiguousarray(t) for t in (Q, q, G, h, A, b, *solution)
    )  # one compiled specialization, and `@` on contiguous rows
    s, ok = np.empty_like(h), np.zeros(q.shape[0], dtype=bool)

    def run(chunk):
        _converged_each(Q, q, G, h, A, b, z, lam, nu, eps_abs, eps_rel, s, ok, chunk)

    for_chunks(run, range(q.shape[0]), workers, blas=workers != 1)
    return s, ok


@njit(**_OPTIONS)
def _solve(L, M_E, LS, g_x, r):
    """(x, w) of the system with the factors (module docstring); LS: M_E M_Eᵀ's Cholesky
    factor."""
    a = g_x.copy()
    lower_solve_in_place(L, a)
    w = M_E @ a - r
    chol_solve_in_place(LS, w)
    x = a - w @ M_E
    lower_t_solve_in_place(L, x)
    return x, w


@njit(**_OPTIONS)
def adjoint_one(Q, A, G, L, M, active, g_x, g_nu, g_lam, tol, x, v, w):
    """One element's system (module docstring): Q (n, n), A (p, n), G (m, n), the factors
    L (n, n), M (p + m, n), active (m,) bool (G's rows in E), g_x (n,), g_ν (p,), g_λ (m,);
    writes x (n,), v (p,) and w (m,) (zero off E). Returns whether the residual is within
    tol (1 + the right-hand side's largest entry)."""
    p = A.shape[0]
    rows = np.concatenate((np.arange(p), p + np.flatnonzero(active)))
    E, M_E = np.empty((rows.size, Q.shape[0])), np.empty((rows.size, Q.shape[0]))
    for k in range(p):
        E[k] = A[k]
    for k in range(p, rows.size):
        E[k] = G[rows[k] - p]
    for k in range(rows.size):
        M_E[k] = M[rows[k]]
    r = np.concatenate((g_nu, g_lam[rows[p:] - p]))
    try:
        LS = np.linalg.cholesky(M_E @ M_E.T) if rows.size else np.empty((0, 0))
    except Exception:
        return False
    xe, we = _solve(L, M_E, LS, g_x, r)
    size = 1.0 + max(np.abs(g_x).max(), np.abs(r).max() if r.size else 0.0)
    for step in range(_REFINE + 1):
        e_x = g_x - Q @ xe - we @ E
        e_r = r - E @ xe
        error = max(np.abs(e_x).max(), np.abs(e_r).max() if r.size else 0.0)
        if error <= tol * size or step == _REFINE:
            break
        dx, dw = _solve(L, M_E, LS, e_x, e_r)
        xe += dx
        we += dw
    x[:] = xe
    v[:] = we[:p]
    w[:] = 0.0
    w[rows[p:] - p] = we[p:]
    return error <= tol * size


@njit(**_OPTIONS)
def _adjoint_each(Q, A, G, L, M, active, g_x, g_nu, g_lam, tol, x, v, w, index, ok):
    """`adjoint_one` for the elements in `index` of batch-first arrays; ok[i] its result."""
    for i in index:
        ok[i] = adjoint_one(
            Q[i], A[i], G[i], L[i], M[i], active[i], g_x[i], g_nu[i], g_lam[i], tol, x[i],
            v[i], w[i],
        )  # fmt: skip


def adjoint(
    ldp: LeastDistance,
    Q: np.ndarray,
    A: np.ndarray,
    G: np.ndarray,
    active: np.ndarray,
    g_x: np.ndarray,
    g_nu: np.ndarray,
    g_lam: np.ndarray,
    index: np.ndarray,
    tol: float,
    out: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    workers: int | None = None,
) -> None:
    """The system of each element in `index` (batch-first arrays as in `adjoint_one`,
    active (B, m)), over `workers` threads of the kept pool, into out = (x (B, n), v (B,
    p), w (B, m), ok (B,) bool)."""
    x, v, w, ok = out

    def run(chunk):
        _adjoint_each(
            Q, A, G, ldp.L, ldp.M, active, g_x, g_nu, g_lam, tol, x, v, w, chunk, ok
        )  # fmt: skip

    for_chunks(run, index, workers, blas=workers != 1)
