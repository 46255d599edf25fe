"""Numba CPU kernels of the noise spec (the fast path for NumPy arrays).

Work is done in chunks of ``CHUNK_BLOCKS`` Philox blocks; every value depends
only on its own index, so results do not depend on the thread count or on how
the blocks are split.  Each operation has ONE compiled kernel, serial over a
range of blocks and ``nogil``; from :data:`egdnp._threads.RNG_SPLIT_FROM`
values, each thread of the shared pool gets an equal, contiguous run of blocks
and one set of scratch buffers (:func:`_split`).  No Numba parallel region:
compiling one (parfors) cost 3-8 s of a cold start per kernel, loading one
from the cache starts the OpenMP layer, and the thread split needs neither.  Inside a chunk, Philox runs over local arrays in
a loop LLVM vectorises (eight blocks per AVX-512 register, 64-bit lanes for the
32x32->64-bit products), then a one-pass, branch-free Box-Muller loop whose
integer work stays in 32 bits turns the words into normals (8 float32 lanes
per AVX2 register).  ``normal()`` itself, for float32 output, goes one step
further: a hand-built 8-lane IR kernel computes two Box-Mullers and writes the
four interleaved values straight into the output (no z buffers).  All float32
paths give bitwise the same values (tests/test_rng.py).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import _threads
from ._spec import MASK32, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

CHUNK_BLOCKS = 4096  # Philox blocks per chunk (16384 values): the unit of work of the parallel kernels

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint32(PHILOX_W0)
_W1 = np.uint32(PHILOX_W1)
_LO = np.uint64(MASK32)
_S32 = np.uint64(32)


def _split(kernel, n, args):
    """Run ``kernel(*args, blo, bhi)`` over the ``(n + 3) // 4`` blocks of ``n`` values.

    Below :data:`egdnp._threads.RNG_SPLIT_FROM` values the calling thread runs
    every block (handing a range to a thread costs more than it saves); a
    larger array is cut into contiguous runs (:func:`_thread_blocks`), one per
    thread, on the shared pool (:func:`egdnp._threads.run_split`).  Every value
    is computed from its own index, so the result is bitwise the same whatever
    the split.
    """
    nblocks = (n + 3) // 4
    nt = 1 if n < _threads.RNG_SPLIT_FROM else min(_threads.cpu_threads(), _n_chunks(n))
    if nt <= 1:
        kernel(*args, 0, nblocks)
        return
    _threads.run_split(lambda lo, hi: kernel(*args, lo, hi), [_thread_blocks(t, nt, nblocks) for t in range(nt)])


def _n_chunks(n):
    """Chunks of ``CHUNK_BLOCKS`` blocks in ``n`` values."""
    return ((n + 3) // 4 + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS


def _thread_blocks(t, nt, nblocks):
    """Blocks [lo, hi) of worker ``t`` of ``nt``: equal shares, cut at multiples of 16 blocks
    (whole cache lines of output for float32 and float64)."""
    groups = (nblocks + 15) // 16
    return min(nblocks, 16 * (t * groups // nt)), min(nblocks, 16 * ((t + 1) * groups // nt))


@njit(inline="always")
def _philox_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3):
    """Philox4x32-10 of blocks b0 .. b0+nb-1 into o0..o3[:nb] (uint32).

    Parameters
    ----------
    b0, nb : int
        First block and number of blocks (counter word 0 is ``b0 + i``).
    k0, k1 : numpy.uint32
        The key (:func:`_key`).
    c1, c2, c3 : numpy.uint32
        Counter words 1..3: stream, member, generation.
    o0, o1, o2, o3 : ndarray of uint32, shape (>= nb,)
        Receive words 0..3 of each block (written in place).
    """
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
def _bits_blocks(out, blo, bhi, k0, k1, c1, c2, c3, o):
    """Words of blocks blo .. bhi-1 into ``out`` (clipped at its length), chunk by chunk."""
    for b0 in range(blo, bhi, CHUNK_BLOCKS):
        nb = min(CHUNK_BLOCKS, bhi - b0)
        _philox_chunk(b0, nb, k0, k1, c1, c2, c3, o[0], o[1], o[2], o[3])
        _store4(out, b0, nb, o[0], o[1], o[2], o[3])


@njit(cache=True, nogil=True)
def _bits_range(out, k0, k1, c1, c2, c3, blo, bhi):
    """Words of blocks blo .. bhi-1 into ``out`` (see :func:`_split`)."""
    o = np.empty((4, CHUNK_BLOCKS), np.uint32)
    _bits_blocks(out, blo, bhi, k0, k1, c1, c2, c3, o)


def _key(seed: int):
    """The Philox key of a seed.

    Parameters
    ----------
    seed : int
        A checked 64-bit seed (:func:`egdnp.rng.check_seed`).

    Returns
    -------
    (numpy.uint32, numpy.uint32)
        Its low and high 32-bit words ``(k0, k1)``.
    """
    return np.uint32(seed & MASK32), np.uint32(seed >> 32)


def random_bits(n, seed, stream, member, generation):
    """uint32 words 0..n-1 of an address, shape (n,)."""
    out = np.empty(n, dtype=np.uint32)
    if n:
        k0, k1 = _key(seed)
        _split(_bits_range, n, (out, k0, k1, np.uint32(stream), np.uint32(member), np.uint32(generation)))
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
# (k * 2**-22) * pi/2 == k * (2**-22 * pi/2) exactly: scaling by a power of two is exact
_PIO2_2M22_F32 = np.float32(float(_PIO2_F32) * 2.0**-22)
_SIGN_BIT = np.uint32(0x80000000)


@intrinsic
def _f32_bits(typingctx, x):
    """The IEEE bits of a float32 as uint32 (a register bitcast, no memory round trip)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """The float32 whose IEEE bits are the low 32 bits of the integer ``x``."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if x.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        elif x.bitwidth < 32:
            value = builder.zext(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(x), codegen


@njit(inline="always")
def _box_muller_pair_f32(wa, wb):
    """float32 ``(r cos(theta), r sin(theta))`` of one word pair; see :func:`_box_muller_f32`.

    Inlined at the Numba level, so the caller's fastmath flags apply: every
    caller must be compiled with ``fastmath={"contract"}`` (and nothing else)
    for the values to be the ones the tests and reference bundles pin.  All
    integer work stays in 32 bits (explicit casts undo Numba's promotion to
    64 bits) so LLVM can vectorise the loop at full float32 width.
    """
    m = np.float32((wa >> np.uint32(8)) + np.uint32(1))  # exact: <= 2**24
    bits = _f32_bits(m)
    e = np.int32(bits >> np.uint32(23)) - np.int32(127)
    x = _bits_f32((bits & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000))  # mantissa in [1, 2)
    big = x > _SQRT2_F32
    x = np.float32(0.5) * x if big else x
    e = np.int32(e + np.int32(1)) if big else np.int32(e)
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
    r = np.sqrt(np.float32(np.int32(np.int32(24) - e)) * _LN2X2_F32 - np.float32(2.0) * ln_x)

    k = wb >> np.uint32(8)  # t = k * 2**-24, 4t = k * 2**-22
    q = np.uint32((k + np.uint32(0x200000)) >> np.uint32(22))  # round(4t), 0..4
    a = np.float32(np.int32(k - (q << np.uint32(22)))) * _PIO2_2M22_F32
    a2 = a * a
    s = a + a * a2 * (np.float32(-1.6666654611e-1) + a2 * (np.float32(8.3321608736e-3) + a2 * np.float32(-1.9515295891e-4)))
    c = (np.float32(1.0) - np.float32(0.5) * a2
         + a2 * a2 * (np.float32(4.166664568298827e-2) + a2 * (np.float32(-1.388731625493765e-3) + a2 * np.float32(2.443315711809948e-5))))
    # cos(a + q pi/2), sin(a + q pi/2): odd q swaps c and s; the quadrant's
    # signs are xor-ed into the sign bit (exactly a multiplication by -1).
    swap = (q & np.uint32(1)) != np.uint32(0)
    base_c = s if swap else c
    base_s = c if swap else s
    neg_c = (q + np.uint32(1)) << np.uint32(30)  # bit 1 of q + 1 -> sign bit: q = 1, 2
    neg_s = q << np.uint32(30)  # bit 1 of q -> sign bit: q = 2, 3
    zc = _bits_f32(_f32_bits(r * base_c) ^ (neg_c & _SIGN_BIT))
    zs = _bits_f32(_f32_bits(r * base_s) ^ (neg_s & _SIGN_BIT))
    return zc, zs


@njit(cache=True, fastmath={"contract"})
def _box_muller_f32(wa, wb, nb, zc, zs):
    """Normals ``r cos(theta)``, ``r sin(theta)`` of word pairs (wa[i], wb[i]), i < nb.

    ``-2 ln u`` for ``u = m * 2**-24`` (``m = (wa >> 8) + 1``) is
    ``2 (24 - e) ln 2 - 2 ln x`` with ``m = x * 2**e`` and ``x`` in
    [sqrt(1/2), sqrt(2)); ``ln x`` is Cephes' logf polynomial.  ``theta =
    2 pi t`` is reduced exactly in ``t``: ``4 t = q + f`` with integer ``q`` and
    ``|f| <= 1/2``, then ``sin``/``cos`` of ``f pi/2`` (Cephes' sinf/cosf
    polynomials) are rotated by ``q`` quarter turns.  The loop is one pass.
    """
    for i in range(nb):
        zc[i], zs[i] = _box_muller_pair_f32(wa[i], wb[i])


# --- the same Box-Muller on explicit 8-lane vectors, fused with the interleave ---
# Where a float32 output receives whole blocks, normals go straight from the
# words into ``out``: two Box-Mullers per 8 blocks on <8 x float> vectors, then
# one 32-lane shuffle interleaves (z0, z1, z2, z3) and a single store writes 32
# values.  This skips the z buffers' round trip through cache (~13% of a
# normal() call).  LLVM's loop vectoriser does not find this interleave, hence
# the hand-built IR; the operations are those of _box_muller_pair_f32 one for
# one, with llvm.fmuladd exactly where ``contract`` fuses there (fused where
# the CPU has FMA, like ``contract``): bitwise equal results, checked
# exhaustively over all 2**24 inputs of each half.  8 lanes: 16-lane (AVX-512)
# vectors measured 2x slower on the 2-core target machine.
_LANES = 8
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VI32 = ir.VectorType(_I32, _LANES)
_VF32 = ir.VectorType(ir.FloatType(), _LANES)
_LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_SIN_POLY = (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
_COS_POLY = (2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
_CONCAT2 = ir.Constant(ir.VectorType(_I32, 2 * _LANES), list(range(2 * _LANES)))
_INTERLEAVE4 = ir.Constant(ir.VectorType(_I32, 4 * _LANES), [p * _LANES + i for i in range(_LANES) for p in range(4)])


def _splat_i32(value):
    return ir.Constant(_VI32, [int(value) & MASK32] * _LANES)


def _splat_f32(value):
    return ir.Constant(_VF32, [float(np.float32(value))] * _LANES)


def _box_muller_ir(builder, wa, wb):
    """IR of ``(r cos(theta), r sin(theta))`` for <8 x i32> word vectors (see _box_muller_pair_f32)."""
    fmuladd = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF32, [_VF32] * 3), "llvm.fmuladd.v8f32")
    sqrt = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VF32, [_VF32]), "llvm.sqrt.v8f32")

    def fma(a, b, c):
        return builder.call(fmuladd, [a, b, c])

    mul = builder.fmul
    m = builder.sitofp(builder.add(builder.lshr(wa, _splat_i32(8)), _splat_i32(1)), _VF32)
    bits = builder.bitcast(m, _VI32)
    e = builder.sub(builder.lshr(bits, _splat_i32(23)), _splat_i32(127))
    x = builder.bitcast(builder.or_(builder.and_(bits, _splat_i32(0x7FFFFF)), _splat_i32(0x3F800000)), _VF32)
    big = builder.fcmp_ordered(">", x, _splat_f32(_SQRT2_F32))
    x = builder.select(big, mul(_splat_f32(0.5), x), x)
    e = builder.select(big, builder.add(e, _splat_i32(1)), e)
    f = builder.fsub(x, _splat_f32(1.0))
    p = _splat_f32(_LOG_POLY[0])
    for coefficient in _LOG_POLY[1:]:
        p = fma(p, f, _splat_f32(coefficient))
    ln_x = fma(mul(f, f), fma(f, p, _splat_f32(-0.5)), f)
    minus_2ln_u = fma(builder.sitofp(builder.sub(_splat_i32(24), e), _VF32), _splat_f32(_LN2X2_F32),
                      builder.fneg(mul(_splat_f32(2.0), ln_x)))
    r = builder.call(sqrt, [minus_2ln_u])

    k = builder.lshr(wb, _splat_i32(8))
    q = builder.lshr(builder.add(k, _splat_i32(0x200000)), _splat_i32(22))
    a = mul(builder.sitofp(builder.sub(k, builder.shl(q, _splat_i32(22))), _VF32), _splat_f32(_PIO2_2M22_F32))
    a2 = mul(a, a)
    sin_poly = fma(a2, fma(a2, _splat_f32(_SIN_POLY[0]), _splat_f32(_SIN_POLY[1])), _splat_f32(_SIN_POLY[2]))
    s = fma(mul(a, a2), sin_poly, a)
    cos_poly = fma(a2, fma(a2, _splat_f32(_COS_POLY[0]), _splat_f32(_COS_POLY[1])), _splat_f32(_COS_POLY[2]))
    c = fma(mul(a2, a2), cos_poly, fma(_splat_f32(-0.5), a2, _splat_f32(1.0)))
    swap = builder.icmp_unsigned("!=", builder.and_(q, _splat_i32(1)), _splat_i32(0))
    sign = _splat_i32(_SIGN_BIT)
    neg_c = builder.and_(builder.shl(builder.add(q, _splat_i32(1)), _splat_i32(30)), sign)
    neg_s = builder.and_(builder.shl(q, _splat_i32(30)), sign)
    zc = builder.xor(builder.bitcast(mul(r, builder.select(swap, s, c)), _VI32), neg_c)
    zs = builder.xor(builder.bitcast(mul(r, builder.select(swap, c, s)), _VI32), neg_s)
    return builder.bitcast(zc, _VF32), builder.bitcast(zs, _VF32)


@intrinsic
def _box_muller_store4_groups_f32(typingctx, o0, o1, o2, o3, out, j0, ngroups):
    """out[j0 + 4i + p] = normal p of block i (words o0..o3[i]) for i < 8 * ngroups; float32 ``out``.

    For any other ``out`` dtype it compiles to nothing: callers run it only on
    float32 arrays (the branch for other dtypes is typed but never taken).
    """
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (o0, o1, o2, o3, out)):
        return None  # raw pointer arithmetic below needs contiguous 1-d arrays
    sig = types.void(o0, o1, o2, o3, out, j0, ngroups)

    def codegen(context, builder, signature, args):
        if signature.args[4].dtype != types.float32:
            return context.get_dummy_value()
        data = [context.make_array(signature.args[k])(context, builder, args[k]).data for k in range(5)]
        first = context.cast(builder, args[5], signature.args[5], types.intp)
        count = context.cast(builder, args[6], signature.args[6], types.intp)
        with cgutils.for_range(builder, count) as loop:
            i = builder.mul(loop.index, ir.Constant(_I64, _LANES))
            words = [builder.load(builder.bitcast(builder.gep(d, [i], inbounds=True), _VI32.as_pointer()), align=4)
                     for d in data[:4]]
            c0, s0 = _box_muller_ir(builder, words[0], words[1])
            c1, s1 = _box_muller_ir(builder, words[2], words[3])
            z = builder.shuffle_vector(builder.shuffle_vector(c0, s0, _CONCAT2), builder.shuffle_vector(c1, s1, _CONCAT2),
                                       _INTERLEAVE4)
            dst = builder.gep(data[4], [builder.add(first, builder.mul(i, ir.Constant(_I64, 4)))], inbounds=True)
            builder.store(z, builder.bitcast(dst, z.type.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, fastmath={"contract"})
def _box_muller_store4_f32(o0, o1, o2, o3, nb, out, j0):
    """out[j0 + 4i + p] = float32 normal p of block i (words o0..o3[i]), i < nb; all in range."""
    ngroups = nb // _LANES if out.itemsize == 4 else 0
    _box_muller_store4_groups_f32(o0, o1, o2, o3, out, j0, ngroups)
    for i in range(ngroups * _LANES, nb):
        c0, s0 = _box_muller_pair_f32(o0[i], o1[i])
        c1, s1 = _box_muller_pair_f32(o2[i], o3[i])
        j = j0 + 4 * i
        out[j] = c0
        out[j + 1] = s0
        out[j + 2] = c1
        out[j + 3] = s1


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
def _normal_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3, z0, z1, z2, z3):
    """Normals of blocks b0 .. b0+nb-1: element 4b+p of the address is z_p[b - b0].

    Parameters
    ----------
    b0, nb, k0, k1, c1, c2, c3 :
        As in :func:`_philox_chunk`.
    o0, o1, o2, o3 : ndarray of uint32, shape (>= nb,)
        Scratch: receive the words.
    z0, z1, z2, z3 : ndarray of float32 or float64, shape (>= nb,)
        Receive normals 0..3 of each block, in their dtype (written in place).
    """
    _philox_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3)
    _words_to_normals(nb, o0, o1, o2, o3, z0, z1, z2, z3)


@njit(inline="always")
def _words_to_normals(nb, o0, o1, o2, o3, z0, z1, z2, z3):
    """Box-Muller of the words ``o0..o3[:nb]`` of a chunk into ``z0..z3[:nb]`` (pairs (o0, o1) and (o2, o3))."""
    if z0.itemsize == 4:  # float32 output: the vectorised polynomial path
        _box_muller_f32(o0, o1, nb, z0, z1)
        _box_muller_f32(o2, o3, nb, z2, z3)
    else:
        _box_muller_f64(o0, o1, nb, z0, z1)
        _box_muller_f64(o2, o3, nb, z2, z3)


@njit(inline="always")
def _store4(out, b0, nb, z0, z1, z2, z3):
    """Interleave z0..z3[:nb] into out[4*b0 : 4*(b0+nb)], clipped at len(out).

    Parameters
    ----------
    out : ndarray, shape (n,)
        Receives ``out[4 (b0 + i) + p] = z_p[i]`` for the indices below ``n``.
    b0, nb : int
        First block and number of blocks.
    z0, z1, z2, z3 : ndarray, shape (>= nb,)
        Values 0..3 of each block (words, normals or sums).
    """
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
def _normal_blocks(out, blo, bhi, k0, k1, c1, c2, c3, o, z):
    """Normals of blocks blo .. bhi-1 into ``out`` (clipped at its length), chunk by chunk."""
    for b0 in range(blo, bhi, CHUNK_BLOCKS):
        nb = min(CHUNK_BLOCKS, bhi - b0)
        # One inlined Philox for both paths: each inlined copy of its unrolled
        # rounds costs compile time on a cold start (issue 18).
        _philox_chunk(b0, nb, k0, k1, c1, c2, c3, o[0], o[1], o[2], o[3])
        if out.itemsize == 4 and 4 * (b0 + nb) <= out.shape[0]:
            # float32, whole blocks: Box-Muller writes the interleaved values itself
            _box_muller_store4_f32(o[0], o[1], o[2], o[3], nb, out, 4 * b0)
        else:
            _words_to_normals(nb, o[0], o[1], o[2], o[3], z[0], z[1], z[2], z[3])
            _store4(out, b0, nb, z[0], z[1], z[2], z[3])


@njit(cache=True, nogil=True)
def _normal_range(out, k0, k1, c1, c2, c3, blo, bhi):
    """Normals of blocks blo .. bhi-1 into ``out`` (see :func:`_split`)."""
    o = np.empty((4, CHUNK_BLOCKS), np.uint32)
    z = np.empty((4, CHUNK_BLOCKS), out.dtype)
    _normal_blocks(out, blo, bhi, k0, k1, c1, c2, c3, o, z)


def normal(n, seed, stream, member, generation, dtype):
    """Normals 0..n-1 of an address, shape (n,), dtype "float32" or "float64"."""
    out = np.empty(n, dtype=np.dtype(dtype))
    if n:
        k0, k1 = _key(seed)
        _split(_normal_range, n, (out, k0, k1, np.uint32(stream), np.uint32(member), np.uint32(generation)))
    return out


@njit(cache=True, nogil=True)
def _normal_members_range(out, first, k0, k1, c1, c3, lo, hi):
    """Rows lo .. hi-1 of ``out`` (members, size): row p is member ``first + p``'s normals; one set of scratch buffers."""
    # Each row goes through _normal_chunk + _store4, not _normal_blocks' fused
    # float32 store: the same values (tested), and the kernels it compiles are
    # the ones EGD's mutants already compiled.  On a cold start the fused store
    # cost 0.46 s more to compile (1.8 s under the quickstart's tracemalloc: its
    # first EGGROLL step went 4.4 -> 6.6 s) for ~10 ms of a pop-4096 `ask`.
    o = np.empty((4, CHUNK_BLOCKS), np.uint32)
    z = np.empty((4, CHUNK_BLOCKS), out.dtype)
    nblocks = (out.shape[1] + 3) // 4
    for p in range(lo, hi):
        row = out[p]
        member = np.uint32(first + p)
        for b0 in range(0, nblocks, CHUNK_BLOCKS):
            nb = min(CHUNK_BLOCKS, nblocks - b0)
            _normal_chunk(b0, nb, k0, k1, c1, member, c3, o[0], o[1], o[2], o[3], z[0], z[1], z[2], z[3])
            _store4(row, b0, nb, z[0], z[1], z[2], z[3])


