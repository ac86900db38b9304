"""Batched Euclidean projections onto the cones of a `ConeSpec` and their duals.

Every routine works on a batch: z has shape (B, m), rows in SCS order. Cones of one family
and one size are gathered into a single (B, count, size) tensor and projected together, so
there is no Python loop over cones or batch elements. Families are dispatched through a
table (`_FAMILIES`), each entry giving the projection onto the cone and onto its dual and
their Jacobians; everything about one family lives in its own module (`zero`, `nonneg`,
`soc`, `psd`, `exp`, `power`).

Moreau: z = Π_K(z) + Π_{K°}(z) with K° = −K*, hence Π_{K*}(z) = z + Π_K(−z).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cvxlayer.cones.exp import (
    d_exp,
    d_exp_dual,
    proj_exp,
    proj_exp_dual,
    proj_exp_primal_polar,
    proj_exp_primal_polar_reference,
)
from cvxlayer.cones.nonneg import d_nonneg, proj_nonneg
from cvxlayer.cones.power import d_pow, d_pow_dual, proj_pow, proj_pow_dual
from cvxlayer.cones.psd import (
    d_psd,
    mat_to_svec,
    proj_psd,
    proj_psd_reference,
    psd_side,
    svec_to_mat,
)
from cvxlayer.cones.soc import d_soc, proj_soc, proj_soc_reference
from cvxlayer.cones.spec import ConeSpec, psd_rows
from cvxlayer.cones.zero import d_free, d_zero, proj_free, proj_zero


@dataclass(frozen=True)
class _Family:
    """Projections of one cone family onto K and K*, and their Jacobians, on
    (B, count, size) blocks (power cones also take their exponents α, shape (count,))."""

    primal: Callable[[torch.Tensor], torch.Tensor]
    dual: Callable[[torch.Tensor], torch.Tensor]
    d_primal: Callable[[torch.Tensor], torch.Tensor]
    d_dual: Callable[[torch.Tensor], torch.Tensor]


_FAMILIES: dict[str, _Family] = {
    "zero": _Family(proj_zero, proj_free, d_zero, d_free),
    "nonneg": _Family(proj_nonneg, proj_nonneg, d_nonneg, d_nonneg),
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


__all__ = [
    "ConeProjector",
    "mat_to_svec",
    "proj_exp",
    "proj_exp_dual",
    "proj_exp_primal_polar",
    "proj_exp_primal_polar_reference",
    "proj_psd",
    "proj_psd_reference",
    "proj_soc",
    "proj_soc_reference",
    "psd_side",
    "svec_to_mat",
]
