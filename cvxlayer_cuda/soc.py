"""Triton kernel: Π onto second-order cones {(t, x) : ‖x‖ ≤ t}, one program per cone.

Same semantics as `cvxlayer.cones.soc.proj_soc` (its torch reference): z itself
inside the cone, 0 in the polar cone (‖x‖ ≤ −t), else ((t + ‖x‖)/2) (1, x/‖x‖).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _soc_kernel(z_ptr, out_ptr, size, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    mask = offs < size
    z = tl.load(z_ptr + row * size + offs, mask=mask, other=0.0)
    is_x = (offs > 0) & mask
    t = tl.sum(tl.where(offs == 0, z, 0.0), axis=0)
    nx = tl.sqrt(tl.sum(tl.where(is_x, z * z, 0.0), axis=0))
    scale = (t + nx) / 2
    safe = tl.where(nx > 0, nx, 1.0)
    boundary = tl.where(offs == 0, scale, scale * z / safe)
    out = tl.where(nx <= t, z, tl.where(nx <= -t, 0.0, boundary))
    tl.store(out_ptr + row * size + offs, out, mask=mask)


def proj_soc(z: torch.Tensor) -> torch.Tensor:
    """Π_SOC for blocks z (..., q), t = z[..., 0]."""
    size = z.shape[-1]
    flat = z.reshape(-1, size).contiguous()
    out = torch.empty_like(flat)
    if flat.shape[0]:
        _soc_kernel[(flat.shape[0],)](flat, out, size, BLOCK=triton.next_power_of_2(size))
    return out.reshape(z.shape)
