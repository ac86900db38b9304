"""Running a native solver on each batch element over a thread pool kept for the process.

The native solvers (SCS, Clarabel) release the GIL while they iterate, so one Python thread
per core solves elements in parallel; results keep the batch order.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from threadpoolctl import ThreadpoolController

from cvxlayer.solvers.base import SolveSettings


@functools.lru_cache(maxsize=4)
def _pool(workers: int) -> ThreadPoolExecutor:
    """A thread pool kept for the process (starting threads per call costs more than the
    small solves they run)."""
    return ThreadPoolExecutor(workers, thread_name_prefix="cvxlayer-native")


def worker_count(settings: SolveSettings, elements: int, small: bool = False) -> int:
    """Threads for `elements` solves: `settings.threads` (-1: torch's thread count, or one
    where the caller says each solve is `small`: waking the pool and handing the GIL back
    and forth then cost more than the solves), one when `verbose` (a solver's log stays
    readable), never more than the elements."""
    threads = settings.threads
    if threads == -1:
        threads = 1 if small else torch.get_num_threads()
    return 1 if settings.verbose else max(1, min(elements, threads))


@functools.lru_cache(maxsize=1)
def _blas_libraries() -> list:
    """The BLAS libraries loaded in the process (numpy's and scipy's OpenBLAS; found once,
    at the first map, by which time cvxlayer has imported both)."""
    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


@contextlib.contextmanager
def one_blas_thread():
    """A context in which BLAS/LAPACK runs on one thread. Each worker already has a core,
    and OpenBLAS's own threads otherwise fight them and spin after each parallel call,
    taking the cores from torch's too (measured: a policy rollout's backward 1.6× slower
    with them; a small SOCP's backward, one scipy LU per call, 8.1 → 5.1 ms). Setting the
    counts directly costs ~10 µs (threadpoolctl's `limit`, ~25)."""
    libraries = _blas_libraries()
    before = [lib.num_threads for lib in libraries]
    for lib in libraries:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, count in zip(libraries, before):
            lib.set_num_threads(count)


def map_chunks(
    run: Callable[[Sequence[int]], list], chunks: Sequence, workers: int, blas: bool = True
) -> list:
    """[run(chunk) for chunk in chunks], flattened, on `workers` threads, with BLAS held to
    one thread (`one_blas_thread`) unless `run` calls none (`blas=False`: ~20 µs saved)."""
    with one_blas_thread() if blas else contextlib.nullcontext():
        if workers > 1:
            return [out for part in _pool(workers).map(run, chunks) for out in part]
        return [out for chunk in chunks for out in run(chunk)]


def for_each(
    run: Callable[[int], object],
    indices: Sequence[int],
    workers: int | None = None,
    blas: bool = True,
) -> None:
    """run(i) for every index, over `workers` threads (`for_chunks`)."""

    def run_chunk(chunk):
        for i in chunk:
            run(i)

    for_chunks(run_chunk, indices, workers, blas)


def for_chunks(
    run: Callable[[np.ndarray], object],
    indices: Sequence[int],
    workers: int | None = None,
    blas: bool = True,
) -> None:
    """run(chunk) for runs of consecutive indices, one per thread of `workers` (default:
    torch's thread count, at most one per index; `map_chunks`, whose `blas` this is). A
    compiled kernel that loops over its chunk itself is entered once per thread: a call
    from Python with many arrays costs ~15 µs, more than a small element's work."""
    indices = np.asarray(indices, dtype=np.int64)
    if workers is None:
        workers = max(1, min(torch.get_num_threads(), indices.size))
    chunks = [indices] if workers == 1 else np.array_split(indices, workers)

    def run_chunk(chunk):
        run(chunk)
        return []

    map_chunks(run_chunk, chunks, workers, blas)


def as_array(tensor: torch.Tensor) -> np.ndarray:
    """`tensor` as a C-contiguous float64 numpy array on the host (for the compiled and
    LAPACK kernels)."""
    return np.ascontiguousarray(tensor.detach().cpu().double().numpy())


def as_tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """`array` with `like`'s dtype and device."""
    return torch.as_tensor(array, dtype=like.dtype, device=like.device)
