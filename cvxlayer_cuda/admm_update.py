"""Triton kernel: the fused per-iteration vector update of the "torch" mode's ADMM.

Same semantics as `cvxlayer.solvers.admm_update.admm_update_reference` (its torch reference);
see that function for the math. One program per batch element makes two passes over its
rows: weighted dot products (for the scalar root τ̃), then ũ, 2ũ − v and the elementwise
projections, so an iteration's vector work is one launch instead of about twenty.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _update_kernel(
    p_ptr, v_ptr, g_ptr, w_ptr, kind_ptr, ut_ptr, u_ptr, size, first, BLOCK: tl.constexpr
):
    row = tl.program_id(0)
    body = row * size  # p, g, w: (B, size); v, ũ, u: (B, size + 1)
    full = row * (size + 1)
    eta = tl.load(v_ptr + full + size)
    zero = eta * 0.0  # accumulators in the data's precision (a plain 0.0 is float32)
    s_gg = zero
    s_vg = zero
    s_pg = zero
    s_pp = zero
    s_pv = zero
    for start in range(0, size, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < size
        p = tl.load(p_ptr + body + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + body + offs, mask=mask, other=0.0)
        w = tl.load(w_ptr + body + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + full + offs, mask=mask, other=0.0)
        s_gg += tl.sum(w * g * g, axis=0)
        s_vg += tl.sum(w * v * g, axis=0)
        s_pg += tl.sum(w * p * g, axis=0)
        s_pp += tl.sum(w * p * p, axis=0)
        s_pv += tl.sum(w * p * v, axis=0)
    a = 1.0 + s_gg
    b = s_vg - 2.0 * s_pg - eta
    c = s_pp - s_pv
    tau = (-b + tl.sqrt(tl.maximum(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
    tau = tl.where(first != 0, 1.0, tau)
    for start in range(0, size, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < size
        p = tl.load(p_ptr + body + offs, mask=mask, other=0.0)
        g = tl.load(g_ptr + body + offs, mask=mask, other=0.0)
        v = tl.load(v_ptr + full + offs, mask=mask, other=0.0)
        kind = tl.load(kind_ptr + offs, mask=mask, other=0)
        ut = p - tau * g
        z = 2.0 * ut - v
        u = tl.where(kind == 1, tl.maximum(z, 0.0), z)
        tl.store(ut_ptr + full + offs, ut, mask=mask)
        tl.store(u_ptr + full + offs, u, mask=mask)
    u_tau = tl.where(first != 0, 1.0, tl.maximum(2.0 * tau - eta, 0.0))
    tl.store(ut_ptr + full + size, tau)
    tl.store(u_ptr + full + size, u_tau)


def admm_update(
    p: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    weights: torch.Tensor,
    kinds: torch.Tensor,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ũ, u) of shape (B, N + 1) from p, g, weights (B, N), v (B, N + 1), kinds (N,) int8."""
    B, size = p.shape
    p, v, g, weights = (t.contiguous() for t in (p, v, g, weights))
    ut = torch.empty_like(v)
    u = torch.empty_like(v)
    if B:
        block = min(triton.next_power_of_2(max(size, 1)), 1024)
        _update_kernel[(B,)](
            p, v, g, weights, kinds.contiguous(), ut, u, size, int(first), BLOCK=block
        )
    return ut, u
