"""Compiled kernels of the constrained-LQR interior point (`fastpaths/mpc.py`): one batch
element per call, its Newton systems solved by the Riccati recursion.

One element, stages t = 0 … S − 1 with ξ_t = [x_t; v_t] (n states, M = N − n inputs:
controls and stage-local auxiliary variables):

    minimize  Σ_t ½ ξ_tᵀ C_t ξ_t + c_tᵀ ξ_t
    s.t.      x_0 = x_init,   x_{t+1} = F_t ξ_t + f_t,   G_t ξ_t ≤ h_t  (k_t rows).

Optimality, with costates λ_t (as `lqr`), multipliers μ_t ≥ 0 and slacks s_t ≥ 0:

    C_t ξ_t + c_t + G_tᵀ μ_t + F_tᵀ λ_{t+1} − [λ_t; 0] = 0,
    G_t ξ_t + s_t = h_t,   s_t ∘ μ_t = 0,   the dynamics.

A Newton step of Mehrotra's predictor-corrector method eliminates Δs, Δμ (weights
D = μ/s) and is then the KKT system of an LQR problem with stage Hessians
H_t = C_t + G_tᵀ D_t G_t, linear terms from the residuals and the dynamics' residuals as
offsets: one Riccati factorization per iteration (`_factor`, O(S N³)), two sweeps
(`_sweep`) for the predictor and the corrector. The start (`_start`) needs no feasible
point. The answer is polished to the exact solution of its active set (`_polish`), and the
backward (`adjoint_one`) solves the KKT system at the solution, both by the same recursion
with iterative refinement (`_kkt_solve`).

Arrays: C (S, N, N), c (S, N), F (S − 1, n, N), f (S − 1, n), G (S, K, N), h (S, K) with
rows k ≥ rows[t] of stage t unused (padding), x_init (n,). Kernels are pure functions of
arrays; the outputs are written into the arrays passed in.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# numba's cache keys on this file only: a change to this kernel there needs a touch here
from cvxlayer.solvers.ipm_compiled import chol_solve_in_place

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}

SOLVED, MAX_ITERS, FAILED = 0, 1, 2  # status codes
_STEP_FRACTION = 0.99  # of the step to the boundary of s, μ ≥ 0
_MIN_STEP = 1e-10  # a shorter step ends the solve
# once within the caller's tolerance, up to _EXTRA_ITERS more iterations aim at _TIGHTER
# times it (an interior point gains ~2 digits an iteration there), and the best iterate is
# the answer, then polished: with fewer extra iterations the polish's active-set guess
# failed more often (T7, 128 elements against Clarabel: 2 extra 1e-8, 1 extra 1e-3 off)
_TIGHTER, _EXTRA_ITERS = 1e-3, 2
_REG = 1e-13  # relative diagonal regularization of each stage's Q_vv
_POLISH_ROUNDS = 3
# the factorization's weights of rows made equalities, this times the stage's cost
# curvature (w = D(Gx − h) carries D times the rounding of Gx − h: 1e12 left 1e-5 in the
# polish's multipliers), of rows dropped (no multiplier), at most _WEAK times
_STRONG, _WEAK = 1e8, 1e-6
_REFINE_STEPS = 4  # iterative refinement of `_kkt_solve`
_MARGIN = 0.1  # the start's inputs keep this fraction of |h| inside their rows (measured:
# 0.01 took 5/14/17/24 iterations at horizons 10/20/40/100 on unstable dynamics, 0.1
# 5/10/12/16; from a warm start 0.01, 0.1 and 0.25 took 10.3, 9.8 and 9.7, cold 11.0)
_START_SWEEPS = 50  # cyclic projections of the start's inputs, at most


@njit(**_OPTIONS)
def _cholesky(Q, n, L):
    """L (M, M) lower with L Lᵀ = Q[n:, n:] + diag(δ), δ_j = _REG · Q_jj (relative to each
    entry: relative to the largest, the 1e12 weights of active rows drowned the 1e-7 of an
    auxiliary variable whose rows are all inactive); False where not positive definite."""
    M = L.shape[0]
    for j in range(M):
        d = Q[n + j, n + j] * (1.0 + _REG)
        for k in range(j):
            d -= L[j, k] * L[j, k]
        if not d > 0.0:
            return False
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, M):
            v = Q[n + i, n + j]
            for k in range(j):
                v -= L[i, k] * L[j, k]
            L[i, j] = v / L[j, j]
        for i in range(j):
            L[i, j] = 0.0
    return True


@njit(**_OPTIONS)
def _hessians(C, G, rows, d, H):
    """H_t = C_t + G_tᵀ diag(d_t) G_t for every stage."""
    S, N = C.shape[0], C.shape[1]
    for t in range(S):
        H[t] = C[t]
        for r in range(rows[t]):
            w = d[t, r]
            if w == 0.0:
                continue
            for i in range(N):
                gi = w * G[t, r, i]
                if gi == 0.0:
                    continue
                for j in range(N):
                    H[t, i, j] += gi * G[t, r, j]


@njit(**_OPTIONS)
def _factor(H, F, n, L, K, V, Qxv, Q, W):
    """The Riccati recursion's matrices for stage Hessians H: per stage the Cholesky factor
    L_t of Q_vv, the gain K_t = −Q_vv⁻¹ Q_vx (M, n), Q_xv (n, M) and V_t (n, n), with
    Q_t = H_t + F_tᵀ V_{t+1} F_t. Q (N, N), W (n, N) scratch. False: some Q_vv not ≻ 0."""
    S, N = H.shape[0], H.shape[1]
    M = N - n
    col = np.empty(M)
    for t in range(S - 1, -1, -1):
        Q[:, :] = H[t]
        if t < S - 1:  # (inner loops run along rows: contiguous, vectorized)
            for i in range(n):  # W = V_{t+1} F_t
                W[i, :] = 0.0
                for k in range(n):
                    v = V[t + 1, i, k]
                    for j in range(N):
                        W[i, j] += v * F[t, k, j]
            for k in range(n):  # Q += F_tᵀ W, skipping F's zero entries (auxiliary inputs)
                for i in range(N):
                    v = F[t, k, i]
                    if v != 0.0:
                        for j in range(N):
                            Q[i, j] += v * W[k, j]
        if not _cholesky(Q, n, L[t]):
            return False
        for i in range(n):
            for j in range(M):
                Qxv[t, i, j] = Q[i, n + j]
            for j in range(M):
                col[j] = -Q[n + j, i]
            chol_solve_in_place(L[t], col)
            for j in range(M):
                K[t, j, i] = col[j]
        for i in range(n):
            for j in range(n):
                V[t, i, j] = Q[i, j]
            for k in range(M):
                v = Qxv[t, i, k]
                for j in range(n):
                    V[t, i, j] += v * K[t, k, j]
        for i in range(n):
            for j in range(i):
                v = 0.5 * (V[t, i, j] + V[t, j, i])
                V[t, i, j] = v
                V[t, j, i] = v
    return True


@njit(**_OPTIONS)
def _sweep(H, g, F, offset, x0, n, L, K, V, Qxv, k, xi, lam):
    """The LQR step for the factored stage Hessians H: minimize Σ ½ξ_tᵀH_tξ_t + g_tᵀξ_t
    s.t. x_0 = x0, x_{t+1} = F_t ξ_t + offset_t; writes ξ (S, N) and the costates λ (S, n)
    (H_tξ_t + g_t + F_tᵀλ_{t+1} − [λ_t; 0] = 0). k (S, M) scratch."""
    S, N = H.shape[0], H.shape[1]
    M = N - n
    q = np.empty(N)
    v = np.zeros(n)
    w = np.empty(n)
    for t in range(S - 1, -1, -1):
        q[:] = g[t]
        if t < S - 1:
            for i in range(n):  # w = V_{t+1} offset_t + v_{t+1}
                acc = v[i]
                for j in range(n):
                    acc += V[t + 1, i, j] * offset[t, j]
                w[i] = acc
            for j in range(n):  # q += F_tᵀ w
                wj = w[j]
                for i in range(N):
                    q[i] += F[t, j, i] * wj
        for j in range(M):
            k[t, j] = -q[n + j]
        chol_solve_in_place(L[t], k[t])
        for i in range(n):
            acc = q[i]
            for j in range(M):
                acc += Qxv[t, i, j] * k[t, j]
            v[i] = acc
    xi[0, :n] = x0
    for t in range(S):
        for j in range(M):
            acc = k[t, j]
            for i in range(n):
                acc += K[t, j, i] * xi[t, i]
            xi[t, n + j] = acc
        if t < S - 1:
            for i in range(n):
                acc = offset[t, i]
                for j in range(N):
                    acc += F[t, i, j] * xi[t, j]
                xi[t + 1, i] = acc
    for t in range(S - 1, -1, -1):
        for i in range(n):
            acc = g[t, i]
            for j in range(N):
                acc += H[t, i, j] * xi[t, j]
            lam[t, i] = acc
        if t < S - 1:
            for j in range(n):
                lj = lam[t + 1, j]
                for i in range(n):
                    lam[t, i] += F[t, j, i] * lj


@njit(**_OPTIONS)
def _g_mv(G, rows, xi, out):
    """out_t = G_t ξ_t on each stage's rows (0 on padding)."""
    S, R, N = G.shape
    for t in range(S):
        for r in range(R):
            acc = 0.0
            if r < rows[t]:
                for j in range(N):
                    acc += G[t, r, j] * xi[t, j]
            out[t, r] = acc


