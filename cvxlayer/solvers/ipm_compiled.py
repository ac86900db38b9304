"""The interior point of `ipm.py` as compiled code (numba): one element's whole solve is
one call, run over the batch by the kept thread pool (`elementwise.map_chunks`).

Same algorithm as the torch engine (its module docstring has the math): the homogeneous
embedding, Nesterov–Todd scaling, Mehrotra's predictor-corrector with one factorization
of M = P + Σ_k (W_k⁻ᵀA_k)ᵀ(W_k⁻ᵀA_k) + δI per iteration, the equality rows through the
Schur complement A_eq M⁻¹ A_eqᵀ, static and dynamic regularization removed by iterative
refinement, SCS's stopping rule at eps², certificates, and each element's best iterate.
The data are prepared as the torch engine prepares them (its equilibration, `ipm.
equilibrated`; for dense factorizations its `_prepare`, which densifies and eliminates
lifted variables, while a sparse one reads the values on the KKT pattern, never dense:
`matrices`) and restored by its `_unscale`, so the two engines differ only in the loop.

Cones: zero, nonnegative, second-order, PSD, exponential and power (`cvxlayer.cones.
composite_kernels`; the nonnegative rows travel as one-row second-order blocks). Dual
exponential programs stay on the torch engine. The KKT system is factored densely (M
by LAPACK's Cholesky, lifted variables eliminated first) or as a sparse LDLᵀ of the whole
matrix (`sparse_ldl`), whichever the program's structure makes cheaper (`structure_pattern`).
The backward (`adjoint_one`, backward "kkt" in `cvxlayer.diff.kkt`) and the polish
(`polish`) solve the same system at the solution.

Everything here is float64 numpy; nothing calls torch inside the compiled code.
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple

import numpy as np
import torch
from numba import njit

from cvxlayer.cones import composite_kernels as cone
from cvxlayer.cones import nonsymmetric_kernels
from cvxlayer.cones.psd_kernels import cholesky
from cvxlayer.cones.spec import ConeSpec
from cvxlayer.program import ConeProgram, ConeStructure, SparseOps
from cvxlayer.solvers import ipm, polish, ruiz_kernels, sparse_ldl
from cvxlayer.solvers.base import Solution, SolveSettings, floor_tolerance
from cvxlayer.solvers.elementwise import as_array, for_each, worker_count
from cvxlayer.solvers.numba_cache import announce_compile

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}  # x/0: inf, no raise
# the torch engine's constants and status codes (one algorithm; numba reads them as
# compile-time constants)
_STEP_FRACTION, _REG = ipm._STEP_FRACTION, ipm._REG[torch.float64]
_REFINE, _REFINE_TOL, _DYNAMIC_TRIES = ipm._REFINE, ipm._REFINE_TOL, ipm._DYNAMIC_TRIES
_STALL, _DIVERGED, _SLOW, _SLOW_COUNT = ipm._STALL, ipm._DIVERGED, ipm._SLOW, ipm._SLOW_COUNT
_SOLVED, _INFEASIBLE, _UNBOUNDED = ipm._SOLVED, ipm._INFEASIBLE, ipm._UNBOUNDED
_FAILED, _MAX_ITERS = ipm._FAILED, ipm._MAX_ITERS
_BLOCK = 16  # rows per block of `forward_substitution` (8 and 32 measured slower)
_ADJOINT_CLIP = 1e8  # the backward's bound on H's spectrum (as the QP path's polish)
_EPS = np.finfo(np.float64).eps
# the factorization's work space: dense (L, LS, MinvAt) or sparse (pat used, F, with A's
# and P's values on its pattern); m, n: A's shape
System = namedtuple("System", "L LS MinvAt pat F a_vals p_vals m n")


def supports(cones: ConeSpec) -> bool:
    """Whether every cone of a `ConeSpec` is one the compiled engine handles."""
    return not cones.exp_dual


# ------------------------------------------------------------------ dense linear algebra
@njit(**_OPTIONS)
def lower_solve_in_place(L, x):
    """x ← L⁻¹ x (lower L), reading L by rows; loops: n is small, and a BLAS call per row
    would cost more than its arithmetic."""
    for i in range(L.shape[0]):
        t = x[i]
        for k in range(i):
            t -= L[i, k] * x[k]
        x[i] = t / L[i, i]


@njit(**_OPTIONS)
def lower_t_solve_in_place(L, x):
    """x ← L⁻ᵀ x (lower L), also reading L by rows: each solved entry times its row is
    subtracted from the entries above (by columns it strode through memory, 3× slower at
    n = 600)."""
    for i in range(L.shape[0] - 1, -1, -1):
        x[i] /= L[i, i]
        t = x[i]
        for k in range(i):
            x[k] -= L[i, k] * t


@njit(**_OPTIONS)
def chol_solve_in_place(L, x):
    """x ← (L Lᵀ)⁻¹ x by the two triangular substitutions. Also the MPC kernels'
    (`mpc_kernels`) and the active set's backward (`active_set_kernels`)."""
    lower_solve_in_place(L, x)
    lower_t_solve_in_place(L, x)


