"""EGD mutations: addressed Gaussian noise, full rank or low rank, and their weighted sums.

The unit noise of member ``m`` for parameter ``name`` in cycle ``c`` is

* full rank (``mutation="full"``, or any tensor that is not a matrix)::

      z = rng.normal(shape, seed=seed, stream=name, member=m, generation=c)

* low rank (``mutation="lowrank"``, rank ``r``, matrices ``(rows, cols)``, and
  conv filter banks ``(C_out, C_in, kh, kw)`` as their row-major flattening
  ``(rows, cols) = (C_out, C_in * kh * kw)``, as in EGGROLL)::

      f = rng.normal(((rows + cols) * r,), seed=seed, stream=name, member=m, generation=c)
      A = f[:rows * r].reshape(rows, r);  B = f[rows * r:].reshape(cols, r)
      z = (A @ B.T / sqrt(r)).reshape(shape)   (computed as (A * (scale / sqrt(r))) @ B.T)

  Every entry of ``A Bᵀ`` is a sum of ``r`` products of independent unit
  normals (variance ``r``), so ``z`` has unit variance: its expected RMS
  equals the full-rank mutation's.

A candidate is ``base + scale * z`` with ``scale = sigma * max(rms(base), 1e-8)``.

This module is the one place that chooses EGD's kernels: the array-API code
here is the oracle, and NumPy arrays go to the Numba kernels of
:mod:`egdnp.optim._egd_cpu` (:func:`mutant`, :func:`mutant_plans`,
:func:`seed_recombination`, :func:`mix`, :func:`param_scale`,
:func:`member_factors`), serial below ``egdnp._threads.EGD_SPLIT_FROM``
elements and split over Numba's threads from there
(:func:`set_parallel_from`).  Every path rounds like the oracle, bit for bit.
"""

from __future__ import annotations

import math
import numbers

from .. import _backend, _threads, rng

__all__ = ["param_scale", "unit_noise", "mutant", "weighted_unit_noise", "is_lowrank", "lowrank_shape",
           "lowrank_factors", "dtype_name", "mutant_plans", "seed_recombination", "mix", "member_factors",
           "set_parallel_from"]

RMS_FLOOR = 1e-8


def set_parallel_from(n_elements: int) -> int:
    """Run EGD's Numba kernels on arrays of at least ``n_elements`` elements split over Numba's threads.

    Sets ``egdnp._threads.EGD_SPLIT_FROM`` (default ``2**20``, chosen on a
    2-core machine where splitting lost inside the cycle; see
    :mod:`egdnp._threads`).  Results are the same bits either way.

    Parameters
    ----------
    n_elements : int >= 1

    Returns
    -------
    int
        The previous threshold (to restore it).
    """
    if isinstance(n_elements, bool) or not isinstance(n_elements, numbers.Integral) or n_elements < 1:
        raise ValueError(f"n_elements={n_elements!r} must be an int >= 1 (elements of one parameter array)")
    old = _threads.EGD_SPLIT_FROM
    _threads.EGD_SPLIT_FROM = int(n_elements)
    return old


def _cpu():
    """The Numba kernels, imported on first use: ``import egdnp`` must not load Numba."""
    from . import _egd_cpu

    return _egd_cpu


def _numba(xp, usable: bool = True) -> bool:
    """Whether an op without an ``impl=`` argument runs its Numba kernel for namespace ``xp``."""
    return _backend.resolve_impl(xp, "auto", usable=usable) == "numba"


def _parallel(n: int) -> bool:
    # read at call time, so set_parallel_from and tests patching _threads take effect
    return n >= _threads.EGD_SPLIT_FROM


def dtype_name(xp, dtype) -> str:
    """``"float32"`` or ``"float64"`` for a namespace dtype (the rng's dtype argument)."""
    return _backend.numpy_dtype(xp, dtype).name


def param_scale(xp, p, sigma: float, scratch=None) -> float:
    """``sigma * max(sqrt(mean(p**2)), 1e-8)`` as a Python float (0 for an empty tensor).

    ``scratch`` (NumPy only, optional): a C-contiguous array of ``p``'s shape and
    dtype that receives the squares instead of a fresh temporary (same result).
    """
    if _size(p) == 0:
        return 0.0
    if scratch is not None and _numba(xp):
        mean_sq = _cpu().mean_square(p, scratch)
    else:
        mean_sq = xp.mean(p * p)
    rms = float(xp.sqrt(mean_sq))
    return float(sigma) * max(rms, RMS_FLOOR)


