"""Tests of egdnp._backend: namespace selection, CuPy errors, host/device moves, pinned buffers."""

from __future__ import annotations

import importlib
import types

import numpy as np
import pytest

from egdnp import _backend


def test_numpy_and_strict_by_name_and_by_namespace():
    import array_api_strict

    xp = _backend.get_namespace("numpy")
    assert _backend.is_numpy(xp) and _backend.backend_name(xp) == "numpy"
    assert _backend.is_numpy(_backend.get_namespace(np))
    strict = _backend.get_namespace("array_api_strict")
    assert strict is array_api_strict
    assert _backend.get_namespace(array_api_strict) is array_api_strict
    assert _backend.backend_name(strict) == "array_api_strict"
    assert _backend.array_namespace(strict.asarray([1.0])) is array_api_strict


def test_array_namespace_memo_keeps_the_errors():
    """The lookup is memoised on argument types; a failing combination must still raise every time."""
    import array_api_compat
    import array_api_strict

    a, s = np.ones(2), array_api_strict.asarray([1.0])
    assert _backend.array_namespace(a, a) is array_api_compat.array_namespace(a, a)
    assert _backend.array_namespace(s) is array_api_strict
    for _ in range(2):
        with pytest.raises(TypeError):
            _backend.array_namespace(a, s)
        with pytest.raises(TypeError):
            _backend.array_namespace([1.0, 2.0])
    # is_numpy is memoised per namespace
    for _ in range(2):
        assert _backend.is_numpy(_backend.array_namespace(a)) and not _backend.is_numpy(array_api_strict)


@pytest.mark.parametrize("bad,exc", [("torch", ValueError), (3, TypeError), (object(), TypeError)])
def test_unknown_backends_raise_with_the_fix(bad, exc):
    with pytest.raises(exc, match="numpy"):
        _backend.get_namespace(bad)


@pytest.mark.parametrize("error", [
    ModuleNotFoundError("No module named 'cupy'"),
    OSError("libcudart.so.13: cannot open shared object file"),  # a broken CUDA install raising at import
])
def test_cupy_missing_gives_one_clear_error(monkeypatch, error):
    real_import = importlib.import_module

    def fake_import(name, *args):
        if name == "cupy":
            raise error
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(RuntimeError, match=r"egdnp\[cuda12\]") as info:
        _backend.get_namespace("cupy")
    assert f"cannot be imported ({type(error).__name__}: {error})" in str(info.value)
    assert info.value.__cause__ is None  # no traceback from deep inside CuPy
    assert not _backend.cupy_available()
    assert _backend.device_count() == 0
    with pytest.raises(RuntimeError, match="cannot be imported"):
        _backend.select_device(0)


def test_cupy_without_a_gpu_gives_one_clear_error(monkeypatch):
    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(is_available=lambda: False)
    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name, *a: fake if name == "cupy" else real_import(name, *a))
    with pytest.raises(RuntimeError, match=r"is_available\(\) is False.*egdnp\[cuda12\]"):
        _backend.get_namespace("cupy")


def test_to_device_and_to_host_round_trip(xp):
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    dev = _backend.to_device(host, xp)
    assert _backend.array_namespace(dev) is xp or _backend.is_numpy(xp)
    back = _backend.to_host(dev)
    np.testing.assert_array_equal(back, host)
    assert back is not host
    out = np.empty_like(host)
    assert _backend.to_host(dev, out=out) is out
    np.testing.assert_array_equal(out, host)


def test_to_device_never_aliases_the_callers_numpy_array():
    xp = _backend.get_namespace("numpy")
    host = np.zeros(3)
    dev = _backend.to_device(host, xp)
    dev[0] = 1.0
    assert host[0] == 0.0


def test_moves_between_simulated_devices(strict_devices):
    import array_api_strict as xs

    cpu, other = strict_devices
    host = np.linspace(0.0, 1.0, 5)
    on_other = _backend.to_device(host, xs, device=other)
    assert on_other.device == other
    with pytest.raises(ValueError):
        on_other + xs.asarray(host, device=cpu)  # strict refuses device mixing
    np.testing.assert_array_equal(_backend.to_host(on_other), host)


def test_synchronize_and_streams_are_noops_on_cpu(xp):
    assert _backend.new_stream(xp) is None or _backend.is_cupy(xp)
    _backend.synchronize(xp)


def test_pinned_empty_is_plain_host_memory_on_cpu(xp):
    buf = _backend.pinned_empty((2, 3), xp.float32, xp)
    assert isinstance(buf, np.ndarray) and buf.shape == (2, 3) and buf.dtype == np.float32


def test_buffer_pool_reuses_buffers(xp):
    pool = _backend.BufferPool(xp)
    a = pool.get("base/fc1.weight", (4, 5), "float32")
    b = pool.get("base/fc1.weight", (4, 5), xp.float32)
    assert a is b and pool.allocations == 1
    c = pool.get("base/fc1.weight", (4, 6), "float32")  # shape change reallocates
    assert c is not a and pool.allocations == 2
    pool.get("elite/0", (3,), "float64")
    assert len(pool) == 2 and pool.nbytes == 4 * 6 * 4 + 3 * 8
    pool.clear()
    assert len(pool) == 0


def test_numpy_dtype_mapping(xp):
    assert _backend.numpy_dtype(xp, xp.float32) == np.float32
    assert _backend.numpy_dtype(xp, xp.uint32) == np.uint32
    assert _backend.numpy_dtype(xp, "float64") == np.float64
