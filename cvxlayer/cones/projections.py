"""Batched Euclidean projections onto the cones of a `ConeSpec` and their duals.

Every routine works on a batch: z has shape (B, m), rows in SCS order. Cones of one family
and one size are gathered into a single (B, count, size) tensor and projected together, so
there is no Python loop over cones or batch elements. Families are dispatched through a
table (`_FAMILIES`), each entry giving the projection onto the cone and onto its dual.

Moreau: z = Π_K(z) + Π_{K°}(z) with K° = −K*, hence Π_{K*}(z) = z + Π_K(−z).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import cvxlayer_cuda
from cvxlayer.cones.power import d_pow, d_pow_dual, proj_pow, proj_pow_dual
from cvxlayer.cones.spec import ConeSpec, psd_rows

_SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------- second-order cone
def proj_soc(z: torch.Tensor) -> torch.Tensor:
    """Π onto {(t, x) : ‖x‖ ≤ t} for z of shape (..., q), t = z[..., 0]: the Triton kernel
    `cvxlayer_cuda.soc.proj_soc` where `cvxlayer_cuda.backend_for(z)` says so, else the
    reference below."""
    return cvxlayer_cuda.dispatch("soc.proj_soc", proj_soc_reference, z)


def proj_soc_reference(z: torch.Tensor) -> torch.Tensor:
    """Π onto {(t, x) : ‖x‖ ≤ t} for z of shape (..., q), t = z[..., 0], in plain torch."""
    t, x = z[..., :1], z[..., 1:]
    nx = x.norm(dim=-1, keepdim=True)
    scale = (t + nx) / 2
    safe = torch.where(nx > 0, nx, torch.ones_like(nx))
    boundary = torch.cat([scale, scale * x / safe], dim=-1)
    inside = nx <= t
    outside_polar = nx <= -t
    return torch.where(inside, z, torch.where(outside_polar, torch.zeros_like(z), boundary))


# ---------------------------------------------------------------- PSD cone
def _tril_index(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the lower triangle, column by column (SCS's vectorization order)."""
    rows, cols = [], []
    for j in range(side):
        for i in range(j, side):
            rows.append(i)
            cols.append(j)
    return torch.tensor(rows), torch.tensor(cols)


def psd_side(rows: int) -> int:
    """Matrix side k of a vectorized PSD cone with k(k+1)/2 rows."""
    return (math.isqrt(8 * rows + 1) - 1) // 2


def svec_to_mat(v: torch.Tensor) -> torch.Tensor:
    """(..., k(k+1)/2) scaled lower-triangle vectors ↦ (..., k, k) symmetric matrices."""
    side = psd_side(v.shape[-1])
    rows, cols = _tril_index(side)
    rows, cols = rows.to(v.device), cols.to(v.device)
    off = (rows != cols).to(v.dtype)
    vals = v / (1 + off * (_SQRT2 - 1))
    mat = v.new_zeros(*v.shape[:-1], side, side)
    mat[..., rows, cols] = vals
    mat[..., cols, rows] = vals
    return mat


def mat_to_svec(mat: torch.Tensor) -> torch.Tensor:
    """Inverse of `svec_to_mat`: off-diagonal entries scaled by √2."""
    side = mat.shape[-1]
    rows, cols = _tril_index(side)
    rows, cols = rows.to(mat.device), cols.to(mat.device)
    off = (rows != cols).to(mat.dtype)
    return mat[..., rows, cols] * (1 + off * (_SQRT2 - 1))


def proj_psd(v: torch.Tensor) -> torch.Tensor:
    """Π onto the PSD cone in SCS's scaled lower-triangle vectorization, v: (..., rows): the
    Triton kernel `cvxlayer_cuda.psd` (sides up to `cvxlayer_cuda.MAX_PSD_SIDE`) where
    `cvxlayer_cuda.backend_for(v)` says so, else the reference below."""
    if psd_side(v.shape[-1]) > cvxlayer_cuda.MAX_PSD_SIDE:
        return proj_psd_reference(v)
    return cvxlayer_cuda.dispatch("psd.proj_psd", proj_psd_reference, v)


