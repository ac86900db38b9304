"""Compile stage: a DPP cvxpy problem ↦ `CompiledProblem` (done once per layer).

θ (user's parameters)  ──pack──▶  θ̃ = [vec_F θ₁; …; vec_F θ_k; 1]
                       ──ParametricMap──▶  ConeProgram (P, A, b, c)      [torch, autograd]
cone solution x        ──VariableRecovery──▶  user's variables            [torch, autograd]
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import cvxpy as cp
import numpy as np
import scipy.sparse as sp
import torch
from cvxpy.reductions.cvx_attr2constr import CvxAttr2Constr
from cvxpy.reductions.dgp2dcp.dgp2dcp import Dgp2Dcp

from cvxlayer.compile.checks import check_parameters, check_problem, check_variables
from cvxlayer.compile.parametric import ParametricMap
from cvxlayer.compile.recovery import VariableRecovery, build_recoveries, expansion_index
from cvxlayer.program import ConeProgram, ConeStructure


@dataclass(frozen=True)
class ParameterSlot:
    """One user parameter; θ̃ holds the parameters' vec_F values in the user's order."""

    name: str
    shape: tuple[int, ...]
    param_id: int = -1  # the cvxpy Parameter's id
    log: bool = False  # geometric programs: θ̃ holds log(θ)
    symmetric: bool = False  # symmetric/PSD/NSD: only the upper triangle is read


def _flat(value: torch.Tensor) -> torch.Tensor:
    """(B, *shape) ↦ (B, prod(shape)) in row-major order: θ̃ holds each parameter as torch
    stores it, so that reading it costs no transposed copy, and the pieces that are a
    parameter as it is are views of θ̃ in its own layout (`_parameter_columns` maps this
    order to cvxpy's column-major one)."""
    return value.reshape(value.shape[0], -1)


@dataclass(frozen=True, eq=False)
class CompiledProblem:
    """Everything a layer needs at call time; built once by `compile_problem`.

    Attributes:
        parameters: one slot per user parameter, in the user's order.
        param_map: θ̃ ↦ cone data.
        recoveries: one per requested variable, in the user's order.
        var_offsets: cvxpy variable id ↦ its first column in the cone program's x (for the
            variables cvxpy kept as they are; fast paths use it to read the layout).
    """

    parameters: tuple[ParameterSlot, ...]
    param_map: ParametricMap
    recoveries: tuple[VariableRecovery, ...]
    var_offsets: dict = field(default_factory=dict)

    @property
    def structure(self) -> ConeStructure:
        return self.param_map.structure

    def columns(self, param: cp.Parameter) -> np.ndarray:
        """The θ̃ columns holding `param` (vec_F order); empty if it is not a slot."""
        offset = 0
        for slot in self.parameters:
            size = int(np.prod(slot.shape))
            if slot.param_id == param.id:
                return np.arange(offset, offset + size)
            offset += size
        return np.zeros(0, dtype=np.int64)

    def theta(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """θ̃ (B, p + 1) of a batch.

        Args:
            values: one (B, *shape) tensor per parameter slot, same dtype and device.
        """
        ones = values[0].new_ones(values[0].shape[0], 1)
        columns = []
        for slot, v in zip(self.parameters, values):
            if slot.log:
                if not bool((v > 0).all()):
                    raise ValueError(
                        f"parameter '{slot.name}' of a geometric program must be positive"
                    )
                v = torch.log(v)
            columns.append(_flat(v))
        return torch.cat(columns + [ones], dim=1)

    def cone_program(self, values: Sequence[torch.Tensor]) -> ConeProgram:
        """Cone data of a batch (`values` as in `theta`)."""
        return self.param_map.apply(self.theta(values))

    def recover(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, n) primal and (B, m) dual solutions ↦ the requested outputs, each (B, *shape)."""
        return tuple(r(x, y) for r in self.recoveries)

    @property
    def has_duals(self) -> bool:
        """Whether some requested output is a constraint's dual variable."""
        return any(r.source == "y" for r in self.recoveries)


def _parameter_columns(
    parameters: Sequence[cp.Parameter], param_prob, chain, log_ids: dict | None = None
) -> tuple[tuple[ParameterSlot, ...], sp.csr_matrix]:
    """Our θ̃ (the user's parameters, full size, each row-major, in the user's order, then 1)
    ↦ cvxpy's θ̃.

    cvxpy lowers parameters with dimension-reducing attributes (symmetric, PSD, diag) to
    their free entries. Where two full entries share a lowered one (C_ij and C_ji of a
    symmetric C), we read the upper triangle (i ≤ j), as cvxpy's `lower_value` and
    cvxpylayers do: a non-symmetric value means the matrix with its upper triangle
    mirrored, and the gradient of C_ij (i < j) is the whole sensitivity to both entries,
    with zeros below the diagonal.

    For a geometric program (`log_ids`: parameter id ↦ the id of its log in the convex
    form), the slots are marked `log` and θ̃ holds log θ.

    Returns:
        The slots of our layout, and the (p_cvxpy + 1, p + 1) sparse matrix L with
        θ̃_cvxpy = L θ̃.
    """
    param_id_map = {}
    for reduction in chain.reductions:
        if isinstance(reduction, CvxAttr2Constr):
            param_id_map = reduction.param_id_map
    rows, cols, vals, slots = [], [], [], []
    offset = 0
    log_ids = log_ids or {}
    for param in parameters:
        pid = log_ids.get(param.id, param.id)
        if pid in param_prob.param_id_to_col:
            local = np.arange(param.size)
            target = pid
        else:
            target = param_id_map[param.id][0]
            local = expansion_index(param, param_prob.param_id_to_size[target])
        full = np.flatnonzero(local >= 0)
        shared = np.bincount(local[full])[local[full]] > 1
        if shared.any():  # symmetric: keep row ≤ column (vec_F index = row + column·k)
            k = param.shape[0]
            full = full[~shared | (full % k <= full // k)]
        rows.append(param_prob.param_id_to_col[target] + local[full])
        # cvxpy's entries are column-major, ours row-major (`_flat`)
        shape = tuple(int(d) for d in param.shape)
        cols.append(offset + _row_major(full, shape))
        vals.append(np.ones(full.size))
        slots.append(
            ParameterSlot(param.name(), shape, param.id, param.id in log_ids, bool(shared.any()))
        )
        offset += param.size
    p_cvxpy = param_prob.total_param_size
    rows.append([p_cvxpy])
    cols.append([offset])
    vals.append([1.0])
    columns = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(p_cvxpy + 1, offset + 1),
    )
    return tuple(slots), columns


def _row_major(index: np.ndarray, shape: tuple) -> np.ndarray:
    """Column-major flat indices of an array of `shape` as row-major ones."""
    if len(shape) < 2:
        return index
    return np.ravel_multi_index(np.unravel_index(index, shape, order="F"), shape)


# compiled problems by problem object, then by the rest of the arguments: wrapping the same
# problem twice (e.g. one layer per device or per head) compiles it once
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compile_problem(
    problem: cp.Problem,
    parameters: Sequence[cp.Parameter],
    variables: Sequence[cp.Variable],
    canon_backend: str | None = None,
    quad_obj: bool = True,
    gp: bool = False,
) -> CompiledProblem:
    """Check and canonicalize `problem` into a `CompiledProblem`.

    Args:
        quad_obj: keep a quadratic objective as ½xᵀPx (else cvxpy turns it into second-order
            cones, for backward methods that need a linear objective).
        gp: a geometric program (DGP): compiled in log space (θ̃ holds log θ, variables are
            recovered as exp of the convex problem's).

    Compilations are cached per problem object (weakly) and argument list; a problem must
    not be modified after it was wrapped.

    Raises:
        ValueError: the problem is not DCP/DPP; the parameter list misses or repeats a
            parameter or names one not in the problem; a variable is not in the problem.
    """
    key = (
        tuple(p.id for p in parameters),
        tuple(v.id for v in variables),
        canon_backend,
        quad_obj,
        gp,
    )
    cached = _CACHE.get(problem, {})
    if key in cached:
        return cached[key]
    compiled = _compile(problem, parameters, variables, canon_backend, quad_obj, gp)
    _CACHE.setdefault(problem, {})[key] = compiled
    return compiled


def _compile(problem, parameters, variables, canon_backend, quad_obj, gp) -> CompiledProblem:
    check_problem(problem, gp, quad_obj)
    check_parameters(problem, parameters)
    check_variables(problem, variables)
    # A new Problem over the same expressions: cvxpy caches its last canonicalization on the
    # problem object and, asked again with the same options, refreshes it from the current
    # parameter values (a GP takes their logarithms: a parameter without a value then
    # fails). The compilation must not depend on what was done with the user's problem.
    fresh = cp.Problem(problem.objective, problem.constraints)
    options = dict(
        gp=gp, solver_opts={"use_quad_obj": quad_obj}, enforce_dpp=True, canon_backend=canon_backend
    )
    try:
        data, chain, inverse_data = fresh.get_problem_data(cp.SCS, **options)
    except cp.error.SolverError:
        if problem.constraints:
            raise
        # cvxpy's SCS interface refuses a cone program without constraint rows; one row
        # 0ᵀx = 0 (zero cone) changes nothing and makes it one
        fresh = cp.Problem(problem.objective, [_trivial_row(problem)])
        data, chain, inverse_data = fresh.get_problem_data(cp.SCS, **options)
    param_prob = data[cp.settings.PARAM_PROB]
    dgp = next((r for r in chain.reductions if isinstance(r, Dgp2Dcp)), None)
    log_params = {} if dgp is None else {k: v[0] for k, v in dgp.param_id_map.items()}
    log_vars = {} if dgp is None else dict(dgp.canon_methods._variables)
    slots, columns = _parameter_columns(parameters, param_prob, chain, log_params)
    param_map = ParametricMap.from_cvxpy(param_prob, columns)
    recoveries = build_recoveries(variables, param_prob, chain, inverse_data, problem, log_vars)
    offsets = {int(k): int(v) for k, v in param_prob.var_id_to_col.items()}
    return CompiledProblem(slots, param_map, recoveries, offsets)


def _trivial_row(problem: cp.Problem) -> cp.Constraint:
    """The constraint 0 · x₀ = 0 on the problem's first variable: one empty equality row."""
    first = problem.variables()[0]
    return cp.Constant(0.0) * cp.vec(first, order="F")[0] == 0


__all__ = ["CompiledProblem", "ParameterSlot", "compile_problem"]
