"""The 3-d power cone's barrier as compiled kernels (numba) for one 3-row block with
exponent a, the twin of the interior-point part of `power.py` (same formulas; its comment
states them): f*(z) = −log ψ(z) − (1−a) log z₀ − a log z₁ with ψ = φ − z₂²,
φ = (z₀/a)^{2a} (z₁/(1−a))^{2(1−a)}. Signatures as `cvxlayer.cones.exp_kernels`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}
_GRADIENT_STEPS = 30


@njit(**_OPTIONS)
def weights(a, out):
    out[0], out[1], out[2] = 1.0 - a, a, 0.0


@njit(**_OPTIONS)
def _phi(z, a):
    """φ and h′ = ∇ log φ, h″ (its diagonal Hessian) on the first two coordinates."""
    phi = math.exp(2.0 * a * math.log(z[0] / a) + 2.0 * (1.0 - a) * math.log(z[1] / (1.0 - a)))
    h1 = (2.0 * a / z[0], 2.0 * (1.0 - a) / z[1])
    h2 = (-2.0 * a / (z[0] * z[0]), -2.0 * (1.0 - a) / (z[1] * z[1]))
    return phi, h1, h2


@njit(**_OPTIONS)
def dual_parts(z, a, grad, hess):
    """ψ(z), returned; ∇ψ (3,) and ∇²ψ (3, 3) written."""
    phi, h1, h2 = _phi(z, a)
    grad[0], grad[1], grad[2] = phi * h1[0], phi * h1[1], -2.0 * z[2]
    hess[:] = 0.0
    for i in range(2):
        for j in range(2):
            hess[i, j] = phi * h1[i] * h1[j]
        hess[i, i] += phi * h2[i]
    hess[2, 2] = -2.0
    return phi - z[2] * z[2]


@njit(**_OPTIONS)
def dual_third(z, a, u, v, out):
    """∇³ψ(z)[u, v] (3,)."""
    phi, h1, h2 = _phi(z, a)
    h3 = (4.0 * a / z[0] ** 3, 4.0 * (1.0 - a) / z[1] ** 3)
    hu = h1[0] * u[0] + h1[1] * u[1]
    hv = h1[0] * v[0] + h1[1] * v[1]
    udv = h2[0] * u[0] * v[0] + h2[1] * u[1] * v[1]
    for i in range(2):
        out[i] = phi * (
            hu * hv * h1[i] + hv * h2[i] * u[i] + hu * h2[i] * v[i] + udv * h1[i]
            + h3[i] * u[i] * v[i]
        )  # fmt: skip
    out[2] = 0.0


@njit(**_OPTIONS)
def primal_gradient(s, a, out):
    """∇f(s) of the primal barrier (3,): Newton in log y on h(y) = ℓ (`power.py`)."""
    s0, s1, s2 = s[0], s[1], s[2]
    r = abs(s2)
    q = 0.0
    if r > 0:
        ell = 2.0 * a * math.log(s0) + 2.0 * (1.0 - a) * math.log(s1) - 2.0 * math.log(r)
        ca, cb = (1.0 + a) / a, (2.0 - a) / (1.0 - a)
        c = 2.0 * a * math.log(ca) + 2.0 * (1.0 - a) * math.log(cb) - math.log(2.0)
        v = max(math.log(ell / 4.0), ell - c)
        for _ in range(_GRADIENT_STEPS):
            y = math.exp(v)
            h = 2.0 * a * math.log1p(ca * y) + 2.0 * (1.0 - a) * math.log1p(cb * y)
            h -= math.log1p(2.0 * y)
            slope = (
                2.0 * a * ca / (1.0 + ca * y) + 2.0 * (1.0 - a) * cb / (1.0 + cb * y)
                - 2.0 / (1.0 + 2.0 * y)
            )  # fmt: skip
            step = (ell - h) / (y * slope)
            v += step
            if abs(step) <= 1e-13 * (1.0 + abs(v)):
                break
        q = math.exp(-v)
        out[2] = math.copysign(q / r, s2)
    else:
        out[2] = 0.0
    out[0] = -(a * q + 1.0 + a) / s0
    out[1] = -((1.0 - a) * q + 2.0 - a) / s1


@njit(**_OPTIONS)
def in_primal(s, a):
    if not (s[0] > 0 and s[1] > 0):
        return False
    return math.exp(2.0 * a * math.log(s[0]) + 2.0 * (1.0 - a) * math.log(s[1])) - s[2] * s[2] > 0


@njit(**_OPTIONS)
def in_dual(z, a):
    if not (z[0] > 0 and z[1] > 0):
        return False
    return _phi(z, a)[0] - z[2] * z[2] > 0


@njit(**_OPTIONS)
def central(a, out):
    out[0], out[1], out[2] = math.sqrt(1.0 + a), math.sqrt(2.0 - a), 0.0


# ---------------------------------------------------------------- projection
# The twin of `power.proj_pow` (Hien 2015; that module's docstring has the method: the
# root of ψ(r) = α log x(r) + (1−α) log y(r) − log r in the distance e to the nearer end,
# Newton on log e safeguarded by bisection), one block at a time, stopping once converged.
_TINY = np.finfo(np.float64).tiny
_NEWTON_STEPS = 30


@njit(**_OPTIONS)
def _positive_root(c0, q):
    """(w, √(c₀² + 4q)) for w = ½ (c₀ + √(c₀² + 4q)), without cancellation for c₀ < 0."""
    root = math.sqrt(c0 * c0 + 4.0 * q)
    value = 0.5 * (c0 + root) if c0 >= 0 else 2.0 * q / max(root - c0, _TINY)
    return max(value, _TINY), root


@njit(**_OPTIONS)
def _psi(x0, y0, r0, a, e, high):
    """(ψ, dψ/dlog e, x(r), y(r), r) at r = e (or r₀ − e with `high`)."""
    r = r0 - e if high else e
    prod = e * (r0 - e)
    x, root_x = _positive_root(x0, a * prod)
    y, root_y = _positive_root(y0, (1.0 - a) * prod)
    psi = a * math.log(x) + (1.0 - a) * math.log(y) - math.log(r)
    slope = r0 - 2.0 * r
    dr = a * a * slope / (max(root_x, _TINY) * x)
    dr += (1.0 - a) ** 2 * slope / (max(root_y, _TINY) * y) - 1.0 / r
    return psi, e * (-dr if high else dr), x, y, r


@njit(**_OPTIONS)
def _geometric(u, w, a):
    """u^a w^(1−a) for u, w ≥ 0."""
    if u <= 0 or w <= 0:
        return 0.0
    return math.exp(a * math.log(u) + (1.0 - a) * math.log(w))


@njit(**_OPTIONS)
def project(v, a, out):
    """out = Π_{K_a}(v) for one block v (3,)."""
    x0, y0, r0 = v[0], v[1], abs(v[2])
    tol = 1e-12 * (1.0 + max(abs(v[0]), abs(v[1]), r0))
    if x0 >= 0 and y0 >= 0 and _geometric(x0, y0, a) + tol >= r0:  # in K
        out[0], out[1], out[2] = v[0], v[1], v[2]
        return
    if x0 <= 0 and y0 <= 0 and _geometric(-x0 / a, -y0 / (1.0 - a), a) + tol >= r0:  # polar
        out[0], out[1], out[2] = 0.0, 0.0, 0.0
        return
    half = max(r0 / 2.0, _TINY)
    high = _psi(x0, y0, r0, a, half, False)[0] > 0  # the root in (r₀/2, r₀): from r₀
    sign = 1.0 if high else -1.0
    low_t, high_t = math.log(_TINY), math.log(half)
    t = high_t - 1.0
    for _ in range(_NEWTON_STEPS):
        psi, dpsi, _, _, _ = _psi(x0, y0, r0, a, math.exp(t), high)
        g, dg = sign * psi, sign * dpsi
        if g < 0:
            low_t = t
        else:
            high_t = t
        newton = t - g / dg if dg > 0 else t
        t_next = newton if dg > 0 and low_t <= newton <= high_t else (low_t + high_t) / 2.0
        if t_next == t:
            break
        t = t_next
    _, _, x, y, r = _psi(x0, y0, r0, a, math.exp(t), high)
    out[0], out[1], out[2] = x, y, math.copysign(r, v[2]) if v[2] != 0 else 0.0


@njit(**_OPTIONS)
def project_blocks(V, alphas, dual, out):
    """Π_{K_α}(v) (or Π_{K_α*}(v) = v + Π_{K_α}(−v) with `dual`) for blocks V (k, 3),
    exponents alphas (k,), into out (k, 3)."""
    w = np.empty(3)
    for i in range(V.shape[0]):
        if dual:
            w[0], w[1], w[2] = -V[i, 0], -V[i, 1], -V[i, 2]
            project(w, alphas[i], out[i])
            for j in range(3):
                out[i, j] += V[i, j]
        else:
            project(V[i], alphas[i], out[i])
