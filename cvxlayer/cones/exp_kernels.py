"""The exponential cone's barrier as compiled kernels (numba) for one 3-row block, the twin
of the interior-point part of `exp.py` (same formulas; its comment states them):
K = {s₁ > 0, s₁ exp(s₀/s₁) ≤ s₂}, f*(z) = −log ψ(z) − log(−z₀) − log z₂ with
ψ = z₁ − z₀ − z₀ log(−z₂/z₀). Every function takes the block's parameter `a` (unused here;
the power cone's exponent) so that both families have one signature
(`cvxlayer.cones.nonsymmetric_kernels`). Outputs are written into arrays passed in.
"""

from __future__ import annotations

import math

import numpy as np
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


# ---------------------------------------------------------------- projection
# The twin of `exp.proj_exp_primal_polar_reference` (Friberg 2021; that module's comments
# have the method: cheap candidates, then a bracketed root of h(ρ) by safeguarded Newton),
# one block at a time, each root-find stopping once converged.
_INF, _TINY, _ROOT_STEPS = 1e15, np.finfo(np.float64).tiny, 30


@njit(**_OPTIONS)
def _h(r, s, t, rho):
    """h(ρ) and h′(ρ)."""
    e_pos, e_neg = math.exp(rho), math.exp(-rho)
    quad = rho * (rho - 1.0) + 1.0
    f = ((rho - 1.0) * r + s) * e_pos - (r - rho * s) * e_neg - quad * t
    df = (rho * r + s) * e_pos + (r - (rho - 1.0) * s) * e_neg - (2.0 * rho - 1.0) * t
    return f, df


@njit(**_OPTIONS)
def _bracket(r, s, t, pdist, ddist):
    """Lower and upper bounds on the root ρ of h (Friberg 2021, §4)."""
    low, upr, base_low, base_upr = -_INF, _INF, -_INF, _INF
    Dp = math.sqrt(max(pdist * pdist - min(s, 0.0) ** 2, 0.0))
    Dd = math.sqrt(max(ddist * ddist - min(r, 0.0) ** 2, 0.0))
    root = math.sqrt(max(r * r + s * s - r * s, 0.0))
    safe_r = r if r != 0 else 1.0
    safe_s = s if s != 0 else 1.0
    if r > s:
        psi_p = (r - s + root) / safe_r
    else:
        den = r - s - root
        psi_p = -s / (den if den != 0 else -1.0)
    ppsi = ((psi_p - 1.0) * r + s) / (psi_p * (psi_p - 1.0) + 1.0)
    if s > r:
        psi_d = (r - root) / safe_s
    else:
        den = r + root
        psi_d = (r - s) / (den if den != 0 else 1.0)
    dpsi = (r - psi_d * s) / (psi_d * (psi_d - 1.0) + 1.0)
    if t > 0:
        low = max(low, math.log(max(t, _TINY) / max(ppsi, _TINY)))
    if t < 0:
        upr = min(upr, -math.log(max(-t, _TINY) / max(dpsi, _TINY)))
    if r > 0:
        base_low = 1.0 - s / safe_r
        low = max(low, base_low)
        tpu = max(min(Dd, Dp + t), 1e-12)
        pomega = math.exp(min(low, 700.0)) / (low * (low - 1.0) + 1.0)
        if low < 2:
            pomega = min(pomega, math.exp(2.0) / 3.0)
        upr = min(upr, max(low, base_low + tpu / safe_r / pomega))
    if s > 0:
        base_upr = r / safe_s
        upr = min(upr, base_upr)
        tdl = -max(min(Dp, Dd - t), 1e-12)
        domega = -math.exp(min(-upr, 700.0)) / (upr * (upr - 1.0) + 1.0)
        if upr > -1:
            domega = max(domega, -math.e / 3.0)
        low = max(low, min(upr, base_upr - tdl / safe_s / domega))
    low2 = min(max(min(low, upr), base_low), base_upr)
    upr2 = min(max(max(low, upr), base_low), base_upr)
    return low2, upr2


@njit(**_OPTIONS)
def _root(r, s, t, low, upr):
    """Safeguarded Newton on h over [low, upr] (a step leaving the bracket is replaced by
    0.05·x + 0.95·(the end it crossed)), until a step moves x by at most 1e-12 relative."""
    x = (low + upr) / 2.0
    for _ in range(_ROOT_STEPS):
        f, df = _h(r, s, t, x)
        if f < 0:
            low = x
        else:
            upr = x
        newton = x - f / df if df > 1e-13 else math.nan
        if not math.isfinite(newton):
            newton = (low + upr) / 2.0
        if newton >= upr:
            x_new = min(0.05 * x + 0.95 * upr, upr)
        elif newton <= low:
            x_new = max(0.05 * x + 0.95 * low, low)
        else:
            x_new = newton
        if f == 0:
            x_new = x
        if abs(x_new - x) <= 1e-12 * max(abs(x), 1.0):
            return x_new
        x = x_new
    return x


@njit(**_OPTIONS)
def _distance(a, b):
    return math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2 + (a[2] - b[2]) ** 2)


@njit(**_OPTIONS)
def project_primal_polar(v, tol, vp, vd):
    """vp = Π_K(v), vd = Π_{K°}(v) for one block v (3,) = (r, s, t)."""
    r, s, t = v[0], v[1], v[2]
    vp[0], vp[1], vp[2] = min(r, 0.0), 0.0, max(t, 0.0)
    pdist = _distance(v, vp)
    if s > 0:
        tp = max(t, s * math.exp(min(r / s, 700.0)))
        if tp - t < pdist:
            vp[0], vp[1], vp[2] = r, s, tp
            pdist = tp - t
    vd[0], vd[1], vd[2] = 0.0, min(s, 0.0), min(t, 0.0)
    ddist = _distance(v, vd)
    if r > 0:
        td = min(t, -r * math.exp(min(s / r - 1.0, 700.0)))
        if t - td < ddist:
            vd[0], vd[1], vd[2] = r, s, td
            ddist = t - td
    err = max(abs(vp[0] + vd[0] - r), abs(vp[1] + vd[1] - s), abs(vp[2] + vd[2] - t))
    dot = vp[0] * vd[0] + vp[1] * vd[1] + vp[2] * vd[2]
    if (s <= 0 and r <= 0) or min(pdist, ddist) <= tol or (err <= tol and dot <= tol):
        return
    low, upr = _bracket(r, s, t, pdist, ddist)
    rho = _root(r, s, t, low, upr)
    quad = rho * (rho - 1.0) + 1.0
    lin_p, e_p = (rho - 1.0) * r + s, math.exp(min(rho, 700.0))
    cand = np.array([rho * lin_p / quad, lin_p / quad, e_p * lin_p / quad])
    if lin_p > 0 and math.isfinite(e_p) and _distance(cand, v) <= pdist:
        vp[:] = cand
    lin_d, e_d = r - rho * s, math.exp(min(-rho, 700.0))
    cand[0], cand[1], cand[2] = lin_d / quad, (1.0 - rho) * lin_d / quad, -e_d * lin_d / quad
    if lin_d > 0 and math.isfinite(e_d) and _distance(cand, v) <= ddist:
        vd[:] = cand


@njit(**_OPTIONS)
def project_blocks(V, tol, P, D):
    """`project_primal_polar` for blocks V (k, 3) into P, D (k, 3)."""
    for i in range(V.shape[0]):
        project_primal_polar(V[i], tol, P[i], D[i])
