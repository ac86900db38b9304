"""QP fast path (thesis ch. 3, OptNet): QPs solved per element by a dual active set
(`active_set.py`, small dense QPs on CPU tensors) or by the project's interior point, and
differentiated through the KKT system at the solution.

For each batch element

    minimize  ½ zᵀQz + qᵀz   subject to  Az = b,  Gz + s = h,  s ≥ 0,

with Q ⪰ 0 (B, n, n), G (B, m, n), A (B, p, n). The interior point is `cvxlayer.solvers.ipm`
on the QP's cone program (zero rows A, orthant rows G; `interior_point`): compiled per
element on CPU tensors, batched in torch on CUDA, one engine per device for the whole
project. Its solutions are polished: each element is moved to the exact solution of its
identified active set where that passes the stopping rule (`_polish`); its derivative is
then the active set's (λ/s → ∞ on active rows, 0 on the others). Elements it certifies
infeasible or unbounded, or leaves unsolved, the layer re-solves with the generic cone
solver, which classifies them.

Backward (OptNet's differentials, thesis eq. 3.6-3.8): with the KKT residual F(z, λ, ν; θ)
= (Qz + q + Gᵀλ + Aᵀν, diag(λ)(Gz − h), Az − b) = 0, the vector-Jacobian product of the
solution is −dᵀ ∂F/∂θ where Jᵀd = (g_z, g_λ, g_ν). After scaling d_λ by λ the system is
the interior point's reduced KKT matrix at the solution,

    K(d) = [H  Aᵀ; A  −δI],   H = Q + Gᵀ diag(d) G + δI,   d = λ / s,

(`KKTFactor`: Cholesky of H, then of the Schur complement A H⁻¹ Aᵀ + δI; δ a tiny static
regularization that refinement removes, `_refined_solve`):

    [H Aᵀ; A −δI] [d_z; d_ν] = [g_z + Gᵀ diag(λ/s) g_λ; g_ν],   d̃_λ = (λ/s)(G d_z − g_λ),
    ∇Q = −½(d_z zᵀ + z d_zᵀ),  ∇q = −d_z,  ∇G = −(λ d_zᵀ + d̃_λ zᵀ),  ∇h = d̃_λ,
    ∇A = −(ν d_zᵀ + d_ν zᵀ),   ∇b = d_ν.

On CPU tensors the same system is solved per element (active sets by one batched LU, the
others by the compiled engine's kernel: `_adjoint_solve`).
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from cvxlayer.cones.spec import ConeSpec
from cvxlayer.errors import SolverError
from cvxlayer.fastpaths import active_set
from cvxlayer.fastpaths.batching import broadcast_batch
from cvxlayer.linalg import coo_mv, inf_norm, mtv, mv
from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import SolveSettings, Status, floor_tolerance
from cvxlayer.solvers.elementwise import as_array, as_tensor, for_each

# IPMs converge in tens of iterations; more means an infeasible or ill-posed element.
MAX_ITERS = 50
# method="auto": the dual active set on CPU tensors up to this many variables (measured:
# docs/benchmarks.md, "QPs on a dual active set")
ACTIVE_SET_MAX_N = 1000
_REG = {torch.float64: 1e-10, torch.float32: 1e-6}
# λ/s grows like 1/μ on active constraints; the backward's factorization clips it here
_D_MAX = {torch.float64: 1e12, torch.float32: 1e6}
# weights of active (and, inverted, inactive) rows in the polishing factorization: large
# enough for refinement to converge fast, small enough to keep H's conditioning moderate
_D_POLISH = {torch.float64: 1e8, torch.float32: 1e3}
_REFINE_STEPS = 3
# the backward solves the active sets' KKT systems (size n + p + the rows that are not
# bounds) by one batched LU up to this size (measured: ~5 µs an element at 20, 70 at 100,
# 270 at 150, where the compiled engine per element costs less), and accepts a solution
# whose residual is below this fraction of the right-hand side's scale
_BATCHED_KKT_MAX, _KKT_RESIDUAL = 120, 1e-11


@dataclass(frozen=True, eq=False)
class GPattern:
    """The structural nonzeros of a sparse G, for products that skip its zeros.

    Attributes:
        rows, cols: (nnz,) positions; pair_a, pair_b: all pairs of nonzeros that share a row
            (the terms of GᵀDG).
    """

    rows: np.ndarray
    cols: np.ndarray
    pair_a: np.ndarray
    pair_b: np.ndarray

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> GPattern | None:
        """The pattern of a (m, n) mask, or None when dense products are cheaper."""
        m, n = mask.shape
        rows, cols = np.nonzero(mask)
        counts = np.bincount(rows, minlength=m)
        if rows.size > m * n / 4 or int((counts**2).sum()) > m * n * n / 8:
            return None
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pair_a, pair_b = [], []
        for start, count in zip(starts, counts):
            idx = np.arange(start, start + count)
            a, b = np.meshgrid(idx, idx, indexing="ij")
            pair_a.append(a.ravel())
            pair_b.append(b.ravel())
        cat = np.concatenate
        return cls(
            rows, cols, cat(pair_a or [[]]).astype(np.int64), cat(pair_b or [[]]).astype(np.int64)
        )


@dataclass(frozen=True, eq=False)
class QPData:
    """Dense batched QP data (see the module docstring); m or p may be 0. With `G_pattern`,
    products with G touch only its structural nonzeros."""

    Q: torch.Tensor  # (B, n, n) symmetric PSD
    q: torch.Tensor  # (B, n)
    G: torch.Tensor  # (B, m, n)
    h: torch.Tensor  # (B, m)
    A: torch.Tensor  # (B, p, n)
    b: torch.Tensor  # (B, p)
    G_pattern: GPattern | None = None

    def arrays(self) -> QPData:
        """The data as C-contiguous float64 numpy arrays (dense G), for per-element work."""
        return QPData(*(as_array(t) for t in (self.Q, self.q, self.G, self.h, self.A, self.b)))


def _select(obj, keep: torch.Tensor):
    """A shallow copy of `obj` with every tensor attribute indexed by `keep` (batch rows)."""
    new = copy.copy(obj)
    for key, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            object.__setattr__(new, key, value[keep])
    return new


def _g_entries(qp: QPData):
    pat = qp.G_pattern
    r, c = (torch.as_tensor(a, device=qp.G.device) for a in (pat.rows, pat.cols))
    return r, c, qp.G[:, r, c]


def g_mv(qp: QPData, v: torch.Tensor) -> torch.Tensor:
    """G v: (B, n) → (B, m)."""
    if qp.G_pattern is None:
        return mv(qp.G, v)
    r, c, vals = _g_entries(qp)
    return coo_mv(vals, r, c, v, qp.G.shape[1])


def g_mtv(qp: QPData, w: torch.Tensor) -> torch.Tensor:
    """Gᵀ w: (B, m) → (B, n)."""
    if qp.G_pattern is None:
        return mtv(qp.G, w)
    r, c, vals = _g_entries(qp)
    return coo_mv(vals, c, r, w, qp.G.shape[2])


def gtdg(qp: QPData, d: torch.Tensor, plus: torch.Tensor | None = None) -> torch.Tensor:
    """Gᵀ diag(d) G (+ `plus`, (B, n, n), fused into the product where G is dense):
    (B, m) → (B, n, n)."""
    if qp.G_pattern is None:
        if plus is None:
            return qp.G.transpose(1, 2) @ (d.unsqueeze(-1) * qp.G)
        return torch.baddbmm(plus, qp.G.transpose(1, 2), d.unsqueeze(-1) * qp.G)
    r, c, vals = _g_entries(qp)
    dev = qp.G.device
    a, b = (torch.as_tensor(x, device=dev) for x in (qp.G_pattern.pair_a, qp.G_pattern.pair_b))
    n = qp.G.shape[2]
    terms = d[:, r[a]] * vals[:, a] * vals[:, b]
    H = vals.new_zeros(d.shape[0], n * n).index_add_(1, c[a] * n + c[b], terms)
    return H.view(-1, n, n) if plus is None else plus + H.view(-1, n, n)


class KKTFactor:
    """Factorization of K(d) = [H Aᵀ; A −δI], H = Q + Gᵀdiag(d)G + δI, for a batch.

    `ok` (B,) is False where a Cholesky factorization broke down (the element's numbers are
    then meaningless and it must be reported as failed).
    """

    def __init__(self, qp: QPData, d: torch.Tensor) -> None:
        """d: (B, m) positive weights (λ/s)."""
        reg = _REG[qp.Q.dtype]
        p = qp.A.shape[1]
        H = gtdg(qp, d, plus=qp.Q)
        H.diagonal(dim1=1, dim2=2).add_(reg)
        self.d = d
        self.L, info = torch.linalg.cholesky_ex(H)
        self.ok = info == 0
        self.A = qp.A
        if p:
            self.HinvAt = torch.cholesky_solve(qp.A.transpose(1, 2), self.L)  # (B, n, p)
            S = qp.A @ self.HinvAt
            S = S + reg * torch.eye(p, dtype=S.dtype, device=S.device)
            self.LS, info_s = torch.linalg.cholesky_ex(S)
            self.ok = self.ok & (info_s == 0)

    def solve(self, rx: torch.Tensor, rp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x (B, n), y (B, p)) with H x + Aᵀ y = rx,  A x − δ y = rp."""
        x = torch.cholesky_solve(rx.unsqueeze(-1), self.L).squeeze(-1)
        if rp.shape[1] == 0:
            return x, rp
        y = torch.cholesky_solve((mv(self.A, x) - rp).unsqueeze(-1), self.LS).squeeze(-1)
        return x - mv(self.HinvAt, y), y


