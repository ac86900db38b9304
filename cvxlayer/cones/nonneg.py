"""The nonnegative orthant R₊ (self-dual): projection, its diagonal Jacobian, and the
interior-point operations."""

from __future__ import annotations

import torch

from cvxlayer.cones.common import SymmetricScaling, lift


def proj_nonneg(z: torch.Tensor) -> torch.Tensor:
    return z.clamp(min=0)


def d_nonneg(z: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)


# ---------------------------------------------------------------- interior point
# Blocks v (B, count, size) of `size` rows, each row a cone of its own (degree 1);
# everything is elementwise. λ = W z = W⁻¹ s = √(s z).
def unit(like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like)


def margin(v: torch.Tensor) -> torch.Tensor:
    """(B, count): the largest t with v − t e ∈ K."""
    return v.amin(-1)


def jordan(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u ∘ v."""
    return u * v


symmetric = True


def degree(size: int) -> int:
    return size


class Scaling(SymmetricScaling):
    """Nesterov–Todd scaling of the orthant at interior (s, z): W = Wᵀ = diag(√(s/z))."""

    jordan, unit = staticmethod(jordan), staticmethod(unit)

    def __init__(self, s: torch.Tensor, z: torch.Tensor) -> None:
        self.h = s / z
        self.w = torch.sqrt(self.h)
        self.lam = torch.sqrt(s * z)

    def W(self, v: torch.Tensor) -> torch.Tensor:
        return lift(self.w, v) * v

    def Winv(self, v: torch.Tensor) -> torch.Tensor:
        return v / lift(self.w, v)

    WT, WinvT = W, Winv

    def H(self, v: torch.Tensor) -> torch.Tensor:
        """WᵀW v = (s/z) v."""
        return lift(self.h, v) * v

    def Hinv(self, v: torch.Tensor) -> torch.Tensor:
        return v / lift(self.h, v)

    def div(self, v: torch.Tensor) -> torch.Tensor:
        """λ \\ v."""
        return v / self.lam

    def step_from_lam(self, d: torch.Tensor) -> torch.Tensor:
        """(B, count) the largest α with λ + α d ∈ K (inf: no limit)."""
        ratio = torch.where(d < 0, -self.lam / d, torch.full_like(d, float("inf")))
        return ratio.amin(-1)
