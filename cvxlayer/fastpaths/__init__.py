"""Fast paths: structure-specific solvers with their own backward, chosen at compile time.

Each fast path has a `match(compiled, problem, by_name)` that returns a solver object for
the compiled problem (or None; `by_name`: the user asked for this path by name), and that
object's `solve(theta, settings, failed_gradient, warm_start)` returns the
cone program's `Solution` for the stacked parameters θ̃, with x, y, s differentiable w.r.t.
θ̃ (`warm_start`: a previous solution's x and a shift in stages, used by the MPC path).
Elements it does not solve are re-solved by the layer's generic mode.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cvxlayer.fastpaths.entropy_form import EntropyForm
from cvxlayer.fastpaths.lml import lml
from cvxlayer.fastpaths.lqr import lqr
from cvxlayer.fastpaths.lqr_form import LQRForm, state_and_control, variable_columns
from cvxlayer.fastpaths.qp import solve_qp
from cvxlayer.fastpaths.qp_form import QPForm


def _match_lqr(compiled, problem) -> LQRForm | None:
    """A QP whose state and control variables form an LQR problem (`lqr_form`)."""
    found = state_and_control(compiled, problem)
    if found is None:
        return None
    qp = QPForm.match(compiled.param_map, protected=variable_columns(compiled, found))
    return None if qp is None else LQRForm.match(qp, compiled, problem)


# The QP path works on dense (n × n) and (m × n) matrices per element; larger problems go to
# the generic modes, which keep the data sparse, unless the QP path is asked for by name.
QP_DENSE_LIMIT = 4_000_000  # n · (n + m) entries


def _match_qp(compiled, problem, by_name: bool) -> QPForm | None:
    st = compiled.structure
    if not by_name and st.n * (st.n + st.m) > QP_DENSE_LIMIT:
        return None
    qp = QPForm.match(compiled.param_map)
    if qp is None or compiled.has_duals:
        return qp
    # no output is a dual variable: the path's y and s are not computed, and its eliminated
    # variables are differentiated only where an output reads them
    read = np.concatenate([r.index for r in compiled.recoveries])
    return dataclasses.replace(qp, duals=False, elim_read=bool(np.isin(qp.elim, read).any()))


# name ↦ match(compiled, problem, by_name): by_name is True when the user asked for that path
FAST_PATHS = {
    "lml": lambda compiled, problem, by_name: EntropyForm.match(compiled, problem),
    "lqr": lambda compiled, problem, by_name: _match_lqr(compiled, problem),
    "qp": _match_qp,
}


def match_fast_path(compiled, problem, request: bool | str = True):
    """The fast path for a compiled problem, or None.

    Args:
        compiled: the `CompiledProblem`.
        problem: the cvxpy problem it was compiled from.
        request: True (the first that matches), False (none), or a fast path's name (that
            one; `ValueError` if the problem does not have its structure).
    """
    if request is False:
        return None
    if request is not True and request not in FAST_PATHS:
        raise ValueError(
            f"unknown fast_path {request!r}; choose True, False or one of {sorted(FAST_PATHS)}"
        )
    names = FAST_PATHS if request is True else (request,)
    for name in names:
        found = FAST_PATHS[name](compiled, problem, by_name=request is not True)
        if found is not None:
            return found
    if request is not True:
        raise ValueError(
            f"fast_path={request!r}: the problem does not have that structure (its cone "
            f"program has cones {compiled.structure.cones.describe()})"
        )
    return None


__all__ = [
    "FAST_PATHS",
    "EntropyForm",
    "LQRForm",
    "QPForm",
    "lml",
    "lqr",
    "match_fast_path",
    "solve_qp",
]