@dataclass(frozen=True, eq=False)
class AdjointSystem:
    """The linearized KKT system at a solution, [Q Gᵀ Aᵀ; G −diag(w_scale) 0; A 0 0], with
    the multipliers of rows outside `free` fixed at 0, and a factorization that solves it
    approximately (used with iterative refinement).

    At an interior point w_scale = s/λ and every row is free; at a polished solution the
    active rows have w_scale = 0 and the inactive ones are not free.
    """

    kkt: KKTFactor | None  # None: not factored (the compiled backward needs no factor)
    w_scale: torch.Tensor  # (B, m)
    free: torch.Tensor  # (B, m) bool

    def select(self, keep: torch.Tensor) -> AdjointSystem:
        kkt = None if self.kkt is None else _select(self.kkt, keep)
        return AdjointSystem(kkt, self.w_scale[keep], self.free[keep])

    def factored(self, qp: QPData) -> AdjointSystem:
        """This system with its factorization: weights 1/w_scale on free rows (δ where
        w_scale = 0, an active row) and 1/δ on the others."""
        if self.kkt is not None:
            return self
        big = torch.tensor(_D_POLISH[qp.Q.dtype], dtype=qp.Q.dtype, device=qp.Q.device)
        weight = torch.where(self.w_scale > 0, 1.0 / self.w_scale, big)
        d = torch.where(self.free, weight, 1.0 / big)
        return AdjointSystem(KKTFactor(qp, d), self.w_scale, self.free)

    @staticmethod
    def assemble(parts: list[tuple[torch.Tensor, AdjointSystem]]) -> AdjointSystem:
        """One system for the batch from systems of disjoint sets of its rows (not factored
        if one of them is not)."""
        if len(parts) == 1:  # one set: the whole batch, in order
            return parts[0][1]
        rows = torch.cat([r for r, _ in parts])
        order = torch.argsort(rows)

        def cat(values):
            return torch.cat(values)[order]

        kkt = None
        if all(p.kkt is not None for _, p in parts):
            kkt = copy.copy(parts[0][1].kkt)
            for key, value in vars(kkt).items():
                if isinstance(value, torch.Tensor):
                    setattr(kkt, key, cat([getattr(p.kkt, key) for _, p in parts]))
        return AdjointSystem(
            kkt, cat([p.w_scale for _, p in parts]), cat([p.free for _, p in parts])
        )


