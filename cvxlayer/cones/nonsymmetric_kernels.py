"""The 3-d nonsymmetric cones' interior-point operations as compiled kernels (numba), the
twin of `nonsymmetric.py` (its docstring has the math: ∇f*, ∇²f*, ∇³f* from ψ, Dahl and
Andersen's scaling H = U Uᵀ, W⁻ᵀ = U⁻¹, the combined right-hand side, the step by
backtracking on membership), for one block of 3 rows. A block's family is `kind`
(`EXP`, `POWER`) and its parameter `a` (the power cone's exponent); `_barrier_*` pick the
family's barrier (`exp_kernels`, `power_kernels`), the only place the family matters.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from cvxlayer.cones import exp_kernels, power_kernels

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}
EXP, POWER = 0, 1
_EPS = np.finfo(np.float64).eps
# the step's candidates (as `nonsymmetric.py`): a geometric grid, then halvings
_RATIO, GRID, _BISECT = 0.65, 24, 3
LOG_RATIO = math.log(_RATIO)


# ---------------------------------------------------------------- the family's barrier
@njit(**_OPTIONS)
def _barrier_weights(kind, a, out):
    if kind == EXP:
        exp_kernels.weights(a, out)
    else:
        power_kernels.weights(a, out)


@njit(**_OPTIONS)
def _barrier_parts(kind, a, z, grad, hess):
    if kind == EXP:
        return exp_kernels.dual_parts(z, a, grad, hess)
    return power_kernels.dual_parts(z, a, grad, hess)


@njit(**_OPTIONS)
def _barrier_third(kind, a, z, u, v, out):
    if kind == EXP:
        exp_kernels.dual_third(z, a, u, v, out)
    else:
        power_kernels.dual_third(z, a, u, v, out)


@njit(**_OPTIONS)
def _primal_gradient(kind, a, s, out):
    if kind == EXP:
        exp_kernels.primal_gradient(s, a, out)
    else:
        power_kernels.primal_gradient(s, a, out)


@njit(**_OPTIONS)
def inside(kind, a, s, z):
    """s ∈ int K and z ∈ int K*."""
    if kind == EXP:
        return exp_kernels.in_primal(s, a) and exp_kernels.in_dual(z, a)
    return power_kernels.in_primal(s, a) and power_kernels.in_dual(z, a)


@njit(**_OPTIONS)
def central(kind, a, out):
    """The central point p (−∇f*(p) = p)."""
    if kind == EXP:
        exp_kernels.central(a, out)
    else:
        power_kernels.central(a, out)


@njit(**_OPTIONS)
def project_dual(kind, a, v, tol, out, vec):
    """out = Π_{K*}(v) for one block: −Π_{K°}(−v) (tol: the exponential cone's projection
    tolerance); vec: `scratch`'s first part."""
    w, primal, polar = vec[0], vec[1], vec[2]
    for i in range(3):
        w[i] = -v[i]
    if kind == EXP:
        exp_kernels.project_primal_polar(w, tol, primal, polar)
    else:
        power_kernels.project(w, a, primal)
        for i in range(3):
            polar[i] = w[i] - primal[i]
    for i in range(3):
        out[i] = -polar[i]


# ---------------------------------------------------------------- 3 × 3 algebra
@njit(**_OPTIONS)
def _cross(u, v, out):
    out[0] = u[1] * v[2] - u[2] * v[1]
    out[1] = u[2] * v[0] - u[0] * v[2]
    out[2] = u[0] * v[1] - u[1] * v[0]


@njit(**_OPTIONS)
def _dot(u, v):
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


@njit(**_OPTIONS)
def _mv(M, v, out):
    for i in range(3):
        out[i] = M[i, 0] * v[0] + M[i, 1] * v[1] + M[i, 2] * v[2]


