"""An OptNet QP layer learns a constrained map from data (thesis ch. 3).

The data come from a hidden QP layer, z*(x) = argmin ½‖L z‖² − xᵀz  s.t.  G z ≤ h, with
fixed (L, G, h). A model with the same structure but random (L, G, h) is fit by Adam to
input/output pairs; cvxlayer solves it on the QP fast path (batched interior point) and
backpropagates through it with OptNet's differentials.
"""

import cvxpy as cp
import matplotlib.pyplot as plt
import torch
from _common import save

from cvxlayer import CvxpyLayer


class QPLayer(torch.nn.Module):
    def __init__(self, n: int, m: int, gen: torch.Generator):
        super().__init__()
        self.L = torch.nn.Parameter(torch.eye(n, dtype=torch.float64))
        self.G = torch.nn.Parameter(torch.randn(m, n, generator=gen, dtype=torch.float64))
        self.h = torch.nn.Parameter(torch.ones(m, dtype=torch.float64))
        L, G, h, x = cp.Parameter((n, n)), cp.Parameter((m, n)), cp.Parameter(m), cp.Parameter(n)
        z = cp.Variable(n)
        objective = 0.5 * cp.sum_squares(L @ z) - x @ z + 1e-3 * cp.sum_squares(z)
        problem = cp.Problem(cp.Minimize(objective), [G @ z <= h])
        self.layer = CvxpyLayer(problem, parameters=[L, G, h, x], variables=[z])

    def forward(self, x):
        return self.layer(self.L, self.G, self.h, x)[0]


def main(iterations: int = 100, points: int = 128, n: int = 8, m: int = 12):
    gen = torch.Generator().manual_seed(0)
    truth = QPLayer(n, m, gen)
    with torch.no_grad():
        truth.L.copy_(torch.eye(n) + 0.3 * torch.randn(n, n, generator=gen, dtype=torch.float64))
        truth.h.copy_(0.5 + torch.rand(m, generator=gen, dtype=torch.float64))
    model = QPLayer(n, m, gen)
    print(model.layer)
    X = 2 * torch.randn(points, n, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        Z = truth(X)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(iterations):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(X), Z)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        pred = model(X)
    print(f"optnet qp: MSE {losses[0]:.3e} -> {losses[-1]:.3e} in {iterations} Adam steps")
    fig, (ax_loss, ax_fit) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.semilogy(losses)
    ax_loss.set(title="MSE of the QP layer's outputs", xlabel="Adam step")
    ax_loss.grid(alpha=0.3)
    ax_fit.plot(Z.ravel(), pred.ravel(), ".", ms=3, alpha=0.6)
    lim = float(Z.abs().max())
    ax_fit.plot([-lim, lim], [-lim, lim], color="gray", lw=1)
    ax_fit.set(title="learned vs hidden QP layer (all outputs)", xlabel="target", ylabel="model")
    ax_fit.grid(alpha=0.3)
    return save(fig, "optnet_qp")


if __name__ == "__main__":
    main()
