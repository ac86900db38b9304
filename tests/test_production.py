"""Layers in production code: pickling, copying, saving, no-grad inference, threads."""

import copy
import io
import pickle
from concurrent.futures import ThreadPoolExecutor

import cvxpy as cp
import pytest
import torch

from cvxlayer import CvxpyLayer


def _layer(fast_path):
    n = 3
    p = cp.Parameter(n)
    x = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0])
    return CvxpyLayer(problem, [p], [x], fast_path=fast_path)


@pytest.mark.parametrize("fast_path", [True, False])
def test_pickle_deepcopy_and_torch_save_round_trips(fast_path):
    layer = _layer(fast_path)
    v = torch.tensor([[1.0, -1.0, 0.5], [-2.0, 3.0, 0.0]], dtype=torch.float64)
    (expected,) = layer(v)
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    for clone in (
        pickle.loads(pickle.dumps(layer)),
        copy.deepcopy(layer),
        torch.load(buffer, weights_only=False),
    ):
        (got,) = clone(v)
        torch.testing.assert_close(got, expected)
    assert layer.state_dict() == {}  # no tensors of its own: nothing to save or load


def test_no_grad_inference_keeps_no_graph():
    layer = _layer(True)
    v = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        (y,) = layer(v)
    assert y.grad_fn is None and not y.requires_grad
    torch.testing.assert_close(y, v.detach().clamp(min=0))


@pytest.mark.parametrize("fast_path", [True, False])
def test_concurrent_calls_from_threads(fast_path):
    layer = _layer(fast_path)
    inputs = [torch.randn(4, 3, dtype=torch.float64) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda v: layer(v)[0], inputs))
    for v, y in zip(inputs, outputs):
        torch.testing.assert_close(y, v.clamp(min=0), atol=1e-5, rtol=0)


def test_wrapping_the_same_problem_twice_compiles_once():
    n = 4
    p, x = cp.Parameter(n), cp.Variable(n)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= 0])
    first = CvxpyLayer(problem, [p], [x])
    second = CvxpyLayer(problem, [p], [x], mode="scs")
    assert second.compiled is first.compiled
    assert CvxpyLayer(problem, [p], [x], gp=False, canon_backend="SCIPY").compiled is not (
        first.compiled
    )
