"""Numba fast paths of the EGD cycle on NumPy arrays (one pass over memory each).

* :func:`mutant_into` -- ``out = base + scale * normal(address)``: the
  array-API path draws the normals, scales them in place and adds the base
  (three passes and a temporary); this kernel regenerates the same normals
  chunk by chunk with the rng's own Numba routine (``rng.kernels.normal_chunk``) into a
  chunk-local buffer and writes ``base[j] + scale * z[j]`` straight into
  ``out`` in one contiguous loop (sliced, 0-based, so Numba drops the
  negative-index checks and vectorises it: 0.235 ms instead of 0.27 ms for
  a 784x256 float32 weight on one core).
* :func:`seed_recombine_into` -- ``out = base + sum_i w_i z_i`` for the
  elites' regenerated noise (``population_storage="seed"``): the same float64
  accumulation as :func:`egdnp.rng.weighted_noise_sum`, rounded to the dtype,
  plus the base, in one pass.
* :func:`mix_into` -- the elites' mean or weighted sum (``population_storage=
  "array"``) in one pass instead of ``k + 2``.
* :func:`lowrank_mutant_into` -- ``out = (A * f) @ Bᵀ + base`` with the product
  written into ``out`` by the same BLAS call as the oracle.
* :func:`mean_square` -- ``mean(p * p)`` through a reused scratch buffer.

Every kernel rounds exactly like the array-API oracle it replaces (a product,
then a sum, in the array's dtype; no fused multiply-add: the kernels are
compiled without fastmath), so both paths agree bit for bit (tested).

Serial or parallel: the caller chooses (``parallel=``).  The cycle alternates
these kernels with the closure's BLAS calls, and waking Numba's thread pool
right before (or after) OpenBLAS's threads costs more than it saves on small
arrays, so :mod:`egdnp.optim._egd_mutation` -- the one place that chooses
EGD's kernels -- asks for the parallel ones from
``egdnp._threads.EGD_SPLIT_FROM`` elements.

Only NumPy arrays reach this module (:mod:`egdnp.optim._egd_mutation` sends them).
"""

from __future__ import annotations

import math

import numpy as np
from numba import get_num_threads, njit, prange

from ..rng.kernels import CHUNK_BLOCKS, normal_chunk, weighted_chunk
from ..rng.kernels import key as _key

__all__ = ["mutant_into", "MutantPlan", "LowRankPlan", "seed_recombine_into", "mix_into", "lowrank_mutant_into",
           "stacked_factors", "mean_square"]

# Blocks per sub-chunk of the low-rank factor kernel (its arrays are small).
_SUB = 256

