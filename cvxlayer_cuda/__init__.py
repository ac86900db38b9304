"""cvxlayer_cuda: Triton kernels for the torch solver's hot loops, with torch references.

Kernels (each has a pure-torch reference in `cvxlayer` with the same semantics):
  `soc.proj_soc`            Π onto second-order cones, one program per cone;
  `exp_cone.proj_exp_primal_polar`  Π onto exponential cones and their polars (bracketed
                            Newton root-find, fixed step count: no host synchronization);
  `psd.proj_psd`            Π onto PSD cones of side ≤ 16 (Jacobi sweeps in registers);
  `admm_update.admm_update`  the per-iteration ADMM vector update of the "torch" mode (the
                            scalar τ̃ of the homogeneous embedding, ũ, 2ũ − v, and the
                            elementwise projections) fused into one kernel per batch element.

Which implementation runs (`backend_for`): "auto" (default) uses the Triton kernels for CUDA
tensors when Triton is installed and the torch references otherwise; "triton" forces the
kernels (CPU tensors need Triton's interpreter, `TRITON_INTERPRET=1`: that is how the tests
run them without a GPU); "torch" forces the references. Set it with `set_backend(name)` or
the `CVXLAYER_KERNELS` environment variable. Callers go through `dispatch`, which also
guards "auto" against a kernel that fails on some GPU (see there).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from collections.abc import Callable

import torch

BACKENDS = ("auto", "triton", "torch")
MAX_PSD_SIDE = 16  # the PSD kernel keeps a matrix in registers: sides up to this
_state = {"backend": os.environ.get("CVXLAYER_KERNELS", "auto")}
_failed: set[str] = set()  # kernels that raised under "auto": their references run instead


def triton_available() -> bool:
    """Whether the `triton` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def set_backend(name: str) -> None:
    """Choose "auto", "triton" or "torch" for every kernel (see the module docstring)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {BACKENDS}")
    _state["backend"] = name


def get_backend() -> str:
    """The backend setting ("auto", "triton" or "torch")."""
    name = _state["backend"]
    if name not in BACKENDS:
        raise ValueError(f"CVXLAYER_KERNELS={name!r} is not one of {BACKENDS}")
    return name


def backend_for(tensor: torch.Tensor) -> str:
    """The implementation that runs on `tensor`: "triton" or "torch".

    Raises:
        RuntimeError: "triton" is forced but Triton is missing, or the tensor is on the CPU
            without Triton's interpreter.
    """
    name = get_backend()
    if name == "torch":
        return "torch"
    if name == "auto":
        return "triton" if tensor.is_cuda and triton_available() else "torch"
    if not triton_available():
        raise RuntimeError("the Triton kernels were requested but `triton` is not installed")
    if not tensor.is_cuda and not interpreting():
        raise RuntimeError(
            "the Triton kernels run on CUDA tensors, or on CPU tensors under Triton's "
            "interpreter (set TRITON_INTERPRET=1 before importing triton)"
        )
    return "triton"


def dispatch(kernel: str, reference: Callable, *args):
    """`reference(*args)`, or the Triton kernel "module.function" of this package with the
    same semantics when `backend_for(args[0])` is "triton".

    Under "auto", a kernel that raises (say, Triton cannot compile it for this GPU) is
    reported once with a warning and replaced by its reference for the rest of the process:
    the kernels have been checked in Triton's interpreter, and a GPU must not turn that into
    a crash. A forced "triton" re-raises.
    """
    if kernel in _failed or backend_for(args[0]) != "triton":
        return reference(*args)
    module, name = kernel.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(f"cvxlayer_cuda.{module}"), name)(*args)
    except Exception as err:
        if get_backend() == "triton":
            raise
        _failed.add(kernel)
        warnings.warn(
            f"cvxlayer_cuda kernel {kernel} failed ({type(err).__name__}: {err}); using its "
            "torch reference from now on",
            RuntimeWarning,
            stacklevel=2,
        )
        return reference(*args)


__all__ = [
    "BACKENDS",
    "MAX_PSD_SIDE",
    "backend_for",
    "dispatch",
    "get_backend",
    "interpreting",
    "set_backend",
    "triton_available",
]
