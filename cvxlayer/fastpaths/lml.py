"""LML (thesis ch. 6): the limited multi-label projection and its closed-form relatives.

    y* = argmin_{0 ≤ y ≤ 1} −xᵀy − H_b(y)  s.t.  1ᵀy = k,     H_b(y) = −Σ y log y + (1−y) log(1−y)

Stationarity gives y = σ(x + ν) with the scalar dual ν the root of the increasing function
g(ν) = Σᵢ σ(xᵢ + ν) − k (thesis eq. 6.9-6.10). We find it per batch element with a
safeguarded Newton iteration inside a bracket that always holds the root:

    ν ∈ [logit(k/n) − max x, logit(k/n) − min x]

(at the ends every σ(xᵢ + ν) is ≤ k/n, resp. ≥ k/n), starting between the k-th and the
(k+1)-th largest entries of x; a Newton step that leaves the bracket is replaced by
bisection, so the iteration cannot diverge for any x (d up to 10⁵, |x| large).

Backward, analytic (no linear solve over d): with s = y(1 − y), the implicit function
theorem on Σσ(x + ν) = k gives dν = (dk − sᵀdx)/1ᵀs, so

    ∂ℓ/∂x = s∘g − s (sᵀg)/(1ᵀs),     ∂ℓ/∂k = sᵀg/(1ᵀs),       g = ∂ℓ/∂y.
"""

from __future__ import annotations

import torch

_MAX_ITERS = 100
_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _dual_root(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B,) root ν of Σσ(x + ν) = k for x (B, d), k (B,) with 0 < k < d."""
    d = x.shape[1]
    logit = torch.log(k / (d - k))
    lo = logit - x.amax(1)
    hi = logit - x.amin(1)
    idx = k.floor().long().clamp(1, d - 1)
    ranked = x.topk(int(idx.max()) + 1, dim=1).values  # descending
    between = ranked.gather(1, (idx - 1).unsqueeze(1)) + ranked.gather(1, idx.unsqueeze(1))
    nu = (-0.5 * between.squeeze(1)).clamp(lo, hi)
    tol = _TOL[x.dtype] * torch.clamp(k, min=1.0)
    for _ in range(_MAX_ITERS):
        y = torch.sigmoid(x + nu.unsqueeze(1))
        g = y.sum(1) - k
        slope = (y * (1 - y)).sum(1)
        if bool((g.abs() <= tol).all()):
            break
        lo = torch.where(g < 0, nu, lo)
        hi = torch.where(g > 0, nu, hi)
        newton = nu - g / slope.clamp(min=torch.finfo(x.dtype).tiny)
        inside = (newton > lo) & (newton < hi)
        step = torch.where(inside, newton, 0.5 * (lo + hi))
        nu = torch.where(g.abs() <= tol, nu, step)
    return nu


class _LML(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, k):
        nu = _dual_root(x, k)
        y = torch.sigmoid(x + nu.unsqueeze(1))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        s = y * (1 - y)
        total = s.sum(1, keepdim=True).clamp(min=torch.finfo(y.dtype).tiny)
        ratio = (s * g).sum(1, keepdim=True) / total
        return s * g - s * ratio, ratio.squeeze(1)


def lml(x: torch.Tensor, k: float | torch.Tensor) -> torch.Tensor:
    """The LML projection y* = argmin_{0<y<1, 1ᵀy=k} −xᵀy − H_b(y), differentiable.

    Args:
        x: (d,) or (B, d) scores, float32 or float64, any device.
        k: the budget, a number or a (B,) / scalar tensor with 0 < k < d (gradients flow to
            a tensor k as well).

    Returns:
        y with the shape of x: y = σ(x + ν*) with ν* chosen so that Σy = k.

    Raises:
        ValueError: k outside (0, d), a non-floating or non-finite x.
    """
    if not (torch.is_tensor(x) and x.is_floating_point()):
        raise ValueError("x must be a floating-point tensor")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf")
    unbatched = x.dim() == 1
    xb = x.unsqueeze(0) if unbatched else x
    if xb.dim() != 2:
        raise ValueError(f"x must be (d,) or (B, d), got shape {tuple(x.shape)}")
    d = xb.shape[1]
    kb = torch.as_tensor(k, dtype=xb.dtype, device=xb.device).expand(xb.shape[0])
    if not bool(((kb > 0) & (kb < d)).all()):
        raise ValueError(f"k must satisfy 0 < k < d = {d}, got {k}")
    y = _LML.apply(xb, kb)
    return y.squeeze(0) if unbatched else y
