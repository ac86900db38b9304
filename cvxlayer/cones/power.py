"""The 3-d power cone K_α = {(x, y, z) : x^α y^(1−α) ≥ |z|, x, y ≥ 0}, 0 < α < 1, batched.

Its dual is K_α* = {(u, v, w) : (u/α)^α (v/(1−α))^(1−α) ≥ |w|}, and Π_{K*}(v) = v + Π_K(−v).

Projection of (x₀, y₀, z₀), r₀ = |z₀| (Hien 2015, the method SCS uses): v itself when it is in
K, 0 when −v ∈ K* (the polar); otherwise the projection is (x(r), y(r), sign(z₀) r) with

    x(r) = ½ (x₀ + √(x₀² + 4α r (r₀ − r))),   y(r) = ½ (y₀ + √(y₀² + 4(1−α) r (r₀ − r)))

and r ∈ (0, r₀) the root of φ(r) = x(r)^α y(r)^(1−α) − r (φ(0) ≥ 0 ≥ φ(r₀) outside K ∪ K°).
The root is found by Newton's method safeguarded by bisection on that bracket, for all cones
at once; the derivative is the implicit-function one, taken through one Newton step at the
root (exact value, dr/dv = −∂φ/∂v / φ′).

Shapes: blocks v (..., 3) and exponents α broadcastable to v[..., 0].
"""

from __future__ import annotations

import torch

_NEWTON_STEPS = 40


def _floor(t: torch.Tensor) -> float:
    """Smallest positive normal number of t's dtype: keeps x(r), y(r) > 0 inside logarithms."""
    return torch.finfo(t.dtype).tiny


def _positive_root(c0: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """½ (c₀ + √(c₀² + 4q)), q ≥ 0, without cancellation when c₀ < 0 (then = 2q / (√· − c₀))."""
    root = torch.sqrt(c0 * c0 + 4 * q)
    value = torch.where(c0 >= 0, 0.5 * (c0 + root), 2 * q / (root - c0).clamp(min=_floor(q)))
    return value.clamp(min=_floor(value))


def _xy(v: torch.Tensor, alpha: torch.Tensor, r: torch.Tensor):
    x0, y0, r0 = v[..., 0], v[..., 1], v[..., 2].abs()
    prod = r * (r0 - r)
    return _positive_root(x0, alpha * prod), _positive_root(y0, (1 - alpha) * prod)


def _phi(v: torch.Tensor, alpha: torch.Tensor, r: torch.Tensor):
    """φ(r) and φ′(r) (the latter from dx/dr = α(r₀ − 2r)/(2x − x₀), likewise for y)."""
    x0, y0, r0 = v[..., 0], v[..., 1], v[..., 2].abs()
    x, y = _xy(v, alpha, r)
    mean = torch.exp(alpha * torch.log(x) + (1 - alpha) * torch.log(y))
    dx = alpha * (r0 - 2 * r) / (2 * x - x0).clamp(min=_floor(x))
    dy = (1 - alpha) * (r0 - 2 * r) / (2 * y - y0).clamp(min=_floor(y))
    return mean - r, mean * (alpha * dx / x + (1 - alpha) * dy / y) - 1


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


def _root(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """r ∈ [0, r₀] with φ(r) = 0 (blocks outside K ∪ K°), fixed number of guarded steps."""
    r0 = v[..., 2].abs()
    low, high = torch.zeros_like(r0), r0.clone()
    r = r0 / 2
    for _ in range(_NEWTON_STEPS):
        f, df = _phi(v, alpha, r)
        low = torch.where(f > 0, r, low)
        high = torch.where(f > 0, high, r)
        newton = r - f / torch.where(df < 0, df, -torch.ones_like(df))
        ok = (df < 0) & (newton > low) & (newton < high)
        r = torch.where(ok, newton, (low + high) / 2)
    return r


def _boundary_point(v: torch.Tensor, alpha: torch.Tensor, r_root: torch.Tensor) -> torch.Tensor:
    """(x(r), y(r), sign(z₀) r) after one Newton step from the root (a function of v)."""
    f, df = _phi(v, alpha, r_root)
    r = r_root - f / df
    x, y = _xy(v, alpha, r)
    return torch.stack([x, y, torch.sign(v[..., 2]) * r], -1)


def proj_pow(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Π_{K_α}(v) for blocks v (..., 3)."""
    inside, polar = _regions(v, alpha)
    r = _root(v, alpha)
    x, y = _xy(v, alpha, r)
    boundary = torch.stack([x, y, torch.sign(v[..., 2]) * r], -1)
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
        jac[curved] = torch.func.vmap(torch.func.jacrev(_boundary_point))(vc, ac, _root(vc, ac))
    return jac.reshape(*v.shape, 3)


def d_pow_dual(v: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """DΠ_{K*}(v) = I − DΠ_K(−v)."""
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye - d_pow(-v, alpha)
