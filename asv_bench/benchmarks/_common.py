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


_ISOLATED_DRIVER = """
import importlib, sys, time
sys.path.insert(0, {root!r})
bench = getattr(importlib.import_module({module!r}), {cls!r})()
bench.setup(*{params!r})
fn = getattr(bench, {attr!r})
sync = getattr(bench, "sync", None)
fn()
time.sleep(0.5)  # let every thread pool that setup woke go back to sleep
best = float("inf")
for _ in range({repeat}):
    t0 = time.perf_counter()
    for _ in range({number}):
        fn()
    if sync:
        sync()
    best = min(best, (time.perf_counter() - t0) / {number})
print(best)
"""


def isolated_time(module: str, cls: str, params: tuple, attr: str, number: int = 10, repeat: int = 15) -> float:
    """Best seconds per call of ``cls().<attr>()`` after ``setup(*params)``, timed in a fresh process.

    Why a process of its own: Numba's and torch's OpenMP workers spin after each
    parallel region and steal the cores from whatever runs next, so two
    libraries timed alternately in one process slow each other by up to 3x
    (measured on the 2-core machine) and their ratio says little.  Each side
    alone, in blocks of ``number`` calls, is what a user of either one sees.
    """
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _ISOLATED_DRIVER.format(root=root, module=module, cls=cls, params=tuple(params), attr=attr,
                                   number=number, repeat=repeat)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"isolated timing of {cls}.{attr}{tuple(params)} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])
