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
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(8)]
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


@pytest.mark.parametrize("fast_path", [True, False])
def test_max_batch_chunks_give_the_same_solutions_status_and_gradients(fast_path):
    """A batch of 7 in chunks of 3 (3 + 3 + 1) equals the whole batch solved at once; an
    infeasible element in the middle chunk keeps its status and gets a zero gradient."""
    n = 3
    p, lo = cp.Parameter(n), cp.Parameter()
    x = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - p)), [x >= lo, cp.sum(x) <= 1])
    layer = CvxpyLayer(prob, [p, lo], [x], fast_path=fast_path)
    gen = torch.Generator().manual_seed(2)
    pv = torch.randn(7, n, generator=gen, dtype=torch.float64)
    lov = torch.full((7,), -1.0, dtype=torch.float64)
    lov[4] = 1.0  # sum(x) ≥ 3 > 1: infeasible
    results = {}
    for max_batch in (None, 3):
        leaves = [pv.clone().requires_grad_(), lov.clone().requires_grad_()]
        args = {"eps": 1e-9, "max_batch": max_batch}
        (out,), info = layer(*leaves, solver_args=args, return_status=True)
        out[torch.arange(7) != 4].sum().backward()
        results[max_batch] = (out, info, leaves)
    (x_all, info_all, g_all), (x_chunk, info_chunk, g_chunk) = results[None], results[3]
    assert info_chunk.status == info_all.status and not info_chunk.status[4].ok
    keep = torch.arange(7) != 4
    torch.testing.assert_close(x_chunk[keep], x_all[keep], atol=1e-7, rtol=0)
    for a, b in zip(g_all, g_chunk):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-6, rtol=0)
    assert (g_chunk[0].grad[4] == 0).all()
    with pytest.raises(ValueError, match="max_batch"):
        layer(pv, lov, solver_args={"max_batch": 0})
