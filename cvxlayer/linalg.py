"""Batched dense linear algebra shared by the solvers and the backward."""

from __future__ import annotations

import torch


def lu_factor(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched LU of M (B, N, N): (LU, pivots, info), info ≠ 0 where M is singular.

    On the CPU the elements are factored one at a time: torch 2.13's MKL build, once
    `torch.set_num_threads` has been called, returns invalid pivots from the batched
    factorization of matrices of a few hundred rows (printing "oneMKL ERROR … DLASWP" for
    each) and can stall; single factorizations are not affected, and a batched CPU
    factorization is a loop over elements anyway.
    """
    if M.is_cuda or M.shape[0] <= 1:
        return torch.linalg.lu_factor_ex(M)
    parts = [torch.linalg.lu_factor_ex(M[i]) for i in range(M.shape[0])]
    return tuple(torch.stack(t) for t in zip(*parts))
