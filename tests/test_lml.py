"""LML and the entropy closed forms: the direct function and the layer's fast path."""

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer, Status, lml
from cvxlayer.fastpaths import EntropyForm

TIGHT = {"eps": 1e-10, "max_iters": 200_000}


def _clarabel_lml(x: np.ndarray, k: float) -> np.ndarray:
    y = cp.Variable(x.size)
    objective = -x @ y - cp.sum(cp.entr(y) + cp.entr(1 - y))
    cp.Problem(cp.Minimize(objective), [cp.sum(y) == k]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11
    )
    return y.value


@pytest.mark.parametrize(("d", "k"), [(6, 1), (6, 2.5), (20, 5), (20, 19)])
def test_lml_matches_clarabel(d, k):
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64) * 2
    y = lml(x, k)
    torch.testing.assert_close(y.sum(1), torch.full((3,), float(k), dtype=torch.float64))
    for i in range(3):
        np.testing.assert_allclose(y[i].numpy(), _clarabel_lml(x[i].numpy(), k), atol=1e-6)


def test_lml_preserves_order_and_unbatched_shape():
    x = torch.tensor([0.3, -1.0, 2.0, 0.1], dtype=torch.float64)
    y = lml(x, 2)
    assert y.shape == x.shape
    assert torch.equal(torch.argsort(y), torch.argsort(x))


def test_lml_gradcheck_in_x_and_k():
    x = torch.randn(2, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = torch.tensor([2.0, 4.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lml, (x.requires_grad_(), k.requires_grad_()))


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4])
def test_lml_is_stable_for_large_inputs(scale):
    x = torch.randn(4, 10_000, generator=torch.Generator().manual_seed(2)) * scale  # float32
    y = lml(x, 5)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.sum(1), torch.full((4,), 5.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(y.double(), lml(x.double(), 5), atol=1e-4, rtol=0)


def test_lml_errors():
    with pytest.raises(ValueError, match="0 < k < d"):
        lml(torch.zeros(5), 5)
    with pytest.raises(ValueError, match="NaN"):
        lml(torch.tensor([1.0, float("nan"), 0.0]), 1)
    with pytest.raises(ValueError, match="floating"):
        lml(torch.arange(4), 1)


# ---- the layer ----

N = 5


def _forms():
    x, y, k = cp.Parameter(N), cp.Variable(N), cp.Parameter()
    H = cp.sum(cp.entr(y) + cp.entr(1 - y))
    return {
        "lml": (cp.Problem(cp.Minimize(-x @ y - H), [cp.sum(y) == 2]), [x], y, "lml"),
        "lml, k a parameter": (
            cp.Problem(
                cp.Minimize(-x @ y - cp.sum(cp.entr(y)) - cp.sum(cp.entr(1 - y))), [cp.sum(y) == k]
            ),
            [x, k],
            y,
            "lml",
        ),
        "sigmoid": (cp.Problem(cp.Minimize(-x @ y - H)), [x], y, "sigmoid"),
        "softmax": (
            cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1]),
            [x],
            y,
            "softmax",
        ),
        "scaled softmax": (
            cp.Problem(cp.Minimize(-2 * (x @ y) - 0.5 * cp.sum(cp.entr(y))), [k == cp.sum(y)]),
            [x, k],
            y,
            "softmax",
        ),
        "multiply form": (
            cp.Problem(cp.Minimize(cp.sum(-cp.multiply(x, y)) - H)),
            [x],
            y,
            "sigmoid",
        ),
    }


@pytest.mark.parametrize("name", sorted(_forms()))
def test_entropy_forms_match_the_generic_path(name):
    prob, params, y, kind = _forms()[name]
    fast = CvxpyLayer(prob, params, [y])
    assert isinstance(fast.fast_path, EntropyForm) and fast.fast_path.kind == kind
    generic = CvxpyLayer(prob, params, [y], fast_path=False)
    values = [torch.randn(3, N, generator=torch.Generator().manual_seed(3), dtype=torch.float64)]
    if len(params) == 2:
        values.append(torch.tensor([1.5, 2.0, 3.2], dtype=torch.float64))
    leaves = [[v.clone().requires_grad_() for v in values] for _ in range(2)]
    (a,), info = fast(*leaves[0], return_status=True)
    (b,) = generic(*leaves[1], solver_args=TIGHT)
    assert info.mode == kind
    torch.testing.assert_close(a, b, atol=1e-7, rtol=0)
    w = torch.arange(N, dtype=torch.float64)
    (a * w).sum().backward()
    (b * w).sum().backward()
    for p, q in zip(*leaves):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5)


def test_closed_forms_equal_torch_functions():
    prob, params, y, _ = _forms()["sigmoid"]
    x = torch.randn(4, N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (s,) = CvxpyLayer(prob, params, [y])(x)
    torch.testing.assert_close(s, torch.sigmoid(x))
    prob, params, y, _ = _forms()["softmax"]
    (s,) = CvxpyLayer(prob, params, [y])(x)
    torch.testing.assert_close(s, torch.softmax(x, 1))


def test_problems_that_are_not_entropy_forms_are_not_matched():
    x, y = cp.Parameter(N), cp.Variable(N)
    H = cp.sum(cp.entr(y) + cp.entr(1 - y))
    extra_bound = cp.Problem(cp.Minimize(-x @ y - H), [cp.sum(y) == 2, y <= 0.9])
    mismatched = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y)) - 2 * cp.sum(cp.entr(1 - y))))
    quadratic = cp.Problem(cp.Minimize(-x @ y - H + cp.sum_squares(y)))
    for prob in (extra_bound, mismatched, quadratic):
        layer = CvxpyLayer(prob, [x], [y])
        assert not isinstance(layer.fast_path, EntropyForm)


def test_budget_outside_the_range_falls_back_to_the_generic_mode():
    prob, params, y, _ = _forms()["lml, k a parameter"]
    layer = CvxpyLayer(prob, params, [y])
    x = torch.randn(2, N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = torch.tensor([2.0, N + 1.0], dtype=torch.float64)  # Σy = 6 > 5: infeasible
    (_,), info = layer(x, k, return_status=True)
    assert info.status[0] is Status.SOLVED
    assert info.status[1] in (Status.INFEASIBLE, Status.INFEASIBLE_INACCURATE)
