"""Telling the user, once, that cvxlayer's compiled kernels (numba) are being compiled.

A kernel's first call without a cached build compiles it (about a minute for the interior
point on a 2-core machine, seconds for the smaller kernels); later processes load the build
from numba's cache (next to the package, or under `NUMBA_CACHE_DIR` / the user cache where
that is read-only).
"""

from __future__ import annotations

import os
import sys

_checked: set = set()  # kernels whose cache was looked at (once each: a directory read)
_announced = False


def announce_compile(kernel) -> None:
    """Say once per process, on stderr, that the kernels are compiling, if numba's cache
    holds no build of `kernel` (an `njit(cache=True)` function) about to be called."""
    global _announced
    if _announced or kernel in _checked:
        return
    _checked.add(kernel)
    if _cached(kernel):
        return
    _announced = True
    print(
        "cvxlayer: compiling its CPU kernels (numba) on first use, once; later runs load "
        "them from numba's cache",
        file=sys.stderr,
    )


def _cached(kernel) -> bool:
    """Whether numba's cache holds a build of `kernel` (its index file)."""
    cache = getattr(kernel, "_cache", None)
    if cache is None:  # NUMBA_DISABLE_JIT: nothing to compile
        return True
    path = cache._impl.locator.get_cache_path()
    func = kernel.py_func
    prefix = f"{func.__module__.rsplit('.', 1)[-1]}.{func.__qualname__}-"
    return os.path.isdir(path) and any(
        name.startswith(prefix) and name.endswith(".nbi") for name in os.listdir(path)
    )
