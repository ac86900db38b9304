"""Mode "clarabel": Clarabel's interior point (Rust) on each batch element, over the kept
thread pool (its solve releases the GIL).

Clarabel solves the same program as SCS,  min ½xᵀPx + cᵀx  s.t.  Ax + s = b, s ∈ K, with
dual z = y ∈ K*, and takes the same cones in the same order except one convention: a PSD
cone's rows are the upper triangle of the matrix, column by column (SCS: the lower
triangle), both scaled by √2 off the diagonal. `ClarabelLayout` permutes those rows once
per structure; everything else is passed as it is.
"""

from __future__ import annotations

import functools

import clarabel
import numpy as np
import scipy.sparse as sp
import torch

from cvxlayer.cones.spec import psd_rows
from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import Solution, SolveSettings, Status
from cvxlayer.solvers.elementwise import as_tensor, map_chunks, worker_count
from cvxlayer.solvers.ipm import compiled_engine_supports

_STATUS = {
    "Solved": Status.SOLVED,
    "AlmostSolved": Status.SOLVED,  # to the caller's eps (`_settings`), not to eps²
    "PrimalInfeasible": Status.INFEASIBLE,
    "DualInfeasible": Status.UNBOUNDED,
    "AlmostPrimalInfeasible": Status.INFEASIBLE_INACCURATE,
    "AlmostDualInfeasible": Status.UNBOUNDED_INACCURATE,
    "MaxIterations": Status.MAX_ITERS,
    "MaxTime": Status.MAX_ITERS,
    # stalled short of the caller's eps (rounding): its best iterate, with the warning
    "InsufficientProgress": Status.SOLVED_INACCURATE,
}
# ends where an earlier iterate may have been better (`ClarabelSerial`)
_STALLED = ("NumericalError", "InsufficientProgress")
# an interior point needs tens of iterations; SCS's iteration limit (100 000 by default) is
# capped at this
MAX_ITERS = 200
# Clarabel's tolerances from ours as the torch interior point sets its own: at a gap μ an
# interior point's x can still move by ~√μ (measured: Clarabel's default 1e-8 left x 1e-4
# from the solution on an SOCP), so it aims at eps², floored where rounding stalls it
INNER_FLOOR = 1e-10
# the second try of a stalled element aims at the caller's eps, but no tighter than
# Clarabel's default (1e-8); reaching only that is `solved_inaccurate` for a tighter eps
RETRY_FLOOR = 1e-8
# on exponential-cone programs Clarabel's solutions are polished from this gap and
# feasibility (`ClarabelSerial.solve`)
POLISH_START = 1e-8


def _psd_upper_from_lower(side: int) -> np.ndarray:
    """perm (psd_rows(side),): Clarabel's row k (upper triangle, column-major) is SCS's row
    perm[k] (lower triangle, column-major) of the same symmetric matrix."""
    first = np.concatenate(([0], np.cumsum(np.arange(side, 0, -1))))  # column j's first row
    return np.array([first[r] + (c - r) for c in range(side) for r in range(c + 1)])


