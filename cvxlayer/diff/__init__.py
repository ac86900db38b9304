"""Backward stage: implicit differentiation of the cone program, with pluggable adjoints."""

from functools import partial

from cvxlayer.diff.dense import ResidualMapAdjoint
from cvxlayer.diff.diffcp_backend import DiffcpAdjoint
from cvxlayer.diff.implicit import Adjoint, solve_and_differentiate
from cvxlayer.diff.kkt import KKTAdjoint

ADJOINTS = {method: partial(ResidualMapAdjoint, method) for method in ("dense", "lsqr")}
ADJOINTS["auto"] = partial(KKTAdjoint, "auto")
ADJOINTS["kkt"] = partial(KKTAdjoint, "kkt")
ADJOINTS[DiffcpAdjoint.name] = DiffcpAdjoint


def get_adjoint(name: str) -> Adjoint:
    """The backward method of a name: "auto" (dense up to n + m = 1000 unknowns, LSQR
    above), "dense", "lsqr" or "diffcp"."""
    if name not in ADJOINTS:
        raise ValueError(f"unknown backward {name!r}; available: {sorted(ADJOINTS)}")
    return ADJOINTS[name]()


__all__ = ["ADJOINTS", "Adjoint", "get_adjoint", "solve_and_differentiate"]