def normal_members(n_members, size, seed, stream, first, generation, dtype):
    """``out[p] = normal(size, member=first + p)`` for p < n_members, shape (n_members, size).

    One kernel call for all members; each row's values are bitwise
    :func:`normal`'s (the same Philox and Box-Muller, tested).  From
    :data:`egdnp._threads.ES_NOISE_SPLIT_FROM` values the rows are split over
    the shared pool (contiguous runs of members, one per thread).
    """
    out = np.empty((n_members, size), dtype=np.dtype(dtype))
    if n_members and size:
        k0, k1 = _key(seed)
        args = (out, np.int64(first), k0, k1, np.uint32(stream), np.uint32(generation))
        nt = 1 if n_members * size < _threads.ES_NOISE_SPLIT_FROM else min(_threads.cpu_threads(), n_members)
        _threads.run_split(lambda lo, hi: _normal_members_range(*args, lo, hi), _threads.even_ranges(n_members, nt))
    return out


# ----------------------------------------------------------------------------
# fused weighted noise sum
# ----------------------------------------------------------------------------
@njit(inline="always")
def _weighted_chunk(b0, nb, weights, members, k0, k1, c1, c3, o, z, acc):
    """acc[w, :nb] = sum_m weights[m] * word-w normals of blocks b0 .. b0+nb-1 of member m (float64).

    The one accumulation of the fused weighted sum; EGD's seed-storage mix
    (optim/_egd_cpu.py) runs it too, so both give the same bits.

    Parameters
    ----------
    b0, nb, k0, k1, c1, c3 :
        As in :func:`_philox_chunk` (counter word 2, the member, comes from ``members``).
    weights : ndarray of float64, shape (pop,)
    members : ndarray of uint32, shape (pop,)
    o : ndarray of uint32, shape (4, >= nb)
        Scratch for the words.
    z : ndarray of float32 or float64, shape (4, >= nb)
        Scratch for one member's normals; its dtype is the normals' dtype.
    acc : ndarray of float64, shape (4, >= nb)
        Receives the sums (written in place), added in member order.
    """
    a0 = acc[0]
    a1 = acc[1]
    a2 = acc[2]
    a3 = acc[3]
    z0 = z[0]
    z1 = z[1]
    z2 = z[2]
    z3 = z[3]
    a0[:nb] = 0.0
    a1[:nb] = 0.0
    a2[:nb] = 0.0
    a3[:nb] = 0.0
    for m in range(members.shape[0]):
        w = weights[m]
        _normal_chunk(b0, nb, k0, k1, c1, members[m], c3, o[0], o[1], o[2], o[3], z0, z1, z2, z3)
        for i in range(nb):
            a0[i] += w * z0[i]
            a1[i] += w * z1[i]
            a2[i] += w * z2[i]
            a3[i] += w * z3[i]


