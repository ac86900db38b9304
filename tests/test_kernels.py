"""cvxlayer_cuda's Triton kernels against their torch references, and the backend choice.

Without a GPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here before
Triton is imported); with one they run compiled on CUDA. Skipped when Triton is absent.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

import cvxlayer_cuda  # noqa: E402
from cvxlayer import CvxpyLayer  # noqa: E402
from cvxlayer.cones.projections import (  # noqa: E402
    ConeProjector,
    proj_exp_primal_polar_reference,
    proj_psd_reference,
    proj_soc_reference,
)
from cvxlayer.cones.spec import ConeSpec  # noqa: E402
from cvxlayer.solvers.admm_update import CONE, FREE, NONNEG, admm_update_reference  # noqa: E402
from cvxlayer_cuda.admm_update import admm_update  # noqa: E402
from cvxlayer_cuda.exp_cone import proj_exp_primal_polar  # noqa: E402
from cvxlayer_cuda.psd import proj_psd  # noqa: E402
from cvxlayer_cuda.soc import proj_soc  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter evaluates kernels with NumPy, which warns about the inf/NaN that masked-off
# branches of elementwise `where`s compute (torch computes them silently)
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


@pytest.fixture
def forced():
    """Force a backend for one test and restore the previous setting."""
    before = cvxlayer_cuda.get_backend()
    yield cvxlayer_cuda.set_backend
    cvxlayer_cuda.set_backend(before)


@pytest.fixture
def gen():
    """Each test's own random stream."""
    return torch.Generator().manual_seed(0)


def _randn(gen, *shape, dtype=torch.float64):
    return torch.randn(*shape, generator=gen, dtype=dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [1, 2, 5, 33])
def test_soc_kernel_matches_reference(size, dtype, gen):
    z = _randn(gen, 7, 11, size, dtype=dtype)
    z[0, 0, 0] = z[0, 0, 1:].norm() + 1  # inside
    z[0, 1, 0] = -z[0, 1, 1:].norm() - 1  # polar
    torch.testing.assert_close(proj_soc(z), proj_soc_reference(z))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_exp_cone_kernel_matches_reference(scale, dtype, gen):
    """Every region: inside K, in the polar, the heuristic faces, and the Newton root."""
    v = scale * _randn(gen, 600, 3, dtype=dtype)
    atol = 1e-9 * max(1.0, scale) if dtype == torch.float64 else 1e-4 * max(1.0, scale)
    for got, ref in zip(proj_exp_primal_polar(v), proj_exp_primal_polar_reference(v)):
        torch.testing.assert_close(
            got, ref, atol=atol, rtol=1e-6 if dtype == torch.float64 else 1e-4
        )


