"""CuPy GPU kernels of the noise spec.

One CUDA thread computes one Philox block (four values).  The source is
compiled with ``--fmad=false`` so that products and sums round exactly as the
spec's formulas are written (fused multiply-adds would change the last bits of
the normals).  Words are bitwise equal to the Numba and array-API versions;
normals use CUDA's ``logf``/``sincospif`` (float32) and ``log``/``sincospi``
(float64), within ``NORMAL_ATOL`` of the float64 reference.

Every CUDA source this module hands to CuPy is listed in :data:`CUDA_SOURCES`
with the exact options and name expressions CuPy receives.  The tests compile
each of them with nvcc for sm_80 and sm_90 and run the kernels' bodies as host
code over 10**6 addresses on every CPU run (tests/test_cuda_sources.py,
docs/gpu.md); only the device's own math library and the launch itself need a
GPU (tools/gpu_check.sh).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .. import _backend
from ._spec import MASK32, PHILOX_M0, PHILOX_M1, PHILOX_W0, PHILOX_W1

_THREADS = 256

KERNEL_SOURCE = r"""
typedef unsigned int u32;

__host__ __device__ inline void egdnp_philox4x32_10(u32 b, u32 c1, u32 c2, u32 c3,
                                                    u32 k0, u32 k1, u32* o) {
    u32 x0 = b, x1 = c1, x2 = c2, x3 = c3;
    for (int r = 0; r < 10; ++r) {
        unsigned long long p0 = (unsigned long long)M0 * x0;
        unsigned long long p1 = (unsigned long long)M1 * x2;
        u32 y0 = (u32)(p1 >> 32) ^ x1 ^ k0;
        u32 y2 = (u32)(p0 >> 32) ^ x3 ^ k1;
        x1 = (u32)p1;
        x3 = (u32)p0;
        x0 = y0;
        x2 = y2;
        k0 += W0;
        k1 += W1;
    }
    o[0] = x0; o[1] = x1; o[2] = x2; o[3] = x3;
}

extern "C" __global__ void egdnp_bits(u32* out, long long n, u32 k0, u32 k1,
                                      u32 c1, u32 c2, u32 c3) {
    long long nblocks = (n + 3) / 4;
    for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < nblocks;
         b += (long long)gridDim.x * blockDim.x) {
        u32 w[4];
        egdnp_philox4x32_10((u32)b, c1, c2, c3, k0, k1, w);
        for (int p = 0; p < 4; ++p) {
            long long j = 4 * b + p;
            if (j < n) out[j] = w[p];
        }
    }
}

template <typename T> __device__ inline void egdnp_box_muller(u32 wa, u32 wb, T* zc, T* zs);

template <> __device__ inline void egdnp_box_muller<float>(u32 wa, u32 wb, float* zc, float* zs) {
    float u1 = (float)((wa >> 8) + 1u) * 5.9604644775390625e-08f;  /* 2**-24 */
    float t = (float)(wb >> 8) * 5.9604644775390625e-08f;
    float r = sqrtf(-2.0f * logf(u1));
    float s, c;
    sincospif(2.0f * t, &s, &c);
    *zc = r * c;
    *zs = r * s;
}

template <> __device__ inline void egdnp_box_muller<double>(u32 wa, u32 wb, double* zc, double* zs) {
    double u1 = (double)((wa >> 8) + 1u) * 5.9604644775390625e-08;
    double t = (double)(wb >> 8) * 5.9604644775390625e-08;
    double r = sqrt(-2.0 * log(u1));
    double s, c;
    sincospi(2.0 * t, &s, &c);
    *zc = r * c;
    *zs = r * s;
}

template <typename T>
__device__ inline void egdnp_normal4(long long b, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1, T* z) {
    u32 w[4];
    egdnp_philox4x32_10((u32)b, c1, c2, c3, k0, k1, w);
    egdnp_box_muller<T>(w[0], w[1], &z[0], &z[1]);
    egdnp_box_muller<T>(w[2], w[3], &z[2], &z[3]);
}

