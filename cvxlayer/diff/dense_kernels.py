"""The residual map's adjoint system (`dense.py`) formed per element in compiled code
(numba), for programs whose cones the compiled engine's symmetric layout holds (zero,
nonnegative and second-order): with D = DΠ_{K*}(y − s) (I on the zero cone's rows, whose
dual is free; the orthant's and second-order blocks from `composite_kernels`),

    Jᵀ = [[P, −Aᵀ], [D A, I − D]],   rhs = (dx, D(dy + ds) − ds),

written into (B, n + m, n + m) and (B, n + m) arrays from A's and P's values on their
sparsity patterns. One call per thread replaces ~20 batched torch operations (the cone
Jacobians' blocks, their dense assembly, Jᵀ's blocks), whose dispatch dominated the
backward of small programs; the solve stays `dense.solve_transposed_system`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cvxlayer.cones import composite_kernels as cone
from cvxlayer.solvers.elementwise import for_chunks
from cvxlayer.solvers.numba_cache import announce_compile

_OPTIONS = {"cache": True, "nogil": True}


@njit(**_OPTIONS)
def _system_one(a_vals, a_rows, a_cols, p_vals, p_rows, p_cols, v, dx, dy, ds, lay, p, Jt, rhs):
    """One element's Jᵀ (N, N) and rhs (N,) (module docstring), N = n + m, from A's values
    (nnz_A,) at (a_rows, a_cols), P's upper-triangle values (nnz_P,) at (p_rows, p_cols),
    v = y − s (m,) and the gradients dx (n,), dy, ds (m,); p equality rows lead."""
    n, m = dx.size, v.size
    A = np.zeros((m, n))
    for k in range(a_vals.size):
        A[a_rows[k], a_cols[k]] = a_vals[k]
    D = np.zeros((m, m))
    for r in range(p):
        D[r, r] = 1.0
    cone.projection_jacobian(lay, v[p:], D[p:, p:])
    Jt[:] = 0.0
    for k in range(p_vals.size):
        Jt[p_rows[k], p_cols[k]] = p_vals[k]
        Jt[p_cols[k], p_rows[k]] = p_vals[k]
    Jt[:n, n:] = -A.T
    Jt[n:, :n] = D @ A
    Jt[n:, n:] = -D
    for r in range(m):
        Jt[n + r, n + r] += 1.0
    rhs[:n] = dx
    rhs[n:] = D @ (dy + ds) - ds


@njit(**_OPTIONS)
def _system_each(
    a_vals, a_rows, a_cols, p_vals, p_rows, p_cols, v, dx, dy, ds, lay, p, Jt, rhs, index
):
    """`_system_one` for the elements in `index` of batch-first arrays."""
    for i in index:
        _system_one(
            a_vals[i], a_rows, a_cols, p_vals[i], p_rows, p_cols, v[i], dx[i], dy[i], ds[i],
            lay, p, Jt[i], rhs[i],
        )  # fmt: skip


def system(
    data: tuple[np.ndarray, ...],
    v: np.ndarray,
    gradients: tuple[np.ndarray, np.ndarray, np.ndarray],
    layout: tuple,
) -> tuple[np.ndarray, np.ndarray]:
    """(Jᵀ (B, N, N), rhs (B, N)) for a batch: data = A's and P's values on their patterns
    (`SparseOps.arrays`), v = y − s (B, m), gradients = (dx (B, n), dy (B, m), ds (B, m)),
    layout = (the cone rows' `composite_kernels.Layout`, p equality rows), over torch's
    thread count of the kept pool."""
    dx, dy, ds = gradients
    (B, n), m = dx.shape, v.shape[1]
    Jt, rhs = np.empty((B, n + m, n + m)), np.empty((B, n + m))

    announce_compile(_system_each)

    def run(chunk):
        _system_each(*data, v, dx, dy, ds, *layout, Jt, rhs, chunk)

    for_chunks(run, range(B))
    return Jt, rhs
