"""The exponential cone K_exp = cl{(r, s, t) : s > 0, s·exp(r/s) ≤ t} and its dual:
projections (Friberg 2021) and their Jacobians."""

from __future__ import annotations

import math

import numpy as np
import torch

import cvxlayer_cuda
from cvxlayer.cones.common import eye_like
from cvxlayer.cones.nonsymmetric import Family

# K_exp = cl{(r, s, t) : s > 0, s·exp(r/s) ≤ t}. The projection is found as in Friberg
# (2021), "Projection onto the exponential cone: a univariate root-finding problem":
# cheap candidate projections, then a bracketed root of h(ρ) that parametrizes the
# primal/polar boundary pair, solved here by a fixed number of safeguarded Newton steps
# for the whole batch at once.
_EXP_INF = 1e15
# the cheap candidates settle the projection within this distance (or residual)
# (float64; 1e-5 in lower precision)
_TOL = 1e-8


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
    """(Π_K(v), Π_{K°}(v)) for the exponential cone K, v of shape (..., 3) = (r, s, t): on
    float64 CPU tensors outside autograd the compiled twin (`_compiled`), on CUDA the Triton
    kernel `cvxlayer_cuda.exp_cone` where `cvxlayer_cuda.backend_for(v)` says so, else the
    reference below."""
    compiled = _compiled(v)
    if compiled is not None:
        return compiled
    return cvxlayer_cuda.dispatch(
        "exp_cone.proj_exp_primal_polar", proj_exp_primal_polar_reference, v
    )


def _compiled(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The projections by their compiled twin (`exp_kernels.project_blocks`: per block, the
    cheap candidates, then the root-find, stopping once converged; the batched reference
    costs ~5 ms per 5000 cones on a CPU) for float64 CPU tensors outside autograd; None
    elsewhere, or where numba cannot load."""
    if v.device.type != "cpu" or v.dtype != torch.float64 or v.requires_grad:
        return None
    try:
        from cvxlayer.cones import exp_kernels
    except Exception:  # numba unusable here: the torch code
        return None
    flat = v.detach().reshape(-1, 3).contiguous().numpy()
    primal, polar = np.empty_like(flat), np.empty_like(flat)
    exp_kernels.project_blocks(flat, _TOL, primal, polar)
    return torch.from_numpy(primal).reshape(v.shape), torch.from_numpy(polar).reshape(v.shape)


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

    tol = _TOL if v.dtype == torch.float64 else 1e-5
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
    return eye_like(v) - d_exp(-v)


# ---------------------------------------------------------------- interior point
# Blocks (B, count, 3), 0-indexed: K = {s₁ > 0, s₁ exp(s₀/s₁) ≤ s₂}. The dual barrier is
# f*(z) = −log ψ(z) − log(−z₀) − log z₂ with ψ = z₁ − z₀ − z₀ log(−z₂/z₀) on
# K* = {z₀ < 0, z₂ > 0, ψ > 0}; its conjugate's gradient needs the Wright omega function.
_CENTRAL = (-1.051383945322714, 0.556409619469370, 1.258967884768947)  # −∇f*(p) = p
_OMEGA_STEPS = 5


def wright_omega(x: torch.Tensor) -> torch.Tensor:
    """ω(x) solving ω + log ω = x, for x ≥ 1 (then ω ≥ 1): Newton from ω = 1 + (x − 1)/2
    near 1 and from x − log x beyond (both within a few % of the root)."""
    near = x < 1 + math.pi
    w = torch.where(near, 1 + (x - 1) / 2, x - torch.log(x.clamp(min=1)))
    for _ in range(_OMEGA_STEPS):
        w = w - (w + torch.log(w) - x) / (1 + 1 / w)
    return w


class Barrier:
    """The exponential cone's barrier pieces (`cvxlayer.cones.nonsymmetric.Barrier`)."""

    def __init__(self, like: torch.Tensor) -> None:
        self.weights = like.new_tensor((1.0, 0.0, 1.0))

    def dual_parts(self, z):
        z0, z1, z2 = z.unbind(-1)
        log_ratio = torch.log(-z2 / z0)
        psi = z1 - z0 - z0 * log_ratio
        grad = torch.stack([-log_ratio, torch.ones_like(z0), -z0 / z2], -1)
        zero = torch.zeros_like(z0)
        hess = torch.stack(
            [
                torch.stack([1 / z0, zero, -1 / z2], -1),
                torch.stack([zero, zero, zero], -1),
                torch.stack([-1 / z2, zero, z0 / (z2 * z2)], -1),
            ],
            -2,
        )
        return psi, grad, hess

    def dual_third(self, z, u, v):
        z0, z2 = z[..., 0], z[..., 2]
        u0, u2, v0, v2 = u[..., 0], u[..., 2], v[..., 0], v[..., 2]
        first = -u0 * v0 / (z0 * z0) + u2 * v2 / (z2 * z2)
        last = (u0 * v2 + u2 * v0) / (z2 * z2) - 2 * z0 * u2 * v2 / (z2 * z2 * z2)
        return torch.stack([first, torch.zeros_like(first), last], -1)

    def primal_gradient(self, s):
        s0, s1, s2 = s.unbind(-1)
        w = wright_omega(1 - s0 / s1 - torch.log(s1 / s2))
        g0 = 1 / ((w - 1) * s1)
        g1 = g0 + g0 * torch.log(w * s1 / s2) - 1 / s1
        g2 = w / ((1 - w) * s2)
        return torch.stack([g0, g1, g2], -1)

    def in_primal(self, s):
        s0, s1, s2 = s.unbind(-1)
        return (s1 > 0) & (s2 > 0) & (s1 * torch.log(s2 / s1) - s0 > 0)

    def in_dual(self, z):
        z0, z1, z2 = z.unbind(-1)
        return (z0 < 0) & (z2 > 0) & (z1 - z0 - z0 * torch.log(-z2 / z0) > 0)

    def central(self, like):
        return like.new_tensor(_CENTRAL).expand_as(like).clone()


def interior(group, like: torch.Tensor):
    """The family's handle for the interior-point engine."""
    return Family(Barrier(like))
