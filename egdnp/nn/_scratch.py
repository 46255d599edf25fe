"""The step scratch: one reusable block for the temporaries of a training step.

:meth:`egdnp.nn.Serial.loss_and_grad` on NumPy enters :class:`step_scratch`;
inside it the Numba kernels' entry points (:mod:`egdnp.nn._cpu`) take their
temporaries from :func:`empty`, which hands out views of this thread's
:class:`StepScratch` block instead of fresh ``np.empty`` arrays.  Plain NumPy
(host bookkeeping, not array math), no Numba: importing it is cheap.
"""

from __future__ import annotations

import math
import threading

import numpy as np

__all__ = ["StepScratch", "step_scratch", "release_step_scratch", "empty", "zeros"]


# ----------------------------------------------------------------------------
# step scratch: the temporaries of one forward + backward, reused every step
# ----------------------------------------------------------------------------
class StepScratch:
    """A bump allocator over one reusable byte block, for one training step.

    A CNN step allocates ~30 MB of short-lived arrays (padded inputs, im2col
    columns, wide GEMM outputs, pooled maps and their gradients).  Fresh from
    malloc they are fresh pages each step -- 2300-3300 page faults, about 30% of
    the step on the 2-core VM.  Handing them out of one block that lives as long
    as the thread makes the second and later steps fault-free without touching
    the process's malloc settings (compare :func:`egdnp.keep_freed_memory`).

    Arrays from :meth:`empty` are valid until the next :meth:`reset`: only
    intermediates that die inside the step may come from here, never an array
    the step returns.  The first step (or a step larger than every earlier one)
    records how many bytes it wanted and falls back to ``np.empty``; the block
    grows to that size at the next :meth:`reset`.
    """

    ALIGN = 64  # bytes: a cache line, also what AVX-512 loads like

    def __init__(self):
        self.block = np.empty(0, dtype=np.uint8)
        self.offset = 0  # bytes handed out since the last reset
        self.wanted = 0  # largest offset reached since the last reset

    def reset(self) -> None:
        """Start a new step; grow the block if the last step wanted more."""
        if self.wanted > self.block.size:
            raw = np.empty(self.wanted + self.ALIGN, dtype=np.uint8)
            start = -raw.ctypes.data % self.ALIGN
            self.block = raw[start : start + self.wanted]
        self.offset = 0
        self.wanted = 0

    def release(self) -> None:
        """Give the block back to malloc."""
        self.block = np.empty(0, dtype=np.uint8)
        self.offset = self.wanted = 0

    def empty(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        start = self.offset
        # cheap on purpose (called per kernel): math.prod and ndarray(buffer=...)
        # cost ~0.5 us where np.prod plus a view and a reshape cost ~4 us
        self.offset = start - (-math.prod(shape) * dtype.itemsize // self.ALIGN) * self.ALIGN
        if self.offset > self.wanted:
            self.wanted = self.offset
        if self.offset > self.block.size:
            return np.empty(shape, dtype=dtype)
        return np.ndarray(shape, dtype=dtype, buffer=self.block, offset=start)

    def paused(self) -> "_Paused":
        """A context in which allocation is normal (for code whose arrays may outlive the step)."""
        return _Paused()

    def holds(self, arr) -> bool:
        """True when ``arr`` may live in the block (then it must not leave the step)."""
        return isinstance(arr, np.ndarray) and self.block.size > 0 and np.may_share_memory(arr, self.block)


# .scratch: this thread's StepScratch; .in_step: inside step_scratch(); .active: _empty allocates from it
_THREAD = threading.local()


# The two contexts below are classes, not @contextmanager generators: they are
# entered once or twice per training step, and a generator context costs ~1.5 us.
class _Paused:
    """Context: this thread's kernels allocate normally inside, the step scratch after."""

    __slots__ = ("was_active",)

    def __enter__(self):
        self.was_active = getattr(_THREAD, "active", False)
        _THREAD.active = False

    def __exit__(self, *exc):
        _THREAD.active = self.was_active


class step_scratch:  # noqa: N801 -- used like a function: ``with step_scratch() as scratch``
    """Serve this thread's kernel temporaries from its :class:`StepScratch` inside the block.

    ``with step_scratch() as scratch`` gives the scratch.  Not re-entrant on
    purpose: a nested block (a loss callable that itself trains a model) gives
    None and allocates normally, so the outer step's arrays are never handed out twice.
    """

    __slots__ = ("nested",)

    def __enter__(self):
        self.nested = getattr(_THREAD, "in_step", False)  # also while the outer step is paused
        if self.nested:
            return None
        scratch = getattr(_THREAD, "scratch", None)
        if scratch is None:
            scratch = _THREAD.scratch = StepScratch()
        scratch.reset()
        _THREAD.in_step = _THREAD.active = True
        return scratch

    def __exit__(self, *exc):
        if not self.nested:
            _THREAD.in_step = _THREAD.active = False


def release_step_scratch() -> None:
    """Free the calling thread's step scratch block (NumPy backend).

    :meth:`egdnp.nn.Serial.loss_and_grad` on NumPy serves its kernel temporaries
    (im2col columns, padded inputs, pooled maps and their gradients) from one
    per-thread block that is reused every step, so steady-state steps allocate no
    fresh pages.  The block stays as large as the largest step so far; call this
    after training to hand it back.  The next step grows a new one.  No arrays involved.
    """
    scratch = getattr(_THREAD, "scratch", None)
    if scratch is not None:
        scratch.release()


def empty(shape, dtype) -> np.ndarray:
    """``np.empty`` for a step temporary: from the step scratch inside :func:`step_scratch`."""
    if getattr(_THREAD, "active", False):
        return _THREAD.scratch.empty(shape, dtype)
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype) -> np.ndarray:
    """:func:`empty` filled with zeros."""
    out = empty(shape, dtype)
    out.fill(0)
    return out
