"""Batched dense linear algebra shared by the solvers and the backward."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch

# On the CPU, batched LU factorizations run one element at a time: torch 2.13's MKL build,
# once `torch.set_num_threads` has been called, returns invalid pivots from the batched
# factorization of matrices of a few hundred rows (printing "oneMKL ERROR … DLASWP" for
# each) and can stall; single factorizations are not affected, and a batched CPU
# factorization is a loop over elements anyway.


def lu_factor(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched LU of M (B, N, N): (LU, pivots, info), info ≠ 0 where M is singular."""
    if M.is_cuda or M.shape[0] <= 1:
        return torch.linalg.lu_factor_ex(M)
    parts = [torch.linalg.lu_factor_ex(M[i]) for i in range(M.shape[0])]
    return tuple(torch.stack(t) for t in zip(*parts))


def min_norm_solve(M: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """The minimum-norm least-squares solution r of M r = rhs, M (N, N), rhs (N,); singular
    values below N·ε·σ_max count as zero (pinv's cut-off).

    LAPACK's complete orthogonal factorization (xGELSY, QR with column pivoting) through
    scipy, ~4× faster than an SVD. torch's batched "gelsy" driver is not used: measured on
    rank-deficient residual-map Jacobians, it returned residuals of 5e-2 where this call
    returns 1e-15."""
    cutoff = M.shape[-1] * np.finfo(M.dtype).eps
    return scipy.linalg.lstsq(M, rhs, cond=cutoff, lapack_driver="gelsy", check_finite=False)[0]


def mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product (B, r, c) @ (B, c) → (B, r) (tensors or arrays).

    Written as a row vector times Mᵀ: on the CPU, torch's batched GEMV is several times
    faster in this orientation."""
    if isinstance(v, np.ndarray):
        return (v[..., None, :] @ M.swapaxes(-1, -2))[..., 0, :]
    return _row_times(v, M.transpose(-1, -2))


def mtv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched Mᵀv: (B, r, c), (B, r) → (B, c) (tensors or arrays)."""
    if isinstance(v, np.ndarray):
        return (v[..., None, :] @ M)[..., 0, :]
    return _row_times(v, M)


def _row_times(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """v M for rows v (B, r) and M (B, r, c) → (B, c), by `bmm` where the batches match
    (`@` broadcasts through expand and reshape: three more autograd nodes, ~2× slower
    forward and backward at n = 10), else by `@`."""
    if v.dim() == 2 and M.dim() == 3 and M.shape[0] == v.shape[0]:
        return torch.bmm(v.unsqueeze(1), M).squeeze(1)
    return (v.unsqueeze(-2) @ M).squeeze(-2)


def coo_mv(
    values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, v: torch.Tensor, size: int
) -> torch.Tensor:
    """M v (B, size) for matrices sharing one sparsity pattern, entry k at (rows[k],
    cols[k]) with values (B, nnz) or (nnz,), through their nonzeros: O(B · nnz). Mᵀw is
    `coo_mv(values, cols, rows, w, n)`."""
    return v.new_zeros(v.shape[0], size).index_add_(1, rows, values * v.index_select(1, cols))


def inf_norm(t: torch.Tensor) -> torch.Tensor:
    """(B,) the ∞-norm of each row of t (B, k); 0 for k = 0."""
    if not t.shape[1]:
        return t.sum(1)
    return t.abs().amax(1)


def finite_rows(t: torch.Tensor) -> list[bool]:
    """Whether each row of t (B, k) is finite. A row's sum is NaN or ±inf when an entry is
    (one reduction, where `isfinite` costs several kernels); only a row whose sum is not
    finite, possibly finite entries that overflowed, is tested entry by entry."""
    flags = [math.isfinite(v) for v in t.detach().sum(1).tolist()]
    if all(flags):
        return flags
    return torch.isfinite(t).all(1).tolist()


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of t is finite (as `finite_rows`, with one reduction)."""
    return math.isfinite(float(t.detach().sum())) or bool(torch.isfinite(t).all())