def proj_psd_reference(v: torch.Tensor) -> torch.Tensor:
    """Π onto the PSD cone (svec blocks v (..., rows)) by torch's batched `eigh`."""
    evals, evecs = torch.linalg.eigh(svec_to_mat(v))
    mat = (evecs * evals.clamp(min=0).unsqueeze(-2)) @ evecs.transpose(-1, -2)
    return mat_to_svec(mat)


# ---------------------------------------------------------------- exponential cone
# K_exp = cl{(r, s, t) : s > 0, s·exp(r/s) ≤ t}. The projection is found as in Friberg
# (2021), "Projection onto the exponential cone: a univariate root-finding problem":
# cheap candidate projections, then a bracketed root of h(ρ) that parametrizes the
# primal/polar boundary pair, solved here by a fixed number of safeguarded Newton steps
# for the whole batch at once.
_EXP_INF = 1e15


def _exp_h(r, s, t, rho):
    e_pos, e_neg = torch.exp(rho), torch.exp(-rho)
    quad = rho * (rho - 1) + 1
    f = ((rho - 1) * r + s) * e_pos - (r - rho * s) * e_neg - quad * t
    df = (rho * r + s) * e_pos + (r - (rho - 1) * s) * e_neg - (2 * rho - 1) * t
    return f, df


def _exp_bracket(r, s, t, pdist, ddist):
    """Lower and upper bounds on the root ρ of h (Friberg 2021, §4)."""
    inf = torch.full_like(r, _EXP_INF)
    low, upr = -inf, inf
    base_low, base_upr = -inf, inf
    Dp = torch.sqrt((pdist**2 - torch.clamp(s, max=0) ** 2).clamp(min=0))
    Dd = torch.sqrt((ddist**2 - torch.clamp(r, max=0) ** 2).clamp(min=0))
    root = torch.sqrt((r * r + s * s - r * s).clamp(min=0))

    # bound from t0 > 0 (primal psi) and t0 < 0 (dual psi)
    safe_r = torch.where(r != 0, r, torch.ones_like(r))
    safe_s = torch.where(s != 0, s, torch.ones_like(s))
    psi_p = torch.where(
        r > s,
        (r - s + root) / safe_r,
        -s / torch.where(r - s - root != 0, r - s - root, -torch.ones_like(r)),
    )
    ppsi = ((psi_p - 1) * r + s) / (psi_p * (psi_p - 1) + 1)
    psi_d = torch.where(
        s > r,
        (r - root) / safe_s,
        (r - s) / torch.where(r + root != 0, r + root, torch.ones_like(r)),
    )
    dpsi = (r - psi_d * s) / (psi_d * (psi_d - 1) + 1)
    tiny = torch.finfo(r.dtype).tiny
    low = torch.where(
        t > 0, torch.maximum(low, torch.log(t.clamp(min=tiny) / ppsi.clamp(min=tiny))), low
    )
    upr = torch.where(
        t < 0, torch.minimum(upr, -torch.log((-t).clamp(min=tiny) / dpsi.clamp(min=tiny))), upr
    )

    pos_r = r > 0
    base_low = torch.where(pos_r, 1 - s / safe_r, base_low)
    low = torch.where(pos_r, torch.maximum(low, base_low), low)
    tpu = torch.clamp(torch.minimum(Dd, Dp + t), min=1e-12)
    pomega = torch.exp(low.clamp(max=700)) / (low * (low - 1) + 1)
    pomega = torch.where(low < 2, torch.clamp(pomega, max=math.exp(2.0) / 3), pomega)
    cur = torch.maximum(low, base_low + tpu / safe_r / pomega)
    upr = torch.where(pos_r, torch.minimum(upr, cur), upr)

    pos_s = s > 0
    base_upr = torch.where(pos_s, r / safe_s, base_upr)
    upr = torch.where(pos_s, torch.minimum(upr, base_upr), upr)
    tdl = -torch.clamp(torch.minimum(Dp, Dd - t), min=1e-12)
    domega = -torch.exp((-upr).clamp(max=700)) / (upr * (upr - 1) + 1)
    domega = torch.where(upr > -1, torch.clamp(domega, min=-math.e / 3), domega)
    cur = torch.minimum(upr, base_upr - tdl / safe_s / domega)
    low = torch.where(pos_s, torch.maximum(low, cur), low)

    low2 = torch.minimum(low, upr).clamp(min=base_low).clamp(max=base_upr)
    upr2 = torch.maximum(low, upr).clamp(min=base_low).clamp(max=base_upr)
    return low2, upr2