@njit(**_OPTIONS)
def _add_gt(G, rows, w, out):
    """out_t += G_tᵀ w_t."""
    S, R, N = G.shape
    for t in range(S):
        for r in range(rows[t]):
            if w[t, r] != 0.0:
                for j in range(N):
                    out[t, j] += G[t, r, j] * w[t, r]


@njit(**_OPTIONS)
def _stationarity(C, c, F, n, xi, lam, out):
    """out_t = C_t ξ_t + c_t + F_tᵀ λ_{t+1} − [λ_t; 0] (the dual residual without Gᵀμ)."""
    S, N = c.shape
    for t in range(S):
        for i in range(N):
            acc = c[t, i]
            for j in range(N):
                acc += C[t, i, j] * xi[t, j]
            out[t, i] = acc - lam[t, i] if i < n else acc
        if t < S - 1:
            for j in range(n):
                lj = lam[t + 1, j]
                for i in range(N):
                    out[t, i] += F[t, j, i] * lj


@njit(**_OPTIONS)
def _dynamics_residual(F, f, x_init, n, xi, r0, r):
    """r0 = x_init − x_0, r_t = F_t ξ_t + f_t − x_{t+1}; returns the largest |entry|."""
    big = 0.0
    for i in range(n):
        r0[i] = x_init[i] - xi[0, i]
        big = max(big, abs(r0[i]))
    for t in range(F.shape[0]):
        for i in range(n):
            acc = f[t, i] - xi[t + 1, i]
            for j in range(F.shape[2]):
                acc += F[t, i, j] * xi[t, j]
            r[t, i] = acc
            big = max(big, abs(acc))
    return big


