"""Batch handling of the direct fast-path functions (`solve_qp`, `lqr`): each argument is
either shared by the batch or batched (batch dimension first)."""

from __future__ import annotations

import torch


def broadcast_batch(
    named: dict[str, tuple[torch.Tensor, int]],
) -> tuple[dict[str, torch.Tensor], bool]:
    """Expand shared arguments to the batch size of the batched ones.

    Args:
        named: name ↦ (tensor, its number of dimensions when shared).

    Returns:
        (name ↦ tensor with a leading batch dimension, whether any argument was batched).

    Raises:
        ValueError: an argument with neither the shared nor the batched number of
            dimensions, or batched arguments of different batch sizes.
    """
    sizes = {}
    for name, (t, ndim) in named.items():
        if t.dim() == ndim + 1:
            sizes[name] = t.shape[0]
        elif t.dim() != ndim:
            raise ValueError(
                f"{name} must have {ndim} (shared) or {ndim + 1} (batched) dimensions, "
                f"got shape {tuple(t.shape)}"
            )
    if len(set(sizes.values())) > 1:
        raise ValueError(f"Inconsistent batch sizes: {sizes}")
    B = next(iter(sizes.values()), 1)
    out = {
        name: t if name in sizes else t.unsqueeze(0).expand(B, *t.shape)
        for name, (t, _) in named.items()
    }
    return out, bool(sizes)
