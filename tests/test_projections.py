"""Cone projections, checked by the Moreau characterization and closed forms.

p = Π_K(v) iff p ∈ K, v − p ∈ K° = −K*, and pᵀ(v − p) = 0.
"""

import math

import numpy as np
import pytest
import torch

from cvxlayer.cones import ConeSpec
from cvxlayer.cones.projections import (
    ConeProjector,
    mat_to_svec,
    proj_exp_primal_polar,
    svec_to_mat,
)


def _in_exp(p, tol):
    r, s, t = p[..., 0], p[..., 1], p[..., 2]
    s_safe = torch.where(s > 0, s, torch.ones_like(s))
    interior = (s > 0) & (s_safe * torch.exp(r / s_safe) <= t + tol * (1 + t.abs()))
    boundary = (s.abs() <= tol) & (r <= tol) & (t >= -tol)
    return interior | boundary


def _in_exp_dual(d, tol):  # K* = {(u, v, w): u < 0, −u e^{v/u} ≤ e w} ∪ {(0, v, w): v, w ≥ 0}
    u, v, w = d[..., 0], d[..., 1], d[..., 2]
    u_safe = torch.where(u < 0, u, -torch.ones_like(u))
    interior = (u < 0) & (-u_safe * torch.exp(v / u_safe) <= math.e * w + tol * (1 + w.abs()))
    boundary = (u.abs() <= tol) & (v >= -tol) & (w >= -tol)
    return interior | boundary


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_exp_cone_moreau(scale):
    gen = torch.Generator().manual_seed(0)
    v = scale * torch.randn(20000, 3, generator=gen, dtype=torch.float64)
    p, d = proj_exp_primal_polar(v)
    tol = 1e-7 * max(1.0, scale)
    torch.testing.assert_close(p + d, v, atol=tol, rtol=0)
    assert _in_exp(p, 1e-7).all()
    assert _in_exp_dual(-d, 1e-7).all()
    assert ((p * d).sum(-1).abs() <= 1e-7 * (1 + v.norm(dim=-1) ** 2)).all()


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_exp_cone_against_clarabel():
    """Projections of random points equal cvxpy + Clarabel's answer."""
    import cvxpy as cp

    gen = torch.Generator().manual_seed(1)
    v = 2 * torch.randn(12, 3, generator=gen, dtype=torch.float64)
    p, _ = proj_exp_primal_polar(v)
    for vi, pi in zip(v.numpy(), p.numpy()):
        z = cp.Variable(3)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(z - vi)), [cp.ExpCone(z[0], z[1], z[2])])
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        # the distance is flat along the boundary: compare distances tightly, points loosely
        assert _in_exp(torch.as_tensor(pi), 1e-9)
        assert np.linalg.norm(pi - vi) <= np.linalg.norm(z.value - vi) + 1e-9
        np.testing.assert_allclose(pi, z.value, atol=1e-5)


def _in_pow(p, alpha, tol):
    """p within tol of K_α (the boundary's slope is unbounded at x = 0 or y = 0, so the test
    moves x and y by tol rather than comparing x^α y^(1−α) with |z| directly)."""
    x, y, z = p[..., 0] + tol, p[..., 1] + tol, p[..., 2]
    geo = x.clamp(min=0) ** alpha * y.clamp(min=0) ** (1 - alpha)
    return (x >= 0) & (y >= 0) & (z.abs() <= geo + tol)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 30.0])
def test_power_cone_moreau(scale):
    """p = Π_K(v), d = v − p: p ∈ K, −d ∈ K*, pᵀd = 0; several exponents in one projector."""
    alphas = (0.1, 0.5, 0.73)
    proj = ConeProjector(ConeSpec(power=alphas))
    gen = torch.Generator().manual_seed(2)
    v = scale * torch.randn(5000, 9, generator=gen, dtype=torch.float64)
    p = proj.primal(v)
    d = v - p
    tol = 1e-9 * max(1.0, scale)
    for k, a in enumerate(alphas):
        pk, dk = p[:, 3 * k : 3 * k + 3], -d[:, 3 * k : 3 * k + 3]
        assert _in_pow(pk, a, tol).all()
        dual_scaled = torch.stack([dk[:, 0] / a, dk[:, 1] / (1 - a), dk[:, 2]], -1)
        assert _in_pow(dual_scaled, a, tol).all()
    assert ((p * d).sum(-1).abs() <= 1e-9 * (1 + v.norm(dim=-1) ** 2)).all()
    torch.testing.assert_close(proj.dual(v), v + proj.primal(-v))


