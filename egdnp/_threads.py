"""CPU threading policy: when egdnp's kernels split their work over threads, and the one pool they share.

This module sits on the ground floor beside :mod:`egdnp._backend`; it knows
threads, not arrays.  egdnp's CPU kernels are Numba functions compiled with
``nogil=True``.  A large job is cut into contiguous ranges, and plain Python
threads from one shared pool run them (:func:`run_split`).  Idle pool threads
block on a queue, so they leave the cores to BLAS's spinning threads; a Numba
parallel region started right after a GEMM fought OpenBLAS for the two cores of
the reference machine.  Every output element is computed from its own index,
so results are bitwise independent of the split and of the thread count.

Below each threshold one thread was faster on the reference machine (2 cores,
shared with BLAS and other processes), because handing a range to a pool
thread and waiting for it costs 30-50 µs there.  The measurements that chose
them:

* :data:`RNG_SPLIT_FROM` (values of one ``egdnp.rng`` draw): float32 normals,
  serial against split over 2 threads, 2026-12-04: 32 k values 26 against
  67 µs, 131 k 82 against 99 µs, 200 k 121 against 120 µs, 400 k 233 against
  181 µs, 1 M 598 against 376 µs.
* :data:`ES_SPLIT_FROM_WORK` (multiply-adds of one perturbed product over a
  population): below 2^21 one thread was faster (issue 18's pop-512 profile).
* :data:`ES_NOISE_SPLIT_FROM` (values of a population's noise block): below
  2^20 values one thread was faster, and stalled less next to BLAS threads.
* :data:`EGD_SPLIT_FROM` (elements of one EGD parameter array): the parallel
  mutant kernel takes 0.11 ms for a 784x256 float32 weight against 0.235 ms
  serial, but inside an EGD cycle, between the closure's OpenBLAS calls, the 7
  mutants took 2.7-2.8 ms parallel against 2.4 ms serial; the default keeps
  every array of the benchmark MLP serial (``optim.egd.set_parallel_from``
  changes it on machines with spare cores).
* :data:`NN_SPLIT_FROM` (output elements of an nn kernel: im2col, col2im,
  pooling): below 2^23 elements the batch-split kernels lose to the serial
  ones on small batches.

Inside a split, nested splits run on the calling thread (:func:`in_split`):
the pool never waits on itself, and two levels never oversubscribe the cores.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

__all__ = [
    "RNG_SPLIT_FROM",
    "ES_SPLIT_FROM_WORK",
    "ES_NOISE_SPLIT_FROM",
    "EGD_SPLIT_FROM",
    "NN_SPLIT_FROM",
    "cpu_threads",
    "in_split",
    "even_ranges",
    "run_split",
]

RNG_SPLIT_FROM = 1 << 18
ES_SPLIT_FROM_WORK = 1 << 21
ES_NOISE_SPLIT_FROM = 1 << 20
EGD_SPLIT_FROM = 1 << 20
NN_SPLIT_FROM = 1 << 23

_POOL: ThreadPoolExecutor | None = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()
_LOCAL = threading.local()  # .in_split: this thread is running one range of a split


def cpu_threads() -> int:
    """Threads a split may use: ``numba.get_num_threads()`` once Numba's threading
    layer runs (so ``numba.set_num_threads`` is honoured), else the configured
    ``NUMBA_NUM_THREADS`` -- asking Numba earlier would start the layer (~60 ms)
    for nothing.  Numba is imported here, not at module import: ``import egdnp``
    must not load it."""
    import numba
    from numba.np.ufunc import parallel

    if getattr(parallel, "_is_initialized", True):
        return max(1, numba.get_num_threads())
    return max(1, int(numba.config.NUMBA_NUM_THREADS))


def in_split() -> bool:
    """True on a thread that is running one range of a :func:`run_split`."""
    return getattr(_LOCAL, "in_split", False)


def even_ranges(n: int, k: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``k`` contiguous ranges whose sizes differ by at most one (the bounds of a split)."""
    return [(n * t // k, n * (t + 1) // k) for t in range(k)]


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS < workers:
            _POOL, _POOL_WORKERS = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="egdnp"), workers
        return _POOL


def run_split(fn: Callable[[int, int], Any], bounds: Sequence[tuple[int, int]]) -> list:
    """``[fn(lo, hi) for lo, hi in bounds]``, the first range on the calling thread, the others on pool threads.

    Parameters
    ----------
    fn : callable ``(lo, hi) -> result``
        Works on the range ``[lo, hi)`` only; its heavy work must release the
        GIL (``nogil`` Numba kernels, NumPy ufuncs, BLAS) for the split to pay.
    bounds : sequence of (int, int)
        Disjoint ranges, one per thread.

    Returns
    -------
    list of the results, in the order of ``bounds``.  With one range, or when
    called from inside a split, every range runs on the calling thread.
    """
    if len(bounds) <= 1 or in_split():
        return [fn(lo, hi) for lo, hi in bounds]

    def run(lo, hi):
        _LOCAL.in_split = True
        try:
            return fn(lo, hi)
        finally:
            _LOCAL.in_split = False

    pool = _pool(len(bounds) - 1)
    futures = [pool.submit(run, lo, hi) for lo, hi in bounds[1:]]
    try:
        first = run(*bounds[0])
    finally:
        # Even when the first range raises, no pool thread may still be writing
        # into the caller's arrays once this returns.
        for fut in futures:
            fut.exception()
    return [first] + [fut.result() for fut in futures]