@njit(**_OPTIONS)
def _max_step(v, dv, rows):
    """The largest α ≤ 1 with v + α dv ≥ 0 on the used rows."""
    alpha = 1.0
    for t in range(v.shape[0]):
        for r in range(rows[t]):
            if dv[t, r] < 0.0:
                alpha = min(alpha, -v[t, r] / dv[t, r])
    return alpha


@njit(**_OPTIONS)
def _abs_max(a):
    big = 0.0
    for v in a.ravel():
        big = max(big, abs(v))
    return big


@njit(**_OPTIONS)
def _c_max(C, xi):
    """max_t ‖C_t ξ_t‖∞."""
    big = 0.0
    for t in range(xi.shape[0]):
        for i in range(xi.shape[1]):
            acc = 0.0
            for j in range(xi.shape[1]):
                acc += C[t, i, j] * xi[t, j]
            big = max(big, abs(acc))
    return big


@njit(**_OPTIONS)
def _quad(C, c, xi):
    """(Σ ξ_tᵀC_tξ_t, Σ c_tᵀξ_t)."""
    quad, lin = 0.0, 0.0
    for t in range(c.shape[0]):
        for i in range(c.shape[1]):
            lin += c[t, i] * xi[t, i]
            for j in range(c.shape[1]):
                quad += xi[t, i] * C[t, i, j] * xi[t, j]
    return quad, lin


