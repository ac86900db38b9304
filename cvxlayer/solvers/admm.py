"""Mode "torch": SCS 3's ADMM on the homogeneous embedding, for a whole batch in PyTorch.

For each element, with u = (x, y, τ), R = diag(r_x I, R_y, 1), h = (c, b), and the
skew operator M = [[P, Aᵀ], [−A, 0]] (O'Donoghue 2021, "Operator splitting for a
homogeneous embedding of the linear complementarity problem"):

    ũ   = (p − τ̃ g, τ̃),   p = (R + M)⁻¹ R v,   g = (R + M)⁻¹ h,   τ̃ = root₊(p, v)
    u   = Π_{Rⁿ × K* × R₊}(2ũ − v)
    rsk = R (v + u − 2ũ)                         (= (r, s, κ): s and κ of the solution)
    v  ← v + α (u − ũ)

and (x, y, s) = (u_x, u_y, rsk_s) / τ. The matrix R + M is factored once per solve (again
when the adaptive scale changes R_y); every iteration is one solve with the factor, one
batched cone projection, and vector updates. Data are equilibrated first (Ruiz), each
element stops on its own residuals (checked every `_CHECK_EVERY` iterations, the loop's main
host synchronization with direct linear systems; CG reads one flag per inner step), and
finished elements leave the batch. The vector work of an iteration is one fused update
(`admm_update`: a Triton kernel on CUDA) followed by the non-elementwise cone projections.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

import cvxlayer_cuda
from cvxlayer.cones.projections import ConeProjector
from cvxlayer.linalg import inf_norm
from cvxlayer.program import ConeProgram, SparseOps
from cvxlayer.solvers.admm_update import CONE, FREE, NONNEG, admm_update
from cvxlayer.solvers.base import Solution, SolveSettings, Status, floor_tolerance
from cvxlayer.solvers.linsys import make_linsys

_CHECK_EVERY = 10
_RUIZ_PASSES = 10  # OSQP's default; SCS uses 25 but later passes change little
_NORM_MIN, _NORM_MAX = 1e-4, 1e4
_SCALE_MIN, _SCALE_MAX = 1e-6, 1e6
_RESCALE_MIN_ITERS = 100
_SQRT10 = math.sqrt(10.0)


def _reduce(values, index, size, reduce):
    """Per-batch reduction of values (B, k) into `size` buckets by `index` (k,)."""
    out = values.new_zeros(values.shape[0], size)
    return out.scatter_reduce(
        1, index.expand(values.shape[0], -1), values, reduce, include_self=False
    )


def _per_cone(values: torch.Tensor, ids: torch.Tensor, count: int, reduce: str) -> torch.Tensor:
    """Replace each row's value by its cone's max or mean (ids: (m,) cone of each row)."""
    return _reduce(values, ids, count, reduce)[:, ids]


def _limit(norms: torch.Tensor) -> torch.Tensor:
    """Norms below 1e-4 (empty rows/columns) count as 1; above 1e4 as 1e4."""
    return torch.where(norms < _NORM_MIN, torch.ones_like(norms), norms.clamp(max=_NORM_MAX))


def equilibrate(program: ConeProgram, ops: SparseOps, passes: int = _RUIZ_PASSES):
    """Equilibration of [[P, Aᵀ], [A, 0]] as SCS does it: `passes` Ruiz (∞-norm) passes, then
    one 2-norm pass, giving Â = D A E, P̂ = E P E. Row scalings are aggregated within each
    cone (max for Ruiz, mean for the 2-norm pass) so that D⁻¹ K = K. Works on the sparsity
    pattern's values: O(B · nnz) per pass.

    Returns:
        D (B, m), E (B, n).
    """
    st, B = program.structure, program.batch_size
    a_rows, a_cols = ops.a_rows, ops.a_cols
    ids = torch.as_tensor(st.cones.block_ids(), device=program.b.device)
    count = int(ids.max()) + 1 if st.m else 0
    absA = program.A.abs()
    if program.P is not None:
        # each upper-triangle entry of P counts for its row and its column
        p_idx = torch.cat([ops.p_rows, ops.p_cols])
        absP = program.P.abs().repeat(1, 2)
    D, E = program.b.new_ones(B, st.m), program.b.new_ones(B, st.n)
    for k in range(passes + 1):
        ruiz = k < passes
        a_hat = absA * D[:, a_rows] * E[:, a_cols]
        if ruiz:
            row = _reduce(a_hat, a_rows, st.m, "amax")
            col = _reduce(a_hat, a_cols, st.n, "amax")
            if program.P is not None:
                p_hat = absP * E[:, p_idx] * E[:, p_idx.roll(ops.p_rows.numel())]
                col = torch.maximum(col, _reduce(p_hat, p_idx, st.n, "amax"))
        else:
            row = _reduce(a_hat.square(), a_rows, st.m, "sum").sqrt()
            col = _reduce(a_hat.square(), a_cols, st.n, "sum")
            if program.P is not None:
                p_hat = absP * E[:, p_idx] * E[:, p_idx.roll(ops.p_rows.numel())]
                col = col + _reduce(p_hat.square(), p_idx, st.n, "sum")
            col = col.sqrt()
        if st.m:
            row = _per_cone(row, ids, count, "amax" if ruiz else "mean")
        D = D / _limit(row).sqrt()
        E = E / _limit(col).sqrt()
    return D, E


class _Batch:
    """Per-element data and iterates of the elements still running (B_active first)."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)

    def select(self, keep: torch.Tensor) -> None:
        for key, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                self.__dict__[key] = value[keep]
            elif value is not None:
                raise TypeError(key)


