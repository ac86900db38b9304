"""The 3-d power cone K_α = {(x, y, z) : x^α y^(1−α) ≥ |z|, x, y ≥ 0}, 0 < α < 1, batched.

Its dual is K_α* = {(u, v, w) : (u/α)^α (v/(1−α))^(1−α) ≥ |w|}, and Π_{K*}(v) = v + Π_K(−v).

Projection of (x₀, y₀, z₀), r₀ = |z₀| (Hien 2015, the method SCS uses): v itself when it is in
K, 0 when −v ∈ K* (the polar); otherwise the projection is (x(r), y(r), sign(z₀) r) with

    x(r) = ½ (x₀ + √(x₀² + 4α r (r₀ − r))),   y(r) = ½ (y₀ + √(y₀² + 4(1−α) r (r₀ − r)))

and r ∈ (0, r₀) the root of ψ(r) = α log x(r) + (1−α) log y(r) − log r (ψ > 0 near 0, < 0
near r₀ outside K ∪ K°).

Accuracy: the root can sit extremely close to 0 or to r₀ (projections onto the cone's edges
x = 0 or y = 0, where ψ is steep in r). So the unknown is the distance e to the nearer end,
r = e or r₀ − r = e, with e ∈ (0, r₀/2] (the side is the sign of ψ(r₀/2)), and
r(r₀ − r) = e(r₀ − e) is formed from e itself: both r and r₀ − r keep full relative
precision. Newton's method runs on t = log e, where ψ is close to linear near the ends,
safeguarded by bisection on a bracket in t, for all cones at once and a fixed number of
steps (no host synchronization). The derivative is the implicit-function one, taken through
one Newton step at the root (exact value, dt/dv = −∂ψ/∂v / ψ′).

Shapes: blocks v (..., 3) and exponents α broadcastable to v[..., 0].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cvxlayer.cones.nonsymmetric import Family

_NEWTON_STEPS = 30


def _floor(t: torch.Tensor) -> float:
    """Smallest positive normal number of t's dtype: keeps x(r), y(r) > 0 inside logarithms."""
    return torch.finfo(t.dtype).tiny


