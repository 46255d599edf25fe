"""Addressed noise in one minute: the same numbers everywhere, fast.

Prints the worked example of docs/noise.md, shows that a value depends only on
its address (prefix stability, thread count), and times egdnp's Numba normal
generator against NumPy's default_rng on this machine.

    python examples/noise_demo.py [--n 10000000] [--backend numpy|cupy] [--out DIR]

Writes the figures it prints to DIR/noise_demo.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from egdnp import _backend, atomic_write, rng


def best_of(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10**7, help="number of normals to time (default 1e7)")
    parser.add_argument("--backend", default="numpy", help="numpy (default) or cupy")
    parser.add_argument("--out", default="out/noise_demo", help="output directory (default out/noise_demo)")
    args = parser.parse_args(argv)
    try:
        xp = _backend.get_namespace(args.backend)
    except (RuntimeError, ValueError, TypeError) as exc:  # e.g. --backend cupy without a GPU
        raise SystemExit(f"--backend {args.backend}: {exc}") from None

    address = dict(seed=42, stream="fc1.weight", member=17, generation=3)
    print("address:", address, " stream id:", rng.stream_id("fc1.weight"))
    print("words  :", _backend.to_host(rng.random_bits(8, **address, xp=xp)).tolist())
    print("normals:", np.round(_backend.to_host(rng.normal(4, **address, dtype="float64", xp=xp)), 12).tolist())
    strict = rng.normal(4, **address, dtype="float64", xp="array_api_strict")
    print("same on array-api-strict:", np.allclose(np.asarray(strict), _backend.to_host(rng.normal(4, **address, dtype="float64", xp=xp)), atol=1e-13))

    n = args.n
    t_egdnp = best_of(lambda: (rng.normal(n, seed=1, xp=xp), _backend.synchronize(xp)))
    gen = np.random.default_rng(0)
    t_numpy = best_of(lambda: gen.standard_normal(n, dtype=np.float32))
    print(f"\n{n:,} float32 normals: egdnp {t_egdnp * 1e3:.1f} ms, numpy default_rng {t_numpy * 1e3:.1f} ms "
          f"-> {t_numpy / t_egdnp:.1f}x")
    w = np.random.default_rng(1).standard_normal(64)
    t_sum = best_of(lambda: (rng.weighted_noise_sum(w, 10**6, seed=1, xp=xp), _backend.synchronize(xp)), repeat=3)
    print(f"fitness-weighted sum of 64 regenerated noise vectors of 1e6: {t_sum * 1e3:.1f} ms (no (64, 1e6) matrix held)")

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures = {"backend": args.backend, "n": n, "egdnp_normal_s": t_egdnp, "numpy_normal_s": t_numpy,
               "speedup": t_numpy / t_egdnp, "weighted_sum_64x1e6_s": t_sum}
    with atomic_write(out / "noise_demo.json", "w") as fh:
        fh.write(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {out / 'noise_demo.json'}")
    print(f"outputs written to {out}")


if __name__ == "__main__":
    main()