@njit(**_OPTIONS)
def _chol_solve(L, v):
    """(L Lᵀ)⁻¹ v (`chol_solve_in_place` on a copy)."""
    x = v.copy()
    chol_solve_in_place(L, x)
    return x


@njit(**_OPTIONS)
def forward_substitution(L, B):
    """L⁻¹ B for a block B (n, p) of right-hand sides, by blocks of `_BLOCK` rows: each
    block first takes one BLAS product with the rows solved before it (most of the n²p/2
    flops), then is solved in loops (measured, n = p = 100 with the Cholesky factorization:
    74 µs; 145 row by row, one BLAS product a row)."""
    n, p = B.shape
    X = B.copy()
    for start in range(0, n, _BLOCK):
        stop = min(n, start + _BLOCK)
        if start > 0:
            X[start:stop] -= np.ascontiguousarray(L[start:stop, :start]) @ X[:start]
        for i in range(start, stop):
            for j in range(start, i):
                factor = L[i, j]
                for k in range(p):
                    X[i, k] -= factor * X[j, k]
            inverse = 1.0 / L[i, i]
            for k in range(p):
                X[i, k] *= inverse
    return X


# ------------------------------------------------------------------ the KKT system
@njit(**_OPTIONS)
def _system(m, n, p, pat, a_vals, p_vals):
    """The work space of one element's factorizations of an (m × n) A: sparse where `pat`
    is used (A's and P's values on its pattern, a_vals and p_vals, serve the products
    too), else dense."""
    F = sparse_ldl.factors(pat)
    if pat.used:
        empty = np.empty((0, 0))
        return System(empty, empty, empty, pat, F, a_vals, p_vals, m, n)
    return System(
        np.empty((n, n)), np.empty((p, p)), np.empty((n, p)), pat, F, a_vals, p_vals, m, n
    )


@njit(**_OPTIONS)
def _coo_product(rows, cols, vals, v, size):
    """Σ_e vals[e] v[cols[e]] into entry rows[e] of a vector of `size`."""
    out = np.zeros(size)
    for e in range(vals.size):
        out[rows[e]] += vals[e] * v[cols[e]]
    return out


@njit(**_OPTIONS)
def _ax(system, A, x):
    """A x: through A's nonzeros where the system is sparse."""
    if not system.pat.used:
        return A @ x
    pat = system.pat
    return _coo_product(pat.a_rows, pat.a_cols, system.a_vals, x, system.m)


@njit(**_OPTIONS)
def _atz(system, AT, z):
    """Aᵀ z."""
    if not system.pat.used:
        return AT @ z
    pat = system.pat
    return _coo_product(pat.a_cols, pat.a_rows, system.a_vals, z, system.n)


@njit(**_OPTIONS)
def _px(system, P, x):
    """P x (P's upper triangle stands for both halves where sparse)."""
    if not system.pat.used:
        return P @ x
    out = np.zeros(x.size)
    rows, cols, vals = system.pat.p_rows, system.pat.p_cols, system.p_vals
    for e in range(vals.size):
        out[rows[e]] += vals[e] * x[cols[e]]
        if rows[e] != cols[e]:
            out[cols[e]] += vals[e] * x[rows[e]]
    return out


@njit(**_OPTIONS)
def _factor(P, A, AT, p, lay, st, system):
    """Factor the KKT system at the scaling in st: sparse (`sparse_ldl`) where
    `system.pat` is used; else dense, M = P + Σ (W⁻ᵀA_c)ᵀ(W⁻ᵀA_c) + shift I by Cholesky, the
    shift raised ×100 while it breaks down (refinement removes it), and, with p equality
    rows (first in A), S = A_eq M⁻¹ A_eqᵀ + δI. AT (n, m) is Aᵀ. False if a factorization
    failed."""
    if system.pat.used:
        h = np.empty(system.pat.h_pos.size)
        cone.h_values(lay, st, h)
        sparse_ldl.assemble(system.pat, system.p_vals, system.a_vals, h, _REG, system.F)
        return sparse_ldl.factor(system.pat, system.F)
    L, LS, MinvAt = system.L, system.LS, system.MinvAt
    n, m = AT.shape
    C = np.empty((n, m - p))
    cone.winv_t_columns(lay, st, np.ascontiguousarray(AT[:, p:]), C)
    M = P + C @ C.T
    largest = 0.0
    for j in range(n):
        largest = max(largest, abs(M[j, j]))
    shift = _REG + _EPS * largest
    ok = False
    for _ in range(_DYNAMIC_TRIES + 1):
        ok = cholesky(M + shift * np.eye(n), L)
        if ok:
            break
        shift *= 100.0
    if not ok or p == 0:
        return ok
    X = forward_substitution(L, np.ascontiguousarray(AT[:, :p]))  # L⁻¹ A_eqᵀ
    # M⁻¹A_eqᵀ = L⁻ᵀX: the substitution with Lᵀ reversed (rows and columns)
    MinvAt[:] = forward_substitution(np.ascontiguousarray(L.T[::-1, ::-1]), X[::-1].copy())[::-1]
    return cholesky(X.T @ X + _REG * np.eye(p), LS)