def _size(p) -> int:
    n = 1
    for d in p.shape:
        n *= int(d)
    return n


def is_lowrank(shape, mutation: str) -> bool:
    """Whether a tensor of this shape gets a low-rank mutation (a matrix or a conv filter bank)."""
    return mutation == "lowrank" and len(shape) in (2, 4)


def lowrank_shape(shape) -> tuple:
    """``(rows, cols)`` of a low-rank mutated tensor: ``(m, n)``, or ``(C_out, C_in * kh * kw)`` for a filter bank.

    Parameters
    ----------
    shape : tuple of int, length 2 or 4

    Returns
    -------
    (int, int)
    """
    shape = tuple(int(s) for s in shape)
    cols = 1
    for s in shape[1:]:
        cols *= s
    return shape[0], cols


def unit_noise(shape, *, seed: int, name: str, member: int, cycle: int, dtype: str, xp, device=None,
               mutation: str = "full", rank: int = 1, factor: float = 1.0):
    """``factor * z`` for the unit noise ``z`` of one member (see the module docstring).

    For low-rank noise the factor is folded into the small factor ``A``
    (``(A * (factor / sqrt(r))) @ Bᵀ``), which saves two passes over the matrix.

    Returns
    -------
    array, shape ``shape``, dtype ``dtype``, a fresh array the caller may modify in place.
    """
    shape = tuple(int(s) for s in shape)
    if is_lowrank(shape, mutation):
        rows, cols = lowrank_shape(shape)
        a, b = _factors(rows, cols, rank, seed=seed, name=name, member=member, cycle=cycle, dtype=dtype, xp=xp,
                        device=device)
        z = xp.matmul(a * (float(factor) / math.sqrt(rank)), xp.permute_dims(b, (1, 0)))
        return z if len(shape) == 2 else xp.reshape(z, shape)
    z = rng.normal(shape, seed=seed, stream=name, member=member, generation=cycle, dtype=dtype, xp=xp, device=device)
    if factor != 1.0:
        z *= float(factor)
    return z


def mutant(base, scale: float, *, seed: int, name: str, member: int, cycle: int, xp, device=None,
           mutation: str = "full", rank: int = 1, out=None, impl: str = "auto"):
    """A candidate ``base + scale * z`` (``z`` from :func:`unit_noise`), optionally written into ``out``.

    Dispatch: full-rank mutations of NumPy arrays run the fused Numba kernel
    (:func:`egdnp.optim._egd_cpu.mutant_into`, one pass, no temporary);
    low-rank ones write the oracle's matmul straight into ``out`` and add the
    base in place; everything else, and ``impl="array_api"``, runs the
    array-API oracle ``z = unit_noise(...); z *= scale; z += base``.  All
    paths round the same way and agree bit for bit.

    Parameters
    ----------
    base : array
        The base tensor (any shape; float32 or float64).
    scale : float
        Absolute noise std, ``sigma * max(rms(base), 1e-8)``.
    out : array, optional
        Where to write (same shape/dtype as ``base``; a host buffer for NumPy).
    impl : {"auto", "numba", "array_api"}

    Returns
    -------
    array, the shape and dtype of ``base`` (``out`` when given).
    """
    shape = tuple(base.shape)
    lowrank = is_lowrank(shape, mutation)
    chosen = _backend.resolve_impl(xp, impl, usable=not lowrank, needs="a full-rank mutation")
    if chosen == "numba":
        if out is None:
            out = xp.empty(shape, dtype=base.dtype)
        return _cpu().mutant_into(out, base, scale, seed, rng.stream_id(name), member, cycle,
                                  parallel=_parallel(out.size))
    if impl == "auto" and lowrank and _backend.is_numpy(xp) and (out is None or out.flags.c_contiguous):
        # the oracle's own matmul, written into the output, then the base added in place
        rows, cols = lowrank_shape(shape)
        a, b = _factors(rows, cols, rank, seed=seed, name=name, member=member, cycle=cycle,
                        dtype=dtype_name(xp, base.dtype), xp=xp, device=device)
        if out is None:
            out = xp.empty(shape, dtype=base.dtype)
        _cpu().lowrank_mutant_into(out.reshape(rows, cols), base.reshape(rows, cols),
                                     a * (float(scale) / math.sqrt(rank)), b)
        return out
    z = unit_noise(shape, seed=seed, name=name, member=member, cycle=cycle, dtype=dtype_name(xp, base.dtype), xp=xp,
                   device=device, mutation=mutation, rank=rank, factor=scale)
    z += base
    if out is None:
        return z
    out[...] = z
    return out


