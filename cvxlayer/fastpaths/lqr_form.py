"""Recognize a QP as a time-varying LQR problem and solve it by the Riccati recursion.

Detection works on the reduced QP of `QPForm` (so cvxpy's lifted cost terms are already
gone) and on the problem's variables:

- exactly two kept variables, a state X of shape (n, T+1) and a control U of shape (m, T)
  (the two shapes tell which is which; n = m is read as (state, control) in the order of
  `problem.variables()` only if both fit);
- no inequalities (control or state bounds make it a general QP: the QP path solves it);
- the Hessian couples only entries of the same stage τ_t = [x_t; u_t] (t = 0 … T, with the
  final stage having no control);
- each equality row is either x_{0,i} = const·b (one entry, a constant coefficient), or
  defines one x_{t+1,i} (a constant coefficient) from entries of τ_t only; every x_{0,i} and
  x_{t+1,i} is defined exactly once.

Anything else stays on the QP path. The final stage gets a dummy control with cost ½‖u‖²
(so u = 0) to fit the recursion's stage form.
"""

from __future__ import annotations

from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch

from cvxlayer.fastpaths.lqr import lqr
from cvxlayer.fastpaths.qp import QPData
from cvxlayer.solvers.base import Status


def state_and_control(compiled, problem):
    """(X, U): a state variable (n, T+1) and a control variable (m, T), or None."""
    variables = problem.variables()
    if len(variables) != 2 or any(v.ndim != 2 for v in variables):
        return None
    a, b = variables
    if a.shape[1] == b.shape[1] + 1:
        X, U = a, b
    elif b.shape[1] == a.shape[1] + 1:
        X, U = b, a
    else:
        return None
    if X.id not in compiled.var_offsets or U.id not in compiled.var_offsets:
        return None
    return X, U


def variable_columns(compiled, variables) -> np.ndarray:
    """The cone program's x columns of the given (unlowered) variables."""
    return np.concatenate([compiled.var_offsets[v.id] + np.arange(v.size) for v in variables])


def _stage_layout(qp_form, compiled, problem):
    """(n, m, T, stage, slot): for each z entry its stage t and its position in τ_t."""
    found = state_and_control(compiled, problem)
    if found is None:
        return None
    X, U = found
    (n, T1), (m, T) = X.shape, U.shape
    n_cone = compiled.structure.n
    col_stage = np.full(n_cone, -1)
    col_slot = np.full(n_cone, -1)
    x_off, u_off = compiled.var_offsets[X.id], compiled.var_offsets[U.id]
    t_x, i_x = np.divmod(np.arange(n * T1), n)  # column-major: entry (i, t) at t·n + i
    col_stage[x_off + np.arange(n * T1)], col_slot[x_off + np.arange(n * T1)] = t_x, i_x
    t_u, i_u = np.divmod(np.arange(m * T), m)
    col_stage[u_off + np.arange(m * T)], col_slot[u_off + np.arange(m * T)] = t_u, n + i_u
    stage, slot = col_stage[qp_form.keep], col_slot[qp_form.keep]
    if (stage < 0).any() or len(qp_form.keep) != n * T1 + m * T:
        return None
    return n, m, T, stage, slot


def _pattern(qp_form, key) -> np.ndarray:
    """Structural nonzeros of a QP piece (rows of the θ̃ map with any entry)."""
    start = 0
    for name, shape in qp_form.shapes.items():
        size = int(np.prod(shape))
        if name == key:
            rows = qp_form.linear.matrix[start : start + size]
            return (np.diff(rows.indptr) > 0).reshape(shape)
        start += size
    raise KeyError(key)


def _constant(qp_form, key) -> np.ndarray:
    """Which entries of a QP piece depend on no parameter."""
    start = 0
    for name, shape in qp_form.shapes.items():
        size = int(np.prod(shape))
        if name == key:
            rows = qp_form.linear.matrix[start : start + size].tocsr()
            num_params = rows.shape[1] - 1
            has_param = np.array(
                [
                    (rows.indices[rows.indptr[k] : rows.indptr[k + 1]] < num_params).any()
                    for k in range(size)
                ]
            )
            return (~has_param).reshape(shape)
        start += size
    raise KeyError(key)


