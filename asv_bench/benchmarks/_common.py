"""Helpers shared by the benchmark modules (not benchmarks themselves)."""

from __future__ import annotations

import time

from egdnp import _backend

BACKENDS = ["numpy", "cupy"]


def namespace_or_skip(backend: str):
    """The namespace for ``backend``; NotImplementedError (asv: skipped) when unusable."""
    try:
        return _backend.get_namespace(backend)
    except RuntimeError as exc:
        raise NotImplementedError(str(exc)) from None


def best_time(fn, repeat: int = 5, number: int = 1, sync=None) -> float:
    """Minimum wall time of ``number`` calls of ``fn`` over ``repeat`` rounds (seconds per call)."""
    fn()
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if sync:
            sync()
        best = min(best, (time.perf_counter() - t0) / number)
    return best