@pytest.mark.parametrize("dual", [False, True])
def test_power_cone_compiled_projection_matches_the_torch_one(dual):
    """The compiled twin (float64 CPU tensors outside autograd) against the torch code (run
    by giving v requires_grad): the same root-find, one stopping on convergence, the other
    after a fixed number of steps; measured 1.8e-15 apart."""
    from cvxlayer.cones import power

    gen = torch.Generator().manual_seed(5)
    scale = torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)
    v = torch.randn(64, 40, 3, generator=gen, dtype=torch.float64) * scale
    alpha = 0.05 + 0.9 * torch.rand(40, generator=gen, dtype=torch.float64)
    project = power.proj_pow_dual if dual else power.proj_pow
    compiled = project(v, alpha)
    reference = project(v.clone().requires_grad_(True), alpha).detach()
    torch.testing.assert_close(compiled, reference, atol=1e-12 * (1 + v.abs().max()), rtol=0)


def test_power_cone_against_clarabel():
    import cvxpy as cp

    gen = torch.Generator().manual_seed(3)
    v = 2 * torch.randn(12, 3, generator=gen, dtype=torch.float64)
    alpha = 0.35
    p = ConeProjector(ConeSpec(power=(alpha,) * 12)).primal(v.reshape(1, -1)).reshape(-1, 3)
    for vi, pi in zip(v.numpy(), p.numpy()):
        z = cp.Variable(3)
        prob = cp.Problem(
            cp.Minimize(cp.sum_squares(z - vi)), [cp.PowCone3D(z[0], z[1], z[2], alpha)]
        )
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
        # Clarabel stops at ~1e-6 here: ours is in K and no farther from v than its answer
        assert _in_pow(torch.as_tensor(pi), alpha, 1e-12)
        assert np.linalg.norm(pi - vi) <= np.linalg.norm(z.value - vi) + 1e-9
        np.testing.assert_allclose(pi, z.value, atol=1e-5)


def test_soc_closed_form():
    gen = torch.Generator().manual_seed(4)
    v = torch.randn(500, 5, generator=gen, dtype=torch.float64)
    proj = ConeProjector(ConeSpec(soc=(5,)))
    p = proj.primal(v)
    t, x = p[:, 0], p[:, 1:]
    assert (x.norm(dim=1) <= t + 1e-12).all()
    d = v - p  # in the polar cone −SOC
    assert (d[:, 1:].norm(dim=1) <= -d[:, 0] + 1e-12).all()
    assert ((p * d).sum(1).abs() < 1e-10).all()


def test_psd_projection_and_vectorization():
    side = 4
    gen = torch.Generator().manual_seed(5)
    M = torch.randn(50, side, side, generator=gen, dtype=torch.float64)
    S = (M + M.transpose(1, 2)) / 2
    v = mat_to_svec(S)
    torch.testing.assert_close(svec_to_mat(v), S)
    torch.testing.assert_close(v.norm(dim=1), S.flatten(1).norm(dim=1))  # isometry
    proj = ConeProjector(ConeSpec(psd=(side,)))
    P = svec_to_mat(proj.primal(v))
    evals, evecs = torch.linalg.eigh(S)
    expected = evecs @ torch.diag_embed(evals.clamp(min=0)) @ evecs.transpose(1, 2)
    torch.testing.assert_close(P, expected)


