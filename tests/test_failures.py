"""What happens to elements that are not solved accurately: the policy of cvxpylayers (diffcp)
for inaccurate solves, and failed elements never reaching the autograd graph."""

import warnings
from dataclasses import replace

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, SolverError, Status
from cvxlayer.cones import ConeSpec
from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import Solution, SolveSettings, solve_with_retry


class _Scripted:
    """A solver whose answer per element (identified by c, which holds its index) is
    scripted: status by whether Anderson acceleration is on, a NaN iterate where asked."""

    name = "scripted"

    def __init__(self, with_acceleration, without, nan_rows=()):
        self.script = {True: with_acceleration, False: without}
        self.nan_rows, self.calls = nan_rows, []

    def solve(self, program, settings, warm_start=None):
        self.calls.append(program.batch_size)
        ids = program.c[:, 0].long().tolist()
        status = tuple(self.script[settings.acceleration_lookback != 0][i] for i in ids)
        x = program.c.clone()
        x[[k for k, i in enumerate(ids) if i in self.nan_rows]] = float("nan")
        iterations = torch.ones(program.batch_size, dtype=torch.long)
        return Solution(x, program.b.clone(), program.b.clone(), status, iterations)


def _program(batch):
    """B one-variable programs; c holds each element's index."""
    no_entries = np.zeros(0, dtype=np.int64)
    structure = ConeStructure(1, 1, ConeSpec(nonneg=1), no_entries, np.zeros(2, dtype=np.int64))
    index = torch.arange(batch, dtype=torch.float64).unsqueeze(1)
    return ConeProgram(structure, torch.zeros(batch, 0, dtype=torch.float64), 0 * index, index)


def test_inaccurate_elements_are_retried_without_acceleration():
    S, Inacc, M = Status.SOLVED, Status.SOLVED_INACCURATE, Status.MAX_ITERS
    solver = _Scripted([S, Inacc, M, S], [S, S, M, S])
    solution = solve_with_retry(solver, _program(4), SolveSettings())
    assert solution.status == (S, S, M, S)  # the retry's accurate answer is kept
    assert solver.calls == [4, 2]  # only the two inaccurate elements were solved again
    assert solution.iterations.tolist() == [1, 2, 1, 1]


def test_no_retry_when_acceleration_is_already_off():
    solver = _Scripted([Status.SOLVED], [Status.MAX_ITERS])
    settings = replace(SolveSettings(), acceleration_lookback=0)
    solution = solve_with_retry(solver, _program(1), settings)
    assert solution.status == (Status.MAX_ITERS,) and solver.calls == [1]


def test_a_nan_iterate_is_a_failure():
    solver = _Scripted([Status.SOLVED, Status.MAX_ITERS], [Status.SOLVED, Status.MAX_ITERS], [1])
    solution = solve_with_retry(solver, _program(2), SolveSettings())
    assert solution.status == (Status.SOLVED, Status.FAILURE)


def test_compiled_tolerance_check_is_the_torch_one(monkeypatch):
    """`violates_tolerance` on CPU tensors (the compiled twin, `residual_kernels`) against
    its torch form on one QP-with-a-cone program's data and perturbed solutions: solved
    ones pass, residuals 10² and 10⁴ times the tolerance fail on the primal or dual side,
    NaN fails."""
    from cvxlayer.solvers import base, ipm

    x, M, y = cp.Parameter(4), cp.Parameter((4, 4)), cp.Variable(4)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.norm(M @ y) <= 1, y >= -1])
    layer = CvxpyLayer(prob, [x, M], [y], fast_path=False, mode="scs")
    gen = torch.Generator().manual_seed(2)
    values = [
        torch.randn(6, *shape, generator=gen, dtype=torch.float64) for shape in [(4,), (4, 4)]
    ]
    program = layer.compiled.cone_program(values)
    settings = SolveSettings(eps_abs=1e-6, eps_rel=1e-6)
    sol = layer.solvers["scs"].solve(program, settings)
    x_, y_, s_ = sol.x.clone(), sol.y.clone(), sol.s.clone()
    s_[1, 0] += 1e-4  # primal residual, 100× the tolerance
    x_[2] += 1e-2  # both
    y_[3, -1] += 1e-2  # dual
    x_[4, 0] = float("nan")
    solution = replace(sol, x=x_, y=y_, s=s_)
    compiled = base.violates_tolerance(program, solution, settings)
    monkeypatch.setattr(ipm, "_compiled_engine", lambda: None)
    reference = base.violates_tolerance(program, solution, settings)
    assert compiled.tolist() == reference.tolist() == [False, True, True, True, True, False]