class TorchADMM:
    """Mode "torch": batched SCS-style ADMM in PyTorch on the program's device and dtype."""

    name = "torch"

    def solve(
        self, program: ConeProgram, settings: SolveSettings, warm_start: Solution | None = None
    ) -> Solution:
        st = program.structure
        n, m, B = st.n, st.m, program.batch_size
        dtype, device = program.b.dtype, program.b.device
        settings = replace(
            settings,
            eps_abs=floor_tolerance(settings.eps_abs, dtype),
            eps_rel=floor_tolerance(settings.eps_rel, dtype),
            eps_infeas=floor_tolerance(settings.eps_infeas, dtype),
        )
        projector = ConeProjector.of(st.cones)
        ops = SparseOps.of(st, device)
        A, P, b, c = program.A, program.P, program.b, program.c  # A, P: values (B, nnz)
        if settings.normalize:
            D, E = equilibrate(program, ops)
        else:
            D, E = b.new_ones(B, m), b.new_ones(B, n)
        A_hat = D[:, ops.a_rows] * A * E[:, ops.a_cols]
        P_hat = None if P is None else E[:, ops.p_rows] * P * E[:, ops.p_cols]
        zero_rows = torch.zeros(m, dtype=torch.bool, device=device)
        zero_rows[: st.cones.zero] = True
        zero_weight = torch.where(zero_rows, 1e-3, 1.0).to(dtype)

        s = _Batch(
            index=torch.arange(B, device=device),
            A=A,
            P=P,
            b=b,
            c=c,
            D=D,
            E=E,
            A_hat=A_hat,
            P_hat=P_hat,
            b_hat=D * b,
            c_hat=E * c,
            scale=torch.full((B, 1), settings.scale, dtype=dtype, device=device),
            last_rescale=torch.zeros(B, dtype=torch.long, device=device),
            log_factor=torch.zeros(B, dtype=dtype, device=device),
            log_count=torch.zeros(B, dtype=dtype, device=device),
        )
        r_x = settings.rho_x
        linsys = make_linsys(settings.linsys, B, n, m)

        def r_y():
            return zero_weight / s.scale  # (B, m): 1/(1000·scale) on zero rows, 1/scale else

        def r_full(ry):
            """diag(R) = (r_x, …, R_y, 1): (B, n + m + 1)."""
            return torch.cat(
                [ry.new_full((ry.shape[0], n), r_x), ry, ry.new_ones(ry.shape[0], 1)], 1
            )

        def refactor():
            linsys.factor(ops, s.A_hat, s.P_hat, r_x, r_y())
            g_x, g_y = linsys.solve(s.c_hat, s.b_hat, precise=True)
            s.g = torch.cat([g_x, g_y], 1)

        refactor()
        size = n + m + 1
        v = program.b.new_zeros(B, size)
        v[:, -1] = 1.0
        if warm_start is not None:
            ry = r_y()
            x_hat = warm_start.x / E
            y_hat = warm_start.y / D
            s_hat = warm_start.s * D
            v = torch.cat([x_hat, y_hat + s_hat / ry, torch.ones_like(b[:, :1])], 1)
        s.v = v
        s.u = torch.zeros_like(v)
        s.u[:, -1] = 1.0

        anderson = (
            _Anderson(s, settings.acceleration_lookback, size)
            if settings.acceleration_lookback > 0
            else None
        )

        out_x = b.new_full((B, n), float("nan"))
        out_y = b.new_full((B, m), float("nan"))
        out_s = b.new_full((B, m), float("nan"))
        status: list[Status | None] = [None] * B
        iterations = torch.full((B,), settings.max_iters, dtype=torch.long)

        sqrt_size = math.sqrt(size)
        kinds = torch.full((n + m,), FREE, dtype=torch.int8, device=device)
        kinds[n + st.cones.zero : n + st.cones.zero + st.cones.nonneg] = NONNEG
        kinds[n + st.cones.zero + st.cones.nonneg :] = CONE
        if settings.verbose:
            print(f"[torch] vector update and cone kernels: {cvxlayer_cuda.backend_for(b)}")
        for it in range(settings.max_iters):
            ry = r_y()
            if it > 0:  # the embedding is homogeneous: keep the iterate's norm fixed
                s.v = s.v * (sqrt_size / s.v.norm(dim=1, keepdim=True))
            v = s.v
            guess = s.u[:, :n] + s.u[:, -1:] * s.g[:, :n]  # ≈ p_x near convergence (for CG)
            p_x, p_y = linsys.solve(r_x * v[:, :n], ry * v[:, n : n + m], guess)
            weights = r_full(ry)
            ut, u = admm_update(torch.cat([p_x, p_y], 1), v, s.g, weights[:, :-1], kinds, it == 0)
            projector.dual_cones_(u[:, n : n + m])
            s.u = u

            last = it == settings.max_iters - 1
            if it == 0 or (it + 1) % _CHECK_EVERY == 0 or last:
                rsk = weights * (v + u - 2 * ut)  # (r, s, κ): needed only here
                res = _residuals(s, ops, u, rsk, n, m)
                done = _classify(res, settings)
                if last:
                    done = torch.where(done == 0, _unfinished(res), done)
                finished = (done != 0).nonzero().flatten()
                if finished.numel():
                    _store(res, done, finished, s.index, out_x, out_y, out_s, status)
                    iterations[s.index[finished].cpu()] = it + 1
                    keep = (done == 0).nonzero().flatten()
                    if keep.numel() == 0:
                        break
                    s.select(keep)
                    linsys.select(keep)
                    ut, u, rsk = ut[keep], u[keep], rsk[keep]
                    res = {k: val[keep] for k, val in res.items()}
                if settings.verbose:
                    print(
                        f"[torch] iter {it + 1}: {len(s.index)} running, "
                        f"max res_pri {res['res_pri'].max().item():.2e}, "
                        f"max res_dual {res['res_dual'].max().item():.2e}"
                    )
                if settings.adaptive_scale:
                    changed = _update_scale(s, res, it)
                    if bool(changed.any()):
                        refactor()
                        # keep rsk, u, ũ: v⁺ = R⁺⁻¹ rsk + 2ũ − u
                        v_rescaled = rsk / r_full(r_y()) + 2 * ut - u
                        s.v = torch.where(changed.unsqueeze(1), v_rescaled, s.v)
                        if anderson is not None:
                            anderson.reset(s, changed)
            v_next = s.v + settings.alpha * (u - ut)
            if anderson is not None:
                apply = (it + 1) % settings.acceleration_interval == 0
                v_next = anderson.step(s, s.v, v_next, apply)
            s.v = v_next

        return Solution(out_x, out_y, out_s, tuple(status), iterations)