def test_mixed_spec_dual_is_moreau_of_primal():
    spec = ConeSpec(zero=2, nonneg=3, soc=(3, 4, 3), psd=(2, 3), exp=2, exp_dual=1, power=(0.3,))
    proj = ConeProjector(spec)
    gen = torch.Generator().manual_seed(6)
    v = torch.randn(64, spec.size, generator=gen, dtype=torch.float64)
    # Π_{K*}(v) = v + Π_K(−v)
    torch.testing.assert_close(proj.dual(v), v + proj.primal(-v), atol=1e-7, rtol=0)
    z = proj.dual(v)
    torch.testing.assert_close(z[:, :2], v[:, :2])  # dual of the zero cone is free
    assert (z[:, 2:5] >= 0).all()
    torch.testing.assert_close(proj.primal(proj.primal(v)), proj.primal(v), atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dual", [False, True])
def test_jacobians_match_finite_differences(dual, seed):
    """Each cone family's DΠ against central differences of its own projection.

    A central difference with step h is off from the derivative by at most
    h²/6 · |f‴| (truncation) + δ/h (δ: the projection's rounding error), so its error is
    not a constant: near a cone's edge f‴ is large, and where a projection formula cancels
    (the exponential cone's curved boundary at large ρ) δ reaches ~1e-11. Each difference's
    error is therefore estimated from the same data: D(h) − D(2h) is 3× the truncation error
    of D(h) for smooth f and also carries the rounding noise of both, so
    |DΠ − D(h)| ≤ 1e-7 + 1e-6 |D(h)| + |D(h) − D(2h)| holds wherever the Jacobian is right.
    The test would pass vacuously if every estimate were loose, so it also asserts that
    the estimate is below 1e-6 for nearly all entries, which are then checked to 1e-6.
    """
    spec = ConeSpec(zero=2, nonneg=3, soc=(4, 3), psd=(3,), exp=3, exp_dual=2, power=(0.3, 0.8))
    proj = ConeProjector(spec)
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(40, spec.size, generator=gen, dtype=torch.float64)
    fn = proj.dual if dual else proj.primal
    jac = proj.jacobian(v, dual)
    h = 1e-5
    eye = torch.eye(spec.size, dtype=torch.float64)

    def central(step):  # (B, m, m): column j is the difference along e_j
        return torch.stack([(fn(v + step * e) - fn(v - step * e)) / (2 * step) for e in eye], -1)

    fd = central(h)
    estimate = (fd - central(2 * h)).abs()
    bound = 1e-7 + 1e-6 * fd.abs() + estimate
    worst = ((jac - fd).abs() - bound).max()
    assert worst <= 0, f"DΠ off its finite difference by {worst:.2e} beyond the error bound"
    assert (estimate <= 1e-6).double().mean() >= 0.99


@pytest.mark.parametrize("dual", [False, True])
def test_exp_cone_compiled_projection_matches_the_torch_one(dual):
    """The compiled twin (float64 CPU tensors outside autograd) against the torch reference
    (run by giving v requires_grad), on points of every region (inside K, inside the polar,
    on the heuristics' faces, through the root-find): the same method, one root-find
    stopping on convergence, the other checking every third step. Both stop once Newton
    moves ρ by at most 1e-12 relative (quadratic convergence: ρ then within ~1e-24 of
    the root, rounding aside), and the projection is smooth in ρ with slope ~|v|, so they
    agree to rounding, ~1e-13·(1 + |v|) (measured 1.6e-13); the bound 1e-10·(1 + |v|)
    allows for the root's conditioning near the cone's apex."""
    from cvxlayer.cones import exp

    gen = torch.Generator().manual_seed(6)
    v = torch.randn(64, 40, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [1.0, 1.0, 3.0], dtype=torch.float64
    )
    v[0, :, 2] = v[0, :, 1].abs() * torch.exp(v[0, :, 0] / v[0, :, 1].abs()) + 1  # in K
    v[1] = -v[1].abs()  # r, s ≤ 0: in the polar or on the faces
    project = exp.proj_exp_dual if dual else exp.proj_exp
    compiled = project(v)
    assert not compiled.requires_grad
    reference = project(v.clone().requires_grad_(True)).detach()
    torch.testing.assert_close(compiled, reference, atol=1e-10 * (1 + v.abs().max()), rtol=0)
