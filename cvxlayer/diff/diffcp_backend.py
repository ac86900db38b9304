"""Adjoint of the cone-program solution map by diffcp's residual-map kernels (the reference).

At a solution (x, y, s), with z = (u, v, w) = (x, y − s, 1) and Q the skew-symmetric
embedding of (A, b, c), the residual map of Minty's parameterization is
R(z) = ((Q − I)Π + I)z and R(z) = 0. For incoming gradients (dx, dy, ds), solve

    DR(z)ᵀ r = (dx,  DΠ_{K*}(v)ᵀ(dy + ds) − ds,  −(xᵀdx + yᵀdy + sᵀds))

and read the gradients off r and π = Π(z) = (u, Π_{K*}(v), w₊):

    dA_ij = π_j r_{n+i} − π_{n+i} r_j,   db = π_v r_w − π_w r_v,   dc = π_u r_w − π_w r_u

(Agrawal et al. 2019, §4). The solve uses diffcp's compiled operators: a dense LU for
small programs, LSQR on the matrix-free operator for large ones. One element at a time,
on the CPU, in float64.
"""

from __future__ import annotations

import diffcp._diffcp as _diffcp
import diffcp.cones as diffcp_cones
import numpy as np
import scipy.sparse as sp
import torch

from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import Solution

# Above this size of z (n + m + 1) the dense system is replaced by LSQR.
DENSE_LIMIT = 800


class DiffcpAdjoint:
    """Backward "diffcp": diffcp's derivative kernels applied to our solution, element by element.

    Args:
        method: "dense", "lsqr", or "auto" (dense up to `DENSE_LIMIT` unknowns).
    """

    name = "diffcp"
    supports_quadratic = False

    def __init__(self, method: str = "auto") -> None:
        if method not in ("auto", "dense", "lsqr"):
            raise ValueError(f"diffcp method must be 'auto', 'dense' or 'lsqr', got {method!r}")
        self.method = method

    def check(self, structure: ConeStructure) -> None:
        """Raise if diffcp cannot differentiate programs of this structure."""
        if structure.cones.power:
            raise NotImplementedError(
                "the diffcp backward does not support power cones (cp.PowCone3D, cp.power "
                "with non-integer p); use solver_args={'backward': 'dense'} or 'lsqr'"
            )
        if structure.p_indices is not None:
            raise NotImplementedError(
                "the diffcp backward needs a linear objective (P = 0), but this layer was "
                "compiled with a quadratic one; construct it with "
                "solver_args={'backward': 'diffcp'} to compile without"
            )

    def vjp(
        self,
        program: ConeProgram,
        solution: Solution,
        dx: torch.Tensor,
        dy: torch.Tensor,
        ds: torch.Tensor,
        active: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None]:
        """Gradients (dA (B, nnz_A), db (B, m), dc (B, n), dP=None); rows not in `active` are 0."""
        st = program.structure
        n, m = st.n, st.m
        cones = diffcp_cones.parse_cone_dict(st.cones.to_scs())  # diffcp reads SCS's keys
        cones_cpp = diffcp_cones.parse_cone_dict_cpp(cones)
        rows, cols = st.a_coords()
        method = self.method
        if method == "auto":
            method = "dense" if n + m + 1 <= DENSE_LIMIT else "lsqr"

        data = program.to_scipy()
        X, Y, S = (t.detach().cpu().double().numpy() for t in (solution.x, solution.y, solution.s))
        DX, DY, DS = (t.detach().cpu().double().numpy() for t in (dx, dy, ds))
        dA = np.zeros((program.batch_size, st.a_nnz))
        db = np.zeros((program.batch_size, m))
        dc = np.zeros((program.batch_size, n))
        for i in active:
            A, b, c, _ = data[i]
            x, y, s = X[i], Y[i], S[i]
            v = y - s
            Q = sp.bmat(
                [
                    [None, A.T, c[:, None]],
                    [-A, None, b[:, None]],
                    [-c[None, :], -b[None, :], None],
                ],
                format="csc",
            )
            d_proj = _diffcp.dprojection(v, cones_cpp, True)
            dw = -(x @ DX[i] + y @ DY[i] + s @ DS[i])
            rhs = np.concatenate([DX[i], d_proj.rmatvec(DY[i] + DS[i]) - DS[i], [dw]])
            if not rhs.any():
                continue
            if method == "dense":
                M = _diffcp.M_dense(Q.toarray(), cones_cpp, x, v, 1.0)
                r = _diffcp._solve_adjoint_derivative_dense(M, M.T, rhs)
            else:
                M = _diffcp.M_operator(sp.csc_matrix(Q), cones_cpp, x, v, 1.0)
                r = _diffcp.lsqr(M.transpose(), rhs).solution
            pi_z = np.concatenate([x, diffcp_cones.pi(v, cones, dual=True), [1.0]])
            dA[i] = pi_z[cols] * r[rows + n] - pi_z[n + rows] * r[cols]
            db[i] = pi_z[n : n + m] * r[-1] - pi_z[-1] * r[n : n + m]
            dc[i] = pi_z[:n] * r[-1] - pi_z[-1] * r[:n]

        def back(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=program.b.dtype, device=program.b.device)

        return back(dA), back(db), back(dc), None
