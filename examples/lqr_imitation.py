"""Imitation learning through an LQR layer (thesis ch. 5, "differentiable MPC").

An expert controls a linear system x_{t+1} = A x_t + B u_t optimally (LQR with cost
Σ‖x_t‖² + ‖u_t‖²). We observe its trajectories from random initial states but not (A, B).
The layer solves the same LQR problem, written in cvxpy with (A, B) as parameters; cvxlayer
recognizes it and uses the Riccati recursion, and its backward is a second LQR. Adam fits
(A, B) so that the layer's states and controls match the expert's.
"""

import cvxpy as cp
import matplotlib.pyplot as plt
import torch
from _common import imitate_dynamics, plot_imitation_loss, save

from cvxlayer import CvxpyLayer


def lqr_layer(n: int, m: int, T: int) -> CvxpyLayer:
    A, B, x0 = cp.Parameter((n, n)), cp.Parameter((n, m)), cp.Parameter(n)
    X, U = cp.Variable((n, T + 1)), cp.Variable((m, T))
    cost = cp.sum_squares(X) + cp.sum_squares(U)
    dynamics = [X[:, 0] == x0] + [X[:, t + 1] == A @ X[:, t] + B @ U[:, t] for t in range(T)]
    return CvxpyLayer(cp.Problem(cp.Minimize(cost), dynamics), [A, B, x0], [X, U])


def main(iterations: int = 100, points: int = 32, T: int = 10):
    n, m = 4, 2
    gen = torch.Generator().manual_seed(0)
    A_true = torch.eye(n, dtype=torch.float64) + 0.2 * torch.randn(
        n, n, generator=gen, dtype=torch.float64
    )
    B_true = torch.randn(n, m, generator=gen, dtype=torch.float64)
    layer = lqr_layer(n, m, T)
    print(layer)
    x0 = torch.randn(points, n, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        X_exp, U_exp = layer(A_true, B_true, x0)
    A = torch.nn.Parameter(torch.eye(n, dtype=torch.float64))
    B = torch.nn.Parameter(0.1 * torch.randn(n, m, generator=gen, dtype=torch.float64))
    losses, errors = imitate_dynamics(
        layer, x0, (X_exp, U_exp), (A_true, B_true), (A, B), lr=0.1, iterations=iterations
    )
    with torch.no_grad():
        X_fit, _ = layer(A, B, x0)
    print(
        f"lqr imitation: trajectory MSE {losses[0]:.3e} -> {losses[-1]:.3e}, "
        f"model error {errors[0]:.2f} -> {errors[-1]:.2f} in {iterations} Adam steps"
    )
    fig, (ax_loss, ax_traj) = plt.subplots(1, 2, figsize=(10, 4))
    plot_imitation_loss(ax_loss, losses, errors, "learning the dynamics through the LQR layer")
    for i, color in zip(range(3), ("tab:blue", "tab:orange", "tab:green")):
        ax_traj.plot(X_exp[i, 0], X_exp[i, 1], "-o", color=color, ms=3, label=f"expert {i}")
        ax_traj.plot(X_fit[i, 0], X_fit[i, 1], "--", color=color, lw=2, label=f"learned {i}")
    ax_traj.set(title="state trajectories (first two coordinates)", xlabel="x₁", ylabel="x₂")
    ax_traj.legend(fontsize=7)
    return save(fig, "lqr_imitation")


if __name__ == "__main__":
    main()
