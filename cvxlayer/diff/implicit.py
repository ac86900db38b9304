"""One implicit-differentiation helper for every generic solver mode.

The forward runs any `Solver`; the backward asks an `Adjoint` for the vector-Jacobian
product of the solution map (A, b, c, P) ↦ (x, y, s) at the solution. The solver never knows
it is differentiated, and the adjoint never knows which solver ran (cf. jaxopt's
`custom_root`): a new solver mode or a new backward method plugs in without touching this.

Elements a first-order solver leaves unconverged are first finished by an interior point
(`finisher`); those still solved only inaccurately (a finite iterate, `Status.usable`) are
differentiated at their iterate, as diffcp does, with the layer's warning. The others
(infeasible, unbounded, failed) get a zero gradient, or NaN with `failed_gradient="nan"`
(they are only ever returned when the caller asked for per-element status; otherwise the
layer raises before any backward).
"""

from __future__ import annotations

from typing import Protocol

import torch

from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import Solution, Solver, SolveSettings, solve_with_retry


class Adjoint(Protocol):
    """A backward method: the adjoint of the cone program's solution map at a solution."""

    name: str
    supports_quadratic: bool  # can differentiate programs with a quadratic objective P

    def check(self, structure: ConeStructure) -> None:
        """Raise `NotImplementedError` if programs of this structure are not supported."""

    def vjp(
        self,
        program: ConeProgram,
        solution: Solution,
        dx: torch.Tensor,
        dy: torch.Tensor,
        ds: torch.Tensor,
        active: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(dA (B, nnz_A), db (B, m), dc (B, n), dP (B, nnz_P) or None) for the elements in
        `active`; the other rows are zero."""


class _ConeSolve(torch.autograd.Function):
    # The outputs go through save_for_backward, never onto ctx: an output held by its own
    # node would be a reference cycle through the autograd graph, which Python's garbage
    # collector cannot see, and every call's tensors would stay alive.
    @staticmethod
    def forward(ctx, A, b, c, P, structure, solver, settings, adjoint, warm_start, options):
        program = ConeProgram(structure, A, b, c, P).detach()
        finisher = options["finisher"]
        solution = solve_with_retry(solver, program, settings, warm_start, finisher)
        options["solution"] = solution
        ctx.program, ctx.adjoint = program, adjoint
        ctx.status, ctx.iterations = solution.status, solution.iterations
        ctx.failed_gradient = options["failed_gradient"]
        ctx.save_for_backward(solution.x, solution.y, solution.s)
        return solution.x, solution.y, solution.s

    @staticmethod
    def backward(ctx, dx, dy, ds):
        solution = Solution(*ctx.saved_tensors, ctx.status, ctx.iterations)
        active = [i for i, st in enumerate(solution.status) if st.usable]
        grads = ctx.adjoint.vjp(ctx.program, solution, dx, dy, ds, active)
        failed = [i for i, st in enumerate(solution.status) if not st.usable]
        if failed and ctx.failed_gradient == "nan":
            for g in grads:
                if g is not None:
                    g[failed] = float("nan")
        return (*grads, None, None, None, None, None, None)


def solve_and_differentiate(
    program: ConeProgram,
    solver: Solver,
    settings: SolveSettings,
    adjoint: Adjoint,
    warm_start: Solution | None = None,
    failed_gradient: str = "zero",
    finisher: Solver | None = None,
) -> Solution:
    """Solve a batch with `solver`; its x, y, s are differentiable w.r.t. the program's data.

    Args:
        program: cone data (B, …) whose tensors may require grad.
        solver: the forward mode.
        settings: forward settings.
        adjoint: the backward method (used only if a gradient is requested).
        warm_start: optional starting point for the solver.
        failed_gradient: "zero" or "nan": the gradient given to elements not solved.
        finisher: the solver that finishes elements `solver` leaves unconverged (an
            interior point after a first-order method; `solve_with_retry`), or None.

    Returns:
        The `Solution`, with x (B, n), y (B, m), s (B, m) attached to the autograd graph.
    """
    if failed_gradient not in ("zero", "nan"):
        raise ValueError(f"failed_gradient must be 'zero' or 'nan', got {failed_gradient!r}")
    options = {"failed_gradient": failed_gradient, "finisher": finisher}
    x, y, s = _ConeSolve.apply(
        program.A,
        program.b,
        program.c,
        program.P,
        program.structure,
        solver,
        settings,
        adjoint,
        warm_start,
        options,
    )
    solved = options["solution"]
    return Solution(x, y, s, solved.status, solved.iterations, solved.finished)