def _exp_root(r, s, t, low, upr, iters: int = 30, check_every: int = 3):
    """Safeguarded Newton on h over [low, upr] for all elements at once (Friberg's rule: a
    step leaving the bracket is replaced by 0.05·x + 0.95·(the bracket end it crossed)).
    Stops when no element moved by more than 1e-12 relative in the last step (checked every
    `check_every` steps)."""
    x = (low + upr) / 2
    for k in range(iters):
        f, df = _exp_h(r, s, t, x)
        low = torch.where(f < 0, x, low)
        upr = torch.where(f < 0, upr, x)
        newton = x - f / torch.where(df > 1e-13, df, torch.ones_like(df))
        newton = torch.where(torch.isfinite(newton) & (df > 1e-13), newton, (low + upr) / 2)
        x_new = torch.where(
            newton >= upr,
            torch.minimum(0.05 * x + 0.95 * upr, upr),
            torch.where(newton <= low, torch.maximum(0.05 * x + 0.95 * low, low), newton),
        )
        x_new = torch.where(f == 0, x, x_new)
        if (k + 1) % check_every == 0:
            moved = (x_new - x).abs() > 1e-12 * x.abs().clamp(min=1)
            if not bool(moved.any()):
                return x_new
        x = x_new
    return x


def _exp_from_rho(r, s, t, rho):
    """Primal and polar candidates from the root ρ, with their distances to v."""
    quad = rho * (rho - 1) + 1
    lin_p = (rho - 1) * r + s
    ep = torch.exp(rho.clamp(max=700))
    vp = torch.stack([rho * lin_p / quad, lin_p / quad, ep * lin_p / quad], -1)
    ok_p = (lin_p > 0) & torch.isfinite(ep)
    lin_d = r - rho * s
    ed = torch.exp((-rho).clamp(max=700))
    vd = torch.stack([lin_d / quad, (1 - rho) * lin_d / quad, -ed * lin_d / quad], -1)
    ok_d = (lin_d > 0) & torch.isfinite(ed)
    return vp, ok_p, vd, ok_d