@dataclass(frozen=True, eq=False)
class PDIPMResult:
    """Primal-dual solution of a batch, with the KKT system at it for the backward."""

    z: torch.Tensor  # (B, n)
    s: torch.Tensor  # (B, m)
    lam: torch.Tensor  # (B, m)
    nu: torch.Tensor  # (B, p)
    status: tuple[Status, ...]
    iterations: torch.Tensor  # (B,)
    system: AdjointSystem
    arrays: QPData | None = None  # the data as float64 arrays, where the active set ran
    ldp: object | None = None  # the active set's `LeastDistance` factors, where formed


class _Iterate:
    """z, s, λ, ν of the running elements and their KKT residuals (the active set's
    solutions are checked by the compiled twin of this rule, `active_set_kernels.converged`,
    where a small batch costs a tenth of the torch operations' dispatch)."""

    def __init__(self, qp: QPData, z, s, lam, nu) -> None:
        self.z, self.s, self.lam, self.nu = z, s, lam, nu
        self.Qz = mv(qp.Q, z)
        self.Gz = g_mv(qp, z)
        self.Az = mv(qp.A, z)
        self.Gt_lam = g_mtv(qp, lam)
        self.At_nu = mtv(qp.A, nu)
        self.r_dual = self.Qz + qp.q + self.Gt_lam + self.At_nu
        self.r_ineq = self.Gz + s - qp.h
        self.r_eq = self.Az - qp.b
        self.gap = (s * lam).sum(1)

    def converged(self, qp: QPData, eps_abs: float, eps_rel: float) -> torch.Tensor:
        """(B,) SCS's stopping rule on the primal and dual residuals and the gap sᵀλ:
        each at most eps_abs + eps_rel · (its scale)."""
        (res_pri, scale_pri), (res_dual, scale_dual), (gap, scale_gap) = self._measures(qp)
        return (
            (res_pri <= eps_abs + eps_rel * scale_pri)
            & (res_dual <= eps_abs + eps_rel * scale_dual)
            & (gap <= eps_abs + eps_rel * scale_gap)
        )

    def _measures(self, qp: QPData):
        """(residual, scale) of the primal, dual and gap conditions, each (B,)."""
        n = inf_norm

        def largest(*parts):
            return torch.stack(parts).amax(0)

        res_pri = torch.maximum(n(self.r_ineq), n(self.r_eq))
        scale_pri = largest(n(self.Gz), n(self.s), n(qp.h), n(self.Az), n(qp.b))
        scale_dual = largest(n(self.Qz), n(self.Gt_lam), n(self.At_nu), n(qp.q))
        zQz = (self.z * self.Qz).sum(1)
        qz = (qp.q * self.z).sum(1)
        dual_obj = (qp.h * self.lam).sum(1) + (qp.b * self.nu).sum(1)
        scale_gap = largest(abs(zQz), abs(qz), abs(dual_obj))
        return (res_pri, scale_pri), (n(self.r_dual), scale_dual), (self.gap, scale_gap)


@functools.lru_cache(maxsize=32)
def _cone_structure(n: int, m: int, p: int, G_pattern: GPattern | None):
    """The cone program of QPs of this shape: min ½zᵀQz + qᵀz s.t. [A; G] z + s = [b; h],
    s ∈ {0}ᵖ × ℝ₊ᵐ, with A dense, G dense or on `G_pattern`, and Q's upper triangle. Returns
    its `ConeStructure` and the (row, column) places of its A values in [A; G] and of its P
    values in Q (CSC order)."""
    mask = np.ones((p + m, n), dtype=bool)
    if G_pattern is not None:
        mask[p:] = False
        mask[p + G_pattern.rows, G_pattern.cols] = True
    a, q = (sp.csc_matrix(t) for t in (mask, np.triu(np.ones((n, n), dtype=bool))))
    a_indices, a_indptr, q_indices, q_indptr = (
        t.astype(np.int64) for t in (a.indices, a.indptr, q.indices, q.indptr)
    )
    structure = ConeStructure(
        n, p + m, ConeSpec(zero=p, nonneg=m), a_indices, a_indptr, q_indices, q_indptr
    )
    return structure, structure.a_coords(), structure.p_coords()


