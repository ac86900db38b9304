"""A batch of cone programs that share cones and sparsity: the hand-off from compile to solve.

Each batch element i is the SCS-form program

    minimize    ½ xᵀ P_i x + c_iᵀ x
    subject to  A_i x + s = b_i,   s ∈ K,

with dual  y ∈ K*,  P_i x + A_iᵀ y + c_i = 0.  The sparsity patterns of A and P and the
cone K are fixed at compile time (`ConeStructure`); the numbers are tensors with the batch
dimension first (`ConeProgram`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from cvxlayer.cones import ConeSpec


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

    def detach(self) -> ConeProgram:
        return ConeProgram(
            self.structure,
            self.A.detach(),
            self.b.detach(),
            self.c.detach(),
            None if self.P is None else self.P.detach(),
        )

    def dense(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A (B, m, n) and the full symmetric P (B, n, n) (or None) as dense tensors."""
        st, B = self.structure, self.batch_size
        device = self.b.device
        rows, cols = (torch.as_tensor(a, device=device) for a in st.a_coords())
        A = self.A.new_zeros(B, st.m, st.n)
        A[:, rows, cols] = self.A
        if self.P is None:
            return A, None
        p_rows, p_cols = (torch.as_tensor(a, device=device) for a in st.p_coords())
        P = self.P.new_zeros(B, st.n, st.n)
        P[:, p_rows, p_cols] = self.P
        P = P + P.transpose(1, 2) - torch.diag_embed(torch.diagonal(P, dim1=1, dim2=2))
        return A, P

    def to_scipy(self) -> list[tuple[sp.csc_matrix, np.ndarray, np.ndarray, sp.csc_matrix | None]]:
        """Each element as SciPy/NumPy float64 data (A, b, c, P) for a native solver."""
        st = self.structure
        A = self.A.detach().cpu().double().numpy()
        b = self.b.detach().cpu().double().numpy()
        c = self.c.detach().cpu().double().numpy()
        P = None if self.P is None else self.P.detach().cpu().double().numpy()
        out = []
        for i in range(self.batch_size):
            Ai = sp.csc_matrix((A[i], st.a_indices, st.a_indptr), shape=(st.m, st.n))
            Pi = None
            if P is not None:
                Pi = sp.csc_matrix((P[i], st.p_indices, st.p_indptr), shape=(st.n, st.n))
            out.append((Ai, b[i], c[i], Pi))
        return out
