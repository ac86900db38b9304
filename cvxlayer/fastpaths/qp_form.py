"""Recognize a compiled problem as a QP and move between its cone program and QP data.

A cone program whose cone has only zero and nonnegative rows is the QP

    minimize ½xᵀPx + cᵀx   subject to  A_z x = b_z (zero rows),  A_l x ≤ b_l (nonneg rows).

cvxpy's canonicalization lifts quadratic terms it cannot keep in P, e.g. `sum_squares(L @ x)`
with a parameter L becomes ½‖t‖² with a new variable t and the equality t = L x. Those lifted
variables are eliminated again before the interior-point solve, so that the QP has the
user's variables only (for sum_squares(L @ x): Q = LᵀL, the form qpth takes):

A variable column e is *eliminated* with a zero row r whose coefficient a_e is a constant (no
parameter) in two cases. *Lifted*: e has no other nonzero in A; row r reads
a_e x_e + A_rK x_K + A_rP x_P = b_r. *Pinned*: row r has no other nonzero, so x_e = b_r / a_e
is fixed by the parameters (a constraint such as `W_var == W`); e may appear in other rows.
With P the pinned columns, L the lifted ones, E = P ∪ L, and K the kept columns,

    x_E = T x_K + u,  T = −A_RK / a_E (zero on pinned rows),
    u_P = b_R / a_P,  u_L = (b_R − A_RP u_P) / a_L,

    Q = P_KK + P_KE T + Tᵀ P_EK + Tᵀ P_EE T,    q = c_K + Tᵀ c_E + (P_KE + Tᵀ P_EE) u,

and the other rows read G x_K ≤ h − G_P u_P, A_eq x_K = b_eq − A_eq,P u_P (the products of
parameters that make this no longer DPP are formed in torch). The duals of the eliminated
rows follow from stationarity in x_E, lifted rows first:
y_L = −((P x)_L + c_L) / a_L,  y_P = −((P x)_P + c_P + A_LPᵀ y_L + G_Pᵀ λ + A_eq,Pᵀ ν) / a_P.
The dense blocks of the QP are read straight from θ̃ by one sparse linear map (the
parametric map's rows for those entries); every step is a torch operation, so autograd
carries the QP's gradients back to the parameters. Where a_E, A_RK, the pinned blocks and P
depend on no parameter (projections such as ‖y − x‖² with x a parameter), T and Q are
constants and q, h, b_eq, u linear in θ̃: that reduction is done once, at compile time
(`folded_rows`), and a call reads the reduced QP from θ̃ directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from cvxlayer.compile.parametric import ParametricMap, SparseLinear
from cvxlayer.elimination import eliminated_gradient, one_per, reduced_objective
from cvxlayer.fastpaths.qp import (
    MAX_ITERS,
    GPattern,
    QPData,
    qp_solve_differentiable,
)
from cvxlayer.linalg import coo_mv, mtv, mv
from cvxlayer.program import ConeStructure
from cvxlayer.solvers.base import Solution, SolveSettings


def _constant_entries(matrix, rows: np.ndarray, num_params: int) -> np.ndarray:
    """(len(rows),) bool: which rows of the parametric map depend on no parameter."""
    sub = matrix[rows].tocsr()
    depends = np.zeros(len(rows), dtype=bool)
    for i in range(len(rows)):
        cols = sub.indices[sub.indptr[i] : sub.indptr[i + 1]]
        depends[i] = bool((cols < num_params).any())
    return ~depends


def pair_positions(pattern, shape, r, c, symmetric: bool = False) -> np.ndarray:
    """Positions in a CSC value vector of the entries (r, c) (arrays, broadcast together);
    −1 where the pattern has no entry or r or c is −1. With `symmetric`, the pattern holds
    the upper triangle of a symmetric matrix."""
    rows, cols = pattern
    r, c = np.broadcast_arrays(np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.int64))
    out_shape = r.shape
    r, c = r.ravel(), c.ravel()
    valid = (r >= 0) & (c >= 0)
    if symmetric:
        r, c = np.minimum(r, c), np.maximum(r, c)
    keys = cols.astype(np.int64) * shape[0] + rows  # ascending: CSC order
    query = c * shape[0] + r
    found = np.full(len(query), -1, dtype=np.int64)
    if len(keys):
        pos = np.searchsorted(keys, query).clip(max=len(keys) - 1)
        found = np.where((keys[pos] == query) & valid, pos, -1)
    return found.reshape(out_shape)


def _positions(pattern, shape, row_sel, col_sel, symmetric: bool = False) -> np.ndarray:
    """`pair_positions` of the dense block M[row_sel][:, col_sel]."""
    r, c = np.asarray(row_sel)[:, None], np.asarray(col_sel)[None, :]
    return pair_positions(pattern, shape, r, c, symmetric)


def split_pieces(linear: SparseLinear, shapes: dict, theta: torch.Tensor) -> dict:
    """Apply a map θ̃ ↦ concatenated pieces and cut its output into the pieces,
    name ↦ (B, *shape)."""
    return _split(linear(theta), shapes)


def _split(flat: torch.Tensor, shapes: dict) -> dict:
    """The pieces (name ↦ (B, *shape)) of a map's concatenated output flat (B, total)."""
    parts = torch.split(flat, [math.prod(s) for s in shapes.values()], dim=1)
    return {k: t.reshape(flat.shape[0], *s) for (k, s), t in zip(shapes.items(), parts)}


