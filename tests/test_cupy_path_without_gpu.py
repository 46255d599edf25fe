"""The CuPy path of egdnp that needs no device, tested on the CPU (issue 16, part A).

A CuPy stand-in (tests/_fake_cupy.py) is installed as ``sys.modules["cupy"]``;
its streams defer queued copies until synchronised, so a missing
synchronisation shows up as wrong data.  Tested here: the choice of device per
process, pinned allocations and the buffer pool's bookkeeping, the stream
rules of host<->device copies, EGD's host population on the CuPy path (every
candidate complete when the closure gets it, only pinned sources copied
asynchronously, nothing reallocated on the next cycle), and the errors when no
GPU is usable.  The same code on a real GPU: tools/gpu_check.sh.
"""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from _fake_cupy import PinnedMemory, make_fake_cupy
from egdnp import _backend
from egdnp.optim import _egd_population
from egdnp.optim.egd import make_config


@pytest.fixture
def fake(monkeypatch):
    cupy = make_fake_cupy(n_devices=4)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


# ----------------------------------------------------------------------------
# the device of a process
# ----------------------------------------------------------------------------
def test_select_device_makes_the_ordinal_current(fake):
    assert _backend.device_count() == 4
    dev = _backend.select_device(2)
    assert dev.id == 2 and fake.world.current == 2
    assert fake.world.log[-1] == ("use", 2)
    # arrays made afterwards live there
    assert _backend.to_device(np.zeros(3), fake).device_id == 2
    assert _backend.select_device(np.int64(3)).id == 3
    for rank in range(9):  # one process per GPU: local rank modulo the count
        assert _backend.select_device(rank % _backend.device_count()).id == rank % 4


def test_to_device_honours_the_device(fake):
    """to_device(..., device=) puts CuPy arrays on that GPU and leaves the current device alone."""
    fake.world.current = 0
    host = np.arange(5, dtype=np.float32)
    a = _backend.to_device(host, fake, device=2)
    assert a.device_id == 2 and fake.world.current == 0
    np.testing.assert_array_equal(a._data, host)
    b = _backend.to_device(host, fake, device=fake.cuda.Device(3))
    assert b.device_id == 3 and fake.world.current == 0
    assert _backend.to_device(a, fake, device=a.device) is a  # already there: no copy
    c = _backend.to_device(a, fake, device=1)  # another GPU: a copy there
    assert c is not a and c.device_id == 1
    np.testing.assert_array_equal(c._data, host)
    assert _backend.to_device(host, fake).device_id == 0  # default: the current device
    with pytest.raises(ValueError, match=r"device=7 is not a GPU.*4 device\(s\)"):
        _backend.to_device(host, fake, device=7)
    with pytest.raises(TypeError, match="not a GPU"):
        _backend.to_device(host, fake, device="cpu")
    with pytest.raises(ValueError, match="out lives on GPU 2"):
        _backend.to_device(host, fake, device=1, out=a)


@pytest.mark.parametrize("bad,exc,match", [
    (4, ValueError, r"CuPy sees 4 device\(s\), ordinals 0..3.*index % device_count\(\)"),
    (-1, ValueError, "index=-1 is not a GPU"),
    (1.0, TypeError, "must be an int"),
    (True, TypeError, "must be an int"),
    ("0", TypeError, "must be an int"),
])
def test_select_device_refuses_bad_ordinals(fake, bad, exc, match):
    fake.world.current = 1
    with pytest.raises(exc, match=match):
        _backend.select_device(bad)
    assert fake.world.current == 1  # nothing changed


def test_no_usable_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy(n_devices=0, available=False))
    assert _backend.device_count() == 0 and not _backend.cupy_available()
    with pytest.raises(RuntimeError, match=r"no usable GPU .*egdnp\[cuda13\]"):
        _backend.select_device(0)
    for call in (lambda: _backend.get_namespace("cupy"), lambda: _backend.pinned_empty((2,), "float32", sys.modules["cupy"]),
                 lambda: _backend.new_stream(sys.modules["cupy"])):
        with pytest.raises(RuntimeError, match="is_available"):
            call()


def test_driver_error_in_is_available_means_no_gpu(monkeypatch):
    cupy = make_fake_cupy()

    def boom():
        raise RuntimeError("cudaErrorInsufficientDriver")

    cupy.cuda.is_available = boom
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    assert not _backend.cupy_available()
    with pytest.raises(RuntimeError, match="no usable GPU"):
        _backend.get_namespace("cupy")


