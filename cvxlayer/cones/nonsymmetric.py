"""Interior-point operations shared by the 3-d nonsymmetric cones (exponential, power).

Each such family supplies a `Barrier`: the dual barrier f*(z) = −log ψ(z) − Σᵢ cᵢ log|zᵢ|
through ψ, ∇ψ, ∇²ψ and the third derivative ∇³ψ[u, v], the gradient ∇f(s) of the primal
barrier f (its conjugate), membership of the open cones, and the central point p with
−∇f*(p) = p. Everything else lives here, for blocks (B, count, 3):

    ∇f*   = −∇ψ/ψ − c/z,
    ∇²f*  = −∇²ψ/ψ + ∇ψ∇ψᵀ/ψ² + diag(c/z²),
    ∇³f*[u, v] = −∇³ψ[u, v]/ψ + (∇²ψv (∇ψ·u) + ∇²ψu (∇ψ·v) + ∇ψ (uᵀ∇²ψv))/ψ²
                 − 2∇ψ (∇ψ·u)(∇ψ·v)/ψ³ − 2c∘u∘v/z³.

The scaling H (Dahl & Andersen 2022, as in Clarabel) is the rank-3 primal-dual matrix with
H z = s and H z̃ = s̃ for the shadow iterates s̃ = −∇f*(z), z̃ = −∇f(s):

    H = ssᵀ/⟨s, z⟩ + δs δsᵀ/⟨δs, δz⟩ + t aaᵀ,   δs = s + μ∇f*(z), δz = z + μ∇f(s),

a ⟂ z, z̃ a unit vector and t = μ‖∇²f* − ∇f*∇f*ᵀ/3 − rrᵀ/(∇fᵀ∇²f*∇f − 3μ̃²)‖_F with
r = μ̃∇f* − ∇²f*∇f, μ = ⟨s, z⟩/3, μ̃ = ⟨∇f*, ∇f⟩/3; where that is ill-defined (on the
central path, or a negative curvature pair) it is the dual scaling H = μ∇²f*(z). The
Newton equations for these rows are Δs + HΔz = −d_s with d_s = s (affine) and
s + σμ∇f*(z) − ½∇³f*(z)[(∇²f*)⁻¹Δs_a, Δz_a] (combined: centering and the third-order
correction). Steps to the boundary are found by backtracking on membership (the feasible
steps along a line form an interval), all candidates evaluated at once.
"""

from __future__ import annotations

from typing import Protocol

import torch

from cvxlayer.cones.common import lift

# candidate steps: a geometric grid (ratio _RATIO, down to ~5e-5), then _BISECT halvings of
# the last gap
_RATIO, _GRID, _BISECT = 0.65, 24, 3


class Barrier(Protocol):
    """What a nonsymmetric 3-d family supplies (blocks (B, count, 3))."""

    weights: torch.Tensor  # c of the dual barrier's log terms, (3,) or (count, 3)

    def dual_parts(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ψ, ∇ψ, ∇²ψ) at z: (B, count), (B, count, 3), (B, count, 3, 3)."""

    def dual_third(self, z: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """∇³ψ(z)[u, v]: (B, count, 3)."""

    def primal_gradient(self, s: torch.Tensor) -> torch.Tensor:
        """∇f(s) of the primal barrier, the conjugate of f*."""

    def in_primal(self, s: torch.Tensor) -> torch.Tensor:
        """s ∈ int K (boolean, one fewer dimension)."""

    def in_dual(self, z: torch.Tensor) -> torch.Tensor:
        """z ∈ int K*."""

    def central(self, like: torch.Tensor) -> torch.Tensor:
        """The central point p (−∇f*(p) = p) broadcast to blocks like `like`."""


# ---------------------------------------------------------------- 3 × 3 algebra
def mv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """M v for matrices (B, count, 3, 3) and blocks v (B, count, 3) or (B, k, count, 3)."""
    if v.dim() == M.dim() - 1:
        return (M @ v.unsqueeze(-1)).squeeze(-1)
    # several vectors per block: a sum of M's columns (a broadcast matmul costs more)
    M = lift(M, v)
    return M[..., 0] * v[..., :1] + M[..., 1] * v[..., 1:2] + M[..., 2] * v[..., 2:]


def mtv(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mᵀ v (shapes as `mv`)."""
    return mv(M.transpose(-1, -2), v)


