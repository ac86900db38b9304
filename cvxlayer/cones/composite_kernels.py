"""The cone K of the compiled interior point (`cvxlayer.solvers.ipm_compiled`) as one
object: its second-order blocks (`soc_kernels`; the orthant's rows are one-row blocks), its
PSD blocks (`psd_kernels`) and then its 3-d nonsymmetric blocks (`nonsymmetric_kernels`:
exponential, then power), and the operations the engine needs on all of them, each the
twin of a method of a torch family (`cvxlayer.cones.soc`, `.psd`, `.nonsymmetric`): the
scaling, W⁻ᵀ, H and H⁻¹, the Newton step's offset and right-hand sides, the scaled
direction and the step to the boundary. The engine calls these and never asks which family
a row belongs to.

A `Layout` says where the blocks are, for cone rows v (mc,) (the equality rows apart):
SOC block k is v[starts[k]:starts[k + 1]]; PSD block j is v[psd[j, 0]:psd[j + 1, 0]]
(psd[0, 0] = starts[-1]), its scaling at offsets psd[j, 1] (k² entries) and psd[j, 2] (k)
of the State's PSD arrays; nonsymmetric block i is v[o + 3i : o + 3i + 3] with
o = psd[-1, 0], of family kinds[i] with parameter params[i]. A `State` holds one iterate's
scaling (allocated once per solve by `state`).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from cvxlayer.cones import nonsymmetric_kernels as ns
from cvxlayer.cones import psd_kernels as psd
from cvxlayer.cones import soc_kernels as soc

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}

Layout = namedtuple("Layout", "starts psd kinds params")
# w, eta, lam: the SOC blocks' Nesterov–Todd scaling (lam also the PSD blocks' λ); F,
# F_inv, root, sigma: the PSD blocks' (`psd_kernels`); U, L_inv (count, 3, 3): the
# nonsymmetric blocks' H = U Uᵀ and W⁻ᵀ, with ψ, ∇ψ, ∇²ψ, ∇f*, ∇²f* at z
State = namedtuple("State", "w eta lam F F_inv root sigma U L_inv grad hess psi g_psi H_psi")


def layout_of(sizes: list[int], sides: list[int], kinds: list[int], params: list[float]) -> Layout:
    """A `Layout` from the SOC blocks' sizes, the PSD blocks' sides and the nonsymmetric
    blocks' kinds, params."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    k = np.asarray(sides, dtype=np.int64)
    psd_at = np.zeros((k.size + 1, 3), dtype=np.int64)
    psd_at[:, 0] = starts[-1] + np.concatenate([[0], np.cumsum(k * (k + 1) // 2)])
    psd_at[1:, 1], psd_at[1:, 2] = np.cumsum(k * k), np.cumsum(k)
    return Layout(
        starts, psd_at, np.asarray(kinds, dtype=np.int64), np.asarray(params, dtype=float)
    )


@njit(**_OPTIONS)
def state(lay):
    """An uninitialized `State` for `lay`."""
    mc, count = lay.psd[-1, 0] + 3 * lay.kinds.size, lay.kinds.size
    squares, sides = lay.psd[-1, 1], lay.psd[-1, 2]
    return State(
        np.empty(mc), np.empty(lay.starts.size - 1), np.empty(mc),
        np.empty(squares), np.empty(squares), np.empty(squares), np.empty(sides),
        np.empty((count, 3, 3)), np.empty((count, 3, 3)), np.empty((count, 3)),
        np.empty((count, 3, 3)), np.empty(count), np.empty((count, 3)), np.empty((count, 3, 3)),
    )  # fmt: skip


@njit(**_OPTIONS)
def _rows(lay, i):
    first = lay.psd[-1, 0] + 3 * i
    return first, first + 3


@njit(**_OPTIONS)
def _psd_block(lay, st, j):
    """PSD block j: (first row, side k, its scaling F, F⁻¹, √M (k, k) and σ (k,))."""
    a = lay.psd[j, 0]
    k = psd.side(lay.psd[j + 1, 0] - a)
    o, q = lay.psd[j, 1], lay.psd[j, 2]
    F = st.F[o : o + k * k].reshape((k, k))
    F_inv, root = st.F_inv[o : o + k * k].reshape((k, k)), st.root[o : o + k * k].reshape((k, k))
    return a, k, F, F_inv, root, st.sigma[q : q + k]


@njit(**_OPTIONS)
def _psd_count(lay):
    return lay.psd.shape[0] - 1


@njit(**_OPTIONS)
def symmetric(lay):
    return lay.kinds.size == 0


@njit(**_OPTIONS)
def degree(lay):
    return soc.degree(lay.starts) + lay.psd[-1, 2] + 3 * lay.kinds.size


@njit(**_OPTIONS)
def unit(lay, e):
    """e: each symmetric block's identity, each nonsymmetric block's central point."""
    soc.unit(lay.starts, e)
    for j in range(_psd_count(lay)):
        a = lay.psd[j, 0]
        psd.unit(psd.side(lay.psd[j + 1, 0] - a), e, a)
    for i in range(lay.kinds.size):
        a, b = _rows(lay, i)
        ns.central(lay.kinds[i], lay.params[i], e[a:b])


@njit(**_OPTIONS)
def margin(lay, v):
    """The largest t with v − t e in the symmetric blocks (used with symmetric cones
    only); NaN where a PSD block is not finite."""
    out = soc.margin(lay.starts, v)
    for j in range(_psd_count(lay)):
        a = lay.psd[j, 0]
        lowest = psd.margin(v, a, psd.side(lay.psd[j + 1, 0] - a))
        if math.isnan(lowest):
            return lowest
        out = min(out, lowest)
    return out


@njit(**_OPTIONS)
def interior(lay, s, z):
    """Whether s ∈ int K and z ∈ int K*."""
    if not (margin(lay, s) > 0 and margin(lay, z) > 0):
        return False
    for i in range(lay.kinds.size):
        a, b = _rows(lay, i)
        if not ns.inside(lay.kinds[i], lay.params[i], s[a:b], z[a:b]):
            return False
    return True


@njit(**_OPTIONS)
def projection_jacobian(lay, v, out):
    """DΠ_K at v (mc,) into out (mc, mc), zero off the blocks (used with second-order and
    orthant cones only: self-dual, so it is also DΠ_{K*})."""
    out[:] = 0.0
    soc.projection_jacobian(lay.starts, v, out)


@njit(**_OPTIONS)
def project_dual(lay, v, tol, out):
    """out = Π_{K*}(v) block by block (tol: the exponential cone's projection tolerance)."""
    soc.project(lay.starts, v, out)
    for j in range(_psd_count(lay)):
        a = lay.psd[j, 0]
        psd.project(v, a, psd.side(lay.psd[j + 1, 0] - a), out)
    vec = ns.scratch()[0]
    for i in range(lay.kinds.size):
        a, b = _rows(lay, i)
        ns.project_dual(lay.kinds[i], lay.params[i], v[a:b], tol, out[a:b], vec)


@njit(**_OPTIONS)
def symmetric_scaling(lay, s, z, st):
    """The symmetric blocks' Nesterov–Todd scaling at interior (s, z), into st."""
    soc.scaling(lay.starts, s, z, st.w, st.eta, st.lam)
    for j in range(_psd_count(lay)):
        a, k, F, F_inv, root, sigma = _psd_block(lay, st, j)
        psd.scaling(s, z, a, k, F, F_inv, root, sigma, st.lam)


@njit(**_OPTIONS)
def adjoint_scaling(lay, s, y, st, delta):
    """The backward's scaling of the symmetric blocks at a solution (s, y) (interior on
    second-order and orthant blocks), H's spectrum within [1/δ, δ]: Nesterov–Todd's,
    clipped (`soc_kernels.clip_scaling`), and the PSD blocks' exact linearization
    (`psd_kernels.adjoint_scaling`)."""
    soc.scaling(lay.starts, s, y, st.w, st.eta, st.lam)
    soc.clip_scaling(lay.starts, s, y, st.w, st.eta, delta)
    for j in range(_psd_count(lay)):
        a, k, F, F_inv, root, _ = _psd_block(lay, st, j)
        psd.adjoint_scaling(s, y, a, k, F, F_inv, root, delta)


@njit(**_OPTIONS)
def scaling(lay, s, z, st):
    """Each block's scaling at interior (s, z), into st."""
    symmetric_scaling(lay, s, z, st)
    vec, mat = ns.scratch()
    for i in range(lay.kinds.size):
        a, b = _rows(lay, i)
        st.psi[i] = ns.scaling(
            lay.kinds[i], lay.params[i], s[a:b], z[a:b], st.U[i], st.L_inv[i], st.grad[i],
            st.hess[i], st.g_psi[i], st.H_psi[i], vec, mat,
        )  # fmt: skip


@njit(**_OPTIONS)
def _mv3(M, v, out, a, transpose):
    """out[a:a + 3] = M v[a:a + 3] (or Mᵀ) for a 3 × 3 M, without allocating."""
    v0, v1, v2 = v[a], v[a + 1], v[a + 2]
    for i in range(3):
        if transpose:
            out[a + i] = M[0, i] * v0 + M[1, i] * v1 + M[2, i] * v2
        else:
            out[a + i] = M[i, 0] * v0 + M[i, 1] * v1 + M[i, 2] * v2


@njit(**_OPTIONS)
def winv_t_columns(lay, st, AT, C):
    """C = (W⁻ᵀ A)ᵀ for AT = Aᵀ (n, mc) of the cone rows: row j of C is W⁻ᵀ applied to
    column j of A."""
    for j in range(AT.shape[0]):
        soc.apply_w(lay.starts, st.w, st.eta, AT[j], C[j], True)
    for t in range(_psd_count(lay)):
        a, k, _, F_inv, root, _ = _psd_block(lay, st, t)
        b = lay.psd[t + 1, 0]
        W = np.empty((b - a, b - a))
        psd.winv_t_matrix(F_inv, root, k, W)
        C[:, a:b] = np.ascontiguousarray(AT[:, a:b]) @ W.T
    for i in range(lay.kinds.size):
        a = _rows(lay, i)[0]
        for j in range(AT.shape[0]):
            _mv3(st.L_inv[i], AT[j], C[j], a, False)


@njit(**_OPTIONS)
def apply_h(lay, st, v, out, inverse):
    """out = H v = U(Uᵀv), or H⁻¹ v = W⁻¹(W⁻ᵀv) with `inverse`."""
    soc.apply_h(lay.starts, st.w, st.eta, v, out, inverse)
    for j in range(_psd_count(lay)):
        a, k, F, F_inv, root, _ = _psd_block(lay, st, j)
        psd.apply_h(F, F_inv, root, k, v, out, a, inverse)
    for i in range(lay.kinds.size):
        a = _rows(lay, i)[0]
        if inverse:
            _mv3(st.L_inv[i], v, out, a, False)
            _mv3(st.L_inv[i], out, out, a, True)
        else:
            _mv3(st.U[i], v, out, a, True)
            _mv3(st.U[i], out, out, a, False)


def block_sizes(lay) -> list[int]:
    """The cone blocks' sizes in row order."""
    return list(np.diff(lay.starts)) + list(np.diff(lay.psd[:, 0])) + [3] * lay.kinds.size


@njit(**_OPTIONS)
def h_values(lay, st, out):
    """H's entries block by block, each block's upper triangle row by row (the order of
    `block_sizes` and numpy's triu_indices): on SOC blocks η²(2wwᵀ − J), on PSD blocks
    its matrix in svec coordinates, on the others U Uᵀ."""
    e = 0
    for k in range(lay.starts.size - 1):
        a, b = lay.starts[k], lay.starts[k + 1]
        eta2 = st.eta[k] * st.eta[k]
        for i in range(a, b):
            for j in range(i, b):
                out[e] = eta2 * (2.0 * st.w[i] * st.w[j] - (1.0 if i == a and j == a else 0.0))
                if i == j and i > a:
                    out[e] += eta2
                e += 1
    for t in range(_psd_count(lay)):
        a, k, F, _, root, _ = _psd_block(lay, st, t)
        size = lay.psd[t + 1, 0] - a
        H = np.empty((size, size))
        psd.h_matrix(F, root, k, H)
        for i in range(size):
            for j in range(i, size):
                out[e] = H[i, j]
                e += 1
    for i in range(lay.kinds.size):
        U = st.U[i]
        for r in range(3):
            for c in range(r, 3):
                out[e] = U[r, 0] * U[c, 0] + U[r, 1] * U[c, 1] + U[r, 2] * U[c, 2]
                e += 1


@njit(**_OPTIONS)
def offset(lay, st, d_s, out):
    """The term of Δs = −offset − HΔz: Wᵀ(λ \\ d_s) on symmetric blocks, d_s on the
    others."""
    scratch = np.empty(d_s.size)
    soc.divide(lay.starts, st.lam, d_s, scratch)
    soc.apply_w(lay.starts, st.w, st.eta, scratch, out, False)
    for j in range(_psd_count(lay)):
        a, k, F, F_inv, root, sigma = _psd_block(lay, st, j)
        psd.divide(sigma, k, d_s, scratch, a)
        psd.apply_w(F, F_inv, root, k, scratch, out, a, False, True)
    o = lay.psd[-1, 0]
    out[o:] = d_s[o:]


@njit(**_OPTIONS)
def affine_ds(lay, st, s, out):
    """d_s of the affine direction: λ ∘ λ on symmetric blocks, s on the others."""
    _jordan(lay, st.lam, st.lam, out)
    o = lay.psd[-1, 0]
    out[o:] = s[o:]


@njit(**_OPTIONS)
def _jordan(lay, u, v, out):
    """out = u ∘ v on the symmetric blocks."""
    soc.jordan(lay.starts, u, v, out)
    for j in range(_psd_count(lay)):
        a = lay.psd[j, 0]
        psd.jordan(u, v, psd.side(lay.psd[j + 1, 0] - a), out, a)


@njit(**_OPTIONS)
def scaled(lay, st, ds, dz, out_s, out_z):
    """A direction as `step` and `combined_ds` read it: (W⁻ᵀΔs, WΔz) on symmetric blocks,
    (Δs, Δz) on the others."""
    soc.apply_w(lay.starts, st.w, st.eta, ds, out_s, True)
    soc.apply_w(lay.starts, st.w, st.eta, dz, out_z, False)
    for j in range(_psd_count(lay)):
        a, k, F, F_inv, root, _ = _psd_block(lay, st, j)
        psd.apply_w(F, F_inv, root, k, ds, out_s, a, True, True)
        psd.apply_w(F, F_inv, root, k, dz, out_z, a, False, False)
    o = lay.psd[-1, 0]
    out_s[o:], out_z[o:] = ds[o:], dz[o:]


@njit(**_OPTIONS)
def combined_ds(lay, st, s, z, sds, wdz, sigma_mu, out):
    """d_s of the centered, corrected direction from the affine one's scaled (sds, wdz):
    λ ∘ λ + sds ∘ wdz − σμe on symmetric blocks, s + σμ∇f* − ½∇³f*[(∇²f*)⁻¹Δs, Δz] on
    the others."""
    _jordan(lay, st.lam, st.lam, out)
    correction, e = np.empty(out.size), np.empty(out.size)
    _jordan(lay, sds, wdz, correction)
    unit(lay, e)
    o = lay.psd[-1, 0]
    out[:o] += correction[:o] - sigma_mu * e[:o]
    vec, mat = ns.scratch()
    for i in range(lay.kinds.size):
        a, b = _rows(lay, i)
        ns.combined_ds(
            lay.kinds[i], lay.params[i], s[a:b], z[a:b], st.psi[i], st.grad[i], st.hess[i],
            st.g_psi[i], st.H_psi[i], sds[a:b], wdz[a:b], sigma_mu, out[a:b], vec, mat,
        )  # fmt: skip


@njit(**_OPTIONS)
def step(lay, st, s, z, sds, wdz):
    """The largest α keeping s + αΔs in K and z + αΔz in K* (inf: no limit on SOC blocks;
    at most 1 on the others) from a scaled direction."""
    scratch = np.empty(sds.size)
    alpha = min(
        soc.step(lay.starts, st.lam, sds, scratch), soc.step(lay.starts, st.lam, wdz, scratch)
    )
    for j in range(_psd_count(lay)):
        a, k, _, _, _, sigma = _psd_block(lay, st, j)
        alpha = min(alpha, psd.step(sigma, k, sds, a), psd.step(sigma, k, wdz, a))
    vec = ns.scratch()[0]
    # a grid index k with ratioᵏ⁻¹ > α: a block whose grid index is below it steps further
    bound = -1
    if alpha <= 0.0:
        bound = ns.GRID
    elif alpha < 1.0:
        bound = min(math.ceil(math.log(alpha) / ns.LOG_RATIO), ns.GRID)
    for i in range(lay.kinds.size):
        a, b = _rows(lay, i)
        block, k = ns.step(
            lay.kinds[i], lay.params[i], s[a:b], z[a:b], sds[a:b], wdz[a:b], vec, bound
        )
        if block < alpha:
            alpha, bound = block, k
    return alpha


@njit(**_OPTIONS)
def moreau_factors(lay, y, s, delta, U, L_inv):
    """`nonsymmetric_kernels.moreau_factors` for every nonsymmetric block of (y, s) (cone
    rows), into U, L_inv (count, 3, 3)."""
    vec, mat = ns.scratch()
    for i in range(lay.kinds.size):
        a, b = _rows(lay, i)
        ns.moreau_factors(
            lay.kinds[i], lay.params[i], y[a:b], s[a:b], delta, U[i], L_inv[i], vec, mat
        )


@njit(**_OPTIONS)
def moreau_factors_each(lay, Y, S, delta, U, L_inv):
    """`moreau_factors` for each row of Y, S (B, cone rows), into U, L_inv (B, count, 3, 3)."""
    for i in range(Y.shape[0]):
        moreau_factors(lay, Y[i], S[i], delta, U[i], L_inv[i])