# ----------------------------------------------------------------------------
# pinned memory and the buffer pool
# ----------------------------------------------------------------------------
def test_pinned_empty_comes_from_alloc_pinned_memory(fake):
    buf = _backend.pinned_empty((3, 5), "float32", fake)
    assert isinstance(buf, np.ndarray) and buf.shape == (3, 5) and buf.dtype == np.float32
    assert buf.flags.writeable and buf.flags.c_contiguous
    nbytes, ref = fake.world.pinned[-1]
    assert nbytes == 60
    buf[...] = 1.5  # writable memory of the pinned block itself
    assert bytes(ref())[:4] == np.float32(1.5).tobytes()
    # the array keeps its pinned block alive, and only it
    gc.collect()
    assert ref() is not None
    del buf
    gc.collect()
    assert ref() is None
    empty = _backend.pinned_empty((0, 4), "float64", fake)
    assert empty.shape == (0, 4) and fake.world.pinned[-1][0] == 1  # CUDA cannot pin 0 bytes: one byte


def test_buffer_pool_pins_once_per_key_and_shape(fake):
    pool = _backend.BufferPool(fake)
    a = pool.get(("slot", 0, "w"), (4, 5), "float32")
    assert pool.get(("slot", 0, "w"), (4, 5), np.float32) is a
    assert pool.allocations == 1 and len(fake.world.pinned) == 1
    b = pool.get(("slot", 1, "w"), (4, 5), "float32")
    assert b is not a and not np.shares_memory(a, b)
    c = pool.get(("slot", 0, "w"), (4, 5), "float64")  # dtype change: a new pinned block
    d = pool.get(("slot", 0, "w"), (5, 4), "float64")  # shape change too
    assert pool.allocations == 4 and len(fake.world.pinned) == 4 and c is not d
    assert pool.nbytes == 4 * 5 * 4 + 5 * 4 * 8 and len(pool) == 2
    assert all(isinstance(x.base.obj if isinstance(x.base, memoryview) else x.base, (PinnedMemory, np.ndarray))
               for x in (b, d))
    refs = [r for _, r in fake.world.pinned]
    del a, b, c, d
    pool.clear()
    gc.collect()
    assert len(pool) == 0 and pool.nbytes == 0 and all(r() is None for r in refs)  # clear() frees the pinned memory


# ----------------------------------------------------------------------------
# stream rules of host <-> device copies
# ----------------------------------------------------------------------------
def test_async_host_to_device_copy_is_complete_only_after_its_stream(fake):
    host = _backend.pinned_empty((6,), "float32", fake)
    host[...] = np.arange(6)
    s = _backend.new_stream(fake)
    assert s.non_blocking  # does not wait for, nor hold up, the legacy default stream
    dev = _backend.to_device(host, fake, stream=s, non_blocking=True)
    assert fake.world.async_h2d == 1 and fake.world.pending() == 1
    np.testing.assert_array_equal(dev._data, 0)  # not there yet
    _backend.synchronize(fake, s)
    np.testing.assert_array_equal(dev._data, np.arange(6))
    # without non_blocking the stream is ignored: a synchronous copy, complete on return
    host[...] = 7
    _backend.to_device(host, fake, stream=s, out=dev)
    np.testing.assert_array_equal(dev._data, 7)
    assert fake.world.async_h2d == 1


def test_async_device_to_host_copy_needs_synchronize(fake):
    dev = fake.asarray(np.arange(4, dtype=np.float64))
    out = _backend.pinned_empty((4,), "float64", fake)
    out[...] = -1
    s = _backend.new_stream(fake)
    assert _backend.to_host(dev, out=out, stream=s, non_blocking=True) is out
    np.testing.assert_array_equal(out, -1)
    _backend.synchronize(fake, s)
    np.testing.assert_array_equal(out, np.arange(4))
    # blocking (the default) is complete on return
    np.testing.assert_array_equal(_backend.to_host(dev), np.arange(4))
    with pytest.raises(ValueError, match="same shape and dtype"):
        _backend.to_host(dev, out=np.empty(3))


def test_synchronize_without_a_stream_waits_for_the_device(fake):
    s = _backend.new_stream(fake)
    host = _backend.pinned_empty((2,), "float32", fake)
    host[...] = 3
    dev = _backend.to_device(host, fake, stream=s, non_blocking=True)
    _backend.synchronize(fake)  # current stream and the whole device: every stream drained
    assert fake.world.device_syncs == 1 and fake.world.pending() == 0
    np.testing.assert_array_equal(dev._data, 3)