def lowrank_factors(shape, *, seed: int, name: str, member: int, cycle: int, rank: int, dtype: str, xp, device=None,
                    factor: float = 1.0):
    """The factors of one member's low-rank noise: ``z = (A @ B.T).reshape(shape)`` with ``A`` pre-scaled.

    ``A`` is the unit factor times ``factor / sqrt(rank)`` (rounded once, as
    :func:`mutant` and :func:`unit_noise` scale it), ``B`` the unit factor.

    Parameters
    ----------
    shape : tuple of int
        A matrix ``(rows, cols)`` or a filter bank ``(C_out, C_in, kh, kw)``.
    seed, name, member, cycle, rank :
        The noise address and the rank.
    dtype : {"float32", "float64"}
    xp : namespace
    device : optional
    factor : float
        Typically the mutation scale ``sigma * rms(base)``.

    Returns
    -------
    A : array, shape (rows, rank)
    B : array, shape (cols, rank)
    """
    rows, cols = lowrank_shape(shape)
    a, b = _factors(rows, cols, rank, seed=seed, name=name, member=member, cycle=cycle, dtype=dtype, xp=xp,
                    device=device)
    return a * (float(factor) / math.sqrt(rank)), b


def _factors(rows, cols, rank, *, seed, name, member, cycle, dtype, xp, device):
    flat = rng.normal(((rows + cols) * rank,), seed=seed, stream=name, member=member, generation=cycle, dtype=dtype,
                      xp=xp, device=device)
    a = xp.reshape(flat[: rows * rank], (rows, rank))
    b = xp.reshape(flat[rows * rank:], (cols, rank))
    return a, b


def weighted_unit_noise(weights, members, shape, *, seed: int, name: str, cycle: int, dtype: str, xp, device=None,
                        mutation: str = "full", rank: int = 1, factor: float = 1.0):
    """``factor * sum_i weights[i] * unit_noise(member=members[i])`` without holding the members' noise.

    Full rank uses :func:`egdnp.rng.weighted_noise_sum` (fused, O(1) extra
    memory per thread); low rank stacks the weighted factors,
    ``[w_1 A_1, ..., w_k A_k] @ [B_1, ..., B_k]ᵀ / sqrt(r)``, so only the
    small factors are regenerated.

    Parameters
    ----------
    weights : sequence of float, shape (k,)
    members : sequence of int, shape (k,)
    shape : tuple of int
    """
    shape = tuple(int(s) for s in shape)
    weights = [float(w) * float(factor) for w in weights]
    members = [int(m) for m in members]
    if is_lowrank(shape, mutation):
        rows, cols = lowrank_shape(shape)
        a_parts, b_parts = [], []
        for w, m in zip(weights, members):
            a, b = _factors(rows, cols, rank, seed=seed, name=name, member=m, cycle=cycle, dtype=dtype, xp=xp,
                            device=device)
            a_parts.append(a * (w / math.sqrt(rank)))
            b_parts.append(b)
        a_cat = xp.concat(a_parts, axis=1)
        b_cat = xp.concat(b_parts, axis=1)
        g = xp.matmul(a_cat, xp.permute_dims(b_cat, (1, 0)))
        return g if len(shape) == 2 else xp.reshape(g, shape)
    return rng.weighted_noise_sum(weights, shape, seed=seed, stream=name, members=members, generation=cycle,
                                  dtype=dtype, xp=xp, device=device)


def mutant_plans(xp, bases: dict, scales: dict, *, seed: int, cycle: int, mutation: str, rank: int) -> dict:
    """NumPy: the Numba kernels' per-parameter arguments, converted once per cycle (``{}`` for other namespaces).

    Parameters
    ----------
    xp : namespace
        The namespace of ``bases``.
    bases : dict[str, array]
        The mutated tensors (host arrays), keyed by name.
    scales : dict[str, float]
        Absolute noise std per name.
    seed, cycle, mutation, rank :
        The cycle's noise address and mutation kind.

    Returns
    -------
    dict[str, plan]
        ``plan.write(out, member)`` writes the mutant of ``member`` into the
        C-contiguous ``out``; a name without a plan (a non-contiguous low-rank
        base) goes through :func:`mutant`.
    """
    if not _numba(xp):
        return {}
    cpu, plans = _cpu(), {}
    for n, base in bases.items():
        stream = rng.stream_id(n)
        if not is_lowrank(tuple(base.shape), mutation):
            plans[n] = cpu.MutantPlan(base, scales[n], seed, stream, cycle, parallel=_parallel(base.size))
        elif base.flags.c_contiguous:
            plans[n] = cpu.LowRankPlan(base, scales[n], rank, seed, stream, cycle)
    return plans


