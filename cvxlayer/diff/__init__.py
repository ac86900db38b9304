"""Backward stage: implicit differentiation of the cone program, with pluggable adjoints."""

from cvxlayer.diff.dense import DenseAdjoint
from cvxlayer.diff.diffcp_backend import DiffcpAdjoint
from cvxlayer.diff.implicit import Adjoint, solve_and_differentiate

ADJOINTS: dict[str, type] = {DenseAdjoint.name: DenseAdjoint, DiffcpAdjoint.name: DiffcpAdjoint}
DEFAULT_ADJOINT = DenseAdjoint.name


def get_adjoint(name: str) -> Adjoint:
    """The backward method of a name ("diffcp"; "auto" picks the default)."""
    if name == "auto":
        name = DEFAULT_ADJOINT
    if name not in ADJOINTS:
        raise ValueError(f"unknown backward {name!r}; available: {sorted(ADJOINTS) + ['auto']}")
    return ADJOINTS[name]()


__all__ = ["ADJOINTS", "Adjoint", "get_adjoint", "solve_and_differentiate"]