template <typename T>
__global__ void egdnp_normal(T* out, long long n, u32 k0, u32 k1, u32 c1, u32 c2, u32 c3) {
    long long nblocks = (n + 3) / 4;
    for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < nblocks;
         b += (long long)gridDim.x * blockDim.x) {
        T z[4];
        egdnp_normal4<T>(b, c1, c2, c3, k0, k1, z);
        for (int p = 0; p < 4; ++p) {
            long long j = 4 * b + p;
            if (j < n) out[j] = z[p];
        }
    }
}

/* out[r, j] = normal(member = first + r)[j] for r < rows, j < n: one 2-D launch,
   blocks of Philox blocks along x, member rows along y (both grid-stride). */
template <typename T>
__global__ void egdnp_normal_members(T* out, long long n, long long rows, u32 k0, u32 k1, u32 c1, u32 first,
                                     u32 c3) {
    long long nblocks = (n + 3) / 4;
    for (long long r = blockIdx.y; r < rows; r += gridDim.y) {
        T* row = out + r * n;
        for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < nblocks;
             b += (long long)gridDim.x * blockDim.x) {
            T z[4];
            egdnp_normal4<T>(b, c1, first + (u32)r, c3, k0, k1, z);
            for (int p = 0; p < 4; ++p) {
                long long j = 4 * b + p;
                if (j < n) row[j] = z[p];
            }
        }
    }
}