class _Anderson:
    """Type-II Anderson acceleration of the fixed-point map v ↦ T(v), per batch element.

    Keeps the last `memory` differences of residuals f = T(v) − v and of images g = T(v);
    the accelerated point is g − ΔG γ with γ = argmin ‖f − ΔF γ‖² + λ‖γ‖². A step is
    rejected (plain iterate restored, memory cleared) when the next residual is larger than
    the one it was taken from. State lives on the `_Batch`, so finished elements drop out.
    """

    def __init__(self, s: _Batch, memory: int, size: int) -> None:
        B = s.v.shape[0]
        self.memory = memory
        s.aa_dF = s.v.new_zeros(B, size, memory)
        s.aa_dG = s.v.new_zeros(B, size, memory)
        s.aa_f = s.v.new_zeros(B, size)
        s.aa_g = s.v.new_zeros(B, size)
        s.aa_count = torch.zeros(B, dtype=torch.long, device=s.v.device)
        s.aa_pending = torch.zeros(B, dtype=torch.bool, device=s.v.device)
        s.aa_norm = s.v.new_zeros(B)
        s.aa_plain = torch.zeros_like(s.v)

    def reset(self, s: _Batch, which: torch.Tensor) -> None:
        s.aa_count = torch.where(which, torch.zeros_like(s.aa_count), s.aa_count)
        s.aa_pending = s.aa_pending & ~which

    def step(self, s: _Batch, v_in: torch.Tensor, v_out: torch.Tensor, apply: bool):
        """Record (v_in, T(v_in) = v_out); return the next iterate."""
        f = v_out - v_in
        f_norm = f.norm(dim=1)
        # safeguard: the previous accelerated step must not have increased the residual
        # (no `if rejected.any()`: reading a flag would synchronize with the GPU every step)
        rejected = s.aa_pending & (f_norm > s.aa_norm)
        self.reset(s, rejected)
        v_out = torch.where(rejected.unsqueeze(1), s.aa_plain, v_out)
        f = torch.where(rejected.unsqueeze(1), torch.zeros_like(f), f)
        s.aa_pending = torch.zeros_like(s.aa_pending)
        has_prev = s.aa_count > 0
        slot = (s.aa_count - 1) % self.memory
        new_dF = torch.where(has_prev.unsqueeze(1), f - s.aa_f, torch.zeros_like(f))
        new_dG = torch.where(has_prev.unsqueeze(1), v_out - s.aa_g, torch.zeros_like(f))
        rows = torch.arange(f.shape[0], device=f.device)
        s.aa_dF[rows, :, slot] = torch.where(has_prev.unsqueeze(1), new_dF, s.aa_dF[rows, :, slot])
        s.aa_dG[rows, :, slot] = torch.where(has_prev.unsqueeze(1), new_dG, s.aa_dG[rows, :, slot])
        s.aa_f, s.aa_g = f, v_out
        s.aa_count = torch.where(rejected, s.aa_count, s.aa_count + 1)
        if not apply:
            return v_out
        used = (s.aa_count - 1).clamp(max=self.memory).unsqueeze(1)
        filled = torch.arange(self.memory, device=f.device) < used
        mask = filled.to(f.dtype).unsqueeze(1)  # (B, 1, memory)
        dF, dG = s.aa_dF * mask, s.aa_dG * mask
        gram = dF.transpose(1, 2) @ dF
        reg = 1e-10 * gram.diagonal(dim1=1, dim2=2).sum(1).clamp(min=1e-30)
        eye = torch.eye(self.memory, dtype=f.dtype, device=f.device)
        gram = gram + reg[:, None, None] * eye + (1 - mask.squeeze(1)).unsqueeze(-1) * eye
        gamma = torch.linalg.solve(gram, (dF.transpose(1, 2) @ f.unsqueeze(-1))).squeeze(-1)
        accelerated = v_out - (dG @ gamma.unsqueeze(-1)).squeeze(-1)
        use = (s.aa_count > 1) & torch.isfinite(accelerated).all(1)
        s.aa_pending = use
        s.aa_norm = f.norm(dim=1)
        s.aa_plain = v_out
        return torch.where(use.unsqueeze(1), accelerated, v_out)


