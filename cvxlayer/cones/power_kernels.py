"""The 3-d power cone's barrier as compiled kernels (numba) for one 3-row block with
exponent a, the twin of the interior-point part of `power.py` (same formulas; its comment
states them): f*(z) = −log ψ(z) − (1−a) log z₀ − a log z₁ with ψ = φ − z₂²,
φ = (z₀/a)^{2a} (z₁/(1−a))^{2(1−a)}. Signatures as `cvxlayer.cones.exp_kernels`.
"""

from __future__ import annotations

import math

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