class ClarabelLayout:
    """A structure's cones as Clarabel's, and A's values and rows in Clarabel's row order."""

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(structure: ConeStructure) -> ClarabelLayout:
        return ClarabelLayout(structure)

    def __init__(self, structure: ConeStructure) -> None:
        cones = structure.cones
        if cones.exp_dual:
            raise NotImplementedError(
                "mode='clarabel' does not take dual exponential cones; use mode='scs'"
            )
        self.cones = (
            ([clarabel.ZeroConeT(cones.zero)] if cones.zero else [])
            + ([clarabel.NonnegativeConeT(cones.nonneg)] if cones.nonneg else [])
            + [clarabel.SecondOrderConeT(k) for k in cones.soc]
            + [clarabel.PSDTriangleConeT(k) for k in cones.psd]
            + [clarabel.ExponentialConeT() for _ in range(cones.exp)]
            + [clarabel.PowerConeT(a) for a in cones.power]
        )
        perm = np.arange(structure.m)
        start = cones.zero + cones.nonneg + sum(cones.soc)
        for side in cones.psd:
            rows = psd_rows(side)
            perm[start : start + rows] = start + _psd_upper_from_lower(side)
            start += rows
        self.row_perm = perm
        a_template, p_template = structure.csc_templates
        # A in Clarabel's rows: its values are those of ours, reordered (`value_perm`)
        marked = a_template.copy()
        marked.data = np.arange(structure.a_nnz, dtype=np.float64)
        permuted = marked[perm].tocsc()
        permuted.sort_indices()
        self.value_perm = permuted.data.astype(np.int64)
        self.a_template = permuted
        n = structure.n
        self.p_template = sp.csc_matrix((n, n)) if p_template is None else p_template

    def matrices(self, A: np.ndarray, P: np.ndarray | None) -> tuple:
        """(P, A) as Clarabel's CSC matrices from our values A (nnz_A,), P (nnz_P,) or None."""
        a = self.a_template.copy()
        a.data = A[self.value_perm]
        if P is None:
            return self.p_template, a
        p = self.p_template.copy()
        p.data = P
        return p, a


def _settings(
    settings: SolveSettings, inner: bool = True, start: bool = False
) -> clarabel.DefaultSettings:
    """Clarabel's settings aiming at eps² (`inner`) or at the caller's eps itself; with
    `start`, at `POLISH_START` where eps² is tighter (a start for the polish)."""
    out = clarabel.DefaultSettings()
    out.verbose = settings.verbose
    out.max_iter = min(settings.max_iters, MAX_ITERS)
    power, floor = (2, INNER_FLOOR) if inner else (1, RETRY_FLOOR)
    floor = max(floor, POLISH_START) if start else floor
    out.tol_gap_abs = max(settings.eps_abs**power, floor)
    out.tol_gap_rel = max(settings.eps_rel**power, floor)
    out.tol_feas = max(min(settings.eps_abs, settings.eps_rel) ** power, floor)
    out.tol_infeas_abs = out.tol_infeas_rel = settings.eps_infeas
    # where rounding stalls it short of eps², Clarabel ends "AlmostSolved" if these hold:
    # the caller's own tolerances, so that is a solution to them (`_STATUS`)
    out.reduced_tol_gap_abs, out.reduced_tol_gap_rel = settings.eps_abs, settings.eps_rel
    out.reduced_tol_feas = min(settings.eps_abs, settings.eps_rel)
    out.reduced_tol_infeas_abs = out.reduced_tol_infeas_rel = settings.eps_infeas
    if settings.time_limit_secs > 0:
        out.time_limit = settings.time_limit_secs
    return out


