"""Batched dense linear algebra shared by the solvers and the backward."""

from __future__ import annotations

import torch


def lu_factor(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched LU of M (B, N, N): (LU, pivots, info), info ≠ 0 where M is singular.

    torch 2.13's CPU build (MKL) can return invalid pivots from the batched factorization
    after `torch.set_num_threads` for some batch and matrix sizes; the factorization is then
    redone one element at a time, which is not affected.
    """
    lu, pivots, info = torch.linalg.lu_factor_ex(M)
    if bool((pivots < 1).any()):
        parts = [torch.linalg.lu_factor_ex(M[i : i + 1]) for i in range(M.shape[0])]
        lu, pivots, info = (torch.cat(t) for t in zip(*parts))
    return lu, pivots, info
