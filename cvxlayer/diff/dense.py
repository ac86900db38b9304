"""Batched dense adjoint of the cone program's solution map, with a quadratic objective.

At a solution (x, y, s) let u = x, v = y − s, so that y = Π(v), s = Π(v) − v with
Π = Π_{K*} (Minty's parameterization). The solution satisfies the residual map

    R(u, v) = ( P u + Aᵀ Π(v) + c ,  −A u + b − (Π(v) − v) ) = 0,

n + m equations in n + m unknowns (the homogeneous variable fixed at τ = 1). Its Jacobian
is J = [[P, Aᵀ D], [−A, I − D]], D = DΠ(v). For a loss with gradients (dx, dy, ds), solve

    Jᵀ r = ( dx ,  Dᵀ(dy + ds) − ds )

and, since ∂L/∂θ = −rᵀ ∂R/∂θ,

    dA = r_v xᵀ − y r_uᵀ,   db = −r_v,   dc = −r_u,   dP = −½ (r_u xᵀ + x r_uᵀ).

With P = 0 this is the adjoint of Agrawal et al. (2019) with the homogeneous row dropped.
Everything is batched in torch on the data's device: one (n + m) × (n + m) LU per element,
with a least-squares fallback where J is singular.
"""

from __future__ import annotations

import torch

from cvxlayer.cones.projections import ConeProjector
from cvxlayer.linalg import lu_factor
from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import Solution


def residual_jacobian(A, P, D) -> torch.Tensor:
    """J = [[P, Aᵀ D], [−A, I − D]]: (B, n + m, n + m) from A (B, m, n), P, D (B, m, m)."""
    B, m, n = A.shape
    top_left = P if P is not None else A.new_zeros(B, n, n)
    eye = torch.eye(m, dtype=A.dtype, device=A.device)
    top = torch.cat([top_left, A.transpose(1, 2) @ D], 2)
    bottom = torch.cat([-A, eye - D], 2)
    return torch.cat([top, bottom], 1)


def solve_transposed(J: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """r with Jᵀ r = rhs per element; least squares (minimum norm) where J is singular."""
    lu, pivots, info = lu_factor(J)
    r = torch.linalg.lu_solve(lu, pivots, rhs.unsqueeze(-1), adjoint=True).squeeze(-1)
    bad = (info != 0) | ~torch.isfinite(r).all(1)
    if bool(bad.any()):
        fallback = torch.linalg.pinv(J[bad].transpose(1, 2)) @ rhs[bad].unsqueeze(-1)
        r[bad] = fallback.squeeze(-1)
    return r


class DenseAdjoint:
    """Backward "dense": batched LU of the residual map's Jacobian, quadratic objectives too."""

    name = "dense"
    supports_quadratic = True

    def check(self, structure: ConeStructure) -> None:
        ConeProjector(structure.cones)  # raises for cones without a torch derivative

    def vjp(
        self,
        program: ConeProgram,
        solution: Solution,
        dx: torch.Tensor,
        dy: torch.Tensor,
        ds: torch.Tensor,
        active: list[int],
    ):
        st = program.structure
        dA = program.A.new_zeros(program.A.shape)
        db = program.b.new_zeros(program.b.shape)
        dc = program.c.new_zeros(program.c.shape)
        dP = None if program.P is None else program.P.new_zeros(program.P.shape)
        if not active:
            return dA, db, dc, dP
        idx = torch.as_tensor(active, device=program.b.device)
        A, P = program.dense()
        A, P = A[idx], None if P is None else P[idx]
        x, y, s = solution.x[idx], solution.y[idx], solution.s[idx]
        D = ConeProjector(st.cones).jacobian(y - s, dual=True)
        rhs_v = (D.transpose(1, 2) @ (dy[idx] + ds[idx]).unsqueeze(-1)).squeeze(-1) - ds[idx]
        r = solve_transposed(residual_jacobian(A, P, D), torch.cat([dx[idx], rhs_v], 1))
        r_u, r_v = r[:, : st.n], r[:, st.n :]

        rows, cols = (torch.as_tensor(a, device=program.b.device) for a in st.a_coords())
        dA[idx] = r_v[:, rows] * x[:, cols] - y[:, rows] * r_u[:, cols]
        db[idx] = -r_v
        dc[idx] = -r_u
        if dP is not None:
            p_rows, p_cols = (torch.as_tensor(a, device=program.b.device) for a in st.p_coords())
            # an upper-triangle value stands for P_ij and P_ji: off-diagonal gradients double
            full = -(r_u[:, p_rows] * x[:, p_cols] + x[:, p_rows] * r_u[:, p_cols]) / 2
            dP[idx] = torch.where(p_rows == p_cols, full, 2 * full)
        return dA, db, dc, dP