@njit(inline="always")
def _n_chunks(n):
    return ((n + 3) // 4 + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS


# ----------------------------------------------------------------------------
# base + scale * z
# ----------------------------------------------------------------------------
@njit(inline="always")
def _interleave(nb, z0, z1, z2, z3, tmp):
    """tmp[4i + p] = z_p[i] for i < nb: the normals in address order, in a chunk-local buffer."""
    for i in range(nb):
        tmp[4 * i] = z0[i]
        tmp[4 * i + 1] = z1[i]
        tmp[4 * i + 2] = z2[i]
        tmp[4 * i + 3] = z3[i]


@njit(inline="always")
def _affine(out_c, base_c, scale, tmp):
    # slices and a 0-based index: Numba can drop the negative-index checks and vectorise
    for t in range(out_c.shape[0]):
        out_c[t] = base_c[t] + scale * tmp[t]


@njit(inline="always")
def _add_rounded(out_c, base_c, tmp):
    for t in range(out_c.shape[0]):
        out_c[t] = base_c[t] + tmp[t]


@njit(inline="always")
def _mutant_run(c0, c1, out, base, scale, k0, k1, s1, s2, s3, o, z, tmp):
    """Chunks c0 .. c1-1 of ``out = base + scale * z``: normals of one chunk, then one contiguous pass."""
    n = out.shape[0]
    nblocks = (n + 3) // 4
    for b in range(c0 * CHUNK_BLOCKS, min(c1 * CHUNK_BLOCKS, nblocks), CHUNK_BLOCKS):
        nb = min(CHUNK_BLOCKS, nblocks - b)
        normal_chunk(b, nb, k0, k1, s1, s2, s3, o[0], o[1], o[2], o[3], z[0], z[1], z[2], z[3])
        _interleave(nb, z[0], z[1], z[2], z[3], tmp)
        j0 = 4 * b
        j1 = min(n, j0 + 4 * nb)
        _affine(out[j0:j1], base[j0:j1], scale, tmp)


@njit(inline="always")
def _chunk_scratch(dtype):
    o = np.empty((4, CHUNK_BLOCKS), np.uint32)
    z = np.empty((4, CHUNK_BLOCKS), dtype)
    tmp = np.empty(4 * CHUNK_BLOCKS, dtype)
    return o, z, tmp


@njit(parallel=True, cache=True)
def _mutant_parallel(out, base, scale, k0, k1, s1, s2, s3, n_threads):
    nchunks = _n_chunks(out.shape[0])
    nt = max(1, min(n_threads, nchunks))
    for t in prange(nt):
        o, z, tmp = _chunk_scratch(out.dtype)
        _mutant_run(t * nchunks // nt, (t + 1) * nchunks // nt, out, base, scale, k0, k1, s1, s2, s3, o, z, tmp)


@njit(cache=True)
def _mutant_serial(out, base, scale, k0, k1, s1, s2, s3, n_threads):
    o, z, tmp = _chunk_scratch(out.dtype)
    _mutant_run(0, _n_chunks(out.shape[0]), out, base, scale, k0, k1, s1, s2, s3, o, z, tmp)


def mutant_into(out: np.ndarray, base: np.ndarray, scale: float, seed: int, stream: int, member: int,
                generation: int, *, parallel: bool) -> np.ndarray:
    """Write ``base + scale * normal(base.shape, seed, stream, member, generation)`` into ``out``.

    Parameters
    ----------
    out, base : numpy.ndarray, same shape, C-contiguous, float32 or float64
        ``out`` may be a pinned buffer; it must not overlap ``base``.
    scale : float
        Rounded to the arrays' dtype first (as NumPy does with a Python float).
    seed, stream, member, generation : int
        The noise address (``stream`` already an integer id).
    parallel : bool
        Split the work over Numba's threads (same bits either way).
    """
    flat_out = out.reshape(-1)
    flat_base = np.ascontiguousarray(base).reshape(-1)
    n = flat_out.shape[0]
    if n:
        k0, k1 = _key(seed)
        (_mutant_parallel if parallel else _mutant_serial)(
            flat_out, flat_base, out.dtype.type(scale), k0, k1, np.uint32(stream), np.uint32(member),
            np.uint32(generation), get_num_threads())
    return out


class MutantPlan:
    """Everything :func:`mutant_into` converts per call, converted once per cycle and parameter.

    ``plan.write(out, member)`` writes the mutant of ``member`` into the
    C-contiguous buffer ``out``; the numbers are :func:`mutant_into`'s
    (``parallel`` as there).
    """

    __slots__ = ("base", "scale", "k0", "k1", "stream", "generation", "kernel", "n", "n_threads")

    def __init__(self, base: np.ndarray, scale: float, seed: int, stream: int, generation: int, *, parallel: bool):
        self.base = np.ascontiguousarray(base).reshape(-1)
        self.n = self.base.shape[0]
        self.scale = self.base.dtype.type(scale)
        self.k0, self.k1 = _key(seed)
        self.stream = np.uint32(stream)
        self.generation = np.uint32(generation)
        self.kernel = _mutant_parallel if parallel else _mutant_serial
        self.n_threads = get_num_threads()

    def write(self, out: np.ndarray, member: int) -> None:
        """``out`` (C-contiguous, the base's shape) = the mutant of ``member``."""
        if self.n:
            self.kernel(out.reshape(-1), self.base, self.scale, self.k0, self.k1, self.stream, np.uint32(member),
                        self.generation, self.n_threads)


# ----------------------------------------------------------------------------
# base + sum_i w_i z_i  (seed storage recombination)
# ----------------------------------------------------------------------------
@njit(inline="always")
def _seed_mix_run(c0, c1, out, base, weights, members, k0, k1, s1, s3, o, z, tmp, acc):
    n = out.shape[0]
    nblocks = (n + 3) // 4
    for b in range(c0 * CHUNK_BLOCKS, min(c1 * CHUNK_BLOCKS, nblocks), CHUNK_BLOCKS):
        nb = min(CHUNK_BLOCKS, nblocks - b)
        weighted_chunk(b, nb, weights, members, k0, k1, s1, s3, o, z, acc)
        # weighted_noise_sum rounds the float64 sum to the dtype (the stores into tmp do
        # exactly that), then the cycle adds the base
        _interleave(nb, acc[0], acc[1], acc[2], acc[3], tmp)
        j0 = 4 * b
        j1 = min(n, j0 + 4 * nb)
        _add_rounded(out[j0:j1], base[j0:j1], tmp)


@njit(parallel=True, cache=True)
def _seed_mix_parallel(out, base, weights, members, k0, k1, s1, s3, n_threads):
    nchunks = _n_chunks(out.shape[0])
    nt = max(1, min(n_threads, nchunks))
    for t in prange(nt):
        o, z, tmp = _chunk_scratch(out.dtype)
        acc = np.empty((4, CHUNK_BLOCKS), np.float64)
        _seed_mix_run(t * nchunks // nt, (t + 1) * nchunks // nt, out, base, weights, members, k0, k1, s1, s3,
                      o, z, tmp, acc)


@njit(cache=True)
def _seed_mix_serial(out, base, weights, members, k0, k1, s1, s3, n_threads):
    o, z, tmp = _chunk_scratch(out.dtype)
    acc = np.empty((4, CHUNK_BLOCKS), np.float64)
    _seed_mix_run(0, _n_chunks(out.shape[0]), out, base, weights, members, k0, k1, s1, s3, o, z, tmp, acc)


def seed_recombine_into(out: np.ndarray, base: np.ndarray, weights, members, seed: int, stream: int,
                        generation: int, *, parallel: bool) -> np.ndarray:
    """``out = base + (sum_i weights[i] * normal(member=members[i])).astype(dtype)`` in one pass.

    Equal bit for bit to ``g = rng.weighted_noise_sum(weights, ...); g += base``.

    Parameters
    ----------
    out, base : numpy.ndarray, same shape and dtype (float32 or float64), C-contiguous ``out``
    weights : sequence of float, shape (k,)
        Already multiplied by the absolute noise scale; accumulated in float64.
    members : sequence of int, shape (k,)
    parallel : bool
        Split the work over Numba's threads (same bits either way).
    """
    flat_out = out.reshape(-1)
    flat_base = np.ascontiguousarray(base).reshape(-1)
    n = flat_out.shape[0]
    w = np.asarray(weights, dtype=np.float64)
    m = np.asarray(members, dtype=np.uint32)
    if n:
        if w.shape[0] == 0:
            np.copyto(flat_out, flat_base)
            return out
        k0, k1 = _key(seed)
        (_seed_mix_parallel if parallel else _seed_mix_serial)(
            flat_out, flat_base, w, m, k0, k1, np.uint32(stream), np.uint32(generation), get_num_threads())
    return out


# ----------------------------------------------------------------------------
# elite mean / weighted sum (array storage recombination)
# ----------------------------------------------------------------------------
@njit(cache=True)
def _mean2(out, a, b, k):
    for j in range(out.shape[0]):
        out[j] = (a[j] + b[j]) / k


@njit(cache=True)
def _sum2(out, a, b):
    for j in range(out.shape[0]):
        out[j] = a[j] + b[j]


@njit(cache=True)
def _add_div(out, x, k):
    for j in range(out.shape[0]):
        out[j] = (out[j] + x[j]) / k


@njit(cache=True)
def _add(out, x):
    for j in range(out.shape[0]):
        out[j] = out[j] + x[j]


@njit(cache=True)
def _wsum2(out, a, wa, b, wb):
    for j in range(out.shape[0]):
        out[j] = a[j] * wa + b[j] * wb


@njit(cache=True)
def _wadd(out, x, w):
    for j in range(out.shape[0]):
        out[j] = out[j] + x[j] * w


@njit(cache=True)
def _scale(out, a, w):
    for j in range(out.shape[0]):
        out[j] = a[j] * w


def mix_into(out: np.ndarray, parts, weights, uniform: bool) -> np.ndarray:
    """The elites' recombination, rounded like the array-API oracle, written into ``out``.

    ``uniform``: ``((p0 + p1) + p2 + ...) / k`` (the spec's ``stack(...).mean(0)``
    as a running sum, then one division); else ``p0 * w0 + p1 * w1 + ...``,
    every product and sum rounded to the dtype (weights rounded to it first,
    as NumPy does with Python floats).

    Parameters
    ----------
    out : numpy.ndarray, C-contiguous; may not overlap ``parts``
    parts : sequence of numpy.ndarray, the shape and dtype of ``out``, length k >= 1
    weights : sequence of float, length k
    """
    flat = out.reshape(-1)
    xs = [np.ascontiguousarray(p).reshape(-1) for p in parts]
    dt = out.dtype.type
    k = len(xs)
    if uniform:
        if k == 1:
            np.copyto(flat, xs[0])  # x / 1 is x
        elif k == 2:
            _mean2(flat, xs[0], xs[1], dt(k))
        else:
            _sum2(flat, xs[0], xs[1])
            for x in xs[2:-1]:
                _add(flat, x)
            _add_div(flat, xs[-1], dt(k))
        return out
    ws = [dt(w) for w in weights]
    if k == 1:
        _scale(flat, xs[0], ws[0])
        return out
    _wsum2(flat, xs[0], ws[0], xs[1], ws[1])
    for x, w in zip(xs[2:], ws[2:]):
        _wadd(flat, x, w)
    return out


# ----------------------------------------------------------------------------
# low rank
# ----------------------------------------------------------------------------
def lowrank_mutant_into(out: np.ndarray, base: np.ndarray, a_scaled: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``out = a_scaled @ b.T + base``: the product by the oracle's BLAS call, written in place.

    Parameters
    ----------
    out, base : numpy.ndarray, shape (rows, cols), C-contiguous ``out``
    a_scaled : numpy.ndarray, shape (rows, rank)
    b : numpy.ndarray, shape (cols, rank)
    """
    np.matmul(a_scaled, b.T, out=out)
    np.add(out, base, out=out)
    return out


@njit(cache=True)
def _factors_kernel(out, n_a, factor, k0, k1, s1, s2, s3):
    """Normals 0..len(out)-1 of the address into ``out``, the first ``n_a`` multiplied by ``factor``."""
    o = np.empty((4, _SUB), np.uint32)
    z = np.empty((4, _SUB), out.dtype)
    n = out.shape[0]
    nblocks = (n + 3) // 4
    for b in range(0, nblocks, _SUB):
        nb = min(_SUB, nblocks - b)
        normal_chunk(b, nb, k0, k1, s1, s2, s3, o[0], o[1], o[2], o[3], z[0], z[1], z[2], z[3])
        for i in range(nb):
            for q in range(4):
                j = 4 * (b + i) + q
                if j < n:
                    out[j] = z[q, i] * factor if j < n_a else z[q, i]


class LowRankPlan:
    """``out = (A * (scale / sqrt(r))) @ Bᵀ + base`` for one matrix, its arguments converted once per cycle.

    The factors are the normals of ``((rows + cols) * r,)`` at the member's
    address (``A`` first), exactly :func:`egdnp.optim._egd_mutation.unit_noise`'s;
    the product is the same BLAS call as the oracle's, written into ``out``.
    """

    __slots__ = ("base", "rows", "cols", "rank", "factor", "k0", "k1", "stream", "generation", "buf")

    def __init__(self, base: np.ndarray, scale: float, rank: int, seed: int, stream: int, generation: int):
        # a conv filter bank (C_out, C_in, kh, kw) is mutated as its (C_out, C_in*kh*kw) flattening
        self.rows = int(base.shape[0])
        self.cols = int(base.size) // max(self.rows, 1)
        self.base = base.reshape(self.rows, self.cols)
        self.rank = int(rank)
        # NumPy rounds the Python float factor to the dtype before multiplying
        self.factor = base.dtype.type(float(scale) / math.sqrt(rank))
        self.k0, self.k1 = _key(seed)
        self.stream = np.uint32(stream)
        self.generation = np.uint32(generation)
        self.buf = np.empty((self.rows + self.cols) * self.rank, dtype=base.dtype)

    def write(self, out: np.ndarray, member: int) -> None:
        n_a = self.rows * self.rank
        _factors_kernel(self.buf, n_a, self.factor, self.k0, self.k1, self.stream, np.uint32(member), self.generation)
        a = self.buf[:n_a].reshape(self.rows, self.rank)
        b = self.buf[n_a:].reshape(self.cols, self.rank)
        lowrank_mutant_into(out.reshape(self.rows, self.cols), self.base, a, b)


def stacked_factors(rows: int, cols: int, rank: int, scale: float, seed: int, stream: int, generation: int,
                    members, dtype) -> tuple:
    """Low-rank factors of many members at once, drawn as :class:`LowRankPlan` draws them.

    Member ``m >= 1`` gets ``A[i] = A~ * (scale / sqrt(rank))`` (the factor
    rounded to ``dtype`` once) and ``B[i]``; members ``<= 0`` get zeros.

    Parameters
    ----------
    rows, cols, rank : int
    scale : float
    seed, stream, generation : int
        The noise address (``stream`` already a stream id).
    members : sequence of int, length n
    dtype : numpy dtype

    Returns
    -------
    A : numpy.ndarray, shape (n, rows, rank)
    B : numpy.ndarray, shape (n, cols, rank)
    """
    dtype = np.dtype(dtype)
    n, n_a = len(members), rows * rank
    flat = np.zeros((n, (rows + cols) * rank), dtype=dtype)
    factor = dtype.type(float(scale) / math.sqrt(rank))
    k0, k1 = _key(seed)
    for i, m in enumerate(members):
        if int(m) > 0:
            _factors_kernel(flat[i], n_a, factor, k0, k1, np.uint32(stream), np.uint32(int(m)), np.uint32(generation))
    return flat[:, :n_a].reshape(n, rows, rank), flat[:, n_a:].reshape(n, cols, rank)


# ----------------------------------------------------------------------------
# rms
# ----------------------------------------------------------------------------
def mean_square(p: np.ndarray, scratch: np.ndarray):
    """``mean(p * p)`` (NumPy's own reduction, so the same bits) with the squares in ``scratch``."""
    np.multiply(p, p, out=scratch)
    return np.mean(scratch)