def _residuals(s: _Batch, ops: SparseOps, u, rsk, n, m) -> dict[str, torch.Tensor]:
    """Residuals in the original (unnormalized) data, SCS's definitions, infinity norms."""
    tau = u[:, -1]
    kappa = rsk[:, -1]
    x = s.E * u[:, :n]  # x·τ
    y = s.D * u[:, n : n + m]  # y·τ
    sl = rsk[:, n : n + m] / s.D  # s·τ
    ax = ops.a(s.A, x)
    aty = ops.at(s.A, y)
    px = ops.p(s.P, x)
    safe_tau = torch.where(tau > 0, tau, torch.ones_like(tau))
    ctx = (s.c * x).sum(1)
    bty = (s.b * y).sum(1)
    xpx = (x * px).sum(1)
    return {
        "tau": tau,
        "kappa": kappa,
        "x": x,
        "y": y,
        "s": sl,
        "res_pri": inf_norm(ax + sl - s.b * tau[:, None]) / safe_tau,
        "res_dual": inf_norm(px + aty + s.c * tau[:, None]) / safe_tau,
        "gap": (xpx / safe_tau + ctx + bty).abs() / safe_tau,
        "scale_pri": torch.maximum(torch.maximum(inf_norm(s.b) * tau, inf_norm(sl)), inf_norm(ax))
        / safe_tau,
        "scale_dual": torch.maximum(torch.maximum(inf_norm(s.c) * tau, inf_norm(px)), inf_norm(aty))
        / safe_tau,
        "scale_gap": torch.maximum(torch.maximum((xpx / safe_tau).abs(), ctx.abs()), bty.abs())
        / safe_tau,
        "ctx": ctx,
        "bty": bty,
        "res_infeas": inf_norm(aty) / torch.where(bty < 0, -bty, torch.full_like(bty, 1e-300)),
        "res_unbdd": torch.maximum(inf_norm(ax + sl), inf_norm(px))
        / torch.where(ctx < 0, -ctx, torch.full_like(ctx, 1e-300)),
        # raw residual norms for the adaptive scale
        "rel_pri": inf_norm(ax + sl - s.b * tau[:, None])
        / torch.maximum(torch.maximum(inf_norm(ax), inf_norm(sl)), inf_norm(s.b) * tau).clamp(
            min=1e-300
        ),
        "rel_dual": inf_norm(px + aty + s.c * tau[:, None])
        / torch.maximum(torch.maximum(inf_norm(px), inf_norm(aty)), inf_norm(s.c) * tau).clamp(
            min=1e-300
        ),
    }