def interior_point(
    qp: QPData,
    eps_abs: float = 1e-8,
    eps_rel: float = 1e-8,
    max_iters: int = MAX_ITERS,
    verbose: bool = False,
) -> PDIPMResult:
    """Solve a batch of QPs by the project's interior point (`cvxlayer.solvers.ipm`: the
    compiled engine per element on CPU tensors, the batched torch engine on CUDA) on their
    cone program (`_cone_structure`), then snap each solved element to the exact solution
    of its active set (`_polish`). No autograd.

    Returns:
        The solution, per-element status (infeasible and unbounded elements are certified)
        and iterations, and the KKT system at the solution (for `qp_vjp`).
    """
    from cvxlayer.solvers.ipm import InteriorPoint

    eps_abs, eps_rel = floor_tolerance(eps_abs, qp.Q.dtype), floor_tolerance(eps_rel, qp.Q.dtype)
    (B, m), p, n = qp.h.shape, qp.b.shape[1], qp.q.shape[1]
    if m == 0:  # equalities only: one KKT solve (`_polish` with no row active)
        *solution, ok, system = _polish(
            qp, qp.h.new_zeros(B, 0, dtype=torch.bool), eps_abs, eps_rel
        )
        if bool(ok.all()):
            ones = torch.ones(B, dtype=torch.long)
            return PDIPMResult(*solution, (Status.SOLVED,) * B, ones, system)
    structure, (a_rows, a_cols), (p_rows, p_cols) = _cone_structure(n, m, p, qp.G_pattern)
    rows = torch.cat([qp.A, qp.G], 1)
    program = ConeProgram(
        structure, rows[:, a_rows, a_cols], torch.cat([qp.b, qp.h], 1), qp.q,
        qp.Q[:, p_rows, p_cols],
    )  # fmt: skip
    settings = SolveSettings(eps_abs=eps_abs, eps_rel=eps_rel, max_iters=max_iters, verbose=verbose)
    sol = InteriorPoint().solve(program, settings)
    z, nu, lam, s = sol.x, sol.y[:, :p], sol.y[:, p:], sol.s[:, p:]
    # an unsolved element's iterate (a certificate: NaN) is reported, not used: it becomes
    # a harmless point, so that no NaN reaches the computations (and their gradients)
    # downstream of the solve, which the caller re-solves another way
    solved = torch.tensor([st.ok for st in sol.status], device=z.device)
    keep = solved.unsqueeze(1)
    z, nu = (torch.where(keep, t, 0.0) for t in (z, nu))
    s, lam = (torch.where(keep, t, 1.0) for t in (s, lam))
    polished = []  # (rows, their active-set system)
    sub = solved.nonzero().flatten()
    if m and len(sub):
        *pol, ok, system = _polish(_select(qp, sub), lam[sub] > s[sub], eps_abs, eps_rel)
        for t, p_t in zip((z, s, lam, nu), pol):
            t[sub[ok]] = p_t[ok]
        if bool(ok.any()):
            polished.append((sub[ok], system.select(ok)))
    system = _adjoint_system(qp, s, lam, polished)
    failed = (solved & ~system.kkt.ok).cpu().tolist()  # solved, but no factor for the backward
    status = tuple(Status.FAILURE if f else st for f, st in zip(failed, sol.status))
    return PDIPMResult(z, s, lam, nu, status, sol.iterations, system)


def _active_set_applies(qp: QPData) -> bool:
    """`method="auto"`: the active set on CPU tensors up to `ACTIVE_SET_MAX_N` variables."""
    return qp.Q.device.type == "cpu" and qp.Q.shape[-1] <= ACTIVE_SET_MAX_N


def solve_batch(
    qp: QPData,
    eps_abs: float = 1e-8,
    eps_rel: float = 1e-8,
    max_iters: int = MAX_ITERS,
    verbose: bool = False,
    method: str = "auto",
    start: torch.Tensor | None = None,
) -> PDIPMResult:
    """Solve a batch of QPs by the dual active set (`active_set.py`), the interior point
    (`interior_point`), or, with "auto", the active set where it is measured faster
    (`_active_set_applies`). Elements the active set does not solve, or whose solution
    misses the stopping rule, are solved by the interior point (which then reports
    infeasible or difficult elements as it does alone). `start` (B, n): a guess of z that
    starts the active set's working set (warm start; the interior point ignores it)."""
    if method not in ("auto", "active_set", "ipm"):
        raise ValueError(f"unknown QP method {method!r}; use 'auto', 'active_set' or 'ipm'")
    if method == "ipm" or (method == "auto" and not _active_set_applies(qp)):
        return interior_point(qp, eps_abs, eps_rel, max_iters, verbose)
    eps_abs, eps_rel = floor_tolerance(eps_abs, qp.Q.dtype), floor_tolerance(eps_rel, qp.Q.dtype)
    a = qp.arrays()
    B, device = qp.q.shape[0], qp.Q.device
    guess = None if start is None else as_array(start)
    z, lam, nu, solved, iterations, ldp = active_set.solve_each(
        a.Q, a.q, a.G, a.h, a.A, a.b, min(eps_abs, eps_rel), start=guess,
        factor=not _torch_backward(qp),
    )  # fmt: skip
    from cvxlayer.fastpaths import active_set_kernels

    workers = active_set.element_workers(a.G.shape[2], a.G.shape[1], a.A.shape[1])
    s, converged = active_set_kernels.converged(
        a.Q, a.q, a.G, a.h, a.A, a.b, (z, lam, nu), eps_abs, eps_rel, workers
    )
    solved &= converged
    if verbose:
        print(f"[qp] active set: {int(solved.sum())} of {B} solved, iterations {iterations}")
    active = torch.as_tensor(lam > 0, device=device)
    z, s, lam, nu = (as_tensor(t, qp.Q) for t in (z, s, lam, nu))
    ok, rest = np.flatnonzero(solved), np.flatnonzero(~solved)
    parts = []
    if ok.size:
        part = qp
        if ok.size < B:
            ok = torch.as_tensor(ok, device=device)
            part, active = _select(qp, ok), active[ok]
        parts.append((ok, active_set_system(part, active, _torch_backward(qp))))
    status = [Status.SOLVED] * B
    iterations = torch.as_tensor(iterations)
    if rest.size:
        rest = torch.as_tensor(rest, device=device)
        ipm = interior_point(_select(qp, rest), eps_abs, eps_rel, max_iters, verbose)
        for t, t_ipm in zip((z, s, lam, nu), (ipm.z, ipm.s, ipm.lam, ipm.nu)):
            t[rest] = t_ipm
        for i, st in zip(rest.tolist(), ipm.status):
            status[i] = st
        iterations[rest.cpu()] = ipm.iterations
        parts.append((rest, ipm.system))
    system = AdjointSystem.assemble(parts)
    return PDIPMResult(z, s, lam, nu, tuple(status), iterations, system, a, ldp)


