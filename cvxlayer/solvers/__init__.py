"""Forward solvers: one class per mode, looked up by name at the API edge.

A new mode (the batched torch ADMM, a fast path) registers here and the layer picks it up
by its `mode=` name; the layer never branches on modes itself.
"""

from cvxlayer.solvers.admm import TorchADMM
from cvxlayer.solvers.base import Solution, Solver, SolveSettings, Status
from cvxlayer.solvers.clarabel_native import ClarabelSerial
from cvxlayer.solvers.ipm import InteriorPoint, TorchInteriorPoint
from cvxlayer.solvers.scs_native import ScsBlock, ScsSerial

SOLVERS: dict[str, type] = {
    InteriorPoint.name: InteriorPoint,
    TorchInteriorPoint.name: TorchInteriorPoint,
    TorchADMM.name: TorchADMM,
    ScsSerial.name: ScsSerial,
    ScsBlock.name: ScsBlock,
    ClarabelSerial.name: ClarabelSerial,
}


def get_solver(mode: str) -> Solver:
    """The solver of a mode name (e.g. "torch", "scs", "scs-block")."""
    if mode not in SOLVERS:
        raise ValueError(f"unknown mode {mode!r}; available modes: {sorted(SOLVERS) + ['auto']}")
    return SOLVERS[mode]()


__all__ = ["SOLVERS", "Solution", "Solver", "SolveSettings", "Status", "get_solver"]
