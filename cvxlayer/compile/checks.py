"""Checks on the user's problem and argument lists, each failing with a `ValueError` that names
the offending part (with cvxpy's own diagnosis where cvxpy has one)."""

from __future__ import annotations

from collections.abc import Sequence

import cvxpy as cp

# cvxpylayers' phrases, kept in our messages so that code matching on them keeps working
MATCH_PARAMETERS = "The layer's parameters must exactly match problem.parameters"
SUBSET_VARIABLES = "must be a subset of problem.variables or a constraint dual variable"
QUAD_FORM_OBJECTIVE = (
    "quad_form(x, P) with parametric P is only supported in the objective, not in constraints"
)


def _name(leaf) -> str:
    return f"{type(leaf).__name__.lower()} '{leaf.name()}' (shape {leaf.shape})"


def _cvxpy_diagnosis(problem: cp.Problem) -> str:
    """cvxpy's own error message for this problem, from its solving chain."""
    try:
        cp.Problem(problem.objective, problem.constraints).get_problem_data(
            cp.SCS, enforce_dpp=True
        )
    except (cp.error.DCPError, cp.error.DPPError) as err:
        return str(err)
    return ""


def _has_parametric_quad_form(expr) -> bool:
    """Whether `expr` holds quad_form(x, P) with a parameter in P."""
    if isinstance(expr, cp.atoms.QuadForm) and expr.args[1].parameters():
        return True
    return any(_has_parametric_quad_form(arg) for arg in expr.args)


def check_problem(problem: cp.Problem, gp: bool = False, quad_obj: bool = True) -> None:
    """Reject problems that are not DCP, or DCP but not DPP (disciplined parametrized); with
    `gp`, problems that are not DGP with DPP parameters. With `quad_obj` (the objective kept
    as ½xᵀPx), `quad_form(x, P)` with a PSD parameter P is DPP in the objective (cvxpy's
    quad_form scope)."""
    if not isinstance(problem, cp.Problem):
        raise TypeError(f"expected a cvxpy.Problem, got {type(problem).__name__}")
    if gp:
        if not problem.is_dgp(dpp=True):
            kind = "DGP but not DPP" if problem.is_dgp() else "not DGP (log-log convex)"
            raise ValueError(
                f"gp=True but the problem is {kind}; a geometric program needs positive "
                "variables and parameters (cp.Variable(pos=True), cp.Parameter(pos=True)) "
                "combined by monomials and posynomials"
            )
        return
    if problem.is_dcp(dpp=True) or (quad_obj and problem.is_dpp(quad_form_dpp="qp")):
        return
    parts = [("objective", problem.objective)] + [
        (f"constraint {i}", con) for i, con in enumerate(problem.constraints)
    ]
    if not problem.is_dcp():
        bad = [f"  {label}: {expr}" for label, expr in parts if not expr.is_dcp()]
        raise ValueError(
            "the problem is not DCP (disciplined convex), so it cannot be a layer.\n"
            "Not DCP:\n" + "\n".join(bad) + "\ncvxpy says: " + _cvxpy_diagnosis(problem)
        )
    bad = [f"  {label}: {expr}" for label, expr in parts if not expr.is_dcp(dpp=True)]
    quad_form = [
        f"  constraint {i}: {con}"
        for i, con in enumerate(problem.constraints)
        if _has_parametric_quad_form(con)
    ]
    if quad_form:
        raise ValueError(
            f"the problem is not DPP: {QUAD_FORM_OBJECTIVE}. Write the "
            "constraint with sum_squares(L @ x) and a parameter L (P = LᵀL) instead.\n"
            + "\n".join(quad_form)
        )
    raise ValueError(
        "the problem is DCP but not DPP (disciplined parametrized), so its solution map "
        "cannot be compiled once and differentiated. Typical causes: a product of two "
        "parameters, a parameter inside a nonlinear atom of a variable (e.g. quad_form(x, P) "
        "with P a Parameter), or parameters multiplied by each other. Move such products into "
        "torch and pass the result as one parameter.\nNot DPP:\n"
        + "\n".join(bad)
        + "\ncvxpy says: "
        + _cvxpy_diagnosis(problem)
    )


def check_parameters(problem: cp.Problem, parameters: Sequence[cp.Parameter]) -> None:
    """The list must hold each parameter of the problem exactly once, and nothing else."""
    parameters = list(parameters)
    for p in parameters:
        if not isinstance(p, cp.Parameter):
            raise ValueError(
                f"{MATCH_PARAMETERS}; it holds a {type(p).__name__}, not a cvxpy Parameter: {p}"
            )
    seen = set()
    for p in parameters:
        if p.id in seen:
            raise ValueError(f"{MATCH_PARAMETERS}; {_name(p)} appears more than once")
        seen.add(p.id)
    in_problem = {p.id: p for p in problem.parameters()}
    extra = [p for p in parameters if p.id not in in_problem]
    if extra:
        raise ValueError(
            f"{MATCH_PARAMETERS}; the list holds parameters the problem does not use: "
            + ", ".join(_name(p) for p in extra)
        )
    missing = [p for pid, p in in_problem.items() if pid not in seen]
    if missing:
        raise ValueError(
            f"{MATCH_PARAMETERS}; the list must hold every parameter of the problem, "
            "missing: " + ", ".join(_name(p) for p in missing)
        )


def check_variables(problem: cp.Problem, variables: Sequence[cp.Variable]) -> None:
    """Each requested output must be a cvxpy Variable of the problem or the dual variable of
    one of its constraints (`constraint.dual_variables[i]`)."""
    variables = list(variables)
    if not variables:
        raise ValueError("variables must name at least one cvxpy Variable of the problem")
    in_problem = {v.id for v in problem.variables()}
    duals = {dv.id for con in problem.constraints for dv in con.dual_variables}
    for v in variables:
        if not isinstance(v, cp.Variable):
            raise ValueError(
                f"variables {SUBSET_VARIABLES}; got a {type(v).__name__}, not a cvxpy Variable: {v}"
            )
        if v.id not in in_problem and v.id not in duals:
            raise ValueError(
                f"{_name(v)} {SUBSET_VARIABLES}: it is neither a variable of the problem nor "
                "the dual variable of one of its constraints"
            )