def _polish(qp: QPData, active: torch.Tensor, eps_abs: float, eps_rel: float):
    """The exact solution of each element's active set (as OSQP polishes).

    An interior point stops at μ > 0, off the solution by O(μ) and with a derivative that
    keeps O(μ/s²) of each inactive constraint. With the active set (B, m) bool guessed from
    its solution (λ > s), the equality-constrained QP (G_i z = h_i on active rows, λ_i = 0
    on the others) is solved by iterative refinement preconditioned with the KKT factor of
    weights 1/δ and δ.

    Returns:
        (z, s, λ, ν) polished, (B,) whether the polished point passes the stopping rule (a
        wrong active set fails it), and the active set's system (kept for the backward).
    """
    system = active_set_system(qp, active)
    z_p, lam_p, nu_p = _refined_solve(qp, system, -qp.q, qp.h, qp.b)
    s_p = (qp.h - g_mv(qp, z_p)).clamp(min=0)
    lam_p = lam_p.clamp(min=0)
    converged = _Iterate(qp, z_p, s_p, lam_p, nu_p).converged(qp, eps_abs, eps_rel)
    return z_p, s_p, lam_p, nu_p, converged & system.kkt.ok, system


def active_set_system(qp: QPData, active: torch.Tensor, factor: bool = True) -> AdjointSystem:
    """The KKT system of an active set, active (B, m) bool: G_i z = h_i on active rows,
    λ_i = 0 on the others; factored (if `factor`) with weights δ and 1/δ standing for the
    two."""
    system = AdjointSystem(None, torch.zeros_like(qp.h), active)
    return system.factored(qp) if factor else system


def _adjoint_system(qp: QPData, s, lam, polished) -> AdjointSystem:
    """The system of the backward: the active set's for polished elements (factored when
    they were polished), the interior point's (weights λ/s, factored here) for the others."""
    parts = list(polished)
    rest = torch.ones(s.shape[0], dtype=torch.bool, device=s.device)
    for rows, _ in parts:
        rest[rows] = False
    if bool(rest.any()):
        idx = rest.nonzero().flatten()
        d = (lam[idx] / s[idx]).clamp(max=_D_MAX[qp.Q.dtype]) if s.shape[1] else lam[idx]
        ipm = AdjointSystem(
            KKTFactor(_select(qp, idx), d), 1.0 / d, torch.ones_like(d, dtype=torch.bool)
        )
        parts.append((idx, ipm))
    return AdjointSystem.assemble(parts)


def _refined_solve(qp: QPData, system: AdjointSystem, r_z, r_lam, r_nu):
    """(x, w, v) with [Q Gᵀ Aᵀ; G −diag(w_scale) 0; A 0 0] (x, w, v) = (r_z, r_λ, r_ν) and
    w = 0 outside `system.free`.

    Each step solves with the reduced factorization (w = d (G x − r_λ)); the factor's
    weights d only approximate the system (rounding when d spans 1/μ to μ, or the weights
    1/δ, δ that stand for active and inactive rows), so a few steps of iterative refinement
    on the exact system, whose residual is computed accurately, recover the lost digits."""
    kkt, free = system.kkt, system.free
    d = kkt.d

    def step(a, b, c):
        b = torch.where(free, b, 0.0)  # rows with w = 0 have no equation of their own
        x, v = kkt.solve(a + g_mtv(qp, d * b), c)
        return x, torch.where(free, d * (g_mv(qp, x) - b), 0.0), v

    x, w, v = step(r_z, r_lam, r_nu)
    for _ in range(_REFINE_STEPS):
        e = step(
            r_z - (mv(qp.Q, x) + g_mtv(qp, w) + mtv(qp.A, v)),
            r_lam - (g_mv(qp, x) - system.w_scale * w),
            r_nu - mv(qp.A, x),
        )
        x, w, v = x + e[0], w + e[1], v + e[2]
    return x, w, v


def qp_vjp(
    qp: QPData,
    sol: PDIPMResult,
    g_z,
    g_lam,
    g_nu,
    needed: tuple[bool, ...] = (True,) * 6,
    gram: tuple = (None, None),
    gram_needed: tuple[bool, bool] = (False, False),
) -> tuple[torch.Tensor | None, ...]:
    """Gradients (∇Q, ∇q, ∇G, ∇h, ∇A, ∇b, ∇T, ∇p) of ⟨g, (z, λ, ν)⟩ by OptNet's
    differentials, from the factorization at the solution (module docstring); None for
    those not `needed`. With Q = Q₀ + Tᵀ diag(p) T (`gram`), ∇Q = −½(d_z zᵀ + z d_zᵀ) has
    rank two, so ∇T = 2 diag(p) T ∇Q = −diag(p)((T d_z) zᵀ + (T z) d_zᵀ) and
    ∇p = −(T d_z)∘(T z), without forming ∇Q."""
    z, lam, nu = sol.z, sol.lam, sol.nu
    d_z, d_lam, d_nu = _adjoint_solve(qp, sol.system, g_z, g_lam, g_nu, sol.arrays, sol.ldp)

    def outer(a, b, c, d):  # a bᵀ + c dᵀ, written once (one batched product of rank two)
        return torch.stack([a, c], -1) @ torch.stack([b, d], 1)

    grad_Q = -0.5 * outer(d_z, z, z, d_z) if needed[0] else None
    grad_G = -outer(lam, d_z, d_lam, z) if needed[2] else None
    grad_A = -outer(nu, d_z, d_nu, z) if needed[4] else None
    grad_T = grad_p = None
    T, p = gram
    if T is not None and any(gram_needed):
        T_dz, T_z = mv(T, d_z), mv(T, z)
        if gram_needed[0]:
            grad_T = -p.unsqueeze(-1) * outer(T_dz, z, T_z, d_z)
        if gram_needed[1]:
            grad_p = -T_dz * T_z
    return grad_Q, -d_z, grad_G, d_lam, grad_A, d_nu, grad_T, grad_p


def _torch_backward(qp: QPData) -> bool:
    """Whether the backward solves with the torch factorization (CUDA tensors, or no
    compiled engine), so that the active set's system is factored in the forward."""
    from cvxlayer.solvers import ipm

    return qp.Q.device.type != "cpu" or ipm._compiled_engine() is None


