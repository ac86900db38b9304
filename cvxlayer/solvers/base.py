"""What every solver mode shares: settings, per-element status, the solution, the protocol."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from cvxlayer.linalg import finite_rows, inf_norm
from cvxlayer.program import ConeProgram, SparseOps

# Tolerances below this are raised to it for float32 data: its rounding error is ~1e-7
# relative, and residuals on ill-conditioned data stall orders of magnitude above it.
FLOAT32_EPS_FLOOR = 1e-4


def floor_tolerance(eps: float, dtype: torch.dtype) -> float:
    """`eps`, raised to `FLOAT32_EPS_FLOOR` for float32 data."""
    return max(eps, FLOAT32_EPS_FLOOR) if dtype == torch.float32 else eps


class Status(str, enum.Enum):
    """Outcome of one batch element's solve."""

    SOLVED = "solved"
    SOLVED_INACCURATE = "solved_inaccurate"
    INFEASIBLE = "infeasible"
    INFEASIBLE_INACCURATE = "infeasible_inaccurate"
    UNBOUNDED = "unbounded"
    UNBOUNDED_INACCURATE = "unbounded_inaccurate"
    MAX_ITERS = "max_iters"
    FAILURE = "failure"
    INVALID_INPUT = "invalid_input"  # NaN/inf (or, in a GP, a nonpositive value): not solved

    @property
    def ok(self) -> bool:
        """True only for an accurate solution."""
        return self is Status.SOLVED

    @property
    def usable(self) -> bool:
        """An accurate solution, or an inaccurate one with a finite iterate, which is
        returned (with a warning) and differentiated, as cvxpylayers (diffcp) does."""
        return self in _USABLE


_USABLE = (Status.SOLVED, Status.SOLVED_INACCURATE, Status.MAX_ITERS)


@dataclass(frozen=True)
class SolveSettings:
    """Settings of the generic cone solvers (the keys of `solver_args`), SCS's names and meaning.

    Attributes:
        eps_abs, eps_rel: absolute / relative tolerance on the primal, dual residuals and gap.
        eps_infeas: tolerance of infeasibility / unboundedness certificates.
        max_iters: iteration limit per solve.
        acceleration_lookback: Anderson acceleration memory (0 turns it off).
        acceleration_interval: iterations between Anderson steps.
        verbose: print the solver's progress.
        scale: initial dual scale (R_y = 1/scale), adapted during the solve if
            `adaptive_scale`.
        adaptive_scale: adapt `scale` to balance primal and dual residuals.
        rho_x: primal regularization R_x.
        alpha: Douglas-Rachford relaxation in (0, 2).
        normalize: Ruiz equilibration of the data before solving.
        linsys: linear systems of the "torch" mode: "auto" (Cholesky while its dense
            matrices are small, else CG), "cholesky", "lu" or "cg" (the native SCS modes map
            "cg" to SCS's indirect solver, the others to its direct one).
        time_limit_secs: wall-clock limit per native SCS solve (0: none).
        threads: worker threads of mode "scs" (one element per thread at a time); -1: as
            many as torch uses (`torch.get_num_threads()`).
        reuse_setup: mode "scs", where every element of the batch has the same A and P
            (only b and c depend on batched parameters): set SCS up once per thread and
            only update b and c between elements (SCS's `update`). Up to 2× faster on such
            batches (T5a), but SCS's adapted scale then passes from one element to the
            next, so an element's answer depends on its neighbours at the solver's
            tolerance (and on the thread count); off by default.
    """

    eps_abs: float = 1e-6
    eps_rel: float = 1e-6
    eps_infeas: float = 1e-7
    max_iters: int = 100_000
    acceleration_lookback: int = 10
    acceleration_interval: int = 10
    verbose: bool = False
    scale: float = 0.1
    adaptive_scale: bool = True
    rho_x: float = 1e-6
    alpha: float = 1.5
    normalize: bool = True
    linsys: str = "auto"
    time_limit_secs: float = 0.0
    threads: int = -1
    reuse_setup: bool = False


@dataclass(frozen=True, eq=False)
class Solution:
    """Primal-dual solutions of a batch of B cone programs (SCS form).

    Attributes:
        x: (B, n) primal variables.
        y: (B, m) dual variables, y ∈ K*.
        s: (B, m) primal slacks, s ∈ K.
        status: per-element `Status`.
        iterations: (B,) iteration counts.
        finished: per element, whether a first-order solve left it unconverged and an
            interior point finished it (`solve_with_retry`); None: none was.
    """

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor
    status: tuple[Status, ...]
    iterations: torch.Tensor
    finished: tuple[bool, ...] | None = None

    def finished_flags(self) -> tuple[bool, ...]:
        return self.finished or (False,) * len(self.status)


def select_rows(solution: Solution, index: torch.Tensor) -> Solution:
    """The solution of the elements at `index` (B',)."""
    rows = index.tolist()
    flags = solution.finished_flags()
    return Solution(
        solution.x[index],
        solution.y[index],
        solution.s[index],
        tuple(solution.status[i] for i in rows),
        solution.iterations[index.cpu()],
        tuple(flags[i] for i in rows),
    )