class ClarabelSerial:
    """Mode "clarabel": Clarabel on each batch element, `settings.threads` at a time.

    Settings: Clarabel's gap and feasibility tolerances are eps_abs², eps_rel² (floored at
    `INNER_FLOOR`; on exponential and power cones the solutions are then polished,
    `cvxlayer.solvers.polish`, and on exponential-cone programs Clarabel stops at
    `POLISH_START` first: `solve`), its certificates' eps_infeas, its iteration limit
    max_iters (at most `MAX_ITERS`); the other SCS settings have no counterpart. Status
    from Clarabel's.
    Clarabel returns its last iterate, and where rounding breaks the tail on the way to eps²
    (NumericalError, InsufficientProgress) that one can be worse than an earlier one
    (measured: primal residual 4e-6 after 1e-9 two iterations before). Such elements are
    solved again aiming at the caller's eps (at least `RETRY_FLOOR`), kept if it solves.
    """

    name = "clarabel"

    def solve(
        self, program: ConeProgram, settings: SolveSettings, warm_start: Solution | None = None
    ) -> Solution:
        st, B = program.structure, program.batch_size
        # on exponential and power cones the polish takes the answer to rounding. With
        # power cones it starts from eps² (from the caller's eps its Newton steps failed on
        # 17 of 64 T5d elements, 3 from eps²; from 1e-8 on 13 of 32); with exponential ones
        # Clarabel stops at `POLISH_START` (T5b: all 128 then polished to rounding, 28 → 16
        # iterations), and an element the polish does not take to rounding is solved again
        # to eps²
        polishing = bool(st.cones.exp or st.cones.power) and compiled_engine_supports(st.cones)
        inner = _settings(settings)
        early = polishing and not st.cones.power and inner.tol_gap_abs < POLISH_START
        solve = functools.partial(_solve_elements, program, settings)
        x, y, s, status, iterations = solve(range(B), _settings(settings, start=early))
        if polishing:
            from cvxlayer.solvers.polish import polish  # numba: loaded where it works

            def solved(status):
                return torch.tensor([element is Status.SOLVED for element in status])

            ok = solved(status)
            x, y, s, done = polish(program, x, y, s, ok)
            again = (ok & ~done).nonzero().flatten() if early else []
            if len(again):
                x2, y2, s2, status2, iterations2 = solve(again.tolist(), inner)
                x2, y2, s2, _ = polish(program.select(again), x2, y2, s2, solved(status2))
                x[again], y[again], s[again] = x2, y2, s2
                for i, element in zip(again.tolist(), status2):
                    status[i] = element
                iterations[again] += iterations2
        return Solution(x, y, s, status=tuple(status), iterations=iterations)


def _solve_elements(program: ConeProgram, settings: SolveSettings, index, options) -> tuple:
    """(x, y, s, status, iterations) of Clarabel on the elements `index` of the batch, with
    its `options`, over the kept thread pool. Where it stalls (`_STALLED`), the element is
    solved again aiming at the caller's eps (at least `RETRY_FLOOR`) and kept if that
    solves. Unsolved elements' x, y, s are NaN (as SCS returns)."""
    st = program.structure
    layout = ClarabelLayout.of(st)
    index = list(index)

    def values(t):
        return None if t is None else t.detach().cpu().double().numpy()[index]

    A, b, c, P = (values(t) for t in (program.A, program.b, program.c, program.P))
    b = b[:, layout.row_perm]

    def run(chunk, options):
        out = []
        for i in chunk:
            p, a = layout.matrices(A[i], None if P is None else P[i])
            solver = clarabel.DefaultSolver(p, c[i], a, b[i], layout.cones, options)
            sol = solver.solve()
            out.append((np.asarray(sol.x), np.asarray(sol.z), np.asarray(sol.s), sol))
        return out

    B = len(index)
    sols = map_chunks(
        lambda chunk: run(chunk, options), [[i] for i in range(B)], worker_count(settings, B)
    )
    stalled = [i for i, sol in enumerate(sols) if str(sol[3].status) in _STALLED]
    if stalled:
        again = map_chunks(
            lambda chunk: run(chunk, _settings(settings, inner=False)),
            [[i] for i in stalled],
            worker_count(settings, len(stalled)),
        )
        for i, sol in zip(stalled, again):
            if _STATUS.get(str(sol[3].status)) is Status.SOLVED:
                sols[i] = sol
    status = [_STATUS.get(str(sol[3].status), Status.FAILURE) for sol in sols]
    if min(settings.eps_abs, settings.eps_rel) < RETRY_FLOOR:
        for i in stalled:
            if status[i] is Status.SOLVED:
                status[i] = Status.SOLVED_INACCURATE
    x, z, slack = (np.stack([sol[k] for sol in sols]).reshape(B, -1) for k in range(3))
    y, s = np.empty((B, st.m)), np.empty((B, st.m))
    y[:, layout.row_perm], s[:, layout.row_perm] = z, slack
    unsolved = [i for i, element in enumerate(status) if not element.usable]
    x[unsolved] = y[unsolved] = s[unsolved] = np.nan
    like = program.b
    x, y, s = (as_tensor(t, like) for t in (x, y, s))
    return x, y, s, status, torch.tensor([sol[3].iterations for sol in sols])
