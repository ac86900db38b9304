"""Constrained LQR (model predictive control, thesis ch. 5 with stage constraints):
a primal-dual interior point whose Newton systems are solved by the Riccati recursion,
one batch element per call of a compiled kernel (`mpc_kernels`) over the kept thread pool;
backward by one more Riccati solve at the solution.

For each batch element, stages t = 0 … S − 1 with ξ_t = [x_t; v_t] (n states; v_t the
controls and any stage-local auxiliary variables, N = n + M):

    minimize  Σ_t ½ ξ_tᵀ C_t ξ_t + c_tᵀ ξ_t
    s.t.      x_0 = x_init,   x_{t+1} = F_t ξ_t + f_t,   G_t ξ_t ≤ h_t.

Time and memory are linear in S: each iteration factors S blocks of size M (O(S N³)).

Backward (OptNet's differentials, D = μ/s at the solution): the adjoint
(d_ξ, d_μ, d_ν) of the KKT system, found by the same recursion (`adjoint_one`), gives

    ∇C_t = −½(d_ξ ξᵀ + ξ d_ξᵀ),  ∇c_t = −d_ξ,  ∇G_t = −(μ d_ξᵀ + d_μ ξᵀ),  ∇h_t = d_μ,
    ∇F_t = −λ_{t+1} d_ξ,tᵀ + d_ν,t+1 ξ_tᵀ,  ∇f_t = d_ν,t+1,  ∇x_init = d_ν,0,

with the dynamics read as rows x_0 = x_init, x_{t+1} − F_t ξ_t = f_t whose multipliers are
ν = −λ (λ: the costates, as `lqr` returns them).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from cvxlayer.solvers.base import Status
from cvxlayer.solvers.elementwise import as_array, as_tensor, for_each

_STATUS = {0: Status.SOLVED, 1: Status.MAX_ITERS, 2: Status.FAILURE}
MAX_ITERS = 100  # per element (unstable dynamics at horizon 200 took 18)


@functools.lru_cache(maxsize=1)
def kernels():
    """The compiled kernels' module, or None where numba cannot load (the layer's MPC path
    then hands its problems to the QP path)."""
    try:
        from cvxlayer.fastpaths import mpc_kernels
    except Exception:  # numba missing or unusable on this platform
        return None
    return mpc_kernels


class _MPC(torch.autograd.Function):
    # outputs go through save_for_backward, never onto ctx (see qp._QPSolve)
    @staticmethod
    def forward(ctx, x_init, C, c, F, f, G, h, rows, settings, out):
        eps_abs, eps_rel, max_iters, warm = settings
        k = kernels()
        arrays = [as_array(t) for t in (C, c, F, f, G, h, x_init)]
        C_, c_, F_, f_, G_, h_, x0_ = arrays
        B, S, N = c_.shape
        warm_ = np.zeros((B, 0, N)) if warm is None else as_array(warm)
        n = x0_.shape[1]
        xi, lam = np.zeros((B, S, N)), np.zeros((B, S, n))
        mu, s = np.zeros(h_.shape), np.ones(h_.shape)
        codes, iterations = np.zeros(B, dtype=np.int64), np.zeros(B, dtype=np.int64)
        final = np.zeros((B, 3))

        def run(i):
            codes[i], iterations[i] = k.solve_one(
                C_[i], c_[i], F_[i], f_[i], G_[i], h_[i], rows, x0_[i], warm_[i], eps_abs,
                eps_rel, max_iters, xi[i], lam[i], mu[i], s[i], final[i],
            )  # fmt: skip

        for_each(run, range(B))
        out["status"] = tuple(_STATUS[int(code)] for code in codes)
        out["iterations"] = torch.as_tensor(iterations)
        xi_t, lam_t, mu_t = (as_tensor(a, c) for a in (xi, lam, mu))
        ctx.arrays = (C_, F_, G_, rows, s)
        ctx.failed = torch.as_tensor(codes != 0)
        ctx.save_for_backward(xi_t, lam_t, mu_t)
        return xi_t, lam_t, mu_t

    @staticmethod
    def backward(ctx, g_xi, g_lam, g_mu):
        xi_t, lam_t, mu_t = ctx.saved_tensors
        C_, F_, G_, rows, s = ctx.arrays
        k = kernels()
        xi, mu = as_array(xi_t), as_array(mu_t)
        gx, gl, gm = (as_array(g) for g in (g_xi, g_lam, g_mu))
        d_xi, d_nu, d_mu = np.zeros_like(gx), np.zeros_like(gl), np.zeros_like(gm)

        def run(i):
            k.adjoint_one(
                C_[i], F_[i], G_[i], rows, xi[i], mu[i], s[i], gx[i], gl[i], gm[i],
                d_xi[i], d_nu[i], d_mu[i],
            )  # fmt: skip

        for_each(run, np.flatnonzero(~ctx.failed.numpy()))
        d_xi, d_nu, d_mu = (as_tensor(a, g_xi) for a in (d_xi, d_nu, d_mu))
        outer = torch.einsum
        grad_C = -0.5 * (outer("bti,btj->btij", d_xi, xi_t) + outer("bti,btj->btij", xi_t, d_xi))
        grad_G = -(outer("btr,btj->btrj", mu_t, d_xi) + outer("btr,btj->btrj", d_mu, xi_t))
        grad_F = outer("bti,btj->btij", d_nu[:, 1:], xi_t[:, :-1]) - outer(
            "bti,btj->btij", lam_t[:, 1:], d_xi[:, :-1]
        )
        return d_nu[:, 0], grad_C, -d_xi, grad_F, d_nu[:, 1:], grad_G, d_mu, None, None, None


def mpc(
    x_init: torch.Tensor,
    C: torch.Tensor,
    c: torch.Tensor,
    F: torch.Tensor,
    f: torch.Tensor,
    G: torch.Tensor,
    h: torch.Tensor,
    rows: np.ndarray,
    eps_abs: float = 1e-6,
    eps_rel: float = 1e-6,
    max_iters: int = MAX_ITERS,
    warm_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[Status, ...], torch.Tensor]:
    """Solve a batch of constrained LQR problems (module docstring), differentiably.

    Args:
        x_init: (B, n). C: (B, S, N, N), symmetrized as ½(C + Cᵀ); C ⪰ 0 with each
            stage's Q_vv ≻ 0 along the recursion. c: (B, S, N). F: (B, S − 1, n, N).
            f: (B, S − 1, n).
        G: (B, S, K, N), h: (B, S, K): stage t's rows are its first rows[t] (the others:
            padding, ignored). rows: (S,) int64.
        eps_abs, eps_rel: SCS's stopping rule on the residuals and the gap.
        max_iters: iteration limit per element.
        warm_start: (B, S, N) a guess of ξ (e.g. the previous call's, shifted by a step in
            receding-horizon control): the start's rollout follows its inputs, with feedback
            on the states' difference.

    Returns:
        ξ (B, S, N), costates λ (B, S, n), multipliers μ (B, S, K), differentiable w.r.t.
        every tensor argument (elements not solved get zero gradients); the per-element
        status and iteration counts.

    Raises:
        ValueError: shapes that do not fit together.
    """
    out: dict = {}
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    B, S, N = c.shape
    n = x_init.shape[-1]
    expected = {
        "x_init": (x_init, (B, n)), "C": (C, (B, S, N, N)), "F": (F, (B, S - 1, n, N)),
        "f": (f, (B, S - 1, n)), "G": (G, (B, S, G.shape[-2], N)), "h": (h, G.shape[:3]),
        "rows": (rows, (S,)),
    }  # fmt: skip
    for name, (value, shape) in expected.items():
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"mpc: {name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if (rows < 0).any() or (rows > G.shape[-2]).any():
        raise ValueError(f"mpc: rows must lie in [0, {G.shape[-2]}], got {rows.tolist()}")
    C = 0.5 * (C + C.transpose(-1, -2))  # the cost reads ½ξᵀCξ: C's symmetric part
    settings = (eps_abs, eps_rel, max_iters, warm_start)
    xi, lam, mu = _MPC.apply(x_init, C, c, F, f, G, h, rows, settings, out)
    return xi, lam, mu, out["status"], out["iterations"]
