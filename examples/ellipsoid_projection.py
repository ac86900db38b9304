"""Learning an ellipsoid from projections (thesis §7.5.4): a second-order cone layer.

    y*(x; F, z) = argmin_y ½‖y − x‖²  s.t.  ‖F (y − z)‖₂ ≤ 1.

DPP needs the constraint affine in the parameters, so the layer takes F and g = F z as
its parameters and torch computes g from the learned center z; gradients reach F and z.
Targets are projections onto a true ellipsoid (computed with the same layer, no grad).
"""

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import fit, plot_learned_sets

from cvxlayer import CvxpyLayer


def ellipsoid_layer(n: int = 2) -> CvxpyLayer:
    x, F, g = cp.Parameter(n), cp.Parameter((n, n)), cp.Parameter(n)
    y = cp.Variable(n)
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x)), [cp.norm(F @ y - g) <= 1])
    return CvxpyLayer(problem, parameters=[x, F, g], variables=[y])


def boundary(F, z, k: int = 200):
    """Points of {y : ‖F(y − z)‖ = 1}."""
    t = np.linspace(0, 2 * np.pi, k)
    circle = np.stack([np.cos(t), np.sin(t)])
    return (np.linalg.solve(F, circle).T + z).T


def main(iterations: int = 60, points: int = 64):
    torch.manual_seed(0)
    layer = ellipsoid_layer()
    F_true = torch.tensor([[1.6, 0.5], [0.0, 0.8]], dtype=torch.float64)
    z_true = torch.tensor([0.3, -0.2], dtype=torch.float64)
    X = 1.5 * torch.randn(points, 2, dtype=torch.float64)
    with torch.no_grad():
        (Y,) = layer(X, F_true, F_true @ z_true, solver_args={"eps": 1e-8})

    F = torch.nn.Parameter(torch.eye(2, dtype=torch.float64))
    z = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def loss():
        (pred,) = layer(X, F, F @ z, solver_args={"eps": 1e-6})
        return torch.nn.functional.mse_loss(pred, Y)

    snapshots, losses, seconds = fit(
        loss,
        torch.optim.Adam([F, z], lr=0.05),
        lambda: (F.detach().numpy().copy(), z.detach().numpy().copy()),
        iterations,
    )
    print(
        f"ellipsoid: loss {losses[0]:.4f} -> {losses[-1]:.2e} in {iterations} Adam steps "
        f"({seconds:.1f} s, batch {points})"
    )
    return plot_learned_sets(
        "ellipsoid_projection",
        "learned ellipsoid over training",
        Y,
        snapshots,
        losses,
        draw=lambda ax, Fz, color: ax.plot(*boundary(*Fz), color=color, lw=2),
        truth=lambda ax: ax.fill(
            *boundary(F_true.numpy(), z_true.numpy()), color="tab:blue", alpha=0.2, label="true"
        ),
        lim=2.2,
        cmap=plt.cm.Reds,
    )


if __name__ == "__main__":
    main()
