"""Recovery of the user's outputs from the cone program's solution (x, y).

cvxpy stores each variable as a contiguous slice of x, possibly in a reduced form (a
symmetric or PSD k × k variable as its k(k+1)/2 upper-triangle entries, a diagonal one as
its diagonal). Every such lowering is a gather, so recovery is  value = x̄[index]  with
x̄ = [x; 0] (index n stands for a structural zero), reshaped in column-major order.

A constraint's dual variable is read from y the same way, with a scale per entry (signs of
≥ constraints, the 1/√2 of off-diagonal PSD entries): value = scale ∘ ȳ[index]. Both maps
are found by probing cvxpy's own inversion of a solution, so they follow cvxpy's
conventions exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from cvxpy.reductions.cvx_attr2constr import CvxAttr2Constr, recover_value_for_leaf


@dataclass(frozen=True, eq=False)
class VariableRecovery:
    """value = x̄[index].reshape(shape, order='F'), x̄ = [x; 0].

    Attributes:
        name: the variable's name (for messages).
        shape: the variable's shape.
        index: (prod(shape),) int64 indices into x̄ (or ȳ), column-major.
        source: "x" for a primal variable, "y" for a dual variable.
        scale: (prod(shape),) factors for a dual variable (None: all 1).
        exp: a geometric program's variable: the value is exp of the gathered entries.
    """

    name: str
    shape: tuple[int, ...]
    index: np.ndarray
    source: str = "x"
    scale: np.ndarray | None = None
    exp: bool = False
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n) primal and (B, m) dual solutions ↦ (B, *shape) values of the output."""
        v = x if self.source == "x" else y
        idx, scale, zero = self._tensors(v)
        if zero:  # x̄ = [x; 0]
            v = torch.nn.functional.pad(v, (0, 1))
        flat = v.index_select(1, idx)
        if scale is not None:
            flat = flat * scale
        if self.exp:
            flat = torch.exp(flat)
        if len(self.shape) == 1:
            return flat
        # column-major reshape: fill the reversed shape, then reverse the axes back
        out = flat.reshape(v.shape[0], *reversed(self.shape))
        return out.permute(0, *range(len(self.shape), 0, -1))

    def _tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """`index` and `scale` as tensors with `like`'s device (and dtype), made once each,
        and whether `index` points at the structural zero (past `like`'s columns)."""
        key = (like.dtype, like.device)
        if key not in self._cache:
            scale = self.scale
            if scale is not None:
                scale = torch.as_tensor(scale, dtype=like.dtype, device=like.device)
            zero = bool(self.index.size) and int(self.index.max()) >= like.shape[1]
            self._cache[key] = (torch.as_tensor(self.index, device=like.device), scale, zero)
        return self._cache[key]


def expansion_index(leaf, lowered_size: int) -> np.ndarray:
    """How cvxpy expands a lowered leaf (symmetric, diagonal, …) back to its full shape.

    Returns:
        (prod(leaf.shape),) int64: for each full entry in column-major order, the index of
        the lowered entry it copies, or −1 for a structural zero.

    Raises:
        NotImplementedError: the expansion is not a plain gather.
    """
    # Probe cvxpy's own recovery with 1, 2, …, size: the values say which entry goes where.
    probe = np.arange(1, lowered_size + 1, dtype=float)
    value = recover_value_for_leaf(leaf, probe, project=False)
    value = value.toarray() if sp.issparse(value) else np.asarray(value, dtype=float)
    flat = value.reshape(-1, order="F")
    local = np.rint(flat).astype(np.int64)
    if flat.size != leaf.size or not np.allclose(flat, local) or local.min() < 0:
        raise NotImplementedError(
            f"'{leaf.name()}' has attributes whose lowering is not a plain gather"
        )
    return local - 1


def owning_constraint(problem, var):
    """The constraint of `problem` whose dual variable `var` is, or None."""
    for con in problem.constraints:
        if any(dv is var for dv in con.dual_variables):
            return con
    return None


def _dual_recovery(var, con, chain, inverse_data, n: int, m: int) -> VariableRecovery:
    """Probe cvxpy's inversion of a cone solution with y = k and y = k² (k = 1 … m): each
    entry of the dual value must be scale·y[index] (checked on a third, random probe)."""

    def invert(y: np.ndarray) -> np.ndarray:
        raw = {
            "x": np.zeros(n),
            "y": y,
            "s": np.zeros(m),
            "info": {"status_val": 1, "solve_time": 0.0, "setup_time": 0.0, "iter": 0, "pobj": 0.0},
        }
        solution = chain.invert(raw, inverse_data)
        con.save_dual_value(solution.dual_vars[con.id])
        return np.asarray(var.value, dtype=float).reshape(-1, order="F")

    saved = [dv.value for dv in con.dual_variables]  # probing writes them; put them back
    k = np.arange(1.0, m + 1)
    v1, v2 = invert(k), invert(k**2)
    nonzero = np.abs(v1) > 0
    ratio = np.where(nonzero, v2 / np.where(nonzero, v1, 1.0), 0.0)
    index = np.where(nonzero, np.rint(ratio).astype(np.int64) - 1, m)
    scale = np.where(nonzero, v1 / (index + 1.0), 0.0)
    probe = np.random.default_rng(0).standard_normal(m)
    expected = scale * np.append(probe, 0.0)[index]
    consistent = np.allclose(invert(probe), expected, rtol=1e-9, atol=1e-12)
    for dv, value in zip(con.dual_variables, saved):
        dv.value = value
    if not consistent:
        raise NotImplementedError(
            f"the dual variable of constraint {con} is not a scaled gather of the cone duals"
        )
    return VariableRecovery(var.name(), tuple(int(d) for d in var.shape), index, "y", scale)


def build_recoveries(
    variables, param_prob, chain, inverse_data, problem=None, log_vars=None
) -> tuple[VariableRecovery, ...]:
    """One `VariableRecovery` per requested output.

    Args:
        variables: the user's cvxpy Variables (primal, or a constraint's dual variable), in
            output order.
        param_prob: cvxpy's `ParamConeProg` (its `var_id_to_col` locates lowered variables).
        chain, inverse_data: the solving chain and its inverse data from `get_problem_data`.
        problem: the user's problem (to find the constraints of dual variables).
        log_vars: for a geometric program, each variable ↦ its log in the convex form.
    """
    id2new_var, id2old_var = {}, {}
    for reduction, inverse in zip(chain.reductions, inverse_data):
        if isinstance(reduction, CvxAttr2Constr) and inverse:
            id2new_var, id2old_var, _ = inverse
    n = int(param_prob.x.size)
    m = int(param_prob.A.shape[0] // (n + 1))
    out = []
    for var in variables:
        con = owning_constraint(problem, var) if problem is not None else None
        if con is not None:
            out.append(_dual_recovery(var, con, chain, inverse_data, n, m))
            continue
        original = var
        var = (log_vars or {}).get(var, var)
        lowered = id2new_var.get(var.id, var)
        if lowered.id not in param_prob.var_id_to_col:
            raise ValueError(
                f"variable '{var.name()}' was eliminated by cvxpy's canonicalization and has no "
                "value in the cone program"
            )
        local = expansion_index(id2old_var.get(var.id, var), int(lowered.size))
        offset = param_prob.var_id_to_col[lowered.id]
        index = np.where(local < 0, n, offset + local)
        shape = tuple(int(d) for d in original.shape)
        out.append(VariableRecovery(original.name(), shape, index, exp=original is not var))
    return tuple(out)