_SOLVED, _INFEASIBLE, _UNBOUNDED = 1, 2, 3
_MAX_ITERS, _INFEASIBLE_INACC, _UNBOUNDED_INACC = 4, 5, 6
_CODE_STATUS = {
    _SOLVED: Status.SOLVED,
    _INFEASIBLE: Status.INFEASIBLE,
    _UNBOUNDED: Status.UNBOUNDED,
    _MAX_ITERS: Status.MAX_ITERS,
    _INFEASIBLE_INACC: Status.INFEASIBLE_INACCURATE,
    _UNBOUNDED_INACC: Status.UNBOUNDED_INACCURATE,
}


def _classify(res, settings: SolveSettings) -> torch.Tensor:
    """(B,) codes: 0 running, else the _SOLVED/_INFEASIBLE/_UNBOUNDED outcome."""
    ea, er = settings.eps_abs, settings.eps_rel
    solved = (
        (res["tau"] > 0)
        & (res["res_pri"] <= ea + er * res["scale_pri"])
        & (res["res_dual"] <= ea + er * res["scale_dual"])
        & (res["gap"] <= ea + er * res["scale_gap"])
    )
    infeasible = (res["bty"] < 0) & (res["res_infeas"] < settings.eps_infeas)
    unbounded = (res["ctx"] < 0) & (res["res_unbdd"] < settings.eps_infeas)
    code = torch.zeros_like(res["tau"], dtype=torch.long)
    code = torch.where(infeasible, _INFEASIBLE, code)
    code = torch.where(unbounded, _UNBOUNDED, code)
    return torch.where(solved, _SOLVED, code)