def proj_exp_primal_polar(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Π_K(v), Π_{K°}(v)) for the exponential cone K, v of shape (..., 3) = (r, s, t): the
    Triton kernel `cvxlayer_cuda.exp_cone` where `cvxlayer_cuda.backend_for(v)` says so,
    else the reference below."""
    return cvxlayer_cuda.dispatch(
        "exp_cone.proj_exp_primal_polar", proj_exp_primal_polar_reference, v
    )


def proj_exp_primal_polar_reference(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Π_K(v), Π_{K°}(v)) for the exponential cone K, v of shape (..., 3), in plain torch."""
    r, s, t = v[..., 0], v[..., 1], v[..., 2]
    zero = torch.zeros_like(r)
    # heuristic primal projection: perspective boundary, or perspective interior if better
    vp = torch.stack([torch.clamp(r, max=0), zero, torch.clamp(t, min=0)], -1)
    pdist = (v - vp).norm(dim=-1)
    s_pos = torch.where(s > 0, s, torch.ones_like(s))
    tp = torch.maximum(t, s_pos * torch.exp((r / s_pos).clamp(max=700)))
    interior_p = (s > 0) & (tp - t < pdist)
    vp = torch.where(interior_p[..., None], torch.stack([r, s, tp], -1), vp)
    pdist = torch.where(interior_p, tp - t, pdist)
    # heuristic polar projection
    vd = torch.stack([zero, torch.clamp(s, max=0), torch.clamp(t, max=0)], -1)
    ddist = (v - vd).norm(dim=-1)
    r_pos = torch.where(r > 0, r, torch.ones_like(r))
    td = torch.minimum(t, -r_pos * torch.exp((s / r_pos - 1).clamp(max=700)))
    interior_d = (r > 0) & (t - td < ddist)
    vd = torch.where(interior_d[..., None], torch.stack([r, s, td], -1), vd)
    ddist = torch.where(interior_d, t - td, ddist)

    tol = 1e-8 if v.dtype == torch.float64 else 1e-5
    err = (vp + vd - v).abs().amax(-1)
    done = ((s <= 0) & (r <= 0)) | (torch.minimum(pdist, ddist) <= tol)
    done = done | ((err <= tol) & ((vp * vd).sum(-1) <= tol))
    if bool(done.all()):
        return vp, vd

    # root search only where the cheap candidates do not settle the projection
    shape = r.shape
    todo = (~done).reshape(-1).nonzero().squeeze(1)
    r, s, t = (a.reshape(-1)[todo] for a in (r, s, t))
    pdist, ddist = pdist.reshape(-1)[todo], ddist.reshape(-1)[todo]
    low, upr = _exp_bracket(r, s, t, pdist, ddist)
    rho = _exp_root(r, s, t, low, upr)
    cand_p, ok_p, cand_d, ok_d = _exp_from_rho(r, s, t, rho)
    v_todo = v.reshape(-1, 3)[todo]
    better_p = ok_p & ((cand_p - v_todo).norm(dim=-1) <= pdist)
    better_d = ok_d & ((cand_d - v_todo).norm(dim=-1) <= ddist)
    vp, vd = vp.reshape(-1, 3).clone(), vd.reshape(-1, 3).clone()
    vp[todo] = torch.where(better_p[:, None], cand_p, vp[todo])
    vd[todo] = torch.where(better_d[:, None], cand_d, vd[todo])
    return vp.reshape(*shape, 3), vd.reshape(*shape, 3)


def proj_exp(v: torch.Tensor) -> torch.Tensor:
    """Π onto K_exp."""
    return proj_exp_primal_polar(v)[0]


def proj_exp_dual(v: torch.Tensor) -> torch.Tensor:
    """Π onto K_exp* = −(K_exp)°: Π_{K*}(v) = −Π_{K°}(−v)."""
    return -proj_exp_primal_polar(-v)[1]


# ---------------------------------------------------------------- derivatives
# Each takes blocks z (..., size) and returns the Jacobians (..., size, size) of the
# projection at z (a generalized Jacobian where the projection is not differentiable).
def _eye_like(z: torch.Tensor) -> torch.Tensor:
    size = z.shape[-1]
    return torch.eye(size, dtype=z.dtype, device=z.device).expand(*z.shape, size)


