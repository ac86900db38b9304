"""The ReLU as a convex optimization layer:  y*(x) = argmin_y ½‖y − x‖²  s.t.  y ≥ 0."""

import cvxpy as cp
import torch
from _common import plot_activation, save, value_and_derivative

from cvxlayer import CvxpyLayer


def main():
    x = cp.Parameter(1)
    y = cp.Variable(1)
    problem = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0])
    layer = CvxpyLayer(problem, parameters=[x], variables=[y])

    grid = torch.linspace(-4, 4, 201, dtype=torch.float64)[:, None]  # a batch of 201 inputs
    out, slope = value_and_derivative(layer, grid, solver_args={"eps": 1e-8})
    xs = grid[:, 0]
    fig = plot_activation("ReLU", xs, out[:, 0], slope, torch.relu(xs), (xs > 0).double())
    return save(fig, "relu")


if __name__ == "__main__":
    main()
