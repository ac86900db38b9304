"""Recognize a QP as a time-varying LQR problem, with or without stage-wise constraints
(MPC), and solve it by the Riccati recursion (`lqr`; with inequalities, the interior point
whose Newton systems it solves, `mpc`).

Detection works on the reduced QP of `QPForm` (so cvxpy's lifted cost terms are already
gone) and on the problem's variables:

- two variables, a state X of shape (n, T+1) and a control U of shape (m, T) (the two
  shapes tell which is which; n = m is read as (state, control) in the order of
  `problem.variables()` only if both fit); any other kept columns are cvxpy's auxiliary
  variables, each sharing inequality rows with one stage only (`_stage_layout`);
- each inequality row reads one stage;
- the Hessian couples only entries of the same stage ξ_t = [x_t; u_t; w_t] (t = 0 … T,
  with the final stage having no control);
- each equality row is either x_{0,i} = const·b (one entry, a constant coefficient), or
  defines one x_{t+1,i} (a constant coefficient) from entries of τ_t only; every x_{0,i} and
  x_{t+1,i} is defined exactly once.

Anything else stays on the QP path. The final stage gets a dummy control with cost ½‖u‖²
(so u = 0) to fit the recursion's stage form, as do padded auxiliary slots.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch

from cvxlayer.compile.parametric import SparseLinear
from cvxlayer.fastpaths import mpc
from cvxlayer.fastpaths.lqr import lqr
from cvxlayer.fastpaths.qp_form import pair_positions, piece_rows, split_pieces
from cvxlayer.program import ConeStructure
from cvxlayer.solvers.base import Solution, SolveSettings, Status


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
    """(n, m, T, stage, slot): for each z entry its stage t and its position in ξ_t =
    [x_t; u_t; w_t], where w_t are the stage's auxiliary variables (cvxpy's, e.g. t ≥ |u|
    for `abs(U) <= u_max`): kept columns outside X and U, each placed in the one stage whose
    entries share inequality rows with it; None when some has no such stage."""
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
    if (stage >= 0).sum() != n * T1 + m * T:
        return None
    aux = np.flatnonzero(stage < 0)
    if aux.size:
        if not qp_form.ineq_rows.size:
            return None
        G = _pattern(qp_form, "G")
        for a in aux:
            near = stage[G[G[:, a]].any(0)]
            near = near[near >= 0]
            if near.size == 0 or near.min() != near.max():
                return None
            stage[a] = near[0]
        for t in np.unique(stage[aux]):
            here = aux[stage[aux] == t]
            slot[here] = n + m + np.arange(here.size)
    return n, m, T, stage, slot


def _stage_rows(qp_form, stage, stages: int):
    """(stages, K) the inequality rows (cone rows) of each stage, −1 padding, and (stages,)
    their counts; None if a row reads entries of two stages."""
    G = _pattern(qp_form, "G")
    row_stage = np.zeros(G.shape[0], dtype=np.int64)
    for r, cols in enumerate(G):
        here = stage[cols]
        if here.size and here.min() != here.max():
            return None
        row_stage[r] = here[0] if here.size else 0
    counts = np.bincount(row_stage, minlength=stages)
    rows = np.full((stages, max(counts.max(initial=0), 1)), -1)
    for t in range(stages):
        mine = qp_form.ineq_rows[row_stage == t]
        rows[t, : mine.size] = mine
    return rows, counts


def _pattern(qp_form, key) -> np.ndarray:
    """Structural nonzeros of a QP piece (rows of the θ̃ map with any entry)."""
    rows, shape = piece_rows(qp_form.linear, qp_form.shapes, key)
    return (np.diff(rows.indptr) > 0).reshape(shape)


def _constant(qp_form, key) -> np.ndarray:
    """Which entries of a QP piece depend on no parameter (only the last column of θ̃)."""
    rows, shape = piece_rows(qp_form.linear, qp_form.shapes, key)
    params = rows[:, : rows.shape[1] - 1]
    return (np.diff(params.indptr) == 0).reshape(shape)


def _lqr_rows(qp_form, stage, slot, n, T):
    """(init_rows (n,), dyn_rows (T, n)) as indices of the QP's equality rows, or None:
    each row must define x_{0,i} alone or x_{t+1,i} from stage t (constant coefficient)."""
    A_pat = _pattern(qp_form, "A_eq")
    A_const = _constant(qp_form, "A_eq")
    if A_pat.shape[0] != n * (T + 1):
        return None
    init_rows = np.full(n, -1)
    dyn_rows = np.full((T, n), -1)
    for r in range(A_pat.shape[0]):
        cols = np.flatnonzero(A_pat[r])
        stages = stage[cols]
        last = stages.max()
        defined = cols[(stages == last) & (slot[cols] < n)]
        if len(defined) != 1 or not A_const[r, defined[0]]:
            return None
        if (stages < last - 1).any() or ((stages == last) & (cols != defined[0])).any():
            return None
        i = int(slot[defined[0]])
        target = init_rows[i:] if last == 0 else dyn_rows[last - 1, i:]
        if target[0] >= 0 or (last == 0 and len(cols) != 1):
            return None
        target[0] = r
    if (init_rows < 0).any() or (dyn_rows < 0).any():
        return None
    return init_rows, dyn_rows


@dataclass(frozen=True, eq=False)
class LQRForm:
    """An LQR problem's layout in the cone program, and the map θ̃ ↦ its stage data.

    Lifted cost variables (e.g. t = W x_t for `sum_squares(W @ X[:, t])`) are grouped by the
    stage their definition reads, and folded into that stage's cost, so every quantity is
    gathered per stage: memory and time grow linearly with the horizon. With inequality
    rows (each reading one stage: bounds, `abs(U) <= u_max`, stage-wise C x_t + D u_t ≤ d)
    the problem is solved by the interior point with the Riccati recursion (`mpc`), without
    them by the recursion alone (`lqr`).

    Attributes:
        structure: the cone structure; n, m, T: states, controls, horizon.
        x_cols: (T+1, N) cone columns of ξ_t = [x_t; u_t; w_t] (−1: the final stage's
            dummy control, padding of the auxiliary variables w_t).
        e_cols, e_rows: (T+1, E) columns and defining rows of each stage's lifted variables
            (−1: padding).
        init_rows (n,), dyn_rows (T, n): cone rows of x_0 = … and x_{t+1} = ….
        ineq_rows: (T+1, K) each stage's inequality rows (−1: padding), (T+1, 0) if none;
            ineq_counts (T+1,): how many.
        shapes, linear: the pieces θ̃ is mapped to (P, c, A_dyn, kappa, kappa0, b_dyn,
            b_init, a_E, A_E, P_E, c_E, b_E, and G, h with inequalities) and the map.
        qp: with inequalities, the QP path that solves the problem where the compiled
            interior point does not run (CUDA tensors, no numba).
    """

    structure: ConeStructure
    n: int
    m: int
    T: int
    x_cols: np.ndarray
    e_cols: np.ndarray
    e_rows: np.ndarray
    init_rows: np.ndarray
    dyn_rows: np.ndarray
    ineq_rows: np.ndarray
    ineq_counts: np.ndarray
    shapes: dict
    linear: SparseLinear
    qp: object = None

    @property
    def name(self) -> str:
        return "mpc" if self.constrained else "lqr"

    @property
    def constrained(self) -> bool:
        return self.ineq_rows.shape[1] > 0

    @classmethod
    def match(cls, qp_form, compiled, problem: cp.Problem) -> LQRForm | None:
        if "P_KE" in qp_form.shapes or "P_EE" in qp_form.shapes or "G_P" in qp_form.shapes:
            return None
        layout = _stage_layout(qp_form, compiled, problem)
        if layout is None:
            return None
        n, m, T, stage, slot = layout
        N = slot.max() + 1
        if (_q_pattern(qp_form) & (stage[:, None] != stage[None, :])).any():
            return None  # the cost couples different stages
        rows = _lqr_rows(qp_form, stage, slot, n, T)
        if rows is None:
            return None
        ineq_rows, ineq_counts = np.zeros((T + 1, 0), dtype=np.int64), np.zeros(T + 1, int)
        if qp_form.ineq_rows.size:
            found = _stage_rows(qp_form, stage, T + 1)
            if found is None:
                return None
            ineq_rows, ineq_counts = found
        st = compiled.structure
        x_cols = np.full((T + 1, N), -1)
        x_cols[stage, slot] = qp_form.keep
        # lifted variables: the stage their defining row reads
        A_RK = _pattern(qp_form, "A_RK")
        reads = [stage[np.flatnonzero(r)] for r in A_RK]
        if any(s.size and s.min() != s.max() for s in reads):
            return None  # a lifted variable defined from two stages
        e_stage = np.array([s.min() if s.size else 0 for s in reads], dtype=int)
        E = max(np.bincount(e_stage, minlength=T + 1).max(initial=0), 1)
        e_cols = np.full((T + 1, E), -1)
        e_rows = np.full((T + 1, E), -1)
        fill = np.zeros(T + 1, dtype=int)
        for e, t in enumerate(e_stage):
            e_cols[t, fill[t]], e_rows[t, fill[t]] = qp_form.elim[e], qp_form.elim_rows[e]
            fill[t] += 1
        init_rows = qp_form.eq_rows[rows[0]]
        dyn_rows = qp_form.eq_rows[rows[1]]
        pieces = _stage_pieces(st, x_cols, e_cols, e_rows, init_rows, dyn_rows, ineq_rows)
        shapes = {k: v.shape for k, v in pieces.items()}
        flat = np.concatenate([v.ravel() for v in pieces.values()])
        linear = compiled.param_map.linear.restrict(flat)
        return cls(
            st, n, m, T, x_cols, e_cols, e_rows, init_rows, dyn_rows, ineq_rows, ineq_counts,
            shapes, linear, qp_form if ineq_rows.shape[1] else None,
        )  # fmt: skip

    def _compiled(self, device: torch.device) -> bool:
        """Whether the compiled interior point runs for tensors on `device`."""
        return device.type == "cpu" and mpc.kernels() is not None

    def pays_off(self, batch: int, device: torch.device, mode: str) -> bool:
        """Always without inequalities: a recursion costs less than any generic solve.
        With them, where the compiled interior point runs; elsewhere as the QP path."""
        if not self.constrained or self._compiled(device):
            return True
        return self.qp.pays_off(batch, device, mode)

    def describe(self) -> str:
        sizes = f"{self.n} states, {self.m} controls, horizon {self.T}"
        if not self.constrained:
            return f"LQR with {sizes} (Riccati)"
        aux = self.x_cols.shape[1] - self.n - self.m
        extra = f", {aux} auxiliary variables per stage" if aux else ""
        return (
            f"MPC with {sizes}{extra}, up to {self.ineq_rows.shape[1]} inequalities per "
            "stage (interior point, Riccati)"
        )

    def solve(
        self,
        theta: torch.Tensor,
        settings: SolveSettings,
        failed_gradient: str = "zero",
        warm_start: tuple = (None, 0),
    ) -> Solution:
        """The cone program's solution for θ̃ (B, p + 1), differentiable w.r.t. θ̃.

        warm_start: (x, shift), x (B, n) a previous solution of the cone program (or None):
        with inequalities, the interior point starts from its stage variables shifted by
        `shift` stages (the last one repeated), as in receding-horizon control. Where the
        compiled interior point does not run, the QP path solves the problem."""
        dev = theta.device
        if self.constrained and not self._compiled(dev):
            return self.qp.solve(theta, settings, failed_gradient)
        d = split_pieces(self.linear, self.shapes, theta)
        pad_E = torch.as_tensor(self.e_cols < 0, device=dev)
        a_E = d["a_E"] + pad_E.to(theta.dtype)  # padding: a = 1, everything else 0
        T_E = -d["A_E"] / a_E.unsqueeze(-1)  # x_E = T_E ξ + u_E: (B, T+1, E, N)
        u_E = d["b_E"] / a_E
        PT = d["P_E"].unsqueeze(-1) * T_E
        C = d["P"] + T_E.transpose(-1, -2) @ PT
        # slots without a variable (the final control, padding) cost ½‖·‖², so stay 0
        dummy = torch.as_tensor(self.x_cols < 0, dtype=theta.dtype, device=dev)
        C = C + torch.diag_embed(dummy)
        c = d["c"] + ((d["c_E"] + d["P_E"] * u_E).unsqueeze(-2) @ T_E).squeeze(-2)
        x_init = d["b_init"] / d["kappa0"]
        F = -d["A_dyn"] / d["kappa"].unsqueeze(-1)
        f = d["b_dyn"] / d["kappa"]
        extra_y = ()
        if self.constrained:
            G, h = d["G"], d["h"]
            xi, lam, mu, status, iterations = mpc.mpc(
                x_init, C, c, F, f, G, h, self.ineq_counts, settings.eps_abs,
                settings.eps_rel, min(settings.max_iters, mpc.MAX_ITERS),
                self._stage_guess(*warm_start),
            )  # fmt: skip
            slack = h - (G @ xi.unsqueeze(-1)).squeeze(-1)
            extra_y = (mu,)
        else:
            xi, lam, status, iterations = self._unconstrained(x_init, C, c, F, f)
        x_E = (T_E @ xi.unsqueeze(-1)).squeeze(-1) + u_E
        orders = self._orders
        cone_x = _scatter(orders["x"], xi, x_E)
        y_E = -(d["P_E"] * x_E + d["c_E"]) / a_E
        cone_y = _scatter(
            orders["y"], -lam[:, 0] / d["kappa0"], -lam[:, 1:] / d["kappa"], y_E, *extra_y
        )
        cone_s = _scatter(orders["s"], slack) if self.constrained else torch.zeros_like(cone_y)
        return Solution(cone_x, cone_y, cone_s, status, iterations)

    @functools.cached_property
    def _orders(self) -> dict:
        """`_scatter_order` of the cone program's x, y and s (once per form)."""
        st, ineq = self.structure, (self.ineq_rows,) if self.constrained else ()
        y = (self.init_rows, self.dyn_rows, self.e_rows, *ineq)
        return {
            "x": _scatter_order(st.n, self.x_cols, self.e_cols),
            "y": _scatter_order(st.m, *y),
            "s": _scatter_order(st.m, *ineq) if ineq else None,
        }

    def _stage_guess(self, x: torch.Tensor | None, shift: int) -> torch.Tensor | None:
        """(B, T+1, N) the stage variables ξ_t of a cone program solution x (B, n), moved
        `shift` stages earlier (the last stage repeated); None for None."""
        if x is None:
            return None
        cols = torch.as_tensor(self.x_cols, device=x.device)
        xi = torch.where(cols >= 0, x.detach()[:, cols.clamp(min=0)], 0.0)
        if shift:
            last = xi[:, -1:].expand(-1, min(shift, self.T + 1), -1)
            xi = torch.cat([xi[:, shift:], last], 1)[:, : self.T + 1]
        return xi

    @staticmethod
    def _unconstrained(x_init, C, c, F, f):
        """(ξ, λ, status, iterations) by the Riccati recursion alone."""
        B, S, N = c.shape
        n = x_init.shape[1]
        ok = True
        try:
            x, u, lam = lqr(x_init, C, c, F, f)
        except torch.linalg.LinAlgError:
            ok = False
            x = x_init.new_full((B, S, n), float("nan"))
            u = x_init.new_full((B, S, N - n), float("nan"))
            lam = x_init.new_full((B, S, n), float("nan"))
        status = (Status.SOLVED if ok else Status.FAILURE,) * B
        return torch.cat([x, u], 2), lam, status, torch.ones(B, dtype=torch.long)


