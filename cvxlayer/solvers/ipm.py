"""Mode "ipm": a batched primal-dual interior-point method on the homogeneous embedding.

For each element, the cone program  min ½xᵀPx + cᵀx  s.t.  Ax + s = b, s ∈ K  (dual z ∈ K*)
is embedded as in Clarabel (Goulart & Chen 2024): find (x, z, s, τ, κ), s ∈ K, z ∈ K*,
τ, κ ≥ 0, with

    r_x = Px + Aᵀz + cτ = 0,   r_z = Ax + s − bτ = 0,   r_τ = κ + cᵀx + bᵀz + xᵀPx/τ = 0.

A solution with τ > 0 gives (x, z, s)/τ; one with κ > 0 a certificate of infeasibility
(bᵀz < 0, Aᵀz = 0) or unboundedness (cᵀx < 0, Ax + s = 0, Px = 0). Each iteration
linearizes these and the complementarity (s ∘ z = μe on symmetric cones, s = −μ∇f*(z) on
the exponential and power cones), τκ = μ, with a scaling H = WᵀW of each cone:

    [P  Aᵀ] [Δx]   [r₁]         Δs = −offset(d_s) − H Δz  (= −d_z − AΔx + bΔτ),
    [A −H ] [Δz] = [r₂],        Δκ = −(d_κ + κΔτ)/τ,

solved once for the constant right side (−c, b) and once per direction, Δτ from the
remaining scalar equation. Symmetric cones use Nesterov–Todd scaling (λ = W z = W⁻ᵀ s,
offset = Wᵀ(λ \\ d_s)), the nonsymmetric ones Dahl and Andersen's primal-dual scaling
(offset = d_s; `cvxlayer.cones.nonsymmetric`). Mehrotra's predictor-corrector
(σ = (1 − α_aff)³, with each family's correction: (W⁻ᵀΔs_aff) ∘ (W Δz_aff), or the
third-order term of f*) uses one factorization per iteration: the zero cone's rows are
equalities (H = 0) and the others are eliminated, M = P + Σ_k (W_k⁻ᵀA_k)ᵀ(W_k⁻ᵀA_k) + δI,
factored by Cholesky (solves go through the explicit L⁻¹), the equalities through the
Schur complement A_eq M⁻¹ A_eqᵀ + δI. The static regularization δ never changes the answer:
each solve is refined against the unregularized system. Everything about one cone family
(its scaling, right-hand sides, step to the boundary) sits in that family's module
(`cvxlayer.cones.nonneg`, `.soc`, `.psd`, `.exp`, `.power`); this engine loops over the
families of the cone and never branches on them. With only symmetric cones it starts from
the KKT solution with H = I shifted into the cones; otherwise, as Clarabel, from x = 0 and
s = z = each cone's central point.

Data are equilibrated first (Ruiz, as the torch mode does) and made dense; the variables
cvxpy lifts (a column whose only nonzero sits in an equality row) are eliminated
(`cvxlayer.elimination`) and restored at the end. Each element stops on its own residuals
(SCS's rule on eps_abs/eps_rel, certificates on eps_infeas) and leaves the batch. It aims
at eps² (an interior point sits inside the cones by O(μ): a gap of eps can move x by ~√eps;
superlinear convergence makes the extra digits cheap), and keeps each element's best
iterate for when rounding stalls the iteration on a degenerate element.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import torch

from cvxlayer.cones import ConeSpec, exp, nonneg, power, psd, soc
from cvxlayer.cones.projections import ConeProjector
from cvxlayer.elimination import eliminated_gradient, one_per, reduced_objective
from cvxlayer.linalg import coo_mv, inf_norm, mv
from cvxlayer.program import ConeProgram, ConeStructure, SparseOps
from cvxlayer.solvers.admm import equilibrate
from cvxlayer.solvers.base import Solution, SolveSettings, Status, floor_tolerance

# the cone families the engine handles, by the projector's family names (the zero cone's
# rows are equalities): each gives its handle (scaling, unit, degree) for a group of cones
FAMILIES = {
    "nonneg": lambda group, like: nonneg,
    "soc": lambda group, like: soc,
    "psd": lambda group, like: psd,
    "exp": exp.interior,
    "power": power.interior,
}
# the constants below are also the compiled engine's (`ipm_compiled` reads them when
# numba compiles it; numba's cache does not notice a change here: clear it, or touch
# ipm_compiled.py, after editing them)
MAX_ITERS = 100
_STEP_FRACTION = 0.99
_INNER_EPS = {torch.float64: 1e-13, torch.float32: 1e-6}  # floors of the inner tolerance
_REG = {torch.float64: 1e-9, torch.float32: 1e-5}
_REFINE = 10
_REFINE_TOL = 1e-10
_DYNAMIC_TRIES = 6
_STALL, _DIVERGED = 5, 1e3
# once within the caller's tolerance, _SLOW_COUNT iterations in a row that each cut the
# merit by less than 1/_SLOW end the solve: rounding has taken over (the exponential and
# power cones' barriers lose digits near their boundary from μ ~ 1e-10 on)
_SLOW, _SLOW_COUNT = 0.5, 2


def supports(cones) -> bool:
    """Whether the engine handles every cone of a `ConeSpec`."""
    return all(g.family in FAMILIES or g.family == "zero" for g in ConeProjector.of(cones).groups)


class _Data:
    """The equilibrated, dense data of the elements still running (batch first)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self.__dict__.update(tensors)

    layout = None  # (keep, cols, other, rows) when lifted variables were eliminated
    sparse = None  # (rows, cols) of A's nonzeros where A is sparse (its values: A_vals)
    _SHARED = ("layout", "sparse")  # the same for every element

    def select(self, keep: torch.Tensor) -> _Data:
        picked = _Data(**{k: v[keep] for k, v in self.__dict__.items() if k not in self._SHARED})
        picked.layout, picked.sparse = self.layout, self.sparse
        return picked

    def Ax(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """A x (B, m): through A's nonzeros where it is sparse (memory-bound products with
        the dense (B, m, n) A dominated the iteration)."""
        if self.sparse is None:
            return mv(self.A, x)
        rows, cols = self.sparse
        return coo_mv(self.A_vals, rows, cols, x, self.A.shape[1])

    def Atz(self, z: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Aᵀ z (B, n)."""
        if self.sparse is None:
            return mv(self.A.transpose(1, 2), z)
        rows, cols = self.sparse
        return coo_mv(self.A_vals, cols, rows, z, self.A.shape[2])


class _Rows:
    """A family's rows of v (B, m) as blocks (B, count, size): a view of one slice where the
    rows are contiguous (cvxpy orders them so), else a gather."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.index, self.shape = rows, tuple(rows.shape)
        flat = rows.reshape(-1)
        first = int(flat[0]) if flat.numel() else 0
        contiguous = bool(
            (flat == torch.arange(first, first + flat.numel(), device=flat.device)).all()
        )
        self.slice = slice(first, first + flat.numel()) if contiguous else None

    def take(self, v: torch.Tensor) -> torch.Tensor:
        """(B, count, size) blocks of v (B, m, …) (a view where contiguous)."""
        if self.slice is None:
            return v[:, self.index]
        return v[:, self.slice].unflatten(1, self.shape)

    def put(self, out: torch.Tensor, blocks: torch.Tensor) -> None:
        """Write blocks (B, count, size) into these rows of out (B, m)."""
        if self.slice is None:
            out[:, self.index] = blocks
        else:
            out[:, self.slice] = blocks.flatten(1)


class _Cones:
    """The rows of each family of K (equality rows apart) and the operations on them."""

    def __init__(self, cones, like: torch.Tensor) -> None:
        self.groups, eq = [], []
        device = like.device
        for group in ConeProjector.of(cones).groups:
            rows = group.rows.to(device)
            if group.family == "zero":
                eq.append(rows.reshape(-1))
            else:
                self.groups.append((FAMILIES[group.family](group, like), _Rows(rows)))
        self.eq = torch.cat(eq) if eq else torch.zeros(0, dtype=torch.long, device=device)
        self.degree = sum(fam.degree(rows.shape[1]) * rows.shape[0] for fam, rows in self.groups)
        self.symmetric = all(fam.symmetric for fam, _ in self.groups)

    def scalings(self, s: torch.Tensor, z: torch.Tensor) -> list:
        return [fam.Scaling(rows.take(s), rows.take(z)) for fam, rows in self.groups]

    def unit(self, like: torch.Tensor) -> torch.Tensor:
        """e (a nonsymmetric cone's central point) on the cone rows, 0 on the equality rows:
        (B, m)."""
        return self.assemble([fam.unit(rows.take(like)) for fam, rows in self.groups], like)

    def assemble(self, blocks: list, like: torch.Tensor) -> torch.Tensor:
        """(B, m) from each family's blocks (0 on the equality rows)."""
        out = torch.zeros_like(like)
        for (_, rows), block in zip(self.groups, blocks):
            rows.put(out, block)
        return out

    def margin(self, v: torch.Tensor) -> torch.Tensor:
        """(B,) the largest t with v − t e ∈ K over every cone (inf without cones)."""
        margins = [fam.margin(rows.take(v)).amin(1) for fam, rows in self.groups]
        if not margins:
            return v.new_full((v.shape[0],), float("inf"))
        return torch.stack(margins).amin(0)


def _apply(cones: _Cones, scalings: list, v: torch.Tensor, op: str) -> torch.Tensor:
    """One operator of the scalings ("WinvT", "H", "Hinv", "offset") on the cone rows of
    v (B, m); the equality rows are left 0."""
    blocks = [getattr(sc, op)(rows.take(v)) for (_, rows), sc in zip(cones.groups, scalings)]
    return cones.assemble(blocks, v)


class _KKT:
    """A factorization of K = [[P, Aᵀ], [A, −H]] (H = WᵀW on cone rows, 0 on equality
    rows), regularized by δ, and solves against the unregularized K (module docstring)."""

    def __init__(self, data: _Data, cones: _Cones, scalings: list, reg: float) -> None:
        self.data, self.cones, self.scalings, self.reg = data, cones, scalings, reg
        A = data.A
        n = A.shape[2]
        M = data.P
        for (_, rows), sc in zip(cones.groups, scalings):
            # W⁻ᵀ applied to each column of the rows' block of A: (B, n, count, size)
            C = sc.WinvT(rows.take(A).permute(0, 3, 1, 2)).flatten(2)  # (B, n, rows)
            M = M + C @ C.transpose(1, 2)
        # regularization: static (δ, and machine precision relative to M's largest entry:
        # near the solution H⁻¹ spans 1/μ to μ), raised ×100 for elements whose Cholesky
        # factorization still breaks down; refinement against the exact K removes its effect
        diag = M.diagonal(dim1=1, dim2=2)
        tiny = torch.finfo(M.dtype).eps * diag.abs().amax(1, keepdim=True)
        shift = reg + tiny
        self.L, info = torch.linalg.cholesky_ex(
            M + shift.unsqueeze(-1) * torch.eye(n, dtype=M.dtype, device=M.device)
        )
        for _ in range(_DYNAMIC_TRIES):
            bad = info != 0
            if not bool(bad.any()):
                break
            shift = torch.where(bad.unsqueeze(1), 100 * shift, shift)
            L, info_bad = torch.linalg.cholesky_ex(
                M[bad] + shift[bad].unsqueeze(-1) * torch.eye(n, dtype=M.dtype, device=M.device)
            )
            self.L[bad], info[bad] = L, info_bad
        self.ok = info == 0
        # M⁻¹ v as two products with the explicit L⁻¹: a batched triangular solve costs as
        # much as ~4 products, and each factor serves ~8 solves (refinement absorbs the
        # inverse's slightly larger rounding)
        eye = torch.eye(n, dtype=M.dtype, device=M.device).expand_as(self.L)
        self.L_inv = torch.linalg.solve_triangular(self.L, eye, upper=False)
        self.A_eq = A[:, cones.eq]
        if self.A_eq.shape[1]:
            self.MinvAt = self._minv(self.A_eq.transpose(1, 2))
            S = self.A_eq @ self.MinvAt
            S.diagonal(dim1=1, dim2=2).add_(reg)
            self.LS, info = torch.linalg.cholesky_ex(S)
            self.ok &= info == 0

    def _minv(self, v: torch.Tensor) -> torch.Tensor:
        """M⁻¹ v for v (B, n, k)."""
        return self.L_inv.transpose(1, 2) @ (self.L_inv @ v)

    def _hinv(self, v: torch.Tensor) -> torch.Tensor:
        """H⁻¹ v on the cone rows (0 on equality rows)."""
        return _apply(self.cones, self.scalings, v, "Hinv")

    def _solve_once(self, r1: torch.Tensor, r2: torch.Tensor):
        eq = self.cones.eq
        hinv_r2 = self._hinv(r2)
        rhs = r1 + self.data.Atz(hinv_r2)
        dx = self._minv(rhs.unsqueeze(-1)).squeeze(-1)
        dz = torch.zeros_like(r2)
        if eq.numel():
            y = (self.A_eq @ dx.unsqueeze(-1)).squeeze(-1) - r2[:, eq]
            y = torch.cholesky_solve(y.unsqueeze(-1), self.LS).squeeze(-1)
            dx = dx - (self.MinvAt @ y.unsqueeze(-1)).squeeze(-1)
            dz[:, eq] = y
        Adx = self.data.Ax(dx)
        return dx, dz + self._hinv(Adx) - hinv_r2

    def solve(self, r1: torch.Tensor, r2: torch.Tensor):
        """(Δx, Δz) with P Δx + AᵀΔz = r1, A Δx − H Δz = r2: a solve with the regularized
        factor, then refinement against the exact K until the residual stops falling (up to
        `_REFINE` steps; near the solution the factor of the reduced system loses digits)."""
        P = self.data.P
        dx, dz = self._solve_once(r1, r2)
        size = torch.maximum(inf_norm(r1), inf_norm(r2)).clamp(min=torch.finfo(r1.dtype).tiny)
        previous = None
        for _ in range(_REFINE):
            h_dz = _apply(self.cones, self.scalings, dz, "H")
            e1 = r1 - mv(P, dx) - self.data.Atz(dz)
            e2 = r2 - self.data.Ax(dx) + h_dz
            error = torch.maximum(inf_norm(e1), inf_norm(e2)) / size
            worst = float(error.max())
            if worst <= _REFINE_TOL or (previous is not None and worst > 0.5 * previous):
                break
            previous = worst
            cx, cz = self._solve_once(e1, e2)
            dx, dz = dx + cx, dz + cz
        return dx, dz


class InteriorPoint:
    """Mode "ipm": the interior point on the input's device: on CPU tensors the compiled
    engine (`ipm_compiled`) where it handles the cones (zero, nonnegative, second-order),
    else the batched torch engine of this module (module docstring), for zero, nonnegative,
    second-order, PSD, exponential and power cones."""

    name = "ipm"
    compiled = True

    def solve(
        self, program: ConeProgram, settings: SolveSettings, warm_start: Solution | None = None
    ) -> Solution:
        cones = program.structure.cones
        if not supports(cones):
            raise NotImplementedError(
                f"mode {self.name!r} handles zero, nonnegative, second-order, PSD, exponential"
                f" and power cones; this program has {cones.describe()}"
            )
        if self.compiled and program.b.device.type == "cpu" and compiled_engine_supports(cones):
            return _compiled_engine().solve(program, settings)
        return _solve(program, settings)


@functools.lru_cache(maxsize=1)
def _compiled_engine():
    """The compiled engine's module, or None (with one warning) where numba cannot load."""
    try:
        from cvxlayer.solvers import ipm_compiled
    except Exception as err:  # numba missing or unusable on this platform
        warnings.warn(
            f"cvxlayer: the compiled CPU interior point is unavailable ({err}); mode 'ipm' "
            "uses the torch engine on the CPU",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    return ipm_compiled


def compiled_engine_supports(cones) -> bool:
    """Whether mode "ipm" runs the compiled engine on CPU tensors of programs with `cones`."""
    compiled = _compiled_engine()
    return compiled is not None and compiled.supports(cones)


class TorchInteriorPoint(InteriorPoint):
    """Mode "ipm-torch": the batched torch engine on any device (the compiled engine's
    reference)."""

    name = "ipm-torch"
    compiled = False


_SPARSE_DENSITY = 0.25  # A's products go through its nonzeros below this fraction


def _prepare(
    program: ConeProgram, normalize: bool, equilibrator=equilibrate
) -> tuple[_Data, ConeSpec]:
    """`_reduce`, then A's nonzero pattern (over the batch) kept for sparse products."""
    data, cones = _reduce(program, normalize, equilibrator)
    pattern = (data.A != 0).any(0)
    if pattern.numel() and float(pattern.float().mean()) <= _SPARSE_DENSITY:
        rows, cols = pattern.nonzero(as_tuple=True)
        data.sparse, data.A_vals = (rows, cols), data.A[:, rows, cols]
    return data, cones


def equilibrated(program: ConeProgram, normalize: bool, equilibrator=equilibrate):
    """(D, E, Â, P̂, b̂, ĉ): the row and column scales (B, m), (B, n) (ones without
    `normalize`) and the program's values scaled by them, Â = D A E and P̂ = E P E on the
    structure's nonzeros (B, nnz) (P̂ None without P), b̂ = D b, ĉ = E c."""
    st, B = program.structure, program.batch_size
    ops = SparseOps.of(st, program.b.device)
    if normalize:
        D, E = equilibrator(program, ops)
    else:
        D, E = program.b.new_ones(B, st.m), program.b.new_ones(B, st.n)
    A_vals = program.A * D[:, ops.a_rows] * E[:, ops.a_cols]
    P_vals = None if program.P is None else program.P * E[:, ops.p_rows] * E[:, ops.p_cols]
    return D, E, A_vals, P_vals, program.b * D, program.c * E


def _reduce(
    program: ConeProgram, normalize: bool, equilibrator=equilibrate
) -> tuple[_Data, ConeSpec]:
    """Equilibrate (`equilibrated`; `equilibrator` gives D, E: `admm.equilibrate` or its
    compiled twin), densify, and eliminate the lifted variables (`_lifted_columns`):
    x_E = T x_K + u, which shrinks dense factorizations. Returns the data of the reduced
    program (with what `_restore` and `_unscale` need) and its cone."""
    st, B = program.structure, program.batch_size
    ops = SparseOps.of(st, program.b.device)
    D, E, A_vals, P_vals, b, c = equilibrated(program, normalize, equilibrator)
    A, P = ops.dense(A_vals, P_vals)
    full = {"D": D, "E": E, "b_full": b, "c_full": c}  # for `_unscale`
    cols, rows, keep, other = _lifted_columns(st)
    a = A[:, rows, cols]
    if cols.size == 0 or not bool((a != 0).all()):  # a zero: none eliminated
        P = A.new_zeros(B, st.n, st.n) if P is None else P
        return _Data(A=A, P=P, b=b, c=c, row_scale=D, col_scale=E, **full), st.cones
    T = -A[:, rows][:, :, keep] / a.unsqueeze(-1)
    u = b[:, rows] / a
    lifted = {"T": T, "u": u, "a": a, "c_E": c[:, cols]}
    if P is not None:
        lifted["P_KE"], lifted["P_EE"] = P[:, keep][:, :, cols], P[:, cols][:, :, cols]
    Q, q = reduced_objective(
        None if P is None else P[:, keep][:, :, keep],
        lifted.get("P_KE"),
        lifted.get("P_EE"),
        c[:, keep],
        lifted["c_E"],
        T,
        u,
    )
    reduced = {"A": A[:, other][:, :, keep], "P": Q, "b": b[:, other], "c": q}
    scales = {"row_scale": D[:, other], "col_scale": E[:, keep]}
    data = _Data(**reduced, **scales, **full, **lifted)
    data.layout = (keep, cols, other, rows)
    return data, replace(st.cones, zero=st.cones.zero - cols.size)


@functools.lru_cache(maxsize=64)
def _lifted_columns(structure: ConeStructure) -> tuple[np.ndarray, ...]:
    """(columns E, rows R, the other columns, the other rows): variables whose only nonzero
    in A sits in an equality row (one per row), e.g. the t = L x that cvxpy introduces for
    sum_squares(L @ x)."""
    rows, cols = structure.a_coords()
    counts = np.bincount(cols, minlength=structure.n)
    entry = one_per(np.flatnonzero((counts[cols] == 1) & (rows < structure.cones.zero)), rows)
    cols, rows = cols[entry].astype(np.int64), rows[entry].astype(np.int64)
    keep = np.setdiff1d(np.arange(structure.n), cols)
    return cols, rows, keep, np.setdiff1d(np.arange(structure.m), rows)


def _restore(data: _Data, x, z, s, tau):
    """The full program's iterate from the reduced one (homogeneous: x_E = T x_K + u τ, and
    z_R from stationarity in x_E, (P x)_E + a z_R + c_E τ = 0; s_R = 0)."""
    if data.layout is None:
        return x, z, s
    keep, cols, other, rows = data.layout
    x_E = mv(data.T, x) + data.u * tau.unsqueeze(1)
    P_KE, P_EE = (getattr(data, key, None) for key in ("P_KE", "P_EE"))
    grad = eliminated_gradient(P_KE, P_EE, data.c_E * tau.unsqueeze(1), x, x_E)
    B, n, m = x.shape[0], keep.size + cols.size, other.size + rows.size
    x_full, z_full, s_full = x.new_empty(B, n), z.new_empty(B, m), s.new_zeros(B, m)
    x_full[:, keep], x_full[:, cols] = x, x_E
    z_full[:, other], z_full[:, rows] = z, -grad / data.a
    s_full[:, other] = s
    return x_full, z_full, s_full


def _start(data: _Data, cones: _Cones, reg: float):
    """(x, z, s, τ, κ): for symmetric cones (Vandenberghe 2010, §5.3) the KKT solution with
    H = I, then s and z shifted into their cones by a multiple of e; with nonsymmetric ones
    (as Clarabel) x = 0 and s = z = each cone's central point."""
    e = cones.unit(data.b)
    ones = data.b.new_ones(data.b.shape[0])
    if not cones.symmetric:
        return torch.zeros_like(data.c), e.clone(), e, ones, ones.clone()
    x, _ = _KKT(data, cones, cones.scalings(e, e), reg).solve(-data.c, data.b)
    s = data.b - data.Ax(x)
    s[:, cones.eq] = 0
    z = -s
    for v in (s, z):
        v += (1 - cones.margin(v)).clamp(min=0).unsqueeze(1) * e
    return x, z, s, ones, ones.clone()


class _Iterate:
    """An iterate (x, z, s, τ, κ) of the running elements, its residuals r_x, r_z, r_τ and
    the measures of SCS's stopping rule on the unscaled (x, z, s)/τ."""

    def __init__(self, data: _Data, x, z, s, tau, kappa) -> None:
        self.x, self.z, self.s, self.tau, self.kappa = x, z, s, tau, kappa
        Px, Ax, Atz = mv(data.P, x), data.Ax(x), data.Atz(z)
        xPx = (x * Px).sum(1)
        self.cx, self.bz = (data.c * x).sum(1), (data.b * z).sum(1)
        t = tau.unsqueeze(1)
        self.r_x = Px + Atz + data.c * t
        self.r_z = Ax + s - data.b * t
        self.r_tau = kappa + self.cx + self.bz + xPx / tau
        Dinv, Einv = 1 / data.row_scale, 1 / data.col_scale
        n = inf_norm
        # (residual, scale) of the primal, dual and gap conditions, all divided by τ
        self.measures = [
            (n(Dinv * self.r_z), torch.stack([n(Dinv * Ax), n(Dinv * s), n(Dinv * data.b * t)])),
            (n(Einv * self.r_x), torch.stack([n(Einv * Px), n(Einv * Atz), n(Einv * data.c * t)])),
            (
                (xPx / tau + self.cx + self.bz).abs(),
                torch.stack([xPx.abs() / tau, self.cx.abs(), self.bz.abs()]),
            ),
        ]
        self.measures = [(r / tau, scale.amax(0) / tau) for r, scale in self.measures]
        self.norm_Atz, self.norm_Px = n(Einv * Atz), n(Einv * Px)
        self.norm_Axs = n(Dinv * (Ax + s))

    def meets(self, eps_abs: float, eps_rel: float) -> torch.Tensor:
        return torch.stack([r <= eps_abs + eps_rel * scale for r, scale in self.measures]).all(0)

    def merit(self) -> torch.Tensor:
        """(B,) the smallest eps with `meets(eps, eps)`."""
        return torch.stack([r / (1 + scale) for r, scale in self.measures]).amax(0)

    def infeasible(self, eps: float) -> torch.Tensor:
        """A certificate of primal infeasibility: bᵀz < 0, ‖Aᵀz‖ ≤ eps · (−bᵀz)."""
        return (self.bz < 0) & (self.norm_Atz <= -eps * self.bz)

    def unbounded(self, eps: float) -> torch.Tensor:
        """A certificate of unboundedness: cᵀx < 0, ‖Ax + s‖, ‖Px‖ ≤ eps · (−cᵀx)."""
        bound = -eps * self.cx
        return (self.cx < 0) & (self.norm_Axs <= bound) & (self.norm_Px <= bound)


class _Step(NamedTuple):
    """A direction, with each family's view of its cone rows (for steps and corrections)."""

    dx: torch.Tensor
    dz: torch.Tensor
    ds: torch.Tensor
    dtau: torch.Tensor
    dkappa: torch.Tensor
    scaled: list


class _Newton:
    """The linearized embedding at an iterate: one factorization, then a direction for any
    right-hand side (d_x, d_z, d_τ, d_s, d_κ) (module docstring)."""

    def __init__(self, data: _Data, cones: _Cones, it: _Iterate, reg: float) -> None:
        self.data, self.cones, self.it = data, cones, it
        self.scalings = cones.scalings(it.s, it.z)
        self.kkt = _KKT(data, cones, self.scalings, reg)
        self.mu = ((it.s * it.z).sum(1) + it.tau * it.kappa) / (cones.degree + 1)
        xi = it.x / it.tau.unsqueeze(1)
        Pxi = mv(data.P, xi)
        self.c2 = data.c + 2 * Pxi  # ∂r_τ/∂x
        self.x1, self.z1 = self.kkt.solve(-data.c, data.b)
        self.denominator = (
            -it.kappa / it.tau
            + (self.c2 * self.x1).sum(1)
            + (data.b * self.z1).sum(1)
            - (xi * Pxi).sum(1)
        )

    def apply(self, v: torch.Tensor, op: str) -> torch.Tensor:
        return _apply(self.cones, self.scalings, v, op)

    def direction(self, d_x, d_z, d_tau, d_s, d_kappa) -> _Step:
        """The direction for the right-hand side (d_x, d_z, d_τ, d_s, d_κ)."""
        it, data = self.it, self.data
        x2, z2 = self.kkt.solve(-d_x, -d_z + self.apply(d_s, "offset"))
        numerator = -d_tau + d_kappa / it.tau - (self.c2 * x2).sum(1) - (data.b * z2).sum(1)
        dtau = numerator / self.denominator
        dx = x2 + dtau.unsqueeze(1) * self.x1
        dz = z2 + dtau.unsqueeze(1) * self.z1
        # Δs from the primal equation A Δx + Δs − bΔτ = −d_z itself rather than from
        # −offset − H Δz, the same in exact arithmetic: near the solution H is badly
        # conditioned and that product would feed its rounding into the primal residual
        ds = -d_z - data.Ax(dx) + data.b * dtau.unsqueeze(1)
        ds[:, self.cones.eq] = 0
        scaled = [
            sc.scaled(rows.take(ds), rows.take(dz))
            for (_, rows), sc in zip(self.cones.groups, self.scalings)
        ]
        dkappa = -(d_kappa + it.kappa * dtau) / it.tau
        return _Step(dx, dz, ds, dtau, dkappa, scaled)

    def max_step(self, step: _Step) -> torch.Tensor:
        """(B,) the largest α ≤ ∞ that keeps s, z, τ, κ in their cones along `step`."""
        alpha = self.it.tau.new_full(self.it.tau.shape, float("inf"))
        for sc, scaled in zip(self.scalings, step.scaled):
            alpha = torch.minimum(alpha, sc.step(scaled).amin(1))
        for v, dv in ((self.it.tau, step.dtau), (self.it.kappa, step.dkappa)):
            alpha = torch.minimum(alpha, torch.where(dv < 0, -v / dv, float("inf")))
        return alpha

    def predictor_corrector(self):
        """Mehrotra's step: the affine direction, then the centered and corrected one."""
        it, cones = self.it, self.cones
        d_s = cones.assemble([sc.affine_ds() for sc in self.scalings], it.s)
        affine = self.direction(it.r_x, it.r_z, it.r_tau, d_s, it.tau * it.kappa)
        sigma = (1 - self.max_step(affine).clamp(max=1)) ** 3
        target = sigma * self.mu
        d_s = cones.assemble(
            [sc.combined_ds(a, target) for sc, a in zip(self.scalings, affine.scaled)], it.s
        )
        d_kappa = it.tau * it.kappa + affine.dtau * affine.dkappa - target
        keep = (1 - sigma).unsqueeze(1)
        step = self.direction(keep * it.r_x, keep * it.r_z, keep[:, 0] * it.r_tau, d_s, d_kappa)
        alpha = (_STEP_FRACTION * self.max_step(step)).clamp(max=1)
        alpha = torch.where(self.kkt.ok, alpha, 0.0)  # a failed factorization: no step
        a = alpha.unsqueeze(1)
        dx, dz, ds, dtau, dkappa = (torch.nan_to_num(t) for t in step[:5])  # no step: 0
        return (
            it.x + a * dx,
            it.z + a * dz,
            it.s + a * ds,
            it.tau + alpha * dtau,
            it.kappa + alpha * dkappa,
        )


def _unscale(data: _Data, x, z, s, tau, code):
    """The program's (x, y, s) from equilibrated iterates of the reduced program: the
    solution (x, z, s)/τ where solved or at max_iters; the certificate, normalized to
    bᵀy = −1 (infeasible: x, s NaN) or cᵀx = −1 (unbounded: y NaN); NaN where the iteration
    failed."""
    x, z, s = _restore(data, x, z, s, tau)
    nan = torch.full_like(tau, float("nan"))
    iterate = torch.where((code == _SOLVED) | (code == _MAX_ITERS), 1 / tau, nan)
    primal = torch.where(code == _UNBOUNDED, -1 / (data.c_full * x).sum(1), iterate).unsqueeze(1)
    dual = torch.where(code == _INFEASIBLE, -1 / (data.b_full * z).sum(1), iterate).unsqueeze(1)
    return data.E * x * primal, data.D * z * dual, s / data.D * primal


_SOLVED, _INFEASIBLE, _UNBOUNDED, _FAILED, _MAX_ITERS = range(5)
_STATUS = (Status.SOLVED, Status.INFEASIBLE, Status.UNBOUNDED, Status.FAILURE, Status.MAX_ITERS)


def _solve(program: ConeProgram, settings: SolveSettings) -> Solution:
    st, B = program.structure, program.batch_size
    dtype, device = program.b.dtype, program.b.device
    eps_abs = floor_tolerance(settings.eps_abs, dtype)
    eps_rel = floor_tolerance(settings.eps_rel, dtype)
    eps_inf = floor_tolerance(settings.eps_infeas, dtype)
    # the interior point is inside the cones by O(μ): a gap of eps moves x by up to ~√eps,
    # so the iteration aims at eps² (a few more of its superlinear steps) for solutions as
    # accurate as a projection method's at eps
    inner_abs, inner_rel = (max(eps * eps, _INNER_EPS[dtype]) for eps in (eps_abs, eps_rel))
    max_iters = min(settings.max_iters, MAX_ITERS)
    data, cone_spec = _prepare(program, settings.normalize)
    cones = _Cones(cone_spec, data.b)
    reg = _REG[dtype]
    state = _start(data, cones, reg)

    out = [data.b.new_full((B, size), float("nan")) for size in (st.n, st.m, st.m)]
    codes = torch.full((B,), _FAILED, dtype=torch.long)
    iterations = torch.full((B,), max_iters, dtype=torch.long)
    index = torch.arange(B, device=device)
    # each element's best iterate (x, z, s, τ) within the caller's tolerance: where rounding
    # stalls the iteration on the way to the tighter inner one, the element ends there
    best = [t.clone() for t in state[:4]]
    best_merit = data.b.new_full((B,), float("inf"))
    best_k = torch.zeros(B, dtype=torch.long, device=device)
    previous = data.b.new_full((B,), float("inf"))
    slow = torch.zeros(B, dtype=torch.long, device=device)
    ok = torch.ones(B, dtype=torch.bool, device=device)
    for k in range(max_iters + 1):
        it = _Iterate(data, *state)
        merit = it.merit()
        finite = torch.isfinite(merit) & ok
        done = it.meets(inner_abs, inner_rel) & finite
        infeasible = it.infeasible(eps_inf) & finite & ~done
        unbounded = it.unbounded(eps_inf) & finite & ~done & ~infeasible
        better = finite & (merit < best_merit)
        for t_best, t in zip(best, state):
            t_best[better] = t[better]
        best_merit = torch.where(better, merit, best_merit)
        best_k = torch.where(better, k, best_k)
        slow = torch.where(merit > _SLOW * previous, slow + 1, 0)
        previous = merit
        # broken down, far worse than before, or (once within the caller's tolerance) no
        # progress for a while: back to the best iterate, which is solved if it meets the
        # caller's tolerance (max_iters otherwise)
        good_enough = best_merit <= min(eps_abs, eps_rel)
        stalled = torch.isfinite(best_merit) & ~done & ~infeasible & ~unbounded
        stalled &= (
            ~finite
            | (merit > _DIVERGED * best_merit)
            | (good_enough & ((k - best_k >= _STALL) | (slow >= _SLOW_COUNT)))
            | (k == max_iters)
        )
        stop = done | stalled | infeasible | unbounded | ~finite | (k == max_iters)
        if settings.verbose:
            (rp, _), (rd, _), (gap, _) = it.measures
            print(
                f"[ipm] iter {k:2d}: {len(index):4d} running, max res_pri "
                f"{rp.max().item():.2e}, res_dual {rd.max().item():.2e}, gap {gap.max().item():.2e}"
            )
        if bool(stop.any()):
            code = torch.full_like(index, _MAX_ITERS)
            code = torch.where(~finite, _FAILED, code)
            code = torch.where(unbounded, _UNBOUNDED, code)
            code = torch.where(infeasible, _INFEASIBLE, code)
            code = torch.where(stalled, _MAX_ITERS, code)
            code = torch.where(
                done | (stalled & (best_merit <= min(eps_abs, eps_rel))), _SOLVED, code
            )
            code = code[stop]
            picked = [
                torch.where(stalled.view(-1, *[1] * (t.dim() - 1)), t_best, t)[stop]
                for t, t_best in zip(state, best)
            ]
            rows = index[stop]
            for t_out, value in zip(out, _unscale(data.select(stop), *picked, code)):
                t_out[rows] = value
            codes[rows.cpu()] = code.cpu()
            iterations[rows.cpu()] = k
            keep = ~stop
            if not bool(keep.any()):
                break
            index, data = index[keep], data.select(keep)
            state = tuple(t[keep] for t in state)
            best = [t[keep] for t in best]
            best_merit, best_k = best_merit[keep], best_k[keep]
            previous, slow = previous[keep], slow[keep]
            it = _Iterate(data, *state)
        newton = _Newton(data, cones, it, reg)
        ok = newton.kkt.ok
        state = newton.predictor_corrector()
    status = tuple(_STATUS[c] for c in codes.tolist())
    return Solution(*out, status, iterations)