@njit(**_OPTIONS)
def _inverse(V, out):
    """out = V⁻¹: its rows are the cross products of V's columns over det V."""
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        out[i, 0] = V[1, j] * V[2, k] - V[2, j] * V[1, k]
        out[i, 1] = V[2, j] * V[0, k] - V[0, j] * V[2, k]
        out[i, 2] = V[0, j] * V[1, k] - V[1, j] * V[0, k]
    det = V[0, 0] * out[0, 0] + V[1, 0] * out[0, 1] + V[2, 0] * out[0, 2]
    for i in range(3):
        for j in range(3):
            out[i, j] /= det


@njit(**_OPTIONS)
def _cholesky_inverse_once(M, shift, out):
    """out = L⁻¹ for M + shift I = L Lᵀ in closed form (NaN where not positive definite)."""
    d = M[0, 0] + shift
    l00 = math.sqrt(d) if d >= 0 else math.nan
    l10, l20 = M[1, 0] / l00, M[2, 0] / l00
    d = M[1, 1] + shift - l10 * l10
    l11 = math.sqrt(d) if d >= 0 else math.nan
    l21 = (M[2, 1] - l20 * l10) / l11
    d = M[2, 2] + shift - l20 * l20 - l21 * l21
    l22 = math.sqrt(d) if d >= 0 else math.nan
    m00, m11, m22 = 1.0 / l00, 1.0 / l11, 1.0 / l22
    m10 = -l10 * m00 * m11
    m21 = -l21 * m11 * m22
    out[0, 1] = out[0, 2] = out[1, 2] = 0.0
    out[0, 0], out[1, 1], out[2, 2] = m00, m11, m22
    out[1, 0], out[2, 1] = m10, m21
    out[2, 0] = -(l20 * m00 + l21 * m10) * m22


@njit(**_OPTIONS)
def _finite(M):
    for i in range(3):
        for j in range(3):
            if not math.isfinite(M[i, j]):
                return False
    return True


@njit(**_OPTIONS)
def _cholesky_inverse(M, out):
    """L⁻¹ for M + δI = L Lᵀ: δ = 0, or where rounding leaves M indefinite the smallest of
    ε tr(M)·10ᵏ that factors (as `nonsymmetric._cholesky_inverse`)."""
    _cholesky_inverse_once(M, 0.0, out)
    scale = _EPS * (M[0, 0] + M[1, 1] + M[2, 2])
    for k in range(0, 8, 2):
        if _finite(out):
            return
        _cholesky_inverse_once(M, 10.0**k * scale, out)


@njit(**_OPTIONS)
def scratch():
    """Work space for `scaling` and `combined_ds` (one block at a time)."""
    return np.empty((8, 3)), np.empty((2, 3, 3))