def _adjoint_solve(qp: QPData, system: AdjointSystem, g_z, g_lam, g_nu, arrays=None, ldp=None):
    """(x, w, v) of `_refined_solve`'s system. On CPU tensors: active sets' systems (no row
    with w_scale > 0) through the forward's least-distance factors where it formed them
    (`ldp`, `active_set_kernels`), else of up to `_BATCHED_KKT_MAX` rows by one batched LU
    (`_active_set_kkt`), the others, and those both reject, per element by the compiled
    interior point's kernel (`ipm_compiled.adjoint_one`); on CUDA batched with the torch
    factorization. In the kernel's system the rows of A and the active rows of G (free,
    w_scale = 0) are equalities, the free rows with w_scale > 0 (an interior point's) one-row
    cones with H = w_scale, and the rows outside `free` are left out (w = 0): the active
    set's KKT system exactly. (With H = 1e-8 standing for the active rows and 1e8 for the
    dropped ones, the gradients of box-constrained LQR as a QP were up to 1.4e-4 off,
    relative, where the multipliers are large: `tests/test_active_set.py`.) `arrays`: the
    data as float64 arrays if the forward made them."""
    from cvxlayer.solvers import ipm

    if _torch_backward(qp):
        return _refined_solve(qp, system.factored(qp), g_z, g_lam, g_nu)
    engine = ipm._compiled_engine()
    B, m, p = qp.h.shape[0], qp.h.shape[1], qp.b.shape[1]
    if arrays is None:
        arrays = qp.arrays()
    Q, A, G = arrays.Q, arrays.A, arrays.G
    gx, g_nu_, g_lam_ = (as_array(t) for t in (g_z, g_nu, g_lam))
    free = system.free.cpu().numpy()
    if bool(system.w_scale.any()):
        w_scale = as_array(system.w_scale)
        equal, cone = free & (w_scale == 0), free & (w_scale > 0)
        sets = ~cone.any(1)
    else:  # every element's system is an active set's
        w_scale, equal, cone = np.zeros(free.shape), free, np.zeros_like(free)
        sets = np.ones(B, dtype=bool)
    # written through numpy views of the tensors returned
    x_t, w_t, v_t = (torch.zeros(B, k, dtype=torch.float64) for k in (gx.shape[1], m, p))
    x, w, v = x_t.numpy(), w_t.numpy(), v_t.numpy()
    done = np.zeros(B, dtype=bool)
    if ldp is not None and (sets & ldp.ok).any():
        from cvxlayer.fastpaths import active_set_kernels

        out, index = (x, v, w, done), np.flatnonzero(sets & ldp.ok)
        workers = active_set.element_workers(qp.q.shape[1], m, p)
        active_set_kernels.adjoint(
            ldp, Q, A, G, equal, gx, g_nu_, g_lam_, index, _KKT_RESIDUAL, out, workers
        )
    sets = np.flatnonzero(sets & ~done)
    if sets.size:
        bound_rows, bound_cols, _ = active_set.bound_rows(G)
        if qp.q.shape[1] + p + m - bound_rows.size <= _BATCHED_KKT_MAX:  # one LAPACK call
            part = (t[sets] for t in (Q, A, G, equal, gx, g_nu_, g_lam_))
            solved = _active_set_kkt(*part, (bound_rows, bound_cols))
            x[sets], w[sets], v[sets], done[sets] = solved
    todo = np.flatnonzero(~done)
    if todo.size == 0:
        return tuple(t.to(qp.Q) for t in (x_t, w_t, v_t))
    # elements whose rows are all cones (an interior point's system) share one pattern
    interior = ~equal.any(1) & cone.all(1)
    lay_all, rows_all, pat_all = _rows_layout(p, m), None, None
    if interior.any():
        rows_all = np.concatenate([A, G], 1)
        pat_all = engine.kkt_pattern(Q, rows_all[interior], p, lay_all)
        a_vals, p_vals = engine.pattern_values(pat_all, Q, rows_all)
    none, empty = np.zeros((0, 3, 3)), np.zeros(0)  # no nonsymmetric blocks, no values

    def run(i):
        e, c = np.flatnonzero(equal[i]), np.flatnonzero(cone[i])
        k = p + e.size
        if interior[i]:
            rows, lay, pat, values = rows_all[i], lay_all, pat_all, (a_vals[i], p_vals[i])
        else:
            rows = np.concatenate([A[i], G[i, e], G[i, c]])
            lay, pat, values = _rows_layout(k, c.size), _dense(), (empty, empty)
        s = np.concatenate([np.zeros(k), w_scale[i, c]])
        y = np.concatenate([np.zeros(k), np.ones(c.size)])
        gy = np.concatenate([g_nu_[i], g_lam_[i, e], g_lam_[i, c]])
        out, w[i] = np.zeros_like(gy), 0.0
        engine.adjoint_one(
            Q[i], rows, *values, k, lay, pat, engine.NONE_LIFTED, s, y, none, none, gx[i], gy,
            np.zeros_like(gy), x[i], out,
        )  # fmt: skip
        v[i], w[i, e], w[i, c] = out[:p], out[p:k], out[k:]

    for_each(run, todo)
    return tuple(t.to(qp.Q) for t in (x_t, w_t, v_t))