@njit(**_OPTIONS)
def _solve_once(A, AT, p, lay, st, system, r1, r2):
    """(Δx, Δz) from the factors: K⁻¹(r1, r2) where sparse; else M Δx = r1 + A_cᵀH⁻¹r2_c −
    A_eqᵀΔz_eq with A_eq Δx = r2_eq, then Δz_c = H⁻¹(A_cΔx − r2_c)."""
    m, n = system.m, system.n
    if system.pat.used:
        out = sparse_ldl.solve(system.pat, system.F, np.concatenate((r1, r2)))
        return out[:n], out[n:]
    hinv_r2 = np.zeros(m)
    cone.apply_h(lay, st, r2[p:], hinv_r2[p:], True)
    dx = _chol_solve(system.L, r1 + AT @ hinv_r2)
    dz = np.zeros(m)
    if p > 0:
        y = _chol_solve(system.LS, A[:p] @ dx - r2[:p])
        dx -= system.MinvAt @ y
        dz[:p] = y
    Adx = A @ dx
    cone.apply_h(lay, st, Adx[p:], dz[p:], True)
    dz[p:] -= hinv_r2[p:]
    return dx, dz


@njit(**_OPTIONS)
def _max_abs(v):
    out = 0.0
    for i in range(v.size):
        out = max(out, abs(v[i]))
    return out


@njit(**_OPTIONS)
def _kkt_solve(P, A, AT, p, lay, st, system, r1, r2):
    """(Δx, Δz) with P Δx + AᵀΔz = r1, A Δx − H Δz = r2 (H = 0 on equality rows): a solve
    with the regularized factors, then refinement against the exact system while its
    residual keeps halving (up to `_REFINE` steps)."""
    dx, dz = _solve_once(A, AT, p, lay, st, system, r1, r2)
    size = max(max(_max_abs(r1), _max_abs(r2)), 1e-300)
    previous = np.inf
    h_dz = np.zeros(system.m)
    for _ in range(_REFINE):
        cone.apply_h(lay, st, dz[p:], h_dz[p:], False)
        e1 = r1 - _px(system, P, dx) - _atz(system, AT, dz)
        e2 = r2 - _ax(system, A, dx) + h_dz
        error = max(_max_abs(e1), _max_abs(e2)) / size
        if error <= _REFINE_TOL or error > 0.5 * previous:
            break
        previous = error
        cx, cz = _solve_once(A, AT, p, lay, st, system, e1, e2)
        dx += cx
        dz += cz
    return dx, dz


# ------------------------------------------------------------------ one element's solve
@njit(**_OPTIONS)
def _measures(P, A, AT, system, b, c, d_inv, e_inv, x, z, s, tau, kappa, r_x, r_z, out):
    """Residuals r_x, r_z (written) and r_τ (returned) of the embedding at (x, z, s, τ, κ);
    out (12,): the primal, dual and gap residuals and their scales (SCS's rule on the
    unscaled (x, z, s)/τ), then ‖Aᵀz‖, ‖Px‖, ‖Ax + s‖ (unscaled), cᵀx, bᵀz."""
    Px, Ax, Atz = _px(system, P, x), _ax(system, A, x), _atz(system, AT, z)
    xPx, cx, bz = x @ Px, c @ x, b @ z
    r_x[:] = Px + Atz + c * tau
    r_z[:] = Ax + s - b * tau
    out[0] = _max_abs(d_inv * r_z) / tau
    out[1] = max(_max_abs(d_inv * Ax), _max_abs(d_inv * s), _max_abs(d_inv * b) * tau) / tau
    out[2] = _max_abs(e_inv * r_x) / tau
    out[3] = max(_max_abs(e_inv * Px), _max_abs(e_inv * Atz), _max_abs(e_inv * c) * tau) / tau
    out[4] = abs(xPx / tau + cx + bz) / tau
    out[5] = max(abs(xPx) / tau, abs(cx), abs(bz)) / tau
    out[6], out[7] = _max_abs(e_inv * Atz), _max_abs(e_inv * Px)
    out[8] = _max_abs(d_inv * (Ax + s))
    out[9], out[10] = cx, bz
    return kappa + cx + bz + xPx / tau


