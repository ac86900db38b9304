"""Cones: the cone specification shared by every stage (projections come with the torch solver)."""

from cvxlayer.cones.spec import ConeSpec, psd_rows

__all__ = ["ConeSpec", "psd_rows"]
