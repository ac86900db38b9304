"""Polishing interior-point solutions of programs with exponential or power cones: Newton
steps on Moreau's form of the optimality conditions, from the interior point's answer.

An interior point stops at μ > 0. On these cones rounding stalls it near μ ~ 1e-10, where
its x can still be ~1e-6 off (a one-variable geometric program: 2.6e-6 relative at any
eps; Clarabel 5e-6). With v = y − s the conditions are, exactly (Moreau: y ⟂ s),

    y = Π_{K*}(v),  s = y − v,  r₁ = Px + Aᵀy + c = 0,  r₂ = Ax + s − b = 0,

and their linearization with D = DΠ_{K*}(v), dy = D dv, ds = (D − I) dv is

    [P  Aᵀ] [Δx]     [r₁]
    [A −H ] [Δy] = − [r₂],   H = D⁻¹(I − D),   then Δs = −r₂ − AΔx,  Δv = Δy − Δs:

the backward "kkt"'s system, solved by the same kernel (`ipm_compiled.adjoint_one`; on
second-order and orthant rows with the Nesterov–Todd scaling at (s, y) moved inside the
cones by ε, which tends to the same limits). Each element takes a step only while it
lowers max(‖r₁‖∞, ‖r₂‖∞) (semismooth Newton: quadratic near a strictly complementary
solution; the full step, else half or a quarter of it), at most three of them, and not
once its residuals are down to 1e-13 relative (`polish_kernels`' `_STEPS`, `_TOL`). Each
element's steps are one compiled call (`polish_kernels.polish_one`) over the kept thread
pool.
"""

from __future__ import annotations

import numpy as np
import torch

from cvxlayer.cones import composite_kernels as cone
from cvxlayer.program import ConeProgram
from cvxlayer.solvers.elementwise import as_array, for_chunks


def moreau_scaling(program: ConeProgram, y: torch.Tensor, s: torch.Tensor):
    """(U, L_inv) (B, count, 3, 3) of H = U Uᵀ = L_inv⁻¹L_inv⁻ᵀ on the exponential and power
    blocks, in row order: H = D⁻¹(I − D) for D = DΠ_{K*}(y − s), the linearization of
    Moreau's y = Π_{K*}(y − s), −s = Π_{K°}(y − s) (dy = D dv, ds = −(I − D) dv: the
    residual map's, exact at an exact solution), in closed form from bd K*'s curvature at
    y (`nonsymmetric_kernels.moreau_factors`), its eigenvalues clipped into [1/δ, δ]."""
    from cvxlayer.solvers import ipm_compiled, polish_kernels

    lay, p = ipm_compiled.layout(program.structure.cones)
    y, s = (np.nan_to_num(as_array(t)[:, p:]) for t in (y, s))
    B, count = y.shape[0], lay.kinds.size
    U, L_inv = np.zeros((B, count, 3, 3)), np.zeros((B, count, 3, 3))
    cone.moreau_factors_each(
        lay, y, s, polish_kernels._CLIP, U, L_inv
    )  # ~0.2 µs a block: no threads
    return U, L_inv


def moved_inside(lay, p: int, s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (s, y) (B, m) moved inside the second-order and orthant blocks
    (`polish_kernels.moved_inside`)."""
    from cvxlayer.solvers import polish_kernels

    s, y = np.nan_to_num(s), np.nan_to_num(y)
    s_in, y_in = np.empty_like(s), np.empty_like(y)
    polish_kernels.moved_inside_each(lay, p, s, y, s_in, y_in)
    return s_in, y_in


def polish(
    program: ConeProgram, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, solved: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, s) after Newton steps from the `solved` elements' solutions (module docstring),
    shapes (B, n), (B, m), (B, m), the others returned as they are; and (B,) which elements
    it took to rounding (residuals below `polish_kernels._TOL`)."""
    from cvxlayer.cones import exp
    from cvxlayer.solvers import ipm_compiled, polish_kernels

    st = program.structure
    lay, p = ipm_compiled.layout(st.cones)
    matrices = ipm_compiled.matrices(st, program.A, program.P)
    pattern, lifted = ipm_compiled.structure_pattern(st), ipm_compiled.lifted_columns(st)
    b, c = as_array(program.b), as_array(program.c)
    xs, ys, ss = (as_array(t).copy() for t in (x, y, s))
    done = np.zeros(len(xs), dtype=bool)

    def run(chunk):
        polish_kernels.polish_each(
            *matrices, b, c, p, lay, pattern, lifted, exp._TOL, xs, ys, ss, chunk, done
        )

    for_chunks(run, solved.nonzero().flatten().tolist())
    out = (torch.as_tensor(t, dtype=x.dtype) for t in (xs, ys, ss))
    return (*out, torch.as_tensor(done))