# The zero and nonnegative cones project elementwise: their Jacobians are diagonal and are
# returned as the diagonal itself, (..., size), never as (..., size, size).
def d_identity(z: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(z)


def d_zero(z: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(z)


def d_nonneg(z: torch.Tensor) -> torch.Tensor:
    return (z > 0).to(z.dtype)


def d_soc(z: torch.Tensor) -> torch.Tensor:
    """DΠ_SOC: I inside, 0 in the polar, else ½[[1, x̄ᵀ], [x̄, (1 + t/‖x‖) I − (t/‖x‖) x̄x̄ᵀ]]."""
    t, x = z[..., :1], z[..., 1:]
    nx = x.norm(dim=-1, keepdim=True)
    safe = torch.where(nx > 0, nx, torch.ones_like(nx))
    xb = x / safe
    ratio = (t / safe).unsqueeze(-1)
    q = z.shape[-1]
    eye = torch.eye(q - 1, dtype=z.dtype, device=z.device)
    lower = (1 + ratio) * eye - ratio * xb.unsqueeze(-1) * xb.unsqueeze(-2)
    top = torch.cat([torch.ones_like(t), xb], -1).unsqueeze(-2)
    bottom = torch.cat([xb.unsqueeze(-1), lower], -1)
    boundary = 0.5 * torch.cat([top, bottom], -2)
    inside = (nx <= t).unsqueeze(-1)
    polar = (nx <= -t).unsqueeze(-1)
    return torch.where(
        inside, _eye_like(z), torch.where(polar, torch.zeros_like(boundary), boundary)
    )


def d_psd(v: torch.Tensor) -> torch.Tensor:
    """DΠ_PSD in svec coordinates: H ↦ Q (Γ ∘ (Qᵀ H Q)) Qᵀ with
    Γ_ij = (λᵢ₊ − λⱼ₊)/(λᵢ − λⱼ) (1[λᵢ > 0] when λᵢ = λⱼ), applied to each basis vector."""
    lam, Q = torch.linalg.eigh(svec_to_mat(v))
    lp = lam.clamp(min=0)
    diff = lam.unsqueeze(-1) - lam.unsqueeze(-2)
    same = diff.abs() <= 1e-12 * (1 + lam.abs().amax(-1, keepdim=True).unsqueeze(-1))
    pos = (lam > 0).to(v.dtype)
    gamma = torch.where(
        same,
        (pos.unsqueeze(-1) + pos.unsqueeze(-2)) / 2,
        (lp.unsqueeze(-1) - lp.unsqueeze(-2)) / torch.where(same, torch.ones_like(diff), diff),
    )
    size = v.shape[-1]
    basis = svec_to_mat(torch.eye(size, dtype=v.dtype, device=v.device))  # (size, k, k)
    Qe = Q.unsqueeze(-3)  # (..., 1, k, k)
    inner = Qe.transpose(-1, -2) @ basis @ Qe
    images = Qe @ (gamma.unsqueeze(-3) * inner) @ Qe.transpose(-1, -2)  # (..., size, k, k)
    return mat_to_svec(images).transpose(-1, -2)  # column j = D e_j


def _exp_boundary_point(v: torch.Tensor, rho0: torch.Tensor) -> torch.Tensor:
    """Π_K(v) on the curved boundary as a function of v, through one Newton step on h at the
    root ρ₀ (exact value, and the implicit-function derivative dρ/dv = −∂h/∂v / h′)."""
    r, s, t = v[..., 0], v[..., 1], v[..., 2]
    f, df = _exp_h(r, s, t, rho0)
    rho = rho0 - f / df
    lin = ((rho - 1) * r + s) / (rho * (rho - 1) + 1)
    return torch.stack([rho * lin, lin, torch.exp(rho) * lin], -1)


def d_exp(v: torch.Tensor) -> torch.Tensor:
    """DΠ_{K_exp}(v): I inside K, 0 in the polar, diag(r<0, 0, t>0) on the flat face
    {(r, 0, t): r ≤ 0 ≤ t}, the Jacobian of (r, s) ↦ (r, s, s·exp(r/s)) where the projection
    only lifted t, and the derivative of the curved-boundary point elsewhere."""
    flat = v.reshape(-1, 3)
    p, d = proj_exp_primal_polar(flat)
    scale = 1 + flat.norm(dim=-1)
    tol = 1e-9 * scale
    inside = (p - flat).norm(dim=-1) <= tol
    polar = p.norm(dim=-1) <= tol
    face = ~inside & ~polar & (p[:, 1] <= tol)
    rho0 = p[:, 0] / torch.where(p[:, 1] > 0, p[:, 1], torch.ones_like(p[:, 1]))
    # The projection returned the candidate (r, s, s·exp(r/s)) (same r, s): differentiate that
    # map. Also far out (ρ ≪ 0), where the boundary is that graph and e^{−ρ} in h overflows.
    same_rs = (p[:, :2] == flat[:, :2]).all(-1)
    steep = ~inside & ~polar & ~face & (same_rs | (rho0 < -30))
    curved = ~inside & ~polar & ~face & ~steep
    jac = torch.zeros(flat.shape[0], 3, 3, dtype=v.dtype, device=v.device)
    jac[inside] = torch.eye(3, dtype=v.dtype, device=v.device)
    face_diag = torch.stack(
        [(flat[:, 0] < 0).to(v.dtype), torch.zeros_like(flat[:, 0]), (flat[:, 2] > 0).to(v.dtype)],
        -1,
    )
    jac[face] = torch.diag_embed(face_diag[face])
    e_rho = torch.exp(rho0[steep])
    graph = torch.zeros(int(steep.sum()), 3, 3, dtype=v.dtype, device=v.device)
    graph[:, 0, 0] = graph[:, 1, 1] = 1
    graph[:, 2, 0], graph[:, 2, 1] = e_rho, (1 - rho0[steep]) * e_rho
    jac[steep] = graph
    if bool(curved.any()):
        jac[curved] = torch.func.vmap(torch.func.jacrev(_exp_boundary_point))(
            flat[curved], rho0[curved]
        )
    return jac.reshape(*v.shape, 3)


def d_exp_dual(v: torch.Tensor) -> torch.Tensor:
    """DΠ_{K*}(v) = I − DΠ_K(−v), from Π_{K*}(v) = v + Π_K(−v)."""
    return _eye_like(v) - d_exp(-v)


# ---------------------------------------------------------------- the table
def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _zero(z: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(z)


def _nonneg(z: torch.Tensor) -> torch.Tensor:
    return z.clamp(min=0)


@dataclass(frozen=True)
class _Family:
    """Projections of one cone family onto K and K*, and their Jacobians, on
    (B, count, size) blocks (power cones also take their exponents α, shape (count,))."""

    primal: Callable[[torch.Tensor], torch.Tensor]
    dual: Callable[[torch.Tensor], torch.Tensor]
    d_primal: Callable[[torch.Tensor], torch.Tensor]
    d_dual: Callable[[torch.Tensor], torch.Tensor]


_FAMILIES: dict[str, _Family] = {
    "zero": _Family(_zero, _identity, d_zero, d_identity),
    "nonneg": _Family(_nonneg, _nonneg, d_nonneg, d_nonneg),
    "soc": _Family(proj_soc, proj_soc, d_soc, d_soc),
    "psd": _Family(proj_psd, proj_psd, d_psd, d_psd),
    "exp": _Family(proj_exp, proj_exp_dual, d_exp, d_exp_dual),
    "exp_dual": _Family(proj_exp_dual, proj_exp, d_exp_dual, d_exp),
    "power": _Family(proj_pow, proj_pow_dual, d_pow, d_pow_dual),
}


@dataclass(frozen=True, eq=False)
class _Group:
    """Cones of one family and one size: their rows as a (count, size) index, and the
    exponents (count,) of power cones."""

    family: str
    rows: torch.Tensor
    alpha: torch.Tensor | None = None
    _alpha_on: dict = field(default_factory=dict)  # (device, dtype) ↦ alpha there, made once

    def _call(self, fn, block: torch.Tensor) -> torch.Tensor:
        if self.alpha is None:
            return fn(block)
        key = (block.device, block.dtype)
        if key not in self._alpha_on:
            self._alpha_on[key] = self.alpha.to(block.device, block.dtype)
        return fn(block, self._alpha_on[key])

    def project(self, block: torch.Tensor, dual: bool) -> torch.Tensor:
        fam = _FAMILIES[self.family]
        return self._call(fam.dual if dual else fam.primal, block)

    def jacobian(self, block: torch.Tensor, dual: bool) -> torch.Tensor:
        fam = _FAMILIES[self.family]
        return self._call(fam.d_dual if dual else fam.d_primal, block)


class ConeProjector:
    """Π_K and Π_{K*} for every cone of a `ConeSpec`, on batches z of shape (B, m).

    Args:
        cones: the cone K.
    """

    def __init__(self, cones: ConeSpec) -> None:
        self.cones = cones
        self.groups: list[_Group] = []
        offset = 0

        def add(family: str, count: int, size: int) -> None:
            nonlocal offset
            if count and size:
                rows = offset + torch.arange(count * size).reshape(count, size)
                self.groups.append(_Group(family, rows))
                offset += count * size

        add("zero", 1, cones.zero)
        add("nonneg", 1, cones.nonneg)
        for q in cones.soc:  # merged below into one group per size
            add("soc", 1, q)
        for k in cones.psd:
            add("psd", 1, psd_rows(k))
        add("exp", cones.exp, 3)
        add("exp_dual", cones.exp_dual, 3)
        self.groups = _merge_equal_groups(self.groups)
        if cones.power:
            rows = offset + torch.arange(3 * len(cones.power)).reshape(-1, 3)
            alpha = torch.tensor(cones.power, dtype=torch.float64)
            self.groups.append(_Group("power", rows, alpha))
        self._device_cache: dict = {}

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(cones: ConeSpec) -> ConeProjector:
        """The projector of a cone, built once (it holds index tensors per device)."""
        return ConeProjector(cones)

    def _rows(self, group: _Group, device: torch.device) -> torch.Tensor:
        key = (id(group), device)
        if key not in self._device_cache:
            self._device_cache[key] = group.rows.to(device)
        return self._device_cache[key]

    def _apply(self, z: torch.Tensor, dual: bool) -> torch.Tensor:
        out = torch.empty_like(z)
        for group in self.groups:
            rows = self._rows(group, z.device)
            block = z[:, rows]  # (B, count, size)
            out[:, rows] = group.project(block, dual)
        return out

    def dual_cones_(self, z: torch.Tensor) -> None:
        """Π_{K*} in place on the rows of z (B, m) outside the zero and nonnegative cones
        (those are elementwise and done by the solver's fused vector update)."""
        for group in self.groups:
            if group.family not in ("zero", "nonneg"):
                rows = self._rows(group, z.device)
                z[:, rows] = group.project(z[:, rows], dual=True)

    def primal(self, z: torch.Tensor) -> torch.Tensor:
        """Π_K(z), z: (B, m)."""
        return self._apply(z, dual=False)

    def jacobian_blocks(self, z: torch.Tensor, dual: bool) -> list:
        """[(rows (count, size), J)] of DΠ_K (DΠ_{K*} if `dual`): J is (B, count, size, size)
        per cone, or the diagonal (B, count, size) for the elementwise zero/nonneg cones."""
        out = []
        for group in self.groups:
            rows = self._rows(group, z.device)
            out.append((rows, group.jacobian(z[:, rows], dual)))
        return out

    def jacobian(self, z: torch.Tensor, dual: bool) -> torch.Tensor:
        """(B, m, m) block-diagonal Jacobian of Π_K (or Π_{K*} if `dual`) at z (B, m)."""
        return self.dense(self.jacobian_blocks(z, dual), z)

    @staticmethod
    def dense(blocks: list, like: torch.Tensor) -> torch.Tensor:
        """The (B, m, m) matrix of `jacobian_blocks`' output (`like`: any (B, m) tensor)."""
        jac = like.new_zeros(like.shape[0], like.shape[1], like.shape[1])
        for rows, block in blocks:
            if block.dim() == 3:  # a diagonal
                jac[:, rows, rows] = block
            else:
                jac[:, rows.unsqueeze(-1), rows.unsqueeze(-2)] = block
        return jac

    @staticmethod
    def apply_blocks(blocks: list, w: torch.Tensor) -> torch.Tensor:
        """DΠ w for w (B, m), with `blocks` from `jacobian_blocks` (never forms the m × m)."""
        out = torch.zeros_like(w)
        for rows, jac in blocks:
            if jac.dim() == 3:
                out[:, rows] = jac * w[:, rows]
            else:
                out[:, rows] = (jac @ w[:, rows].unsqueeze(-1)).squeeze(-1)
        return out

    def dual(self, z: torch.Tensor) -> torch.Tensor:
        """Π_{K*}(z), z: (B, m)."""
        return self._apply(z, dual=True)


def _merge_equal_groups(groups: list[_Group]) -> list[_Group]:
    """Join groups of the same family and size into one (count, size) index each."""
    merged: dict[tuple[str, int], list[torch.Tensor]] = {}
    for g in groups:
        merged.setdefault((g.family, g.rows.shape[1]), []).append(g.rows)
    return [_Group(family, torch.cat(rows, dim=0)) for (family, _), rows in merged.items()]