@njit(inline="always")
def _weighted_sum_blocks(out, blo, bhi, weights, members, k0, k1, c1, c3, o, z, acc):
    """Weighted sums of blocks blo .. bhi-1 into ``out`` (clipped at its length), chunk by chunk."""
    for b0 in range(blo, bhi, CHUNK_BLOCKS):
        nb = min(CHUNK_BLOCKS, bhi - b0)
        _weighted_chunk(b0, nb, weights, members, k0, k1, c1, c3, o, z, acc)
        _store4(out, b0, nb, acc[0], acc[1], acc[2], acc[3])


@njit(cache=True, nogil=True)
def _weighted_sum_range(out, weights, members, k0, k1, c1, c3, blo, bhi):
    """Weighted sums of blocks blo .. bhi-1 into ``out`` (see :func:`_split`)."""
    o = np.empty((4, CHUNK_BLOCKS), np.uint32)
    z = np.empty((4, CHUNK_BLOCKS), out.dtype)
    acc = np.empty((4, CHUNK_BLOCKS), np.float64)
    _weighted_sum_blocks(out, blo, bhi, weights, members, k0, k1, c1, c3, o, z, acc)


def weighted_noise_sum(weights, members, n, seed, stream, generation, dtype):
    """sum_i weights[i] * normal(member=members[i]) for elements 0..n-1, shape (n,)."""
    out = np.empty(n, dtype=np.dtype(dtype))
    if n and weights.shape[0]:
        k0, k1 = _key(seed)
        _split(_weighted_sum_range, n, (out, weights.astype(np.float64), members.astype(np.uint32), k0, k1,
                                        np.uint32(stream), np.uint32(generation)))
    elif n:
        out[:] = 0
    return out


# ----------------------------------------------------------------------------
# centered ranks
# ----------------------------------------------------------------------------
@njit(cache=True)
def _centered_ranks_kernel(f, order, out):
    """Centered ranks of ``f`` given its stable ascending ``order`` (ties averaged).

    The sort is NumPy's (``argsort(kind="stable")``, the same permutation as
    a mergesort): compiling Numba's own mergesort took ~1.5 s of a cold start.
    """
    n = f.shape[0]
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
        f64 = f.astype(np.float64)
        _centered_ranks_kernel(f64, np.argsort(f64, kind="stable"), out)
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
