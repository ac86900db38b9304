"""Property-based: malformed calls end in a correct answer or a clear error, never a crash,
a hang or unlabeled numbers (issue 10)."""

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvxlayer import CvxpyLayer, Status

SHAPES = {"A": (3, 2), "b": (3,)}


def _layers():
    A = cp.Parameter(SHAPES["A"], name="A")
    b = cp.Parameter(SHAPES["b"], name="b")
    x = cp.Variable(2)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(A @ x - b) + cp.sum_squares(x)), [x >= -1])
    return {
        "qp": CvxpyLayer(prob, [A, b], [x]),
        "scs": CvxpyLayer(prob, [A, b], [x], mode="scs", fast_path=False),
    }


LAYERS = _layers()

KINDS = [
    "shared",
    "batched",
    "wrong_shape",
    "wrong_ndim",
    "float16",
    "int64",
    "complex64",
    "nan",
    "inf",
    "transposed_view",
    "expanded",
    "empty_batch",
    "numpy",
    "none",
    "float32",
]


def _make(name: str, kind: str, batch: int, seed: int):
    """A parameter value of the given kind; `batch` is used by batched kinds."""
    shape = SHAPES[name]
    gen = torch.Generator().manual_seed(seed)
    good = torch.randn(batch, *shape, generator=gen, dtype=torch.float64)
    if kind == "shared":
        return good[0]
    if kind == "batched":
        return good
    if kind == "wrong_shape":
        return torch.randn(*(d + 1 for d in shape), generator=gen, dtype=torch.float64)
    if kind == "wrong_ndim":
        return torch.randn(2, 2, *shape, generator=gen, dtype=torch.float64)
    if kind in ("float16", "int64", "complex64", "float32"):
        return good.to(getattr(torch, kind))
    if kind in ("nan", "inf"):
        bad = good.clone()
        bad.view(-1)[seed % bad.numel()] = float(kind)
        return bad
    if kind == "transposed_view":
        if len(shape) < 2:
            return good[:, None, :][:, 0, :]  # a strided view of the same values
        return good.transpose(1, 2).contiguous().transpose(1, 2)
    if kind == "expanded":
        return good[:1].expand(batch, *shape)
    if kind == "empty_batch":
        return good[:0]
    if kind == "numpy":
        return good.numpy()
    return None


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    kind_A=st.sampled_from(KINDS),
    kind_b=st.sampled_from(KINDS),
    batch_A=st.integers(1, 3),
    batch_b=st.integers(1, 3),
    seed=st.integers(0, 1000),
    layer_name=st.sampled_from(sorted(LAYERS)),
)
def test_malformed_calls(kind_A, kind_b, batch_A, batch_b, seed, layer_name):
    layer = LAYERS[layer_name]
    args = [_make("A", kind_A, batch_A, seed), _make("b", kind_b, batch_b, seed + 1)]
    try:
        (x,), info = layer(*args, return_status=True)
    except (ValueError, TypeError) as err:
        message = str(err)
        assert "'A'" in message or "'b'" in message or "batch" in message, message
        return
    # a call that was accepted: every input was a float tensor of a valid shape; elements
    # with NaN/inf values are reported "invalid_input" with NaN outputs, the others solved
    assert all(isinstance(a, torch.Tensor) and a.is_floating_point() for a in args)
    valid = _finite_rows(args[0], "A") & _finite_rows(args[1], "b")
    valid = valid.expand(x.shape[0]) if x.dim() == 2 else valid.reshape(1)
    rows = x.reshape(valid.shape[0], -1)
    for ok, row, status in zip(valid.tolist(), rows, info.status):
        assert status.ok if ok else status is Status.INVALID_INPUT
        assert bool(torch.isfinite(row).all()) if ok else bool(torch.isnan(row).all())
    # the valid answers equal those for clean, contiguous float64 copies of the inputs
    clean = [torch.nan_to_num(a.detach().contiguous().double(), posinf=0, neginf=0) for a in args]
    (expected,) = layer(*clean)
    tol = 1e-3 if any(a.dtype == torch.float32 for a in args) else 1e-6
    expected = expected.reshape(valid.shape[0], -1)
    torch.testing.assert_close(rows[valid].double(), expected[valid], atol=tol, rtol=0)


def _finite_rows(arg: torch.Tensor, name: str) -> torch.Tensor:
    """(B,) for a batched argument, () for a shared one: whether its values are finite."""
    if arg.dim() == len(SHAPES[name]) + 1:
        return torch.isfinite(arg.reshape(arg.shape[0], -1)).all(1)
    return torch.isfinite(arg).all()


@pytest.mark.parametrize("layer_name", sorted(LAYERS))
def test_mismatched_batch_sizes_name_both_parameters(layer_name):
    A, b = torch.zeros(2, 3, 2, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="'A': 2, 'b': 3"):
        LAYERS[layer_name](A, b)


def test_wrong_number_of_parameters_lists_the_expected_ones():
    with pytest.raises(ValueError, match=r"expected 2 parameter tensor\(s\) \(A, b\)"):
        LAYERS["qp"](torch.zeros(3, 2, dtype=torch.float64))


def test_numpy_values_are_rejected_with_the_parameter_name():
    with pytest.raises(TypeError, match="parameter 'A' must be a torch.Tensor"):
        LAYERS["qp"](np.zeros((3, 2)), torch.zeros(3, dtype=torch.float64))