@njit(**_OPTIONS)
def _into_rows(G, h, rows, n, margin, xi):
    """Move the inputs v of one stage's ξ (N,) into G ξ ≤ h − margin by cyclic projections
    onto the rows' half-spaces in v (a bound row: a clip); rows without inputs are left."""
    N = xi.shape[0]
    for _ in range(_START_SWEEPS):
        moved = False
        for r in range(rows):
            excess, norm = margin - h[r], 0.0
            for j in range(N):
                excess += G[r, j] * xi[j]
                if j >= n:
                    norm += G[r, j] * G[r, j]
            if excess > 0.0 and norm > 0.0:
                moved = True
                for j in range(n, N):
                    xi[j] -= excess / norm * G[r, j]
        if not moved:
            return


@njit(**_OPTIONS)
def _start(
    C, c, F, f, G, h, rows, x_init, warm, H, L, K, V, Qxv, Q, W, kk, d, g, r_xi, Gxi, xi, lam, mu, s
):
    """The starting point; False where a factorization fails.

    Primal: the closed-loop rollout of the LQR with d = 1 (min ½ξᵀCξ + cᵀξ + ½‖Gξ − h‖²,
    CVXOPT's start), v_t = K_t x_t + k_t moved inside its stage's rows (`_into_rows`): the
    dynamics hold and the inputs are feasible, so that on unstable dynamics the states
    already have the solution's magnitude (the unconstrained start kept them small, and
    the interior point took 45 to 100+ iterations to leave it at horizons 40-100). With a
    finite guess `warm` (S, N) (a previous solution; (0, N): none) the rollout follows it,
    v_t = v̂_t + K_t (x_t − x̂_t), instead.
    Slacks s = h − Gξ, at least the margin. Duals: the costates of ξ without constraint
    forces, λ_t = (C_tξ_t + c_t)_x + F_t,xᵀλ_{t+1}, each row's μ from the rest of
    stationarity, μ_r = −g_rᵀ(Cξ + c + Fᵀλ − [λ; 0]) / ‖g_r‖², raised to τ / s_r (τ: the
    rows' mean |μ_r| s_r) so that no row starts far off the central path."""
    S, N = c.shape
    n = x_init.shape[0]
    M = N - n
    d[:, :] = 1.0
    _hessians(C, G, rows, d, H)
    if not _factor(H, F, n, L, K, V, Qxv, Q, W):
        return False
    g[:, :] = c
    for t in range(S):
        for r in range(rows[t]):
            for j in range(N):
                g[t, j] -= G[t, r, j] * h[t, r]
    if warm.shape[0] == S and np.isfinite(warm).all():  # k_t = v̂_t − K_t x̂_t
        for t in range(S):
            for j in range(M):
                acc = warm[t, n + j]
                for i in range(n):
                    acc -= K[t, j, i] * warm[t, i]
                kk[t, j] = acc
    else:
        _sweep(H, g, F, f, x_init, n, L, K, V, Qxv, kk, xi, lam)  # for the gains k_t
    xi[0, :n] = x_init
    for t in range(S):
        margin = 0.0
        for r in range(rows[t]):
            margin = max(margin, _MARGIN * abs(h[t, r]))
        for j in range(M):
            acc = kk[t, j]
            for i in range(n):
                acc += K[t, j, i] * xi[t, i]
            xi[t, n + j] = acc
        _into_rows(G[t], h[t], rows[t], n, margin, xi[t])
        for r in range(rows[t]):
            acc = h[t, r]
            for j in range(N):
                acc -= G[t, r, j] * xi[t, j]
            s[t, r] = max(acc, margin) if margin > 0.0 else max(acc, 1.0)
        if t < S - 1:
            for i in range(n):
                acc = f[t, i]
                for j in range(N):
                    acc += F[t, i, j] * xi[t, j]
                xi[t + 1, i] = acc
    lam[:, :] = 0.0
    _stationarity(C, c, F, n, xi, lam, r_xi)
    for t in range(S - 1, -1, -1):
        for i in range(n):
            acc = r_xi[t, i]  # (Cξ + c)_x: r_xi was formed with λ = 0
            if t < S - 1:
                for j in range(n):
                    acc += F[t, j, i] * lam[t + 1, j]
            lam[t, i] = acc
    _stationarity(C, c, F, n, xi, lam, r_xi)
    total, count = 0.0, 0
    for t in range(S):
        for r in range(h.shape[1]):
            mu[t, r] = 0.0
            if r >= rows[t]:
                s[t, r] = 1.0
                continue
            dot, norm = 0.0, 0.0
            for j in range(N):
                dot += G[t, r, j] * r_xi[t, j]
                norm += G[t, r, j] * G[t, r, j]
            mu[t, r] = -dot / norm if norm > 0 else 0.0
            total += abs(mu[t, r]) * s[t, r]
            count += 1
    tau = max(total / max(count, 1), _MARGIN)
    for t in range(S):
        for r in range(rows[t]):
            mu[t, r] = max(mu[t, r], tau / s[t, r])
    return True


