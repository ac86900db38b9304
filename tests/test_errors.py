"""Every bad input ends in a clear error that names the problem; failures report status."""

import cvxpy as cp
import diffcp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, SolverError, Status


@pytest.fixture
def relu():
    x = cp.Parameter(3, name="x")
    y = cp.Variable(3, name="y")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0])
    return prob, x, y


def test_non_dcp_problem_is_rejected_with_cvxpy_diagnosis():
    x = cp.Parameter(2)
    y = cp.Variable(2)
    prob = cp.Problem(cp.Maximize(cp.sum_squares(y - x)), [y <= 1])
    with pytest.raises(ValueError, match="not DCP") as err:
        CvxpyLayer(prob, [x], [y])
    assert "cvxpy says" in str(err.value) and "objective" in str(err.value)


def test_non_dpp_problem_is_rejected_naming_the_constraint():
    a = cp.Parameter(nonneg=True, name="a")
    b = cp.Parameter(nonneg=True, name="b")
    y = cp.Variable(name="y")
    prob = cp.Problem(cp.Minimize(y), [y >= a * b])
    with pytest.raises(ValueError, match="not DPP") as err:
        CvxpyLayer(prob, [a, b], [y])
    assert "constraint 0" in str(err.value)


# cvxpylayers' phrases (code written against it matches on them) and the culprit's name
MATCH = "The layer's parameters must exactly match problem.parameters"
SUBSET = "must be a subset of problem.variables"


def test_missing_parameter(relu):
    prob, x, y = relu
    with pytest.raises(ValueError, match=f"{MATCH}.*missing: parameter 'x'"):
        CvxpyLayer(prob, [], [y])


def test_repeated_parameter(relu):
    prob, x, y = relu
    with pytest.raises(ValueError, match=f"{MATCH}.*'x'.*more than once"):
        CvxpyLayer(prob, [x, x], [y])


def test_parameter_not_in_problem(relu):
    prob, x, y = relu
    other = cp.Parameter(2, name="other")
    with pytest.raises(ValueError, match=f"{MATCH}.*does not use: parameter 'other'"):
        CvxpyLayer(prob, [x, other], [y])


def test_parameter_list_holding_a_variable(relu):
    prob, x, y = relu
    with pytest.raises(ValueError, match=f"{MATCH}.*Variable, not a cvxpy Parameter"):
        CvxpyLayer(prob, [x, y], [y])


def test_variable_not_in_problem(relu):
    prob, x, y = relu
    z = cp.Variable(3, name="z")
    with pytest.raises(ValueError, match=f"variable 'z'.*{SUBSET}.*neither a variable"):
        CvxpyLayer(prob, [x], [z])


def test_variables_list_holding_a_parameter(relu):
    prob, x, y = relu
    with pytest.raises(ValueError, match=f"{SUBSET}.*Parameter, not a cvxpy Variable"):
        CvxpyLayer(prob, [x], [x])
    with pytest.raises(ValueError, match="at least one"):
        CvxpyLayer(prob, [x], [])


def test_dual_variable_of_another_problems_constraint(relu):
    prob, x, y = relu
    other = y <= 1  # not a constraint of prob
    with pytest.raises(ValueError, match=f"{SUBSET}.*dual variable"):
        CvxpyLayer(prob, [x], [other.dual_variables[0]])


def test_parametric_quad_form_in_a_constraint_is_rejected():
    P = cp.Parameter((2, 2), PSD=True, name="P")
    q = cp.Parameter(2, name="q")
    y = cp.Variable(2, name="y")
    prob = cp.Problem(cp.Minimize(q @ y), [cp.quad_form(y, P) <= 1])
    with pytest.raises(ValueError, match="only supported in the objective") as err:
        CvxpyLayer(prob, [P, q], [y])
    assert "constraint 0" in str(err.value)


def test_unknown_mode_and_solver(relu):
    prob, x, y = relu
    with pytest.raises(ValueError, match="unknown mode 'fast'.*available modes"):
        CvxpyLayer(prob, [x], [y], mode="fast")
    with pytest.raises(ValueError, match="solver='ECOS'"):
        CvxpyLayer(prob, [x], [y], solver="ECOS")


def test_unknown_solver_args_key_lists_accepted(relu):
    prob, x, y = relu
    layer = CvxpyLayer(prob, [x], [y])
    with pytest.raises(ValueError, match="unknown solver_args key.*'epsilon'.*accepted keys"):
        layer(torch.ones(3), solver_args={"epsilon": 1e-3})
    with pytest.raises(ValueError, match="max_iters"):
        layer(torch.ones(3), solver_args={"max_iters": 0})
    with pytest.raises(ValueError, match="linsys.*'cg'.*got 'qr'"):
        layer(torch.ones(3), solver_args={"linsys": "qr"})


@pytest.mark.parametrize(
    "value, match",
    [
        (torch.ones(4), r"Invalid parameter shape .*'x'.*shape \(4,\); expected \(3,\)"),
        (torch.ones(2, 4), r"Invalid parameter shape .*'x'.*shape \(2, 4\)"),
        (torch.ones(2, 2, 3), r"Invalid parameter dimensionality .*'x'.*shape \(2, 2, 3\)"),
        (torch.ones(3, dtype=torch.int64), "'x' has dtype torch.int64"),
        (torch.ones(3, dtype=torch.float16), "'x' has dtype torch.float16"),
        (torch.tensor([1.0, float("nan"), 0.0]), "'x' contains NaN or inf"),
        (torch.ones(0, 3), "empty batch"),
        (np.ones(3), "'x' must be a torch.Tensor"),
    ],
)
def test_bad_parameter_values(relu, value, match):
    prob, x, y = relu
    layer = CvxpyLayer(prob, [x], [y])
    with pytest.raises((ValueError, TypeError), match=match):
        layer(value)


