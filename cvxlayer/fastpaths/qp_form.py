"""Recognize a compiled problem as a QP and move between its cone program and QP data.

A cone program whose cone has only zero and nonnegative rows is the QP

    minimize ½xᵀPx + cᵀx   subject to  A_z x = b_z (zero rows),  A_l x ≤ b_l (nonneg rows).

cvxpy's canonicalization lifts quadratic terms it cannot keep in P, e.g. `sum_squares(L @ x)`
with a parameter L becomes ½‖t‖² with a new variable t and the equality t = L x. Those lifted
variables are eliminated again before the interior-point solve, so that the QP has the
user's variables only (for sum_squares(L @ x): Q = LᵀL, the form qpth takes):

A variable column e is *eliminated* when it has a single nonzero in A, in a zero row r, and
that coefficient a_e is a constant (no parameter). Row r then reads a_e x_e + A_rK x_K = b_r,
so x_E = T x_K + u with T = −A_RK / a_E and u = b_R / a_E, and with K the kept columns

    Q = P_KK + P_KE T + Tᵀ P_EK + Tᵀ P_EE T,    q = c_K + Tᵀ c_E + (P_KE + Tᵀ P_EE) u.

The duals of the eliminated rows follow from stationarity in x_E:
y_R = −((P x)_E + c_E) / a_E. Every step is a torch operation, so autograd carries the
QP's gradients back to the cone data and on to the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cvxlayer.fastpaths.qp import MAX_ITERS, QPData, mtv, mv, qp_solve_differentiable
from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import Solution, SolveSettings


def _constant_entries(matrix, rows: np.ndarray, num_params: int) -> np.ndarray:
    """(len(rows),) bool: which rows of the parametric map depend on no parameter."""
    sub = matrix[rows].tocsr()
    depends = np.zeros(len(rows), dtype=bool)
    for i in range(len(rows)):
        cols = sub.indices[sub.indptr[i] : sub.indptr[i + 1]]
        depends[i] = bool((cols < num_params).any())
    return ~depends


def _positions(pattern, shape, r, c, symmetric: bool = False) -> np.ndarray:
    """Positions in a CSC value vector of the entries (r, c); len(pattern rows) (a zero slot
    appended to the values) where the pattern has no entry. With `symmetric`, the pattern
    holds the upper triangle of a symmetric matrix."""
    rows, cols = pattern
    r, c = np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.int64)
    if symmetric:
        r, c = np.minimum(r, c), np.maximum(r, c)
    keys = cols.astype(np.int64) * shape[0] + rows  # ascending: CSC order
    query = c * shape[0] + r
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.int64)
    pos = np.searchsorted(keys, query).clip(max=len(keys) - 1)
    return np.where(keys[pos] == query, pos, len(keys)).astype(np.int64)


def _grid(pattern, shape, row_sel, col_sel, symmetric: bool = False) -> np.ndarray:
    """`_positions` of the dense block M[row_sel][:, col_sel], as a (len(row_sel),
    len(col_sel)) array."""
    r, c = np.meshgrid(row_sel, col_sel, indexing="ij")
    return _positions(pattern, shape, r.ravel(), c.ravel(), symmetric).reshape(r.shape)


def _gather(values: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """(B, *index.shape) entries of a pattern's values (B, nnz) at `_positions` `index`."""
    padded = torch.cat([values, values.new_zeros(values.shape[0], 1)], 1)
    flat = padded[:, torch.as_tensor(index.ravel(), device=values.device)]
    return flat.view(values.shape[0], *index.shape)