def _box_qp():
    """min ‖y − x‖² s.t. Σy = 1, y ≥ 0 (projection onto the simplex), generic mode."""
    x = cp.Parameter(4, name="x")
    y = cp.Variable(4, name="y")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.sum(y) == 1, y >= 0])
    return CvxpyLayer(prob, [x], [y], mode="scs", fast_path=False)


def test_max_iters_returns_the_iterate_with_a_warning_and_its_gradient():
    layer = _box_qp()
    x = torch.tensor([[0.3, 2.0, -1.0, 0.4], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    x.requires_grad_()
    # 3 iterations cannot reach eps = 1e-12: max_iters for every element, after a retry
    args = {"max_iters": 3, "eps": 1e-12}
    with pytest.warns(UserWarning, match="Solved/Inaccurate.*element 0: max_iters"):
        (y,) = layer(x, solver_args=args)
    assert torch.isfinite(y).all()
    y[:, 1].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    (y_again,), info = layer(x, solver_args=args, return_status=True)
    assert info.status == (Status.MAX_ITERS, Status.MAX_ITERS)
    torch.testing.assert_close(y_again, y)


def test_infeasible_elements_still_raise():
    lo = cp.Parameter(name="lo")
    y = cp.Variable()
    prob = cp.Problem(cp.Minimize(y), [y >= lo, y <= 1])
    layer = CvxpyLayer(prob, [lo], [y], mode="scs", fast_path=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no inaccuracy warning: a clean error
        with pytest.raises(SolverError, match="element 1: infeasible"):
            layer(torch.tensor([0.0, 2.0], dtype=torch.float64))


def test_unconverged_scs_elements_are_finished_before_differentiation():
    """SCS stopped at 20 iterations cannot reach eps = 1e-9 on a simplex projection: its
    iterates are no solutions (before: returned and differentiated with a warning). Clarabel
    finishes them (an interior point needs ~10 iterations): the outputs and gradients are
    those of a tight solve (to 1e-7: both solutions are accurate to ~1e-9), `info.finished`
    marks every element, and the warning says how many."""
    layer = _box_qp()
    x = torch.tensor([[0.3, 2.0, -1.0, 0.4], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    loose = {"max_iters": 20, "acceleration_lookback": 0, "eps": 1e-9}
    tight = {"max_iters": 200_000, "eps": 1e-10}
    results = {}
    for name, args in (("loose", loose), ("tight", tight)):
        leaf = x.clone().requires_grad_()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (y,), info = layer(leaf, solver_args=args, return_status=True)
            (y,) = layer(leaf, solver_args=args)
        (y * torch.arange(4.0, dtype=torch.float64)).sum().backward()
        results[name] = (y.detach(), leaf.grad, info, [str(w.message) for w in caught])
    y_loose, g_loose, info, messages = results["loose"]
    assert info.finished == (True, True) and all(s is Status.SOLVED for s in info.status)
    assert any(m.startswith("2 of 2 batch element(s) were left unconverged") for m in messages)
    assert results["tight"][2].finished == (False, False)
    torch.testing.assert_close(y_loose, results["tight"][0], atol=1e-7, rtol=0)
    torch.testing.assert_close(g_loose, results["tight"][1], atol=1e-7, rtol=0)