def piece_rows(linear: SparseLinear, shapes: dict, key: str):
    """The rows of such a map that produce one piece (CSR), and the piece's shape."""
    start = 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        if name == key:
            return linear.matrix[start : start + size].tocsr(), shape
        start += size
    raise KeyError(key)


@dataclass(frozen=True, eq=False)
class Pieces:
    """What a call reads from θ̃: named pieces. A piece that is a parameter as it is (up to a
    constant factor and a transposition, e.g. G in G z ≤ h, or L of ½‖Lz‖²) is a strided
    view of θ̃ (no copy); the other parameter-dependent ones come from one sparse linear
    map; the rest are constants made once (broadcast over the batch, and never
    differentiated: e.g. the bounds of a box QP, the ε·I of a regularized objective).

    Attributes:
        linear: θ̃ ↦ the mapped pieces, flattened and concatenated; shapes: their shapes,
            in order.
        constants: the constant pieces' values (float64 arrays).
        views: name ↦ (shape, offset, strides, factor): the piece is
            factor · θ̃[:, offset + Σ_k i_k strides_k].
    """

    linear: SparseLinear
    shapes: dict
    constants: dict
    views: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, rows: dict, strided: bool = True) -> Pieces:
        """From name ↦ (its rows of the map θ̃ ↦ pieces (CSR, size × (p + 1)), its shape);
        `strided`: read the pieces that can be from θ̃ as views (else all through the map)."""
        params = {key: v for key, v in rows.items() if v[0][:, :-1].nnz}
        constants = {
            key: v[0][:, -1].toarray().reshape(v[1]) for key, v in rows.items() if key not in params
        }
        views = {key: _strided(*v) for key, v in params.items()} if strided else {}
        views = {key: view for key, view in views.items() if view is not None}
        mapped = {key: v for key, v in params.items() if key not in views}
        width = next(iter(rows.values()))[0].shape[1]
        matrix = sp.vstack([v[0] for v in mapped.values()] or [sp.csr_matrix((0, width))])
        shapes = {key: v[1] for key, v in mapped.items()}
        return cls(SparseLinear(sp.csr_matrix(matrix)), shapes, constants, views)

    def __call__(self, theta: torch.Tensor) -> dict:
        """name ↦ (B, *shape) for the batch θ̃ (B, p + 1); constants are broadcast views
        (kept for the last batch size: a loop calls with one size)."""
        key = (theta.dtype, theta.device, theta.shape[0])
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = {
                name: torch.as_tensor(v, dtype=theta.dtype, device=theta.device)
                .unsqueeze(0)
                .expand(theta.shape[0], *v.shape)
                for name, v in self.constants.items()
            }
        d = dict(self._cache[key])
        if not (self.shapes or self.views):
            return d
        coo = (*self.linear.coo(theta), self.linear.matrix.shape[0]) if self.shapes else None
        specs = tuple(self.views.values())
        if torch.is_grad_enabled() and theta.requires_grad:
            mapped, *views = _Read.apply(theta, coo, specs)
        else:  # nothing to differentiate: the reads without the Function's dispatch
            mapped, *views = _read(theta.contiguous(), coo, specs)
        if self.shapes:
            d.update(_split(mapped, self.shapes))
        for name, view, (*_, factor) in zip(self.views, views, specs):
            d[name] = view if factor == 1 else factor * view
        return d


