"""Backward "kkt": the adjoint through the interior point's own KKT system (OptNet's way),
at interior-point solutions (modes "ipm", "ipm-torch", "clarabel").

At such a solution, with H = WᵀW the Nesterov–Todd scaling at (s, y) (H = 0 on the zero
cone's rows), the optimality conditions linearize as

    P dx + Aᵀ dy = −(dP x + dAᵀ y + dc),    A dx − H dy = db − dA x,    ds = −H dy,

the same system the interior point factors. For a loss with gradients (gx, gy, gs) solve
[[P, Aᵀ], [A, −H]] [u; v] = [gx; gy − H gs]; then

    dc = −u,   db = v,   dA = −(y uᵀ + v xᵀ),   dP = −½ (u xᵀ + x uᵀ).

As the interior point's μ → 0 this is the derivative of the solution map wherever that is
differentiable (strict complementarity); at μ ~ 1e-13 (the ipm modes aim at eps²) the two
agree to ~1e-7 relative or better. On exponential and power cones H = D⁻¹(I − D) with
D = DΠ_{K*}(y − s), the residual map's own linearization (`polish.moreau_scaling`), valid
on the boundary too: such programs' solutions are polished onto it, and their second-order
and orthant rows are moved inside by ε for their scaling (`polish.moved_inside`). PSD
blocks take the same linearization in the eigenbasis of Y − S
(`psd_kernels.adjoint_scaling`), so programs with PSD cones go this way from any solver's
solution, native SCS's included. Each element is factored once in the compiled engine
(`ipm_compiled.adjoint_one`: the sparse LDLᵀ of K where it pays, else Cholesky of
P + A_cᵀH⁻¹A_c after eliminating the lifted variables, as the forward does), over the kept
thread pool, instead of the residual map's (n + m)² LU. Programs with other cones, and
elements on the boundary of second-order or orthant cones of programs without nonsymmetric
or PSD ones (first-order modes, fast paths), use the residual map (`dense.py`).
"""

from __future__ import annotations

import numpy as np
import torch

from cvxlayer.diff.dense import ResidualMapAdjoint
from cvxlayer.program import ConeProgram, ConeStructure, SparseOps
from cvxlayer.solvers.base import Solution
from cvxlayer.solvers.elementwise import as_array, for_chunks
from cvxlayer.solvers.polish import moreau_scaling, moved_inside


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
        x, s, y = (as_array(t) for t in (solution.x, solution.s, solution.y))
        if lay.kinds.size or program.structure.cones.psd:
            # exponential, power or PSD cones: their H is exact on the boundary too
            s, y = moved_inside(lay, p, s, y)
            inside = active
        else:
            inside = [i for i in active if ipm_compiled.interior(lay, s[i], y[i], p)]
        if not inside:  # e.g. a first-order solver's solutions, on the cones' boundary
            return self.fallback.vjp(program, solution, dx, dy, ds, active)
        st = program.structure
        ops = SparseOps.of(st, program.b.device)
        P, A, a_vals, p_vals = ipm_compiled.matrices(st, program.A, program.P)
        gx, gy, gs = (as_array(t) for t in (dx, dy, ds))
        U, L_inv = moreau_scaling(program, solution.y, solution.s)
        pat, lifted = ipm_compiled.structure_pattern(st), ipm_compiled.lifted_columns(st)
        u, v = np.zeros_like(x), np.zeros_like(y)
        ok = np.zeros(len(x), dtype=bool)

        def run(chunk):
            ipm_compiled.adjoint_each(
                P, A, a_vals, p_vals, p, lay, pat, lifted, s, y, U, L_inv, gx, gy, gs, u, v,
                chunk, ok,
            )  # fmt: skip

        for_chunks(run, inside)
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


def _engine(program: ConeProgram):
    """(the compiled engine's module, cone blocks, equality rows) for CPU programs whose
    cones it handles; None otherwise."""
    from cvxlayer.solvers import ipm

    cones = program.structure.cones
    if program.b.device.type != "cpu" or not ipm.compiled_engine_supports(cones):
        return None
    compiled = ipm._compiled_engine()
    return (compiled, *compiled.layout(cones))
