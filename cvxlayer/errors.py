"""Exceptions raised by cvxlayer."""

from __future__ import annotations

import diffcp


class SolverError(diffcp.SolverError):
    """A batch element was not solved accurately (infeasible, unbounded, inaccurate, …).

    A subclass of `diffcp.SolverError`, so code written for cvxpylayers catches it unchanged.

    Attributes:
        status: per-element status strings of the whole batch.
        failed: indices of the elements that were not solved.
    """

    def __init__(self, message: str, status: tuple[str, ...], failed: list[int]) -> None:
        super().__init__(message)
        self.status = status
        self.failed = failed
