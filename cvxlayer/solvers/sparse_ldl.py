"""A sparse LDLᵀ factorization of the interior point's KKT matrix, for the compiled engine
(`ipm_compiled`) on programs whose data are sparse (Clarabel's and OSQP's route, as in
QDLDL: quasi-definite, so any symmetric ordering factors once regularized).

    K = [P + δI   Aᵀ ]     (n + m) × (n + m), x first, then the rows of A;
        [A        −H ]     H = WᵀW per cone block (positive definite inside the
                           cones), δI on equality rows.

`analyze` runs once per sparsity pattern: the pattern of K's upper triangle (P's and A's
nonzeros over the batch, each cone block's dense H block, the diagonal), a fill-reducing
ordering (minimum degree on K's pattern, from SuperLU's ordering, or reverse
Cuthill–McKee for banded programs, whichever fills less), the elimination tree and the
column counts of L, and where each entry of P, A and H lands among K's values. Per
iteration `factor` writes K's values and factors it up-looking, row by row (Davis,
*Direct Methods for Sparse Linear Systems*, §4.7; L by columns, D diagonal), replacing a
pivot of the wrong sign or too small by ±`_DYNAMIC` (the refinement against the exact K
removes that and δ); `solve` does the two triangular solves and D⁻¹.

Pure functions of arrays; `Pattern` is shared by the batch, `Factors` is one element's.
"""

from __future__ import annotations

import functools
from collections import namedtuple

import numpy as np
import scipy.sparse as sp
from numba import njit
from scipy.sparse.csgraph import reverse_cuthill_mckee
from scipy.sparse.linalg import splu

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}
_PIVOT, _DYNAMIC = 1e-13, 1e-7  # a pivot below _PIVOT (with K's sign) becomes ±_DYNAMIC

# perm (N,): new position → old index; pinv its inverse; Kp, Ki: K's upper triangle in
# the new order (CSC); Lp, parent: L's column pointers and the elimination tree; sign (N,)
# the pivots' signs (+ for x, − for the rows); p_rows/p_cols/p_pos: P's upper-triangle
# entries and their place in K's values (a_* likewise for A; h_pos for the cone blocks'
# upper triangles in `composite_kernels.h_values` order); x_diag, eq_diag: the places of
# the diagonal of x and of the equality rows (old order); used: whether the engine factors
# K this way
Pattern = namedtuple(
    "Pattern",
    "perm pinv Kp Ki Lp parent sign p_rows p_cols p_pos a_rows a_cols a_pos h_pos "
    "x_diag eq_diag used",
)
Factors = namedtuple("Factors", "Kx Lx Li D y flag nonzeros stack")


def unused() -> Pattern:
    """The `Pattern` of an engine that factors densely (every array empty)."""
    e = np.zeros(0, dtype=np.int64)
    return Pattern(e, e, e, e, e, e, np.zeros(0), e, e, e, e, e, e, e, e, e, False)


@njit(**_OPTIONS)
def factors(pat):
    """One element's work space for `pat`."""
    N = pat.perm.size
    nnz_l = pat.Lp[N] if N else 0
    return Factors(
        np.empty(pat.Ki.size), np.empty(nnz_l), np.empty(nnz_l, dtype=np.int64), np.empty(N),
        np.zeros(N), np.empty(N, dtype=np.int64), np.empty(N, dtype=np.int64),
        np.empty(N, dtype=np.int64),
    )  # fmt: skip


# ------------------------------------------------------------------ symbolic analysis
@njit(**_OPTIONS)
def _etree(N, Kp, Ki):
    """The elimination tree (parent, −1 at roots) and the column counts of L for the upper
    triangle of K (CSC): row k of L is the tree's reach from the entries above K_kk."""
    parent = np.full(N, -1, dtype=np.int64)
    flag = np.empty(N, dtype=np.int64)
    counts = np.zeros(N, dtype=np.int64)
    for k in range(N):
        flag[k] = k
        for q in range(Kp[k], Kp[k + 1]):
            i = Ki[q]
            while i < k and flag[i] != k:
                if parent[i] == -1:
                    parent[i] = k
                counts[i] += 1
                flag[i] = k
                i = parent[i]
    return parent, counts


