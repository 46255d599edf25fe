"""Numba fast path of the EGD mutant: ``out = base + scale * normal(address)`` in one pass.

The array-API path (:func:`egdnp.optim._egd_mutation.mutant` with the
oracle) draws the normals with :func:`egdnp.rng.normal`, scales them in place
and adds the base: three passes over memory and one temporary array.  This
kernel regenerates the same normals chunk by chunk with the rng's own Numba
chunk routine and writes ``base[j] + scale * z[j]`` straight into ``out``,
rounding exactly like the oracle (a product, then a sum, in the array's
dtype; no fused multiply-add), so both paths agree bit for bit (tested).

Only NumPy arrays reach this module (the dispatch checks
``egdnp._backend.is_numpy``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..rng._cpu import CHUNK_BLOCKS, _key, _normal_chunk

__all__ = ["mutant_into"]


@njit(inline="always")
def _mutant_chunk(ch, out, base, scale, k0, k1, c1, c2, c3):
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
    # interleave into a chunk-local buffer (cache resident), then one contiguous,
    # vectorisable pass: out = base + scale * z
    tmp = np.empty(4 * CHUNK_BLOCKS, out.dtype)
    for i in range(nb):
        tmp[4 * i] = z0[i]
        tmp[4 * i + 1] = z1[i]
        tmp[4 * i + 2] = z2[i]
        tmp[4 * i + 3] = z3[i]
    j0 = 4 * b0
    j1 = min(n, 4 * (b0 + nb))
    for j in range(j0, j1):
        out[j] = base[j] + scale * tmp[j - j0]


@njit(parallel=True, cache=True)
def _mutant_kernel(out, base, scale, k0, k1, c1, c2, c3):
    nchunks = ((out.shape[0] + 3) // 4 + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS
    for ch in prange(nchunks):
        _mutant_chunk(ch, out, base, scale, k0, k1, c1, c2, c3)


@njit(cache=True)
def _mutant_kernel_serial(out, base, scale, k0, k1, c1, c2, c3):
    nchunks = ((out.shape[0] + 3) // 4 + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS
    for ch in range(nchunks):
        _mutant_chunk(ch, out, base, scale, k0, k1, c1, c2, c3)


# Below this many elements one thread is faster than waking the thread pool
# (a parallel launch costs tens of microseconds; a bias vector takes less).
SERIAL_BELOW = 4 * CHUNK_BLOCKS * 2


def mutant_into(out: np.ndarray, base: np.ndarray, scale: float, seed: int, stream: int, member: int,
                generation: int) -> np.ndarray:
    """Write ``base + scale * normal(base.shape, seed, stream, member, generation)`` into ``out``.

    Parameters
    ----------
    out, base : numpy.ndarray, same shape, C-contiguous, float32 or float64
        ``out`` may be a pinned buffer; it must not overlap ``base``.
    scale : float
        Rounded to the arrays' dtype first (as NumPy does with a Python float).
    seed, stream, member, generation : int
        The noise address (``stream`` already an integer id).
    """
    flat_out = out.reshape(-1)
    flat_base = np.ascontiguousarray(base).reshape(-1)
    if flat_out.shape[0]:
        k0, k1 = _key(seed)
        kernel = _mutant_kernel_serial if flat_out.shape[0] < SERIAL_BELOW else _mutant_kernel
        kernel(flat_out, flat_base, out.dtype.type(scale), k0, k1, np.uint32(stream), np.uint32(member),
               np.uint32(generation))
    return out
