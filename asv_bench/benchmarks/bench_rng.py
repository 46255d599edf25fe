"""Noise generation, the fused weighted-noise reduction and centered ranks.

Targets (issue 2), as ratios against a library baseline measured in the same run:
* normals: egdnp float32 at >= 8x the throughput of NumPy's default_rng().standard_normal;
* weighted noise sum (pop 256, P 1e6): >= 10x faster than materialising the
  (pop, P) matrix with NumPy and multiplying; extra memory <= 2x the output.
The ``track_*`` benchmarks report those ratios directly.
"""

from __future__ import annotations

import numpy as np

from egdnp import _backend, rng

from ._common import BACKENDS, best_time, namespace_or_skip

N_NORMALS = 10**7


def _baseline_normal(xp, dtype):
    if _backend.is_cupy(xp):
        import cupy  # only reached where CuPy is usable

        return lambda: cupy.random.standard_normal(N_NORMALS, dtype=dtype)
    gen = np.random.default_rng(0)
    return lambda: gen.standard_normal(N_NORMALS, dtype=dtype)


class NormalGeneration:
    """10**7 standard normals: egdnp (Numba / CuPy kernel) against the backend's own RNG."""

    params = (BACKENDS, ["float32", "float64"])
    param_names = ["backend", "dtype"]
    timeout = 300

    def setup(self, backend, dtype):
        self.xp = namespace_or_skip(backend)
        self.sync = lambda: _backend.synchronize(self.xp)
        self.egdnp = lambda: rng.normal(N_NORMALS, seed=1, stream="bench", dtype=dtype, xp=self.xp)
        self.baseline = _baseline_normal(self.xp, dtype)
        self.egdnp()  # compile/cache the kernels outside the timing
        self.sync()

    def time_egdnp_normal(self, backend, dtype):
        self.egdnp()
        self.sync()

    def time_baseline_normal(self, backend, dtype):
        self.baseline()
        self.sync()

    def track_speedup_over_baseline(self, backend, dtype):
        return best_time(self.baseline, sync=self.sync) / best_time(self.egdnp, sync=self.sync)

    track_speedup_over_baseline.unit = "x"


class MidSizeNormal:
    """One mid-size draw (2**17 float32 normals, a 512x256 weight's worth): the serial kernel, below
    ``egdnp._threads.RNG_SPLIT_FROM`` (2**18 values), where waking a thread costs more than it saves."""

    params = (BACKENDS, [2**17])
    param_names = ["backend", "n"]

    def setup(self, backend, n):
        self.xp = namespace_or_skip(backend)
        rng.normal(n, seed=1, stream="bench", xp=self.xp)

    def time_egdnp_normal(self, backend, n):
        rng.normal(n, seed=1, stream="bench", xp=self.xp)
        _backend.synchronize(self.xp)


class RandomBits:
    """10**7 raw Philox words."""

    params = [BACKENDS]
    param_names = ["backend"]

    def setup(self, backend):
        self.xp = namespace_or_skip(backend)
        rng.random_bits(16, seed=1, xp=self.xp)

    def time_random_bits(self, backend):
        rng.random_bits(N_NORMALS, seed=1, xp=self.xp)
        _backend.synchronize(self.xp)


class WeightedNoiseSum:
    """g = sum_i w_i eps_i for pop 256, P 10**6 (float32), fused versus materialised."""

    params = (BACKENDS, [256], [10**6])
    param_names = ["backend", "pop", "n_params"]
    timeout = 600

    def setup(self, backend, pop, n_params):
        self.xp = namespace_or_skip(backend)
        self.w = np.random.default_rng(0).standard_normal(pop)
        rng.weighted_noise_sum(self.w[:2], 64, seed=1, xp=self.xp)

    def _fused(self, n_params):
        rng.weighted_noise_sum(self.w, n_params, seed=1, stream="bench", xp=self.xp)
        _backend.synchronize(self.xp)

    def _materialised(self, pop, n_params):
        if _backend.is_cupy(self.xp):
            import cupy

            noise = cupy.random.standard_normal((pop, n_params), dtype=np.float32)
            cupy.asarray(self.w, dtype=np.float32) @ noise
            _backend.synchronize(self.xp)
        else:
            noise = np.random.default_rng(0).standard_normal((pop, n_params), dtype=np.float32)
            self.w.astype(np.float32) @ noise

    def time_fused(self, backend, pop, n_params):
        self._fused(n_params)

    def time_materialised_baseline(self, backend, pop, n_params):
        self._materialised(pop, n_params)

    def track_speedup_over_materialised(self, backend, pop, n_params):
        fused = best_time(lambda: self._fused(n_params), repeat=3)
        materialised = best_time(lambda: self._materialised(pop, n_params), repeat=2)
        return materialised / fused

    track_speedup_over_materialised.unit = "x"


class WeightedNoiseSumMemory:
    """Peak memory of the fused sum versus just allocating and filling its output.

    (peakmem_fused - peakmem_output_only) / output bytes is the extra-memory
    factor (target <= 2); P = 10**7 float32 makes the 40 MB output dominate noise.
    """

    params = [[10**7]]
    param_names = ["n_params"]

    def setup(self, n_params):
        self.w = np.linspace(-1.0, 1.0, 8)
        rng.weighted_noise_sum(self.w, 64, seed=1)

    def peakmem_fused(self, n_params):
        rng.weighted_noise_sum(self.w, n_params, seed=1)

    def peakmem_output_only(self, n_params):
        np.ones(n_params, dtype=np.float32)


class CenteredRanks:
    """Centered ranks of 4096 fitnesses with ties: Numba against scipy.stats.rankdata."""

    def setup(self):
        self.f = np.round(np.random.default_rng(0).standard_normal(4096), 2)
        rng.centered_ranks(self.f)

    def time_egdnp_centered_ranks(self):
        rng.centered_ranks(self.f)

    def time_scipy_rankdata(self):
        from scipy.stats import rankdata

        (rankdata(self.f) - 1.0) / (self.f.size - 1) - 0.5
