"""The softmax as a convex optimization layer:
y*(x) = argmin_y −xᵀy − H(y)  s.t.  1ᵀy = 1,  H(y) = −Σ y_i log y_i  (exponential cones).

We sweep the first logit x₀ over a grid with the other logits fixed and compare y₀ and
∂y₀/∂x₀ = y₀(1 − y₀) with the closed form."""

import cvxpy as cp
import torch
from _common import plot_activation, save, value_and_derivative

from cvxlayer import CvxpyLayer


def main(d: int = 4):
    x = cp.Parameter(d)
    y = cp.Variable(d)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y))), [cp.sum(y) == 1])
    layer = CvxpyLayer(problem, parameters=[x], variables=[y])

    sweep = torch.linspace(-5, 5, 201, dtype=torch.float64)
    logits = torch.tensor([0.0, 0.5, -0.5, 1.0], dtype=torch.float64).repeat(201, 1)
    logits[:, 0] = sweep
    out, slope = value_and_derivative(layer, logits, component=0, solver_args={"eps": 1e-8})
    s = torch.softmax(logits, dim=1)[:, 0]
    fig = plot_activation("softmax (first output)", sweep, out[:, 0], slope, s, s * (1 - s))
    return save(fig, "softmax")


if __name__ == "__main__":
    main()