@njit(**_OPTIONS)
def _meets(measure, eps_abs, eps_rel):
    return (
        measure[0] <= eps_abs + eps_rel * measure[1]
        and measure[2] <= eps_abs + eps_rel * measure[3]
        and measure[4] <= eps_abs + eps_rel * measure[5]
    )


@njit(**_OPTIONS)
def _merit(measure):
    """The smallest eps with `_meets(eps, eps)`."""
    return max(
        measure[0] / (1 + measure[1]), measure[2] / (1 + measure[3]), measure[4] / (1 + measure[5])
    )


@njit(**_OPTIONS)
def _direction(
    P, A, AT, b, p, lay, st, system, c2, x1, z1, denominator, tau, kappa,
    d_x, d_z, d_tau, d_s, d_kappa,
):  # fmt: skip
    """The direction (Δx, Δz, Δs, Δτ, Δκ) and its scaled cone parts (`cone.scaled`) for
    the right-hand side (d_x, d_z, d_τ, d_s, d_κ) (ipm._Newton.direction)."""
    mc = d_s.size
    offset = np.empty(mc)
    cone.offset(lay, st, d_s, offset)
    r2 = -d_z
    r2[p:] += offset
    x2, z2 = _kkt_solve(P, A, AT, p, lay, st, system, -d_x, r2)
    numerator = -d_tau + d_kappa / tau - c2 @ x2 - b @ z2
    dtau = numerator / denominator
    dx = x2 + dtau * x1
    dz = z2 + dtau * z1
    ds = -d_z - _ax(system, A, dx) + b * dtau
    ds[:p] = 0.0
    sds, wdz = np.empty(mc), np.empty(mc)
    cone.scaled(lay, st, ds[p:], dz[p:], sds, wdz)
    dkappa = -(d_kappa + kappa * dtau) / tau
    return dx, dz, ds, dtau, dkappa, sds, wdz


@njit(**_OPTIONS)
def _max_step(lay, st, s, z, sds, wdz, tau, dtau, kappa, dkappa):
    """The largest α keeping s, z, τ, κ in their cones along a direction (s, z: cone
    rows)."""
    alpha = cone.step(lay, st, s, z, sds, wdz)
    if dtau < 0:
        alpha = min(alpha, -tau / dtau)
    if dkappa < 0:
        alpha = min(alpha, -kappa / dkappa)
    return alpha


@njit(**_OPTIONS)
def _finite(v):
    return np.isfinite(v).all()


