"""A batch of cone programs that share cones and sparsity: the hand-off from compile to solve.

Each batch element i is the SCS-form program

    minimize    ½ xᵀ P_i x + c_iᵀ x
    subject to  A_i x + s = b_i,   s ∈ K,

with dual  y ∈ K*,  P_i x + A_iᵀ y + c_i = 0.  The sparsity patterns of A and P and the
cone K are fixed at compile time (`ConeStructure`); the numbers are tensors with the batch
dimension first (`ConeProgram`).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from cvxlayer.cones import ConeSpec
from cvxlayer.linalg import coo_mv


@dataclass(frozen=True, eq=False)
class ConeStructure:
    """What every program of a batch shares.

    Attributes:
        n: number of variables.
        m: number of cone rows (= cones.size).
        cones: the cone K.
        a_indices, a_indptr: CSC pattern of A (m × n), nnz_A entries in CSC order.
        p_indices, p_indptr: CSC pattern of the upper triangle of P (n × n), or None when
            the objective is linear.
    """

    n: int
    m: int
    cones: ConeSpec
    a_indices: np.ndarray
    a_indptr: np.ndarray
    p_indices: np.ndarray | None = None
    p_indptr: np.ndarray | None = None

    @functools.cached_property
    def csc_templates(self) -> tuple[sp.csc_matrix, sp.csc_matrix | None]:
        """SciPy CSC matrices with A's (and P's) pattern, checked once, to be shallow-copied
        with each element's values: building and validating a matrix per element costs
        more than the small solves it feeds."""
        a = _template(self.a_indices, self.a_indptr, (self.m, self.n))
        p = (
            None
            if self.p_indices is None
            else _template(self.p_indices, self.p_indptr, (self.n, self.n))
        )
        return a, p

    @property
    def a_nnz(self) -> int:
        return int(self.a_indices.size)

    @property
    def p_nnz(self) -> int:
        return 0 if self.p_indices is None else int(self.p_indices.size)

    def a_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the nnz_A pattern entries, in CSC order."""
        cols = np.repeat(np.arange(self.n), np.diff(self.a_indptr))
        return self.a_indices, cols

    def p_coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols), rows ≤ cols, of the nnz_P upper-triangle pattern, in CSC order."""
        cols = np.repeat(np.arange(self.n), np.diff(self.p_indptr))
        return self.p_indices, cols


@dataclass(frozen=True, eq=False)
class ConeProgram:
    """Numbers of a batch of B cone programs.

    Attributes:
        structure: the shared `ConeStructure`.
        A: (B, nnz_A) values of A on the structure's CSC pattern.
        b: (B, m).
        c: (B, n).
        P: (B, nnz_P) values of the upper triangle of P, or None.
    """

    structure: ConeStructure
    A: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    P: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.b.shape[0]

    def select(self, index: torch.Tensor) -> ConeProgram:
        """The programs of the elements at `index` (B',)."""
        return ConeProgram(
            self.structure,
            self.A[index],
            self.b[index],
            self.c[index],
            None if self.P is None else self.P[index],
        )

    def detach(self) -> ConeProgram:
        return ConeProgram(
            self.structure,
            self.A.detach(),
            self.b.detach(),
            self.c.detach(),
            None if self.P is None else self.P.detach(),
        )

    def to_scipy(self) -> list[tuple[sp.csc_matrix, np.ndarray, np.ndarray, sp.csc_matrix | None]]:
        """Each element as SciPy/NumPy float64 data (A, b, c, P) for a native solver."""
        st = self.structure
        A = self.A.detach().cpu().double().numpy()
        b = self.b.detach().cpu().double().numpy()
        c = self.c.detach().cpu().double().numpy()
        P = None if self.P is None else self.P.detach().cpu().double().numpy()
        a_template, p_template = st.csc_templates
        out = []
        for i in range(self.batch_size):
            Pi = None if P is None else _with_values(p_template, P[i])
            out.append((_with_values(a_template, A[i]), b[i], c[i], Pi))
        return out


def _template(indices: np.ndarray, indptr: np.ndarray, shape: tuple) -> sp.csc_matrix:
    """A CSC matrix of this (sorted) pattern with zero values and int32 indices."""
    matrix = sp.csc_matrix(
        (np.zeros(indices.size), indices.astype(np.int32), indptr.astype(np.int32)), shape=shape
    )
    matrix.has_sorted_indices = True
    return matrix


def _with_values(template: sp.csc_matrix, values: np.ndarray) -> sp.csc_matrix:
    """A matrix sharing `template`'s (read-only) index arrays, with these values."""
    matrix = copy.copy(template)
    matrix.data = values
    return matrix


class SparseOps:
    """Batched products with A, Aᵀ and the symmetric P on a structure's sparsity pattern.

    Values come with each call (A: (B, nnz_A), P: (B, nnz_P) upper triangle, or None); the
    index tensors live on `device`, built once. Every product costs O(B · nnz) time and
    memory: nothing m × n is formed except by `dense`.
    """

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(structure: ConeStructure, device: torch.device) -> SparseOps:
        """The products of a structure on a device, built once per pair."""
        return SparseOps(structure, device)

    def __init__(self, structure: ConeStructure, device: torch.device | str) -> None:
        self.m, self.n = structure.m, structure.n
        self.a_rows, self.a_cols = (torch.as_tensor(t, device=device) for t in structure.a_coords())
        if structure.p_indices is not None:
            self.p_rows, self.p_cols = (
                torch.as_tensor(t, device=device) for t in structure.p_coords()
            )
            self.p_on_diagonal = self.p_rows == self.p_cols

    def arrays(self, A: torch.Tensor, P: torch.Tensor | None) -> tuple[np.ndarray, ...]:
        """(A, a_rows, a_cols, P, p_rows, p_cols) as C-contiguous float64 and int64 numpy
        arrays, for the compiled kernels: A's values (B, nnz_A) at (a_rows, a_cols), P's upper
        triangle (B, nnz_P) at (p_rows, p_cols), empty without P. CPU tensors."""
        A_np = np.ascontiguousarray(A.detach().double().numpy())
        a_rows, a_cols = self.a_rows.numpy(), self.a_cols.numpy()
        if P is None:
            none = np.zeros(0, dtype=np.int64)
            return A_np, a_rows, a_cols, np.zeros((A_np.shape[0], 0)), none, none
        P_np = np.ascontiguousarray(P.detach().double().numpy())
        return A_np, a_rows, a_cols, P_np, self.p_rows.numpy(), self.p_cols.numpy()

    def a(self, A: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """A v: (B, m) from v (B, n)."""
        return coo_mv(A, self.a_rows, self.a_cols, v, self.m)

    def at(self, A: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Aᵀ w: (B, n) from w (B, m)."""
        return coo_mv(A, self.a_cols, self.a_rows, w, self.n)

    def p(self, P: torch.Tensor | None, v: torch.Tensor) -> torch.Tensor:
        """P v (B, n), P symmetric stored as its upper triangle; zeros without P."""
        out = v.new_zeros(v.shape[0], self.n)
        if P is None:
            return out
        out.index_add_(1, self.p_rows, P * v[:, self.p_cols])
        off = torch.where(self.p_on_diagonal, torch.zeros_like(P), P)
        return out.index_add_(1, self.p_cols, off * v[:, self.p_rows])

    def weighted_column_norms(self, A: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """diag(Aᵀ W A) = Σᵢ wᵢ A_ij² per column j: (B, n) from weights (B, m)."""
        return coo_mv(A * A, self.a_cols, self.a_rows, weights, self.n)

    def p_diagonal(self, P: torch.Tensor) -> torch.Tensor:
        """diag(P): (B, n)."""
        out = P.new_zeros(P.shape[0], self.n)
        diag = torch.where(self.p_on_diagonal, P, torch.zeros_like(P))
        return out.index_add_(1, self.p_rows, diag)

    def dense(
        self, A: torch.Tensor, P: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A (B, m, n) and the full symmetric P (B, n, n) (or None) as dense tensors."""
        B = A.shape[0]
        A_dense = A.new_zeros(B, self.m, self.n)
        A_dense[:, self.a_rows, self.a_cols] = A
        if P is None:
            return A_dense, None
        P_dense = P.new_zeros(B, self.n, self.n)
        P_dense[:, self.p_rows, self.p_cols] = P
        off = torch.where(self.p_on_diagonal, torch.zeros_like(P), P)
        P_dense[:, self.p_cols, self.p_rows] += off
        return A_dense, P_dense
