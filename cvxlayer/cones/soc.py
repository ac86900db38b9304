"""The second-order cone {(t, x) : ‖x‖ ≤ t} (self-dual): projection, its Jacobian, and the
interior-point operations."""

from __future__ import annotations

import torch

import cvxlayer_cuda
from cvxlayer.cones.common import SymmetricScaling, eye_like, lift


def proj_soc(z: torch.Tensor) -> torch.Tensor:
    """Π onto {(t, x) : ‖x‖ ≤ t} for z of shape (..., q), t = z[..., 0]: the Triton kernel
    `cvxlayer_cuda.soc.proj_soc` where `cvxlayer_cuda.backend_for(z)` says so, else the
    reference below."""
    return cvxlayer_cuda.dispatch("soc.proj_soc", proj_soc_reference, z)


def proj_soc_reference(z: torch.Tensor) -> torch.Tensor:
    """Π onto {(t, x) : ‖x‖ ≤ t} for z of shape (..., q), t = z[..., 0], in plain torch."""
    t, x = z[..., :1], z[..., 1:]
    nx = x.norm(dim=-1, keepdim=True)
    scale = (t + nx) / 2
    safe = torch.where(nx > 0, nx, torch.ones_like(nx))
    boundary = torch.cat([scale, scale * x / safe], dim=-1)
    inside = nx <= t
    outside_polar = nx <= -t
    return torch.where(inside, z, torch.where(outside_polar, torch.zeros_like(z), boundary))


def d_soc(z: torch.Tensor) -> torch.Tensor:
    """DΠ_SOC: I inside, 0 in the polar, else ½[[1, x̄ᵀ], [x̄, (1 + t/‖x‖) I − (t/‖x‖) x̄x̄ᵀ]]."""
    t, x = z[..., :1], z[..., 1:]
    nx = x.norm(dim=-1, keepdim=True)
    safe = torch.where(nx > 0, nx, torch.ones_like(nx))
    xb = x / safe
    ratio = (t / safe).unsqueeze(-1)
    q = z.shape[-1]
    eye = torch.eye(q - 1, dtype=z.dtype, device=z.device)
    lower = (1 + ratio) * eye - ratio * xb.unsqueeze(-1) * xb.unsqueeze(-2)
    top = torch.cat([torch.ones_like(t), xb], -1).unsqueeze(-2)
    bottom = torch.cat([xb.unsqueeze(-1), lower], -1)
    boundary = 0.5 * torch.cat([top, bottom], -2)
    inside = (nx <= t).unsqueeze(-1)
    polar = (nx <= -t).unsqueeze(-1)
    return torch.where(
        inside, eye_like(z), torch.where(polar, torch.zeros_like(boundary), boundary)
    )


# ---------------------------------------------------------------- interior point
# Blocks v (B, count, q) = (v₀, v₁); J = diag(1, −I); det(v) = vᵀJv; degree 1 per cone.
def unit(like: torch.Tensor) -> torch.Tensor:
    e = torch.zeros_like(like)
    e[..., 0] = 1
    return e


def margin(v: torch.Tensor) -> torch.Tensor:
    """(B, count): the largest t with v − t e ∈ K: v₀ − ‖v₁‖."""
    return v[..., 0] - v[..., 1:].norm(dim=-1)


