"""The noise specification shared by every implementation (see docs/noise.md).

Philox4x32-10 (Salmon, Moraes, Dror & Shaw, SC'11) with the Random123
constants.  The address of a value is ``(seed, stream, member, generation,
index)``:

* key     = (seed mod 2**32, seed // 2**32)            -- a 64-bit seed
* counter = (index // 4, stream, member, generation)   -- four uint32 words
* word    = output word ``index % 4`` of that Philox block

``stream`` is the parameter's stream id, ``crc32(name.encode("utf-8"))`` for
a name.  Uniforms and normals use 24-bit integers taken from the words:

* ``u_open(w)  = ((w >> 8) + 1) * 2**-24``  in (0, 1]   (exact in float32)
* ``u_half(w)  = (w >> 8) * 2**-24``        in [0, 1)   (exact in float32)
* element ``j`` of a normal array uses the pair of words ``(2p, 2p+1)``,
  ``p = (j % 4) // 2``, of block ``j // 4``; with ``r = sqrt(-2 ln u_open(w_2p))``
  and ``theta = 2 pi u_half(w_2p+1)``, even ``j`` gets ``r cos(theta)`` and odd
  ``j`` gets ``r sin(theta)`` (Box-Muller).

This module holds the constants and the scalar, pure-Python reference used for
known-answer tests and documentation examples.
"""

from __future__ import annotations

import math
import zlib

PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF
MAX_SEED = 2**64 - 1
MAX_WORD = 2**32 - 1
# The block index is one 32-bit counter word, four values per block.
MAX_ELEMENTS = 4 * 2**32
TWO_NEG24 = 2.0**-24

# Documented agreement of normals with the float64 reference evaluation of the
# formulas above (see docs/noise.md, "Tolerances").
NORMAL_ATOL = {"float32": 4e-6, "float64": 1e-13}


def stream_id(name: str) -> int:
    """The stream id of a parameter name: CRC-32 of its UTF-8 bytes (zlib.crc32).

    Parameters
    ----------
    name : str
        A parameter name (``"fc1.weight"``) or any other stream label
        (``"data/batches"``, ``"init/fc1.weight"``).

    Returns
    -------
    int
        In [0, 2**32 - 1]; the ``stream`` counter word of the noise functions.

    Examples
    --------
    >>> stream_id("fc1.weight")
    980894944
    """
    if not isinstance(name, str):
        raise TypeError(f"name={name!r} must be a str (a parameter name such as 'fc1.weight')")
    return zlib.crc32(name.encode("utf-8")) & MASK32


def round_keys(seed: int) -> list[tuple[int, int]]:
    """The ten Philox round keys (k0, k1) for a 64-bit seed, as Python ints."""
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    keys = []
    for _ in range(PHILOX_ROUNDS):
        keys.append((k0, k1))
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return keys


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """Scalar Philox4x32-10 on Python ints: the textbook reference.

    Parameters
    ----------
    counter : 4 ints in [0, 2**32)
    key : 2 ints in [0, 2**32)

    Returns
    -------
    4 ints in [0, 2**32)
    """
    c0, c1, c2, c3 = (int(c) & MASK32 for c in counter)
    k0, k1 = (int(k) & MASK32 for k in key)
    for r in range(PHILOX_ROUNDS):
        if r:
            k0 = (k0 + PHILOX_W0) & MASK32
            k1 = (k1 + PHILOX_W1) & MASK32
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (
            (p1 >> 32) ^ c1 ^ k0,
            p1 & MASK32,
            (p0 >> 32) ^ c3 ^ k1,
            p0 & MASK32,
        )
    return c0, c1, c2, c3


def normal_reference(index: int, seed: int, stream: int, member: int, generation: int) -> float:
    """One normal value by the spec, evaluated in Python float64 (for examples)."""
    words = philox4x32_10((index // 4, stream, member, generation), (seed & MASK32, seed >> 32))
    p = (index % 4) // 2
    u1 = ((words[2 * p] >> 8) + 1) * TWO_NEG24
    u2 = (words[2 * p + 1] >> 8) * TWO_NEG24
    r = math.sqrt(-2.0 * math.log(u1))
    theta = 2.0 * math.pi * u2
    return r * (math.cos(theta) if index % 2 == 0 else math.sin(theta))