@njit(**_OPTIONS)
def solve_one(
    P, A, a_vals, p_vals, b, c, d_inv, e_inv, p, lay, pat, tolerances, max_iters, x, z, s, final
):  # fmt: skip
    """One element's solve. The matrices: A (m, n) with its p equality rows first and P
    (n, n) dense, or, where `pat` (the KKT matrix's sparse `sparse_ldl.Pattern`) is used,
    their values a_vals, p_vals on it (`matrices`; the dense ones are then not read). b (m,),
    c (n,), d_inv (m,), e_inv (n,) (inverse equilibration, for the stopping rule), lay the
    cone rows' blocks (a `cone.Layout`, relative to row p); tolerances (inner_abs,
    inner_rel, eps_abs, eps_rel, eps_infeas). Writes the chosen iterate into x (n,), z,
    s (m,) and the primal, dual and gap residuals of the last iterate into final (3,);
    returns (τ, code, iterations) with `ipm`'s codes."""
    m, n = b.size, c.size
    mc = m - p
    AT = np.ascontiguousarray(A.T)
    inner_abs, inner_rel, eps_abs, eps_rel, eps_inf = tolerances
    st = cone.state(lay)
    system = _system(m, n, p, pat, a_vals, p_vals)
    e = np.empty(mc)
    cone.unit(lay, e)
    degree = cone.degree(lay)
    x[:], z[:], s[:] = 0.0, 0.0, 0.0
    s[p:], z[p:] = e, e
    if cone.symmetric(lay):
        # the KKT solution with H = I, shifted into the cones (with nonsymmetric cones: x = 0,
        # s = z = the central point, as Clarabel)
        cone.scaling(lay, e, e, st)
        _factor(P, A, AT, p, lay, st, system)  # its failure shows in the first merit
        x[:] = _kkt_solve(P, A, AT, p, lay, st, system, -c, b)[0]
        s[:] = b - _ax(system, A, x)
        s[:p] = 0.0
        z[:] = -s
        for v in (s, z):
            shift = 1.0 - cone.margin(lay, v[p:])
            if shift > 0:
                v[p:] += shift * e
    tau, kappa = 1.0, 1.0
    best_x, best_z, best_s, best_tau = x.copy(), z.copy(), s.copy(), tau
    best_merit, best_k = np.inf, 0
    previous, slow = np.inf, 0
    r_x, r_z, measure = np.empty(n), np.empty(m), np.empty(11)
    ok = True
    code, k = _FAILED, 0
    for k in range(max_iters + 1):
        r_tau = _measures(
            P, A, AT, system, b, c, d_inv, e_inv, x, z, s, tau, kappa, r_x, r_z, measure
        )
        merit = _merit(measure)
        finite = math.isfinite(merit) and ok
        done = finite and _meets(measure, inner_abs, inner_rel)
        cx, bz = measure[9], measure[10]
        infeasible = finite and not done and bz < 0 and measure[6] <= -eps_inf * bz
        unbounded = (
            finite and not done and not infeasible and cx < 0
            and measure[8] <= -eps_inf * cx and measure[7] <= -eps_inf * cx
        )  # fmt: skip
        if finite and merit < best_merit:
            best_x[:], best_z[:], best_s[:], best_tau = x, z, s, tau
            best_merit, best_k = merit, k
        slow = slow + 1 if merit > _SLOW * previous else 0
        previous = merit
        good_enough = best_merit <= min(eps_abs, eps_rel)
        stalled = (
            math.isfinite(best_merit) and not done and not infeasible and not unbounded
            and (
                not finite or merit > _DIVERGED * best_merit
                or (good_enough and (k - best_k >= _STALL or slow >= _SLOW_COUNT))
                or k == max_iters
            )
        )  # fmt: skip
        if done or stalled or infeasible or unbounded or not finite or k == max_iters:
            final[0], final[1], final[2] = measure[0], measure[2], measure[4]
            code = _MAX_ITERS
            if not finite:
                code = _FAILED
            if unbounded:
                code = _UNBOUNDED
            if infeasible:
                code = _INFEASIBLE
            if stalled:
                code = _MAX_ITERS
            if done or (stalled and good_enough):
                code = _SOLVED
            if stalled:
                x[:], z[:], s[:], tau = best_x, best_z, best_s, best_tau
            break
        # Newton: scaling, factors, μ and the constant direction
        cone.scaling(lay, s[p:], z[p:], st)
        ok = _factor(P, A, AT, p, lay, st, system)
        mu = (s @ z + tau * kappa) / (degree + 1)
        xi = x / tau
        Pxi = _px(system, P, xi)
        c2 = c + 2.0 * Pxi
        x1, z1 = _kkt_solve(P, A, AT, p, lay, st, system, -c, b)
        denominator = -kappa / tau + c2 @ x1 + b @ z1 - xi @ Pxi
        # Mehrotra: the affine direction, then the centered and corrected one
        d_s = np.empty(mc)
        cone.affine_ds(lay, st, s[p:], d_s)
        _, _, _, dtau_a, dkappa_a, sds_a, wdz_a = _direction(
            P, A, AT, b, p, lay, st, system, c2, x1, z1, denominator,
            tau, kappa, r_x, r_z, r_tau, d_s, tau * kappa,
        )  # fmt: skip
        alpha_a = _max_step(lay, st, s[p:], z[p:], sds_a, wdz_a, tau, dtau_a, kappa, dkappa_a)
        sigma = (1.0 - min(alpha_a, 1.0)) ** 3
        target = sigma * mu
        cone.combined_ds(lay, st, s[p:], z[p:], sds_a, wdz_a, target, d_s)
        d_kappa = tau * kappa + dtau_a * dkappa_a - target
        keep = 1.0 - sigma
        dx, dz, ds, dtau, dkappa, sds, wdz = _direction(
            P, A, AT, b, p, lay, st, system, c2, x1, z1, denominator,
            tau, kappa, keep * r_x, keep * r_z, keep * r_tau, d_s, d_kappa,
        )  # fmt: skip
        alpha = _STEP_FRACTION * _max_step(
            lay, st, s[p:], z[p:], sds, wdz, tau, dtau, kappa, dkappa
        )
        alpha = min(alpha, 1.0)
        usable = ok and _finite(dx) and _finite(dz) and _finite(ds)
        usable = usable and math.isfinite(dtau) and math.isfinite(dkappa)
        if not usable:
            alpha = 0.0
        if alpha > 0:
            x += alpha * dx
            z += alpha * dz
            s += alpha * ds
            tau += alpha * dtau
            kappa += alpha * dkappa
    return tau, code, k


# ------------------------------------------------------------------ the batch
@functools.lru_cache(maxsize=64)
def layout(cones: ConeSpec) -> tuple[cone.Layout, int]:
    """(the cone rows' `cone.Layout`, p) for a program whose cones `supports` takes; its
    rows come in SCS's order: p equality rows first, then the orthant's rows (one-row
    second-order blocks), the second-order, PSD, exponential and power cones."""
    kinds = [nonsymmetric_kernels.EXP] * cones.exp + [nonsymmetric_kernels.POWER] * len(cones.power)
    params = [0.0] * cones.exp + list(cones.power)
    sizes = [1] * cones.nonneg + list(cones.soc)
    return cone.layout_of(sizes, list(cones.psd), kinds, params), cones.zero