@njit(**_OPTIONS)
def _residuals(
    C, c, F, f, G, h, rows, x_init, eps_abs, eps_rel, xi, lam, mu, s, Gxi, r_xi, gt_mu, r0,
    r_dyn, r_in, res,
):  # fmt: skip
    """The KKT residuals at (ξ, λ, μ, s) (Gxi = Gξ, r_ξ, r0 and r_dyn as in
    `_dynamics_residual`, r_in = Gξ + s − h; gt_mu scratch) and res = (primal residual,
    dual residual, gap sᵀμ). Returns the merit: the largest ratio of a residual to its
    tolerance eps_abs + eps_rel · scale (SCS's rule, as the QP path's: ≤ 1 is solved)."""
    S = c.shape[0]
    n = x_init.shape[0]
    _g_mv(G, rows, xi, Gxi)
    _stationarity(C, c, F, n, xi, lam, r_xi)
    gt_mu[:, :] = 0.0
    _add_gt(G, rows, mu, gt_mu)
    r_xi += gt_mu
    scale_dual = max(_c_max(C, xi), _abs_max(gt_mu), _abs_max(lam), _abs_max(c))
    res_dyn = _dynamics_residual(F, f, x_init, n, xi, r0, r_dyn)
    res_in, gap = 0.0, 0.0
    for t in range(S):
        for r in range(rows[t]):
            r_in[t, r] = Gxi[t, r] + s[t, r] - h[t, r]
            res_in = max(res_in, abs(r_in[t, r]))
            gap += s[t, r] * mu[t, r]
    quad, lin = _quad(C, c, xi)
    res[0], res[1], res[2] = max(res_in, res_dyn), _abs_max(r_xi), gap
    scale_pri = max(
        _abs_max(h), _abs_max(f), _abs_max(x_init), _abs_max(Gxi), _abs_max(s), _abs_max(xi)
    )
    return max(
        res[0] / (eps_abs + eps_rel * scale_pri),
        res[1] / (eps_abs + eps_rel * scale_dual),
        gap / (eps_abs + eps_rel * max(abs(quad), abs(lin))),
    )


