"""The sigmoid as a convex optimization layer:
y*(x) = argmin_{0<y<1} −xᵀy − H_b(y),  H_b(y) = −y log y − (1−y) log(1−y)  (exponential cones)."""

import cvxpy as cp
import torch
from _common import plot_activation, save, value_and_derivative

from cvxlayer import CvxpyLayer


def main():
    x = cp.Parameter(1)
    y = cp.Variable(1)
    problem = cp.Problem(cp.Minimize(-x @ y - cp.sum(cp.entr(y) + cp.entr(1.0 - y))))
    layer = CvxpyLayer(problem, parameters=[x], variables=[y])

    grid = torch.linspace(-5, 5, 201, dtype=torch.float64)[:, None]
    out, slope = value_and_derivative(layer, grid, solver_args={"eps": 1e-8})
    xs = grid[:, 0]
    s = torch.sigmoid(xs)
    fig = plot_activation("sigmoid", xs, out[:, 0], slope, s, s * (1 - s))
    return save(fig, "sigmoid")


if __name__ == "__main__":
    main()