def solve(program: ConeProgram, settings: SolveSettings) -> Solution:
    """Mode "ipm" on CPU tensors for the cones `supports` takes: `ipm`'s preparation,
    `solve_one` per element over the kept thread pool, `ipm`'s restoration (and on
    exponential and power cones the polish)."""
    dtype = program.b.dtype
    eps_abs, eps_rel = (floor_tolerance(e, dtype) for e in (settings.eps_abs, settings.eps_rel))
    eps_inf = floor_tolerance(settings.eps_infeas, dtype)
    inner = [max(e * e, ipm._INNER_EPS[dtype]) for e in (eps_abs, eps_rel)]
    tolerances = np.array(inner + [eps_abs, eps_rel, eps_inf])
    max_iters = min(settings.max_iters, ipm.MAX_ITERS)
    # a sparse factorization takes the equilibrated program's values as they are; a dense
    # one its dense reduction
    st = program.structure
    pat = structure_pattern(st)
    if pat.used:
        D, E, A_vals, P_vals, b, c = ipm.equilibrated(
            program, settings.normalize, ruiz_kernels.equilibrate
        )
        data = ipm._Data(b=b, c=c, row_scale=D, col_scale=E, D=D, E=E, b_full=b, c_full=c)
        P, A, a_vals, p_vals = matrices(st, A_vals, P_vals)
        cone_spec = st.cones
    else:
        data, cone_spec = ipm._prepare(program, settings.normalize, ruiz_kernels.equilibrate)
        P, A = as_array(data.P), as_array(data.A)
        a_vals = p_vals = np.zeros((len(A), 0))
    lay, p = layout(cone_spec)
    b, c = as_array(data.b), as_array(data.c)
    d_inv, e_inv = 1.0 / as_array(data.row_scale), 1.0 / as_array(data.col_scale)
    (B, m), n = b.shape, c.shape[1]
    x, z, s = np.zeros((B, n)), np.zeros((B, m)), np.zeros((B, m))
    tau, codes = np.ones(B), np.full(B, _FAILED, dtype=np.int64)
    iterations, final = np.zeros(B, dtype=np.int64), np.zeros((B, 3))
    announce_compile(solve_one)

    def run(i):
        tau[i], codes[i], iterations[i] = solve_one(
            P[i], A[i], a_vals[i], p_vals[i], b[i], c[i], d_inv[i], e_inv[i], p, lay, pat,
            tolerances, max_iters, x[i], z[i], s[i], final[i],
        )  # fmt: skip
        if settings.verbose:  # one worker then: the lines keep their order
            print(
                f"[ipm] element {i}: {ipm._STATUS[codes[i]].value} in {iterations[i]} "
                "iterations, res_pri {:.2e}, res_dual {:.2e}, gap {:.2e}".format(*final[i])
            )

    for_each(run, range(B), worker_count(settings, B))

    def back(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype)

    code = torch.as_tensor(codes)
    out = ipm._unscale(data, back(x), back(z), back(s), back(tau), code)
    if lay.kinds.size:  # exponential or power cones: the interior point's x is ~1e-6 off
        out = polish.polish(program, *out, code == _SOLVED)[:3]
    status = tuple(ipm._STATUS[k] for k in codes.tolist())
    return Solution(*out, status, torch.as_tensor(iterations))


# the sparse factorization's flops count this many times the dense one's (its indirect
# indexing): a rough weight, not a fit; with it T5a stays dense and T5b, T5d and T7 go
# sparse, each the faster choice there (docs/benchmarks.md)
_SPARSE_COST = 3.0


def kkt_pattern(P: np.ndarray, A: np.ndarray, p: int, lay: cone.Layout) -> sparse_ldl.Pattern:
    """The sparse pattern of the KKT matrix of a batch P (B, n, n), A (B, m, n) where its
    LDLᵀ factorization pays (`_chosen`); else unused."""
    return _chosen(p, lay, (P != 0).any(0), (A != 0).any(0), 0)


