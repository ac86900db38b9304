"""Compile stage: a DPP cvxpy problem ↦ `CompiledProblem` (done once per layer).

θ (user's parameters)  ──pack──▶  θ̃ = [vec_F θ₁; …; vec_F θ_k; 1]
                       ──ParametricMap──▶  ConeProgram (P, A, b, c)      [torch, autograd]
cone solution x        ──VariableRecovery──▶  user's variables            [torch, autograd]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cvxpy as cp
import torch

from cvxlayer.compile.checks import check_parameters, check_problem, check_variables
from cvxlayer.compile.parametric import ParametricMap
from cvxlayer.compile.recovery import VariableRecovery, build_recoveries
from cvxlayer.program import ConeProgram, ConeStructure


@dataclass(frozen=True)
class ParameterSlot:
    """Where one user parameter sits in θ̃: columns [offset, offset + size)."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        out = 1
        for d in self.shape:
            out *= d
        return out


def _vec_f(value: torch.Tensor) -> torch.Tensor:
    """(B, *shape) ↦ (B, prod(shape)) in column-major order (cvxpy's vec)."""
    ndim = value.dim() - 1
    if ndim > 1:
        value = value.permute(0, *range(ndim, 0, -1))
    return value.reshape(value.shape[0], -1)


@dataclass(frozen=True, eq=False)
class CompiledProblem:
    """Everything a layer needs at call time; built once by `compile_problem`.

    Attributes:
        parameters: one slot per user parameter, in the user's order.
        param_map: θ̃ ↦ cone data.
        recoveries: one per requested variable, in the user's order.
    """

    parameters: tuple[ParameterSlot, ...]
    param_map: ParametricMap
    recoveries: tuple[VariableRecovery, ...]

    @property
    def structure(self) -> ConeStructure:
        return self.param_map.structure

    def cone_program(self, values: Sequence[torch.Tensor]) -> ConeProgram:
        """Cone data of a batch.

        Args:
            values: one (B, *shape) tensor per parameter slot, same dtype and device.
        """
        B = values[0].shape[0]
        ordered = sorted(zip(self.parameters, values), key=lambda sv: sv[0].offset)
        ones = values[0].new_ones(B, 1)
        theta = torch.cat([_vec_f(v) for _, v in ordered] + [ones], dim=1)
        return self.param_map.apply(theta)

    def recover(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, n) primal solutions ↦ the requested variables, each (B, *shape)."""
        return tuple(r(x) for r in self.recoveries)


def compile_problem(
    problem: cp.Problem,
    parameters: Sequence[cp.Parameter],
    variables: Sequence[cp.Variable],
    canon_backend: str | None = None,
) -> CompiledProblem:
    """Check and canonicalize `problem` into a `CompiledProblem`.

    Raises:
        ValueError: the problem is not DCP/DPP; the parameter list misses or repeats a
            parameter or names one not in the problem; a variable is not in the problem.
    """
    check_problem(problem)
    check_parameters(problem, parameters)
    check_variables(problem, variables)
    # A purely conic program (no quadratic P): the diffcp backward needs it that way.
    data, chain, inverse_data = problem.get_problem_data(
        cp.SCS, solver_opts={"use_quad_obj": False}, enforce_dpp=True, canon_backend=canon_backend
    )
    param_prob = data[cp.settings.PARAM_PROB]
    param_map = ParametricMap.from_cvxpy(param_prob)
    slots = tuple(
        ParameterSlot(p.name(), tuple(int(d) for d in p.shape), param_prob.param_id_to_col[p.id])
        for p in parameters
    )
    recoveries = build_recoveries(variables, param_prob, chain, inverse_data)
    return CompiledProblem(slots, param_map, recoveries)


__all__ = ["CompiledProblem", "ParameterSlot", "compile_problem"]
