"""The second-order cone's interior-point operations as compiled kernels (numba), the twin
of the torch ones in `soc.py`, for the compiled engine (`cvxlayer.solvers.ipm_compiled`).

Cone rows are one vector v (mc,) cut into blocks v[starts[k]:starts[k + 1]] = (v₀, v₁),
J = diag(1, −I), det v = vᵀJv. A block of one row is the nonnegative half-line (the orthant
R₊ⁿ is n such blocks): every formula below reduces to the orthant's there (W = √(s/z),
λ = √(sz), the step −λ/d), so the engine carries both families as one.

Nesterov–Todd scaling at interior (s, z), per block (Vandenberghe 2010, §4): s̄ = s/√det s,
z̄ = z/√det z, γ = √((1 + s̄ᵀz̄)/2), w̄ = (s̄ + J z̄)/(2γ), η = (det s / det z)^¼, W = η W̄
with W̄ the hyperbolic rotation taking e to w̄; W is symmetric and W z = W⁻¹ s = λ.

Pure functions of arrays; outputs are written into arrays passed in (no allocation).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_TINY = np.finfo(np.float64).tiny
_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}  # x/0: inf, no raise


@njit(**_OPTIONS)
def _det(v, a, b):
    """vᵀJv of block [a, b) as (v₀ − ‖v₁‖)(v₀ + ‖v₁‖), which keeps its digits at the
    boundary."""
    norm = 0.0
    for i in range(a + 1, b):
        norm += v[i] * v[i]
    norm = math.sqrt(norm)
    return (v[a] - norm) * (v[a] + norm)


@njit(**_OPTIONS)
def _rotate(w, v, out, a, b, sign):
    """out = W̄ v (sign +1) or W̄⁻¹ v (sign −1) on block [a, b), for the rotation with
    W̄ e = w: W̄ v = (w₀v₀ + w₁ᵀv₁, v₁ + (v₀ + w₁ᵀv₁/(1 + w₀)) w₁)."""
    dot = 0.0
    for i in range(a + 1, b):
        dot += w[i] * v[i]
    factor = sign * v[a] + dot / (1.0 + w[a])
    out[a] = w[a] * v[a] + sign * dot
    for i in range(a + 1, b):
        out[i] = v[i] + factor * w[i]


@njit(**_OPTIONS)
def unit(starts, e):
    """e: 1 on each block's first row, 0 elsewhere."""
    e[:] = 0.0
    for k in range(starts.size - 1):
        e[starts[k]] = 1.0


@njit(**_OPTIONS)
def degree(starts):
    """The barrier degree: one per block."""
    return starts.size - 1


@njit(**_OPTIONS)
def margin(starts, v):
    """The largest t with v − t e in every block's cone: min v₀ − ‖v₁‖ (inf without
    blocks)."""
    out = np.inf
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        norm = 0.0
        for i in range(a + 1, b):
            norm += v[i] * v[i]
        out = min(out, v[a] - math.sqrt(norm))
    return out


@njit(**_OPTIONS)
def scaling(starts, s, z, w, eta, lam):
    """Nesterov–Todd scaling at (s, z): w (mc,), η (blocks,), and λ = W z (mc,)."""
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        det_s, det_z = max(_det(s, a, b), _TINY), max(_det(z, a, b), _TINY)
        root_s, root_z = math.sqrt(det_s), math.sqrt(det_z)
        dot = 0.0
        for i in range(a, b):
            dot += (s[i] / root_s) * (z[i] / root_z)
        gamma = math.sqrt(max((1.0 + dot) / 2.0, _TINY))
        w[a] = (s[a] / root_s + z[a] / root_z) / (2.0 * gamma)
        for i in range(a + 1, b):
            w[i] = (s[i] / root_s - z[i] / root_z) / (2.0 * gamma)
        eta[k] = (det_s / det_z) ** 0.25
        _rotate(w, z, lam, a, b, 1.0)
        for i in range(a, b):
            lam[i] *= eta[k]


@njit(**_OPTIONS)
def apply_w(starts, w, eta, v, out, inverse):
    """out = W v, or W⁻¹ v with `inverse` (W = Wᵀ)."""
    sign = -1.0 if inverse else 1.0
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        _rotate(w, v, out, a, b, sign)
        factor = 1.0 / eta[k] if inverse else eta[k]
        for i in range(a, b):
            out[i] *= factor


@njit(**_OPTIONS)
def apply_h(starts, w, eta, v, out, inverse):
    """out = H v = WᵀW v = η²(2(wᵀv) w − J v), or H⁻¹ v = (2((Jw)ᵀv) Jw − J v)/η²."""
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        sign = -1.0 if inverse else 1.0
        dot = w[a] * v[a]
        for i in range(a + 1, b):
            dot += sign * w[i] * v[i]
        factor = 1.0 / (eta[k] * eta[k]) if inverse else eta[k] * eta[k]
        out[a] = factor * (2.0 * dot * w[a] - v[a])
        for i in range(a + 1, b):
            out[i] = factor * (2.0 * dot * sign * w[i] + v[i])


@njit(**_OPTIONS)
def divide(starts, lam, v, out):
    """out = λ \\ v, the x with λ ∘ x = v: x₀ = (λ₀v₀ − λ₁ᵀv₁)/det λ, x₁ = (v₁ − x₀λ₁)/λ₀."""
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        dot = lam[a] * v[a]
        for i in range(a + 1, b):
            dot -= lam[i] * v[i]
        x0 = dot / _det(lam, a, b)
        out[a] = x0
        for i in range(a + 1, b):
            out[i] = (v[i] - x0 * lam[i]) / lam[a]


