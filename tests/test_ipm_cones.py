"""The interior-point operations of each cone family, checked by their defining identities
on random interior points. Symmetric families: W z = W⁻ᵀ s = λ, W W⁻¹ = I,
⟨W u, v⟩ = ⟨u, Wᵀ v⟩, λ ∘ (λ \\ v) = v, e ∘ v = v, and the step to the boundary lands on
it. Exponential and power cones: the dual barrier's derivatives against autograd, the
conjugate's gradient, H z = s and H z̃ = s̃, and the backtracked step."""

import pytest
import torch

from cvxlayer.cones import exp, nonneg, nonsymmetric, power, psd, soc

FAMILIES = {"nonneg": (nonneg, 1), "soc": (soc, 6), "psd": (psd, 10)}  # psd: side 4


def _interior(family, size, gen, count=5, batch=3):
    """Points well inside the cone: e·(margin) plus a random vector."""
    v = torch.randn(batch, count, size, generator=gen, dtype=torch.float64)
    shift = (1 - family.margin(v)).clamp(min=0).unsqueeze(-1)
    return v + shift * family.unit(v)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_scaling_identities(name):
    family, size = FAMILIES[name]
    gen = torch.Generator().manual_seed(11)
    s, z = _interior(family, size, gen), _interior(family, size, gen)
    sc = family.Scaling(s, z)
    tol = {"atol": 1e-10, "rtol": 1e-10}
    torch.testing.assert_close(sc.W(z), sc.lam, **tol)
    torch.testing.assert_close(sc.WinvT(s), sc.lam, **tol)
    u, v = (torch.randn(s.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(sc.W(sc.Winv(u)), u, **tol)
    torch.testing.assert_close(sc.WT(sc.WinvT(u)), u, **tol)
    torch.testing.assert_close((sc.W(u) * v).sum(-1), (u * sc.WT(v)).sum(-1), **tol)
    torch.testing.assert_close(family.jordan(sc.lam, sc.div(v)), v, **tol)
    torch.testing.assert_close(family.jordan(family.unit(v), v), v, **tol)
    # H = WᵀW and H⁻¹ as the families compute them (closed forms) against the compositions
    torch.testing.assert_close(sc.H(u), sc.WT(sc.W(u)), **tol)
    torch.testing.assert_close(sc.Hinv(u), sc.Winv(sc.WinvT(u)), **tol)
    torch.testing.assert_close(sc.H(sc.Hinv(u)), u, **tol)
    # the same operators applied to several vectors per element (the columns of A)
    many = torch.randn(s.shape[0], 7, *s.shape[1:], generator=gen, dtype=torch.float64)
    torch.testing.assert_close(sc.WinvT(many)[:, 2], sc.WinvT(many[:, 2]), **tol)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_step_to_the_boundary(name):
    family, size = FAMILIES[name]
    gen = torch.Generator().manual_seed(12)
    sc = family.Scaling(_interior(family, size, gen), _interior(family, size, gen))
    d = 3 * torch.randn(sc.lam.shape, generator=gen, dtype=torch.float64)
    alpha = sc.step_from_lam(d)
    limited = torch.isfinite(alpha)
    assert limited.any()
    edge = family.margin(sc.lam + alpha.nan_to_num(posinf=0).unsqueeze(-1) * d)
    torch.testing.assert_close(edge[limited], torch.zeros_like(edge[limited]), atol=1e-9, rtol=0)
    # without a limit the whole ray stays inside
    far = family.margin(sc.lam + 1e3 * d)
    assert (far[~limited] >= -1e-9).all()


def test_psd_step_reports_a_failed_direction_instead_of_raising():
    """A NaN direction (a failed factorization) gives a zero step for its element only; the
    others keep the exact step."""
    gen = torch.Generator().manual_seed(5)
    s, z = _interior(psd, 10, gen), _interior(psd, 10, gen)
    sc = psd.Scaling(s, z)
    d = torch.randn(s.shape, generator=gen, dtype=torch.float64)
    expected = sc.step_from_lam(d)
    d[1, 2, 0] = float("nan")
    got = sc.step_from_lam(d)
    assert got[1, 2] == 0
    mask = torch.ones_like(got, dtype=torch.bool)
    mask[1, 2] = False
    torch.testing.assert_close(got[mask], expected[mask])


# ---------------------------------------------------------------- nonsymmetric families
def _exp_dual_barrier(z):
    return -torch.log(z[1] - z[0] - z[0] * torch.log(-z[2] / z[0])) - torch.log(-z[0] * z[2])


def _pow_dual_barrier(alpha):
    def f(z):
        phi = (z[0] / alpha) ** (2 * alpha) * (z[1] / (1 - alpha)) ** (2 - 2 * alpha)
        return -torch.log(phi - z[2] ** 2) - (1 - alpha) * torch.log(z[0]) - alpha * torch.log(z[1])

    return f


ALPHAS = torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64)


def _nonsymmetric(name, gen, count=5):
    """(barrier, s ∈ int K, z ∈ int K*, dual barrier per cone) with random points drawn by
    rejection."""
    like = torch.zeros(1, count, 3, dtype=torch.float64)
    barrier = exp.Barrier(like) if name == "exp" else power.Barrier(ALPHAS[:count], like)
    points = []
    for test in (barrier.in_primal, barrier.in_dual):
        out = torch.empty(1, count, 3, dtype=torch.float64)
        for i in range(count):
            while True:
                v = 2 * torch.randn(1, count, 3, generator=gen, dtype=torch.float64)
                if test(v)[0, i]:
                    out[0, i] = v[0, i]
                    break
        points.append(out)
    fns = [_exp_dual_barrier] * count if name == "exp" else [_pow_dual_barrier(a) for a in ALPHAS]
    return barrier, points[0], points[1], fns


@pytest.mark.parametrize("name", ["exp", "power"])
def test_nonsymmetric_barrier_derivatives_match_autograd(name):
    """∇f*, ∇²f* and ∇³f*[u, v] as the family computes them, against autograd of f*."""
    gen = torch.Generator().manual_seed(21)
    barrier, s, z, fns = _nonsymmetric(name, gen)
    sc = nonsymmetric.Scaling(s, z, barrier)
    u, v = (torch.randn(z.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    third = sc._dual_third(u, v)
    for i, f in enumerate(fns):
        zi = z[0, i]
        torch.testing.assert_close(sc.grad[0, i], torch.func.grad(f)(zi))
        torch.testing.assert_close(sc.hess[0, i], torch.func.hessian(f)(zi))
        d3 = torch.func.jacfwd(torch.func.hessian(f))(zi)
        torch.testing.assert_close(third[0, i], torch.einsum("ijk,j,k->i", d3, u[0, i], v[0, i]))


@pytest.mark.parametrize("name", ["exp", "power"])
def test_nonsymmetric_scaling_identities(name):
    """The primal barrier's gradient is the conjugate's: −∇f*(−∇f(s)) = s; the central point
    is its own shadow; H z = s, H z̃ = s̃ (shadows s̃ = −∇f*(z), z̃ = −∇f(s)), H H⁻¹ = I,
    and W⁻ᵀ is a square root of H⁻¹."""
    gen = torch.Generator().manual_seed(22)
    barrier, s, z, _ = _nonsymmetric(name, gen)
    tol = {"atol": 1e-9, "rtol": 1e-9}
    g = barrier.primal_gradient(s)
    torch.testing.assert_close(-nonsymmetric.Scaling(s, -g, barrier).grad, s, **tol)
    p = barrier.central(s)
    torch.testing.assert_close(-nonsymmetric.Scaling(p, p, barrier).grad, p, atol=1e-8, rtol=0)
    sc = nonsymmetric.Scaling(s, z, barrier)
    torch.testing.assert_close(sc.H(z), s, **tol)
    torch.testing.assert_close(sc.H(-g), -sc.grad, **tol)
    u = torch.randn(s.shape, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(sc.H(sc.Hinv(u)), u, **tol)
    w = sc.WinvT(u)
    torch.testing.assert_close((w * w).sum(-1), (u * sc.Hinv(u)).sum(-1), **tol)


@pytest.mark.parametrize("name", ["exp", "power"])
def test_nonsymmetric_step_stays_inside_and_is_nearly_maximal(name):
    """The backtracked step keeps s + αΔs and z + αΔz inside; 1.1 α leaves (or α = 1)."""
    gen = torch.Generator().manual_seed(23)
    barrier, s, z, _ = _nonsymmetric(name, gen)
    sc = nonsymmetric.Scaling(s, z, barrier)
    ds, dz = (3 * torch.randn(s.shape, generator=gen, dtype=torch.float64) for _ in range(2))
    alpha = sc.step(sc.scaled(ds, dz)).unsqueeze(-1)
    assert (alpha > 0).all()
    assert (barrier.in_primal(s + alpha * ds) & barrier.in_dual(z + alpha * dz)).all()
    longer = 1.1 * alpha
    outside = ~(barrier.in_primal(s + longer * ds) & barrier.in_dual(z + longer * dz))
    assert (outside | (alpha[..., 0] == 1)).all()


@pytest.mark.parametrize("name", ["exp", "power"])
def test_conjugate_gradient_near_the_boundary(name):
    """−∇f*(−∇f(s)) = s for points 1e-4 … 1e-12 (relative) from the cone's curved boundary,
    where the gradients grow like 1/distance: rounding bounds the error by ~κε with the
    conditioning κ = ‖∇f(s)‖‖s‖ (up to 1e12 here); checked at 1000ε·κ."""
    gen = torch.Generator().manual_seed(24)
    count = 5
    like = torch.zeros(1, count, 3, dtype=torch.float64)
    gap = 10.0 ** -torch.linspace(4, 12, count, dtype=torch.float64)
    s = 0.2 + 2 * torch.rand(1, count, 3, generator=gen, dtype=torch.float64)
    if name == "exp":
        barrier = exp.Barrier(like)
        s[..., 2] = s[..., 1] * torch.exp(s[..., 0] / s[..., 1]) * (1 + gap)  # s₂ ≥ s₁e^{s₀/s₁}
    else:
        barrier = power.Barrier(ALPHAS[:count], like)
        geo = s[..., 0] ** ALPHAS[:count] * s[..., 1] ** (1 - ALPHAS[:count])
        s[..., 2] = -geo * (1 - gap)  # |s₂| below s₀^α s₁^{1−α}
    assert barrier.in_primal(s).all()
    g = barrier.primal_gradient(s)
    back = -nonsymmetric.Scaling(s, -g, barrier).grad
    kappa = 1 + g.abs().amax(-1, keepdim=True) * s.abs().amax(-1, keepdim=True)
    assert ((back - s).abs() / kappa).max() < 1000 * torch.finfo(torch.float64).eps