# ---------------------------------------------------------------- the scaling
@njit(**_OPTIONS)
def scaling(kind, a, s, z, U, L_inv, grad, hess, g_psi, H_psi, vec, mat):
    """At interior (s, z): ∇f*(z) into grad, ∇²f*(z) into hess, ∇ψ and ∇²ψ into g_psi,
    H_psi, and the scaling H = U Uᵀ with W⁻ᵀ = L_inv (= U⁻¹); returns ψ(z). vec (8, 3),
    mat (2, 3, 3): `scratch`."""
    c, zt, ds, dz, Hzt, r, axis, d = vec[0], vec[1], vec[2], vec[3], vec[4], vec[5], vec[6], vec[7]
    rest, V = mat[0], mat[1]
    psi = _barrier_parts(kind, a, z, g_psi, H_psi)
    _barrier_weights(kind, a, c)
    for i in range(3):
        for j in range(3):
            hess[i, j] = -H_psi[i, j] / psi + g_psi[i] * g_psi[j] / (psi * psi)
        grad[i] = -g_psi[i] / psi
        if c[i] != 0:
            grad[i] -= c[i] / z[i]
            hess[i, i] += c[i] / (z[i] * z[i])
    _primal_gradient(kind, a, s, zt)  # ∇f(s)
    dot_sz = _dot(s, z)
    mu = dot_sz / 3.0
    mu_t = _dot(grad, zt) / 3.0
    for i in range(3):
        ds[i], dz[i] = s[i] + mu * grad[i], z[i] + mu * zt[i]
    dot_d = _dot(ds, dz)
    _mv(hess, zt, Hzt)
    de1 = mu * mu_t - 1.0
    de2 = _dot(zt, Hzt) - 3.0 * mu_t * mu_t
    norm = 0.0
    for i in range(3):
        r[i] = mu_t * grad[i] - Hzt[i]
    for i in range(3):
        for j in range(3):
            rest[i, j] = hess[i, j] - grad[i] * grad[j] / 3.0 - r[i] * r[j] / de2
            norm += rest[i, j] * rest[i, j]
    _cross(z, zt, axis)
    length = math.sqrt(_dot(axis, axis))
    for i in range(3):
        V[i, 0], V[i, 1], V[i, 2] = s[i], ds[i], axis[i] / length
    d[0], d[1], d[2] = 1.0 / dot_sz, 1.0 / dot_d, mu * math.sqrt(norm)
    _inverse(V, L_inv)
    for i in range(3):
        root = math.sqrt(d[i])
        for j in range(3):
            L_inv[i, j] /= root
    usable = abs(de1) > math.sqrt(_EPS) and abs(de2) > _EPS and dot_sz > 0 and dot_d > 0
    if usable and _finite(L_inv):
        for j in range(3):
            root = math.sqrt(d[j])
            for i in range(3):
                U[i, j] = V[i, j] * root
    else:  # the dual scaling μ∇²f*(z) = L Lᵀ: U = L
        for i in range(3):
            for j in range(3):
                rest[i, j] = mu * hess[i, j]
        _cholesky_inverse(rest, L_inv)
        _inverse(L_inv, U)
    return psi


@njit(**_OPTIONS)
def combined_ds(kind, a, s, z, psi, grad, hess, g_psi, H_psi, ds, dz, sigma_mu, out, vec, mat):
    """out = s + σμ∇f*(z) − ½∇³f*(z)[(∇²f*)⁻¹Δs_a, Δz_a] for the affine (Δs_a, Δz_a);
    vec, mat: `scratch`."""
    L_inv = mat[0]
    c, w, u, third, Hu, Hv = vec[0], vec[1], vec[2], vec[3], vec[4], vec[5]
    _cholesky_inverse(hess, L_inv)
    _mv(L_inv, ds, w)
    for i in range(3):
        u[i] = L_inv[0, i] * w[0] + L_inv[1, i] * w[1] + L_inv[2, i] * w[2]
        if not math.isfinite(u[i]):
            u[i] = 0.0
    _barrier_weights(kind, a, c)
    _barrier_third(kind, a, z, u, dz, third)
    gu, gv = _dot(g_psi, u), _dot(g_psi, dz)
    _mv(H_psi, u, Hu)
    _mv(H_psi, dz, Hv)
    uHv = _dot(u, Hv)
    p2 = psi * psi
    for i in range(3):
        f3 = -third[i] / psi + (Hv[i] * gu + Hu[i] * gv + g_psi[i] * uHv) / p2
        f3 -= 2.0 * g_psi[i] * gu * gv / (p2 * psi)
        if c[i] != 0:
            f3 -= 2.0 * c[i] / z[i] ** 3 * u[i] * dz[i]
        out[i] = s[i] + sigma_mu * grad[i] - 0.5 * f3


@njit(**_OPTIONS)
def _inside_at(kind, a, s, ds, z, dz, alpha, ts, tz):
    for i in range(3):
        ts[i], tz[i] = s[i] + alpha * ds[i], z[i] + alpha * dz[i]
    return inside(kind, a, ts, tz)


