"""LQR (thesis ch. 5): batched time-varying LQR by the Riccati recursion; backward by a
second LQR that reuses the forward's factorizations.

For each batch element, with τ_t = [x_t; u_t] (n states, m controls, N = n + m),

    minimize  Σ_{t<T} ½ τ_tᵀ C_t τ_t + c_tᵀ τ_t
    s.t.      x_0 = x_init,   x_{t+1} = F_t τ_t + f_t   (t < T − 1).

Forward (thesis Algorithm 4): backward recursion V_T = 0, v_T = 0,

    Q_t = C_t + F_tᵀ V_{t+1} F_t,   q_t = c_t + F_tᵀ V_{t+1} f_t + F_tᵀ v_{t+1},
    K_t = −Q_uu⁻¹ Q_ux,  k_t = −Q_uu⁻¹ q_u,
    V_t = Q_xx + Q_xu K_t,  v_t = q_x + Q_xu k_t,

then the rollout u_t = K_t x_t + k_t, x_{t+1} = F_t τ_t + f_t, and the multipliers of the
dynamics λ_t = C_{t,x} τ_t + c_{t,x} + F_{t,x}ᵀ λ_{t+1} (λ_T = 0; λ_0 is that of x_0 = x_init).
Linear in T; one Cholesky of Q_uu (m × m) per step.

Backward (thesis eq. 5.8-5.9): the KKT matrix is the same, so d = LQR(0; C, g_τ, F, 0), with
the Riccati gains K_t and the Cholesky factors of Q_uu kept from the forward; then

    ∇C_t = ½(d_τ τᵀ + τ d_τᵀ),  ∇c_t = d_τ,  ∇F_t = d_λ,{t+1} τ_tᵀ + λ_{t+1} d_τ,tᵀ,
    ∇f_t = d_λ,{t+1},  ∇x_init = d_λ,0,

with d_λ from the multiplier recursion run on d (and g_λ, when the multipliers are outputs,
entering the right-hand side of the dynamics: d solves the same system with f = g_λ).
"""

from __future__ import annotations

import torch

from cvxlayer.fastpaths.batching import broadcast_batch
from cvxlayer.linalg import mv


def _riccati(C, F, n):
    """The backward recursion's matrices, which do not depend on c, f, x_init: per step the
    gain K_t (B, m, n), the Cholesky factor of Q_uu (B, m, m), Q_xu (B, n, m) and V_t."""
    B, T, N, _ = C.shape
    K, L, Q_xu, V = [None] * T, [None] * T, [None] * T, [None] * T
    for t in reversed(range(T)):
        Q = C[:, t]
        if t < T - 1:
            Ft = F[:, t]
            Q = Q + Ft.transpose(1, 2) @ V[t + 1] @ Ft
        L[t], info = torch.linalg.cholesky_ex(Q[:, n:, n:])
        if bool((info != 0).any()):
            raise torch.linalg.LinAlgError(
                f"LQR: Q_uu is not positive definite at step {t} (C_t,uu must be ≻ 0)"
            )
        Q_xu[t] = Q[:, :n, n:]
        K[t] = -torch.cholesky_solve(Q[:, n:, :n], L[t])
        V[t] = Q[:, :n, :n] + Q_xu[t] @ K[t]
        V[t] = 0.5 * (V[t] + V[t].transpose(1, 2))
    return K, L, Q_xu, V


def _solve(x_init, C, c, F, f, gains):
    """τ (B, T, N) and λ (B, T, n) for the linear terms (c, f, x_init), with the matrices
    of `_riccati`."""
    K, L, Q_xu, V = gains
    B, T, N, _ = C.shape
    n = x_init.shape[1]
    v = c.new_zeros(B, n)
    k = [None] * T
    for t in reversed(range(T)):
        q = c[:, t]
        if t < T - 1:
            q = q + mv(F[:, t].transpose(1, 2), mv(V[t + 1], f[:, t]) + v)
        k[t] = -torch.cholesky_solve(q[:, n:].unsqueeze(-1), L[t]).squeeze(-1)
        v = q[:, :n] + mv(Q_xu[t], k[t])
    taus = []
    x = x_init
    for t in range(T):
        tau = torch.cat([x, mv(K[t], x) + k[t]], 1)
        taus.append(tau)
        if t < T - 1:
            x = mv(F[:, t], tau) + f[:, t]
    tau = torch.stack(taus, 1)
    lams = [None] * T
    for t in reversed(range(T)):
        lams[t] = mv(C[:, t, :n], tau[:, t]) + c[:, t, :n]
        if t < T - 1:
            lams[t] = lams[t] + mv(F[:, t, :, :n].transpose(1, 2), lams[t + 1])
    return tau, torch.stack(lams, 1)


