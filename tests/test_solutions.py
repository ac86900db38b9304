"""Forward solutions of every mode against cvxpy + Clarabel, and batched/unbatched consistency."""

import numpy as np
import pytest
import torch
from problems import CASES, solve_reference

from cvxlayer import CvxpyLayer

MODES = ["ipm", "torch", "scs", "scs-block", "clarabel"]
TIGHT = {"eps": 1e-9, "max_iters": 200_000}


def _tensors(values, dtype=torch.float64):
    return [torch.as_tensor(v, dtype=dtype) for v in values]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_batch_matches_clarabel(name, mode):
    case = CASES[name]
    rng = np.random.default_rng(0)
    draws = [case.draw(rng) for _ in range(3)]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, mode=mode, fast_path=False)
    batched = [torch.stack(t) for t in zip(*[_tensors(d) for d in draws])]
    outputs = layer(*batched, solver_args=TIGHT)
    for i, values in enumerate(draws):
        for out, ref in zip(outputs, solve_reference(case, values)):
            np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("linsys", ["cholesky", "lu", "cg"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_torch_mode_linear_systems_match_clarabel(name, linsys):
    case = CASES[name]
    rng = np.random.default_rng(20)
    draws = [case.draw(rng) for _ in range(3)]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, mode="torch", fast_path=False)
    batched = [torch.stack(t) for t in zip(*[_tensors(d) for d in draws])]
    outputs, info = layer(*batched, solver_args={**TIGHT, "linsys": linsys}, return_status=True)
    assert all(s.ok for s in info.status), info.status
    for i, values in enumerate(draws):
        for out, ref in zip(outputs, solve_reference(case, values)):
            np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_unbatched_call_matches_batched_row(mode):
    case = CASES["socp"]
    rng = np.random.default_rng(1)
    draws = [case.draw(rng) for _ in range(2)]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, mode=mode, fast_path=False)
    batched = [torch.stack(t) for t in zip(*[_tensors(d) for d in draws])]
    (y_batch,) = layer(*batched, solver_args=TIGHT)
    (y_single,) = layer(*_tensors(draws[1]), solver_args=TIGHT)
    assert y_single.shape == (3,)
    assert y_batch.shape == (2, 3)
    torch.testing.assert_close(y_single, y_batch[1], atol=1e-6, rtol=0)


def test_shared_and_batched_parameters_mix():
    """Unbatched parameters broadcast; output has the batch dimension."""
    case = CASES["socp"]
    rng = np.random.default_rng(2)
    F, g, _ = _tensors(case.draw(rng))
    p = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    (y,) = layer(F, g, p, solver_args=TIGHT)
    assert y.shape == (4, 3)
    for i in range(4):
        (ref,) = solve_reference(case, [F.numpy(), g.numpy(), p[i].numpy()])
        np.testing.assert_allclose(y[i].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_converges_to_its_own_tolerance(name, mode):
    """float32 in, float32 out; the torch mode runs in float32 (tolerances floored at 1e-4)."""
    case = CASES[name]
    values = case.draw(np.random.default_rng(3))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, mode=mode, fast_path=False)
    (x,), info = layer(*_tensors(values, torch.float32), solver_args=TIGHT, return_status=True)
    assert info.status[0].ok and x.dtype == torch.float32
    (ref,) = solve_reference(case, values)
    np.testing.assert_allclose(x.numpy(), ref, atol=2e-3 * max(1.0, np.abs(ref).max()))


def test_warm_independent_repeat_calls_agree():
    """Two calls with the same inputs give the same answer (no state leaks between calls)."""
    case = CASES["exp"]
    values = _tensors(case.draw(np.random.default_rng(4)))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    (a,) = layer(*values, solver_args=TIGHT)
    (b,) = layer(*values, solver_args=TIGHT)
    torch.testing.assert_close(a, b)