def jordan(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u ∘ v = (uᵀv, u₀ v₁ + v₀ u₁)."""
    return torch.cat(
        [(u * v).sum(-1, keepdim=True), u[..., :1] * v[..., 1:] + v[..., :1] * u[..., 1:]], -1
    )


symmetric = True


def degree(size: int) -> int:
    return 1


def _det(v: torch.Tensor) -> torch.Tensor:
    """vᵀJv = (v₀ − ‖v₁‖)(v₀ + ‖v₁‖), a product that keeps its digits near the boundary."""
    norm = v[..., 1:].norm(dim=-1)
    return (v[..., 0] - norm) * (v[..., 0] + norm)


def _rotate(w: torch.Tensor, v: torch.Tensor, sign: float) -> torch.Tensor:
    """W̄ v (sign +1) or W̄⁻¹ v (sign −1) for the hyperbolic rotation with W̄ e = w (wᵀJw = 1):
    W̄ v = (w₀v₀ + w₁ᵀv₁, v₁ + (v₀ + w₁ᵀv₁/(1 + w₀)) w₁)."""
    w0, w1 = w[..., :1], w[..., 1:]
    v0, v1 = v[..., :1], v[..., 1:]
    dot = (w1 * v1).sum(-1, keepdim=True)
    return torch.cat([w0 * v0 + sign * dot, v1 + (sign * v0 + dot / (1 + w0)) * w1], -1)


class Scaling(SymmetricScaling):
    """Nesterov–Todd scaling at interior (s, z) (Vandenberghe 2010, §4): W = η W̄ with
    s̄ = s/√det s, z̄ = z/√det z, γ = √((1 + s̄ᵀz̄)/2), w̄ = (s̄ + J z̄)/(2γ),
    η = (det s / det z)^¼; W is symmetric, W z = W⁻¹ s = λ."""

    jordan, unit = staticmethod(jordan), staticmethod(unit)

    def __init__(self, s: torch.Tensor, z: torch.Tensor) -> None:
        tiny = torch.finfo(s.dtype).tiny
        det_s, det_z = _det(s).clamp(min=tiny), _det(z).clamp(min=tiny)
        s_bar = s / det_s.sqrt().unsqueeze(-1)
        z_bar = z / det_z.sqrt().unsqueeze(-1)
        gamma = torch.sqrt(((1 + (s_bar * z_bar).sum(-1)) / 2).clamp(min=tiny))
        jz = torch.cat([z_bar[..., :1], -z_bar[..., 1:]], -1)
        self.w = (s_bar + jz) / (2 * gamma).unsqueeze(-1)
        self.eta = ((det_s / det_z) ** 0.25).unsqueeze(-1)
        self.lam = self.W(z)
        self.sign = torch.ones(s.shape[-1], dtype=s.dtype, device=s.device)  # J's diagonal
        self.sign[1:] = -1
        self.jw = self.w * self.sign

    def W(self, v: torch.Tensor) -> torch.Tensor:
        return lift(self.eta, v) * _rotate(lift(self.w, v), v, 1.0)

    def Winv(self, v: torch.Tensor) -> torch.Tensor:
        return _rotate(lift(self.w, v), v, -1.0) / lift(self.eta, v)

    WT, WinvT = W, Winv

    def H(self, v: torch.Tensor) -> torch.Tensor:
        """WᵀW v = η² W̄² v, W̄² = 2w̄w̄ᵀ − J."""
        w = lift(self.w, v)
        return lift(self.eta**2, v) * (2 * (w * v).sum(-1, keepdim=True) * w - self.sign * v)

    def Hinv(self, v: torch.Tensor) -> torch.Tensor:
        """(WᵀW)⁻¹ v = η⁻² W̄⁻² v, W̄⁻¹ = J W̄ J."""
        jw = lift(self.jw, v)
        return (2 * (jw * v).sum(-1, keepdim=True) * jw - self.sign * v) / lift(self.eta**2, v)

    def div(self, v: torch.Tensor) -> torch.Tensor:
        """λ \\ v: x with λ ∘ x = v, x₀ = (λ₀v₀ − λ₁ᵀv₁)/det λ, x₁ = (v₁ − x₀λ₁)/λ₀."""
        lam = self.lam
        l0, l1 = lam[..., :1], lam[..., 1:]
        x0 = (l0 * v[..., :1] - (l1 * v[..., 1:]).sum(-1, keepdim=True)) / _det(lam).unsqueeze(-1)
        return torch.cat([x0, (v[..., 1:] - x0 * l1) / l0], -1)

    def step_from_lam(self, d: torch.Tensor) -> torch.Tensor:
        """(B, count) the largest α with λ + α d ∈ K: in the frame where λ/√det λ is e,
        ρ = W̄(λ̄)⁻¹ d / √det λ and α = 1 / (‖ρ₁‖ − ρ₀) where positive (else no limit)."""
        root = _det(self.lam).clamp(min=torch.finfo(d.dtype).tiny).sqrt().unsqueeze(-1)
        rho = _rotate(self.lam / root, d, -1.0) / root
        excess = rho[..., 1:].norm(dim=-1) - rho[..., 0]
        return torch.where(excess > 0, 1 / excess, torch.full_like(excess, float("inf")))