def pattern_values(
    pat: sparse_ldl.Pattern, P: np.ndarray, A: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The values (B, nnz) of a batch of dense A (B, m, n) and P (B, n, n) on `pat`, as the
    kernels take them where it is used."""
    return A[:, pat.a_rows, pat.a_cols], P[:, pat.p_rows, pat.p_cols]


@functools.lru_cache(maxsize=64)
def structure_pattern(structure: ConeStructure) -> sparse_ldl.Pattern:
    """`kkt_pattern` for a program's fixed nonzero pattern, lifted variables kept (the
    dense route would eliminate them first: `ipm._lifted_columns`)."""
    n, m = structure.n, structure.m
    lay, p = layout(structure.cones)
    A_pattern, P_pattern = np.zeros((m, n), dtype=bool), np.zeros((n, n), dtype=bool)
    A_pattern[structure.a_coords()] = True
    if structure.p_nnz:
        P_pattern[structure.p_coords()] = True
    lifted = ipm._lifted_columns(structure)[0].size
    return _chosen(p, lay, P_pattern | P_pattern.T, A_pattern, lifted)


def matrices(structure: ConeStructure, A_vals: torch.Tensor, P_vals: torch.Tensor | None):
    """The kernels' matrices (P, A, a_vals, p_vals), batch-first arrays, for a batch of A's
    and P's values on `structure`'s nonzeros (B, nnz_A), (B, nnz_P) (or None): where its
    `structure_pattern` is used, their values on that pattern (no dense copy: `solve_one`
    then reads no dense matrix, and P, A are empty); else dense A (B, m, n), P (B, n, n)
    and empty values."""
    B = A_vals.shape[0]
    pat = structure_pattern(structure)
    if pat.used:
        a_index, p_index = _value_positions(structure)
        a_vals = as_array(A_vals)[:, a_index]
        p_vals = np.zeros((B, 0)) if P_vals is None else as_array(P_vals)[:, p_index]
        empty = np.zeros((B, 0, 0))
        return empty, empty, a_vals, p_vals
    A_dense, P_dense = SparseOps.of(structure, A_vals.device).dense(A_vals, P_vals)
    A = as_array(A_dense)
    P = np.zeros((B, structure.n, structure.n)) if P_dense is None else as_array(P_dense)
    return P, A, np.zeros((B, 0)), np.zeros((B, 0))


@functools.lru_cache(maxsize=64)
def _value_positions(structure: ConeStructure) -> tuple[np.ndarray, np.ndarray]:
    """Where each entry of `structure_pattern`'s A and P (upper triangle) sits among the
    structure's values (CSC order)."""
    pat, n = structure_pattern(structure), structure.n

    def positions(coords, rows, cols):
        keys = coords[0].astype(np.int64) * n + coords[1]
        order = np.argsort(keys)
        found = order[np.searchsorted(keys[order], rows * n + cols)]
        assert np.array_equal(keys[found], rows * n + cols)  # the same entries
        return found

    a_index = positions(structure.a_coords(), pat.a_rows, pat.a_cols)
    if not structure.p_nnz:
        return a_index, np.zeros(0, dtype=np.int64)
    return a_index, positions(structure.p_coords(), pat.p_rows, pat.p_cols)


def _chosen(p: int, lay: cone.Layout, P_pattern, A_pattern, lifted: int) -> sparse_ldl.Pattern:
    """The sparse pattern where its factorization's flops, times `_SPARSE_COST`, undercut
    the dense route's on the program less its `lifted` variables and their rows (n²·(m − p)
    for M, n³/3 for its Cholesky, n²p + p³/3 for the equality rows' Schur complement);
    else unused."""
    m, n = A_pattern.shape
    if n == 0:
        return sparse_ldl.unused()
    nd, md, pd = n - lifted, m - lifted, p - lifted
    dense = nd * nd * (md - pd) + nd**3 / 3 + nd * nd * pd + pd**3 / 3
    pattern, flops = sparse_ldl.analyze(n, p, P_pattern, A_pattern, cone.block_sizes(lay))
    return pattern if _SPARSE_COST * flops < dense else sparse_ldl.unused()