def test_exp_cone_kernel_edge_points():
    """Origin, axes, faces, tiny and large coordinates (float64's range ends)."""
    pts = [
        [0.0, 0.0, 0.0],
        [-1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.0, -1.0],
        [1.0, 1.0, 1e-200],
        [1e-200, 1e-200, 1e-200],
        [-1e-200, 2e-200, -1e-200],
        [300.0, 1.0, 1.0],
        [-300.0, 1.0, -1.0],
        [1e3, -1e3, 1e3],
        [2.0, -0.5, 1e-300],
    ]
    v = torch.tensor(pts, dtype=torch.float64, device=DEVICE)
    for got, ref in zip(proj_exp_primal_polar(v), proj_exp_primal_polar_reference(v)):
        torch.testing.assert_close(got, ref, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize(
    "side, dtype", [(1, torch.float64), (2, torch.float32), (3, torch.float64)]
)
def test_psd_kernel_matches_reference(side, dtype, gen):
    """Jacobi sweeps in registers against torch's eigh (the interpreter is slow: small sides
    here; the kernel takes sides up to 16)."""
    v = _randn(gen, 3, side * (side + 1) // 2, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(proj_psd(v), proj_psd_reference(v), atol=tol, rtol=tol)


def test_psd_kernel_rejects_large_sides(gen):
    with pytest.raises(ValueError, match="sides up to 16"):
        proj_psd(_randn(gen, 1, 17 * 18 // 2))


@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("size", [3, 40, 1500])  # 1500 > one block: the loops run twice
def test_admm_update_kernel_matches_reference(size, dtype, first, gen):
    B = 6
    p, g = _randn(gen, B, size, dtype=dtype), _randn(gen, B, size, dtype=dtype)
    v = _randn(gen, B, size + 1, dtype=dtype)
    weights = torch.rand(B, size, generator=gen, dtype=dtype).to(DEVICE) + 0.1
    kinds = torch.randint(0, 3, (size,), generator=gen).to(torch.int8).to(DEVICE)
    for got, ref in zip(
        admm_update(p, v, g, weights, kinds, first),
        admm_update_reference(p, v, g, weights, kinds, first),
    ):
        torch.testing.assert_close(got, ref)
    assert {FREE, NONNEG, CONE} == {0, 1, 2}


def test_backend_choice_is_visible_and_can_be_forced(forced):
    cpu = torch.zeros(1)
    forced("auto")
    assert cvxlayer_cuda.backend_for(cpu) == "torch"  # auto: kernels only on CUDA
    forced("triton")
    if cvxlayer_cuda.interpreting():
        assert cvxlayer_cuda.backend_for(cpu) == "triton"
    else:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            cvxlayer_cuda.backend_for(cpu)
    forced("torch")
    assert cvxlayer_cuda.backend_for(cpu) == "torch"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        cvxlayer_cuda.set_backend("cuda")


def test_forcing_kernels_without_triton_is_a_clear_error(forced, monkeypatch):
    monkeypatch.setattr(cvxlayer_cuda, "triton_available", lambda: False)
    forced("auto")
    assert cvxlayer_cuda.backend_for(torch.zeros(1)) == "torch"
    forced("triton")
    with pytest.raises(RuntimeError, match="not installed"):
        cvxlayer_cuda.backend_for(torch.zeros(1))


def test_projector_uses_the_kernel_when_forced(forced, gen):
    spec = ConeSpec(nonneg=2, soc=(3, 4, 3))
    v = _randn(gen, 5, spec.size)
    forced("torch")
    ref = ConeProjector(spec).dual(v)
    forced("triton")
    torch.testing.assert_close(ConeProjector(spec).dual(v), ref)


def test_torch_mode_solves_identically_with_kernels(forced, gen):
    """A whole solve (SOC, nonneg and zero rows) with the kernels equals the reference one
    to rounding: same iterations, same solution."""
    import cvxpy as cp

    n = 4
    F, p = cp.Parameter((n, n)), cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(
        cp.Minimize(cp.sum_squares(y - p)), [cp.norm(F @ y) <= 1, y >= -0.5, cp.sum(y) == 0.1]
    )
    layer = CvxpyLayer(prob, [F, p], [y], mode="torch", fast_path=False)
    Fv = _randn(gen, 3, n, n) + 2 * torch.eye(n, dtype=torch.float64, device=DEVICE)
    pv = 3 * _randn(gen, 3, n)
    runs = {}
    for backend in ("torch", "triton"):
        forced(backend)
        runs[backend] = layer(Fv, pv, solver_args={"eps": 1e-8}, return_status=True)
    (y_ref,), info_ref = runs["torch"]
    (y_ker,), info_ker = runs["triton"]
    torch.testing.assert_close(y_ker, y_ref, atol=1e-9, rtol=0)
    assert info_ker.iterations.tolist() == info_ref.iterations.tolist()


@pytest.mark.slow  # ~30 s in Triton's interpreter
def test_torch_mode_with_exp_cones_agrees_with_kernels(forced, gen):
    """An entropy problem (exponential cones) solved with and without the kernels."""
    import cvxpy as cp

    n = 4
    theta = cp.Parameter(n)
    y = cp.Variable(n)
    prob = cp.Problem(cp.Minimize(-theta @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1, y <= 0.4])
    layer = CvxpyLayer(prob, [theta], [y], mode="torch", fast_path=False)
    thetas = _randn(gen, 2, n)
    outputs = {}
    for backend in ("torch", "triton"):
        forced(backend)
        outputs[backend] = layer(thetas, solver_args={"eps": 1e-8})[0]
    torch.testing.assert_close(outputs["triton"], outputs["torch"], atol=1e-6, rtol=0)


def test_a_failing_kernel_falls_back_to_its_reference_under_auto(forced, monkeypatch, gen):
    """Under "auto" a kernel that raises (e.g. it does not compile on some GPU) warns once and
    its reference answers from then on; a forced "triton" surfaces the error."""
    import cvxlayer_cuda.soc
    from cvxlayer.cones.projections import proj_soc as dispatched_soc

    def broken(z):
        raise RuntimeError("no kernel for you")

    monkeypatch.setattr(cvxlayer_cuda, "_failed", set())
    monkeypatch.setattr(cvxlayer_cuda.soc, "proj_soc", broken)
    z = _randn(gen, 4, 3)
    forced("triton")
    with pytest.raises(RuntimeError, match="no kernel for you"):
        dispatched_soc(z)
    forced("auto")
    monkeypatch.setattr(cvxlayer_cuda, "backend_for", lambda t: "triton")
    with pytest.warns(RuntimeWarning, match="soc.proj_soc failed"):
        torch.testing.assert_close(dispatched_soc(z), proj_soc_reference(z))
    assert "soc.proj_soc" in cvxlayer_cuda._failed
    torch.testing.assert_close(dispatched_soc(z), proj_soc_reference(z))  # no second warning
