"""The parametric map θ ↦ (P, A, b, c), built once from cvxpy's DPP canonicalization and applied
per call in torch.

cvxpy's `ParamConeProg` holds sparse tensors that map the stacked parameter vector
θ̃ = [vec_F(θ₁); …; vec_F(θ_k); 1] linearly to the entries of its cone data (cvxpy form
`A_cvx x + b ∈ K`, SCS form `A = −A_cvx`). We keep only the rows that can be nonzero,
stack them into one sparse matrix M (rows: c, A pattern, b, P pattern) and compute the
data of a whole batch as  vals = θ̃ Mᵀ  (a `SparseLinear` map: gather, scale, scatter-add;
its backward is the same with rows and columns swapped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from cvxlayer.cones import ConeSpec
from cvxlayer.linalg import coo_mv
from cvxlayer.program import ConeProgram, ConeStructure


def _nonzero_rows(tensor: sp.spmatrix) -> np.ndarray:
    """Sorted indices of the rows of `tensor` that hold a structural nonzero."""
    return np.unique(sp.coo_matrix(tensor).row)


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta, rows, cols, vals, size):
        ctx.save_for_backward(rows, cols, vals)
        ctx.num_in = theta.shape[1]
        return coo_mv(vals, rows, cols, theta, size)

    @staticmethod
    def backward(ctx, grad):
        rows, cols, vals = ctx.saved_tensors
        return coo_mv(vals, cols, rows, grad, ctx.num_in), None, None, None, None


@dataclass(frozen=True, eq=False)
class SparseLinear:
    """θ̃ (B, p + 1) ↦ θ̃ Mᵀ (B, rows) for a fixed sparse M, differentiable in θ̃.

    On the CPU a gather-scale-scatter over M's nonzeros is several times faster than torch's
    sparse-dense product in both directions, and allocates only the output.
    """

    matrix: sp.csr_matrix
    _cache: dict = field(default_factory=dict, repr=False)

    def restrict(self, rows: np.ndarray) -> SparseLinear:
        """The map onto the rows `rows` of the output; a row index −1 gives zeros."""
        padded = sp.vstack([self.matrix, sp.csr_matrix((1, self.matrix.shape[1]))]).tocsr()
        return SparseLinear(padded[np.where(rows < 0, self.matrix.shape[0], rows)].tocsr())

    def coo(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """M's (rows, cols, values) as tensors on `like`'s device and dtype (made once)."""
        key = (like.dtype, like.device)
        if key not in self._cache:
            coo = self.matrix.tocoo()
            self._cache[key] = tuple(
                torch.as_tensor(a, device=like.device)
                for a in (coo.row.astype(np.int64), coo.col.astype(np.int64))
            ) + (torch.as_tensor(coo.data, dtype=like.dtype, device=like.device),)
        return self._cache[key]

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return _SparseLinearFn.apply(theta, *self.coo(theta), self.matrix.shape[0])


@dataclass(frozen=True, eq=False)
class ParametricMap:
    """vals(θ̃) = M θ̃ with M of shape (n + nnz_A + m + nnz_P, p + 1).

    Attributes:
        structure: cones and sparsity patterns of the programs this map produces.
        linear: θ̃ ↦ vals, with M as a SciPy CSR matrix (float64) in `linear.matrix`.
        num_params: p, the length of θ̃ without its trailing 1.
    """

    structure: ConeStructure
    linear: SparseLinear
    num_params: int

    @property
    def matrix(self) -> sp.csr_matrix:
        return self.linear.matrix

    @classmethod
    def from_cvxpy(cls, param_prob, columns: sp.spmatrix) -> ParametricMap:
        """Build from a cvxpy `ParamConeProg` (`data[cp.settings.PARAM_PROB]`).

        Args:
            param_prob: cvxpy's parametrized cone program.
            columns: (p_cvxpy + 1, p + 1) map from our θ̃ to cvxpy's θ̃ (parameter lowering).
        """
        n = int(param_prob.x.size)
        cones = ConeSpec.from_cvxpy(param_prob.cone_dims)
        q = sp.csr_matrix(param_prob.q)
        A_tensor = sp.csr_matrix(param_prob.A)
        m = A_tensor.shape[0] // (n + 1)
        if m != cones.size:
            raise RuntimeError(f"cvxpy's data has {m} rows but its cones take {cones.size}")

        # A tensor rows are column-major entries of [A_cvx | b]: row k ↦ (k mod m, k div m);
        # sorted k with column < n is exactly CSC order of A's pattern.
        k = _nonzero_rows(A_tensor)
        k = k[k < n * m]
        a_rows, a_cols = k % m, k // m
        a_indptr = np.searchsorted(a_cols, np.arange(n + 1)).astype(np.int64)
        blocks = [q[:n], -A_tensor[k], A_tensor[n * m + np.arange(m)]]

        p_indices = p_indptr = None
        if param_prob.P is not None:
            P_tensor = sp.csr_matrix(param_prob.P)
            kp = _nonzero_rows(P_tensor)
            p_rows, p_cols = kp % n, kp // n
            upper = p_rows <= p_cols  # SCS takes the upper triangle of the symmetric P
            kp, p_indices = kp[upper], p_rows[upper].astype(np.int64)
            p_indptr = np.searchsorted(p_cols[upper], np.arange(n + 1)).astype(np.int64)
            blocks.append(P_tensor[kp])

        structure = ConeStructure(
            n=n,
            m=m,
            cones=cones,
            a_indices=a_rows.astype(np.int64),
            a_indptr=a_indptr,
            p_indices=p_indices,
            p_indptr=p_indptr,
        )
        matrix = (sp.vstack(blocks, format="csr") @ columns).tocsr().astype(np.float64)
        return cls(structure, SparseLinear(matrix), columns.shape[1] - 1)

    def apply(self, theta: torch.Tensor) -> ConeProgram:
        """Cone data of a batch.

        Args:
            theta: (B, p + 1) stacked parameters with a trailing column of ones.

        Returns:
            A `ConeProgram` whose tensors are differentiable functions of `theta`.
        """
        st = self.structure
        vals = self.linear(theta)  # (B, rows of M)
        c, A, b, P = torch.split(vals, [st.n, st.a_nnz, st.m, st.p_nnz], dim=1)
        return ConeProgram(st, A=A, b=b, c=c, P=P if st.p_indices is not None else None)
