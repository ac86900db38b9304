"""The cone K of a cone program, in SCS 3's order and vectorization.

K = {0}^z × R₊^l × SOC(q₁) × … × PSD(s₁) × … × K_exp^ep × K_exp*^ed × K_pow(p₁) × …

Rows of A, b, s and y follow this order. A PSD cone of side k occupies k(k+1)/2 rows:
the lower triangle of the matrix stacked column by column, off-diagonal entries scaled
by √2 (so that the vectorization is an isometry). Each exponential cone occupies three
rows (x, y, z) with K_exp = cl{(x, y, z) | y > 0, y·exp(x/y) ≤ z}; each power cone
occupies three rows with K_pow(α) = {(x, y, z) | x^α y^(1−α) ≥ |z|, x, y ≥ 0}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def psd_rows(side: int) -> int:
    """Rows of the vectorized PSD cone of a `side × side` matrix: side(side+1)/2."""
    return side * (side + 1) // 2


@dataclass(frozen=True)
class ConeSpec:
    """Sizes of each cone family of K, in SCS order.

    Attributes:
        zero: rows of the zero cone (equalities).
        nonneg: rows of the nonnegative orthant.
        soc: sizes of the second-order cones.
        psd: matrix sides of the PSD cones.
        exp: number of primal exponential cones (3 rows each).
        exp_dual: number of dual exponential cones (3 rows each).
        power: exponents α of the primal 3-d power cones (3 rows each).
    """

    zero: int = 0
    nonneg: int = 0
    soc: tuple[int, ...] = ()
    psd: tuple[int, ...] = ()
    exp: int = 0
    exp_dual: int = 0
    power: tuple[float, ...] = ()

    @classmethod
    def from_cvxpy(cls, dims) -> ConeSpec:
        """Build from cvxpy's `ConeDims` (as found on a `ParamConeProg`)."""
        if getattr(dims, "pnd", None):
            raise NotImplementedError(
                "n-dimensional power cones (cp.PowConeND) are not supported yet; "
                "write the constraint with 3-d power cones (cp.PowCone3D) instead."
            )
        return cls(
            zero=int(dims.zero),
            nonneg=int(dims.nonneg),
            soc=tuple(int(q) for q in dims.soc),
            psd=tuple(int(s) for s in dims.psd),
            exp=int(dims.exp),
            power=tuple(float(a) for a in dims.p3d),
        )

    def section_sizes(self) -> tuple[int, ...]:
        """Rows taken by each family, in order: zero, nonneg, soc, psd, exp, exp_dual, power."""
        return (
            self.zero,
            self.nonneg,
            sum(self.soc),
            sum(psd_rows(s) for s in self.psd),
            3 * self.exp,
            3 * self.exp_dual,
            3 * len(self.power),
        )

    @property
    def size(self) -> int:
        """Total number of rows m."""
        return sum(self.section_sizes())

    def repeat(self, copies: int) -> ConeSpec:
        """The cone of `copies` stacked programs, each family's rows grouped together."""
        return ConeSpec(
            zero=self.zero * copies,
            nonneg=self.nonneg * copies,
            soc=self.soc * copies,
            psd=self.psd * copies,
            exp=self.exp * copies,
            exp_dual=self.exp_dual * copies,
            power=self.power * copies,
        )

    def block_ids(self) -> np.ndarray:
        """(m,) id of the cone each row belongs to; rows of zero and nonneg cones are each a
        cone of their own. Row scalings must be constant within one id to keep K invariant."""
        sizes = [1] * (self.zero + self.nonneg) + list(self.soc)
        sizes += [psd_rows(k) for k in self.psd]
        sizes += [3] * (self.exp + self.exp_dual + len(self.power))
        return np.repeat(np.arange(len(sizes)), sizes)

    def to_scs(self) -> dict:
        """The cone dictionary of SCS 3 (keys z, l, q, s, ep, ed, p)."""
        cones: dict = {"z": self.zero, "l": self.nonneg}
        if self.soc:
            cones["q"] = list(self.soc)
        if self.psd:
            cones["s"] = list(self.psd)
        if self.exp:
            cones["ep"] = self.exp
        if self.exp_dual:
            cones["ed"] = self.exp_dual
        if self.power:
            cones["p"] = list(self.power)
        return cones

    def describe(self) -> str:
        """Short human-readable summary, e.g. 'zero 3, nonneg 10, soc [5]'."""
        parts = []
        for name in ("zero", "nonneg", "soc", "psd", "exp", "exp_dual", "power"):
            value = getattr(self, name)
            if value:
                parts.append(f"{name} {list(value) if isinstance(value, tuple) else value}")
        return ", ".join(parts) or "empty"
