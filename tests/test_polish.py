"""Polished solutions on exponential and power cones (`cvxlayer.solvers.polish`): Newton
steps on Moreau's form of the optimality conditions after the interior points (compiled
engine, native Clarabel), against closed forms."""

import cvxpy as cp
import pytest
import torch

from cvxlayer import CvxpyLayer, Status


@pytest.mark.parametrize("mode", ["auto", "ipm", "clarabel"])
def test_geometric_program_matches_its_closed_form(mode):
    """min x + a/x over x > 0 (a geometric program: exponential cones in log space) has
    x* = √a. Unpolished, both interior points stop ~1e-5 off at any eps (measured 7.7e-6
    and 1.5e-5: rounding stalls their tails); polished, to rounding (measured 9e-16)."""
    x, a = cp.Variable(pos=True), cp.Parameter(pos=True)
    layer = CvxpyLayer(cp.Problem(cp.Minimize(x + a / x)), [a], [x], gp=True, mode=mode)
    values = torch.tensor([4.0, 9.0, 0.5], dtype=torch.float64, requires_grad=True)
    (out,), info = layer(values, solver_args={"eps": 1e-8}, return_status=True)
    assert all(s is Status.SOLVED for s in info.status)
    torch.testing.assert_close(out, values.detach().sqrt(), atol=1e-10, rtol=0)
    out.sum().backward()  # dx*/da = 1/(2√a)
    torch.testing.assert_close(values.grad, 0.5 / values.detach().sqrt(), atol=1e-7, rtol=0)


def test_softmax_is_polished_to_its_closed_form_and_infeasible_elements_pass_through():
    """softmax(θ) = argmax θᵀy + H(y) over the simplex, to 1e-10 (the interior points alone:
    ~1e-6); an element whose constraint excludes the simplex (y ≤ u with Σu < 1) stays
    infeasible, untouched."""
    k = 5
    y, theta, u = cp.Variable(k), cp.Parameter(k), cp.Parameter(k)
    prob = cp.Problem(cp.Minimize(-theta @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1, y <= u])
    layer = CvxpyLayer(prob, [theta, u], [y], fast_path=False)
    gen = torch.Generator().manual_seed(4)
    thetas = torch.randn(3, k, generator=gen, dtype=torch.float64)
    bounds = torch.ones(3, k, dtype=torch.float64)
    bounds[1] = 0.1  # Σu = 0.5 < 1: infeasible
    (out,), info = layer(thetas, bounds, solver_args={"eps": 1e-8}, return_status=True)
    assert info.mode == "clarabel"
    assert [s.value for s in info.status] == ["solved", "infeasible", "solved"]
    torch.testing.assert_close(out[[0, 2]], torch.softmax(thetas[[0, 2]], 1), atol=1e-10, rtol=0)


def test_clarabel_solves_again_what_the_polish_does_not_finish(monkeypatch):
    """On exponential cones Clarabel stops at `POLISH_START` and the polish finishes; an
    element the polish does not take to rounding (here: made to report so) is solved again
    to eps² and polished: its iterations add up, and every answer is softmax(x)."""
    from cvxlayer.solvers import polish as polish_module

    d = 6
    x, y = cp.Parameter(d), cp.Variable(d)
    prob = cp.Problem(cp.Maximize(x @ y + cp.sum(cp.entr(y))), [cp.sum(y) == 1])
    layer = CvxpyLayer(prob, [x], [y], mode="clarabel")
    xv = torch.randn(3, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (_,), first = layer(xv, return_status=True)
    polish, calls = polish_module.polish, []

    def unfinished_once(program, *args):  # element 1 "not at rounding" on the first call
        *out, done = polish(program, *args)
        if not calls:
            done = done.clone()
            done[1] = False
        calls.append(program.batch_size)
        return (*out, done)

    monkeypatch.setattr(polish_module, "polish", unfinished_once)
    (sol,), info = layer(xv, return_status=True)
    assert calls == [3, 1]
    assert info.iterations[1] > first.iterations[1]
    assert torch.equal(info.iterations[[0, 2]], first.iterations[[0, 2]])
    torch.testing.assert_close(sol, torch.softmax(xv, 1), atol=1e-10, rtol=0)