def outer(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u.unsqueeze(-1) * v.unsqueeze(-2)


def _inverse(V: torch.Tensor) -> torch.Tensor:
    """V⁻¹ for (…, 3, 3): its rows are the cross products of V's columns over det V."""
    c0, c1, c2 = V.unbind(-1)
    rows = torch.stack([_cross(c1, c2), _cross(c2, c0), _cross(c0, c1)], -2)
    return rows / (c0 * rows[..., 0, :]).sum(-1)[..., None, None]


def _cholesky_inverse(M: torch.Tensor) -> torch.Tensor:
    """L⁻¹ for the Cholesky factor M + δI = L Lᵀ of symmetric positive semidefinite
    (…, 3, 3), in closed form; δ = 0, or where rounding leaves M indefinite the smallest of
    ε tr(M)·10ᵏ that factors (refinement against the exact H absorbs it)."""
    out = _cholesky_inverse_once(M)
    scale = torch.finfo(M.dtype).eps * M.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    eye = torch.eye(3, dtype=M.dtype, device=M.device)
    for k in range(0, 8, 2):
        broken = ~torch.isfinite(out).flatten(-2).all(-1)[..., None, None]
        if not bool(broken.any()):
            break
        out = torch.where(broken, _cholesky_inverse_once(M + 10.0**k * scale * eye), out)
    return out


def _cholesky_inverse_once(M: torch.Tensor) -> torch.Tensor:
    a, b, c = M[..., 0, 0], M[..., 1, 0], M[..., 2, 0]
    d, e, f = M[..., 1, 1], M[..., 2, 1], M[..., 2, 2]
    l00 = a.sqrt()
    l10, l20 = b / l00, c / l00
    l11 = (d - l10 * l10).sqrt()
    l21 = (e - l20 * l10) / l11
    l22 = (f - l20 * l20 - l21 * l21).sqrt()
    m00, m11, m22 = 1 / l00, 1 / l11, 1 / l22
    m10 = -l10 * m00 * m11
    m21 = -l21 * m11 * m22
    m20 = -(l20 * m00 + l21 * m10) * m22
    zero = torch.zeros_like(a)
    rows = [torch.stack(r, -1) for r in ((m00, zero, zero), (m10, m11, zero), (m20, m21, m22))]
    return torch.stack(rows, -2)


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cross(u, v, dim=-1)


class Scaling:
    """The primal-dual scaling of a nonsymmetric family at interior (s, z) (module
    docstring), H = WᵀW: `_scale` says how W⁻ᵀ is formed."""

    def __init__(self, s: torch.Tensor, z: torch.Tensor, barrier: Barrier) -> None:
        self.s, self.z, self.barrier = s, z, barrier
        psi, g_psi, H_psi = barrier.dual_parts(z)
        p = psi.unsqueeze(-1)
        self.grad = -g_psi / p - self._log_term(1)  # ∇f*(z)
        self.hess = -H_psi / p.unsqueeze(-1) + outer(g_psi, g_psi) / (p * p).unsqueeze(-1)
        self.hess = self.hess + torch.diag_embed(self._log_term(2))
        self.parts = psi, g_psi, H_psi
        self._scale(s, z)

    def _log_term(self, power: int) -> torch.Tensor:
        """c / zᵖ, 0 where c is (z may be 0 there)."""
        c = self.barrier.weights
        return torch.where(c != 0, c / self.z**power, 0.0)

    def _scale(self, s: torch.Tensor, z: torch.Tensor) -> None:
        """H = U Uᵀ, W⁻ᵀ = U⁻¹ with U = V diag(d)^½ for V = [s, δs, a], d = (1/⟨s, z⟩,
        1/⟨δs, δz⟩, t) (H is never formed, nor factored: near the solution its eigenvalues
        span ~μ² to 1; refinement applies it as U(Uᵀv), consistently with U⁻¹); the dual
        scaling μ∇²f*(z) = L Lᵀ (U = L, by Cholesky) where the primal-dual one is
        undefined."""
        eps = torch.finfo(s.dtype).eps
        st, zt = self.grad, self.barrier.primal_gradient(s)  # ∇f*(z), ∇f(s)
        dot_sz = (s * z).sum(-1, keepdim=True)
        mu = dot_sz / 3
        mu_t = (st * zt).sum(-1, keepdim=True) / 3
        ds, dz = s + mu * st, z + mu * zt
        dot_d = (ds * dz).sum(-1, keepdim=True)
        Hzt = mv(self.hess, zt)
        de1 = mu * mu_t - 1
        de2 = (zt * Hzt).sum(-1, keepdim=True) - 3 * mu_t * mu_t
        r = mu_t * st - Hzt
        rest = self.hess - outer(st, st) / 3 - outer(r, r) / de2.unsqueeze(-1)
        t = mu * torch.linalg.matrix_norm(rest).unsqueeze(-1)
        axis = _cross(z, zt)
        axis = axis / axis.norm(dim=-1, keepdim=True)
        V = torch.stack([s, ds, axis], -1)
        d = torch.cat([1 / dot_sz, 1 / dot_d, t], -1)
        L_inv = d.rsqrt().unsqueeze(-1) * _inverse(V)
        usable = (de1.abs() > eps**0.5) & (de2.abs() > eps) & (dot_sz > 0) & (dot_d > 0)
        usable &= torch.isfinite(L_inv).flatten(-2).all(-1, keepdim=True)
        usable = usable.unsqueeze(-1)
        dual_inv = _cholesky_inverse(mu.unsqueeze(-1) * self.hess)  # μ∇²f* = L Lᵀ
        self.U = torch.where(usable, V * d.sqrt().unsqueeze(-2), _inverse(dual_inv))
        self.L_inv = torch.where(usable, L_inv, dual_inv)

    def WinvT(self, v: torch.Tensor) -> torch.Tensor:
        if v.dim() == 4:  # the columns of A (B, n, count, 3): one 3 × n product per cone
            return (self.L_inv @ v.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return mv(self.L_inv, v)

    def H(self, v: torch.Tensor) -> torch.Tensor:
        return mv(self.U, mtv(self.U, v))

    def Hinv(self, v: torch.Tensor) -> torch.Tensor:
        # as W⁻¹(W⁻ᵀv), the factor M is made of: a formed H⁻¹ rounds differently near the
        # solution and the refinement then stalls
        return mtv(self.L_inv, mv(self.L_inv, v))

    # -------------------------------------------------- the Newton step's cone rows
    def offset(self, d_s: torch.Tensor) -> torch.Tensor:
        """The term of Δs = −(offset) − HΔz: d_s itself."""
        return d_s

    def affine_ds(self) -> torch.Tensor:
        return self.s

    def scaled(self, ds: torch.Tensor, dz: torch.Tensor):
        """What `step` and `combined_ds` need of a direction: (Δs, Δz) as they are."""
        return ds, dz

    def combined_ds(self, affine, sigma_mu: torch.Tensor) -> torch.Tensor:
        """s + σμ∇f*(z) − ½∇³f*(z)[(∇²f*)⁻¹Δs_a, Δz_a] (σμ of shape (B,)); the solve in
        closed form (no batched LAPACK call per 3 × 3 block)."""
        ds, dz = affine
        L_inv = _cholesky_inverse(self.hess)
        u = torch.nan_to_num(mtv(L_inv, mv(L_inv, ds)))
        third = self._dual_third(u, dz)
        return self.s + sigma_mu.view(-1, 1, 1) * self.grad - 0.5 * third

    def _dual_third(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """∇³f*(z)[u, v] (module docstring)."""
        psi, g, H = self.parts
        p = psi.unsqueeze(-1)
        gu, gv = (g * u).sum(-1, keepdim=True), (g * v).sum(-1, keepdim=True)
        Hu, Hv = mv(H, u), mv(H, v)
        uHv = (u * Hv).sum(-1, keepdim=True)
        out = -self.barrier.dual_third(self.z, u, v) / p
        out = out + (Hv * gu + Hu * gv + g * uHv) / (p * p) - 2 * g * gu * gv / (p * p * p)
        return out - 2 * self._log_term(3) * u * v

    def step(self, scaled) -> torch.Tensor:
        """(B, count) the largest candidate α ≤ 1 with s + αΔs ∈ int K, z + αΔz ∈ int K*
        (0 if none down to ~5e-5)."""
        ds, dz = scaled
        ratios = _RATIO ** torch.arange(_GRID, dtype=ds.dtype, device=ds.device)

        def feasible(alpha: torch.Tensor) -> torch.Tensor:  # alpha (..., k) → (..., k)
            a = alpha.unsqueeze(-1)
            s = self.s.unsqueeze(-2) + a * ds.unsqueeze(-2)
            z = self.z.unsqueeze(-2) + a * dz.unsqueeze(-2)
            return self.barrier.in_primal(s) & self.barrier.in_dual(z)

        ok = feasible(ratios.expand(*ds.shape[:-1], _GRID))
        # the feasible steps form an interval [0, α*): the first feasible candidate
        first = torch.where(ok, torch.arange(_GRID, device=ds.device), _GRID).amin(-1)
        found = first < _GRID
        low = torch.where(found, _RATIO ** first.to(ds.dtype), 0.0)
        high = torch.where(first > 0, low / _RATIO, low)
        for _ in range(_BISECT):
            mid = (low + high) / 2
            good = feasible(mid.unsqueeze(-1)).squeeze(-1) & found
            low = torch.where(good, mid, low)
            high = torch.where(good, high, mid)
        return low


class Family:
    """A nonsymmetric family for the interior-point engine: the degree, the start point and
    the scaling, from its `Barrier`."""

    symmetric = False

    def __init__(self, barrier: Barrier) -> None:
        self.barrier = barrier

    def degree(self, size: int) -> int:
        return size

    def unit(self, like: torch.Tensor) -> torch.Tensor:
        """The central point of each cone: the start of s and z."""
        return self.barrier.central(like)

    def Scaling(self, s: torch.Tensor, z: torch.Tensor) -> Scaling:  # noqa: N802
        return Scaling(s, z, self.barrier)
