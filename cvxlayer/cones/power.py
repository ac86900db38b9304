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

import torch

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


def proj_pow(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Π_{K_α}(v) for blocks v (..., 3)."""
    inside, polar = _regions(v, alpha)
    t, high = _root(v, alpha)
    boundary = _psi(v, alpha, torch.exp(t), high)[2]
    out = torch.where(polar.unsqueeze(-1), torch.zeros_like(v), boundary)
    return torch.where(inside.unsqueeze(-1), v, out)


def proj_pow_dual(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Π_{K_α*}(v) = v + Π_{K_α}(−v)."""
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
