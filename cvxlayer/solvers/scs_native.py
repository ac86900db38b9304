"""The two baseline modes on native SCS (C): one problem at a time, or one block-diagonal problem.

Block-diagonal form of a batch (thesis §7.4.1): x = [x₁; …; x_B], A = diag(A₁, …, A_B),
b = [b₁; …; b_B], c = [c₁; …; c_B], with the rows permuted so that each cone family of all
elements is contiguous, as SCS requires (all zero rows, then all nonneg rows, …).
"""

from __future__ import annotations

import functools
from dataclasses import asdict

import numpy as np
import scipy.sparse as sp
import scs
import torch

from cvxlayer.program import ConeProgram, ConeStructure
from cvxlayer.solvers.base import Solution, SolveSettings, Status
from cvxlayer.solvers.elementwise import as_tensor, map_chunks, worker_count

# mode "scs" solves programs with n + m below this in the calling thread (measured, B = 8 /
# 32: n + m = 43: 2.1 / 13.2 ms serial, 2.4 / 13.0 on 2 threads; n + m = 203: 11.4 / 43.5
# serial, 11.8 / 36.0 threaded)
_THREADED_SIZE = 100

# SCS 3 info["status_val"] ↦ Status
_SCS_STATUS = {
    1: Status.SOLVED,
    2: Status.SOLVED_INACCURATE,
    -1: Status.UNBOUNDED,
    -2: Status.INFEASIBLE,
    -6: Status.UNBOUNDED_INACCURATE,
    -7: Status.INFEASIBLE_INACCURATE,
}


@functools.lru_cache(maxsize=32)
def _scs_settings(settings: SolveSettings, dense: bool = False) -> tuple:
    """SCS's own keyword arguments as (name, value) pairs: the same names, `linsys` mapped to
    `linear_solver` ("cg" → the indirect solver; otherwise the dense one where `dense` and
    this SCS has it, else the sparse direct one)."""
    opts = asdict(settings)
    linsys = opts.pop("linsys")
    if linsys == "cg":
        opts["linear_solver"] = "cpu_indirect"
    else:
        opts["linear_solver"] = "cpu_dense" if dense and _extension("cpu_dense") else "auto"
    del opts["threads"], opts["reuse_setup"]
    return tuple(opts.items())


def _dense_pays(structure: ConeStructure) -> bool:
    """Whether SCS's dense linear solver (LAPACK Cholesky of the n × n matrix P + R + AᵀR⁻¹A)
    beats its sparse LDLᵀ (QDLDL of the (n + m)-square KKT matrix) for these programs.

    Measured on a 2-core CPU (one solve, eps 1e-6): with a quarter of A nonzero the dense
    solver is 2× faster at n = 50–200 and even at n = 400; with A a few percent dense it is
    2× slower at n = 70 and 10–30× slower at n = 300–800.
    """
    return structure.n <= 300 and structure.a_nnz >= 0.15 * structure.m * structure.n


@functools.lru_cache(maxsize=8)
def _extension(linear_solver: str):
    """SCS's C extension for a linear solver, or None where this SCS does not expose it.

    `scs.SCS` re-validates and re-sorts its input on every construction (about a third of
    a small problem's solve); our matrices come from templates checked once (sorted CSC, P
    upper triangular), so the extension is called directly.
    """
    select = getattr(scs, "_select_scs_module", None)
    try:
        return None if select is None else select({"linear_solver": linear_solver})
    except (ValueError, ImportError):
        return None


def _workspace(A, b, c, P, cones: dict, settings: tuple):
    """SCS's solver object for (A, b, c, P), set up (scaled and factored): A and P sorted
    CSC with int32 indices, P upper triangular; `settings` from `_scs_settings`.

    SCS needs a constraint row: a program without any (an unconstrained QP, m = 0) gets one
    empty zero-cone row (0ᵀx + s = 0, s = 0), which `_run` drops from the answer.
    """
    if A.shape[0] == 0:
        A = sp.csc_matrix((np.zeros(0), np.zeros(0, np.int32), A.indptr), shape=(1, A.shape[1]))
        b, cones = np.zeros(1), {"z": 1}
    settings = dict(settings)
    linear_solver = settings.pop("linear_solver")
    extension = _extension(linear_solver)
    if extension is None:
        data = {"A": A, "b": b, "c": c} | ({} if P is None else {"P": P})
        return scs.SCS(data, cones, linear_solver=linear_solver, **settings)
    p_arrays = (None, None, None) if P is None else (P.data, P.indices, P.indptr)
    return extension.SCS(A.shape, A.data, A.indices, A.indptr, *p_arrays, b, c, cones, **settings)


def _run(solver, warm: tuple | None, m: int) -> dict:
    """Solve from `warm` (x, y, s) if given; y and s of a program with m rows (m = 0: the
    padding row of `_workspace` is dropped)."""
    if warm is not None and m == 0:
        warm = (warm[0], np.zeros(1), np.zeros(1))
    sol = solver.solve(False, None, None, None) if warm is None else solver.solve(True, *warm)
    if m == 0:
        sol["y"], sol["s"] = sol["y"][:0], sol["s"][:0]
    return sol