def _strided_view(theta: torch.Tensor, spec: tuple) -> torch.Tensor:
    """θ̃[:, offset + Σ_k i_k strides_k] (B, *shape) for a contiguous θ̃ (`Pieces.views`)."""
    shape, offset, strides, _ = spec
    return theta.as_strided(
        (theta.shape[0], *shape), (theta.stride(0), *strides), theta.storage_offset() + offset
    )


def _read(theta: torch.Tensor, coo: tuple | None, specs: tuple) -> tuple:
    """(the sparse map's output (B, rows), *the strided views) of a contiguous θ̃ (`_Read`)."""
    if coo is None:
        mapped = theta.new_zeros(theta.shape[0], 0)
    else:
        rows, cols, vals, size = coo
        mapped = coo_mv(vals, rows, cols, theta, size)
    return (mapped, *(_strided_view(theta, spec) for spec in specs))


class _Read(torch.autograd.Function):
    """What `Pieces` reads from θ̃: the sparse map's output (B, rows) (empty without a map,
    coo = None) and the strided views of θ̃ (no copies), with one gradient of θ̃ for all of
    them: torch's as_strided backward zero-fills a θ̃-sized tensor per view, and the map's
    backward another, all summed after (T1: 2 × 128 × 20 000 entries a view)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, coo: tuple | None, specs: tuple):
        theta = theta.contiguous()
        ctx.coo, ctx.specs, ctx.shape = coo, specs, theta.shape
        return _read(theta, coo, specs)

    @staticmethod
    def backward(ctx, g_mapped, *grads):
        given = [g for g in grads if g is not None]
        if ctx.coo is not None and g_mapped is not None:
            rows, cols, vals, _ = ctx.coo
            out = coo_mv(vals, cols, rows, g_mapped, ctx.shape[1])
        elif given:
            out = given[0].new_zeros(ctx.shape)
        else:
            return None, None, None
        for grad, spec in zip(grads, ctx.specs):
            if grad is not None:
                _strided_view(out, spec).add_(grad)
        return out, None, None


def _strided(rows: sp.csr_matrix, shape: tuple) -> tuple | None:
    """(shape, offset, strides, factor) when the piece with these map rows is factor times
    entries of θ̃ at offset + Σ_k i_k strides_k (one nonzero per row, one factor, no
    constant term, distinct entries), else None."""
    size = math.prod(shape)
    counts = np.diff(rows.indptr)
    if size == 0 or not (counts == 1).all() or rows[:, -1].nnz:
        return None
    cols, values = rows.indices.astype(np.int64), rows.data
    if not (values == values[0]).all():
        return None
    grid = cols.reshape(shape)
    strides = [
        int(np.take(grid, 1, axis=k).flat[0] - grid.flat[0]) if n > 1 else 0
        for k, n in enumerate(shape)
    ]
    index = np.indices(shape).reshape(len(shape), -1).T
    if min(strides) < 0 or not (index @ np.array(strides) + grid.flat[0] == cols).all():
        return None
    if np.unique(cols).size != size:
        return None
    return tuple(shape), int(grid.flat[0]), tuple(strides), float(values[0])


def raw_rows(form: QPForm) -> dict:
    """The pieces of `form` (c, b, a_E, A_RK, G, A_eq, …) as `Pieces.from_rows` takes them."""
    return {k: (piece_rows(form.linear, form.shapes, k)[0], form.shapes[k]) for k in form.shapes}


def folded_rows(form: QPForm, raw: dict) -> dict | None:
    """The reduced QP's pieces (Q, q, G, h, A_eq, b_eq, T, u, c_E, a_E and the blocks that the
    dual recovery reads) as map rows, or None where the elimination reads a parameter: when
    a_E, A_RK (so T), the pinned columns' blocks and P are constants, Q and T are too and q,
    h, b_eq, u are linear in θ̃ (the products with T are formed here, once, as sparse
    matrices, instead of per call)."""
    fixed = ("a_E", "A_RK", "A_LP", "G_P", "A_eq_P", "P_KK", "P_KE", "P_EE", "P_EE_diag")
    if any(raw[k][0][:, :-1].nnz for k in fixed if k in raw):
        return None

    def value(key):
        if key not in raw:
            return None
        return raw[key][0][:, -1].toarray().reshape(raw[key][1])

    npin, e, k = form.pinned, form.elim.size, form.keep.size
    a_E, T = value("a_E"), -value("A_RK") / value("a_E")[:, None]
    b, c = raw["b"][0], raw["c"][0]
    u = sp.diags(1.0 / a_E) @ b[form.elim_rows]  # (e, p + 1): u = U θ̃
    h, b_eq = b[form.ineq_rows], b[form.eq_rows]
    if npin:
        u_P = u[:npin]
        u_L = u[npin:] - sp.diags(1.0 / a_E[npin:]) @ (value("A_LP") @ u_P)
        u = sp.vstack([u_P, u_L])
        h, b_eq = h - value("G_P") @ u_P, b_eq - value("A_eq_P") @ u_P
    q = c[form.keep] + T.T @ c[form.elim]
    Q = np.zeros((k, k))
    P_KK, P_KE = value("P_KK"), value("P_KE")
    if P_KK is not None:
        diag = value("P_EE_diag")
        P_EE = np.diag(diag) if diag is not None else value("P_EE")
        Q = P_KK + T.T @ P_EE @ T
        weight = T.T @ P_EE  # q's term (P_KE + Tᵀ P_EE) u
        if P_KE is not None:
            Q = Q + P_KE @ T + (P_KE @ T).T
            weight = weight + P_KE
        q = q + weight @ u
    width = b.shape[1]

    def fixed_rows(array):  # a constant as rows of the map (the last column)
        flat = np.asarray(array, dtype=float).reshape(-1, 1)
        return sp.hstack([sp.csr_matrix((flat.size, width - 1)), sp.csr_matrix(flat)])

    rows = {"Q": (fixed_rows(Q), (k, k)), "T": (fixed_rows(T), (e, k))}
    for key, piece in (("q", q), ("h", h), ("b_eq", b_eq), ("u", u)):
        rows[key] = (sp.csr_matrix(piece), (piece.shape[0],))
    rows["c_E"] = (c[form.elim], (e,))
    for key in ("a_E", "G", "A_eq", "A_LP", "G_P", "A_eq_P", "P_KE", "P_EE", "P_EE_diag"):
        if key in raw:
            rows[key] = raw[key]
    return rows


# the QP path pays on the CPU at every batch size up to _ALWAYS_MAX_N variables; above,
# with a sparse G, from QP_MIN_BATCH elements (`QPForm.pays_off`; the crossover measured
# against native SCS: 16–32 elements at n = 10–50 on 2 cores)
_ALWAYS_MAX_N = 500
QP_MIN_BATCH = 24


@dataclass(frozen=True, eq=False)
class QPForm:
    """The reduction of one compiled problem, found once at compile time.

    Attributes:
        structure: the compiled cone structure.
        keep: kept columns K (the QP's variables z).
        elim: eliminated columns E, pinned ones first; elim_rows: their zero rows R.
        eq_rows: the other zero rows (the QP's Az = b); ineq_rows: nonneg rows (Gz ≤ h).
        shapes: the pieces θ̃ is mapped to, in order: c, b, a_E, A_RK, G, A_eq, with pinned
            columns A_LP, G_P, A_eq_P, and for a quadratic objective P_KK, P_KE (if
            nonzero), P_EE (or P_EE_diag if diagonal).
        linear: θ̃ ↦ those pieces, flattened and concatenated.
        g_pattern: G's structural nonzeros when G is sparse (e.g. bounds), else None.
    """

    structure: ConeStructure
    keep: np.ndarray
    elim: np.ndarray
    elim_rows: np.ndarray
    eq_rows: np.ndarray
    ineq_rows: np.ndarray
    shapes: dict
    linear: SparseLinear
    g_pattern: GPattern | None = None
    pinned: int = 0  # the first `pinned` of `elim` are pinned, the others lifted
    pieces: Pieces | None = None  # what a call reads from θ̃
    folded: bool = False  # whether `pieces` hold the reduced QP (`folded_rows`)
    duals: bool = True  # whether `solve` computes y and s (else zeros: no output reads them)
    elim_read: bool = True  # whether x_E is differentiated (else no output reads it)
    _cache: dict = field(default_factory=dict, repr=False)

    name = "qp"

    @classmethod
    def match(cls, param_map: ParametricMap, protected: np.ndarray | None = None) -> QPForm | None:
        """The reduction for a QP-structured program, or None if the cone has other rows.

        Args:
            protected: columns never to eliminate (a fast path that needs them as they are).
        """
        structure, matrix = param_map.structure, param_map.matrix
        cones = structure.cones
        if cones.zero + cones.nonneg != structure.m:
            return None
        n, m, zero = structure.n, structure.m, cones.zero
        rows, cols = structure.a_coords()
        constant = _constant_entries(matrix, n + np.arange(rows.size), param_map.num_params)
        allowed = constant & (rows < zero)
        if protected is not None:
            allowed &= ~np.isin(cols, protected)
        # pinned: the entry is alone in its row; lifted: alone in its column
        row_counts = np.bincount(rows, minlength=m)
        pinned = one_per(np.flatnonzero(allowed & (row_counts[rows] == 1)), cols)
        taken_cols = np.isin(cols, cols[pinned])
        col_counts = np.bincount(cols, minlength=n)
        lifted = np.flatnonzero(allowed & (col_counts[cols] == 1) & ~taken_cols)
        lifted = one_per(lifted, rows)
        entry = np.concatenate([pinned, lifted])
        elim, elim_rows = cols[entry].astype(np.int64), rows[entry].astype(np.int64)
        keep = np.setdiff1d(np.arange(n), elim)
        if keep.size == 0:
            return None
        eq_rows = np.setdiff1d(np.arange(zero), elim_rows)
        ineq_rows = np.arange(zero, m)
        pinned_cols = elim[: pinned.size]

        # rows of the parametric map M: c, A's pattern, b, P's pattern
        a_off, b_off, p_off = n, n + structure.a_nnz, n + structure.a_nnz + m
        a = ((rows, cols), (m, n))
        pieces = {
            "c": np.arange(n),
            "b": b_off + np.arange(m),
            "a_E": a_off + entry,
            "A_RK": _positions(*a, elim_rows, keep),
            "G": _positions(*a, ineq_rows, keep),
            "A_eq": _positions(*a, eq_rows, keep),
        }
        if pinned.size:
            pieces["A_LP"] = _positions(*a, elim_rows[pinned.size :], pinned_cols)
            pieces["G_P"] = _positions(*a, ineq_rows, pinned_cols)
            pieces["A_eq_P"] = _positions(*a, eq_rows, pinned_cols)
        g_pattern = GPattern.from_mask(pieces["G"] >= 0)
        for key in ("A_RK", "G", "A_eq", "A_LP", "G_P", "A_eq_P"):
            if key in pieces:
                pieces[key] = np.where(pieces[key] < 0, -1, a_off + pieces[key])
        if structure.p_indices is not None:
            p = (structure.p_coords(), (n, n))
            blocks = {"P_KK": _positions(*p, keep, keep, symmetric=True)}
            ke = _positions(*p, keep, elim, symmetric=True)
            if (ke >= 0).any():
                blocks["P_KE"] = ke
            ee = _positions(*p, elim, elim, symmetric=True)
            if (ee[~np.eye(elim.size, dtype=bool)] >= 0).any():
                blocks["P_EE"] = ee
            else:
                blocks["P_EE_diag"] = np.diagonal(ee).copy()
            for key, pos in blocks.items():
                pieces[key] = np.where(pos < 0, -1, p_off + pos)
        shapes = {key: pos.shape for key, pos in pieces.items()}
        linear = param_map.linear.restrict(np.concatenate([v.ravel() for v in pieces.values()]))
        form = cls(
            structure, keep, elim, elim_rows, eq_rows, ineq_rows, shapes, linear, g_pattern,
            int(pinned.size),
        )  # fmt: skip
        raw = raw_rows(form)
        folded = folded_rows(form, raw)
        pieces = Pieces.from_rows(raw if folded is None else folded)
        return dataclasses.replace(form, pieces=pieces, folded=folded is not None)

    def pays_off(self, batch: int, device: torch.device, mode: str) -> bool:
        """Whether the QP path beats the generic `mode`: never native Clarabel (0.6 s
        against its 0.05 s on a 20-asset trading policy, B = 32; bench/policy_rollout.py);
        always on the CPU up to `_ALWAYS_MAX_N` variables, where the dual active set
        runs per element (n = 50, B = 1: 4 ms a call against native SCS's 15, forward and
        backward; bench/overhead.py); above, with a dense G at any batch size (n = m = 600,
        min ‖y − x‖² s.t. My ≤ 1: 0.17 s forward and backward at B = 1 against native
        SCS's 11.8, 1.3 against the compiled interior point's 3.3 at B = 8), with a sparse
        one from `QP_MIN_BATCH` elements (n = 1000, m = 2n, ~5 nonzeros a row: native SCS
        0.24 / 1.2 s at B = 1 / 8 against 0.29 / 3.2), and without inequalities, where it is
        one linear solve."""
        if mode == "clarabel":
            return False
        if device.type != "cpu" or self.keep.size <= _ALWAYS_MAX_N:
            return True
        return batch >= QP_MIN_BATCH or self.ineq_rows.size == 0 or self.g_pattern is None

    def describe(self) -> str:
        return (
            f"QP with {self.keep.size} variables, {self.eq_rows.size} equalities, "
            f"{self.ineq_rows.size} inequalities ({self.elim.size - self.pinned} lifted and "
            f"{self.pinned} pinned variables eliminated)"
        )

    def solve(
        self,
        theta: torch.Tensor,
        settings: SolveSettings,
        failed_gradient: str = "zero",
        warm_start: tuple = (None, 0),
    ) -> Solution:
        """Solve the batch with parameters θ̃ (B, p + 1) on the QP path; the cone program's
        x, y, s are returned, differentiable w.r.t. θ̃. `warm_start` = (a previous call's x of
        the cone program (B, n) or None, a shift): its kept columns start the active set's
        working set (the shift, meaningful for the MPC path's stages, is not used here)."""
        *_, x_order, y_order = self._indices(theta.device)
        d = self.pieces(theta)
        if not self.folded:
            d = self._reduce(d, theta.device)
        T, u, c_E, a_E, npin = d["T"], d["u"], d["c_E"], d["a_E"], self.pinned
        P_KE, P_EE = d.get("P_KE"), d.get("P_EE", d.get("P_EE_diag"))
        qp = QPData(d["Q"], d["q"], d["G"], d["h"], d["A_eq"], d["b_eq"], self.g_pattern)
        z, lam, nu, result = qp_solve_differentiable(
            qp,
            settings.eps_abs,
            settings.eps_rel,
            min(settings.max_iters, MAX_ITERS),
            settings.verbose,
            failed_gradient,
            gram=d.get("gram"),
            start=None if warm_start[0] is None else warm_start[0][:, self.keep],
        )
        # back to the cone program: x = (z, x_E), y = (y_R, ν, λ), s = (0, h − Gz)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.elim_read):
            x_E = mv(T, z) + u
        x = torch.cat([z, x_E], 1).index_select(1, x_order)
        if not self.duals:
            zeros = x.new_zeros(x.shape[0], self.structure.m)
            return Solution(x, zeros, zeros, result.status, result.iterations)
        grad_E = eliminated_gradient(P_KE, P_EE, c_E, z, x_E)
        y_R = -grad_E / a_E
        if npin:  # a pinned column's other rows enter its stationarity
            y_L = y_R[:, npin:]
            grad_P = grad_E[:, :npin] + mtv(d["A_LP"], y_L)
            grad_P = grad_P + mtv(d["G_P"], lam) + mtv(d["A_eq_P"], nu)
            y_R = torch.cat([-grad_P / a_E[:, :npin], y_L], 1)
        y = torch.cat([y_R, nu, lam], 1)
        y = y[:, y_order]
        s_ineq = qp.h - mv(qp.G, z)
        s = torch.cat([s_ineq.new_zeros(s_ineq.shape[0], self.structure.cones.zero), s_ineq], 1)
        return Solution(x, y, s, result.status, result.iterations)

    def _reduce(self, d: dict, device: torch.device) -> dict:
        """`d` (the pieces of θ̃) with the reduced QP's pieces added: x_E = T x_K + u (pinned
        rows of A_RK are empty: T is zero there), Q, q, h, b_eq and c_E (module docstring)."""
        K, E, R, eq, ineq, *_ = self._indices(device)
        b, c, a_E, npin = d["b"], d["c"], d["a_E"], self.pinned
        h, b_eq = b[:, ineq], b[:, eq]
        T = -d["A_RK"] / a_E.unsqueeze(-1)
        u = b[:, R] / a_E
        if npin:
            u_P = u[:, :npin]
            u = torch.cat([u_P, u[:, npin:] - mv(d["A_LP"], u_P) / a_E[:, npin:]], 1)
            h, b_eq = h - mv(d["G_P"], u_P), b_eq - mv(d["A_eq_P"], u_P)
        c_E, P_KK, P_KE = c[:, E], d.get("P_KK"), d.get("P_KE")
        P_EE, gram = d.get("P_EE", d.get("P_EE_diag")), None
        if P_KK is not None and P_KE is None and "P_EE_diag" in d:
            # Q = P_KK + Tᵀ diag(P_EE) T, formed and differentiated by the solve itself
            # (`qp_solve_differentiable`'s gram): its gradient has rank two
            Q, gram = P_KK, (T, P_EE)
            q = c[:, K] + mtv(T, c_E + P_EE * u)
        else:
            Q, q = reduced_objective(P_KK, P_KE, P_EE, c[:, K], c_E, T, u)
        reduced = {"Q": Q, "q": q, "h": h, "b_eq": b_eq, "T": T, "u": u, "c_E": c_E, "gram": gram}
        return {**d, **reduced}

    def _indices(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """K, E, R, the equality and inequality rows, and the permutations that put x = (z,
        x_E) and y = (y_R, ν, λ) back in the cone program's order, as index tensors on
        `device` (made once per device)."""
        if device not in self._cache:
            x_order = np.argsort(np.concatenate([self.keep, self.elim]))
            y_order = np.argsort(np.concatenate([self.elim_rows, self.eq_rows, self.ineq_rows]))
            self._cache[device] = tuple(
                torch.as_tensor(ix, device=device)
                for ix in (
                    self.keep, self.elim, self.elim_rows, self.eq_rows, self.ineq_rows,
                    x_order, y_order,
                )
            )  # fmt: skip
        return self._cache[device]
