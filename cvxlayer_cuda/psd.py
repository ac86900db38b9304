"""Triton kernel: Π onto small PSD cones in SCS's scaled lower-triangle vectorization.

Same semantics as `cvxlayer.cones.psd.proj_psd_reference` (eigendecomposition,
negative eigenvalues set to zero, back to svec). One program per matrix: the k × k matrix
(k ≤ `MAX_SIDE`, padded to a power of two) lives in registers and is diagonalized by cyclic
Jacobi rotations, a fixed number of sweeps (Jacobi converges quadratically: 10 sweeps reach
rounding level for k ≤ 16), then V diag(λ₊) Vᵀ is written back. Larger cones use the
reference (torch's batched `eigh`).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from cvxlayer_cuda import MAX_PSD_SIDE as MAX_SIDE

_SWEEPS = 10


@triton.jit
def _psd_kernel(
    v_ptr,
    out_ptr,
    map_ptr,
    scale_ptr,
    rows,
    K: tl.constexpr,
    BK: tl.constexpr,
    SWEEPS: tl.constexpr,
):
    base = tl.program_id(0) * rows
    ri = tl.arange(0, BK)[:, None]
    ci = tl.arange(0, BK)[None, :]
    index = tl.load(map_ptr + ri * BK + ci)  # svec index of (i, j), −1 outside k × k
    inside = index >= 0
    # svec ↦ matrix factors in the data's dtype (1/√2 off the diagonal; a Python float
    # literal would be a float32 constant)
    scale = tl.load(scale_ptr + ri * BK + ci)
    A = tl.load(v_ptr + base + index, mask=inside, other=0.0) * scale
    V = (ri == ci).to(A.dtype) + A * 0.0
    for _ in range(SWEEPS):
        for p in tl.static_range(K):
            for q in tl.static_range(p + 1, K):
                app = tl.sum(tl.sum(tl.where((ri == p) & (ci == p), A, 0.0), axis=1), axis=0)
                aqq = tl.sum(tl.sum(tl.where((ri == q) & (ci == q), A, 0.0), axis=1), axis=0)
                apq = tl.sum(tl.sum(tl.where((ri == p) & (ci == q), A, 0.0), axis=1), axis=0)
                nonzero = apq != 0
                theta = (aqq - app) / (2.0 * tl.where(nonzero, apq, 1.0))
                sign = tl.where(theta >= 0, 1.0, -1.0)
                t = sign / (tl.abs(theta) + tl.sqrt(theta * theta + 1.0))
                t = tl.where(nonzero, t, 0.0)
                c = 1.0 / tl.sqrt(t * t + 1.0)
                s = t * c
                # A ← A J (columns p, q), then Jᵀ A (rows p, q); V ← V J
                col_p = tl.sum(tl.where(ci == p, A, 0.0), axis=1)[:, None]
                col_q = tl.sum(tl.where(ci == q, A, 0.0), axis=1)[:, None]
                A = tl.where(ci == p, c * col_p - s * col_q, A)
                A = tl.where(ci == q, s * col_p + c * col_q, A)
                row_p = tl.sum(tl.where(ri == p, A, 0.0), axis=0)[None, :]
                row_q = tl.sum(tl.where(ri == q, A, 0.0), axis=0)[None, :]
                A = tl.where(ri == p, c * row_p - s * row_q, A)
                A = tl.where(ri == q, s * row_p + c * row_q, A)
                vcol_p = tl.sum(tl.where(ci == p, V, 0.0), axis=1)[:, None]
                vcol_q = tl.sum(tl.where(ci == q, V, 0.0), axis=1)[:, None]
                V = tl.where(ci == p, c * vcol_p - s * vcol_q, V)
                V = tl.where(ci == q, s * vcol_p + c * vcol_q, V)
    out = A * 0.0
    for k in tl.static_range(K):
        lam = tl.sum(tl.sum(tl.where((ri == k) & (ci == k), A, 0.0), axis=1), axis=0)
        col = tl.sum(tl.where(ci == k, V, 0.0), axis=1)
        out += tl.maximum(lam, 0.0) * (col[:, None] * tl.reshape(col, (1, BK)))
    lower = inside & (ri >= ci)
    tl.store(out_ptr + base + index, out / scale, mask=lower)


def _svec_map(side: int, block: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(block, block) int32 svec index of entry (i, j) (both triangles; −1 outside k × k) and
    the factors from svec to matrix entries (1/√2 off the diagonal), in `like`'s dtype."""
    index = torch.full((block, block), -1, dtype=torch.int32)
    k = 0
    for j in range(side):  # column by column, lower triangle (SCS's order)
        for i in range(j, side):
            index[i, j] = index[j, i] = k
            k += 1
    scale = torch.full((block, block), 1 / math.sqrt(2.0), dtype=like.dtype)
    scale.fill_diagonal_(1.0)
    return index.to(like.device), scale.to(like.device)


def proj_psd(v: torch.Tensor) -> torch.Tensor:
    """Π_PSD for svec blocks v (..., k(k+1)/2), k ≤ MAX_SIDE."""
    rows = v.shape[-1]
    side = (math.isqrt(8 * rows + 1) - 1) // 2
    if side > MAX_SIDE:
        raise ValueError(f"the PSD kernel handles sides up to {MAX_SIDE}, got {side}")
    flat = v.reshape(-1, rows).contiguous()
    out = torch.empty_like(flat)
    if flat.shape[0]:
        block = max(triton.next_power_of_2(side), 2)
        index, scale = _svec_map(side, block, flat)
        _psd_kernel[(flat.shape[0],)](
            flat, out, index, scale, rows, K=side, BK=block, SWEEPS=_SWEEPS
        )
    return out.reshape(v.shape)
