"""Recovery of the user's variables from the cone program's primal solution x.

cvxpy stores each variable as a contiguous slice of x, possibly in a reduced form (a
symmetric or PSD k × k variable as its k(k+1)/2 upper-triangle entries, a diagonal one as
its diagonal). Every such lowering is a gather, so recovery is  value = x̄[index]  with
x̄ = [x; 0] (index n stands for a structural zero), reshaped in column-major order.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        index: (prod(shape),) int64 indices into x̄, column-major.
    """

    name: str
    shape: tuple[int, ...]
    index: np.ndarray

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n) primal solutions ↦ (B, *shape) values of the variable."""
        x_bar = torch.nn.functional.pad(x, (0, 1))
        idx = torch.as_tensor(self.index, device=x.device)
        flat = x_bar.index_select(1, idx)
        # column-major reshape: fill the reversed shape, then reverse the axes back
        out = flat.reshape(x.shape[0], *reversed(self.shape))
        return out.permute(0, *range(len(self.shape), 0, -1))


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


def build_recoveries(variables, param_prob, chain, inverse_data) -> tuple[VariableRecovery, ...]:
    """One `VariableRecovery` per requested variable.

    Args:
        variables: the user's cvxpy Variables, in output order.
        param_prob: cvxpy's `ParamConeProg` (its `var_id_to_col` locates lowered variables).
        chain, inverse_data: the solving chain and its inverse data from `get_problem_data`.
    """
    id2new_var, id2old_var = {}, {}
    for reduction, inverse in zip(chain.reductions, inverse_data):
        if isinstance(reduction, CvxAttr2Constr) and inverse:
            id2new_var, id2old_var, _ = inverse
    n = int(param_prob.x.size)
    out = []
    for var in variables:
        lowered = id2new_var.get(var.id, var)
        if lowered.id not in param_prob.var_id_to_col:
            raise ValueError(
                f"variable '{var.name()}' was eliminated by cvxpy's canonicalization and has no "
                "value in the cone program"
            )
        local = expansion_index(id2old_var.get(var.id, var), int(lowered.size))
        offset = param_prob.var_id_to_col[lowered.id]
        index = np.where(local < 0, n, offset + local)
        out.append(VariableRecovery(var.name(), tuple(int(d) for d in var.shape), index))
    return tuple(out)
