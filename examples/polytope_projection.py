"""Learning a polytope from projections (thesis §7.5.3; the tutorial's last example).

The layer projects a point onto a polytope with learned faces:
    y*(x; G, h) = argmin_y ½‖y − x‖²  s.t.  G y ≤ h.
Targets are the projections of the same points onto the unit disc, which no polytope
represents exactly; Adam fits G, h so that the projections match as well as they can.
"""

import time

import cvxpy as cp
import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import save

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
    snapshots, losses = {}, []
    start = time.perf_counter()
    for it in range(iterations + 1):
        if it in (0, iterations // 4, iterations // 2, iterations):
            snapshots[it] = (model.G.detach().numpy().copy(), model.h.detach().numpy().copy())
        if it == iterations:
            break
        if it == iterations // 2:
            opt.param_groups[0]["lr"] = 0.02
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), Y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(
        f"polytope: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {iterations} Adam steps "
        f"({time.perf_counter() - start:.1f} s, batch {points})"
    )

    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 4.3))
    ax.add_patch(plt.Circle((0, 0), 1, color="tab:blue", alpha=0.15, label="unit disc"))
    ax.plot(Y[:, 0], Y[:, 1], "x", color="tab:blue", ms=4)
    colors = plt.cm.Oranges(np.linspace(0.35, 1, len(snapshots)))
    for color, (it, (G, h)) in zip(colors, snapshots.items()):
        draw_polytope(ax, G, h, colors=[color], linewidths=2)
        ax.plot([], [], color=color, lw=2, label=f"polytope, step {it}")
    ax.set(xlim=(-2, 2), ylim=(-2, 2), aspect="equal", title="learned polytope over training")
    ax.legend(loc="upper left", fontsize=8)
    ax_loss.semilogy(losses)
    ax_loss.set(title="MSE of projections", xlabel="Adam step")
    ax_loss.grid(alpha=0.3)
    return save(fig, "polytope_projection")


if __name__ == "__main__":
    main()
