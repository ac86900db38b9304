"""The zero cone {0} (equality rows) and its dual, the free cone: projections and their
(diagonal) Jacobians. The interior-point engine treats these rows as equalities."""

from __future__ import annotations

import torch


def proj_zero(z: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(z)


def proj_free(z: torch.Tensor) -> torch.Tensor:
    return z


# elementwise projections: their Jacobians are returned as diagonals, (..., size)
def d_zero(z: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(z)


def d_free(z: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(z)
