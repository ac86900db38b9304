"""Recognize entropy-regularized linear problems in one vector variable and answer them in
closed form or with the LML root-find.

Matched on the cvxpy expression (the cone form of entropies is exponential cones, whose
structure says little): the objective, up to positive scaling and constants, is

    a·xᵀy + c·Σ entr(y) [+ c·Σ entr(1 − y)]      (x a vector parameter, c < 0)

with at most one constraint Σy = k (k a number or a scalar parameter). With x̃ = (a/c)·x:

| entropies              | constraint | solution                  |
|------------------------|------------|---------------------------|
| entr(y) + entr(1 − y)  | Σy = k     | LML: y = σ(x̃ + ν*)        |
| entr(y) + entr(1 − y)  | none       | sigmoid: y = σ(x̃)         |
| entr(y)                | Σy = k     | softmax: y = k·softmax(x̃) |
| entr(y)                | none       | y = exp(x̃ − 1)            |

Any other shape of problem (more variables, other atoms, bounds, a matrix x, …) is not
matched and goes to the generic solver. The y entries of the cone program's x are filled;
its auxiliary variables and duals are not computed on this path.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch
from cvxpy.atoms.affine.add_expr import AddExpression
from cvxpy.atoms.affine.binary_operators import MulExpression, multiply
from cvxpy.atoms.affine.promote import Promote
from cvxpy.atoms.affine.sum import Sum
from cvxpy.atoms.affine.unary_operators import NegExpression
from cvxpy.atoms.elementwise.entr import entr

from cvxlayer.fastpaths.lml import lml
from cvxlayer.solvers.base import Solution, SolveSettings, Status


class _NoMatchError(Exception):
    pass


def _scalar_constant(e) -> float | None:
    if isinstance(e, Promote):
        e = e.args[0]
    if isinstance(e, cp.Constant) and e.size == 1:
        return float(np.asarray(e.value).ravel()[0])
    return None


def _is_one_minus(e, y) -> bool:
    """e is 1 − y."""
    if not (isinstance(e, AddExpression) and len(e.args) == 2):
        return False
    one, neg = e.args
    return _scalar_constant(one) == 1.0 and isinstance(neg, NegExpression) and neg.args[0] is y


def _parameter_and_sign(e) -> tuple[cp.Parameter, float]:
    sign = 1.0
    while isinstance(e, NegExpression):
        e, sign = e.args[0], -sign
    if isinstance(e, cp.Parameter) and e.ndim == 1:
        return e, sign
    raise _NoMatchError


def _terms(e, y, coef: float, out: list, summed: bool = False) -> None:
    """Append the terms of the scalar objective e (or, with `summed`, of Σ e for an
    elementwise e): ("xy", a, x) for a·xᵀy, ("H_y", c, None) for c·Σentr(y), ("H_1my", c,
    None) for c·Σentr(1 − y). Raises `_NoMatchError` on anything else."""
    if isinstance(e, AddExpression):
        for arg in e.args:
            _terms(arg, y, coef, out, summed)
    elif isinstance(e, NegExpression):
        _terms(e.args[0], y, -coef, out, summed)
    elif not summed and isinstance(e, Sum) and e.axis is None:
        _terms(e.args[0], y, coef, out, summed=True)
    elif summed and isinstance(e, entr) and (e.args[0] is y or _is_one_minus(e.args[0], y)):
        out.append(("H_y" if e.args[0] is y else "H_1my", coef, None))
    elif isinstance(e, (MulExpression, multiply)):
        a, b = e.args
        for const, other in ((a, b), (b, a)):
            scale = _scalar_constant(const)
            if scale is not None:
                _terms(other, y, coef * scale, out, summed)
                return
        # xᵀy outside a sum (x @ y), x ∘ y inside one (sum(multiply(x, y)))
        if summed != isinstance(e, multiply) or not (a is y or b is y):
            raise _NoMatchError
        x, sign = _parameter_and_sign(a if b is y else b)
        out.append(("xy", coef * sign, x))
    elif not summed and isinstance(e, cp.Constant):
        return  # constants do not move the minimizer
    else:
        raise _NoMatchError


@dataclass(frozen=True, eq=False)
class EntropyForm:
    """The closed form (or LML) of a matched problem.

    Attributes:
        kind: "lml", "sigmoid", "softmax" or "exp".
        x_columns: θ̃ columns of the parameter x; scale: a/c (x̃ = scale·x).
        k: the budget as a number, or None with k_column its θ̃ column (a parameter).
        y_index: positions of y in the cone program's x; n, m: the cone program's size.
    """

    kind: str
    x_columns: np.ndarray
    scale: float
    k: float | None
    k_column: int | None
    y_index: np.ndarray
    n: int
    m: int

    @property
    def name(self) -> str:
        return self.kind

    @classmethod
    def match(cls, compiled, problem: cp.Problem) -> EntropyForm | None:
        """The form of `problem` if it is one of the table's, else None."""
        variables = problem.variables()
        if compiled.has_duals:  # this path computes the primal variable only
            return None
        if len(variables) != 1 or variables[0].ndim != 1 or problem.objective.NAME != "minimize":
            return None
        y = variables[0]
        terms: list = []
        try:
            _terms(problem.objective.expr, y, 1.0, terms)
        except _NoMatchError:
            return None
        kinds = [t[0] for t in terms]
        if kinds.count("xy") != 1 or kinds.count("H_y") != 1 or kinds.count("H_1my") > 1:
            return None
        coef = {kind: c for kind, c, _ in terms}
        x = next(p for kind, _, p in terms if kind == "xy")
        c = coef["H_y"]
        if c >= 0 or ("H_1my" in coef and coef["H_1my"] != c) or x.shape != y.shape:
            return None
        k, k_column = _budget(problem.constraints, y, compiled)
        if k is _NoMatchError:
            return None
        binary = "H_1my" in coef
        constrained = k is not None or k_column is not None
        kind = {(True, True): "lml", (True, False): "sigmoid", (False, True): "softmax"}.get(
            (binary, constrained), "exp"
        )
        recovery = next((r for r in compiled.recoveries if r.name == y.name()), None)
        if recovery is None:
            return None
        return cls(
            kind,
            compiled.columns(x),
            coef["xy"] / c,
            k,
            k_column,
            recovery.index,
            compiled.structure.n,
            compiled.structure.m,
        )

    def pays_off(self, batch: int, device: torch.device, mode: str) -> bool:
        """Always: a closed form or a recursion costs less than any generic solve."""
        return True

    def describe(self) -> str:
        budget = "a parameter" if self.k_column is not None else self.k
        what = {"lml": f"LML projection (k = {budget})", "sigmoid": "sigmoid (closed form)"}
        return what.get(self.kind, f"{self.kind} (closed form, sum = {budget})")

    def solve(
        self,
        theta: torch.Tensor,
        settings: SolveSettings,
        failed_gradient: str = "zero",
        warm_start: tuple = (None, 0),
    ) -> Solution:
        """y for the batch θ̃ (B, p + 1), placed in the cone program's x (closed forms:
        `warm_start` is not used)."""
        x = self.scale * theta[:, torch.as_tensor(self.x_columns, device=theta.device)]
        B, d = x.shape
        k = theta[:, self.k_column] if self.k_column is not None else x.new_full((B,), self.k or 0)
        ok = torch.ones(B, dtype=torch.bool, device=x.device)
        if self.kind == "lml":
            ok = (k > 0) & (k < d)  # else infeasible or at a vertex: the generic mode decides
            y = lml(torch.where(ok.unsqueeze(1), x, 0.0), torch.where(ok, k, d / 2))
        elif self.kind == "sigmoid":
            y = torch.sigmoid(x)
        elif self.kind == "softmax":
            ok = k > 0
            y = k.unsqueeze(1) * torch.softmax(x, dim=1)
        else:
            y = torch.exp(x - 1)
        cone_x = x.new_zeros(B, self.n + 1)
        cone_x = cone_x.index_copy(1, torch.as_tensor(self.y_index, device=x.device), y)[:, :-1]
        status = tuple(Status.SOLVED if v else Status.FAILURE for v in ok.tolist())
        iterations = torch.zeros(B, dtype=torch.long)
        zeros = x.new_zeros(B, self.m)  # duals and slacks: not computed on this path
        return Solution(cone_x, zeros, zeros, status, iterations)


def _budget(constraints, y, compiled):
    """(k, k_column) of the single constraint Σy = k: (None, None) without constraints,
    (_NoMatchError, None) for anything else."""
    if not constraints:
        return None, None
    if len(constraints) != 1 or not isinstance(constraints[0], cp.constraints.Equality):
        return _NoMatchError, None
    lhs, rhs = constraints[0].args
    if not (isinstance(lhs, Sum) and lhs.axis is None and lhs.args[0] is y):
        lhs, rhs = rhs, lhs
    if not (isinstance(lhs, Sum) and lhs.axis is None and lhs.args[0] is y):
        return _NoMatchError, None
    value = _scalar_constant(rhs)
    if value is not None:
        return value, None
    if isinstance(rhs, cp.Parameter) and rhs.size == 1 and compiled.columns(rhs).size:
        return None, int(compiled.columns(rhs)[0])
    return _NoMatchError, None