def _unfinished(res) -> torch.Tensor:
    """Best guess at the iteration limit, as SCS: τ > κ → a solution, else a certificate."""
    code = torch.where(res["bty"] < res["ctx"], _INFEASIBLE_INACC, _UNBOUNDED_INACC)
    return torch.where(res["tau"] > res["kappa"], _MAX_ITERS, code)


def _store(res, done, finished, index, out_x, out_y, out_s, status) -> None:
    code = done[finished]
    tau = res["tau"][finished, None]
    x, y, sl = res["x"][finished], res["y"][finished], res["s"][finished]
    solution_like = (code == _SOLVED) | (code == _MAX_ITERS)
    infeas = (code == _INFEASIBLE) | (code == _INFEASIBLE_INACC)
    unbdd = (code == _UNBOUNDED) | (code == _UNBOUNDED_INACC)
    nan = torch.full_like(tau, float("nan"))
    bty = -res["bty"][finished, None]
    ctx = -res["ctx"][finished, None]
    denom_x = torch.where(solution_like[:, None], tau, torch.where(unbdd[:, None], ctx, nan))
    denom_y = torch.where(solution_like[:, None], tau, torch.where(infeas[:, None], bty, nan))
    rows = index[finished]
    out_x[rows] = x / denom_x
    out_s[rows] = sl / denom_x
    out_y[rows] = y / denom_y
    for row, c in zip(rows.tolist(), code.tolist()):
        status[row] = _CODE_STATUS[c]


def _update_scale(s: _Batch, res, it: int) -> torch.Tensor:
    """SCS 3.3's adaptive scale: geometric mean of the primal/dual residual ratio since the last
    update; rescale an element when it leaves [1/√10, √10] after ≥ 100 iterations."""
    ratio = torch.log(res["rel_pri"].clamp(min=1e-300)) - torch.log(
        res["rel_dual"].clamp(min=1e-300)
    )
    s.log_factor = s.log_factor + ratio
    s.log_count = s.log_count + 1
    factor = torch.exp(s.log_factor / s.log_count)
    new_scale = (s.scale.squeeze(1) * factor).clamp(_SCALE_MIN, _SCALE_MAX)
    due = (it - s.last_rescale) >= _RESCALE_MIN_ITERS
    changed = (
        due & ((factor > _SQRT10) | (factor < 1 / _SQRT10)) & (new_scale != s.scale.squeeze(1))
    )
    s.scale = torch.where(changed.unsqueeze(1), new_scale.unsqueeze(1), s.scale)
    s.last_rescale = torch.where(changed, torch.full_like(s.last_rescale, it), s.last_rescale)
    s.log_factor = torch.where(changed, torch.zeros_like(s.log_factor), s.log_factor)
    s.log_count = torch.where(changed, torch.zeros_like(s.log_count), s.log_count)
    return changed
