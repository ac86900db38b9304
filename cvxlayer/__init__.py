"""cvxlayer: cvxpy problems as differentiable, batched PyTorch layers.

from cvxlayer import CvxpyLayer
layer = CvxpyLayer(problem, parameters=[...], variables=[...])
(x_star,) = layer(*parameter_tensors)
"""

from cvxlayer.errors import SolverError
from cvxlayer.layer import CvxpyLayer, SolveInfo
from cvxlayer.solvers import Status

__version__ = "0.1.0"

__all__ = ["CvxpyLayer", "SolveInfo", "SolverError", "Status", "__version__"]