def test_device_arrays_are_never_converted_implicitly(fake):
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(fake.asarray(np.ones(2)))


# ----------------------------------------------------------------------------
# EGD's host population on the CuPy path
# ----------------------------------------------------------------------------
def _params(ns):
    r = np.random.default_rng(0)
    host = {"fc.weight": r.standard_normal((6, 5)).astype(np.float32), "fc.bias": r.standard_normal(5).astype(np.float32)}
    if ns is None:
        return host
    return {k: ns.asarray(v) for k, v in host.items()}


def _drive(store, members):
    """begin, then for each member: prepare its slot, copy it to the device, read what the closure would see."""
    store.begin()
    seen = {}
    for m in members:
        h = store.prepare(m)
        cand = store.device_params(h)
        seen[m] = {k: (v._data.copy() if hasattr(v, "_data") else np.array(v)) for k, v in cand.items()}
        yield m, h, seen[m]


@pytest.mark.parametrize("mutation", ["full", "lowrank"])
def test_host_population_on_cupy_hands_complete_candidates(fake, mutation):
    cfg = make_config(pop_size=6, elite_frac=0.5, seed=11, mutation=mutation, rank=2)
    mutated = ["fc.weight", "fc.bias"]
    scales = {"fc.weight": 0.05, "fc.bias": 0.02}
    xnp = _backend.get_namespace("numpy")
    ref = _egd_population.HostPopulation(cfg, xnp, _params(None), mutated, scales, 4, _egd_population.Workspace(), cfg.seed)
    ws = _egd_population.Workspace()
    gpu = _egd_population.HostPopulation(cfg, fake, _params(fake), mutated, scales, 4, ws, cfg.seed)
    want = {m: cand for m, _, cand in _drive(ref, range(1, 6))}
    handles = []
    for m, h, cand in _drive(gpu, range(1, 6)):
        # the closure gets a complete candidate: no copy is still queued, and its data are the mutant's
        assert fake.world.pending() == 0
        for k in mutated:
            np.testing.assert_array_equal(cand[k], want[m][k])
        handles.append(h)
        if len(handles) > 2:  # keep two as elites, release the rest: their slots are reused
            gpu.release(handles.pop(0))
    assert gpu.is_cupy and fake.world.async_h2d == 5 * len(mutated)  # every candidate copy was asynchronous
    assert gpu.bytes_to_device == 5 * sum(_params(None)[k].nbytes for k in mutated)
    # the base snapshot went device -> host once, into pinned buffers
    assert gpu.bytes_to_host == sum(_params(None)[k].nbytes for k in mutated)
    # recombination: the mixed parameters are on the device and complete when returned
    out = gpu.recombine(handles, [4, 5], [0.5, 0.5])
    assert fake.world.pending() == 0 and fake.world.device_syncs >= 1
    for k in mutated:
        mixed = (want[4][k] + want[5][k]) / np.float32(2.0)
        np.testing.assert_allclose(out[k]._data, mixed, rtol=0, atol=1e-7)
    # a second cycle in the same workspace allocates no host or device memory
    pinned_before, dev_before = len(fake.world.pinned), dict(ws.device_buffers)
    allocs = ws.host_allocations
    gpu2 = _egd_population.HostPopulation(cfg, fake, _params(fake), mutated, scales, 5, ws, cfg.seed)
    for _ in _drive(gpu2, range(1, 6)):
        pass
    assert ws.host_allocations == allocs and len(fake.world.pinned) == pinned_before
    assert all(ws.device_buffers[k] is v for k, v in dev_before.items())


def test_a_missing_synchronize_would_be_caught(fake):
    """The stand-in is strict enough: a copy read before its stream is synchronised gives stale data."""
    host = _backend.pinned_empty((3,), "float32", fake)
    host[...] = 1
    s = _backend.new_stream(fake)
    dev = _backend.to_device(host, fake, stream=s, non_blocking=True)
    host[...] = 2  # rewriting the pinned source before the copy ran: the copy reads 2, not 1
    _backend.synchronize(fake, s)
    np.testing.assert_array_equal(dev._data, 2)
    with pytest.raises(AssertionError, match="pageable"):
        _backend.to_device(np.ones(3, dtype=np.float32), fake, stream=s, non_blocking=True)
