"""The PSD cone's interior-point operations as compiled kernels (numba), the twin of the
torch ones in `psd.py`, for the compiled engine (`cvxlayer.solvers.ipm_compiled`).

A block is svec X (k(k+1)/2 rows: the lower triangle by columns, off-diagonals × √2, so
that ⟨svec X, svec Y⟩ = tr XY) at rows [a, a + k(k+1)/2) of a vector. Its scaling is kept
as a congruence and an entrywise factor,

    W(X) = √M ∘ (Fᵀ X F),   Wᵀ(Y) = F (√M ∘ Y) Fᵀ,
    W⁻¹(Y) = F⁻ᵀ (Y / √M) F⁻¹,   W⁻ᵀ(X) = (F⁻¹ X F⁻ᵀ) / √M,   H = WᵀW,

with F (k, k), F⁻¹ and √M (k, k) (`root`) given. In the iterations it is Nesterov–Todd's
(`scaling`, Vandenberghe 2010, §4.3; `psd.Scaling`): F = R, √M = 1, and W(Z) = W⁻ᵀ(S) =
λ = diag(σ). At a solution the backward's (`adjoint_scaling`) is the exact linearization
of the complementarity, F = Q orthogonal.

Pure functions of arrays; outputs are written into arrays passed in.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}  # x/0: inf, no raise
_SQRT2 = math.sqrt(2.0)


@njit(**_OPTIONS)
def side(rows):
    """The side k of a block of k(k+1)/2 rows."""
    return int((math.sqrt(8.0 * rows + 1.0) - 1.0) / 2.0 + 0.5)


@njit(**_OPTIONS)
def to_mat(v, a, k, X):
    """X (k, k) = the symmetric matrix of svec block v[a:]."""
    e = a
    for j in range(k):
        X[j, j] = v[e]
        e += 1
        for i in range(j + 1, k):
            X[i, j] = X[j, i] = v[e] / _SQRT2
            e += 1


@njit(**_OPTIONS)
def to_vec(X, k, out, a):
    """out[a:] = svec of X's symmetric part."""
    e = a
    for j in range(k):
        out[e] = X[j, j]
        e += 1
        for i in range(j + 1, k):
            out[e] = (X[i, j] + X[j, i]) / _SQRT2
            e += 1


@njit(**_OPTIONS)
def unit(k, e, a):
    """e[a:] = svec I."""
    to_vec(np.eye(k), k, e, a)


@njit(**_OPTIONS)
def _lowest(X):
    """The smallest eigenvalue of symmetric X; NaN where X is not finite."""
    if not np.isfinite(X).all():
        return np.nan
    return np.linalg.eigvalsh(X)[0]


@njit(**_OPTIONS)
def margin(v, a, k):
    """The largest t with X − tI ⪰ 0 for X = svec block v[a:]: its smallest eigenvalue."""
    X = np.empty((k, k))
    to_mat(v, a, k, X)
    return _lowest(X)


@njit(**_OPTIONS)
def cholesky(X, L):
    """L Lᵀ = X (lower L, LAPACK's potrf); False where X is not positive definite (also
    the compiled engine's factorization of its dense KKT matrices)."""
    try:
        L[:] = np.linalg.cholesky(X)
    except Exception:
        return False
    return True


@njit(**_OPTIONS)
def scaling(s, z, a, k, F, F_inv, root, sigma, lam):
    """Nesterov–Todd scaling at interior svec blocks (s, z) at row a: with S = L_s L_sᵀ,
    Z = L_z L_zᵀ and L_zᵀ L_s = U diag(σ) Vᵀ, F = R = L_s V diag(σ)^−½, F⁻¹ =
    diag(σ)^−½ Uᵀ L_zᵀ, √M = 1, and λ = svec diag(σ) into lam[a:]. NaN where S or Z is
    not positive definite (the direction then fails and the element stops)."""
    S, Z, Ls, Lz = np.empty((k, k)), np.empty((k, k)), np.empty((k, k)), np.empty((k, k))
    to_mat(s, a, k, S)
    to_mat(z, a, k, Z)
    root[:] = 1.0
    if not (cholesky(S, Ls) and cholesky(Z, Lz)):
        F[:], F_inv[:], sigma[:] = np.nan, np.nan, np.nan
        to_vec(np.diag(sigma), k, lam, a)
        return
    U, sig, Vt = np.linalg.svd(Lz.T @ Ls)
    for i in range(k):
        sigma[i] = sig[i]
    inv_root = 1.0 / np.sqrt(sig)
    F[:] = (Ls @ Vt.T) * inv_root.reshape(1, k)
    F_inv[:] = inv_root.reshape(k, 1) * (U.T @ Lz.T)
    to_vec(np.diag(sig), k, lam, a)


@njit(**_OPTIONS)
def apply_w(F, F_inv, root, k, v, out, a, inverse, transpose):
    """out[a:] = W v, Wᵀ v, W⁻¹ v or W⁻ᵀ v on svec block v[a:] (module docstring)."""
    X = np.empty((k, k))
    to_mat(v, a, k, X)
    if not inverse and not transpose:
        Y = (F.T @ X @ F) * root
    elif not inverse:
        Y = F @ (X * root) @ F.T
    elif not transpose:
        Y = F_inv.T @ (X / root) @ F_inv
    else:
        Y = (F_inv @ X @ F_inv.T) / root
    to_vec(Y, k, out, a)