def _positive_root(c0: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w = ½ (c₀ + √(c₀² + 4q)) (the positive root of w² − c₀w − q, q ≥ 0), without
    cancellation when c₀ < 0 (then w = 2q / (√· − c₀)), and √(c₀² + 4q) = 2w − c₀."""
    root = torch.sqrt(c0 * c0 + 4 * q)
    value = torch.where(c0 >= 0, 0.5 * (c0 + root), 2 * q / (root - c0).clamp(min=_floor(q)))
    return value.clamp(min=_floor(value)), root


def _psi(v: torch.Tensor, alpha: torch.Tensor, e: torch.Tensor, high: torch.Tensor):
    """ψ at r = e (low side) or r = r₀ − e (`high`), its derivative dψ/dlog e, and the
    boundary point (x(r), y(r), sign(z₀) r)."""
    x0, y0, r0 = v[..., 0], v[..., 1], v[..., 2].abs()
    other = r0 - e
    r = torch.where(high, other, e)
    prod = e * other  # r (r₀ − r), from e whichever side
    x, root_x = _positive_root(x0, alpha * prod)
    y, root_y = _positive_root(y0, (1 - alpha) * prod)
    psi = alpha * torch.log(x) + (1 - alpha) * torch.log(y) - torch.log(r)
    # x′(r) = α (r₀ − 2r) / √(x₀² + 4α r (r₀ − r)), likewise y′; dr/de = ±1
    slope = r0 - 2 * r
    dr = alpha**2 * slope / (root_x.clamp(min=_floor(x)) * x)
    dr = dr + (1 - alpha) ** 2 * slope / (root_y.clamp(min=_floor(y)) * y) - 1 / r
    dpsi = e * torch.where(high, -dr, dr)
    point = torch.stack([x, y, torch.sign(v[..., 2]) * r], -1)
    return psi, dpsi, point


def _regions(v: torch.Tensor, alpha: torch.Tensor):
    """Masks (in K, in the polar K° = −K*) of blocks v (..., 3)."""
    x0, y0, r0 = v[..., 0], v[..., 1], v[..., 2].abs()
    tol = 1e-12 * (1 + v.abs().amax(-1))
    geo = torch.exp(alpha * torch.log(x0.clamp(min=0)) + (1 - alpha) * torch.log(y0.clamp(min=0)))
    inside = (x0 >= 0) & (y0 >= 0) & (geo + tol >= r0)
    xn, yn = (-x0).clamp(min=0), (-y0).clamp(min=0)
    geo_dual = torch.exp(alpha * torch.log(xn / alpha) + (1 - alpha) * torch.log(yn / (1 - alpha)))
    polar = (x0 <= 0) & (y0 <= 0) & (geo_dual + tol >= r0)
    return inside, polar


def _root(v: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log e, high) at the root of ψ for blocks outside K ∪ K° (module docstring)."""
    half = v[..., 2].abs() / 2
    floor = torch.full_like(half, _floor(half))
    half = half.clamp(min=floor)
    psi_half = _psi(v, alpha, half, torch.zeros_like(half, dtype=torch.bool))[0]
    high = psi_half > 0  # the root lies in (r₀/2, r₀): measure it from r₀
    sign = torch.where(high, 1.0, -1.0).to(v.dtype)  # sign·ψ increases with t, < 0 at t_lo
    low_t, high_t = torch.log(floor), torch.log(half)
    t = high_t - 1
    for _ in range(_NEWTON_STEPS):
        psi, dpsi, _ = _psi(v, alpha, torch.exp(t), high)
        g, dg = sign * psi, sign * dpsi
        low_t = torch.where(g < 0, t, low_t)
        high_t = torch.where(g < 0, high_t, t)
        newton = t - g / torch.where(dg > 0, dg, torch.ones_like(dg))
        ok = (dg > 0) & (newton >= low_t) & (newton <= high_t)
        t = torch.where(ok, newton, (low_t + high_t) / 2)
    return t, high


def _boundary_point(v: torch.Tensor, alpha: torch.Tensor, t_root, high) -> torch.Tensor:
    """The projection onto the curved boundary after one Newton step in t from the root, as
    a function of v (for its implicit derivative)."""
    psi, dpsi, _ = _psi(v, alpha, torch.exp(t_root), high)
    return _psi(v, alpha, torch.exp(t_root - psi / dpsi), high)[2]


def _compiled(v: torch.Tensor, alpha: torch.Tensor, dual: bool) -> torch.Tensor | None:
    """The projection by its compiled twin (`power_kernels.project_blocks`, per block, each
    stopping once converged: this module's fixed-step batch costs ~20 ms per 5000 cones on
    a CPU) for float64 CPU tensors outside autograd; None elsewhere, or where numba cannot
    load."""
    if v.device.type != "cpu" or v.dtype != torch.float64 or v.requires_grad:
        return None
    try:
        from cvxlayer.cones import power_kernels
    except Exception:  # numba unusable here: the torch code below
        return None
    flat = v.detach().reshape(-1, 3).contiguous().numpy()
    a = torch.broadcast_to(alpha.to(v.dtype), v.shape[:-1]).reshape(-1).contiguous().numpy()
    out = np.empty_like(flat)
    power_kernels.project_blocks(flat, a, dual, out)
    return torch.from_numpy(out).reshape(v.shape)


def proj_pow(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Π_{K_α}(v) for blocks v (..., 3)."""
    compiled = _compiled(v, alpha, dual=False)
    if compiled is not None:
        return compiled
    inside, polar = _regions(v, alpha)
    t, high = _root(v, alpha)
    boundary = _psi(v, alpha, torch.exp(t), high)[2]
    out = torch.where(polar.unsqueeze(-1), torch.zeros_like(v), boundary)
    return torch.where(inside.unsqueeze(-1), v, out)


def proj_pow_dual(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Π_{K_α*}(v) = v + Π_{K_α}(−v)."""
    compiled = _compiled(v, alpha, dual=True)
    if compiled is not None:
        return compiled
    return v + proj_pow(-v, alpha)


def d_pow(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """DΠ_{K_α}(v), (..., 3, 3): I inside K, 0 in the polar, the implicit derivative of the
    boundary point elsewhere."""
    flat = v.reshape(-1, 3)
    a = torch.broadcast_to(alpha, v.shape[:-1]).reshape(-1)
    inside, polar = _regions(flat, a)
    jac = torch.zeros(flat.shape[0], 3, 3, dtype=v.dtype, device=v.device)
    jac[inside] = torch.eye(3, dtype=v.dtype, device=v.device)
    curved = ~inside & ~polar
    if bool(curved.any()):
        vc, ac = flat[curved], a[curved]
        t, high = _root(vc, ac)
        jac[curved] = torch.func.vmap(torch.func.jacrev(_boundary_point))(vc, ac, t, high)
    return jac.reshape(*v.shape, 3)


def d_pow_dual(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """DΠ_{K*}(v) = I − DΠ_K(−v)."""
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye - d_pow(-v, alpha)


# ---------------------------------------------------------------- interior point
# Blocks (B, count, 3), exponents α (count,). The dual barrier is
# f*(z) = −log ψ(z) − (1−α) log z₀ − α log z₁ with ψ = φ − z₂², φ = (z₀/α)^{2α} (z₁/(1−α))^{2(1−α)}
# on K* = {z₀, z₁ > 0, ψ > 0}. With h = log φ: ∇φ = φ h′, ∇²φ = φ (h′h′ᵀ + diag h″),
# ∇³φ[u, v] = φ ((h′·u)(h′·v) h′ + (h′·v) h″∘u + (h′·u) h″∘v + (uᵀ diag(h″) v) h′ + h‴∘u∘v).
#
# Its conjugate's gradient g = ∇f(s): from −∇f*(−g) = s, with q = s₂g₂ ≥ 0 and t = φ/ψ at
# −g, s₀g₀ = −(αq + 1 + α), s₁g₁ = −((1−α)q + 2 − α), q = 2(t − 1); the remaining equation
# φ(t − 1) = t g₂² becomes, for y = 1/q,
#     h(y) = 2α log(1 + a y) + 2(1−α) log(1 + b y) − log(1 + 2y) = ℓ,
#     a = (1+α)/α, b = (2−α)/(1−α), ℓ = log(s₀^{2α} s₁^{2(1−α)} / s₂²) > 0,
# h increasing from 0 (h ≈ 4y) to ∞ (h ≈ log y + const): Newton in log y from those
# asymptotes.
_GRADIENT_STEPS = 30


class Barrier:
    """The power cones' barrier pieces (`cvxlayer.cones.nonsymmetric.Barrier`)."""

    def __init__(self, alpha: torch.Tensor, like: torch.Tensor) -> None:
        self.alpha = alpha.to(like.device, like.dtype)
        self.weights = torch.stack([1 - self.alpha, self.alpha, torch.zeros_like(self.alpha)], -1)

    def _phi(self, z):
        """(φ, h′, h″) at z, h′ and h″ on the first two coordinates."""
        a = self.alpha
        z0, z1 = z[..., 0], z[..., 1]
        phi = torch.exp(2 * a * torch.log(z0 / a) + 2 * (1 - a) * torch.log(z1 / (1 - a)))
        h1 = torch.stack([2 * a / z0, 2 * (1 - a) / z1], -1)
        h2 = torch.stack([-2 * a / (z0 * z0), -2 * (1 - a) / (z1 * z1)], -1)
        return phi, h1, h2

    def dual_parts(self, z):
        phi, h1, h2 = self._phi(z)
        z2 = z[..., 2]
        grad = torch.cat([phi.unsqueeze(-1) * h1, (-2 * z2).unsqueeze(-1)], -1)
        block = phi[..., None, None] * (h1.unsqueeze(-1) * h1.unsqueeze(-2) + torch.diag_embed(h2))
        hess = torch.zeros(*z.shape, 3, dtype=z.dtype, device=z.device)
        hess[..., :2, :2] = block
        hess[..., 2, 2] = -2
        return phi - z2 * z2, grad, hess

    def dual_third(self, z, u, v):
        phi, h1, h2 = self._phi(z)
        a = self.alpha
        h3 = torch.stack([4 * a / z[..., 0] ** 3, 4 * (1 - a) / z[..., 1] ** 3], -1)
        u2, v2 = u[..., :2], v[..., :2]
        hu, hv = (h1 * u2).sum(-1, keepdim=True), (h1 * v2).sum(-1, keepdim=True)
        uDv = (h2 * u2 * v2).sum(-1, keepdim=True)
        top = hu * hv * h1 + hv * h2 * u2 + hu * h2 * v2 + uDv * h1 + h3 * u2 * v2
        top = phi.unsqueeze(-1) * top
        return torch.cat([top, torch.zeros_like(top[..., :1])], -1)

    def primal_gradient(self, s):
        a = self.alpha
        s0, s1, s2 = s.unbind(-1)
        r = s2.abs()
        inside = r > 0  # s₂ = 0: g₂ = 0, q = 0
        # ℓ = log(s₀^{2α} s₁^{2(1−α)} / s₂²) > 0, and h(y) = ℓ (module comment) for y = 1/q
        ell = 2 * a * torch.log(s0) + 2 * (1 - a) * torch.log(s1) - 2 * torch.log(r)
        ell = torch.where(inside, ell, 1.0)
        ca, cb = (1 + a) / a, (2 - a) / (1 - a)
        # h ≈ 4y for small y, log y + c for large y: Newton in v = log y from there
        c = 2 * a * torch.log(ca) + 2 * (1 - a) * torch.log(cb) - math.log(2)
        v = torch.maximum(torch.log(ell / 4), ell - c)
        for k in range(_GRADIENT_STEPS):
            y = torch.exp(v)
            h = 2 * a * torch.log1p(ca * y) + 2 * (1 - a) * torch.log1p(cb * y)
            h = h - torch.log1p(2 * y)
            slope = 2 * a * ca / (1 + ca * y) + 2 * (1 - a) * cb / (1 + cb * y) - 2 / (1 + 2 * y)
            step = (ell - h) / (y * slope)
            v = v + step
            if k % 2 == 1 and not bool((step.abs() > 1e-13 * (1 + v.abs())).any()):
                break
        q = torch.where(inside, torch.exp(-v), 0.0)
        g2 = torch.where(inside, torch.sign(s2) * q / torch.where(inside, r, 1.0), 0.0)
        g0 = -(a * q + 1 + a) / s0
        g1 = -((1 - a) * q + 2 - a) / s1
        return torch.stack([g0, g1, g2], -1)

    def in_primal(self, s):
        a = self.alpha.unsqueeze(-1) if s.dim() == 4 else self.alpha
        s0, s1, s2 = s.unbind(-1)
        log_geo = 2 * a * torch.log(s0) + 2 * (1 - a) * torch.log(s1)
        return (s0 > 0) & (s1 > 0) & (torch.exp(log_geo) - s2 * s2 > 0)

    def in_dual(self, z):
        a = self.alpha.unsqueeze(-1) if z.dim() == 4 else self.alpha
        z0, z1, z2 = z.unbind(-1)
        log_geo = 2 * a * torch.log(z0 / a) + 2 * (1 - a) * torch.log(z1 / (1 - a))
        return (z0 > 0) & (z1 > 0) & (torch.exp(log_geo) - z2 * z2 > 0)

    def central(self, like):
        a = self.alpha
        point = torch.stack([torch.sqrt(1 + a), torch.sqrt(2 - a), torch.zeros_like(a)], -1)
        return point.expand_as(like).clone()


def interior(group, like: torch.Tensor) -> Family:
    """The family's handle for the interior-point engine."""
    return Family(Barrier(group.alpha, like))