class _LQR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_init, C, c, F, f):
        n = x_init.shape[1]
        gains = _riccati(C, F, n)
        tau, lam = _solve(x_init, C, c, F, f, gains)
        ctx.save_for_backward(C, F, tau, lam)
        ctx.gains = gains
        return tau, lam

    @staticmethod
    def backward(ctx, g_tau, g_lam):
        C, F, tau, lam = ctx.saved_tensors
        B, T, N, _ = C.shape
        n = lam.shape[2]
        # d = LQR(0; C, g_τ, F, 0) for g_λ = 0; a multiplier gradient enters as x_init and f:
        # λ_t is the multiplier of x_t − F_{t−1}τ_{t−1} − f_{t−1} = 0 (t = 0: x_0 − x_init)
        f_adj = g_lam[:, 1:] if T > 1 else g_lam.new_zeros(B, 0, n)
        d_tau, d_lam = _solve(g_lam[:, 0], C, g_tau, F, f_adj, ctx.gains)
        outer = torch.einsum
        grad_C = 0.5 * (outer("bti,btj->btij", d_tau, tau) + outer("bti,btj->btij", tau, d_tau))
        grad_c = d_tau
        grad_F = outer("bti,btj->btij", d_lam[:, 1:], tau[:, :-1]) + outer(
            "bti,btj->btij", lam[:, 1:], d_tau[:, :-1]
        )
        grad_f = d_lam[:, 1:]
        return d_lam[:, 0], grad_C, grad_c, grad_F, grad_f


def lqr(
    x_init: torch.Tensor,
    C: torch.Tensor,
    c: torch.Tensor,
    F: torch.Tensor,
    f: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Differentiable batched LQR (cf. mpc.pytorch's LQR, batch dimension first). Each
    argument may omit the batch dimension (then it is shared by the batch).

    Args:
        x_init: (B, n) initial states.
        C: (B, T, N, N) quadratic costs of τ_t = [x_t; u_t] (N = n + m), symmetrized as
            ½(C + Cᵀ); C_t,uu ≻ 0 (C ⪰ 0 for the problem to be convex).
        c: (B, T, N) linear costs.
        F: (B, T − 1, n, N) dynamics x_{t+1} = F_t τ_t + f_t.
        f: (B, T − 1, n).

    Returns:
        x (B, T, n), u (B, T, m), and the dynamics' multipliers λ (B, T, n) (λ_0 that of
        x_0 = x_init); all differentiable w.r.t. every input.

    Raises:
        ValueError: inconsistent shapes. torch.linalg.LinAlgError: some Q_uu not PD.
    """
    named = {"x_init": (x_init, 1), "C": (C, 3), "c": (c, 2), "F": (F, 3), "f": (f, 2)}
    tensors, batched = broadcast_batch(named)
    x_init, C, c, F, f = tensors.values()
    n, (T, N) = x_init.shape[1], C.shape[1:3]
    if c.shape[1:] != (T, N) or F.shape[1:] != (T - 1, n, N) or f.shape[1:] != (T - 1, n):
        raise ValueError(
            f"shapes: C {tuple(C.shape)}, c {tuple(c.shape)}, F {tuple(F.shape)}, "
            f"f {tuple(f.shape)}; expected c (B, {T}, {N}), F (B, {T - 1}, {n}, {N}), "
            f"f (B, {T - 1}, {n})"
        )
    C = 0.5 * (C + C.transpose(-1, -2))
    tau, lam = _LQR.apply(x_init, C, c, F, f)
    x, u = tau[..., :n], tau[..., n:]
    if not batched:
        x, u, lam = x[0], u[0], lam[0]
    return x, u, lam
