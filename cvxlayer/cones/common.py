"""Small helpers shared by the cone family modules."""

from __future__ import annotations

import torch


def eye_like(z: torch.Tensor) -> torch.Tensor:
    size = z.shape[-1]
    return torch.eye(size, dtype=z.dtype, device=z.device).expand(*z.shape, size)


def lift(state: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A scaling's `state` (B, count, …) made to broadcast against blocks v: (B, count,
    size), or (B, k, count, size) for k vectors per element (the columns of A)."""
    return state.unsqueeze(1) if v.dim() == 4 else state


class SymmetricScaling:
    """The Newton step's cone rows for a symmetric family, from its Nesterov–Todd scaling
    (W, Wᵀ, W⁻ᵀ, λ = W z = W⁻ᵀ s, λ \\ ·, the step to the boundary from λ) and its Jordan
    product and unit e: Δs = −Wᵀ(λ \\ d_s) − HΔz, with d_s = λ ∘ λ (affine) and
    λ ∘ λ + (W⁻ᵀΔs_a) ∘ (WΔz_a) − σμe (combined, Mehrotra)."""

    symmetric = True
    lam: torch.Tensor

    @staticmethod
    def jordan(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def unit(like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def offset(self, d_s: torch.Tensor) -> torch.Tensor:
        return self.WT(self.div(d_s))

    def affine_ds(self) -> torch.Tensor:
        return self.jordan(self.lam, self.lam)

    def scaled(self, ds: torch.Tensor, dz: torch.Tensor):
        """(W⁻ᵀΔs, WΔz): the direction in the frame where both s and z are λ."""
        return self.WinvT(ds), self.W(dz)

    def combined_ds(self, affine, sigma_mu: torch.Tensor) -> torch.Tensor:
        target = sigma_mu.view(-1, 1, 1) * self.unit(self.lam)
        return self.affine_ds() + self.jordan(*affine) - target

    def step(self, scaled) -> torch.Tensor:
        """(B, count) the largest α with λ + αW⁻ᵀΔs ∈ K and λ + αWΔz ∈ K."""
        return torch.minimum(*(self.step_from_lam(d) for d in scaled))