@njit(**_OPTIONS)
def _kkt_solve(C, F, G, rows, d, scale, a, b, e0, e, x, nu, w):
    """Solve the KKT system of the QP at fixed weights,

        [C   Gᵀ           Aᵀ] [x]   [a]
        [G  −diag(scale)  0 ] [w] = [b]      (w_r = 0 where d_r = 0 or scale_r < 0),
        [A   0            0 ] [ν]   [e]

    with A ξ = (x_0, x_{t+1} − F_t ξ_t) the dynamics rows (e = (e0, e)), by the Riccati
    recursion on C + GᵀDG (w = D(Gx − b); D = d, ≈ 1/scale) and `_REFINE_STEPS` steps of
    iterative refinement on the exact system. Rows with scale_r < 0 have no multiplier and
    no equation: their weight d_r only regularizes the factorization. a, b, e0, e are
    overwritten. Returns False where the factorization fails."""
    S, N = C.shape[0], C.shape[1]
    n = e0.shape[0]
    M, R = N - n, d.shape[1]
    H = np.empty_like(C)
    _hessians(C, G, rows, d, H)
    L, K = np.zeros((S, M, M)), np.empty((S, M, n))
    V, Qxv = np.empty((S, n, n)), np.empty((S, n, M))
    if not _factor(H, F, n, L, K, V, Qxv, np.empty((N, N)), np.empty((n, N))):
        return False
    kk = np.empty((S, M))
    a0, b0, e00, eo = a.copy(), b.copy(), e0.copy(), e.copy()
    step_x, lam_c = np.empty((S, N)), np.empty((S, n))
    Gx, g, r_a = np.zeros((S, R)), np.empty((S, N)), np.empty((S, N))
    rd0, rd = np.empty(n), np.empty((S - 1, n))
    zero_c, zero_f, zero_x = np.zeros((S, N)), np.zeros((S - 1, n)), np.zeros(n)
    x[:, :], nu[:, :], w[:, :] = 0.0, 0.0, 0.0
    for step in range(_REFINE_STEPS + 1):
        # reduced: (C + GᵀDG) x + Aᵀν = a + GᵀD b, A x = e, as an LQR step whose costates
        # are −ν: minimize ½xᵀHx + gᵀx with g = −(a + GᵀDb)
        g[:, :] = -a
        for t in range(S):
            for r in range(rows[t]):
                if scale[t, r] >= 0.0:
                    for j in range(N):
                        g[t, j] -= G[t, r, j] * d[t, r] * b[t, r]
        _sweep(H, g, F, e, e0, n, L, K, V, Qxv, kk, step_x, lam_c)
        _g_mv(G, rows, step_x, Gx)
        x += step_x
        nu -= lam_c
        for t in range(S):
            for r in range(rows[t]):
                if scale[t, r] >= 0.0:
                    w[t, r] += d[t, r] * (Gx[t, r] - b[t, r])
        if step == _REFINE_STEPS:
            break
        # the exact system's residual is the next right-hand side
        _stationarity(C, zero_c, F, n, x, -nu, r_a)  # C x + Aᵀν (costates −ν)
        _add_gt(G, rows, w, r_a)
        a[:, :] = a0 - r_a
        _g_mv(G, rows, x, Gx)
        for t in range(S):
            for r in range(rows[t]):
                b[t, r] = b0[t, r] - (Gx[t, r] - scale[t, r] * w[t, r])
        _dynamics_residual(F, zero_f, zero_x, n, x, rd0, rd)  # A x = −(rd0, rd)
        e0[:] = e00 + rd0
        e[:, :] = eo + rd
    return True


