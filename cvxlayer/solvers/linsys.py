"""Batched linear systems of the ADMM step: (R + M) z = w, M = [[P, Aᵀ], [−A, 0]].

With R = diag(r_x I, diag(r_y)), eliminating z_y gives the SPD system

    K z_x = w_x − Aᵀ R_y⁻¹ w_y,   K = r_x I + P + Aᵀ R_y⁻¹ A,      z_y = R_y⁻¹ (w_y + A z_x).

Strategies (`LINSYS`), each with `factor` (once per solve, again when R changes), `solve`
(every iteration; `warm` is a starting guess for z_x that only iterative methods use;
`precise` asks iterative methods for the best accuracy the dtype allows, for the solve
whose result every iteration reuses) and `select` (drop finished batch elements):
  "cholesky"  batched Cholesky of K (n × n), two triangular solves per iteration;
  "lu"        batched LU of the full (n + m) × (n + m) matrix R + M;
  "cg"        batched conjugate gradients on K, matrix-free on the sparse data (memory
              O(B · nnz)), Jacobi-preconditioned, warm-started, each element stopping on its
              own residual.
The data come as values on the shared sparsity pattern (`SparseOps`): A (B, nnz_A), P
(B, nnz_P) or None; r_x scalar, r_y (B, m), w_x (B, n), w_y (B, m). The direct methods
form their dense matrices from them.
"""

from __future__ import annotations

import torch

from cvxlayer.linalg import lu_factor
from cvxlayer.program import SparseOps


