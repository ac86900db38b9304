"""Imitation learning through a box-constrained MPC layer (Amos et al., "Differentiable MPC
for end-to-end planning and control", 2018: its LQR imitation experiment, with bounded
controls).

An expert controls a linear system x_{t+1} = A x_t + B u_t by the constrained LQR

    minimize Σ ‖x_t‖² + ‖u_t‖²   s.t. the dynamics, |u_t| ≤ u_max,

so its controls saturate. We observe its state and control trajectories from random
initial states, but not (A, B). The layer solves the same problem written in cvxpy with
(A, B) as parameters; cvxlayer recognizes it as MPC (its `fast_path` says so) and solves
it by an interior point whose Newton steps are Riccati recursions, with one more Riccati
solve for the backward. Adam fits (A, B) so that the layer's trajectories match the expert's.
"""

import cvxpy as cp
import matplotlib.pyplot as plt
import torch
from _common import imitate_dynamics, plot_imitation_loss, save

from cvxlayer import CvxpyLayer


def mpc_layer(n: int, m: int, T: int, u_max: float) -> CvxpyLayer:
    A, B, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
    X, U = cp.Variable((n, T + 1)), cp.Variable((m, T))
    cost = cp.sum_squares(X) + cp.sum_squares(U)
    constraints = [X[:, 0] == x0, cp.abs(U) <= u_max]
    constraints += [X[:, t + 1] == A @ X[:, t] + B @ U[:, t] for t in range(T)]
    return CvxpyLayer(cp.Problem(cp.Minimize(cost), constraints), [A, B, x0], [X, U])


def main(iterations: int = 200, points: int = 64, T: int = 12, u_max: float = 0.3):
    n, m = 4, 2
    gen = torch.Generator().manual_seed(0)
    A_true = torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(
        n, n, generator=gen, dtype=torch.float64
    )
    B_true = torch.randn(n, m, generator=gen, dtype=torch.float64)
    layer = mpc_layer(n, m, T, u_max)
    print(layer.fast_path.describe())
    x0 = torch.randn(points, n, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        X_exp, U_exp = layer(A_true, B_true, x0)
    saturated = float((U_exp.abs() > u_max - 1e-6).double().mean())
    A = torch.nn.Parameter(torch.eye(n, dtype=torch.float64))
    B = torch.nn.Parameter(0.1 * torch.randn(n, m, generator=gen, dtype=torch.float64))
    with torch.no_grad():
        _, U_start = layer(A, B, x0)
    losses, errors = imitate_dynamics(
        layer, x0, (X_exp, U_exp), (A_true, B_true), (A, B), lr=0.05, iterations=iterations
    )
    with torch.no_grad():
        _, U_fit = layer(A, B, x0)
    print(
        f"mpc imitation: trajectory MSE {losses[0]:.3e} -> {losses[-1]:.3e}, model error "
        f"{errors[0]:.2f} -> {errors[-1]:.2f} in {iterations} Adam steps "
        f"({100 * saturated:.0f}% of the expert's controls at the bound)"
    )
    fig, (ax_loss, ax_u) = plt.subplots(1, 2, figsize=(10, 4))
    plot_imitation_loss(ax_loss, losses, errors, "learning (A, B) through the MPC layer")
    steps = torch.arange(T)
    # the three initial states whose first control saturates most often
    shown = (U_exp[:, 0].abs() > u_max - 1e-6).sum(1).argsort(descending=True)[:3].tolist()
    for i, color in zip(shown, ("tab:blue", "tab:orange", "tab:green")):
        ax_u.step(steps, U_exp[i, 0], where="post", color=color, lw=2.5, alpha=0.5,
                  label=f"expert {i}")  # fmt: skip
        ax_u.step(steps, U_fit[i, 0], where="post", color=color, ls="--", label=f"learned {i}")
        ax_u.step(steps, U_start[i, 0], where="post", color=color, ls=":", lw=1)
    for bound in (-u_max, u_max):
        ax_u.axhline(bound, color="gray", lw=0.8)
    ax_u.set(
        title="u₁: expert, learned (dashed), initial (dotted)",
        xlabel="t",
        ylabel="u₁",
    )
    ax_u.legend(fontsize=7)
    return save(fig, "mpc_imitation")


if __name__ == "__main__":
    main()