def _shares_matrices(program: ConeProgram) -> bool:
    """Whether every element has the same A and P (only b and c vary over the batch)."""
    same = [t for t in (program.A, program.P) if t is not None]
    return program.batch_size > 1 and all(bool((t == t[:1]).all()) for t in same)


def _status(info: dict, max_iters: int) -> Status:
    status = _SCS_STATUS.get(int(info["status_val"]), Status.FAILURE)
    if status is Status.SOLVED_INACCURATE and int(info["iter"]) >= max_iters:
        return Status.MAX_ITERS
    return status


def _warm_arrays(warm_start: Solution | None) -> list | None:
    if warm_start is None:
        return None
    return [t.detach().cpu().double().numpy() for t in (warm_start.x, warm_start.y, warm_start.s)]


class ScsSerial:
    """Mode "scs": native SCS on each batch element separately; per-element status.

    Elements are spread over `settings.threads` threads (SCS releases the GIL while it
    iterates; `cvxlayer.solvers.elementwise`). With
    `settings.reuse_setup`, where every element has the same A and P (only b and c depend
    on batched parameters), each thread sets SCS up once for its contiguous share of the
    batch and only updates b and c between elements (SCS's `update`: no new factorization,
    and the scale SCS adapted on one element starts the next).
    """

    name = "scs"

    def solve(
        self, program: ConeProgram, settings: SolveSettings, warm_start: Solution | None = None
    ) -> Solution:
        cones = program.structure.cones.to_scs()
        opts = _scs_settings(settings, _dense_pays(program.structure))
        warm = _warm_arrays(warm_start)
        elements = program.to_scipy()
        shared = settings.reuse_setup and _shares_matrices(program)

        def run(chunk):
            solver, out = None, []
            for i in chunk:
                A, b, c, P = elements[i]
                if solver is None or not shared:
                    solver = _workspace(A, b, c, P, cones, opts)
                else:
                    solver.update(b, c)
                start = None if warm is None else tuple(a[i] for a in warm)
                out.append(_run(solver, start, program.structure.m))
            return out

        st = program.structure
        workers = worker_count(settings, len(elements), small=st.n + st.m < _THREADED_SIZE)
        if shared:  # one share per thread: the same split, hence the same answers, each call
            chunks = np.array_split(np.arange(len(elements)), workers)
        else:
            chunks = [[i] for i in range(len(elements))]
        sols = map_chunks(run, chunks, workers)
        xys = as_tensor(
            np.stack([np.concatenate((s["x"], s["y"], s["s"])) for s in sols]), program.b
        )
        return Solution(
            *torch.split(xys, [st.n, st.m, st.m], dim=1),
            status=tuple(_status(sol["info"], settings.max_iters) for sol in sols),
            iterations=torch.tensor([int(sol["info"]["iter"]) for sol in sols]),
        )


def _block_row_order(structure: ConeStructure, batch: int) -> np.ndarray:
    """perm with block_row[k] = stacked_row[perm[k]]: each cone family of all elements together."""
    m = structure.m
    offsets = np.cumsum((0,) + structure.cones.section_sizes())
    parts = [
        i * m + np.arange(lo, hi) for lo, hi in zip(offsets[:-1], offsets[1:]) for i in range(batch)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class ScsBlock:
    """Mode "scs-block": native SCS once, on the block-diagonal program of the whole batch.

    One solve means one stopping test for the whole batch: every element gets the block's
    status and iteration count.
    """

    name = "scs-block"

    def solve(
        self, program: ConeProgram, settings: SolveSettings, warm_start: Solution | None = None
    ) -> Solution:
        st, B = program.structure, program.batch_size
        elements = program.to_scipy()
        perm = _block_row_order(st, B)
        A = sp.block_diag([e[0] for e in elements], format="csr")[perm].tocsc()
        b = np.concatenate([e[1] for e in elements])[perm]
        c = np.concatenate([e[2] for e in elements])
        P = None
        if st.p_indices is not None:
            P = sp.block_diag([e[3] for e in elements], format="csc")
        warm = _warm_arrays(warm_start)
        if warm is not None:
            wx, wy, ws = warm
            warm = (wx.reshape(-1), wy.reshape(-1)[perm], ws.reshape(-1)[perm])
        sol = _run(
            _workspace(A, b, c, P, st.cones.repeat(B).to_scs(), _scs_settings(settings)),
            warm,
            B * st.m,
        )
        y, s = np.empty_like(sol["y"]), np.empty_like(sol["s"])
        y[perm], s[perm] = sol["y"], sol["s"]
        like = program.b
        status = _status(sol["info"], settings.max_iters)
        return Solution(
            x=as_tensor(sol["x"].reshape(B, st.n), like),
            y=as_tensor(y.reshape(B, st.m), like),
            s=as_tensor(s.reshape(B, st.m), like),
            status=(status,) * B,
            iterations=torch.full((B,), int(sol["info"]["iter"])),
        )
