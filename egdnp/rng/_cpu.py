"""Numba CPU kernels of the noise spec (the fast path for NumPy arrays).

Work is split into chunks of ``CHUNK_BLOCKS`` Philox blocks handed to
``prange``; every value depends only on its own index, so results do not
depend on the thread count.  Inside a chunk, Philox runs over local arrays in
a loop LLVM can vectorise, then Box-Muller turns the words into normals.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ._spec import MASK32, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

CHUNK_BLOCKS = 4096  # Philox blocks per chunk (16384 values): large enough to amortise per-chunk buffers, small enough for L2

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint32(PHILOX_W0)
_W1 = np.uint32(PHILOX_W1)
_LO = np.uint64(MASK32)
_S32 = np.uint64(32)


def _pick(kernels, n):
    """The member of a (parallel, serial) kernel pair to use for ``n`` values.

    Both run the same chunks, so results are bitwise identical; an array of one
    chunk or less skips waking the thread pool, which costs more than the work
    (milliseconds when the machine is busy).
    """
    return kernels[1] if n <= 4 * CHUNK_BLOCKS else kernels[0]


@njit(inline="always")
def _n_chunks(n):
    return ((n + 3) // 4 + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS


@njit(inline="always")
def _philox_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3):
    """Philox4x32-10 of blocks b0 .. b0+nb-1 into o0..o3[:nb] (uint32)."""
    for i in range(nb):
        x0 = np.uint32(b0 + i)
        x1 = c1
        x2 = c2
        x3 = c3
        ka = k0
        kb = k1
        for _ in range(10):
            p0 = _M0 * np.uint64(x0)
            p1 = _M1 * np.uint64(x2)
            y0 = np.uint32(p1 >> _S32) ^ x1 ^ ka
            y2 = np.uint32(p0 >> _S32) ^ x3 ^ kb
            x1 = np.uint32(p1 & _LO)
            x3 = np.uint32(p0 & _LO)
            x0 = y0
            x2 = y2
            ka = np.uint32(ka + _W0)
            kb = np.uint32(kb + _W1)
        o0[i] = x0
        o1[i] = x1
        o2[i] = x2
        o3[i] = x3


@njit(inline="always")
def _bits_one_chunk(ch, out, k0, k1, c1, c2, c3):
    n = out.shape[0]
    nblocks = (n + 3) // 4
    b0 = ch * CHUNK_BLOCKS
    nb = min(CHUNK_BLOCKS, nblocks - b0)
    o0 = np.empty(CHUNK_BLOCKS, np.uint32)
    o1 = np.empty(CHUNK_BLOCKS, np.uint32)
    o2 = np.empty(CHUNK_BLOCKS, np.uint32)
    o3 = np.empty(CHUNK_BLOCKS, np.uint32)
    _philox_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3)
    _store4(out, b0, nb, o0, o1, o2, o3)


@njit(parallel=True, cache=True)
def _bits_parallel(out, k0, k1, c1, c2, c3):
    for ch in prange(_n_chunks(out.shape[0])):
        _bits_one_chunk(ch, out, k0, k1, c1, c2, c3)


@njit(cache=True)
def _bits_serial(out, k0, k1, c1, c2, c3):
    for ch in range(_n_chunks(out.shape[0])):
        _bits_one_chunk(ch, out, k0, k1, c1, c2, c3)


_BITS_KERNELS = (_bits_parallel, _bits_serial)


def _key(seed: int):
    return np.uint32(seed & MASK32), np.uint32(seed >> 32)


def random_bits(n, seed, stream, member, generation):
    """uint32 words 0..n-1 of an address, shape (n,)."""
    out = np.empty(n, dtype=np.uint32)
    if n:
        k0, k1 = _key(seed)
        _pick(_BITS_KERNELS, n)(out, k0, k1, np.uint32(stream), np.uint32(member), np.uint32(generation))
    return out


# ----------------------------------------------------------------------------
# normals
# ----------------------------------------------------------------------------
# float32 Box-Muller with polynomial log and sincos.  Accuracy against the
# float64 evaluation of the spec is about 7e-7 absolute (documented bound:
# NORMAL_ATOL["float32"] = 4e-6).  The loops are written so LLVM vectorises
# them; ``contract`` lets it fuse multiply-adds (results stay within the bound).
_SQRT2_F32 = np.float32(math.sqrt(2.0))
_LN2X2_F32 = np.float32(2.0 * math.log(2.0))
_PIO2_F32 = np.float32(math.pi / 2.0)


@njit(cache=True, fastmath={"contract"})
def _box_muller_f32(wa, wb, nb, fbuf, ebuf, zc, zs):
    """Normals ``r cos(theta)``, ``r sin(theta)`` of word pairs (wa[i], wb[i]), i < nb.

    ``-2 ln u`` for ``u = m * 2**-24`` (``m = (wa >> 8) + 1``) is
    ``2 (24 - e) ln 2 - 2 ln x`` with ``m = x * 2**e`` and ``x`` in
    [sqrt(1/2), sqrt(2)); ``ln x`` is Cephes' logf polynomial.  ``theta =
    2 pi t`` is reduced exactly in ``t``: ``4 t = q + f`` with integer ``q`` and
    ``|f| <= 1/2``, then ``sin``/``cos`` of ``f pi/2`` (Cephes' sinf/cosf
    polynomials) are rotated by ``q`` quarter turns.
    """
    ibuf = fbuf.view(np.uint32)
    for i in range(nb):
        fbuf[i] = np.float32((wa[i] >> np.uint32(8)) + np.uint32(1))  # exact: < 2**25
    for i in range(nb):
        bits = ibuf[i]
        ebuf[i] = np.int32(bits >> np.uint32(23)) - np.int32(127)
        ibuf[i] = (bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)  # mantissa in [1, 2)
    for i in range(nb):
        x = fbuf[i]
        e = ebuf[i]
        big = x > _SQRT2_F32
        x = np.float32(0.5) * x if big else x
        e = e + np.int32(1) if big else e
        f = x - np.float32(1.0)
        f2 = f * f
        p = np.float32(7.0376836292e-2)
        p = p * f + np.float32(-1.1514610310e-1)
        p = p * f + np.float32(1.1676998740e-1)
        p = p * f + np.float32(-1.2420140846e-1)
        p = p * f + np.float32(1.4249322787e-1)
        p = p * f + np.float32(-1.6668057665e-1)
        p = p * f + np.float32(2.0000714765e-1)
        p = p * f + np.float32(-2.4999993993e-1)
        p = p * f + np.float32(3.3333331174e-1)
        ln_x = f + f2 * (f * p - np.float32(0.5))
        r = np.sqrt(np.float32(np.int32(24) - e) * _LN2X2_F32 - np.float32(2.0) * ln_x)

        k = wb[i] >> np.uint32(8)  # t = k * 2**-24, 4t = k * 2**-22
        q = (k + np.uint32(0x200000)) >> np.uint32(22)  # round(4t), 0..4
        a = np.float32(np.int32(k) - np.int32(q << np.uint32(22))) * np.float32(2.0**-22) * _PIO2_F32
        a2 = a * a
        s = a + a * a2 * (np.float32(-1.6666654611e-1) + a2 * (np.float32(8.3321608736e-3) + a2 * np.float32(-1.9515295891e-4)))
        c = (np.float32(1.0) - np.float32(0.5) * a2
             + a2 * a2 * (np.float32(4.166664568298827e-2) + a2 * (np.float32(-1.388731625493765e-3) + a2 * np.float32(2.443315711809948e-5))))
        # cos(a + q pi/2), sin(a + q pi/2): odd q swaps c and s; signs by quadrant.
        swap = (q & np.uint32(1)) != 0
        base_c = s if swap else c
        base_s = c if swap else s
        sign_c = np.float32(np.int32(1) - np.int32(2) * np.int32(((q + np.uint32(1)) >> np.uint32(1)) & np.uint32(1)))
        sign_s = np.float32(np.int32(1) - np.int32(2) * np.int32((q >> np.uint32(1)) & np.uint32(1)))
        zc[i] = r * (base_c * sign_c)
        zs[i] = r * (base_s * sign_s)


@njit(cache=True)
def _box_muller_f64(wa, wb, nb, zc, zs):
    """float64 Box-Muller (libm log/cos/sin) of word pairs (wa[i], wb[i]), i < nb."""
    scale = 2.0**-24
    two_pi = 2.0 * math.pi
    for i in range(nb):
        u1 = (np.float64(wa[i] >> np.uint32(8)) + 1.0) * scale
        theta = two_pi * (np.float64(wb[i] >> np.uint32(8)) * scale)
        r = math.sqrt(-2.0 * math.log(u1))
        zc[i] = r * math.cos(theta)
        zs[i] = r * math.sin(theta)


@njit(inline="always")
def _normal_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3, fbuf, ebuf, z0, z1, z2, z3):
    """Normals of blocks b0 .. b0+nb-1: element 4b+p of the address is z_p[b - b0]."""
    _philox_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3)
    if z0.itemsize == 4:  # float32 output: the vectorised polynomial path
        _box_muller_f32(o0, o1, nb, fbuf, ebuf, z0, z1)
        _box_muller_f32(o2, o3, nb, fbuf, ebuf, z2, z3)
    else:
        _box_muller_f64(o0, o1, nb, z0, z1)
        _box_muller_f64(o2, o3, nb, z2, z3)


@njit(inline="always")
def _store4(out, b0, nb, z0, z1, z2, z3):
    """Interleave z0..z3[:nb] into out[4*b0 : 4*(b0+nb)], clipped at len(out)."""
    n = out.shape[0]
    if 4 * (b0 + nb) <= n:
        for i in range(nb):
            j = 4 * (b0 + i)
            out[j] = z0[i]
            out[j + 1] = z1[i]
            out[j + 2] = z2[i]
            out[j + 3] = z3[i]
    else:
        for i in range(nb):
            j = 4 * (b0 + i)
            if j < n:
                out[j] = z0[i]
            if j + 1 < n:
                out[j + 1] = z1[i]
            if j + 2 < n:
                out[j + 2] = z2[i]
            if j + 3 < n:
                out[j + 3] = z3[i]


@njit(inline="always")
def _normal_one_chunk(ch, out, k0, k1, c1, c2, c3):
    n = out.shape[0]
    nblocks = (n + 3) // 4
    b0 = ch * CHUNK_BLOCKS
    nb = min(CHUNK_BLOCKS, nblocks - b0)
    o0 = np.empty(CHUNK_BLOCKS, np.uint32)
    o1 = np.empty(CHUNK_BLOCKS, np.uint32)
    o2 = np.empty(CHUNK_BLOCKS, np.uint32)
    o3 = np.empty(CHUNK_BLOCKS, np.uint32)
    fbuf = np.empty(CHUNK_BLOCKS, np.float32)
    ebuf = np.empty(CHUNK_BLOCKS, np.int32)
    z0 = np.empty(CHUNK_BLOCKS, out.dtype)
    z1 = np.empty(CHUNK_BLOCKS, out.dtype)
    z2 = np.empty(CHUNK_BLOCKS, out.dtype)
    z3 = np.empty(CHUNK_BLOCKS, out.dtype)
    _normal_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3, fbuf, ebuf, z0, z1, z2, z3)
    _store4(out, b0, nb, z0, z1, z2, z3)


@njit(parallel=True, cache=True)
def _normal_parallel(out, k0, k1, c1, c2, c3):
    for ch in prange(_n_chunks(out.shape[0])):
        _normal_one_chunk(ch, out, k0, k1, c1, c2, c3)


@njit(cache=True)
def _normal_serial(out, k0, k1, c1, c2, c3):
    for ch in range(_n_chunks(out.shape[0])):
        _normal_one_chunk(ch, out, k0, k1, c1, c2, c3)


_NORMAL_KERNELS = (_normal_parallel, _normal_serial)


def normal(n, seed, stream, member, generation, dtype):
    """Normals 0..n-1 of an address, shape (n,), dtype "float32" or "float64"."""
    out = np.empty(n, dtype=np.dtype(dtype))
    if n:
        k0, k1 = _key(seed)
        _pick(_NORMAL_KERNELS, n)(out, k0, k1, np.uint32(stream), np.uint32(member), np.uint32(generation))
    return out


# ----------------------------------------------------------------------------
# fused weighted noise sum
# ----------------------------------------------------------------------------
@njit(inline="always")
def _weighted_sum_one_chunk(ch, out, weights, members, k0, k1, c1, c3):
    n = out.shape[0]
    nblocks = (n + 3) // 4
    b0 = ch * CHUNK_BLOCKS
    nb = min(CHUNK_BLOCKS, nblocks - b0)
    o0 = np.empty(CHUNK_BLOCKS, np.uint32)
    o1 = np.empty(CHUNK_BLOCKS, np.uint32)
    o2 = np.empty(CHUNK_BLOCKS, np.uint32)
    o3 = np.empty(CHUNK_BLOCKS, np.uint32)
    fbuf = np.empty(CHUNK_BLOCKS, np.float32)
    ebuf = np.empty(CHUNK_BLOCKS, np.int32)
    z0 = np.empty(CHUNK_BLOCKS, out.dtype)
    z1 = np.empty(CHUNK_BLOCKS, out.dtype)
    z2 = np.empty(CHUNK_BLOCKS, out.dtype)
    z3 = np.empty(CHUNK_BLOCKS, out.dtype)
    a0 = np.zeros(CHUNK_BLOCKS, np.float64)
    a1 = np.zeros(CHUNK_BLOCKS, np.float64)
    a2 = np.zeros(CHUNK_BLOCKS, np.float64)
    a3 = np.zeros(CHUNK_BLOCKS, np.float64)
    for m in range(members.shape[0]):
        w = weights[m]
        _normal_chunk(b0, nb, k0, k1, c1, members[m], c3, o0, o1, o2, o3, fbuf, ebuf, z0, z1, z2, z3)
        for i in range(nb):
            a0[i] += w * z0[i]
            a1[i] += w * z1[i]
            a2[i] += w * z2[i]
            a3[i] += w * z3[i]
    _store4(out, b0, nb, a0, a1, a2, a3)


@njit(parallel=True, cache=True)
def _weighted_sum_parallel(out, weights, members, k0, k1, c1, c3):
    for ch in prange(_n_chunks(out.shape[0])):
        _weighted_sum_one_chunk(ch, out, weights, members, k0, k1, c1, c3)


@njit(cache=True)
def _weighted_sum_serial(out, weights, members, k0, k1, c1, c3):
    for ch in range(_n_chunks(out.shape[0])):
        _weighted_sum_one_chunk(ch, out, weights, members, k0, k1, c1, c3)


_WEIGHTED_SUM_KERNELS = (_weighted_sum_parallel, _weighted_sum_serial)


def weighted_noise_sum(weights, members, n, seed, stream, generation, dtype):
    """sum_i weights[i] * normal(member=members[i]) for elements 0..n-1, shape (n,)."""
    out = np.empty(n, dtype=np.dtype(dtype))
    if n and weights.shape[0]:
        k0, k1 = _key(seed)
        _pick(_WEIGHTED_SUM_KERNELS, n)(out, weights.astype(np.float64), members.astype(np.uint32), k0, k1, np.uint32(stream), np.uint32(generation))
    elif n:
        out[:] = 0
    return out


# ----------------------------------------------------------------------------
# centered ranks
# ----------------------------------------------------------------------------
@njit(cache=True)
def _centered_ranks_kernel(f, out):
    n = f.shape[0]
    order = np.argsort(f, kind="mergesort")
    i = 0
    while i < n:
        j = i
        while j + 1 < n and f[order[j + 1]] == f[order[i]]:
            j += 1
        rank = 0.5 * (i + j)  # mean of ranks i..j for a run of ties
        for t in range(i, j + 1):
            out[order[t]] = rank / (n - 1) - 0.5
        i = j + 1


def centered_ranks(fitness):
    """Centered ranks with averaged ties, shape (pop,), fitness's dtype."""
    f = np.asarray(fitness)
    out = np.zeros(f.shape[0], dtype=np.float64)
    if f.shape[0] > 1:
        _centered_ranks_kernel(f.astype(np.float64), out)
    return out.astype(f.dtype)


# ----------------------------------------------------------------------------
# raw blocks (known-answer tests use arbitrary counters)
# ----------------------------------------------------------------------------
@njit(cache=True)
def _blocks_kernel(block, out, k0, k1, c1, c2, c3):
    o0 = np.empty(1, np.uint32)
    o1 = np.empty(1, np.uint32)
    o2 = np.empty(1, np.uint32)
    o3 = np.empty(1, np.uint32)
    for i in range(block.shape[0]):
        _philox_chunk(block[i], 1, k0, k1, c1, c2, c3, o0, o1, o2, o3)
        out[i, 0] = o0[0]
        out[i, 1] = o1[0]
        out[i, 2] = o2[0]
        out[i, 3] = o3[0]


def philox_blocks(block, c1, c2, c3, seed):
    """Philox4x32-10 of counters (block[i], c1, c2, c3) under ``seed``, shape (n, 4) uint32."""
    block = np.asarray(block, dtype=np.uint32)
    out = np.empty((block.shape[0], 4), dtype=np.uint32)
    k0, k1 = _key(seed)
    _blocks_kernel(block, out, k0, k1, np.uint32(c1), np.uint32(c2), np.uint32(c3))
    return out