@njit(**_OPTIONS)
def apply_h(F, F_inv, root, k, v, out, a, inverse):
    """out[a:] = H v = Wᵀ(W v), or H⁻¹ v = W⁻¹(W⁻ᵀ v)."""
    apply_w(F, F_inv, root, k, v, out, a, inverse, inverse)
    apply_w(F, F_inv, root, k, out, out, a, inverse, not inverse)


@njit(**_OPTIONS)
def congruence_matrix(G, k, out):
    """The matrix (k(k+1)/2 square) of X ↦ G X Gᵀ in svec coordinates: entry ((i, j),
    (p, q)) is α_ij α_pq (G_ip G_jq + G_iq G_jp)/2, α = √2 off the diagonal, 1 on it."""
    row = 0
    for j in range(k):
        for i in range(j, k):
            col = 0
            for q in range(k):
                for p in range(q, k):
                    value = 0.5 * (G[i, p] * G[j, q] + G[i, q] * G[j, p])
                    if i != j:
                        value *= _SQRT2
                    if p != q:
                        value *= _SQRT2
                    out[row, col] = value
                    col += 1
            row += 1


@njit(**_OPTIONS)
def _svec_entries(X, k):
    """X's entries in svec order, unscaled."""
    out = np.empty(k * (k + 1) // 2)
    e = 0
    for j in range(k):
        for i in range(j, k):
            out[e] = X[i, j]
            e += 1
    return out


@njit(**_OPTIONS)
def h_matrix(F, root, k, out):
    """H's matrix in svec coordinates (k(k+1)/2 square): C diag(M) Cᵀ for C the matrix of
    X ↦ F X Fᵀ; with √M = 1 (the iterations) that of X ↦ G X G, G = F Fᵀ."""
    if (root == 1.0).all():
        congruence_matrix(F @ F.T, k, out)
        return
    congruence_matrix(F, k, out)
    out[:] = (out * _svec_entries(root * root, k).reshape(1, -1)) @ out.T


@njit(**_OPTIONS)
def winv_t_matrix(F_inv, root, k, out):
    """W⁻ᵀ's matrix in svec coordinates: diag(1/√M) times that of X ↦ F⁻¹ X F⁻ᵀ."""
    congruence_matrix(F_inv, k, out)
    out /= _svec_entries(root, k).reshape(-1, 1)


@njit(**_OPTIONS)
def divide(sigma, k, v, out, a):
    """out[a:] = λ \\ v for λ = diag(σ): X_ij = 2 V_ij / (σ_i + σ_j)."""
    X = np.empty((k, k))
    to_mat(v, a, k, X)
    for i in range(k):
        for j in range(k):
            X[i, j] *= 2.0 / (sigma[i] + sigma[j])
    to_vec(X, k, out, a)


@njit(**_OPTIONS)
def jordan(u, v, k, out, a):
    """out[a:] = u ∘ v = svec((UV + VU)/2)."""
    U, V = np.empty((k, k)), np.empty((k, k))
    to_mat(u, a, k, U)
    to_mat(v, a, k, V)
    to_vec(U @ V, k, out, a)  # svec of the symmetric part


@njit(**_OPTIONS)
def step(sigma, k, d, a):
    """The largest α with λ + α d ⪰ 0 for λ = diag(σ): 1/−λ_min(Λ^−½ D Λ^−½) where that
    eigenvalue is negative (inf: no limit; 0 where d is not finite)."""
    D = np.empty((k, k))
    to_mat(d, a, k, D)
    for i in range(k):
        for j in range(k):
            D[i, j] /= math.sqrt(sigma[i] * sigma[j])
    lowest = _lowest(D)
    if math.isnan(lowest):
        return 0.0
    return -1.0 / lowest if lowest < 0 else np.inf


@njit(**_OPTIONS)
def adjoint_scaling(s, y, a, k, F, F_inv, root, delta):
    """The backward's H at a solution (s, y) (svec blocks at row a), the linearization of
    Y = Π(Y − S), −S = Π°(Y − S): in the eigenbasis Q of Y − S, with s_i, y_i the diagonals
    of QᵀSQ, QᵀYQ (complementary at an exact solution), H(X) = Q (M ∘ (QᵀXQ)) Qᵀ with
    M_ij = (s_i + s_j)/(y_i + y_j), clipped into [1/δ, δ]: 0 between two eigenvalues of Y,
    ∞ between two of S, s_j/y_i across (DΠ's Γ_ij = y_i/(y_i + s_j)); on the central path
    it equals Nesterov–Todd's."""
    S, Y = np.empty((k, k)), np.empty((k, k))
    to_mat(s, a, k, S)
    to_mat(y, a, k, Y)
    Q = np.linalg.eigh(Y - S)[1]
    s_diag, y_diag = np.diag(Q.T @ S @ Q), np.diag(Q.T @ Y @ Q)
    for i in range(k):
        for j in range(k):
            num, den = max(s_diag[i] + s_diag[j], 0.0), max(y_diag[i] + y_diag[j], 0.0)
            ratio = num / den if den > 0 else delta
            root[i, j] = math.sqrt(min(max(ratio, 1.0 / delta), delta))
    F[:] = Q
    F_inv[:] = Q.T


@njit(**_OPTIONS)
def project(v, a, k, out):
    """out[a:] = Π(v) on svec block v[a:] (self-dual): its eigenvalues clipped at 0."""
    X = np.empty((k, k))
    to_mat(v, a, k, X)
    values, vectors = np.linalg.eigh(X)
    to_vec((vectors * np.maximum(values, 0.0)) @ vectors.T, k, out, a)
