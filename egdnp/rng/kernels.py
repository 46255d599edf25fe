"""The Numba building blocks of the noise spec that other packages may inline.

The one public door to :mod:`egdnp.rng`'s CPU kernels: a fused kernel
elsewhere in egdnp (EGD's mutants and seed mix in :mod:`egdnp.optim`) calls
these and gets exactly the values :func:`egdnp.rng.normal` and
:func:`egdnp.rng.weighted_noise_sum` give for the same address, because they
ARE the code those functions run.  Importing this module loads Numba;
``import egdnp`` does not import it.

Contract
--------
* A chunk is any run of ``nb`` Philox blocks (four values each; egdnp uses
  up to :data:`CHUNK_BLOCKS`); value ``4 b + p`` of an address is word/normal
  ``p`` of block ``b``, whatever the chunking.
* Scratch arrays are 1-D (or rows of a 2-D C-contiguous array) of at least
  ``nb`` entries: words ``o0..o3`` uint32, normals ``z0..z3`` of the output
  dtype (float32 or float64), accumulators ``acc`` float64.
* The ``@njit(inline="always")`` functions are inlined into the caller, so its
  fastmath flags apply: compile callers of :func:`normal_chunk` and
  :func:`weighted_chunk` WITHOUT fastmath (the float32 Box-Muller inside is
  already compiled with exactly ``fastmath={"contract"}``) to keep the values
  the tests and reference bundles pin.
* Counter words: ``c1`` stream, ``c2`` member, ``c3`` generation, all uint32;
  ``k0, k1`` the key from :func:`key`.

Names
-----
CHUNK_BLOCKS
    Philox blocks per chunk (4096: 16384 values).
key(seed) -> (k0, k1)
    The Philox key (uint32 words) of a 64-bit seed.
philox_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3)
    Words of blocks ``b0 .. b0+nb-1`` into ``o0..o3[:nb]``.
normal_chunk(b0, nb, k0, k1, c1, c2, c3, o0, o1, o2, o3, z0, z1, z2, z3)
    Normals of the same blocks into ``z0..z3[:nb]`` (``o`` is scratch).
weighted_chunk(b0, nb, weights, members, k0, k1, c1, c3, o, z, acc)
    ``acc[p, :nb] = sum_m weights[m] * normals p of member members[m]``
    (float64 accumulation; ``o`` (4, >= nb) uint32 and ``z`` (4, >= nb)
    scratch, ``acc`` (4, >= nb) float64).
store4(out, b0, nb, z0, z1, z2, z3)
    Interleave ``z0..z3[:nb]`` into ``out[4 b0 : 4 (b0 + nb)]``, clipped at
    ``len(out)``.
"""

from __future__ import annotations

from ._cpu import CHUNK_BLOCKS
from ._cpu import _key as key
from ._cpu import _normal_chunk as normal_chunk
from ._cpu import _philox_chunk as philox_chunk
from ._cpu import _store4 as store4
from ._cpu import _weighted_chunk as weighted_chunk

__all__ = ["CHUNK_BLOCKS", "key", "philox_chunk", "normal_chunk", "weighted_chunk", "store4"]
