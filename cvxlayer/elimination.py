"""Eliminating variables that an equality row defines: x_E = T x_K + u.

cvxpy's canonicalization lifts terms into new variables defined by equality rows (e.g.
`sum_squares(L @ x)` becomes ½‖t‖² with t = L x). With such variables written as
x_E = T x_K + u in the kept ones x_K, the objective ½xᵀPx + cᵀx becomes, up to a constant,

    ½ x_Kᵀ Q x_K + qᵀ x_K,   Q = P_KK + P_KE T + Tᵀ P_EK + Tᵀ P_EE T,
                             q = c_K + Tᵀ c_E + (P_KE + Tᵀ P_EE) u,

and the duals of the defining rows follow from stationarity in x_E, which needs
(P x)_E + c_E = P_EK x_K + P_EE x_E + c_E. Both the QP path and the interior-point mode use
these two pieces; shapes are batch first: P_KK (B, k, k), P_KE (B, k, e) or None,
P_EE (B, e, e), its diagonal (B, e), or None; T (B, e, k); u, c_E (B, e); c_K (B, k).
"""

from __future__ import annotations

import numpy as np
import torch

from cvxlayer.linalg import mtv, mv


def one_per(entries: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """The first of `entries` (positions in A's pattern) for each distinct `owner[entries]`
    (its row or its column): one eliminated variable per defining row, one row per variable."""
    _, first = np.unique(owner[entries], return_index=True)
    return entries[np.sort(first)]


def reduced_objective(
    P_KK: torch.Tensor | None,
    P_KE: torch.Tensor | None,
    P_EE: torch.Tensor | None,
    c_K: torch.Tensor,
    c_E: torch.Tensor,
    T: torch.Tensor,
    u: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q (B, k, k), q (B, k)) of the objective in x_K (module docstring); P_KK None: a
    linear objective (Q = 0)."""
    q = c_K + mtv(T, c_E)
    if P_KK is None:
        return c_K.new_zeros(c_K.shape[0], c_K.shape[1], c_K.shape[1]), q
    Q = P_KK
    if P_EE is not None:
        PT = P_EE.unsqueeze(-1) * T if P_EE.dim() == 2 else P_EE @ T  # P_EE T: (B, e, k)
        Q = Q + T.transpose(1, 2) @ PT
        q = q + mtv(PT, u)
    if P_KE is not None:
        P_KE_T = P_KE @ T
        Q = Q + P_KE_T + P_KE_T.transpose(1, 2)
        q = q + mv(P_KE, u)
    return Q, q


def eliminated_gradient(
    P_KE: torch.Tensor | None,
    P_EE: torch.Tensor | None,
    c_E: torch.Tensor,
    x_K: torch.Tensor,
    x_E: torch.Tensor,
) -> torch.Tensor:
    """(P x + c)_E = P_EK x_K + P_EE x_E + c_E, (B, e)."""
    grad = c_E
    if P_EE is not None:
        grad = grad + (P_EE * x_E if P_EE.dim() == 2 else mv(P_EE, x_E))
    if P_KE is not None:
        grad = grad + mtv(P_KE, x_K)
    return grad
