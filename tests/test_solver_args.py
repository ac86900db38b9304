"""cvxpylayers' solver_args (diffcp's keys, and SCS's, ECOS's, Clarabel's that diffcp passes on)
are accepted: translated where they mean something here, ignored with a warning otherwise."""

import warnings

import cvxpy as cp
import pytest
import torch

from cvxlayer import CvxpyLayer
from cvxlayer.options import FOREIGN, parse_solver_args


@pytest.fixture
def projection():
    """Projection onto a simplex-like set: generic modes only (no fast path)."""
    x = cp.Parameter(3, name="x")
    y = cp.Variable(3, name="y")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0, cp.sum(y) <= 1])
    return prob, x, y


@pytest.mark.parametrize(
    "args, field, value",
    [
        ({"mode": "dense"}, "backward", "dense"),
        ({"mode": "lsqr"}, "backward", "lsqr"),
        ({"mode": "lsmr"}, "backward", "lsqr"),
        ({"solve_method": "SCS"}, "generic_mode", "scs"),
        ({"solve_method": "Clarabel"}, "generic_mode", "clarabel"),
        ({"solve_method": "ECOS"}, "generic_mode", "clarabel"),
        ({"n_jobs_forward": 1}, "threads", 1),
        ({"n_jobs_forward": -1}, "threads", -1),
        ({"use_indirect": True}, "linsys", "cg"),
        ({"abstol": 1e-7}, "eps_abs", 1e-7),
        ({"reltol": 1e-7}, "eps_rel", 1e-7),
        ({"tol_gap_abs": 1e-7}, "eps_abs", 1e-7),
        ({"max_iter": 77}, "max_iters", 77),
        ({"time_limit": 3.0}, "time_limit_secs", 3.0),
    ],
)
def test_keys_with_a_meaning_are_translated(args, field, value):
    options = parse_solver_args(args)
    where = options if hasattr(options, field) else options.settings
    assert getattr(where, field) == value


def test_our_own_key_wins_over_a_translated_one():
    options = parse_solver_args({"mode": "dense", "backward": "lsqr", "abstol": 1, "eps_abs": 2})
    assert options.backward == "lsqr" and options.settings.eps_abs == 2


@pytest.mark.parametrize("key", sorted(FOREIGN - {"mode", "solve_method"}))
def test_every_foreign_key_is_accepted(key):
    value = {"use_indirect": False, "n_jobs_forward": 2}.get(key, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parse_solver_args({key: value})


@pytest.mark.parametrize(
    "key, value", [("gpu", True), ("n_jobs_backward", 4), ("warm_start", None), ("nitref", 9)]
)
def test_ignored_keys_warn_naming_the_key(key, value):
    with pytest.warns(UserWarning, match=f"solver_args\\['{key}'\\].*ignored"):
        parse_solver_args({key: value})


def test_lpgd_mode_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="LPGD"):
        assert parse_solver_args({"mode": "lpgd"}).backward == "auto"


@pytest.mark.parametrize(
    "args, match",
    [
        ({"mode": "qr"}, "derivative mode"),
        ({"solve_method": "MOSEK"}, "solve_method"),
        ({"n_jobs_forward": 0}, "threads"),
        ({"not_a_key": 1}, "unknown solver_args key"),
    ],
)
def test_bad_values_and_unknown_keys_are_errors(args, match):
    with pytest.raises(ValueError, match=match):
        parse_solver_args(args)


def test_a_cvxpylayers_call_runs_unchanged(projection):
    """The solver_args of a published cvxpylayers application, through the layer: the
    solution and gradient are the projection's (x = (0.6, 0.9, −1) ↦ (0.35, 0.65, 0))."""
    prob, x, y = projection
    layer = CvxpyLayer(prob, [x], [y], mode="torch", fast_path=False)
    x_t = torch.tensor([0.6, 0.9, -1.0], dtype=torch.float64, requires_grad=True)
    args = {"solve_method": "SCS", "mode": "dense", "n_jobs_forward": 1, "n_jobs_backward": 1}
    args.update(eps=1e-9, acceleration_lookback=0, max_iters=10_000)
    with pytest.warns(UserWarning, match="n_jobs_backward"):
        (y_out,), info = layer(x_t, solver_args=args, return_status=True)
    assert info.mode == "scs"  # solve_method chose native SCS over the layer's torch mode
    expected = torch.tensor([0.35, 0.65, 0.0], dtype=torch.float64)
    torch.testing.assert_close(y_out, expected, atol=1e-7, rtol=0)
    y_out[0].backward()  # on the face y₃ = 0, Σy = 1: dy₁/dx = (½, −½, 0)
    torch.testing.assert_close(
        x_t.grad, torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_an_interior_point_solve_method_runs_clarabel():
    """solve_method="Clarabel" (or "ECOS") runs native Clarabel, on second-order and
    exponential cones alike."""
    x = cp.Parameter(3)
    y = cp.Variable(3)
    ball = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [cp.norm(y) <= 1])
    softmax = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1])
    x_t = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    for prob, mode in ((ball, "clarabel"), (softmax, "clarabel")):
        layer = CvxpyLayer(prob, [x], [y], fast_path=False)
        _, info = layer(x_t, solver_args={"solve_method": "Clarabel"}, return_status=True)
        assert info.mode == mode and info.status[0].ok
