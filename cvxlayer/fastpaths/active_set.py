"""Small dense QPs by a dual active-set method: DAQP (Arnström, Bemporad & Axehill, "A dual
active-set solver for embedded quadratic programming using recursive LDLᵀ updates", IEEE
TAC 2022), one batch element per call over the kept thread pool.

For each element

    minimize ½zᵀQz + qᵀz   subject to  Az = b,  Gz ≤ h,

DAQP takes the rows [A; G] with bounds b ≤ A z ≤ b (marked as equalities) and G z ≤ h. It
works on the dual, adding and dropping constraints of a working set W with low-rank updates
of one LDLᵀ factorization, and ends at the exact solution of its final W (to rounding), with
multipliers in our signs: Qz + q + Gᵀλ + Aᵀν = 0, λ ≥ 0, λ_i = 0 off W. A PSD but singular
Q is handled by DAQP's proximal outer iterations (`eps_prox` < 0: only when Q is found
singular).

With `factor`, and where no row of G is a simple bound, the elements go to DAQP in
least-distance form (`active_set_kernels.LeastDistance`): DAQP's own set-up (a Cholesky
factorization of Q and the rows times its inverse, in plain loops) is then done by LAPACK
and BLAS, and the backward reuses the factors.

Everything here is numpy in, numpy out; the QP path (`fastpaths/qp.py`) decides which
elements come here and what happens to those DAQP does not solve.
"""

from __future__ import annotations

import daqp
import numpy as np

from cvxlayer.solvers.elementwise import for_each

# DAQP's exit flags: 1 optimal; the others (2 optimal with soft constraints relaxed, -1
# infeasible, -2 cycling, -3 unbounded, -4 iteration limit, -5 nonconvex, -6 an
# overdetermined initial working set) send the element to the interior point
_SOLVED_FLAG = 1
_EQUALITY, _INEQUALITY = 5, 0
# allowed violation of a constraint left out of W, relative to the caller's tolerance: the
# stopping rule (`qp._Iterate.converged`) then holds with room to spare
_PRIMAL_TOL_FRACTION = 0.1
_PRIMAL_TOL_FLOOR = 1e-12
_NO_LOWER = -1e30  # DAQP's "no lower bound"
# elements are solved on the thread pool when one costs about n²(n + m + p) ≥ this, else in
# the calling thread: below, GIL hand-offs and waking the pool cost more than the solves
# (measured, B = 8 / 32 / 128: n = m = 10 serial 0.16 / 0.31 / 1.4 ms, 2 threads 0.42 /
# 0.74 / 1.7; n = m = 50 serial 0.28 / 1.5 / 5.3, threads 0.70 / 2.3 / 4.5; n = m = 100
# serial 1.9 / 5.9 / 21, threads 1.5 / 5.1 / 16)
_THREADED_WORK = 1e6


def element_workers(n: int, m: int, p: int) -> int | None:
    """Threads for per-element work on QPs of n variables, m inequalities and p equalities:
    one below `_THREADED_WORK`, else None (torch's thread count)."""
    return 1 if n * n * (n + m + p) < _THREADED_WORK else None