/* g[j] = sum_i w[i] * normal(member_i)[j]; accumulates in double. */
template <typename T>
__global__ void egdnp_weighted_sum(T* out, long long n, const double* w, const u32* members,
                                   int pop, u32 k0, u32 k1, u32 c1, u32 c3) {
    long long nblocks = (n + 3) / 4;
    for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < nblocks;
         b += (long long)gridDim.x * blockDim.x) {
        double acc[4] = {0.0, 0.0, 0.0, 0.0};
        for (int i = 0; i < pop; ++i) {
            T z[4];
            egdnp_normal4<T>(b, c1, members[i], c3, k0, k1, z);
            for (int p = 0; p < 4; ++p) acc[p] += w[i] * (double)z[p];
        }
        for (int p = 0; p < 4; ++p) {
            long long j = 4 * b + p;
            if (j < n) out[j] = (T)acc[p];
        }
    }
}
""".replace("M0", f"{PHILOX_M0}u").replace("M1", f"{PHILOX_M1}u").replace("W0", f"{PHILOX_W0}u").replace("W1", f"{PHILOX_W1}u")

OPTIONS = ("--fmad=false", "-std=c++14")

_NAMES = (
    "egdnp_bits",
    "egdnp_normal<float>",
    "egdnp_normal<double>",
    "egdnp_weighted_sum<float>",
    "egdnp_weighted_sum<double>",
    "egdnp_normal_members<float>",
    "egdnp_normal_members<double>",
)


class CudaSource(NamedTuple):
    """One CUDA compilation unit as ``cupy.RawModule`` receives it.

    Attributes
    ----------
    name : str
        A label for test reports.
    code : str
        The source text, byte for byte.
    options : tuple of str
        The compiler options egdnp passes (CuPy appends ``-ftz=true`` and the
        ``-arch`` of the current device itself).
    name_expressions : tuple of str
        The kernels fetched with ``get_function``; templates are instantiated
        from these.
    """

    name: str
    code: str
    options: tuple
    name_expressions: tuple


#: Every CUDA source egdnp compiles at run time (a new RawModule/RawKernel/
#: ElementwiseKernel anywhere in egdnp must be added here: a test checks it).
CUDA_SOURCES = (CudaSource("rng philox", KERNEL_SOURCE, OPTIONS, _NAMES),)


@functools.lru_cache(maxsize=None)
def _module():
    cupy = _backend.import_cupy()
    src = CUDA_SOURCES[0]
    return cupy.RawModule(code=src.code, options=src.options, name_expressions=src.name_expressions)


def _grid(n):
    """Launch shape ``(grid, threads)`` for ``n`` values: one thread per Philox block
    (four values), at most 65535 thread blocks (the kernels loop grid-stride)."""
    nblocks = (n + 3) // 4
    return max(1, min((nblocks + _THREADS - 1) // _THREADS, 65535)), _THREADS


def _launch(name, n, args):
    cupy = _backend.import_cupy()
    kernel = _module().get_function(name)
    grid, threads = _grid(n)
    kernel((grid,), (threads,), args)
    return cupy


def _key(seed):
    return np.uint32(seed & MASK32), np.uint32(seed >> 32)


def random_bits(n, seed, stream, member, generation):
    """uint32 words 0..n-1 of an address on the current GPU, shape (n,)."""
    cupy = _backend.import_cupy()
    out = cupy.empty(n, dtype=cupy.uint32)
    if n:
        k0, k1 = _key(seed)
        _launch("egdnp_bits", n, (out, np.int64(n), k0, k1, np.uint32(stream), np.uint32(member), np.uint32(generation)))
    return out


def normal(n, seed, stream, member, generation, dtype):
    """Normals 0..n-1 of an address on the current GPU, shape (n,)."""
    cupy = _backend.import_cupy()
    out = cupy.empty(n, dtype=np.dtype(dtype))
    if n:
        k0, k1 = _key(seed)
        name = "egdnp_normal<float>" if out.dtype == np.float32 else "egdnp_normal<double>"
        _launch(name, n, (out, np.int64(n), k0, k1, np.uint32(stream), np.uint32(member), np.uint32(generation)))
    return out


def _grid2(n, rows):
    """Launch shape ``((grid_x, grid_y), threads)`` of ``rows`` rows of ``n`` values: :func:`_grid` of one row
    along x, one thread block row per member along y (at most 65535: the kernel loops grid-stride over rows)."""
    grid, threads = _grid(n)
    return (grid, max(1, min(rows, 65535))), threads


def normal_members(n_members, size, seed, stream, first, generation, dtype):
    """``out[p] = normal(size, member=first + p)`` on the current GPU in ONE launch, shape (n_members, size)."""
    cupy = _backend.import_cupy()
    out = cupy.empty((n_members, size), dtype=np.dtype(dtype))
    if n_members and size:
        k0, k1 = _key(seed)
        name = "egdnp_normal_members<float>" if out.dtype == np.float32 else "egdnp_normal_members<double>"
        grid, threads = _grid2(size, n_members)
        kernel = _module().get_function(name)
        kernel(grid, (threads,), (out, np.int64(size), np.int64(n_members), k0, k1, np.uint32(stream),
                                  np.uint32(first), np.uint32(generation)))
    return out


def weighted_noise_sum(weights, members, n, seed, stream, generation, dtype):
    """sum_i weights[i] * normal(member=members[i]) on the current GPU, shape (n,)."""
    cupy = _backend.import_cupy()
    out = cupy.zeros(n, dtype=np.dtype(dtype))
    if n and len(weights):
        k0, k1 = _key(seed)
        w = cupy.asarray(np.asarray(weights, dtype=np.float64))
        m = cupy.asarray(np.asarray(members, dtype=np.uint32))
        name = "egdnp_weighted_sum<float>" if out.dtype == np.float32 else "egdnp_weighted_sum<double>"
        _launch(name, n, (out, np.int64(n), w, m, np.int32(len(weights)), k0, k1, np.uint32(stream), np.uint32(generation)))
    return out


def centered_ranks(fitness):
    """Centered ranks with averaged ties on the GPU (sort-based), shape (pop,)."""
    cupy = _backend.import_cupy()
    f = cupy.asarray(fitness)
    n = f.shape[0]
    if n == 1:
        return cupy.zeros_like(f)
    order = cupy.argsort(f, kind="stable")
    sorted_f = f[order]
    starts = cupy.concatenate([cupy.ones(1, dtype=bool), sorted_f[1:] != sorted_f[:-1]])
    run = cupy.cumsum(starts) - 1  # run id of each sorted position
    first = cupy.nonzero(starts)[0]  # first sorted position of each run
    last = cupy.concatenate([first[1:] - 1, cupy.asarray([n - 1])])
    mean_rank = (first + last).astype(cupy.float64) / 2.0
    ranks = cupy.empty(n, dtype=cupy.float64)
    ranks[order] = mean_rank[run]
    return (ranks / (n - 1) - 0.5).astype(f.dtype)
