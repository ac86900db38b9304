"""Learning a polytope from projections (thesis §7.5.3; the tutorial's last example).

The layer projects a point onto a polytope with learned faces:
    y*(x; G, h) = argmin_y ½‖y − x‖²  s.t.  G y ≤ h.
Targets are the projections of the same points onto the unit disc, which no polytope
represents exactly; Adam fits G, h so that the projections match as well as they can.
"""

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import fit, plot_learned_sets

from cvxlayer import CvxpyLayer


class PolytopeProjection(torch.nn.Module):
    def __init__(self, n: int = 2, m: int = 8, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        angles = torch.rand(m, generator=gen, dtype=torch.float64) * 2 * np.pi
        self.G = torch.nn.Parameter(torch.stack([angles.cos(), angles.sin()], 1))
        self.h = torch.nn.Parameter(0.5 + torch.rand(m, generator=gen, dtype=torch.float64))
        x, G, h = cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
        y = cp.Variable(n)
        problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(y - x)), [G @ y <= h])
        self.layer = CvxpyLayer(problem, parameters=[x, G, h], variables=[y])

    def forward(self, x):
        # G and h are shared by the batch: their gradients are summed over it
        return self.layer(x, self.G, self.h, solver_args={"eps": 1e-6})[0]


def draw_polytope(ax, G, h, **style):
    grid = np.linspace(-2, 2, 300)
    X, Y = np.meshgrid(grid, grid)
    pts = np.stack([X.ravel(), Y.ravel()], 1)
    violation = (pts @ G.T - h).max(1).reshape(X.shape)
    ax.contour(X, Y, violation, levels=[0.0], **style)


def main(iterations: int = 60, points: int = 64):
    torch.manual_seed(0)
    X = torch.randn(points, 2, dtype=torch.float64)
    Y = X / X.norm(dim=1).clamp(min=1)[:, None]  # projections onto the unit disc
    model = PolytopeProjection()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)

    def slow_down(it):
        if it == iterations // 2:
            opt.param_groups[0]["lr"] = 0.02

    snapshots, losses, seconds = fit(
        lambda: torch.nn.functional.mse_loss(model(X), Y),
        opt,
        lambda: (model.G.detach().numpy().copy(), model.h.detach().numpy().copy()),
        iterations,
        on_step=slow_down,
    )
    print(
        f"polytope: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {iterations} Adam steps "
        f"({seconds:.1f} s, batch {points})"
    )
    return plot_learned_sets(
        "polytope_projection",
        "learned polytope over training",
        Y,
        snapshots,
        losses,
        draw=lambda ax, Gh, color: draw_polytope(ax, *Gh, colors=[color], linewidths=2),
        truth=lambda ax: ax.add_patch(
            plt.Circle((0, 0), 1, color="tab:blue", alpha=0.15, label="unit disc")
        ),
        lim=2.0,
        cmap=plt.cm.Oranges,
    )


if __name__ == "__main__":
    main()
