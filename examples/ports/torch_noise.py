"""egdnp's addressed noise (docs/noise.md) reimplemented in PyTorch, checked against the ``noise`` scenario.

A port that wants egdnp's exact perturbations without reading them from a bundle
regenerates them from their address (seed, stream, member, generation, index):
Philox4x32-10, the 24-bit uniforms and Box-Muller normals of docs/noise.md.
torch has no uint64 arithmetic, so the 32x32 -> 64-bit products of Philox run
on int64 tensors with the constant split into 16-bit halves (every
intermediate stays below 2**49).

    python -m egdnp.reference generate noise --out /tmp/noise --dtype float32 --seed 42
    python examples/ports/torch_noise.py /tmp/noise /tmp/torch_noise.npz
    python -m egdnp.reference compare /tmp/noise /tmp/torch_noise.npz --rtol 0 --atol 4e-6

Words are bitwise equal to egdnp's; normals agree within ``egdnp.rng.NORMAL_ATOL``
(4e-6 in float32, where egdnp's CPU kernel uses float32 polynomials for log/sin/cos,
1e-13 in float64).
"""

from __future__ import annotations

import argparse
import math
import zlib

import torch

from egdnp.reference import dump_arrays, load_bundle

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def stream_id(stream) -> int:
    """A tensor name's stream: crc32 of its UTF-8 bytes (ints pass through)."""
    return zlib.crc32(stream.encode("utf-8")) if isinstance(stream, str) else int(stream)


def mulhilo(m: int, x):
    """(hi, lo) 32-bit words of the 64-bit product ``m * x``; x holds uint32 values in an int64 tensor."""
    p_lo = x * (m & 0xFFFF)  # < 2**48
    p_hi = x * (m >> 16)  # < 2**48
    s = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (s >> 32), s & MASK32


def philox4x32_10(counter, key):
    """Philox4x32-10 of int64 tensors ``counter = (x0, x1, x2, x3)`` and Python-int ``key = (k0, k1)``."""
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32  # key bumps between rounds
        hi0, lo0 = mulhilo(M0, x0)
        hi1, lo1 = mulhilo(M1, x2)
        x0, x1, x2, x3 = hi1 ^ x1 ^ k0, lo1, hi0 ^ x3 ^ k1, lo0
    return x0, x1, x2, x3


def blocks(n: int, seed: int, stream, member: int, generation: int):
    """The four words of every Philox block covering indices 0..n-1: 4 int64 tensors of length ceil(n/4)."""
    b = torch.arange((n + 3) // 4, dtype=torch.int64)
    const = lambda v: torch.full_like(b, v)  # noqa: E731
    return philox4x32_10((b, const(stream_id(stream)), const(member), const(generation)), (seed & MASK32, seed >> 32))


def random_bits(shape, *, seed, stream, member, generation):
    n = math.prod(shape)
    words = torch.stack(blocks(n, seed, stream, member, generation), dim=1).reshape(-1)[:n]  # word j = block j//4, lane j%4
    return words.to(torch.int64).reshape(shape)  # uint32 values (torch has no uint32 arithmetic)


def uniform(shape, *, seed, stream, member, generation, dtype):
    return ((random_bits(shape, seed=seed, stream=stream, member=member, generation=generation) >> 8) * 2.0**-24).to(dtype)


def normal(shape, *, seed, stream, member, generation, dtype):
    """Box-Muller on the word pairs (w0, w1) and (w2, w3) of each block, in float64, cast at the end."""
    n = math.prod(shape)
    w0, w1, w2, w3 = blocks(n, seed, stream, member, generation)
    out = []
    for wa, wb in ((w0, w1), (w2, w3)):
        r = torch.sqrt(-2.0 * torch.log(((wa >> 8) + 1).double() * 2.0**-24))  # u_open in (0, 1]
        theta = 2.0 * math.pi * (wb >> 8).double() * 2.0**-24  # u_half in [0, 1)
        out += [r * torch.cos(theta), r * torch.sin(theta)]
    return torch.stack(out, dim=1).reshape(-1)[:n].to(dtype).reshape(shape)  # block b -> elements 4b..4b+3


def weighted_noise_sum(weights, shape, *, seed, stream, members, generation, dtype):
    total = torch.zeros(shape, dtype=torch.float64)
    for w, m in zip(weights, members):
        total += w * normal(shape, seed=seed, stream=stream, member=m, generation=generation, dtype=torch.float64)
    return total.to(dtype)


def centered_ranks(f):
    n = f.numel()
    ranks = torch.empty_like(f)
    ranks[torch.argsort(f, stable=True)] = torch.arange(n, dtype=f.dtype)
    tied = (f[:, None] == f[None, :]).to(f.dtype)
    return (tied @ ranks) / tied.sum(dim=1) / (n - 1) - 0.5


def run(bundle_dir, out_path):
    bundle = load_bundle(bundle_dir)
    hp = bundle.params
    dtype = {"float32": torch.float32, "float64": torch.float64}[bundle.manifest["dtype"]]
    a, b = hp["address_a"], hp["address_b"]
    outputs = {
        "noise/words_a": random_bits((64,), **a),
        "noise/words_b": random_bits((3, 5), **b),
        "noise/uniform_a": uniform((64,), **a, dtype=dtype),
        "noise/normal_a": normal((64,), **a, dtype=dtype),
        "noise/normal_b": normal((4, 6), **b, dtype=dtype),
        "noise/weighted_sum": weighted_noise_sum(hp["weights"], (6, 5), seed=a["seed"], stream=a["stream"],
                                                 members=hp["weighted_sum_members"], generation=a["generation"], dtype=dtype),
        "outputs/centered_ranks": centered_ranks(torch.from_numpy(bundle["inputs/fitness"])),
    }
    return dump_arrays(out_path, outputs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="scenarios: noise; see docs/validating-a-port.md")
    parser.add_argument("bundle", help="reference bundle directory (python -m egdnp.reference generate SCENARIO --out DIR)")
    parser.add_argument("out", help="where to write the port's outputs: a .npz file, or a directory of .npy files")
    args = parser.parse_args()
    print(f"wrote {run(args.bundle, args.out)}")
