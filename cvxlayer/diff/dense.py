"""Batched adjoint of the cone program's solution map, with a quadratic objective.

At a solution (x, y, s) let u = x, v = y − s, so that y = Π(v), s = Π(v) − v with
Π = Π_{K*} (Minty's parameterization). The solution satisfies the residual map

    R(u, v) = ( P u + Aᵀ Π(v) + c ,  −A u + b − (Π(v) − v) ) = 0,

n + m equations in n + m unknowns (the homogeneous variable fixed at τ = 1). Its Jacobian
is J = [[P, Aᵀ D], [−A, I − D]], D = DΠ(v) (symmetric). For a loss with gradients
(dx, dy, ds), solve

    Jᵀ r = ( dx ,  D(dy + ds) − ds )

and, since ∂L/∂θ = −rᵀ ∂R/∂θ,

    dA = r_v xᵀ − y r_uᵀ,   db = −r_v,   dc = −r_u,   dP = −½ (r_u xᵀ + x r_uᵀ).

With P = 0 this is the adjoint of Agrawal et al. (2019) with the homogeneous row dropped.
Two ways to solve Jᵀ r = rhs for the whole batch, on the data's device:
  "dense": form Jᵀ, one LU solve per element (least squares where J is singular);
  "lsqr":  batched LSQR on the operator r ↦ Jᵀ r, applying A, P and the cone Jacobians
           block by block, with a per-element stopping rule.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from cvxlayer.cones.projections import ConeProjector
from cvxlayer.elimination import eliminated_gradient, reduced_objective
from cvxlayer.linalg import min_norm_solve, mv
from cvxlayer.program import ConeProgram, ConeStructure, SparseOps
from cvxlayer.solvers.base import Solution
from cvxlayer.solvers.elementwise import as_array, for_each


def residual_jacobian_t(A, P, D) -> torch.Tensor:
    """Jᵀ = [[P, −Aᵀ], [D A, I − D]] (P, D symmetric): (B, n + m, n + m) from A (B, m, n),
    P (B, n, n) or None, D (B, m, m); written block by block into one tensor."""
    B, m, n = A.shape
    Jt = A.new_empty(B, n + m, n + m)  # every block is written below
    if P is not None:
        Jt[:, :n, :n] = P
    else:
        Jt[:, :n, :n] = 0
    Jt[:, :n, n:] = -A.transpose(1, 2)
    Jt[:, n:, :n] = D @ A
    Jt[:, n:, n:] = -D
    Jt[:, n:, n:].diagonal(dim1=1, dim2=2).add_(1)
    return Jt


# CPU systems up to this size are factored as one batch (`solve_transposed_system`)
BATCHED_LU_MAX = 120


def solve_transposed_system(Jt: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """r with Jᵀ r = rhs per element, given Jᵀ (B, N, N); least squares (minimum norm) where
    J is singular.

    J is singular where the solution is not unique or not strictly complementary (a
    degenerate program), and rounding then leaves LU a pivot of order ε‖J‖ instead of 0.
    Where rhs lies in J's range the LU solve is still fine (the usual case: degenerate
    interior-point solutions of trading policies); where it does not, the solve is of
    order 1/ε (gradients of 1e16 in a supply-chain policy's training). So an element goes
    to the minimum-norm solve when LU meets an exact zero pivot, or a pivot below N·ε times
    the largest (pinv's own cut-off) while its solve amplifies rhs by more than 1/√ε
    relative to J's scale (`_unreliable`).

    On CUDA, and on the CPU up to `BATCHED_LU_MAX` rows, a batch is factored in one call
    (one small element's LU is a few µs; a Python loop over elements costs more: at side 43
    85 µs batched against 46 for one element, 175 against 392 for eight); larger CPU
    systems, and one element, are factored by LAPACK element by element over torch's
    thread count (a batched CPU factorization is a loop over elements anyway, and torch
    2.13's MKL one of a few hundred rows returned invalid pivots: `linalg.lu_factor`). On
    the CPU the minimum-norm fallback is `min_norm_solve`, on CUDA the pseudo-inverse.
    """
    if Jt.is_cuda or (Jt.shape[-1] <= BATCHED_LU_MAX and Jt.shape[0] > 1):
        LU, pivots, info = torch.linalg.lu_factor_ex(Jt)
        r = torch.linalg.lu_solve(LU, pivots, rhs.unsqueeze(-1)).squeeze(-1)
        pivot = LU.diagonal(dim1=1, dim2=2).abs()
        bad = (info != 0) | ~torch.isfinite(r).all(1)
        eps = torch.finfo(Jt.dtype).eps
        bad |= _unreliable(
            pivot.amin(1), pivot.amax(1), r.abs().amax(1), rhs.abs().amax(1), Jt.shape[-1], eps
        )
        if bool(bad.any()):
            if Jt.is_cuda:
                r[bad] = (torch.linalg.pinv(Jt[bad]) @ rhs[bad].unsqueeze(-1)).squeeze(-1)
            else:
                for i in bad.nonzero().flatten().tolist():
                    M, b = Jt[i].detach().numpy(), rhs[i].detach().numpy()
                    r[i] = torch.as_tensor(min_norm_solve(M, b))
        return r
    M, b = Jt.detach().numpy(), rhs.detach().numpy()
    getrf, getrs = scipy.linalg.get_lapack_funcs(("getrf", "getrs"), (M,))
    size, eps = M.shape[-1], np.finfo(M.dtype).eps
    r = np.empty_like(b)

    def run(i):
        lu, piv, info = getrf(M[i])
        if info == 0:
            r[i] = getrs(lu, piv, b[i])[0]
            pivot = np.abs(np.diag(lu))
            if np.isfinite(r[i]).all() and not _unreliable(
                pivot.min(), pivot.max(), np.abs(r[i]).max(), np.abs(b[i]).max(), size, eps
            ):
                return
        r[i] = min_norm_solve(M[i], b[i])

    for_each(run, range(M.shape[0]))
    return torch.as_tensor(r)


def _dense_solve(st: ConeStructure, A, P, D, rhs: torch.Tensor) -> torch.Tensor:
    """r with Jᵀ r = rhs (`residual_jacobian_t`'s blocks), the lifted variables eliminated
    first (`ipm._lifted_columns`: columns E whose one nonzero a sits in an equality row R,
    the t = L x of cvxpy's sum_squares): where every a is nonzero the system shrinks by
    2|E| (T5c: 310 → 110 rows; LU's cost by its cube).

    With columns K, E and rows R, O (the others), D = I on R (the zero cone's dual is free)
    and A_OE = 0, the equations of R and of E's columns give

        r_E = T r_K − u,  T = −A_RK / a,  u = −g_R / a,
        r_R = (P_EK r_K + P_EE r_E − g_E) / a,

    and the rest is the residual map's system of the reduced program, Jᵀ of (Q, A_OK, D_OO)
    with right-hand side (q, g_O): Q and q are `elimination.reduced_objective`'s with
    c = g_u and this u (q = g_K + Tᵀg_E + (P_KE + TᵀP_EE) u)."""
    from cvxlayer.solvers.ipm import _lifted_columns

    cols, rows, keep, other = _lifted_columns(st)
    a = A[:, rows, cols]
    if cols.size == 0 or not bool((a != 0).all()):
        return solve_transposed_system(residual_jacobian_t(A, P, D), rhs)
    g_u, g_v = rhs[:, : st.n], rhs[:, st.n :]
    T = -A[:, rows][:, :, keep] / a.unsqueeze(-1)
    u = -g_v[:, rows] / a
    P_KK = P_KE = P_EE = None
    if P is not None:
        P_KK, P_KE, P_EE = P[:, keep][:, :, keep], P[:, keep][:, :, cols], P[:, cols][:, :, cols]
    Q, q = reduced_objective(P_KK, P_KE, P_EE, g_u[:, keep], g_u[:, cols], T, u)
    Jt = residual_jacobian_t(A[:, other][:, :, keep], Q, D[:, other][:, :, other])
    r = solve_transposed_system(Jt, torch.cat([q, g_v[:, other]], 1))
    r_K, r_O = r[:, : keep.size], r[:, keep.size :]
    r_E = mv(T, r_K) - u
    out = torch.empty_like(rhs)
    out[:, keep], out[:, cols] = r_K, r_E
    out[:, st.n + other] = r_O
    out[:, st.n + rows] = eliminated_gradient(P_KE, P_EE, -g_u[:, cols], r_K, r_E) / a
    return out


def _compiled_layout(program: ConeProgram) -> tuple | None:
    """(the compiled engine's cone `Layout`, p equality rows) for CPU programs whose cones
    are zero, nonnegative and second-order only (`dense_kernels`); None otherwise, or where
    numba cannot load."""
    from cvxlayer.solvers import ipm

    cones = program.structure.cones
    second_order = not (cones.exp or cones.power or cones.psd)
    if program.b.device.type != "cpu" or not (second_order and ipm.compiled_engine_supports(cones)):
        return None
    return ipm._compiled_engine().layout(cones)


def _unreliable(min_pivot, max_pivot, r_max, rhs_max, size: int, eps: float):
    """Whether an LU solve of a size × size system can be 1/ε wrong (numpy or torch values,
    per element): a pivot ≤ size·ε·max pivot and ‖r‖∞·max pivot > ‖rhs‖∞/√ε."""
    return (min_pivot <= size * eps * max_pivot) & (r_max * max_pivot > rhs_max / eps**0.5)


def lsqr(op, op_t, rhs: torch.Tensor, tol: float = 1e-10, max_iters: int | None = None):
    """Batched LSQR (Paige & Saunders 1982): min ‖op(r) − rhs‖ for each row of rhs (B, N).

    Each element stops when its residual estimate falls below tol · ‖rhs‖ or its normal
    residual ‖op_t(op(r) − rhs)‖ below tol · ‖op‖‖op(r) − rhs‖ (estimated).

    Returns:
        (r (B, N), iterations (B,)).
    """

    def normalize(t):
        norm = t.norm(dim=1, keepdim=True)
        return t / torch.where(norm > 0, norm, torch.ones_like(norm)), norm

    u, beta = normalize(rhs)
    v, alpha = normalize(op_t(u))
    w, x = v.clone(), torch.zeros_like(v)
    phibar, rhobar = beta.clone(), alpha.clone()
    anorm = alpha.clone()
    b_norm = beta.clamp(min=1e-300)
    active = (beta > 0) & (alpha > 0)
    iters = torch.zeros(rhs.shape[0], dtype=torch.long, device=rhs.device)
    for _ in range(max_iters or 4 * rhs.shape[1]):
        if not bool(active.any()):
            break
        u, beta = normalize(op(v) - alpha * u)
        v, alpha = normalize(op_t(u) - beta * v)
        anorm = torch.sqrt(anorm**2 + alpha**2 + beta**2)
        rho = torch.sqrt(rhobar**2 + beta**2).clamp(min=1e-300)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        phi = c * phibar
        x = torch.where(active, x + (phi / rho) * w, x)
        w = torch.where(active, v - (theta / rho) * w, w)
        rhobar = -c * alpha
        phibar = s * phibar
        iters += active.squeeze(1).long()
        normal = (phibar * alpha * c).abs()
        done = (phibar <= tol * b_norm) | (normal <= tol * anorm * phibar.clamp(min=1e-300))
        active = active & ~done
    return x, iters


# backward="auto": the dense solve up to this many unknowns n + m, LSQR above (the dense
# Jacobian takes (n + m)² numbers per batch element)
DENSE_LIMIT = 1000


class ResidualMapAdjoint:
    """The residual-map adjoint above; `method` ("dense", "lsqr" or "auto") picks the solve
    of Jᵀ r = rhs."""

    supports_quadratic = True

    def __init__(self, method: str) -> None:
        self.method = method
        self.name = method

    def check(self, structure: ConeStructure) -> None:
        ConeProjector.of(structure.cones)  # raises for cones without a torch derivative

    def vjp(
        self,
        program: ConeProgram,
        solution: Solution,
        dx: torch.Tensor,
        dy: torch.Tensor,
        ds: torch.Tensor,
        active: list[int],
    ):
        st = program.structure
        if not active:
            zeros = (t.new_zeros(t.shape) for t in (program.A, program.b, program.c))
            return (*zeros, None if program.P is None else program.P.new_zeros(program.P.shape))
        everyone = len(active) == program.batch_size
        idx = None if everyone else torch.as_tensor(active, device=program.b.device)

        def rows_of(t):  # the active elements' rows (all of them: no copy)
            return t if everyone or t is None else t[idx]

        ops = SparseOps.of(st, program.b.device)
        A, P = rows_of(program.A), rows_of(program.P)
        x, y, s = rows_of(solution.x), rows_of(solution.y), rows_of(solution.s)
        gradients = rows_of(dx), rows_of(dy), rows_of(ds)
        method = self.method
        if method == "auto":
            method = "dense" if st.n + st.m <= DENSE_LIMIT else "lsqr"
        layout = _compiled_layout(program) if method == "dense" else None
        if layout is not None:  # Jᵀ and rhs by one compiled call per thread
            from cvxlayer.diff import dense_kernels

            Jt, rhs = dense_kernels.system(
                ops.arrays(A, P), as_array(y - s), tuple(as_array(g) for g in gradients), layout
            )
            r = solve_transposed_system(torch.as_tensor(Jt), torch.as_tensor(rhs)).to(A)
        else:
            projector = ConeProjector.of(st.cones)
            blocks = projector.jacobian_blocks(y - s, dual=True)

            def D(w):
                return projector.apply_blocks(blocks, w)

            g_x, g_y, g_s = gradients
            rhs = torch.cat([g_x, D(g_y + g_s) - g_s], 1)
            if method == "dense":
                dense_D = projector.dense(blocks, rhs[:, st.n :])
                r = _dense_solve(st, *ops.dense(A, P), dense_D, rhs)
            else:  # matrix-free on the sparse data: memory grows with nnz, not with n·m
                jt, j = _transposed_operator(_BoundProducts(ops, A, P), D, st.n)
                # min ‖Jᵀ S w − rhs‖ with r = S w, S equilibrating the columns of Jᵀ
                S = _inverse_row_norms(j, rhs)
                w, _ = lsqr(lambda v: jt(S * v), lambda u: S * j(u), rhs)
                r = S * w
        r_u, r_v = r[:, : st.n], r[:, st.n :]

        rows, cols = ops.a_rows, ops.a_cols
        grads = [r_v[:, rows] * x[:, cols] - y[:, rows] * r_u[:, cols], -r_v, -r_u]
        if P is not None:
            p_rows, p_cols = ops.p_rows, ops.p_cols
            # an upper-triangle value stands for P_ij and P_ji: off-diagonal gradients double
            full = -(r_u[:, p_rows] * x[:, p_cols] + x[:, p_rows] * r_u[:, p_cols]) / 2
            grads.append(torch.where(ops.p_on_diagonal, full, 2 * full))
        else:
            grads.append(None)
        if everyone:
            return tuple(grads)
        totals = (program.A, program.b, program.c, program.P)
        return tuple(
            None if g is None else t.new_zeros(t.shape).index_copy_(0, idx, g)
            for t, g in zip(totals, grads)
        )


class _BoundProducts:
    """`SparseOps` products with one batch's values bound (v ↦ A v, w ↦ Aᵀ w, v ↦ P v)."""

    def __init__(self, ops: SparseOps, A: torch.Tensor, P: torch.Tensor | None) -> None:
        self.ops, self.A, self.P = ops, A, P

    def a(self, v):
        return self.ops.a(self.A, v)

    def at(self, w):
        return self.ops.at(self.A, w)

    def p(self, v):
        return self.ops.p(self.P, v)


_PROBES = 16


def _inverse_row_norms(j, like: torch.Tensor) -> torch.Tensor:
    """1/‖row i of J‖ per element (B, N), estimated from the operator w ↦ J w alone:
    E[(J z)ᵢ²] = ‖Jᵢ‖² for z with independent ±1 entries, averaged over `_PROBES` probes
    (seeded: the backward stays deterministic). Scaling LSQR's columns by it cut its
    iterations by about a third on sparse QPs with n = 2000–5000."""
    gen = torch.Generator(device=like.device).manual_seed(0)
    total = torch.zeros_like(like)
    for _ in range(_PROBES):
        signs = torch.randint(0, 2, like.shape, generator=gen, device=like.device)
        total += j(2 * signs.to(like.dtype) - 1) ** 2
    norms = (total / _PROBES).sqrt()
    return 1 / torch.where(norms > 0, norms, torch.ones_like(norms))


def _transposed_operator(ops: _BoundProducts, D, n):
    """(r ↦ Jᵀ r, w ↦ J w) without forming J (D symmetric, P symmetric)."""

    def jt(r):
        r_u, r_v = r[:, :n], r[:, n:]
        return torch.cat([-ops.at(r_v) + ops.p(r_u), D(ops.a(r_u)) + r_v - D(r_v)], 1)

    def j(w):
        w_u, w_v = w[:, :n], w[:, n:]
        return torch.cat([ops.at(D(w_v)) + ops.p(w_u), -ops.a(w_u) + w_v - D(w_v)], 1)

    return jt, j