@njit(**_OPTIONS)
def step(kind, a, s, z, ds, dz, vec, bound):
    """(α, k): the largest candidate α ≤ 1 with s + αΔs ∈ int K, z + αΔz ∈ int K* (the
    feasible steps form an interval [0, α*)): the first of a geometric grid, ratioᵏ, then
    halvings of the gap above it; 0 if none down to ~5e-5. With `bound` ≥ 0, the grid
    index of another block's step (the smaller one wins): (inf, k) as soon as the block's
    own index k < bound is found, whose step would be larger (the grid starts one below
    `bound`). vec: `scratch`'s first part."""
    ts, tz = vec[0], vec[1]
    low, first = 0.0, GRID
    for k in range(max(bound - 1, 0), GRID):
        if _inside_at(kind, a, s, ds, z, dz, _RATIO**k, ts, tz):
            low, first = _RATIO**k, k
            break
    if first < bound:
        return np.inf, first
    if low == 0.0 or low == 1.0:
        return low, first
    high = low / _RATIO
    for _ in range(_BISECT):
        mid = (low + high) / 2.0
        if _inside_at(kind, a, s, ds, z, dz, mid, ts, tz):
            low = mid
        else:
            high = mid
    return low, first


# ---------------------------------------------------------------- at a solution
_APEX = 1e-8  # (relative) a block's y or s this small counts as zero


@njit(**_OPTIONS)
def moreau_factors(kind, a, y, s, delta, U, L_inv, vec, mat):
    """The factors U (H = U Uᵀ) and L_inv (= U⁻¹) of H = D⁻¹(I − D) at a complementary pair
    y ∈ bd K*, s ∈ bd K (y ⟂ s), D = DΠ_{K*}(y − s), in closed form: with n = ∇ψ/‖∇ψ‖ the
    normal of bd K* at y (s ∥ n), t₁ = y/‖y‖ along its ray and t₂ = n × t₁, D has
    eigenvalues 1, 1/(1 + ‖s‖κ), 0 along t₁, t₂, n, where κ = −t₂ᵀ∇²ψ t₂/‖∇ψ‖ is bd K*'s
    curvature (the derivative of the projection onto a convex set: (I + ‖s‖·shape
    operator)⁻¹ on the tangent plane). H's eigenvalues 0, ‖s‖κ, ∞ are clipped into
    [1/δ, δ]; y = 0 gives H = δI (s free), s = 0 gives H = I/δ (y free). vec, mat:
    `scratch`."""
    g, basis, h = vec[0], mat[0], vec[1]
    size_y = math.sqrt(_dot(y, y))
    size_s = math.sqrt(_dot(s, s))
    scale = 1.0 + max(size_y, size_s)
    for i in range(3):
        for j in range(3):
            basis[i, j] = 1.0 if i == j else 0.0
    if size_s <= _APEX * scale or size_y <= _APEX * scale:
        value = 1.0 / delta if size_s <= _APEX * scale else delta
        h[0], h[1], h[2] = value, value, value
    else:
        _barrier_parts(kind, a, y, g, mat[1])
        norm = math.sqrt(_dot(g, g))
        n, t1, t2 = basis[2], basis[0], basis[1]  # rows of basis: t₁, t₂, n
        for i in range(3):
            n[i] = g[i] / norm
        along = _dot(y, n)
        for i in range(3):
            t1[i] = y[i] - along * n[i]
        length = math.sqrt(_dot(t1, t1))
        for i in range(3):
            t1[i] /= length
        _cross(n, t1, t2)
        curve = 0.0
        for i in range(3):
            for j in range(3):
                curve -= t2[i] * mat[1][i, j] * t2[j]
        kappa = max(curve / norm, 0.0)
        h[0], h[1], h[2] = 1.0 / delta, size_s * kappa, delta
        if not (math.isfinite(h[1]) and _finite(basis)):  # off ψ's domain: a neutral H
            for i in range(3):
                for j in range(3):
                    basis[i, j] = 1.0 if i == j else 0.0
            h[0], h[1], h[2] = 1.0, 1.0, 1.0
    for j in range(3):
        root = math.sqrt(min(max(h[j], 1.0 / delta), delta))
        for i in range(3):
            U[i, j] = basis[j, i] * root
            L_inv[j, i] = basis[j, i] / root
