"""cvxlayer: cvxpy problems as differentiable, batched PyTorch layers.

from cvxlayer import CvxpyLayer
layer = CvxpyLayer(problem, parameters=[...], variables=[...])
(x_star,) = layer(*parameter_tensors)

Direct functions of the fast paths, for users with the matrices in hand:
`solve_qp(Q, q, G, h, A, b)` (batched, differentiable QP, like qpth's QPFunction) and
`lml(x, k)` (the limited multi-label projection) and `lqr(x_init, C, c, F, f)` (batched
time-varying LQR by the Riccati recursion).
"""

from cvxlayer.errors import SolverError
from cvxlayer.fastpaths import lml, lqr, solve_qp
from cvxlayer.layer import CvxpyLayer, SolveInfo
from cvxlayer.solvers import Status

__version__ = "0.1.0"

__all__ = [
    "CvxpyLayer",
    "SolveInfo",
    "SolverError",
    "Status",
    "__version__",
    "lml",
    "lqr",
    "solve_qp",
]