# ------------------------------------------------------------------ the backward
@njit(**_OPTIONS)
def adjoint_one(P, A, a_vals, p_vals, p, lay, pat, lifted, s, y, U, L_inv, gx, gy, gs, u, v):
    """The adjoint of one element's solution map through the interior point's KKT system
    at an interior solution (s, y) (rows as in `solve_one`, equality rows first): solve

        [P  Aᵀ] [u]   [gx         ]
        [A −H ] [v] = [gy − H gs  ]

    (the linearized optimality conditions with Δs = −HΔy, as OptNet does with λ/s; H = 0
    on equality rows); writes u (n,), v (m,). On second-order blocks H is the
    Nesterov–Todd scaling at (s, y) with its spectrum clipped into [1/δ, δ]
    (`_ADJOINT_CLIP`; near the solution it spans μ to 1/μ, and the factorization's
    regularization, proportional to its largest entry, would then leave refinement too
    much to undo); on PSD blocks the complementarity's linearization, clipped likewise
    (`psd_kernels.adjoint_scaling`); on the nonsymmetric blocks H = U Uᵀ with W⁻ᵀ = L_inv,
    given (count, 3, 3) (`cvxlayer.diff.kkt`). The matrices as `solve_one` takes them;
    with dense ones the lifted variables `lifted` (`lifted_columns`) are eliminated first,
    as the forward does (`_reduced_adjoint`). Returns False where a factorization
    failed."""
    m, n = y.size, u.size
    st = cone.state(lay)
    cone.adjoint_scaling(lay, s[p:], y[p:], st, _ADJOINT_CLIP)
    st.U[:], st.L_inv[:] = U, L_inv
    r2 = gy.copy()
    h_gs = np.empty(m - p)
    cone.apply_h(lay, st, gs[p:], h_gs, False)
    r2[p:] -= h_gs
    cols, rows, keep, other = lifted
    if not pat.used and cols.size > 0:
        a = np.empty(cols.size)
        for e in range(cols.size):
            a[e] = A[rows[e], cols[e]]
        if (a != 0).all():
            return _reduced_adjoint(P, A, p, lay, pat, st, lifted, a, gx, r2, u, v)
    AT = np.ascontiguousarray(A.T)
    system = _system(m, n, p, pat, a_vals, p_vals)
    ok = _factor(P, A, AT, p, lay, st, system)
    u[:], v[:] = _kkt_solve(P, A, AT, p, lay, st, system, gx, r2)
    return ok


@njit(**_OPTIONS)
def _reduced_adjoint(P, A, p, lay, pat, st, lifted, a, g1, g2, u, v):
    """[P Aᵀ; A −H][u; v] = [g1; g2] with the lifted columns E (each with one nonzero a, in
    its equality row R) eliminated: with T = −A_RK/a and w = g2_R/a, u_E = T u_K + w and
    v_R = (g1_E − P_EK u_K − P_EE u_E)/a, and (u_K, v_O) solve the reduced system with
    P_KK + P_KE T + Tᵀ P_EK + Tᵀ P_EE T, right-hand side g1_K + Tᵀ g1_E − (P_KE + Tᵀ P_EE) w
    (`elimination`'s reduced objective), A_OK and g2_O."""
    cols, rows, keep, other = lifted
    A_RK = np.ascontiguousarray(A[rows][:, keep])
    T = -A_RK / a.reshape(-1, 1)
    w = g2[rows] / a
    P_KE, P_EE = np.ascontiguousarray(P[keep][:, cols]), np.ascontiguousarray(P[cols][:, cols])
    P_KE_T = P_KE @ T
    PT = P_EE @ T
    Q = np.ascontiguousarray(P[keep][:, keep]) + P_KE_T + P_KE_T.T + T.T @ PT
    rhs = g1[keep] + T.T @ g1[cols] - (P_KE @ w + PT.T @ w)
    A_r = np.ascontiguousarray(A[other][:, keep])
    AT_r = np.ascontiguousarray(A_r.T)
    p_r = p - rows.size
    system = _system(other.size, keep.size, p_r, pat, np.empty(0), np.empty(0))  # dense
    ok = _factor(Q, A_r, AT_r, p_r, lay, st, system)
    u_K, v_O = _kkt_solve(Q, A_r, AT_r, p_r, lay, st, system, rhs, g2[other])
    u_E = T @ u_K + w
    u[keep], u[cols] = u_K, u_E
    v[other] = v_O
    v[rows] = (g1[cols] - P_KE.T @ u_K - P_EE @ u_E) / a
    return ok


@njit(**_OPTIONS)
def adjoint_each(
    P, A, a_vals, p_vals, p, lay, pat, lifted, s, y, U, L_inv, gx, gy, gs, u, v, index, ok
):  # fmt: skip
    """`adjoint_one` for the elements in `index` of batch-first arrays (one call for a
    chunk of the batch); ok[i] its result."""
    for i in index:
        ok[i] = adjoint_one(
            P[i], A[i], a_vals[i], p_vals[i], p, lay, pat, lifted, s[i], y[i], U[i], L_inv[i],
            gx[i], gy[i], gs[i], u[i], v[i],
        )  # fmt: skip


NONE_LIFTED = (np.zeros(0, dtype=np.int64),) * 4  # `adjoint_one` eliminates nothing


def lifted_columns(structure: ConeStructure) -> tuple[np.ndarray, ...]:
    """(E, R, K, O) of `ipm._lifted_columns` where the kernels' matrices are dense (the
    adjoint then eliminates them), `NONE_LIFTED` where `structure_pattern` is used."""
    if structure_pattern(structure).used:
        return NONE_LIFTED
    return tuple(t.astype(np.int64) for t in ipm._lifted_columns(structure))


@njit(**_OPTIONS)
def interior(lay, s, y, p):
    """Whether (s, y) lie strictly inside the cones on the rows after the first p."""
    return cone.interior(lay, s[p:], y[p:])