def _active_set_kkt(Q, A, G, active, g_x, g_nu, g_lam, bounds):
    """The active set's KKT system of each element, solved by one LU per element (torch's
    LAPACK, the whole batch in one call; numpy's OpenBLAS was slower and its threads spin
    after it). With D = diag(active) on the general rows (active rows are equalities, the
    others have w = 0),

        [Q      Aᵀ  Gᵀ D ] [x]   [g_x  ]
        [A      0   0    ] [v] = [g_ν  ]
        [D G    0   D − I] [w]   [D g_λ]

    except that an active bound row (`bounds`: rows, columns, of G that bound one variable)
    fixes its variable, x_j = g_λ,i / G_ij: x_j leaves the system (an identity row and
    column), and the row's multiplier follows from stationarity in x_j afterwards. A box QP
    is then a solve on its free variables.

    Arrays are batch first (numpy). Returns x, w, v and (B,) ok: False where the system is
    singular or its residual is above rounding (dependent active rows, a singular Q on
    their null space, both bounds of a variable active), left to the compiled engine's
    regularized, refined solve."""
    B, n = g_x.shape
    rows, cols = bounds
    general = np.ones(G.shape[1], dtype=bool)
    general[rows] = False
    G_g, p, g = G[:, general], A.shape[1], int(general.sum())
    N, d = n + p + g, active[:, general].astype(float)
    K = np.zeros((B, N, N))
    DG = d[:, :, None] * G_g
    K[:, :n, :n] = Q
    K[:, :n, n : n + p], K[:, n : n + p, :n] = A.swapaxes(1, 2), A
    K[:, :n, n + p :], K[:, n + p :, :n] = DG.swapaxes(1, 2), DG
    K[:, np.arange(n + p, N), np.arange(n + p, N)] = d - 1
    rhs = np.concatenate([g_x, g_nu, d * g_lam[:, general]], 1)
    # fixed variables: their columns move to the right-hand side, their rows become x_j = …
    coef = G[:, rows, cols]
    on = active[:, rows]
    x_fixed, active_bounds = np.zeros((B, n)), np.zeros((B, n), dtype=int)
    np.add.at(x_fixed.T, cols, (on * g_lam[:, rows] / np.where(on, coef, 1.0)).T)
    np.add.at(active_bounds.T, cols, on.T)  # per variable; two: both sides active
    fixed = active_bounds > 0
    rhs -= mv(K[:, :, :n], x_fixed)
    mask = np.zeros((B, N), dtype=bool)
    mask[:, :n] = fixed
    K[mask] = 0.0
    K.swapaxes(1, 2)[mask] = 0.0
    K[:, np.arange(n), np.arange(n)] += fixed
    rhs[:, :n] = np.where(fixed, x_fixed, rhs[:, :n])
    sol, info = torch.linalg.solve_ex(torch.from_numpy(K), torch.from_numpy(rhs))
    sol = sol.numpy()
    residual = abs(rhs - mv(K, sol)).max(1)
    ok = (info.numpy() == 0) & np.isfinite(sol).all(1) & (active_bounds <= 1).all(1)
    ok &= residual <= _KKT_RESIDUAL * (1 + abs(rhs).max(1))
    x, v, w = sol[:, :n], sol[:, n : n + p], np.zeros_like(g_lam)
    w[:, general] = sol[:, n + p :]
    # a fixed variable's stationarity: Q x + Aᵀ v + G_gᵀ w_g + G_ij w_i = g_x at row j
    rest = g_x - mv(Q, x) - mtv(A, v) - mtv(G_g, w[:, general])
    w[:, rows] = np.where(on, rest[:, cols] / np.where(on, coef, 1.0), 0.0)
    return x, w, v, ok


@functools.lru_cache(maxsize=256)
def _rows_layout(equalities: int, cones: int):
    """The compiled engine's layout of `equalities` zero rows and `cones` one-row cones
    (kept: building it per element cost more than the element's solve)."""
    from cvxlayer.solvers import ipm

    return ipm._compiled_engine().layout(ConeSpec(zero=equalities, nonneg=cones))[0]


@functools.lru_cache(maxsize=1)
def _dense():
    """The compiled engine's pattern for a dense factorization."""
    from cvxlayer.solvers.sparse_ldl import unused

    return unused()


class _QPSolve(torch.autograd.Function):
    # The outputs go through save_for_backward, never onto ctx: an output held by its own
    # node would be a reference cycle through the autograd graph, which Python's garbage
    # collector cannot see, and every call's tensors would stay alive.
    @staticmethod
    def forward(ctx, Q, q, G, h, A, b, T, p, settings, out):
        Q, q, G, h, A, b = (t.detach() for t in (Q, q, G, h, A, b))
        if T is not None:  # Q + Tᵀ diag(p) T
            T, p = T.detach(), p.detach()
            Q = torch.baddbmm(Q, T.transpose(1, 2), p.unsqueeze(-1) * T)
        qp = QPData(Q, q, G, h, A, b, out["G_pattern"])
        sol = solve_batch(qp, *settings, start=out.get("start"))
        out["result"] = sol
        ctx.qp, ctx.gram, ctx.failed_nan = qp, (T, p), out["failed_gradient"] == "nan"
        ctx.rest = (sol.s, sol.status, sol.iterations, sol.system, sol.arrays, sol.ldp)
        ctx.save_for_backward(sol.z, sol.lam, sol.nu)
        return sol.z, sol.lam, sol.nu

    @staticmethod
    def backward(ctx, g_z, g_lam, g_nu):
        z, lam, nu = ctx.saved_tensors
        s, status, iterations, system, arrays, ldp = ctx.rest
        sol = PDIPMResult(z, s, lam, nu, status, iterations, system, arrays, ldp)
        needed = ctx.needs_input_grad
        grads = qp_vjp(ctx.qp, sol, g_z, g_lam, g_nu, needed[:6], ctx.gram, needed[6:8])
        failed = [not st.ok for st in status]
        if any(failed):
            failed = torch.tensor(failed, device=g_z.device)
            fill = float("nan") if ctx.failed_nan else 0.0
            grads = tuple(
                None if g is None else torch.where(failed.view(-1, *[1] * (g.dim() - 1)), fill, g)
                for g in grads
            )
        return (*grads, None, None)