def _scatter_order(size: int, *indices: np.ndarray) -> tuple[np.ndarray, bool]:
    """(order, padded) for `_scatter`: order (size,) picks each entry from the concatenated
    values of the index arrays (−1 entries dropped), pointing past their end (a zero pad,
    padded True) where nobody writes."""
    index = np.concatenate([ix.ravel() for ix in indices])
    keep = np.flatnonzero(index >= 0)
    order = np.full(size, index.size, dtype=np.int64)
    order[index[keep]] = keep
    return order, len(keep) != size


def _scatter(scatter_order: tuple[np.ndarray, bool], *values: torch.Tensor) -> torch.Tensor:
    """(B, size): values (B, *index.shape), one per index array of `scatter_order`, written
    at their indices; entries nobody writes are 0."""
    order, padded = scatter_order
    flat = torch.cat([v.reshape(v.shape[0], -1) for v in values], 1)
    if padded:
        flat = torch.nn.functional.pad(flat, (0, 1))
    return flat[:, torch.as_tensor(order, device=flat.device)]


def _stage_pieces(
    st, x_cols, e_cols, e_rows, init_rows, dyn_rows, ineq_rows
) -> dict[str, np.ndarray]:
    """Rows of the parametric map M (rows c, A pattern, b, P pattern) for each stage datum;
    −1 for structural zeros and padding."""
    n_a, m = st.a_nnz, st.m
    a_off, b_off, p_off = st.n, st.n + n_a, st.n + n_a + m
    a_pat, a_shape = st.a_coords(), (st.m, st.n)

    def a_rows(r, c):
        pos = pair_positions(a_pat, a_shape, r, c)
        return np.where(pos < 0, -1, a_off + pos)

    def p_rows(r, c):
        if st.p_indices is None:
            return np.full(np.broadcast(r, c).shape, -1)
        pos = pair_positions(st.p_coords(), (st.n, st.n), r, c, symmetric=True)
        return np.where(pos < 0, -1, p_off + pos)

    def b_rows(r):
        return np.where(r < 0, -1, b_off + r)

    T = dyn_rows.shape[0]
    n = dyn_rows.shape[1]
    inequalities = {}
    if ineq_rows.shape[1]:
        inequalities = {
            "G": a_rows(ineq_rows[:, :, None], x_cols[:, None, :]),
            "h": b_rows(ineq_rows),
        }
    return {
        "P": p_rows(x_cols[:, :, None], x_cols[:, None, :]),
        "c": np.where(x_cols < 0, -1, x_cols),
        "A_dyn": a_rows(dyn_rows[:, :, None], x_cols[:T][:, None, :]),
        "kappa": a_rows(dyn_rows, x_cols[1:, :n]),
        "kappa0": a_rows(init_rows, x_cols[0, :n]),
        "b_dyn": b_rows(dyn_rows),
        "b_init": b_rows(init_rows),
        "a_E": a_rows(e_rows, e_cols),
        "A_E": a_rows(e_rows[:, :, None], x_cols[:, None, :]),
        "P_E": p_rows(e_cols, e_cols),
        "c_E": np.where(e_cols < 0, -1, e_cols),
        "b_E": b_rows(e_rows),
        **inequalities,
    }


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
