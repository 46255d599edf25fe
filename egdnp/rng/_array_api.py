"""Array-API oracle of the noise spec: uint32 arithmetic only.

These functions run on any array-API namespace (array-api-strict included)
and are the reference the Numba and CuPy kernels are tested against.  The
32x32 -> 64-bit products of Philox are done on 16-bit limbs so that no
intermediate ever exceeds 2**32 - 1: the oracle needs no uint64 support and
never relies on integer overflow, whose behaviour the standard leaves open.
"""

from __future__ import annotations

import math

from ._spec import MASK32, PHILOX_M0, PHILOX_M1, TWO_NEG24, round_keys


def _mulhilo(xp, const: int, x):
    """(hi, lo) words of ``const * x`` for a Python int ``const`` and uint32 array ``x``."""
    m16 = 0xFFFF  # Python ints, so that no array is created on another device
    a0, a1 = const & 0xFFFF, const >> 16
    x0 = x & m16
    x1 = x >> 16
    p00 = x0 * a0
    p01 = x1 * a0  # x1 * a0 -> contributes at 2**16
    p10 = x0 * a1  # x0 * a1 -> contributes at 2**16
    p11 = x1 * a1
    t = (p00 >> 16) + (p01 & m16) + (p10 & m16)  # < 3 * 2**16
    lo = ((t & m16) << 16) | (p00 & m16)
    t2 = (t >> 16) + (p01 >> 16) + (p10 >> 16) + (p11 & m16)  # < 4 * 2**16
    hi = (((t2 >> 16) + (p11 >> 16)) << 16) | (t2 & m16)
    return hi, lo


def philox_blocks(xp, block, c1: int, c2: int, c3: int, seed: int, device=None):
    """Philox4x32-10 of counters ``(block[i], c1, c2, c3)`` under a 64-bit seed.

    Parameters
    ----------
    xp : module
        Array-API namespace.
    block : array, shape (nblocks,), uint32
        First counter word of each block.
    c1, c2, c3 : int
        The other counter words, shared by all blocks.
    seed : int
        64-bit key.

    Returns
    -------
    tuple of 4 arrays, each shape (nblocks,), uint32
    """
    u32 = xp.uint32
    x0 = block
    shape = block.shape
    x1 = xp.full(shape, c1 & MASK32, dtype=u32, device=device)
    x2 = xp.full(shape, c2 & MASK32, dtype=u32, device=device)
    x3 = xp.full(shape, c3 & MASK32, dtype=u32, device=device)
    for k0, k1 in round_keys(seed):
        hi0, lo0 = _mulhilo(xp, PHILOX_M0, x0)
        hi1, lo1 = _mulhilo(xp, PHILOX_M1, x2)
        x0, x1, x2, x3 = (
            hi1 ^ x1 ^ k0,
            lo1,
            hi0 ^ x3 ^ k1,
            lo0,
        )
    return x0, x1, x2, x3


def _blocks_for(xp, n: int, device):
    nblocks = (n + 3) // 4
    return xp.astype(xp.arange(nblocks, dtype=xp.int64, device=device), xp.uint32)


def random_bits(xp, n: int, seed: int, stream: int, member: int, generation: int, device=None):
    """The first ``n`` uint32 words of an address, shape (n,)."""
    words = philox_blocks(xp, _blocks_for(xp, n, device), stream, member, generation, seed, device)
    return xp.reshape(xp.stack(words, axis=1), (-1,))[:n]


def normal(xp, n: int, seed: int, stream: int, member: int, generation: int, dtype, device=None):
    """The first ``n`` normals of an address, shape (n,), by the spec evaluated in float64."""
    w0, w1, w2, w3 = philox_blocks(xp, _blocks_for(xp, n, device), stream, member, generation, seed, device)
    f64 = xp.float64
    scale = TWO_NEG24
    two_pi = 2.0 * math.pi
    out = []
    for wa, wb in ((w0, w1), (w2, w3)):
        u1 = (xp.astype(wa >> 8, f64) + 1.0) * scale
        u2 = xp.astype(wb >> 8, f64) * scale
        r = xp.sqrt(-2.0 * xp.log(u1))
        theta = two_pi * u2
        out.append(r * xp.cos(theta))
        out.append(r * xp.sin(theta))
    z = xp.reshape(xp.stack(out, axis=1), (-1,))[:n]
    return xp.astype(z, dtype)


def uniform(xp, n: int, seed: int, stream: int, member: int, generation: int, dtype, device=None):
    """The first ``n`` uniforms in [0, 1) of an address: ``(w >> 8) * 2**-24``."""
    w = random_bits(xp, n, seed, stream, member, generation, device)
    return xp.astype(xp.astype(w >> 8, xp.float64) * TWO_NEG24, dtype)


def weighted_noise_sum(xp, weights, members, n: int, seed: int, stream: int, generation: int, dtype, device=None):
    """``g[j] = sum_i weights[i] * normal(seed, stream, members[i], generation)[j]``, shape (n,).

    The oracle loops over members, holding one noise vector at a time.
    Accumulates in float64 and casts at the end.
    """
    acc = xp.zeros((n,), dtype=xp.float64, device=device)
    for w, m in zip(weights, members):
        acc = acc + float(w) * normal(xp, n, seed, stream, int(m), generation, xp.float64, device)
    return xp.astype(acc, dtype)


def centered_ranks(xp, fitness):
    """Centered ranks in [-0.5, 0.5]; ties get the mean of their ranks.

    ``rank_i`` is the 0-based ascending rank of ``fitness[i]``, averaged over
    ties; the result is ``rank_i / (n - 1) - 0.5`` (zeros when ``n == 1``).
    """
    n = fitness.shape[0]
    if n == 1:
        return xp.zeros_like(fitness)
    f = fitness
    # rank_i = #(f_j < f_i) + (#(f_j == f_i) - 1) / 2  -- O(n^2) but exact and simple.
    less = xp.sum(xp.astype(f[None, :] < f[:, None], xp.float64), axis=1)
    equal = xp.sum(xp.astype(f[None, :] == f[:, None], xp.float64), axis=1)
    rank = less + (equal - 1.0) / 2.0
    return xp.astype(rank / (n - 1) - 0.5, f.dtype)
