"""The exponential cone's barrier as compiled kernels (numba) for one 3-row block, the twin
of the interior-point part of `exp.py` (same formulas; its comment states them):
K = {s₁ > 0, s₁ exp(s₀/s₁) ≤ s₂}, f*(z) = −log ψ(z) − log(−z₀) − log z₂ with
ψ = z₁ − z₀ − z₀ log(−z₂/z₀). Every function takes the block's parameter `a` (unused here;
the power cone's exponent) so that both families have one signature
(`cvxlayer.cones.nonsymmetric_kernels`). Outputs are written into arrays passed in.
"""

from __future__ import annotations

import math

from numba import njit

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}
_CENTRAL = (-1.051383945322714, 0.556409619469370, 1.258967884768947)  # −∇f*(p) = p
_OMEGA_STEPS = 5


@njit(**_OPTIONS)
def weights(a, out):
    """c of the dual barrier's log terms."""
    out[0], out[1], out[2] = 1.0, 0.0, 1.0


@njit(**_OPTIONS)
def dual_parts(z, a, grad, hess):
    """ψ(z), returned; ∇ψ (3,) and ∇²ψ (3, 3) written."""
    z0, z1, z2 = z[0], z[1], z[2]
    log_ratio = math.log(-z2 / z0)
    grad[0], grad[1], grad[2] = -log_ratio, 1.0, -z0 / z2
    hess[:] = 0.0
    hess[0, 0], hess[0, 2], hess[2, 0] = 1.0 / z0, -1.0 / z2, -1.0 / z2
    hess[2, 2] = z0 / (z2 * z2)
    return z1 - z0 - z0 * log_ratio


@njit(**_OPTIONS)
def dual_third(z, a, u, v, out):
    """∇³ψ(z)[u, v] (3,)."""
    z0, z2 = z[0], z[2]
    out[0] = -u[0] * v[0] / (z0 * z0) + u[2] * v[2] / (z2 * z2)
    out[1] = 0.0
    out[2] = (u[0] * v[2] + u[2] * v[0]) / (z2 * z2) - 2.0 * z0 * u[2] * v[2] / (z2 * z2 * z2)


@njit(**_OPTIONS)
def _wright_omega(x):
    """ω with ω + log ω = x, for x ≥ 1 (as `exp.wright_omega`)."""
    w = 1.0 + (x - 1.0) / 2.0 if x < 1.0 + math.pi else x - math.log(max(x, 1.0))
    for _ in range(_OMEGA_STEPS):
        w -= (w + math.log(w) - x) / (1.0 + 1.0 / w)
    return w


@njit(**_OPTIONS)
def primal_gradient(s, a, out):
    """∇f(s) of the primal barrier (3,)."""
    s0, s1, s2 = s[0], s[1], s[2]
    w = _wright_omega(1.0 - s0 / s1 - math.log(s1 / s2))
    g0 = 1.0 / ((w - 1.0) * s1)
    out[0] = g0
    out[1] = g0 + g0 * math.log(w * s1 / s2) - 1.0 / s1
    out[2] = w / ((1.0 - w) * s2)


@njit(**_OPTIONS)
def in_primal(s, a):
    return s[1] > 0 and s[2] > 0 and s[1] * math.log(s[2] / s[1]) - s[0] > 0


@njit(**_OPTIONS)
def in_dual(z, a):
    return z[0] < 0 and z[2] > 0 and z[1] - z[0] - z[0] * math.log(-z[2] / z[0]) > 0


@njit(**_OPTIONS)
def central(a, out):
    out[0], out[1], out[2] = _CENTRAL