class Solver(Protocol):
    """A batched cone-program solver: one mode of the layer's forward pass.

    Implementations return tensors on the program's device and dtype and never raise for
    an infeasible or inaccurate element: they report it in `Solution.status`.
    """

    name: str

    def solve(
        self, program: ConeProgram, settings: SolveSettings, warm_start: Solution | None = None
    ) -> Solution: ...


# an element "solved" by a first-order method whose residuals exceed its tolerance by more
# than this factor is no solution (SCS checks the unscaled residuals itself: only a wrong
# report or a returned non-converged iterate exceeds it)
RESIDUAL_SLACK = 10.0


def violates_tolerance(program: ConeProgram, solution: Solution, settings: SolveSettings):
    """(B,) bool: the primal or dual residual of (x, y, s) exceeds `RESIDUAL_SLACK` times
    SCS's tolerance, ‖Ax + s − b‖∞ > eps_abs + eps_rel·max(‖Ax‖∞, ‖s‖∞, ‖b‖∞) (and
    ‖Px + Aᵀy + c‖∞ likewise); NaN counts as exceeding. On the CPU by the compiled twin
    (`residual_kernels`) where numba loads."""
    if program.b.device.type == "cpu":
        from cvxlayer.solvers import ipm  # ipm imports this module

        if ipm._compiled_engine() is not None:
            from cvxlayer.solvers import residual_kernels

            solved = (solution.x, solution.y, solution.s)
            return residual_kernels.violates_tolerance(
                program, solved, settings.eps_abs, settings.eps_rel, RESIDUAL_SLACK
            )
    ops = SparseOps.of(program.structure, program.b.device)
    x, y, s = solution.x, solution.y, solution.s
    Ax, Aty, Px = ops.a(program.A, x), ops.at(program.A, y), ops.p(program.P, x)

    def exceeds(residual, *parts):
        scale = inf_norm(torch.cat(parts, 1))  # the largest of the parts' ∞-norms
        bound = RESIDUAL_SLACK * (settings.eps_abs + settings.eps_rel * scale)
        return ~(inf_norm(residual) <= bound)

    primal = exceeds(Ax + s - program.b, Ax, s, program.b)
    dual = exceeds(Px + Aty + program.c, Px, Aty, program.c)
    return primal | dual


def solve_with_retry(
    solver: Solver,
    program: ConeProgram,
    settings: SolveSettings,
    warm_start: Solution | None = None,
    finisher: Solver | None = None,
) -> Solution:
    """`solver.solve`, with diffcp's policy for inaccurate elements: those are solved once
    more without Anderson acceleration (sometimes unstable), and the retry's answer is kept
    where it is accurate. Then, with a `finisher` (an interior point, for first-order
    solvers), elements still inaccurate, or "solved" with residuals beyond the tolerance,
    are solved by it, and its answer kept where it is accurate: a gradient is taken at a
    solution, not at an unconverged iterate. An iterate with NaN or inf is a failure,
    whatever the solver said.
    """
    solution = solver.solve(program, settings, warm_start)
    inaccurate = [i for i, st in enumerate(solution.status) if st.usable and not st.ok]
    if inaccurate and settings.acceleration_lookback != 0:
        index = torch.tensor(inaccurate, device=program.b.device)
        warm = None if warm_start is None else select_rows(warm_start, index)
        again = solver.solve(
            program.select(index), replace(settings, acceleration_lookback=0), warm
        )
        solution = _keep_accurate(solution, index, again)
    if finisher is not None:
        usable = torch.tensor([st.usable for st in solution.status], device=program.b.device)
        ok = torch.tensor([st.ok for st in solution.status], device=program.b.device)
        suspect = usable & (~ok | violates_tolerance(program, solution, settings))
        if bool(suspect.any()):
            index = suspect.nonzero().flatten()
            again = finisher.solve(program.select(index), settings)
            again = replace(again, finished=(True,) * len(again.status))
            solution = _keep_accurate(solution, index, again)
    finite = finite_rows(torch.cat([solution.x, solution.y, solution.s], 1))
    if not all(finite):
        status = tuple(
            st if ok or not st.usable else Status.FAILURE for st, ok in zip(solution.status, finite)
        )
        solution = replace(solution, status=status)
    return solution


def _keep_accurate(solution: Solution, index: torch.Tensor, again: Solution) -> Solution:
    """`solution` with its rows at `index` replaced by `again`'s where `again` is accurate."""
    better = [k for k, st in enumerate(again.status) if st.ok]
    if not better:
        return solution
    return put_rows(solution, index[better], select_rows(again, torch.tensor(better)))


def put_rows(base: Solution, index: torch.Tensor, part: Solution) -> Solution:
    """`base` with its rows at `index` replaced by `part`'s (differentiably); their status
    and finished flags become `part`'s and their iteration counts add up."""
    status, finished = list(base.status), list(base.finished_flags())
    part_finished = part.finished_flags()
    iterations = base.iterations.clone()
    for k, i in enumerate(index.tolist()):
        status[i], finished[i] = part.status[k], part_finished[k]
        iterations[i] += part.iterations[k]
    return Solution(
        *(
            full.index_put((index,), rows)
            for full, rows in ((base.x, part.x), (base.y, part.y), (base.s, part.s))
        ),
        tuple(status),
        iterations,
        tuple(finished),
    )
