"""The PSD cone in SCS's vectorization (lower triangle by columns, off-diagonals × √2;
self-dual): svec helpers, projection, its Jacobian, and the interior-point operations."""

from __future__ import annotations

import functools
import math

import torch

import cvxlayer_cuda
from cvxlayer.cones.common import SymmetricScaling

_SQRT2 = math.sqrt(2.0)


def psd_side(rows: int) -> int:
    """Matrix side k of a vectorized PSD cone with k(k+1)/2 rows."""
    return (math.isqrt(8 * rows + 1) - 1) // 2


@functools.lru_cache(maxsize=64)
def _svec_maps(side: int, device: torch.device, dtype: torch.dtype):
    """Gathers between svec and flattened matrices, built once per side/device/dtype:
    (svec position of each matrix entry, its factor 1/√2 or 1) and (matrix position of each
    svec entry, its factor √2 or 1). svec is the lower triangle column by column."""
    position = torch.empty(side, side, dtype=torch.long)
    k = 0
    for j in range(side):
        for i in range(j, side):
            position[i, j] = position[j, i] = k
            k += 1
    off = ~torch.eye(side, dtype=torch.bool)
    one = torch.ones((), dtype=torch.float64)  # factors in double, then cast: exact √2 scaling
    to_mat = torch.where(off, one / _SQRT2, one).flatten()
    rows, cols = torch.tril_indices(side, side)
    order = torch.argsort(cols * side + rows)  # column by column
    tri = (rows * side + cols)[order]
    to_vec = torch.where(rows != cols, one * _SQRT2, one)[order]
    return tuple(
        t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        for t in (position.flatten(), to_mat, tri, to_vec)
    )


def svec_to_mat(v: torch.Tensor) -> torch.Tensor:
    """(..., k(k+1)/2) scaled lower-triangle vectors ↦ (..., k, k) symmetric matrices."""
    side = psd_side(v.shape[-1])
    position, factor, _, _ = _svec_maps(side, v.device, v.dtype)
    return (v[..., position] * factor).reshape(*v.shape[:-1], side, side)


def mat_to_svec(mat: torch.Tensor) -> torch.Tensor:
    """Inverse of `svec_to_mat`: off-diagonal entries scaled by √2."""
    side = mat.shape[-1]
    _, _, tri, factor = _svec_maps(side, mat.device, mat.dtype)
    return mat.flatten(-2)[..., tri] * factor


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


def _lowest_eigenvalue(mats: torch.Tensor) -> torch.Tensor:
    """(...) the smallest eigenvalue of each symmetric matrix (..., k, k); NaN for a matrix
    with NaN or inf entries or on which LAPACK's eigensolver fails (a failed interior-point
    direction: the engine reports that element instead of the whole batch raising)."""
    finite = torch.isfinite(mats).flatten(-2).all(-1)
    safe = torch.where(finite.unsqueeze(-1).unsqueeze(-1), mats, torch.zeros_like(mats))
    try:
        lowest = torch.linalg.eigvalsh(safe)[..., 0]
    except torch.linalg.LinAlgError:  # rare: one matrix at a time, to find the culprit
        flat = safe.reshape(-1, *mats.shape[-2:])
        lowest = torch.stack([_lowest_or_nan(m) for m in flat]).reshape(mats.shape[:-2])
    return torch.where(finite, lowest, torch.full_like(lowest, float("nan")))


