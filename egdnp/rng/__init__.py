"""Counter-based noise that is the same on every backend.

The value at address ``(seed, stream, member, generation, index)`` is a pure
function of those integers (Philox4x32-10, see :mod:`egdnp.rng._spec` and
docs/noise.md).  It does not depend on the array's size, on chunking, on the
number of threads or on the device: ``normal((10,), ...)`` is a prefix of
``normal((1000,), ...)``.

Every public function takes the namespace to compute in (``xp``, default
NumPy) and dispatches to one of three implementations of the same spec:

* ``"numba"``  -- Numba CPU kernels, used for NumPy;
* ``"cupy"``   -- CuPy GPU kernels, used for CuPy;
* ``"array_api"`` -- the pure array-API oracle (uint32 arithmetic only), used
  for every other namespace (array-api-strict) and as the tests' reference.

Raw words are bitwise equal across the three; normals agree within
``NORMAL_ATOL`` (4e-6 absolute in float32, 1e-13 in float64).

Functions
---------
stream_id(name)                       CRC-32 stream id of a parameter name
random_bits(shape, seed=..., ...)     uint32 words
uniform(shape, seed=..., ...)         floats in [0, 1) with 24-bit resolution
normal(shape, seed=..., ...)          standard normals (Box-Muller)
normal_members(n_members, size, ...)  normal() of consecutive members, one launch
weighted_noise_sum(weights, shape, ...)   sum_i w_i * normal(member_i), fused
centered_ranks(fitness)               ranks scaled to [-0.5, 0.5], ties averaged
check_seed(seed)                      a seed as an int, or a clear error

The Numba building blocks behind the CPU path (key setup, the Philox chunk,
the normal chunk, the weighted chunk, the 4-lane store) are public in
:mod:`egdnp.rng.kernels` for other packages' fused kernels; it is imported on
demand (it loads Numba, which ``import egdnp`` does not).
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np  # host-side bookkeeping only (dtype names, the small weight vector)

from .. import _backend
from . import _array_api, _gpu
from ._spec import MAX_ELEMENTS, MAX_SEED, MAX_WORD, NORMAL_ATOL, philox4x32_10, stream_id

__all__ = [
    "stream_id",
    "philox4x32_10",
    "random_bits",
    "uniform",
    "normal",
    "normal_members",
    "weighted_noise_sum",
    "centered_ranks",
    "check_seed",
    "NORMAL_ATOL",
    "IMPLEMENTATIONS",
    "MAX_POP_SIZE",
]

IMPLEMENTATIONS = ("auto", "numba", "cupy", "array_api")

#: The largest population egdnp addresses: member (and pair) ids are the 32-bit
#: ``member`` word of the noise address.  EGD and EGGROLL both check it at construction.
MAX_POP_SIZE = MAX_WORD


# ----------------------------------------------------------------------------
# argument checking
# ----------------------------------------------------------------------------
def check_seed(seed: Any) -> int:
    """``seed`` as a Python int, checked: an integer (not a bool) in [0, 2**64 - 1].

    Parameters
    ----------
    seed : int
        A noise seed (the 64-bit Philox key).

    Returns
    -------
    int

    Raises
    ------
    TypeError
        Not an integer.
    ValueError
        Outside the 64-bit unsigned range.
    """
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed={seed!r} must be an int in [0, 2**64 - 1]")
    seed = int(seed)
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed} is outside [0, 2**64 - 1]; pass a non-negative 64-bit integer")
    return seed


def _check_word(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int in [0, 2**32 - 1]")
    value = int(value)
    if not 0 <= value <= MAX_WORD:
        raise ValueError(f"{name}={value} is outside [0, 2**32 - 1]; counter words are unsigned 32-bit")
    return value


def _check_stream(stream: Any) -> int:
    if isinstance(stream, str):
        if not stream:
            # crc32(b"") == 0: the empty name would silently share stream 0's noise
            raise ValueError("stream='' is empty; pass a non-empty name (e.g. the parameter name) or an int id")
        return stream_id(stream)
    return _check_word("stream", stream)


def _check_shape(shape: Any) -> tuple[int, ...]:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(operator.index(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape={shape!r} must be an int or a tuple of ints") from None
    if any(d < 0 for d in dims):
        raise ValueError(f"shape={shape!r} has a negative dimension")
    n = 1
    for d in dims:
        n *= d
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"shape={shape!r} has {n} elements, more than the 2**34 one address can hold; "
            "split the array over several streams"
        )
    return dims


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be a non-negative int")
    if value < 0:
        raise ValueError(f"{name}={value} is negative; pass a count >= 0")
    return int(value)


def _size(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _check_dtype(xp, dtype: Any):
    """Return (namespace dtype, name) for float32/float64, else raise."""
    for name in ("float32", "float64"):
        if dtype == name or dtype == getattr(xp, name):
            return getattr(xp, name), name
        try:
            if np.dtype(dtype) == np.dtype(name):
                return getattr(xp, name), name
        except TypeError:
            pass
    raise TypeError(f"dtype={dtype!r} is not supported; use 'float32' or 'float64'")




def _resolve(xp: Any, impl: str):
    """(namespace, implementation) of an rng call: NumPy by default; see :func:`egdnp._backend.resolve_impl`."""
    xp = _backend.get_namespace("numpy" if xp is None else xp)
    return xp, _backend.resolve_impl(xp, impl, kernels=("numba", "cupy"))


def _kernels(impl: str):
    """The kernel module of ``impl``: ``_cpu`` is imported on first use (it loads Numba; ``import egdnp``
    must not), ``_gpu`` loads CuPy only when it launches."""
    if impl == "numba":
        from . import _cpu

        return _cpu
    return _gpu


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------
def random_bits(shape, *, seed, stream=0, member=0, generation=0, xp=None, device=None, impl="auto"):
    """Raw Philox words of an address.

    Parameters
    ----------
    shape : int or tuple of int
    seed : int
        64-bit seed (the Philox key).
    stream : int or str
        Stream id, or a parameter name hashed with :func:`stream_id`.
    member, generation : int
        Population member and generation (counter words 2 and 3).
    xp : namespace or {"numpy", "cupy"}, optional
        Where to compute; NumPy by default.
    device : optional
        Device of ``xp`` for the result.
    impl : {"auto", "numba", "cupy", "array_api"}
        Force one implementation (tests); "auto" picks by namespace.

    Returns
    -------
    array, shape ``shape``, uint32
        Element ``j`` (C order) is word ``j % 4`` of block ``j // 4``.
    """
    seed = check_seed(seed)
    stream, member, generation = _check_stream(stream), _check_word("member", member), _check_word("generation", generation)
    dims = _check_shape(shape)
    xp, impl = _resolve(xp, impl)
    n = _size(dims)
    if impl == "array_api":
        flat = _array_api.random_bits(xp, n, seed, stream, member, generation, device)
    else:
        flat = _kernels(impl).random_bits(n, seed, stream, member, generation)
    return xp.reshape(flat, dims)


def uniform(shape, *, seed, stream=0, member=0, generation=0, dtype="float32", xp=None, device=None, impl="auto"):
    """Uniform floats in [0, 1): ``(word >> 8) * 2**-24`` (exact in both dtypes).

    Parameters
    ----------
    shape : int or tuple of int
    seed : int
        64-bit seed (the Philox key).
    stream : int or str
        Stream id, or a parameter name hashed with :func:`stream_id`.
    member, generation : int
        Population member and generation (counter words 2 and 3).
    dtype : {"float32", "float64"}
    xp : namespace or {"numpy", "cupy"}, optional
        Where to compute; NumPy by default.
    device : optional
        Device of ``xp`` for the result.
    impl : {"auto", "numba", "cupy", "array_api"}
        Force one implementation (tests); "auto" picks by namespace.

    Returns
    -------
    array, shape ``shape``, ``dtype``
        Element ``j`` is ``(random_bits(...)[j] >> 8) * 2**-24``: a multiple of
        ``2**-24`` in [0, 1), bitwise equal on every backend.
    """
    seed = check_seed(seed)
    stream, member, generation = _check_stream(stream), _check_word("member", member), _check_word("generation", generation)
    dims = _check_shape(shape)
    xp, impl = _resolve(xp, impl)
    dt, _ = _check_dtype(xp, dtype)
    bits = random_bits(dims, seed=seed, stream=stream, member=member, generation=generation, xp=xp, device=device, impl=impl)
    return xp.astype(xp.astype(bits >> 8, dt) * (2.0**-24), dt)


def normal(shape, *, seed, stream=0, member=0, generation=0, dtype="float32", xp=None, device=None, impl="auto"):
    """Standard normal values of an address (Box-Muller on 24-bit uniforms).

    Parameters
    ----------
    shape : int or tuple of int
    seed : int
        64-bit seed.
    stream : int or str
        Stream id or parameter name (hashed with :func:`stream_id`).
    member, generation : int
        Counter words: population member and generation.
    dtype : {"float32", "float64"}
    xp : namespace or {"numpy", "cupy"}, optional
    device : optional
    impl : {"auto", "numba", "cupy", "array_api"}

    Returns
    -------
    array, shape ``shape``, dtype ``dtype``
        Element ``j`` (C order) is the spec's normal number ``j`` of the
        address; it does not depend on ``shape``.
    """
    seed = check_seed(seed)
    stream, member, generation = _check_stream(stream), _check_word("member", member), _check_word("generation", generation)
    dims = _check_shape(shape)
    xp, impl = _resolve(xp, impl)
    dt, dname = _check_dtype(xp, dtype)
    n = _size(dims)
    if impl == "array_api":
        flat = _array_api.normal(xp, n, seed, stream, member, generation, dt, device)
    else:
        flat = _kernels(impl).normal(n, seed, stream, member, generation, dname)
    return xp.reshape(flat, dims)


def normal_members(n_members, size, *, seed, stream=0, first=0, generation=0, dtype="float32", xp=None, device=None,
                   impl="auto"):
    """:func:`normal` of ``n_members`` consecutive members at once: ``out[k] = normal((size,), member=first + k)``.

    The noise of a population (EGGROLL's factors of every pair) in one kernel
    launch: Numba runs all rows in one call (split over threads by rows from
    :data:`egdnp._threads.ES_NOISE_SPLIT_FROM` values), CuPy in one 2-D launch;
    the array-API code calls :func:`normal` per member and is the oracle.
    Each row is exactly :func:`normal`'s value for its member (bitwise, for
    the same ``impl``).

    Parameters
    ----------
    n_members, size : int
        Rows (members) and values per row.
    first : int
        Member id of row 0; rows are members ``first .. first + n_members - 1``
        (all of them at most 2**32 - 1).
    seed, stream, generation, dtype, xp, device, impl :
        As in :func:`normal`.

    Returns
    -------
    array, shape (n_members, size), dtype ``dtype``
    """
    seed = check_seed(seed)
    stream, first, generation = _check_stream(stream), _check_word("first", first), _check_word("generation", generation)
    n_members, size = _check_count("n_members", n_members), _check_count("size", size)
    if size > MAX_ELEMENTS:
        raise ValueError(f"size={size} is more than the 2**34 values one address (one row) can hold; "
                         "split the parameter over several streams")
    if n_members and first + n_members - 1 > MAX_WORD:
        raise ValueError(f"first={first} with n_members={n_members} runs past member 2**32 - 1; "
                         "lower first or draw fewer members")
    xp, impl = _resolve(xp, impl)
    dt, dname = _check_dtype(xp, dtype)
    if impl != "array_api":
        return _kernels(impl).normal_members(n_members, size, seed, stream, first, generation, dname)
    if n_members == 0:
        return xp.zeros((0, size), dtype=dt, device=device)
    return xp.stack([_array_api.normal(xp, size, seed, stream, first + k, generation, dt, device)
                     for k in range(n_members)], axis=0)


def weighted_noise_sum(weights, shape, *, seed, stream=0, members=None, generation=0, dtype="float32", xp=None, device=None, impl="auto"):
    """Fitness-weighted sum of regenerated noise, never holding the population.

    ``g[j] = sum_i weights[i] * normal(seed, stream, members[i], generation)[j]``

    Parameters
    ----------
    weights : sequence or array, shape (pop,)
        One weight per member (host floats or an array of ``xp``).
    shape : int or tuple of int
        Shape of one noise array (a parameter's shape).
    seed : int
    stream : int or str
    members : sequence of int, shape (pop,), optional
        Member ids; ``range(pop)`` by default.
    generation : int
    dtype : {"float32", "float64"}
        Output dtype.  Sums accumulate in float64 on every backend; see
        docs/noise.md.
    xp, device, impl :
        As in :func:`normal`.

    Returns
    -------
    array, shape ``shape``
        Extra memory beyond the output is O(chunk) per thread.
    """
    seed = check_seed(seed)
    stream, generation = _check_stream(stream), _check_word("generation", generation)
    dims = _check_shape(shape)
    xp, impl = _resolve(xp, impl)
    dt, dname = _check_dtype(xp, dtype)
    w_host = np.asarray(_backend.to_host(weights) if hasattr(weights, "__array_namespace__") else weights, dtype=np.float64)
    if w_host.ndim != 1:
        raise ValueError(f"weights must be one-dimensional (one per member); got shape {w_host.shape}")
    if not np.all(np.isfinite(w_host)):
        raise ValueError("weights contain non-finite values; shape the fitnesses before weighting noise")
    if members is None:
        m_host = np.arange(w_host.shape[0], dtype=np.int64)
    else:
        m_host = np.asarray(members)
        if m_host.shape != w_host.shape:
            raise ValueError(f"members has shape {m_host.shape} but weights has shape {w_host.shape}; pass one member id per weight")
        for m in m_host.tolist():
            _check_word("members[i]", m)
        m_host = m_host.astype(np.int64)
    n = _size(dims)
    if impl == "array_api":
        flat = _array_api.weighted_noise_sum(xp, w_host.tolist(), m_host.tolist(), n, seed, stream, generation, dt, device)
    else:
        flat = _kernels(impl).weighted_noise_sum(w_host, m_host.astype(np.uint32), n, seed, stream, generation, dname)
    return xp.reshape(flat, dims)


def centered_ranks(fitness, *, xp=None, impl="auto", check_finite: bool = True):
    """Centered ranks of a fitness vector.

    ``rank_i`` is the 0-based ascending rank of ``fitness[i]``; tied values
    get the mean of the ranks they span (so equal fitnesses get equal
    weights).  The result is ``rank_i / (n - 1) - 0.5``, in [-0.5, 0.5] and
    summing to zero; for ``n == 1`` it is ``[0.]``.

    Parameters
    ----------
    fitness : array, shape (pop,)
        Finite floats, or integers (ranked exactly; the result is then float64).
    xp, impl :
        As in :func:`normal`; by default the namespace of ``fitness``.
    check_finite : bool
        ``False`` skips the finiteness check (a device sync on a GPU) for a
        caller that has already made it.

    Returns
    -------
    array, shape (pop,)
        The dtype of ``fitness`` when it is floating, float64 for integer fitness.

    Raises
    ------
    TypeError
        Not an array, or a bool or complex dtype.
    ValueError
        Not 1-D, empty, or holding NaN/inf.
    """
    if not (hasattr(fitness, "shape") and hasattr(fitness, "dtype")):
        raise TypeError(f"fitness must be an array of shape (pop,); got {type(fitness).__name__}")
    if xp is None:
        xp = _backend.array_namespace(fitness)
    xp, impl = _resolve(xp, impl)
    if _backend.array_namespace(fitness) is not xp:
        fitness = _backend.to_device(_backend.to_host(fitness), xp)
    if fitness.ndim != 1:
        raise ValueError(f"fitness must be one-dimensional (one value per member); got shape {tuple(fitness.shape)}")
    if fitness.shape[0] == 0:
        raise ValueError("fitness is empty; centered ranks need at least one member")
    if xp.isdtype(fitness.dtype, "integral"):
        # ranks of integers are exact in float64, and a float result is what callers weight with
        fitness = xp.astype(fitness, xp.float64)
    elif not xp.isdtype(fitness.dtype, "real floating"):
        raise TypeError(f"fitness has dtype {fitness.dtype}; pass real floats or integers")
    elif not check_finite:
        pass
    elif not bool(xp.all(xp.isfinite(fitness))):
        raise ValueError("fitness contains non-finite values (nan or inf); rank only finite fitnesses")
    if impl == "array_api":
        return _array_api.centered_ranks(xp, fitness)
    return _kernels(impl).centered_ranks(fitness)