def test_wrong_number_of_parameters(relu):
    prob, x, y = relu
    layer = CvxpyLayer(prob, [x], [y])
    message = "A tensor must be provided for each CVXPY parameter.*expected 1 parameter tensor"
    with pytest.raises(ValueError, match=message):
        layer(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match=message):
        layer()


def test_inconsistent_batch_sizes():
    a = cp.Parameter(2, name="a")
    b = cp.Parameter(2, name="b")
    y = cp.Variable(2)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - a)), [y >= b])
    layer = CvxpyLayer(prob, [a, b], [y])
    with pytest.raises(ValueError, match="Inconsistent batch sizes.*'a': 2.*'b': 3"):
        layer(torch.ones(2, 2), torch.ones(3, 2))


def _infeasible_in_second_element(mode):
    lo = cp.Parameter(name="lo")
    y = cp.Variable()
    prob = cp.Problem(cp.Minimize(y), [y >= lo, y <= 1])
    layer = CvxpyLayer(prob, [lo], [y], mode=mode, fast_path=False)
    return layer, torch.tensor([0.0, 2.0, 0.5], dtype=torch.float64, requires_grad=True)


def test_failed_element_raises_solver_error_naming_it():
    layer, lo = _infeasible_in_second_element("scs")
    with pytest.raises(SolverError, match="element 1: infeasible") as err:
        layer(lo)
    assert isinstance(err.value, diffcp.SolverError)
    assert err.value.failed == [1]


def test_per_element_status_keeps_the_good_elements():
    layer, lo = _infeasible_in_second_element("scs")
    (y,), info = layer(lo, return_status=True, solver_args={"eps": 1e-9})
    assert info.status == (Status.SOLVED, Status.INFEASIBLE, Status.SOLVED)
    assert info.solved.tolist() == [True, False, True]
    torch.testing.assert_close(y[[0, 2]], lo[[0, 2]].detach(), atol=1e-6, rtol=0)
    y[[0, 2]].sum().backward()
    torch.testing.assert_close(lo.grad, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))


def test_block_mode_reports_the_block_status_for_all():
    layer, lo = _infeasible_in_second_element("scs-block")
    _, info = layer(lo, return_status=True)
    assert all(s is Status.INFEASIBLE for s in info.status)


def test_gp_on_a_problem_that_is_not_dgp(relu):
    prob, x, y = relu
    with pytest.raises(ValueError, match="gp=True but the problem is not DGP"):
        CvxpyLayer(prob, [x], [y], gp=True)


@pytest.mark.parametrize("linsys", ["cholesky", "lu", "cg"])
def test_torch_mode_certificates_inside_a_batch(linsys):
    """One infeasible and one unbounded element among solved ones: each gets its status and
    the solved elements their exact answers."""
    lo = cp.Parameter(name="lo")
    w = cp.Parameter(name="w")
    y = cp.Variable()
    z = cp.Variable()
    # min y + w z  s.t. lo ≤ y ≤ 1, z ≥ 0: infeasible if lo > 1, unbounded if w < 0
    prob = cp.Problem(cp.Minimize(y + w * z), [y >= lo, y <= 1, z >= 0])
    layer = CvxpyLayer(prob, [lo, w], [y, z], mode="torch", fast_path=False)
    lo_t = torch.tensor([0.0, 2.0, 0.5, 0.25], dtype=torch.float64)
    w_t = torch.tensor([1.0, 1.0, -1.0, 2.0], dtype=torch.float64)
    (y_out, z_out), info = layer(
        lo_t, w_t, solver_args={"eps": 1e-9, "linsys": linsys}, return_status=True
    )
    assert info.status == (Status.SOLVED, Status.INFEASIBLE, Status.UNBOUNDED, Status.SOLVED)
    torch.testing.assert_close(y_out[[0, 3]], lo_t[[0, 3]], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        z_out[[0, 3]], torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("mode", ["torch", "scs"])
def test_power_cone_closed_form_and_gradient(mode):
    """max z s.t. x^0.3 y^0.7 ≥ |z|, x ≤ a, y ≤ 1: z* = a^0.3, dz*/da = 0.3 a^−0.7. diffcp
    has no power cones: asking for its backward is a clear error before any solve."""
    a = cp.Parameter(pos=True, name="a")
    v = cp.Variable(3, name="v")
    prob = cp.Problem(
        cp.Maximize(v[2]), [cp.PowCone3D(v[0], v[1], v[2], 0.3), v[0] <= a, v[1] <= 1]
    )
    layer = CvxpyLayer(prob, [a], [v], mode=mode, fast_path=False)
    a_t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    (v_out,) = layer(a_t, solver_args={"eps": 1e-9, "max_iters": 100_000})
    torch.testing.assert_close(v_out[2], a_t.detach() ** 0.3, atol=1e-5, rtol=0)
    v_out[2].backward()
    torch.testing.assert_close(a_t.grad, 0.3 * a_t.detach() ** -0.7, atol=1e-4, rtol=0)
    with pytest.raises(NotImplementedError, match="power cones.*'dense'"):
        layer(a_t, solver_args={"backward": "diffcp"})


def test_failed_elements_get_nan_gradient_on_request():
    layer, lo = _infeasible_in_second_element("scs")
    (y,), info = layer(lo, return_status=True, solver_args={"failed_gradient": "nan"})
    y[[0, 2]].sum().backward()
    assert torch.isnan(lo.grad[1]) and torch.isfinite(lo.grad[[0, 2]]).all()
    with pytest.raises(ValueError, match="failed_gradient"):
        layer(lo, solver_args={"failed_gradient": "ignore"})
