"""`base.violates_tolerance` as a compiled kernel (numba), for CPU programs: the same test,
element by element, without torch's per-operation dispatch (the torch version is ~20
operations, ~100 µs a call on one small program, more than native SCS's own check).

An element violates the tolerance where ‖Ax + s − b‖∞ > k(eps_abs + eps_rel·max(‖Ax‖∞,
‖s‖∞, ‖b‖∞)) or ‖Px + Aᵀy + c‖∞ > k(eps_abs + eps_rel·max(‖Px‖∞, ‖Aᵀy‖∞, ‖c‖∞)), k =
`base.RESIDUAL_SLACK`; NaN counts as violating.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from cvxlayer.program import ConeProgram, SparseOps
from cvxlayer.solvers.elementwise import as_array
from cvxlayer.solvers.numba_cache import announce_compile


@njit(cache=True, nogil=True)
def largest(v):
    """‖v‖∞ (NaN if an entry is), 0 for an empty v."""
    return np.abs(v).max() if v.size else 0.0


@njit(cache=True, nogil=True)
def _exceeds(residual, first, second, third, eps_abs, eps_rel, slack):
    scale = max(largest(first), largest(second), largest(third))
    return not (largest(residual) <= slack * (eps_abs + eps_rel * scale))


@njit(cache=True, nogil=True)
def _violates_each(A, a_rows, a_cols, P, p_rows, p_cols, x, y, s, b, c, tol, out):
    """out[i] for every element of the batch-first values A (B, nnz_A) at (a_rows, a_cols),
    the upper triangle P (B, nnz_P) at (p_rows, p_cols) and x (B, n), y, s, b (B, m),
    c (B, n); tol = (eps_abs, eps_rel, slack)."""
    eps_abs, eps_rel, slack = tol
    (B, n), m = x.shape, b.shape[1]
    for i in range(B):
        Ax, Aty, Px = np.zeros(m), np.zeros(n), np.zeros(n)
        for k in range(a_rows.size):
            Ax[a_rows[k]] += A[i, k] * x[i, a_cols[k]]
            Aty[a_cols[k]] += A[i, k] * y[i, a_rows[k]]
        for k in range(p_rows.size):
            Px[p_rows[k]] += P[i, k] * x[i, p_cols[k]]
            if p_rows[k] != p_cols[k]:
                Px[p_cols[k]] += P[i, k] * x[i, p_rows[k]]
        primal = _exceeds(Ax + s[i] - b[i], Ax, s[i], b[i], eps_abs, eps_rel, slack)
        dual = _exceeds(Px + Aty + c[i], Px, Aty, c[i], eps_abs, eps_rel, slack)
        out[i] = primal or dual


def violates_tolerance(
    program: ConeProgram,
    solution: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    eps_abs: float,
    eps_rel: float,
    slack: float,
) -> torch.Tensor:
    """(B,) bool: whether each element's solution = (x, y, s) violates the tolerance
    (module docstring), for a program on the CPU."""
    ops = SparseOps.of(program.structure, program.b.device)
    out = np.zeros(program.batch_size, dtype=bool)
    announce_compile(_violates_each)
    _violates_each(
        *ops.arrays(program.A, program.P),
        *(as_array(t) for t in (*solution, program.b, program.c)),
        np.array([eps_abs, eps_rel, slack]), out,
    )  # fmt: skip
    return torch.as_tensor(out)