def _lowest_or_nan(mat: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.eigvalsh(mat)[0]
    except torch.linalg.LinAlgError:
        return mat.new_tensor(float("nan"))


# ---------------------------------------------------------------- interior point
# Blocks v (B, count, k(k+1)/2), svec of symmetric k × k matrices; degree k per cone.
def unit(like: torch.Tensor) -> torch.Tensor:
    side = psd_side(like.shape[-1])
    eye = torch.eye(side, dtype=like.dtype, device=like.device)
    return mat_to_svec(eye).expand_as(like).clone()


def margin(v: torch.Tensor) -> torch.Tensor:
    """(B, count): the largest t with v − t e ∈ K: the smallest eigenvalue."""
    return _lowest_eigenvalue(svec_to_mat(v))


def jordan(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u ∘ v = svec((UV + VU)/2)."""
    U, V = svec_to_mat(u), svec_to_mat(v)
    product = U @ V
    return mat_to_svec((product + product.transpose(-1, -2)) / 2)


symmetric = True


def degree(size: int) -> int:
    return psd_side(size)


class Scaling(SymmetricScaling):
    """Nesterov–Todd scaling at interior (S, Z) (Vandenberghe 2010, §4.3): with Cholesky
    factors S = L_s L_sᵀ, Z = L_z L_zᵀ and the SVD L_zᵀ L_s = U diag(σ) Vᵀ,
    R = L_s V diag(σ)^−½, so that W(Z) = Rᵀ Z R and W⁻ᵀ(S) = R⁻¹ S R⁻ᵀ are both
    λ = diag(σ); R⁻¹ = diag(σ)^−½ Uᵀ L_zᵀ. W is not symmetric: Wᵀ(X) = R X Rᵀ."""

    jordan, unit = staticmethod(jordan), staticmethod(unit)

    def __init__(self, s: torch.Tensor, z: torch.Tensor) -> None:
        Ls = torch.linalg.cholesky_ex(svec_to_mat(s))[0]
        Lz = torch.linalg.cholesky_ex(svec_to_mat(z))[0]
        U, sigma, Vh = torch.linalg.svd(Lz.transpose(-1, -2) @ Ls)
        root = sigma.rsqrt()
        self.R = (Ls @ Vh.transpose(-1, -2)) * root.unsqueeze(-2)
        self.R_inv = root.unsqueeze(-1) * (U.transpose(-1, -2) @ Lz.transpose(-1, -2))
        self.sigma = sigma
        self.lam = mat_to_svec(torch.diag_embed(sigma))

    def _congruence(self, M: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
        """svec(Mᵀ V M) (or svec(M V Mᵀ) with `transpose`) for blocks v."""
        M = M.unsqueeze(1) if v.dim() == 4 else M
        left = M if transpose else M.transpose(-1, -2)
        return mat_to_svec(left @ svec_to_mat(v) @ left.transpose(-1, -2))

    def W(self, v: torch.Tensor) -> torch.Tensor:
        return self._congruence(self.R, v, transpose=False)

    def WT(self, v: torch.Tensor) -> torch.Tensor:
        return self._congruence(self.R, v, transpose=True)

    def Winv(self, v: torch.Tensor) -> torch.Tensor:
        return self._congruence(self.R_inv, v, transpose=False)

    def WinvT(self, v: torch.Tensor) -> torch.Tensor:
        return self._congruence(self.R_inv, v, transpose=True)

    def H(self, v: torch.Tensor) -> torch.Tensor:
        return self.WT(self.W(v))

    def Hinv(self, v: torch.Tensor) -> torch.Tensor:
        return self.Winv(self.WinvT(v))

    def div(self, v: torch.Tensor) -> torch.Tensor:
        """λ \\ v for λ = diag(σ): X_ij = 2 V_ij / (σ_i + σ_j)."""
        sums = self.sigma.unsqueeze(-1) + self.sigma.unsqueeze(-2)
        return mat_to_svec(2 * svec_to_mat(v) / sums)

    def step_from_lam(self, d: torch.Tensor) -> torch.Tensor:
        """(B, count) the largest α with λ + α d ⪰ 0: 1 / −λ_min(Λ^−½ D Λ^−½) where that
        eigenvalue is negative (else no limit; 0 where d is not finite)."""
        root = self.sigma.rsqrt()
        scaled = root.unsqueeze(-1) * svec_to_mat(d) * root.unsqueeze(-2)
        lowest = _lowest_eigenvalue(scaled)
        unlimited = torch.where(lowest.isnan(), 0.0, float("inf"))  # a failed direction: no step
        return torch.where(lowest < 0, -1 / lowest, unlimited)