@dataclass(frozen=True, eq=False)
class LQRLayout:
    """Where the LQR data sit in the reduced QP.

    Attributes:
        n, m, T: states, controls, horizon (T controls, T + 1 states).
        tau_pos: (T+1, n+m) z index of each stage entry, −1 for the final dummy control.
        init_rows: (n,) equality rows x_{0,i} = b/κ; dyn_rows: (T, n) rows defining x_{t+1,i}.
        gathers: flat positions, in the padded Q ((k+1)², index k is a zero), the padded q
            and the padded A_eq ((p, k+1)), of C (T+1, N, N), c (T+1, N), F (T, n, N), and
            the defining coefficients κ_0 (n,), κ (T, n).
    """

    n: int
    m: int
    T: int
    tau_pos: np.ndarray
    init_rows: np.ndarray
    dyn_rows: np.ndarray
    gathers: tuple

    @classmethod
    def match(cls, qp_form, compiled, problem: cp.Problem) -> LQRLayout | None:
        if qp_form.ineq_rows.size:
            return None
        layout = _stage_layout(qp_form, compiled, problem)
        if layout is None:
            return None
        n, m, T, stage, slot = layout
        N = n + m
        tau_pos = np.full((T + 1, N), -1)
        tau_pos[stage, slot] = np.arange(stage.size)
        # the Hessian couples only entries of the same stage
        Q_pat = _q_pattern(qp_form)
        if (Q_pat & (stage[:, None] != stage[None, :])).any():
            return None
        # equality rows: x_{0,i} = …, or x_{t+1,i} = F_t τ_t + f_t
        A_pat = _pattern(qp_form, "A_eq")
        A_const = _constant(qp_form, "A_eq")
        p = A_pat.shape[0]
        if p != n * (T + 1):
            return None
        init_rows = np.full(n, -1)
        dyn_rows = np.full((T, n), -1)
        for r in range(p):
            cols = np.flatnonzero(A_pat[r])
            stages = stage[cols]
            last = stages.max()
            defined = cols[(stages == last) & (slot[cols] < n)]
            if len(defined) != 1 or not A_const[r, defined[0]]:
                return None
            if (stages < last - 1).any() or ((stages == last) & (cols != defined[0])).any():
                return None
            i = int(slot[defined[0]])
            if last == 0:
                if len(cols) != 1 or init_rows[i] >= 0:
                    return None
                init_rows[i] = r
            else:
                if dyn_rows[last - 1, i] >= 0:
                    return None
                dyn_rows[last - 1, i] = r
        if (init_rows < 0).any() or (dyn_rows < 0).any():
            return None
        k = stage.size
        pos = np.where(tau_pos < 0, k, tau_pos)
        gathers = (
            pos[:, :, None] * (k + 1) + pos[:, None, :],
            pos,
            dyn_rows[:, :, None] * (k + 1) + pos[:T][:, None, :],
            init_rows * (k + 1) + pos[0, :n],
            dyn_rows * (k + 1) + pos[1:, :n],
        )
        return cls(n, m, T, tau_pos, init_rows, dyn_rows, gathers)

    def solve(self, qp: QPData):
        """(z, λ (B, 0), ν, status, iterations) of the reduced QP, differentiable."""
        n, m, T = self.n, self.m, self.T
        B, k = qp.q.shape
        dev = qp.q.device
        C_idx, c_idx, F_idx, k0_idx, k_idx = (torch.as_tensor(a, device=dev) for a in self.gathers)
        pad = torch.nn.functional.pad
        Q_flat = pad(qp.Q, (0, 1, 0, 1)).reshape(B, -1)  # index k: the zero row/column
        A_flat = pad(qp.A, (0, 1)).reshape(B, -1)
        C = Q_flat[:, C_idx]  # (B, T+1, N, N)
        dummy = torch.zeros_like(C[0])
        dummy[T, n:, n:] = torch.eye(m, dtype=C.dtype, device=dev)  # final stage: ½‖u‖²
        C = C + dummy
        c = pad(qp.q, (0, 1))[:, c_idx]
        kappa0, kappa = A_flat[:, k0_idx], A_flat[:, k_idx]  # (B, n), (B, T, n)
        x_init = qp.b[:, torch.as_tensor(self.init_rows, device=dev)] / kappa0
        F = -A_flat[:, F_idx] / kappa.unsqueeze(-1)
        f = qp.b[:, torch.as_tensor(self.dyn_rows, device=dev)] / kappa
        try:
            x, u, lam = lqr(x_init, C, c, F, f)
        except torch.linalg.LinAlgError:
            nan = qp.q.new_full((B, k), float("nan"))
            return nan, qp.h.new_zeros(B, 0), qp.b * float("nan"), (Status.FAILURE,) * B, None
        tau = torch.cat([x, u], 2).reshape(B, -1)
        flat = self.tau_pos.reshape(-1)
        order = np.empty(k, dtype=np.int64)
        order[flat[flat >= 0]] = np.flatnonzero(flat >= 0)
        z = tau[:, torch.as_tensor(order, device=dev)]
        # ν of the QP's rows: the multipliers with the QP's sign and scale, ν = −λ/κ
        nu = torch.cat([-lam[:, 0] / kappa0, (-lam[:, 1:] / kappa).reshape(B, -1)], 1)
        rows_order = np.argsort(np.concatenate([self.init_rows, self.dyn_rows.reshape(-1)]))
        nu = nu[:, torch.as_tensor(rows_order, device=dev)]
        iterations = torch.ones(B, dtype=torch.long)
        return z, qp.h.new_zeros(B, 0), nu, (Status.SOLVED,) * B, iterations


def _q_pattern(qp_form) -> np.ndarray:
    """Structural nonzeros of the reduced Hessian Q = P_KK + Tᵀ P_EE T (+ P_KE terms)."""
    p = {k: _pattern(qp_form, k) for k in qp_form.shapes if k.startswith("P_")}
    k = qp_form.keep.size
    if not p:
        return np.zeros((k, k), dtype=bool)
    T_pat = _pattern(qp_form, "A_RK").astype(int)  # (|E|, |K|)
    P_EE = np.diag(p["P_EE_diag"]) if "P_EE_diag" in p else p["P_EE"]
    Q = p["P_KK"] | ((T_pat.T @ P_EE.astype(int) @ T_pat) > 0)
    if "P_KE" in p:
        KE_T = (p["P_KE"].astype(int) @ T_pat) > 0
        Q = Q | KE_T | KE_T.T
    return Q
