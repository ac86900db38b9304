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
