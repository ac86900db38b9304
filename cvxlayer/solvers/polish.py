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
solution; the full step, else half or a quarter of it), at most `_STEPS` of them, and
not once its residuals are down to `_TOL`.
"""

from __future__ import annotations

import numpy as np
import torch

from cvxlayer.cones import composite_kernels as cone
from cvxlayer.cones.projections import ConeProjector
from cvxlayer.program import ConeProgram, SparseOps
from cvxlayer.solvers.elementwise import as_array, for_chunks

_STEPS = 3
_DAMPING = (1.0, 0.5, 0.25)  # step lengths tried in turn
_TOL = 1e-13  # residuals below this (relative to 1 + the data's and solution's sizes) stop
_CLIP = 1e8  # H's spectrum on nonsymmetric blocks is clipped into [1/δ, δ]
_SHIFT = 1e-12  # (relative) the move of s, y inside the symmetric cones for their scaling


def moreau_scaling(program: ConeProgram, y: torch.Tensor, s: torch.Tensor):
    """(U, L_inv) (B, count, 3, 3) of H = U Uᵀ = L_inv⁻¹L_inv⁻ᵀ on the exponential and power
    blocks, in row order: H = D⁻¹(I − D) for D = DΠ_{K*}(y − s), the linearization of
    Moreau's y = Π_{K*}(y − s), −s = Π_{K°}(y − s) (dy = D dv, ds = −(I − D) dv: the
    residual map's, exact at an exact solution), in closed form from bd K*'s curvature at
    y (`nonsymmetric_kernels.moreau_factors`), its eigenvalues clipped into [1/δ, δ]."""
    from cvxlayer.solvers import ipm_compiled

    lay, p = ipm_compiled.layout(program.structure.cones)
    y, s = (np.nan_to_num(as_array(t)[:, p:]) for t in (y, s))
    B, count = y.shape[0], lay.kinds.size
    U, L_inv = np.zeros((B, count, 3, 3)), np.zeros((B, count, 3, 3))
    cone.moreau_factors_each(lay, y, s, _CLIP, U, L_inv)  # ~0.2 µs a block: no threads
    return U, L_inv


def moved_inside(lay, p: int, s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (s, y) (B, m) moved inside the second-order and orthant blocks by
    ε = `_SHIFT` (1 + max |y − s|) along their identity e, so that their Nesterov–Todd
    scaling exists at boundary solutions and tends to the exact linearization's 0 and ∞."""
    e = np.zeros(s.shape[1])
    e[p + lay.starts[:-1]] = 1.0
    shift = _SHIFT * (1 + np.abs(np.nan_to_num(y - s)).max(1, initial=0.0, keepdims=True)) * e
    return s + shift, y + shift


def polish(
    program: ConeProgram, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, solved: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, s) after Newton steps from the `solved` elements' solutions (module docstring),
    shapes (B, n), (B, m), (B, m), the others returned as they are; and (B,) which elements
    it took to rounding (residuals below `_TOL`)."""
    from cvxlayer.solvers import ipm_compiled

    st = program.structure
    lay, p = ipm_compiled.layout(st.cones)
    pattern = ipm_compiled.structure_pattern(st)
    ops = SparseOps.of(st, program.b.device)
    projector = ConeProjector.of(st.cones)
    matrices = ipm_compiled.matrices(st, program.A, program.P)

    def state(x, v, rows):
        """(y, s, r₁, r₂, max residual) at (x, v) on the elements `rows` (B,) (bool); the
        others' entries are NaN, their residual inf."""
        index = rows.nonzero().flatten()
        part = program.select(index)
        y = projector.dual(v[index])
        s = y - v[index]
        r1 = ops.p(part.P, x[index]) + ops.at(part.A, y) + part.c
        r2 = ops.a(part.A, x[index]) + s - part.b
        error = torch.full_like(v[:, 0], float("inf"))
        error[index] = torch.maximum(r1.abs().amax(1), r2.abs().amax(1))
        out = [
            torch.full((len(v), t.shape[1]), float("nan"), dtype=v.dtype) for t in (y, s, r1, r2)
        ]
        for full, t in zip(out, (y, s, r1, r2)):
            full[index] = t
        return (*out, error)

    keep = solved.unsqueeze(1)
    x0, y0, s0 = x, y, s
    v = torch.where(keep, y - s, 0.0)
    x = torch.where(keep, x, 0.0)
    y_k, s_k, r1, r2, error = state(x, v, solved)
    size = [t.abs().amax(1) for t in (x, y_k, program.b, program.c)]
    enough = _TOL * (1 + torch.stack(size).amax(0))
    todo = solved & (error > enough)
    polished = solved & ~todo  # elements the Newton steps improved (or that needed none)
    for _ in range(_STEPS):
        index = todo.nonzero().flatten().tolist()
        if not index:
            break
        U, L_inv = moreau_scaling(program, y_k, s_k)
        s_in, y_in = moved_inside(lay, p, as_array(s_k), as_array(y_k))
        system = (*matrices, p, lay, pattern, s_in, y_in, U, L_inv)
        dx, dy, ok = _newton_direction(system, as_array(-r1), as_array(-r2), index)
        dx, dy, ok = (torch.as_tensor(t) for t in (dx, dy, ok))
        dx, dy = dx.to(x.dtype), dy.to(x.dtype)
        dv = dy + r2 + ops.a(program.A, dx)  # Δv = Δy − Δs, Δs = −r₂ − AΔx
        # the full step, else a damped one (near a kink of Π the full step can overshoot)
        better = torch.zeros_like(todo)
        progress = torch.zeros_like(error)
        for alpha in _DAMPING:
            trying = todo & ok & ~better
            if not bool(trying.any()):
                break
            x_new, v_new = x + alpha * dx, v + alpha * dv
            y_new, s_new, r1_new, r2_new, error_new = state(x_new, v_new, trying)
            take = trying & (error_new < error)
            taken = take.unsqueeze(1)
            x, v, y_k, s_k, r1, r2 = (
                torch.where(taken, new, old)
                for new, old in (
                    (x_new, x), (v_new, v), (y_new, y_k), (s_new, s_k), (r1_new, r1), (r2_new, r2)
                )
            )  # fmt: skip
            progress = torch.where(take, error_new / error, progress)
            error = torch.where(take, error_new, error)
            better |= take
        # a step that halved the residual may take another; one that did not, stops
        todo = better & (progress < 0.5) & (error > enough)
        polished |= better
    # the others keep the interior point's answer (its projection alone can be worse)
    keep = polished.unsqueeze(1)
    done = solved & (error <= enough)
    return torch.where(keep, x, x0), torch.where(keep, y_k, y0), torch.where(keep, s_k, s0), done


def _newton_direction(system: tuple, g1: np.ndarray, g2: np.ndarray, index: list[int]):
    """(Δx, Δy, ok) with [P Aᵀ; A −H][Δx; Δy] = [g1; g2] for the elements in `index`, by
    the compiled adjoint kernel (`system`: its arguments up to the right-hand side)."""
    from cvxlayer.solvers import ipm_compiled

    dx, dy, ok = np.zeros_like(g1), np.zeros_like(g2), np.zeros(len(g1), dtype=bool)
    zeros = np.zeros_like(g2)

    def run(chunk):
        ipm_compiled.adjoint_each(*system, g1, g2, zeros, dx, dy, chunk, ok)

    for_chunks(run, index)
    return dx, dy, ok