def seed_recombination(p, weights, members, scale: float, *, seed: int, name: str, cycle: int, xp, device=None,
                       mutation: str = "full", rank: int = 1):
    """``p + scale * sum_i weights[i] * unit_noise(member=members[i])``, a fresh array.

    NumPy full rank: one Numba pass (regenerate, weight, round, add the base);
    otherwise :func:`weighted_unit_noise` plus ``p``, the same bits.

    Parameters
    ----------
    p : array
        The base tensor.
    weights : sequence of float, shape (k,)
    members : sequence of int, shape (k,)
    scale : float
        Absolute noise std of ``p``.

    Returns
    -------
    array, the shape and dtype of ``p``.
    """
    if _numba(xp, usable=not is_lowrank(tuple(p.shape), mutation)):
        out = xp.empty(p.shape, dtype=p.dtype)
        return _cpu().seed_recombine_into(out, p, [w * scale for w in weights], members, seed, rng.stream_id(name),
                                          cycle, parallel=_parallel(out.size))
    g = weighted_unit_noise(weights, members, p.shape, seed=seed, name=name, cycle=cycle, dtype=dtype_name(xp, p.dtype),
                            xp=xp, device=device, mutation=mutation, rank=rank, factor=scale)
    g += p
    return g


def mix(xp, parts, weights, uniform: bool, out=None):
    """The elites' recombination: ``((p0 + p1) + ...) / k`` when ``uniform``, else ``p0 * w0 + p1 * w1 + ...``.

    Every product and sum is rounded to the dtype (the spec's
    ``stack(...).mean(0)`` as a running sum and one division); NumPy runs
    one Numba pass instead of ``k + 2``.

    Parameters
    ----------
    xp : namespace
        The namespace of ``parts``.
    parts : sequence of array, length k >= 1, one shape and dtype
    weights : sequence of float, length k
    uniform : bool
    out : array, optional
        Where to write (C-contiguous for NumPy); a fresh array otherwise.

    Returns
    -------
    array, ``out`` when given.
    """
    if _numba(xp):
        if out is None:
            out = xp.empty(parts[0].shape, dtype=parts[0].dtype)
        return _cpu().mix_into(out, parts, weights, uniform)
    first = parts[0] * (1.0 if uniform else weights[0])
    if out is None:
        out = first
    else:
        out[...] = first
    for w, x in zip(weights[1:], parts[1:]):
        out += x if uniform else x * w
    if uniform:
        out /= float(len(parts))
    return out


def member_factors(shape, members, scale: float, *, seed: int, name: str, cycle: int, rank: int, dtype, xp,
                   device=None):
    """Stacked low-rank factors of ``members`` (:func:`lowrank_factors` of each; zeros for members ``<= 0``).

    Parameters
    ----------
    shape : tuple of int
        A matrix or a filter bank.
    members : sequence of int, length n
    scale : float
        The tensor's absolute noise std (folded into ``A``).
    dtype : namespace dtype

    Returns
    -------
    A : array, shape (n, rows, rank)
    B : array, shape (n, cols, rank)
    """
    rows, cols = lowrank_shape(shape)
    if _numba(xp):
        return _cpu().stacked_factors(rows, cols, rank, scale, seed, rng.stream_id(name), cycle, members, dtype)
    kw = {} if device is None else {"device": device}
    a_parts, b_parts = [], []
    for m in members:
        if m > 0:
            a, b = lowrank_factors(shape, seed=seed, name=name, member=m, cycle=cycle, rank=rank,
                                   dtype=dtype_name(xp, dtype), xp=xp, device=device, factor=scale)
        else:
            a, b = xp.zeros((rows, rank), dtype=dtype, **kw), xp.zeros((cols, rank), dtype=dtype, **kw)
        a_parts.append(a)
        b_parts.append(b)
    return xp.stack(a_parts, axis=0), xp.stack(b_parts, axis=0)