@njit(**_OPTIONS)
def solve_one(
    C, c, F, f, G, h, rows, x_init, warm, eps_abs, eps_rel, max_iters, xi, lam, mu, s, out
):
    """One element's solve (module docstring), from the guess `warm` (S, N) if it has S
    rows (`_start`); writes ξ (S, N), λ (S, n), μ, s (S, K) and
    out = (primal residual, dual residual, gap) of the answer. Returns (status code,
    iterations): SOLVED when SCS's rule held (each residual ≤ eps_abs + eps_rel · its
    scale, as the QP path's) at some iterate, MAX_ITERS when it never did within the limit
    or before steps collapsed, FAILED on a factorization that fails or a non-finite
    iterate. The answer is the best iterate, or its active set's exact solution
    (`_polish`) where that is better."""
    S, N = c.shape
    n = x_init.shape[0]
    M, R = N - n, h.shape[1]
    m = 0
    for t in range(S):
        m += rows[t]
    H = np.empty_like(C)
    L, K = np.zeros((S, M, M)), np.empty((S, M, n))
    V, Qxv = np.empty((S, n, n)), np.empty((S, n, M))
    Q, W, kk = np.empty((N, N)), np.empty((n, N)), np.empty((S, M))
    d, Gxi = np.ones((S, R)), np.zeros((S, R))
    g, r_xi, gt_mu = np.empty((S, N)), np.empty((S, N)), np.empty((S, N))
    r0, r_dyn = np.empty(n), np.empty((S - 1, n))
    r_in, w = np.zeros((S, R)), np.zeros((S, R))
    dxi, dlam = np.empty((S, N)), np.empty((S, n))
    ds, dmu = np.zeros((S, R)), np.zeros((S, R))
    ds_a, dmu_a = np.zeros((S, R)), np.zeros((S, R))
    res = np.empty(3)

    if not _start(
        C, c, F, f, G, h, rows, x_init, warm, H, L, K, V, Qxv, Q, W, kk, d, g, r_xi, Gxi, xi,
        lam, mu, s,
    ):  # fmt: skip
        return FAILED, 0

    best_xi, best_lam = np.empty_like(xi), np.empty_like(lam)
    best_mu, best_s = np.empty_like(mu), np.empty_like(s)
    it, sigma, best, extra = 0, 0.0, np.inf, 0
    for it in range(max_iters + 1):
        merit = _residuals(
            C, c, F, f, G, h, rows, x_init, eps_abs, eps_rel, xi, lam, mu, s, Gxi, r_xi,
            gt_mu, r0, r_dyn, r_in, res,
        )  # fmt: skip
        if not np.isfinite(merit):
            break
        if merit < best:  # within tolerance (merit ≤ 1), the best iterate is kept
            best = merit
            out[:] = res
            if merit <= 1.0:
                best_xi[:, :], best_lam[:, :], best_mu[:, :], best_s[:, :] = xi, lam, mu, s
        if best <= _TIGHTER or it == max_iters:
            break
        if best <= 1.0:
            if extra == _EXTRA_ITERS:
                break
            extra += 1
        mu_now = res[2] / m if m else 0.0
        for t in range(S):
            for r in range(rows[t]):
                d[t, r] = mu[t, r] / s[t, r]
        _hessians(C, G, rows, d, H)
        if not _factor(H, F, n, L, K, V, Qxv, Q, W):
            return FAILED, it
        # predictor (σ = 0), then the corrector with σ = (μ_aff / μ)³
        for phase in range(2):
            for t in range(S):
                for r in range(rows[t]):
                    rc = -s[t, r] * mu[t, r]
                    if phase == 1:
                        rc += sigma * mu_now - ds_a[t, r] * dmu_a[t, r]
                    w[t, r] = (rc + mu[t, r] * r_in[t, r]) / s[t, r]
            g[:, :] = r_xi
            _add_gt(G, rows, w, g)
            _sweep(H, g, F, r_dyn, r0, n, L, K, V, Qxv, kk, dxi, dlam)
            _g_mv(G, rows, dxi, Gxi)
            for t in range(S):
                for r in range(rows[t]):
                    ds[t, r] = -r_in[t, r] - Gxi[t, r]
                    dmu[t, r] = w[t, r] + d[t, r] * Gxi[t, r]
            alpha = min(_max_step(s, ds, rows), _max_step(mu, dmu, rows))
            if phase == 0:
                if m == 0:
                    break
                aff = 0.0
                for t in range(S):
                    for r in range(rows[t]):
                        aff += (s[t, r] + alpha * ds[t, r]) * (mu[t, r] + alpha * dmu[t, r])
                sigma = (aff / m / mu_now) ** 3 if mu_now > 0 else 0.0
                ds_a[:, :] = ds
                dmu_a[:, :] = dmu
        step = 1.0 if m == 0 else min(1.0, _STEP_FRACTION * alpha)
        if step < _MIN_STEP:
            break
        xi += step * dxi
        lam += step * dlam
        s += step * ds
        mu += step * dmu
    if best > 1.0:
        return (MAX_ITERS if np.isfinite(best) else FAILED), it
    xi[:, :], lam[:, :], mu[:, :], s[:, :] = best_xi, best_lam, best_mu, best_s
    if m:
        _polish(C, c, F, f, G, h, rows, x_init, eps_abs, eps_rel, best, xi, lam, mu, s, out)
    return SOLVED, it


@njit(**_OPTIONS)
def _curvature(C):
    """(S,) each stage's largest cost curvature max_j C_t,jj: the scale of the weights
    `_polish` and `adjoint_one` give rows they make equalities or drop."""
    big = np.zeros(C.shape[0])
    for t in range(C.shape[0]):
        for j in range(C.shape[1]):
            big[t] = max(big[t], C[t, j, j])
    return big


