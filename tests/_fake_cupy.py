"""A CuPy stand-in that models what the CuPy path of egdnp relies on, for CPU tests.

It is installed as ``sys.modules["cupy"]`` so that ``egdnp._backend`` finds it
through its ordinary import.  It models:

* several devices and the current one (``cuda.Device(i).use()``,
  ``cuda.runtime.getDeviceCount()``);
* pinned host memory (``cuda.alloc_pinned_memory`` returns a recorded buffer);
* streams that *defer* work: a copy queued on a stream (``ndarray.set(a,
  stream=s)``, ``ndarray.get(out=o, stream=s, blocking=False)``) happens only
  when that stream is synchronised, reading its source at that moment, exactly
  the hazard of a real asynchronous copy.  Code that reads a destination or
  rewrites a source before synchronising sees the wrong data here;
* the refusals of real CuPy: no implicit ``np.asarray`` of a device array,
  asynchronous host copies only from pinned memory (real CuPy would silently
  fall back to a synchronous copy; here it is an error, since egdnp promises
  pinned sources).

Device arrays are wrappers around NumPy storage; only the few operations the
tested code paths use exist.
"""

from __future__ import annotations

import types
import weakref

import numpy as np


class PinnedMemory(bytearray):
    """What ``alloc_pinned_memory`` returns: a buffer (weak-referenceable, so tests can watch its lifetime)."""


def _is_pinned(a: np.ndarray) -> bool:
    base = a
    while base is not None:
        if isinstance(base, PinnedMemory):
            return True
        if isinstance(base, memoryview):
            base = base.obj
            continue
        base = getattr(base, "base", None)
    return False


class FakeStream:
    def __init__(self, world, non_blocking=False, name="stream"):
        self.world, self.non_blocking, self.name = world, non_blocking, name
        self.pending: list = []
        world.streams.append(weakref.ref(self))

    def enqueue(self, fn, what):
        self.pending.append((fn, what))
        self.world.log.append(("queue", self.name, what))

    def synchronize(self):
        while self.pending:
            fn, what = self.pending.pop(0)
            fn()
            self.world.log.append(("run", self.name, what))
        self.world.log.append(("sync", self.name))


class World:
    """The fake GPU(s): devices, streams, pinned allocations and a log of what happened."""

    def __init__(self, n_devices=1):
        self.n_devices = n_devices
        self.current = 0
        self.log: list = []
        self.streams: list = []
        self.pinned: list = []
        self.async_h2d = 0
        self.async_d2h = 0
        self.null_stream = FakeStream(self, name="null")
        self.device_syncs = 0

    def pending(self) -> int:
        return sum(len(s.pending) for s in (r() for r in self.streams) if s is not None)


def make_fake_cupy(n_devices=1, available=True):
    world = World(n_devices)
    cupy = types.ModuleType("cupy")
    cupy.world = world

    class ndarray:  # noqa: N801 - CuPy's name: array-api-compat and egdnp look at the class module/name
        __module__ = "cupy"

        def __init__(self, shape, dtype):
            self._data = np.zeros(shape, dtype=dtype)
            self.device_id = world.current

        shape = property(lambda self: self._data.shape)
        dtype = property(lambda self: self._data.dtype)
        ndim = property(lambda self: self._data.ndim)
        nbytes = property(lambda self: self._data.nbytes)
        size = property(lambda self: self._data.size)
        device = property(lambda self: Device(self.device_id))

        def __array__(self, *a, **k):
            raise TypeError("Implicit conversion to a NumPy array is not allowed (fake CuPy, as real CuPy)")

        def __setitem__(self, key, value):
            self._data[key] = value._data if isinstance(value, ndarray) else value

        def set(self, arr, stream=None):
            arr = np.asarray(arr)
            if arr.shape != self.shape or arr.dtype != self.dtype:
                raise ValueError("Shape/dtype mismatch in ndarray.set (fake CuPy)")
            if stream is None:  # cudaMemcpy: synchronous with the host
                self._data[...] = arr
                world.log.append(("h2d-sync",))
                return
            if not _is_pinned(arr):
                raise AssertionError("asynchronous host-to-device copy from pageable memory")
            world.async_h2d += 1
            stream.enqueue(lambda: self._data.__setitem__(Ellipsis, arr), "h2d")

        def get(self, stream=None, order="C", out=None, blocking=True):
            if out is None:
                (stream or world.null_stream).synchronize()
                return self._data.copy()
            if out.shape != self.shape or out.dtype != self.dtype:
                raise ValueError("Shape/dtype mismatch in ndarray.get (fake CuPy)")
            if stream is None or blocking:
                (stream or world.null_stream).synchronize()
                out[...] = self._data
                return out
            if not _is_pinned(out):
                raise AssertionError("asynchronous device-to-host copy into pageable memory")
            world.async_d2h += 1
            src = self._data
            stream.enqueue(lambda: out.__setitem__(Ellipsis, src), "d2h")
            return out

    class Device:
        def __init__(self, index=None):
            self.id = world.current if index is None else int(index)
            if not 0 <= self.id < world.n_devices:
                raise RuntimeError(f"cudaErrorInvalidDevice: {self.id}")

        def use(self):
            world.current = self.id
            world.log.append(("use", self.id))

        def __enter__(self):
            self._saved = world.current
            world.current = self.id
            return self

        def __exit__(self, *exc):
            world.current = self._saved

        def synchronize(self):
            for r in world.streams:
                s = r()
                if s is not None:
                    s.synchronize()
            world.device_syncs += 1

    def alloc_pinned_memory(nbytes):
        mem = PinnedMemory(int(nbytes))
        world.pinned.append((int(nbytes), weakref.ref(mem)))
        return mem

    def empty(shape, dtype=np.float64):
        return ndarray(shape, dtype)

    def asarray(a, dtype=None):
        if isinstance(a, ndarray):
            return a
        host = np.asarray(a, dtype=dtype)
        out = ndarray(host.shape, host.dtype)
        out._data[...] = host
        return out

    cupy.ndarray = ndarray
    cupy.empty = empty
    cupy.asarray = asarray
    cupy.cuda = types.SimpleNamespace(
        is_available=lambda: available,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: world.n_devices),
        Device=Device,
        Stream=lambda non_blocking=False: FakeStream(world, non_blocking=non_blocking),
        get_current_stream=lambda: world.null_stream,
        alloc_pinned_memory=alloc_pinned_memory,
    )
    return cupy