@njit(**_OPTIONS)
def jordan(starts, u, v, out):
    """out = u ∘ v = (uᵀv, u₀v₁ + v₀u₁) per block."""
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        dot = 0.0
        for i in range(a, b):
            dot += u[i] * v[i]
        for i in range(a + 1, b):
            out[i] = u[a] * v[i] + v[a] * u[i]
        out[a] = dot


@njit(**_OPTIONS)
def step(starts, lam, d, scratch):
    """The largest α with λ + α d in every block's cone (inf: no limit): in the frame where
    λ̄ = λ/√det λ is e, ρ = W̄(λ̄)⁻¹ d / √det λ and α = 1/(‖ρ₁‖ − ρ₀) where that is
    positive. scratch (mc,) receives λ̄."""
    alpha = np.inf
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        root = math.sqrt(max(_det(lam, a, b), _TINY))
        for i in range(a, b):
            scratch[i] = lam[i] / root
        # ρ = W̄(λ̄)⁻¹ d / root, inline (ρ₁ is only needed through its norm)
        dot = 0.0
        for i in range(a + 1, b):
            dot += scratch[i] * d[i]
        factor = -d[a] + dot / (1.0 + scratch[a])
        rho0 = (scratch[a] * d[a] - dot) / root
        norm = 0.0
        for i in range(a + 1, b):
            r = (d[i] + factor * scratch[i]) / root
            norm += r * r
        excess = math.sqrt(norm) - rho0
        if excess > 0:
            alpha = min(alpha, 1.0 / excess)
    return alpha


@njit(**_OPTIONS)
def clip_scaling(starts, s, z, w, eta, delta):
    """The backward's scaling (in place) from the Nesterov–Todd one at (s, z): H's
    eigenvalues are η² e^{±2β} along (1, ±w₁/‖w₁‖) and η² on the rest (w₀ = cosh β,
    ‖w₁‖ = sinh β). The middle one becomes s₀/z₀, the ratio in which the linearized
    complementarity z ∘ ds + s ∘ dz = 0 couples those directions (equal to η² on the central
    path, and the right limit off it: NT's η² is not, and moved gradients by up to 40% at
    an interior-point solution that ended off-center); then the spectrum is clipped into
    [1/δ, δ] (η² first, then β). Near a solution H spans μ to 1/μ; the clipped one moves the
    solutions of systems with it by O(1/δ) relative (an orthant row with s/z < 1/δ counts
    as exactly active, one above δ as exactly inactive)."""
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        eta2 = eta[k] * eta[k] if b - a == 1 else s[a] / z[a]
        eta2 = min(max(eta2, 1.0 / delta), delta)
        eta[k] = math.sqrt(eta2)
        norm = 0.0
        for i in range(a + 1, b):
            norm += w[i] * w[i]
        norm = math.sqrt(norm)
        beta, beta_max = math.asinh(norm), 0.5 * math.log(min(delta / eta2, delta * eta2))
        if beta > beta_max:
            shrink = math.sinh(beta_max) / norm
            for i in range(a + 1, b):
                w[i] *= shrink
            w[a] = math.cosh(beta_max)


@njit(**_OPTIONS)
def projection_jacobian(starts, v, out):
    """DΠ at v of each block (`soc.d_soc`; the cone is self-dual, so it is also DΠ_{K*})
    into out's diagonal blocks, zero on entry: I inside, 0 in the polar cone,
    else ½[[1, x̄ᵀ], [x̄, (1 + t/‖x‖) I − (t/‖x‖) x̄x̄ᵀ]] with (t, x) = v, x̄ = x/‖x‖. A block of
    one row is the half-line (`nonneg.d_nonneg`): 1 where v > 0, else 0."""
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        t = v[a]
        if b - a == 1:
            out[a, a] = 1.0 if t > 0 else 0.0
            continue
        norm = 0.0
        for i in range(a + 1, b):
            norm += v[i] * v[i]
        norm = math.sqrt(norm)
        if norm <= t:
            for i in range(a, b):
                out[i, i] = 1.0
        elif norm > -t:  # else the polar cone: 0
            ratio = t / norm
            out[a, a] = 0.5
            for i in range(a + 1, b):
                out[a, i] = out[i, a] = 0.5 * v[i] / norm
                for j in range(a + 1, b):
                    out[i, j] = -0.5 * ratio * v[i] * v[j] / (norm * norm)
                out[i, i] += 0.5 * (1.0 + ratio)


@njit(**_OPTIONS)
def project(starts, v, out):
    """out = Π(v) per block (self-dual, so also Π onto the dual cone): v inside, 0 in the
    polar cone, else ((t + ‖x‖)/2)(1, x/‖x‖) for (t, x) = v; max(v, 0) on one-row blocks."""
    for k in range(starts.size - 1):
        a, b = starts[k], starts[k + 1]
        t = v[a]
        norm = 0.0
        for i in range(a + 1, b):
            norm += v[i] * v[i]
        norm = math.sqrt(norm)
        if norm <= t:
            out[a:b] = v[a:b]
        elif norm <= -t:
            out[a:b] = 0.0
        else:
            half = (t + norm) / 2.0
            out[a] = half
            for i in range(a + 1, b):
                out[i] = half * v[i] / norm