def _upper_csc(rows, cols, pinv, N):
    """K's upper triangle in the new order as CSC (Kp, Ki), and each given entry's place."""
    r, c = pinv[rows], pinv[cols]
    r, c = np.minimum(r, c), np.maximum(r, c)
    keys = c * N + r
    unique = np.unique(keys)
    Kp = np.searchsorted(unique // N, np.arange(N + 1)).astype(np.int64)
    return Kp, (unique % N).astype(np.int64), np.searchsorted(unique, keys).astype(np.int64)


def _fill(rows, cols, pinv, N):
    Kp, Ki, _ = _upper_csc(rows, cols, pinv, N)
    return int(_etree(N, Kp, Ki)[1].sum())


@functools.lru_cache(maxsize=32)
def _orderings(N: int, rows_bytes: bytes, cols_bytes: bytes) -> np.ndarray:
    """pinv (old → new) of the ordering that fills L least: minimum degree on K + Kᵀ
    (SuperLU's) or reverse Cuthill–McKee."""
    rows, cols = (
        np.frombuffer(rows_bytes, dtype=np.int64),
        np.frombuffer(cols_bytes, dtype=np.int64),
    )
    pattern = sp.coo_matrix((np.ones(rows.size), (rows, cols)), shape=(N, N)).tocsc()
    pattern = pattern + pattern.T
    candidates = [np.arange(N)]
    # a diagonally dominant matrix of K's pattern: SuperLU orders it without pivoting
    values = pattern.copy()
    values.data[:] = 1.0
    values = values + sp.identity(N, format="csc") * (N + 1.0)
    options = {"SymmetricMode": True}
    lu = splu(values.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0, options=options)
    candidates.append(np.asarray(lu.perm_c, dtype=np.int64))
    order = reverse_cuthill_mckee(pattern.tocsr(), symmetric_mode=True)
    candidates.append(np.argsort(order).astype(np.int64))
    return min(candidates, key=lambda pinv: _fill(rows, cols, pinv, N))


def analyze(
    n: int, p: int, P_pattern: np.ndarray, A_pattern: np.ndarray, blocks: list[int]
) -> tuple[Pattern, int]:
    """The `Pattern` of K for nonzero patterns P (n, n), A (m, n) (bool, over the batch),
    p equality rows first, and the cone blocks' sizes in row order (each block's H dense);
    returns it with the flops of its factorization (Σ column count²)."""
    m = A_pattern.shape[0]
    N = n + m
    p_rows, p_cols = np.nonzero(np.triu(P_pattern))
    a_rows, a_cols = np.nonzero(A_pattern)
    h_rows, h_cols, first = [], [], n + p
    for size in blocks:
        i, j = np.triu_indices(size)
        h_rows.append(first + i)
        h_cols.append(first + j)
        first += size
    h_rows = np.concatenate(h_rows + [np.zeros(0, dtype=np.int64)]).astype(np.int64)
    h_cols = np.concatenate(h_cols + [np.zeros(0, dtype=np.int64)]).astype(np.int64)
    diag = np.arange(N, dtype=np.int64)
    rows = np.concatenate([p_rows, a_cols, h_rows, diag]).astype(np.int64)
    cols = np.concatenate([p_cols, n + a_rows, h_cols, diag]).astype(np.int64)
    pinv = _orderings(N, rows.tobytes(), cols.tobytes())
    Kp, Ki, pos = _upper_csc(rows, cols, pinv, N)
    parent, counts = _etree(N, Kp, Ki)
    Lp = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    sign = np.where(np.argsort(pinv) < n, 1.0, -1.0)
    k1, k2, k3 = p_rows.size, p_rows.size + a_rows.size, p_rows.size + a_rows.size + h_rows.size
    pattern = Pattern(
        np.argsort(pinv).astype(np.int64), pinv, Kp, Ki, Lp, parent, sign,
        p_rows.astype(np.int64), p_cols.astype(np.int64), pos[:k1],
        a_rows.astype(np.int64), a_cols.astype(np.int64), pos[k1:k2], pos[k2:k3],
        pos[k3 : k3 + n], pos[k3 + n : k3 + n + p], True,
    )  # fmt: skip
    return pattern, int((counts.astype(np.float64) ** 2).sum() + counts.sum())


# ------------------------------------------------------------------ numeric
@njit(**_OPTIONS)
def assemble(pat, p_vals, a_vals, h_values, reg, F):
    """K's values (new order) into F.Kx from P's and A's values on the pattern (p_rows,
    p_cols; a_rows, a_cols), the cone blocks' H entries (`composite_kernels.h_values`
    order) and the static regularization δ (on x and the equality rows only: on cone rows
    H ~ μ near the solution, and δ there would slow the refinement to a crawl)."""
    Kx = F.Kx
    Kx[:] = 0.0
    for e in range(pat.p_pos.size):
        Kx[pat.p_pos[e]] += p_vals[e]
    for e in range(pat.a_pos.size):
        Kx[pat.a_pos[e]] += a_vals[e]
    for e in range(pat.h_pos.size):
        Kx[pat.h_pos[e]] -= h_values[e]
    for e in range(pat.x_diag.size):
        Kx[pat.x_diag[e]] += reg
    for e in range(pat.eq_diag.size):
        Kx[pat.eq_diag[e]] -= reg


@njit(**_OPTIONS)
def factor(pat, F):
    """K = L D Lᵀ (new order) from F.Kx, pivots kept off zero with K's signs; False if a
    pivot is not finite."""
    Kp, Ki, Kx, Lp, parent = pat.Kp, pat.Ki, F.Kx, pat.Lp, pat.parent
    Lx, Li, D, y, flag, nonzeros, stack = F.Lx, F.Li, F.D, F.y, F.flag, F.nonzeros, F.stack
    N = Kp.size - 1
    y[:] = 0.0
    for k in range(N):
        # the pattern of row k of L: the tree's reach from K's entries above the diagonal,
        # in topological order (stack[top:]); y gathers column k of K
        top = N
        flag[k] = k
        nonzeros[k] = 0
        for q in range(Kp[k], Kp[k + 1]):
            i = Ki[q]
            y[i] += Kx[q]
            length = 0
            while i < k and flag[i] != k:
                stack[length] = i
                length += 1
                flag[i] = k
                i = parent[i]
            while length > 0:
                top -= 1
                length -= 1
                stack[top] = stack[length]
        # the sparse triangular solve for row k, and its pivot
        d = y[k]
        y[k] = 0.0
        for t in range(top, N):
            i = stack[t]
            yi = y[i]
            y[i] = 0.0
            for q in range(Lp[i], Lp[i] + nonzeros[i]):
                y[Li[q]] -= Lx[q] * yi
            l_ki = yi / D[i]
            d -= l_ki * yi
            q = Lp[i] + nonzeros[i]
            Li[q], Lx[q] = k, l_ki
            nonzeros[i] += 1
        if pat.sign[k] * d < _PIVOT:
            d = pat.sign[k] * _DYNAMIC
        if not np.isfinite(d):
            return False
        D[k] = d
    return True


@njit(**_OPTIONS)
def solve(pat, F, rhs):
    """K⁻¹ rhs (old order) from the factors."""
    N = rhs.size
    b = np.empty(N)
    for i in range(N):
        b[pat.pinv[i]] = rhs[i]
    Lp, Li, Lx, nonzeros = pat.Lp, F.Li, F.Lx, F.nonzeros
    for i in range(N):
        bi = b[i]
        for q in range(Lp[i], Lp[i] + nonzeros[i]):
            b[Li[q]] -= Lx[q] * bi
    for i in range(N):
        b[i] /= F.D[i]
    for i in range(N - 1, -1, -1):
        t = b[i]
        for q in range(Lp[i], Lp[i] + nonzeros[i]):
            t -= Lx[q] * b[Li[q]]
        b[i] = t
    out = np.empty(N)
    for i in range(N):
        out[i] = b[pat.pinv[i]]
    return out
