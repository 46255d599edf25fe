"""The CPU threading policy (egdnp._threads) and the one implementation resolver (_backend.resolve_impl)."""

import threading

import array_api_strict
import numpy as np
import pytest

from egdnp import _backend, _threads


def test_run_split_returns_results_in_order_and_uses_pool_threads():
    seen = {}

    def work(lo, hi):
        seen[lo] = threading.current_thread().name
        return list(range(lo, hi))

    out = _threads.run_split(work, [(0, 3), (3, 5), (5, 9)])
    assert out == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]
    assert seen[0] == threading.current_thread().name
    assert all(name.startswith("egdnp") for lo, name in seen.items() if lo)


def test_nested_split_runs_on_the_calling_thread():
    inner_threads = []

    def inner(lo, hi):
        inner_threads.append(threading.current_thread().name)
        return hi - lo

    def outer(lo, hi):
        assert _threads.in_split()
        me = threading.current_thread().name
        assert _threads.run_split(inner, [(0, 1), (1, 3)]) == [1, 2]
        return me

    names = _threads.run_split(outer, [(0, 1), (1, 2)])
    assert not _threads.in_split()
    # each outer range ran its inner split on its own thread: no pool thread waited on the pool
    assert sorted(inner_threads) == sorted(names * 2)


def test_a_raising_range_waits_for_the_others_then_raises():
    done = []

    def work(lo, hi):
        if lo == 0:
            raise KeyError("first")
        threading.Event().wait(0.05)
        done.append(lo)

    with pytest.raises(KeyError):
        _threads.run_split(work, [(0, 1), (1, 2)])
    assert done == [1]
    assert not _threads.in_split()


def test_cpu_threads_is_positive():
    assert _threads.cpu_threads() >= 1


@pytest.mark.parametrize(
    "xp, impl, kernels, usable, expected",
    [
        (np, "auto", ("numba",), True, "numba"),
        (np, "auto", ("numba",), False, "array_api"),
        (np, "auto", (), True, "array_api"),
        (np, "array_api", ("numba",), True, "array_api"),
        (np, "numba", ("numba",), True, "numba"),
        (array_api_strict, "auto", ("numba",), True, "array_api"),
        (array_api_strict, "auto", ("numba", "cupy"), True, "array_api"),
        (array_api_strict, "array_api", ("numba", "cupy"), True, "array_api"),
    ],
)
def test_resolve_impl_choices(xp, impl, kernels, usable, expected):
    xp = _backend.get_namespace(xp)
    assert _backend.resolve_impl(xp, impl, kernels=kernels, usable=usable) == expected


@pytest.mark.parametrize(
    "xp, impl, kernels, usable, match",
    [
        (np, "cupy", ("numba",), True, r"impl='cupy' is not one of \('auto', 'numba', 'array_api'\)"),
        (np, "fast", ("numba", "cupy"), True, "impl='fast' is not one of"),
        (np, None, ("numba",), True, "impl=None is not one of"),
        (np, "numba", (), True, "impl='numba' is not one of"),
        (array_api_strict, "numba", ("numba",), True, "impl='numba' computes NumPy arrays; xp=array_api_strict"),
        (np, "cupy", ("numba", "cupy"), True, "impl='cupy' computes CuPy arrays; xp=numpy"),
        (np, "numba", ("numba",), False, "impl='numba' needs a full-rank mutation"),
    ],
)
def test_resolve_impl_refuses_with_the_argument_and_the_fix(xp, impl, kernels, usable, match):
    xp = _backend.get_namespace(xp)
    with pytest.raises(ValueError, match=match) as info:
        _backend.resolve_impl(xp, impl, kernels=kernels, usable=usable, needs="a full-rank mutation")
    assert "impl=" in str(info.value)