def bound_rows(G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of G (B, m, n) that are bounds on one variable in every element: (rows,
    columns, upper) with upper True for g z_j ≤ h (g > 0), False for g < 0; at most one
    upper and one lower row per variable (the rest stay general rows)."""
    candidates = np.flatnonzero((G[0] != 0).sum(1) == 1)  # element 0's rows first
    if candidates.size == 0:
        none = np.zeros(0, dtype=np.int64)
        return none, none, none.astype(bool)
    nonzero = G[:, candidates] != 0
    first = nonzero[0].argmax(1)  # each candidate's variable
    keep = (nonzero.sum(2) == 1).all(0) & nonzero[:, np.arange(candidates.size), first].all(0)
    rows, column = candidates[keep], first[keep]
    coef = G[:, rows, column]
    upper = (coef > 0).all(0)
    signed = upper | (coef < 0).all(0)
    rows, column, upper = rows[signed], column[signed], upper[signed]
    # the first row per (variable, side)
    _, first_row = np.unique(column * 2 + upper, return_index=True)
    return rows[first_row], column[first_row], upper[first_row]


def solve_each(
    Q: np.ndarray,
    q: np.ndarray,
    G: np.ndarray,
    h: np.ndarray,
    A: np.ndarray,
    b: np.ndarray,
    eps: float,
    workers: int | None = None,
    start: np.ndarray | None = None,
    factor: bool = False,
) -> tuple:
    """DAQP on every element of a batch: Q (B, n, n), q (B, n), G (B, m, n), h (B, m),
    A (B, p, n), b (B, p); `eps` the caller's tolerance; `workers` threads (default:
    torch's thread count where an element's work passes `_THREADED_WORK`, else one);
    `start` (B, n) a guess of z (a previous call's solution): DAQP's working set then starts
    from the constraints active there; `factor`: solve in least-distance form where G has
    no bound rows (the compiled kernels of `active_set_kernels`).

    Rows of G that bound one variable (`bound_rows`, e.g. box constraints) go to DAQP as
    simple bounds, which it handles without row products (2× faster on a box QP, n = 100).

    Returns:
        z (B, n), λ (B, m), ν (B, p), solved (B,) bool (DAQP's exit flag says optimal),
        iterations (B,) and the `LeastDistance` form (None without `factor` or where G has
        bound rows).
    """
    B, n = q.shape
    m, p = h.shape[1], b.shape[1]
    if workers is None:
        workers = element_workers(n, m, p)
    bound, column, upper = bound_rows(G)
    k = n if bound.size else 0  # DAQP's simple bounds: on every variable, or none
    lb, ub = np.full((B, k), _NO_LOWER), np.full((B, k), -_NO_LOWER)
    if k:
        general = np.ones(m, dtype=bool)
        general[bound] = False
        general = np.flatnonzero(general)
        coef = G[:, bound, column]  # (B, bounds): the bound is h / coef on its side
        ub[:, column[upper]] = h[:, bound[upper]] / coef[:, upper]
        lb[:, column[~upper]] = h[:, bound[~upper]] / coef[:, ~upper]
        rows = np.concatenate([A, G[:, general]], axis=1)
    else:
        general = slice(None)
        rows = G if p == 0 else np.concatenate([A, G], axis=1)
    g = m - bound.size
    upper_all = np.concatenate([ub, b, h[:, general]], axis=1)
    lower_all = np.concatenate([lb, b, np.full((B, g), _NO_LOWER)], axis=1)
    sense = np.repeat(np.array([_INEQUALITY, _EQUALITY, _INEQUALITY], dtype=np.intc), [k, p, g])
    tol = max(_PRIMAL_TOL_FRACTION * eps, _PRIMAL_TOL_FLOOR)
    z, mult = np.zeros_like(q), np.zeros((B, k + p + g))
    solved, iterations = np.zeros(B, dtype=bool), np.zeros(B, dtype=np.int64)

    ldp = None
    if factor and k == 0:  # DAQP would take no simple bounds
        from cvxlayer.fastpaths import active_set_kernels

        ldp = active_set_kernels.least_distance(Q, q, rows, workers)
    identity = None if ldp is None else np.eye(n)

    def run(i):
        guess = None if start is None else start[i]
        if ldp is not None and ldp.ok[i]:
            L = ldp.L[i]
            x, _, flag, info = daqp.solve(
                identity, ldp.f[i], ldp.M[i], upper_all[i], lower_all[i], sense,
                primal_tol=tol, eps_prox=-1, primal_start=None if guess is None else guess @ L,
            )  # fmt: skip
            ldp.recover(i, x)
        else:
            x, _, flag, info = daqp.solve(
                Q[i], q[i], rows[i], upper_all[i], lower_all[i], sense,
                primal_tol=tol, eps_prox=-1, primal_start=guess,
            )  # fmt: skip
        solved[i], iterations[i] = flag == _SOLVED_FLAG, info["iterations"]
        if solved[i]:
            z[i], mult[i] = x, info["lam"]

    # DAQP does its own linear algebra: BLAS is held to one thread only for the workers,
    # whose OpenBLAS neighbours would spin (`one_blas_thread`; ~10 µs a call saved)
    for_each(run, range(B), workers, blas=workers != 1)
    lam = np.zeros((B, m))
    lam[:, general] = mult[:, k + p :]
    if k:  # a bound's multiplier μ_j (> 0 upper, < 0 lower active) is g λ for its row g z_j ≤ h
        mu = mult[:, column]
        lam[:, bound] = np.where(upper == (mu > 0), mu / coef, 0.0)
    return z, lam, mult[:, k : k + p], solved, iterations, ldp