@njit(**_OPTIONS)
def _polish(C, c, F, f, G, h, rows, x_init, eps_abs, eps_rel, merit, xi, lam, mu, s, out):
    """Replace the answer by the exact solution of its active set where that has a smaller
    merit, as the QP path polishes: rows with μ > s are equalities, the others have no
    multiplier (their weights μ/s stay in the factorization only, so that an auxiliary
    variable whose rows are all inactive stays determined). A wrong guess (a weakly
    active row) shows as a negative multiplier or a violated row; the next round takes the rows with
    w_r > h_r − g_rᵀx (a primal-dual active-set step), `_POLISH_ROUNDS` at most. The
    interior point stops O(μ) off the solution, O(√μ) where a row is weakly active: on T7
    the controls were up to 2e-4 off Clarabel's at eps 1e-6."""
    S, N = c.shape
    n = x_init.shape[0]
    R = h.shape[1]
    d, scale = np.zeros((S, R)), np.zeros((S, R))
    active = np.zeros((S, R), dtype=np.bool_)
    big = _curvature(C)
    for t in range(S):
        for r in range(rows[t]):
            active[t, r] = mu[t, r] > s[t, r]
    x, nu, w = np.empty((S, N)), np.empty((S, n)), np.empty((S, R))
    Gx, s_p, mu_p = np.zeros((S, R)), np.ones((S, R)), np.zeros((S, R))
    r_xi, gt_mu, r_in = np.empty((S, N)), np.empty((S, N)), np.zeros((S, R))
    r0, r_dyn, res = np.empty(n), np.empty((S - 1, n)), np.empty(3)
    for _ in range(_POLISH_ROUNDS):
        for t in range(S):
            for r in range(rows[t]):
                d[t, r], scale[t, r] = 0.0, 0.0
                if active[t, r]:
                    d[t, r] = _STRONG * big[t]
                else:  # no multiplier; a small weight only regularizes
                    d[t, r], scale[t, r] = min(mu[t, r] / s[t, r], _WEAK * big[t]), -1.0
        if not _kkt_solve(C, F, G, rows, d, scale, -c, h.copy(), x_init.copy(), f.copy(), x, nu, w):
            return
        _g_mv(G, rows, x, Gx)
        changed = False
        for t in range(S):
            for r in range(rows[t]):
                s_p[t, r] = max(h[t, r] - Gx[t, r], 0.0)
                mu_p[t, r] = max(w[t, r], 0.0)
                now = w[t, r] > h[t, r] - Gx[t, r]
                changed = changed or now != active[t, r]
                active[t, r] = now
        polished = _residuals(
            C, c, F, f, G, h, rows, x_init, eps_abs, eps_rel, x, -nu, mu_p, s_p, Gx, r_xi,
            gt_mu, r0, r_dyn, r_in, res,
        )  # fmt: skip
        if polished < merit:
            merit = polished
            xi[:, :], lam[:, :], mu[:, :], s[:, :] = x, -nu, mu_p, s_p
            out[:] = res
        if not changed:
            return


@njit(**_OPTIONS)
def adjoint_one(C, F, G, rows, xi, mu, s, g_xi, g_lam, g_mu, d_xi, d_nu, d_mu):
    """The adjoint of one element's solution map (OptNet's differentials with D = μ/s at the
    solution): solve

        [C   Gᵀ       Aᵀ] [d_ξ]   [g_ξ]
        [G  −diag(s/μ) 0] [d_μ] = [g_μ]
        [A   0        0 ] [d_ν]   [g_ν]

    (`_kkt_solve`) where A ξ = b are the dynamics rows x_0 = x_init, x_{t+1} − F_t ξ_t = f_t
    with multipliers ν = −λ, so g_ν = −g_λ. In the factorization D is clipped at
    _STRONG times the stage's curvature (s = 0 on a polished answer's active rows), and
    rows with μ = 0 (its inactive ones: no multiplier, d_μ = 0) weigh _WEAK times it.
    Writes d_ξ (S, N), d_ν (S, n), d_μ (S, K); NaN where the factorization fails."""
    S, R = mu.shape
    d, scale = np.zeros((S, R)), np.zeros((S, R))
    big = _curvature(C)
    for t in range(S):
        for r in range(rows[t]):
            if mu[t, r] > 0.0:
                d[t, r] = min(mu[t, r] / max(s[t, r], 1e-300), _STRONG * big[t])
                scale[t, r] = s[t, r] / mu[t, r]
            else:  # μ = 0 (a polished inactive row): no multiplier, a small weight
                d[t, r], scale[t, r] = _WEAK * big[t], -1.0
    if not _kkt_solve(
        C, F, G, rows, d, scale, g_xi.copy(), g_mu.copy(), -g_lam[0], -g_lam[1:], d_xi, d_nu, d_mu
    ):
        d_xi[:, :], d_nu[:, :], d_mu[:, :] = np.nan, np.nan, np.nan
