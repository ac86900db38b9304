"""Backward "kkt": the adjoint through the interior point's own KKT system (OptNet's way),
at solutions that lie strictly inside the cones (interior-point solutions: modes "ipm",
"ipm-torch", "clarabel").

At such a solution, with H = WᵀW the Nesterov–Todd scaling at (s, y) (H = 0 on the zero
cone's rows), the optimality conditions linearize as

    P dx + Aᵀ dy = −(dP x + dAᵀ y + dc),    A dx − H dy = db − dA x,    ds = −H dy,

the same system the interior point factors. For a loss with gradients (gx, gy, gs) solve
[[P, Aᵀ], [A, −H]] [u; v] = [gx; gy − H gs]; then

    dc = −u,   db = v,   dA = −(y uᵀ + v xᵀ),   dP = −½ (u xᵀ + x uᵀ).

As the interior point's μ → 0 this is the derivative of the solution map wherever that is
differentiable (strict complementarity); at μ ~ 1e-13 (the ipm modes aim at eps²) the two
agree to ~1e-7 relative or better. Each element is factored once by Cholesky of
P + A_cᵀH⁻¹A_c (n × n, the equality rows through its Schur complement) in the compiled
engine (`ipm_compiled.adjoint_one`), per element over the kept thread pool, instead of the
residual map's (n + m)² LU. Programs with other cones, and solutions on the boundary of
the cones (first-order modes, fast paths), use the residual map (`dense.py`).
"""

from __future__ import annotations

import numpy as np
import torch

from cvxlayer.cones.projections import ConeProjector
from cvxlayer.diff.dense import ResidualMapAdjoint
from cvxlayer.program import ConeProgram, ConeStructure, SparseOps
from cvxlayer.solvers.base import Solution
from cvxlayer.solvers.elementwise import as_array, for_each


class KKTAdjoint:
    """Backward "kkt" (and what "auto" uses where it applies; module docstring)."""

    supports_quadratic = True

    def __init__(self, name: str = "kkt", fallback: str = "auto") -> None:
        self.name = name
        self.fallback = ResidualMapAdjoint(fallback)

    def check(self, structure: ConeStructure) -> None:
        self.fallback.check(structure)

    def vjp(
        self,
        program: ConeProgram,
        solution: Solution,
        dx: torch.Tensor,
        dy: torch.Tensor,
        ds: torch.Tensor,
        active: list[int],
    ):
        engine = _engine(program)
        if engine is None or not active:
            return self.fallback.vjp(program, solution, dx, dy, ds, active)
        ipm_compiled, lay, p = engine
        st = program.structure
        ops = SparseOps.of(st, program.b.device)
        A_dense, P_dense = ops.dense(program.A, program.P)

        A = as_array(A_dense)
        P = np.zeros((A.shape[0], st.n, st.n)) if P_dense is None else as_array(P_dense)
        x, s, y = (as_array(t) for t in (solution.x, solution.s, solution.y))
        inside = [i for i in active if ipm_compiled.interior(lay, s[i], y[i], p)]
        gx, gy, gs = (as_array(t) for t in (dx, dy, ds))
        U, L_inv = _nonsymmetric_scaling(program, solution)
        pat = ipm_compiled.structure_pattern(st)
        u, v = np.zeros_like(x), np.zeros_like(y)
        ok = np.zeros(len(x), dtype=bool)

        def run(i):
            ok[i] = ipm_compiled.adjoint_one(
                P[i], A[i], p, lay, pat, s[i], y[i], U[i], L_inv[i], gx[i], gy[i], gs[i], u[i], v[i]
            )

        for_each(run, inside)
        # elements on the cones' boundary, or whose factorization failed: the residual map
        rest = [i for i in active if not ok[i]]
        u[rest], v[rest] = 0.0, 0.0
        grads = self._gradients(program, solution, ops, u, v)
        if rest:
            others = self.fallback.vjp(program, solution, dx, dy, ds, rest)
            grads = tuple(None if g is None else g + h for g, h in zip(grads, others))
        return grads

    @staticmethod
    def _gradients(program: ConeProgram, solution: Solution, ops: SparseOps, u, v):
        """(dA, db, dc, dP) from the adjoint solution (u, v) (module docstring)."""
        # u, v are 0 for elements not differentiated here, whose x, y may be NaN: gradients 0
        u, v = (torch.as_tensor(t, dtype=program.b.dtype) for t in (u, v))
        x, y = (torch.nan_to_num(t.detach()) for t in (solution.x, solution.y))
        rows, cols = ops.a_rows, ops.a_cols
        grads = [-(y[:, rows] * u[:, cols] + v[:, rows] * x[:, cols]), v, -u]
        if program.P is not None:
            # an upper-triangle value stands for P_ij and P_ji: off-diagonal gradients double
            full = -(u[:, ops.p_rows] * x[:, ops.p_cols] + x[:, ops.p_rows] * u[:, ops.p_cols])
            grads.append(torch.where(ops.p_on_diagonal, full / 2, full))
        else:
            grads.append(None)
        return tuple(grads)


_CLIP = 1e8  # H's spectrum on nonsymmetric blocks is clipped into [1/δ, δ]
_NONSYMMETRIC = ("exp", "power")


def _nonsymmetric_scaling(program: ConeProgram, solution: Solution):
    """(U, L_inv) (B, count, 3, 3) of H = U Uᵀ = L_inv⁻¹L_inv⁻ᵀ on the exponential and power
    blocks, in row order: H = D⁻¹(I − D) for D = DΠ_{K*}(y − s), the linearization of
    Moreau's y = Π_{K*}(y − s), −s = Π_{K°}(y − s) (dy = D dv, ds = −(I − D) dv: the
    residual map's, exact at an exact solution), its eigenvalues (1 − d)/d clipped into
    [1/δ, δ] (d = 0: a row where y is fixed, H = ∞; d = 1: s fixed, H = 0)."""
    B = program.batch_size
    projector = ConeProjector.of(program.structure.cones)
    v = torch.nan_to_num((solution.y - solution.s).detach())
    firsts, blocks = [], []
    for group in projector.groups:
        if group.family in _NONSYMMETRIC:
            rows = group.rows.to(v.device)
            firsts.append(rows[:, 0])
            blocks.append(group.jacobian(v[:, rows], dual=True))
    if not blocks:
        empty = np.zeros((B, 0, 3, 3))
        return empty, empty
    order = torch.argsort(torch.cat(firsts))
    D = torch.cat(blocks, 1)[:, order]
    d, V = torch.linalg.eigh((D + D.transpose(-1, -2)) / 2)
    tiny = torch.finfo(d.dtype).tiny
    h = ((1 - d) / d.clamp(min=tiny)).clamp(1 / _CLIP, _CLIP)
    root = h.sqrt().unsqueeze(-2)
    return as_array(V * root), as_array((V / root).transpose(-1, -2))


def _engine(program: ConeProgram):
    """(the compiled engine's module, cone blocks, equality rows) for CPU programs whose
    cones it handles; None otherwise."""
    from cvxlayer.solvers import ipm

    cones = program.structure.cones
    if program.b.device.type != "cpu" or not ipm.compiled_engine_supports(cones):
        return None
    compiled = ipm._compiled_engine()
    return (compiled, *compiled.layout(cones))