@dataclass(frozen=True, eq=False)
class QPForm:
    """The reduction of one compiled problem, found once at compile time.

    Attributes:
        keep: kept columns K (the QP's variables z).
        elim: eliminated columns E; elim_rows: their zero rows R (same order).
        eq_rows: the other zero rows (the QP's Az = b); ineq_rows: nonneg rows (Gz ≤ h).
        blocks: `_positions` of the dense blocks (a_E, A_RK, G, A_eq in A's values; P_KK,
            P_KE, P_EE in P's values, P_EE only its diagonal when that is all it has).
    """

    name = "qp"
    structure: ConeStructure
    keep: np.ndarray
    elim: np.ndarray
    elim_rows: np.ndarray
    eq_rows: np.ndarray
    ineq_rows: np.ndarray
    blocks: dict

    @classmethod
    def match(cls, structure: ConeStructure, matrix, num_params: int) -> QPForm | None:
        """The reduction for a QP-structured program, or None if the cone has other rows.

        Args:
            structure: the compiled cone structure.
            matrix: the parametric map's matrix (rows c, A pattern, b, P pattern).
            num_params: its number of parameter columns (the last column is the constant).
        """
        cones = structure.cones
        if cones.zero + cones.nonneg != structure.m:
            return None
        n, m, zero = structure.n, structure.m, cones.zero
        rows, cols = structure.a_coords()
        counts = np.bincount(cols, minlength=n)
        entry = np.flatnonzero((counts[cols] == 1) & (rows < zero))  # candidates' entries
        entry = entry[_constant_entries(matrix, n + entry, num_params)]
        _, first = np.unique(rows[entry], return_index=True)  # one column per row
        entry = entry[first]
        elim, elim_rows = cols[entry].astype(np.int64), rows[entry].astype(np.int64)
        keep = np.setdiff1d(np.arange(n), elim)
        if keep.size == 0:
            return None
        eq_rows = np.setdiff1d(np.arange(zero), elim_rows)
        ineq_rows = np.arange(zero, m)
        a = ((rows, cols), (m, n))
        blocks = {
            "a_E": entry.astype(np.int64),
            "A_RK": _grid(*a, elim_rows, keep),
            "G": _grid(*a, ineq_rows, keep),
            "A_eq": _grid(*a, eq_rows, keep),
        }
        if structure.p_indices is not None:
            p = (structure.p_coords(), (n, n))
            nnz_p = structure.p_nnz
            blocks["P_KK"] = _grid(*p, keep, keep, symmetric=True)
            ke = _grid(*p, keep, elim, symmetric=True)
            if (ke < nnz_p).any():
                blocks["P_KE"] = ke
            ee = _grid(*p, elim, elim, symmetric=True)
            if (ee[~np.eye(elim.size, dtype=bool)] < nnz_p).any():
                blocks["P_EE"] = ee
            else:
                blocks["P_EE_diag"] = np.diagonal(ee).copy()
        return cls(structure, keep, elim, elim_rows, eq_rows, ineq_rows, blocks)

    def describe(self) -> str:
        return (
            f"QP with {self.keep.size} variables, {self.eq_rows.size} equalities, "
            f"{self.ineq_rows.size} inequalities ({self.elim.size} lifted variables eliminated)"
        )

    def solve(
        self, program: ConeProgram, settings: SolveSettings, failed_gradient: str = "zero"
    ) -> Solution:
        """Solve the batch on the QP path; x, y, s are differentiable w.r.t. the cone data."""
        bl, dev = self.blocks, program.b.device
        A, b, c, P = program.A, program.b, program.c, program.P
        K, E, R, eq, ineq = (
            torch.as_tensor(ix, device=dev)
            for ix in (self.keep, self.elim, self.elim_rows, self.eq_rows, self.ineq_rows)
        )
        # x_E = T x_K + u
        a_E = _gather(A, bl["a_E"])
        T = -_gather(A, bl["A_RK"]) / a_E.unsqueeze(-1)
        u = b[:, R] / a_E
        c_E = c[:, E]
        Q = 0.0
        q = c[:, K] + mtv(T, c_E)
        if P is not None:
            Q = _gather(P, bl["P_KK"])
            if "P_EE_diag" in bl:
                PT = _gather(P, bl["P_EE_diag"]).unsqueeze(-1) * T  # P_EE T: (B, |E|, |K|)
            else:
                PT = _gather(P, bl["P_EE"]) @ T
            Q = Q + T.transpose(1, 2) @ PT
            q = q + mtv(PT, u)
            if "P_KE" in bl:
                P_KE = _gather(P, bl["P_KE"])
                P_KE_T = P_KE @ T
                Q = Q + P_KE_T + P_KE_T.transpose(1, 2)
                q = q + mv(P_KE, u)
        if not isinstance(Q, torch.Tensor):
            Q = b.new_zeros(b.shape[0], K.numel(), K.numel())
        qp = QPData(Q, q, _gather(A, bl["G"]), b[:, ineq], _gather(A, bl["A_eq"]), b[:, eq])
        z, lam, nu, result = qp_solve_differentiable(
            qp,
            settings.eps_abs,
            settings.eps_rel,
            min(settings.max_iters, MAX_ITERS),
            settings.verbose,
            failed_gradient,
        )
        # back to the cone program: x = (z, x_E), y = (y_R, ν, λ), s = (0, h − Gz)
        x_E = mv(T, z) + u
        x = torch.cat([z, x_E], 1)[:, _order(self.keep, self.elim, device=dev)]
        grad_E = c_E  # (P x)_E + c_E = P_EK z + P_EE x_E + c_E
        if P is not None:
            if "P_EE_diag" in bl:
                grad_E = grad_E + _gather(P, bl["P_EE_diag"]) * x_E
            else:
                grad_E = grad_E + mv(_gather(P, bl["P_EE"]), x_E)
            if "P_KE" in bl:
                grad_E = grad_E + mtv(_gather(P, bl["P_KE"]), z)
        y = torch.cat([-grad_E / a_E, nu, lam], 1)
        y = y[:, _order(self.elim_rows, self.eq_rows, self.ineq_rows, device=dev)]
        s_ineq = qp.h - mv(qp.G, z)
        s = torch.cat([s_ineq.new_zeros(s_ineq.shape[0], self.structure.cones.zero), s_ineq], 1)
        return Solution(x, y, s, result.status, result.iterations)


def _order(*parts: np.ndarray, device) -> torch.Tensor:
    """The permutation that puts the concatenation of index sets back in natural order."""
    return torch.as_tensor(np.argsort(np.concatenate(parts)), device=device)
