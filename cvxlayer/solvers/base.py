"""What every solver mode shares: settings, per-element status, the solution, the protocol."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

import torch

from cvxlayer.program import ConeProgram


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

    @property
    def ok(self) -> bool:
        """True only for an accurate solution."""
        return self is Status.SOLVED


@dataclass(frozen=True)
class SolveSettings:
    """Settings of the generic cone solvers (the keys of `solver_args` they understand).

    Attributes:
        eps_abs, eps_rel: absolute / relative tolerance on the primal, dual residuals and gap.
        eps_infeas: tolerance of infeasibility / unboundedness certificates.
        max_iters: iteration limit per solve.
        acceleration_lookback: Anderson acceleration memory (0 turns it off).
        verbose: print the solver's progress.
        extra: further native SCS settings (e.g. `normalize`, `scale`, `alpha`), passed as is
            to the native SCS modes.
    """

    eps_abs: float = 1e-6
    eps_rel: float = 1e-6
    eps_infeas: float = 1e-7
    max_iters: int = 100_000
    acceleration_lookback: int = 10
    verbose: bool = False
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Solution:
    """Primal-dual solutions of a batch of B cone programs (SCS form).

    Attributes:
        x: (B, n) primal variables.
        y: (B, m) dual variables, y ∈ K*.
        s: (B, m) primal slacks, s ∈ K.
        status: per-element `Status`.
        iterations: (B,) iteration counts.
    """

    x: torch.Tensor
    y: torch.Tensor
    s: torch.Tensor
    status: tuple[Status, ...]
    iterations: torch.Tensor


class Solver(Protocol):
    """A batched cone-program solver: one mode of the layer's forward pass.

    Implementations return tensors on the program's device and dtype and never raise for
    an infeasible or inaccurate element: they report it in `Solution.status`.
    """

    name: str

    def solve(
        self, program: ConeProgram, settings: SolveSettings, warm_start: Solution | None = None
    ) -> Solution: ...
