"""Triton kernel: (Π_K(v), Π_{K°}(v)) for exponential cones K, each program a block of cones.

Same algorithm and semantics as `cvxlayer.cones.exp.proj_exp_primal_polar_reference`
(Friberg 2021): the cheap heuristic projections first, then, where they do not settle the
answer, a bracketed and safeguarded Newton search for the root ρ of h. The kernel runs a
fixed number of Newton steps on every cone of its block (the reference stops when no
element moves any more), so results agree to rounding, and no host synchronization is
needed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_NEWTON_STEPS = 30
_BLOCK = 128


@triton.jit
def _h(r, s, t, rho):
    e_pos = tl.exp(rho)
    e_neg = tl.exp(-rho)
    quad = rho * (rho - 1) + 1
    f = ((rho - 1) * r + s) * e_pos - (r - rho * s) * e_neg - quad * t
    df = (rho * r + s) * e_pos + (r - (rho - 1) * s) * e_neg - (2 * rho - 1) * t
    return f, df


@triton.jit
def _exp_kernel(v_ptr, p_ptr, d_ptr, consts_ptr, count, STEPS: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < count
    # (tol, tiny) in the data's dtype: a Python float argument would arrive as float32,
    # where float64's smallest normal number is 0
    tol = tl.load(consts_ptr)
    tiny = tl.load(consts_ptr + 1)
    r = tl.load(v_ptr + 3 * idx, mask=mask, other=0.0)
    s = tl.load(v_ptr + 3 * idx + 1, mask=mask, other=0.0)
    t = tl.load(v_ptr + 3 * idx + 2, mask=mask, other=0.0)
    zero = r * 0.0
    one = zero + 1.0

    # heuristic primal projection: (min(r, 0), 0, max(t, 0)) or the interior candidate
    p0, p1, p2 = tl.minimum(r, zero), zero, tl.maximum(t, zero)
    pdist = tl.sqrt((r - p0) * (r - p0) + (s - p1) * (s - p1) + (t - p2) * (t - p2))
    s_pos = tl.where(s > 0, s, one)
    tp = tl.maximum(t, s_pos * tl.exp(tl.minimum(r / s_pos, zero + 700.0)))
    interior_p = (s > 0) & (tp - t < pdist)
    p0 = tl.where(interior_p, r, p0)
    p1 = tl.where(interior_p, s, p1)
    p2 = tl.where(interior_p, tp, p2)
    pdist = tl.where(interior_p, tp - t, pdist)
    # heuristic polar projection
    d0, d1, d2 = zero, tl.minimum(s, zero), tl.minimum(t, zero)
    ddist = tl.sqrt((r - d0) * (r - d0) + (s - d1) * (s - d1) + (t - d2) * (t - d2))
    r_pos = tl.where(r > 0, r, one)
    td = tl.minimum(t, -r_pos * tl.exp(tl.minimum(s / r_pos - 1, zero + 700.0)))
    interior_d = (r > 0) & (t - td < ddist)
    d0 = tl.where(interior_d, r, d0)
    d1 = tl.where(interior_d, s, d1)
    d2 = tl.where(interior_d, td, d2)
    ddist = tl.where(interior_d, t - td, ddist)

    err = tl.maximum(tl.maximum(tl.abs(p0 + d0 - r), tl.abs(p1 + d1 - s)), tl.abs(p2 + d2 - t))
    done = ((s <= 0) & (r <= 0)) | (tl.minimum(pdist, ddist) <= tol)
    done = done | ((err <= tol) & (p0 * d0 + p1 * d1 + p2 * d2 <= tol))

    # bracket [low, upr] of the root ρ (Friberg 2021, §4)
    inf = zero + 1e15
    low = -inf
    upr = inf
    base_low = -inf
    base_upr = inf
    Dp = tl.sqrt(tl.maximum(pdist * pdist - tl.minimum(s, zero) * tl.minimum(s, zero), zero))
    Dd = tl.sqrt(tl.maximum(ddist * ddist - tl.minimum(r, zero) * tl.minimum(r, zero), zero))
    root = tl.sqrt(tl.maximum(r * r + s * s - r * s, zero))
    safe_r = tl.where(r != 0, r, one)
    safe_s = tl.where(s != 0, s, one)
    den_p = tl.where(r - s - root != 0, r - s - root, -one)
    psi_p = tl.where(r > s, (r - s + root) / safe_r, -s / den_p)
    ppsi = ((psi_p - 1) * r + s) / (psi_p * (psi_p - 1) + 1)
    den_d = tl.where(r + root != 0, r + root, one)
    psi_d = tl.where(s > r, (r - root) / safe_s, (r - s) / den_d)
    dpsi = (r - psi_d * s) / (psi_d * (psi_d - 1) + 1)
    low = tl.where(
        t > 0,
        tl.maximum(low, tl.log(tl.maximum(t, zero + tiny) / tl.maximum(ppsi, zero + tiny))),
        low,
    )
    upr = tl.where(
        t < 0,
        tl.minimum(upr, -tl.log(tl.maximum(-t, zero + tiny) / tl.maximum(dpsi, zero + tiny))),
        upr,
    )
    pos_r = r > 0
    base_low = tl.where(pos_r, 1 - s / safe_r, base_low)
    low = tl.where(pos_r, tl.maximum(low, base_low), low)
    tpu = tl.maximum(tl.minimum(Dd, Dp + t), zero + 1e-12)
    pomega = tl.exp(tl.minimum(low, zero + 700.0)) / (low * (low - 1) + 1)
    pomega = tl.where(low < 2, tl.minimum(pomega, zero + 2.4630186996435506), pomega)
    cur = tl.maximum(low, base_low + tpu / safe_r / pomega)
    upr = tl.where(pos_r, tl.minimum(upr, cur), upr)
    pos_s = s > 0
    base_upr = tl.where(pos_s, r / safe_s, base_upr)
    upr = tl.where(pos_s, tl.minimum(upr, base_upr), upr)
    tdl = -tl.maximum(tl.minimum(Dp, Dd - t), zero + 1e-12)
    domega = -tl.exp(tl.minimum(-upr, zero + 700.0)) / (upr * (upr - 1) + 1)
    domega = tl.where(upr > -1, tl.maximum(domega, zero - 0.9060939428196817), domega)
    cur = tl.minimum(upr, base_upr - tdl / safe_s / domega)
    low = tl.where(pos_s, tl.maximum(low, cur), low)
    low2 = tl.minimum(tl.maximum(tl.minimum(low, upr), base_low), base_upr)
    upr2 = tl.minimum(tl.maximum(tl.maximum(low, upr), base_low), base_upr)
    low = low2
    upr = upr2

    # safeguarded Newton on h over the bracket
    x = (low + upr) / 2
    for _ in range(STEPS):
        f, df = _h(r, s, t, x)
        low = tl.where(f < 0, x, low)
        upr = tl.where(f < 0, upr, x)
        good = df > 1e-13
        newton = x - f / tl.where(good, df, one)
        finite = (newton - newton) == 0  # false for inf and NaN
        newton = tl.where(finite & good, newton, (low + upr) / 2)
        x_new = tl.where(
            newton >= upr,
            tl.minimum(0.05 * x + 0.95 * upr, upr),
            tl.where(newton <= low, tl.maximum(0.05 * x + 0.95 * low, low), newton),
        )
        x = tl.where(f == 0, x, x_new)
    rho = x

    # candidates from ρ
    quad = rho * (rho - 1) + 1
    lin_p = (rho - 1) * r + s
    ep = tl.exp(tl.minimum(rho, zero + 700.0))
    c0, c1, c2 = rho * lin_p / quad, lin_p / quad, ep * lin_p / quad
    ok_p = (lin_p > 0) & ((ep - ep) == 0)
    lin_d = r - rho * s
    ed = tl.exp(tl.minimum(-rho, zero + 700.0))
    e0, e1, e2 = lin_d / quad, (1 - rho) * lin_d / quad, -ed * lin_d / quad
    ok_d = (lin_d > 0) & ((ed - ed) == 0)
    dist_p = tl.sqrt((c0 - r) * (c0 - r) + (c1 - s) * (c1 - s) + (c2 - t) * (c2 - t))
    dist_d = tl.sqrt((e0 - r) * (e0 - r) + (e1 - s) * (e1 - s) + (e2 - t) * (e2 - t))
    better_p = ~done & ok_p & (dist_p <= pdist)
    better_d = ~done & ok_d & (dist_d <= ddist)
    p0 = tl.where(better_p, c0, p0)
    p1 = tl.where(better_p, c1, p1)
    p2 = tl.where(better_p, c2, p2)
    d0 = tl.where(better_d, e0, d0)
    d1 = tl.where(better_d, e1, d1)
    d2 = tl.where(better_d, e2, d2)
    tl.store(p_ptr + 3 * idx, p0, mask=mask)
    tl.store(p_ptr + 3 * idx + 1, p1, mask=mask)
    tl.store(p_ptr + 3 * idx + 2, p2, mask=mask)
    tl.store(d_ptr + 3 * idx, d0, mask=mask)
    tl.store(d_ptr + 3 * idx + 1, d1, mask=mask)
    tl.store(d_ptr + 3 * idx + 2, d2, mask=mask)


def proj_exp_primal_polar(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Π_K(v), Π_{K°}(v)) for blocks v (..., 3) = (r, s, t)."""
    flat = v.reshape(-1, 3).contiguous()
    p, d = torch.empty_like(flat), torch.empty_like(flat)
    count = flat.shape[0]
    if count:
        tol = 1e-8 if v.dtype == torch.float64 else 1e-5
        consts = torch.tensor([tol, torch.finfo(v.dtype).tiny], dtype=v.dtype, device=v.device)
        grid = (triton.cdiv(count, _BLOCK),)
        _exp_kernel[grid](flat, p, d, consts, count, STEPS=_NEWTON_STEPS, BLOCK=_BLOCK)
    return p.reshape(v.shape), d.reshape(v.shape)
