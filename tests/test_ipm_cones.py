"""The interior-point operations of each symmetric cone family, checked by their defining
identities on random interior points: W z = W⁻ᵀ s = λ, W W⁻¹ = I, ⟨W u, v⟩ = ⟨u, Wᵀ v⟩,
λ ∘ (λ \\ v) = v, e ∘ v = v, and the step to the boundary lands on it."""

import pytest
import torch

from cvxlayer.cones import nonneg, psd, soc

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
    alpha = sc.step(d)
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
    expected = sc.step(d)
    d[1, 2, 0] = float("nan")
    got = sc.step(d)
    assert got[1, 2] == 0
    mask = torch.ones_like(got, dtype=torch.bool)
    mask[1, 2] = False
    torch.testing.assert_close(got[mask], expected[mask])