def qp_solve_differentiable(
    qp: QPData,
    eps_abs: float = 1e-8,
    eps_rel: float = 1e-8,
    max_iters: int = MAX_ITERS,
    verbose: bool = False,
    failed_gradient: str = "zero",
    method: str = "auto",
    gram: tuple[torch.Tensor, torch.Tensor] | None = None,
    start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PDIPMResult]:
    """`solve_batch` with autograd: (z, λ, ν) are differentiable w.r.t. every field of `qp`.

    Elements not solved get a zero (or NaN: `failed_gradient="nan"`) gradient. With `gram`
    = (T (B, e, n), p (B, e)) the objective's matrix is qp.Q + Tᵀ diag(p) T, formed here and
    differentiated in T and p through the rank-two form of its gradient (`qp_vjp`): a
    reduced objective ½‖Lz‖² then costs no (n × n)-sized products in the backward.
    `start` (B, n): a guess of z for the active set's working set (`solve_batch`).

    Returns:
        z (B, n), λ (B, m), ν (B, p), and the detached `PDIPMResult` (status, iterations).
    """
    out = {"failed_gradient": failed_gradient, "G_pattern": qp.G_pattern, "start": start}
    T, p = gram if gram is not None else (None, None)
    settings = (eps_abs, eps_rel, max_iters, verbose, method)
    z, lam, nu = _QPSolve.apply(qp.Q, qp.q, qp.G, qp.h, qp.A, qp.b, T, p, settings, out)
    return z, lam, nu, out["result"]


def solve_qp(
    Q: torch.Tensor,
    q: torch.Tensor,
    G: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    A: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float = 1e-8,
    max_iters: int = MAX_ITERS,
    verbose: bool = False,
    return_status: bool = False,
    failed_gradient: str = "zero",
    method: str = "auto",
    warm_start: torch.Tensor | None = None,
) -> torch.Tensor | tuple:
    """Differentiable batched QP: z* = argmin ½zᵀQz + qᵀz s.t. Gz ≤ h, Az = b (cf. qpth's
    `QPFunction`).

    Each argument is either shared, e.g. Q (n, n), or batched, Q (B, n, n); shared ones are
    broadcast. Q is symmetrized as ½(Q + Qᵀ) and must be PSD. Gradients flow to every
    tensor argument.

    Args:
        Q: objective's quadratic term, (B, n, n).
        q: objective's linear term, (B, n).
        G: inequalities Gz ≤ h, (B, m, n); omit G and h for none.
        h: (B, m).
        A: equalities Az = b, (B, p, n); omit A and b for none.
        b: (B, p).
        eps: tolerance on the residuals and the gap (absolute and relative).
        max_iters: interior-point iteration limit.
        return_status: also return per-element `Status` and iteration counts instead of
            raising for unsolved elements.
        failed_gradient: "zero" or "nan": the gradient of elements that were not solved.
        method: "active_set" (DAQP per element, CPU), "ipm" (the batched interior point)
            or "auto" (the active set for CPU tensors up to `ACTIVE_SET_MAX_N` variables).
            Elements the active set does not solve go to the interior point.
        warm_start: a guess of z, (B, n) or (n,), e.g. the previous call's solution in a
            loop over nearby problems: the active set's working set starts from the
            constraints active there (same answer, fewer iterations; the interior point
            ignores it).

    Returns:
        z (B, n) (or (n,) if every argument was shared); with `return_status`, the tuple
        (z, status, iterations).

    Raises:
        ValueError: inconsistent shapes, NaN/inf in the data.
        SolverError: an element was not solved (infeasible, unbounded or numerically
            difficult problems end at the iteration limit), unless `return_status`.
    """
    if (G is None) != (h is None) or (A is None) != (b is None):
        raise ValueError("pass G with h and A with b (or neither of a pair)")
    n = q.shape[-1]
    ref = q
    G = G if G is not None else ref.new_zeros(0, n)
    h = h if h is not None else ref.new_zeros(0)
    A = A if A is not None else ref.new_zeros(0, n)
    b = b if b is not None else ref.new_zeros(0)
    named = {"Q": (Q, 2), "q": (q, 1), "G": (G, 2), "h": (h, 1), "A": (A, 2), "b": (b, 1)}
    for k, (t, _) in named.items():
        if not torch.isfinite(t).all():
            raise ValueError(f"{k} contains NaN or inf")
    tensors, batched = broadcast_batch(named)
    Q, q, G, h, A, b = tensors.values()
    m, p = G.shape[1], A.shape[1]
    expected = {"Q": (n, n), "G": (m, n), "h": (m,), "A": (p, n), "b": (p,)}
    for k, shape in expected.items():
        if tuple(tensors[k].shape[1:]) != shape:
            raise ValueError(f"{k} has shape {tuple(tensors[k].shape[1:])}, expected {shape}")
    Q = 0.5 * (Q + Q.transpose(1, 2))
    start = None
    if warm_start is not None:
        start = warm_start.detach().reshape(-1, warm_start.shape[-1])
        if warm_start.dim() > 2 or start.shape[1] != n or start.shape[0] not in (1, q.shape[0]):
            raise ValueError(
                f"warm_start has shape {tuple(warm_start.shape)}, expected ({q.shape[0]}, {n})"
            )
        start = start.expand(q.shape[0], n)
    z, _, _, result = qp_solve_differentiable(
        QPData(Q, q, G, h, A, b), eps, eps, max_iters, verbose, failed_gradient, method,
        start=start,
    )  # fmt: skip
    if not batched:
        z = z.squeeze(0)
    if return_status:
        return z, result.status, result.iterations
    failed = [i for i, st in enumerate(result.status) if not st.ok]
    if failed:
        raise SolverError(
            f"{len(failed)} of {len(result.status)} QP(s) not solved (elements {failed[:10]}: "
            f"{[result.status[i].value for i in failed[:10]]}); the problem may be infeasible "
            "or unbounded. Pass return_status=True to get per-element status instead.",
            tuple(s.value for s in result.status),
            failed,
        )
    return z