def test_max_iters_is_honoured():
    case = CASES["psd"]
    values = _tensors(case.draw(np.random.default_rng(5)))
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    _, info = layer(*values, solver_args={"max_iters": 3, "eps": 1e-12}, return_status=True)
    assert info.iterations.tolist() == [3]
    assert info.status[0].value in ("max_iters", "solved_inaccurate")


def test_auto_mode_uses_native_scs_on_cpu():
    case = CASES["socp"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    assert layer.mode == "auto"
    values = _tensors(case.draw(np.random.default_rng(8)))
    (y,), info = layer(*values, solver_args=TIGHT, return_status=True)
    assert info.mode == "scs"
    (ref,) = solve_reference(case, [v.numpy() for v in values])
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-5)


@pytest.mark.requires_cuda
def test_auto_mode_uses_torch_solver_on_cuda():
    case = CASES["socp"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    values = [v.cuda() for v in _tensors(case.draw(np.random.default_rng(8)))]
    (y,), info = layer(*values, solver_args=TIGHT, return_status=True)
    assert info.mode == "torch" and y.is_cuda
    (ref,) = solve_reference(case, [v.cpu().numpy() for v in values])
    np.testing.assert_allclose(y.cpu().numpy(), ref, atol=1e-5)


def test_torch_mode_warm_start_from_the_solution_converges_at_once():
    """Warm-started at its own solution, the batched ADMM stops at the first check."""
    from cvxlayer.solvers import SolveSettings, get_solver

    case = CASES["socp"]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables)
    draws = [case.draw(np.random.default_rng(30 + i)) for i in range(3)]
    batched = [torch.stack(t) for t in zip(*[_tensors(d) for d in draws])]
    program = layer.compiled.cone_program(batched)
    solver, settings = get_solver("torch"), SolveSettings(eps_abs=1e-8, eps_rel=1e-8)
    cold = solver.solve(program, settings)
    warm = solver.solve(program, settings, warm_start=cold)
    assert all(s.ok for s in warm.status)
    assert (warm.iterations <= 10).all() and (cold.iterations > 10).all()
    torch.testing.assert_close(warm.x, cold.x, atol=1e-6, rtol=0)


def test_auto_linsys_is_cholesky_for_small_and_cg_for_large_programs():
    from cvxlayer.solvers.linsys import CGSystem, CholeskySystem, make_linsys

    assert isinstance(make_linsys("auto", 128, 100, 100), CholeskySystem)
    assert isinstance(make_linsys("auto", 4, 5000, 10_000), CGSystem)
    with pytest.raises(ValueError, match="unknown linsys"):
        make_linsys("qr", 1, 1, 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["qp", "socp"])
def test_scs_mode_with_shared_matrices_matches_clarabel(name, threads):
    """Matrix parameters shared and vector ones batched: every element has the same A and
    P, so mode "scs" with `reuse_setup` sets SCS up once per thread and only updates b and c
    (SCS's `update`). Each element must still match its own Clarabel solve."""
    from cvxlayer.layer import _prepare_parameters
    from cvxlayer.solvers.scs_native import _shares_matrices

    case = CASES[name]
    rng = np.random.default_rng(7)
    draws = [case.draw(rng) for _ in range(5)]
    shared = [p.ndim == 2 for p in case.parameters]
    values = [
        torch.as_tensor(draws[0][k]) if keep else torch.stack(_tensors([d[k] for d in draws]))
        for k, keep in enumerate(shared)
    ]
    layer = CvxpyLayer(case.problem, case.parameters, case.variables, mode="scs", fast_path=False)
    batch, _ = _prepare_parameters(layer.compiled, values)
    assert _shares_matrices(layer.compiled.cone_program(batch))
    outputs = layer(*values, solver_args={**TIGHT, "threads": threads, "reuse_setup": True})
    for i, draw in enumerate(draws):
        used = [draws[0][k] if keep else draw[k] for k, keep in enumerate(shared)]
        for out, ref in zip(outputs, solve_reference(case, used)):
            np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-5)
