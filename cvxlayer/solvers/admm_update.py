"""The vector work of one ADMM iteration of the "torch" mode, and which implementation runs it.

For each batch element, with p = (R + M)⁻¹ R v (from the linear system), g = (R + M)⁻¹ h and
the weights R = diag(r_x I, R_y) of the body rows (the last row, τ, has weight 1):

    τ̃  = the nonnegative root of a τ² + b τ + c with a = 1 + gᵀRg,
         b = μᵀRg − 2 pᵀRg − η,  c = pᵀRp − pᵀRμ   (v = (μ, η))
    ũ  = (p − τ̃ g, τ̃),   z = 2ũ − v
    u  = z on rows of kind 0 (x and the zero cone's dual: free), max(z, 0) on kind 1
         (nonnegative rows) and on τ; rows of kind 2 (other cones) keep z for the batched
         cone projection that follows.

At the first iteration τ̃ = u_τ = 1. Shapes: p, g, weights (B, N); v, ũ, u (B, N + 1);
kinds (N,) int8. The torch reference below and the Triton kernel
`cvxlayer_cuda.admm_update.admm_update` compute the same thing; `admm_update` picks one.
"""

from __future__ import annotations

import torch

import cvxlayer_cuda

FREE, NONNEG, CONE = 0, 1, 2


def _root_plus(p, v, g, weights):
    mu, eta = v[:, :-1], v[:, -1:]

    def dot(a, b_):
        return (weights * a * b_).sum(1, keepdim=True)

    a = 1.0 + dot(g, g)
    b = dot(mu, g) - 2 * dot(p, g) - eta
    c = dot(p, p) - dot(p, mu)
    return (-b + (b * b - 4 * a * c).clamp(min=0).sqrt()) / (2 * a)


def admm_update_reference(
    p: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    weights: torch.Tensor,
    kinds: torch.Tensor,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ũ, u) as in the module docstring, in plain torch."""
    tau = torch.ones_like(v[:, -1:]) if first else _root_plus(p, v, g, weights)
    ut = torch.cat([p - tau * g, tau], 1)
    z = 2 * ut - v
    body = torch.where(kinds == NONNEG, z[:, :-1].clamp(min=0), z[:, :-1])
    u_tau = torch.ones_like(tau) if first else z[:, -1:].clamp(min=0)
    return ut, torch.cat([body, u_tau], 1)


def admm_update(
    p: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    weights: torch.Tensor,
    kinds: torch.Tensor,
    first: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ũ, u): the Triton kernel where `cvxlayer_cuda.backend_for(p)` says so, else the
    reference above."""
    return cvxlayer_cuda.dispatch(
        "admm_update.admm_update", admm_update_reference, p, v, g, weights, kinds, first
    )