class _Data:
    def factor(self, ops: SparseOps, A, P, r_x, r_y) -> None:
        self.ops, self.A, self.P, self.r_x, self.r_y = ops, A, P, r_x, r_y

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the batch elements in `keep` (indices)."""
        self.A, self.r_y = self.A[keep], self.r_y[keep]
        if self.P is not None:
            self.P = self.P[keep]

    def _reduced_rhs(self, w_x, w_y):
        return w_x - self.ops.at(self.A, w_y / self.r_y)

    def _recover_y(self, w_y, z_x):
        return (w_y + self.ops.a(self.A, z_x)) / self.r_y


class CholeskySystem(_Data):
    """Direct: K = L Lᵀ once, then two batched triangular solves per iteration."""

    name = "cholesky"

    def factor(self, ops, A, P, r_x, r_y) -> None:
        super().factor(ops, A, P, r_x, r_y)
        A_d, P_d = ops.dense(A, P)
        K = A_d.transpose(1, 2) @ (A_d / r_y.unsqueeze(-1))
        if P_d is not None:
            K = K + P_d
        K = K + r_x * torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
        self.L = torch.linalg.cholesky(K)

    def select(self, keep) -> None:
        super().select(keep)
        self.L = self.L[keep]

    def solve(self, w_x, w_y, warm=None, precise=False):
        rhs = self._reduced_rhs(w_x, w_y)
        z_x = torch.cholesky_solve(rhs.unsqueeze(-1), self.L).squeeze(-1)
        return z_x, self._recover_y(w_y, z_x)


class LUSystem(_Data):
    """Direct: batched LU of the full quasi-definite matrix [[r_x I + P, Aᵀ], [−A, R_y]]."""

    name = "lu"

    def factor(self, ops, A, P, r_x, r_y) -> None:
        super().factor(ops, A, P, r_x, r_y)
        A_d, P_d = ops.dense(A, P)
        B, m, n = A_d.shape
        eye = torch.eye(n, dtype=A.dtype, device=A.device)
        top_left = r_x * eye + (P_d if P_d is not None else 0)
        full = torch.cat(
            [
                torch.cat([top_left.expand(B, n, n), A_d.transpose(1, 2)], dim=2),
                torch.cat([-A_d, torch.diag_embed(r_y)], dim=2),
            ],
            dim=1,
        )
        self.lu, self.pivots, _ = lu_factor(full)
        self.n = n

    def select(self, keep) -> None:
        super().select(keep)
        self.lu, self.pivots = self.lu[keep], self.pivots[keep]

    def solve(self, w_x, w_y, warm=None, precise=False):
        z = torch.linalg.lu_solve(self.lu, self.pivots, torch.cat([w_x, w_y], 1).unsqueeze(-1))
        z = z.squeeze(-1)
        return z[:, : self.n], z[:, self.n :]


class CGSystem(_Data):
    """Indirect: batched conjugate gradients on K z_x = rhs, matrix-free, warm-started.

    Args:
        rel_tol: stop an element when ‖residual‖ ≤ rel_tol · ‖rhs‖.
        max_iters: CG iteration cap per solve (default: 10 n + 10; ill-conditioned K needs more
            than n steps in floating point).
    """

    name = "cg"

    def __init__(self, rel_tol: float = 1e-10, max_iters: int | None = None) -> None:
        self.rel_tol = rel_tol
        self.max_iters = max_iters

    def factor(self, ops, A, P, r_x, r_y) -> None:
        super().factor(ops, A, P, r_x, r_y)
        # Jacobi preconditioner: diag(K)
        self.diag = r_x + ops.weighted_column_norms(A, 1 / r_y)
        if P is not None:
            self.diag = self.diag + ops.p_diagonal(P)

    def select(self, keep) -> None:
        super().select(keep)
        self.diag = self.diag[keep]

    def _matvec(self, v):
        ops = self.ops
        out = self.r_x * v + ops.at(self.A, ops.a(self.A, v) / self.r_y)
        return out if self.P is None else out + ops.p(self.P, v)

    def solve(self, w_x, w_y, warm: torch.Tensor | None = None, precise: bool = False):
        rhs = self._reduced_rhs(w_x, w_y)
        x = torch.zeros_like(rhs) if warm is None else warm
        r = rhs - self._matvec(x)
        z = r / self.diag
        p = z
        rz = (r * z).sum(1, keepdim=True)
        # precise: g = (R + M)⁻¹ h enters every iteration, and its error moves ADMM's fixed
        # point (1e-10 there took T5-soc from 140 to > 2000 iterations)
        rel_tol = 100 * torch.finfo(rhs.dtype).eps if precise else self.rel_tol
        tol = rel_tol * rhs.norm(dim=1, keepdim=True).clamp(min=1e-30)
        for _ in range(self.max_iters or 10 * rhs.shape[1] + 10):
            active = r.norm(dim=1, keepdim=True) > tol
            if not bool(active.any()):
                break
            Kp = self._matvec(p)
            pKp = (p * Kp).sum(1, keepdim=True)
            step = torch.where(active, rz / pKp.clamp(min=1e-300), torch.zeros_like(rz))
            x = x + step * p
            r = r - step * Kp
            z = r / self.diag
            rz_new = (r * z).sum(1, keepdim=True)
            p = z + (rz_new / rz.clamp(min=1e-300)) * p
            rz = rz_new
        return x, self._recover_y(w_y, x)


LINSYS = {cls.name: cls for cls in (CholeskySystem, LUSystem, CGSystem)}


# linsys="auto": Cholesky while the dense matrices it forms, B · n · (n + m) numbers for A
# and K, stay below this (0.8 GB in float64); matrix-free CG on the sparse data above.
DENSE_LINSYS_LIMIT = 100_000_000


def make_linsys(name: str, batch: int, n: int, m: int):
    """A fresh linear-system strategy by name ("auto", "cholesky", "lu", "cg") for a batch of
    `batch` programs with n variables and m cone rows."""
    if name == "auto":
        name = "cholesky" if batch * n * (n + m) <= DENSE_LINSYS_LIMIT else "cg"
    if name not in LINSYS:
        raise ValueError(f"unknown linsys {name!r}; available: {sorted(LINSYS) + ['auto']}")
    return LINSYS[name]()
