"""Tests of egdnp.rng: known answers, cross-implementation equality, statistics, errors."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from egdnp import rng
from egdnp.rng import _array_api, _cpu, _spec
from conftest import to_numpy

# Random123's published known-answer vectors (tests/kat_vectors): counter, key, output.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]

# The worked example of docs/noise.md: seed 42, "fc1.weight", member 17, generation 3.
DOC_SEED, DOC_NAME, DOC_MEMBER, DOC_GEN = 42, "fc1.weight", 17, 3
DOC_WORDS = [1660357608, 2730974651, 339334685, 3925135854, 1476885128, 4075454926, 1983844142, 468546182]


def _seed(key):
    return key[0] | (key[1] << 32)


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers_scalar_reference(counter, key, expected):
    assert _spec.philox4x32_10(counter, key) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers_array_api_oracle(xp, counter, key, expected):
    block = xp.asarray([counter[0]], dtype=xp.uint32)
    words = _array_api.philox_blocks(xp, block, counter[1], counter[2], counter[3], _seed(key))
    assert [int(to_numpy(w)[0]) for w in words] == list(expected)


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers_numba(counter, key, expected):
    out = _cpu.philox_blocks([counter[0]], counter[1], counter[2], counter[3], _seed(key))
    assert out[0].tolist() == list(expected)


def test_stream_id_is_crc32_of_utf8_name():
    import zlib

    assert rng.stream_id("fc1.weight") == zlib.crc32(b"fc1.weight") == 980894944
    assert rng.stream_id("conv\u00e9.weight") == zlib.crc32("conv\u00e9.weight".encode("utf-8"))
    with pytest.raises(TypeError, match="name"):
        rng.stream_id(3)


def test_documented_worked_example():
    words = rng.random_bits(8, seed=DOC_SEED, stream=DOC_NAME, member=DOC_MEMBER, generation=DOC_GEN)
    assert words.tolist() == DOC_WORDS
    z = rng.normal(4, seed=DOC_SEED, stream=DOC_NAME, member=DOC_MEMBER, generation=DOC_GEN, dtype="float64")
    ref = [_spec.normal_reference(j, DOC_SEED, rng.stream_id(DOC_NAME), DOC_MEMBER, DOC_GEN) for j in range(4)]
    np.testing.assert_allclose(z, ref, rtol=0, atol=1e-15)
    np.testing.assert_allclose(z, [-0.906186737996, -1.039060844016, 1.931298345394, -1.160392183533], rtol=0, atol=1e-11)


ADDRESSES = [
    dict(seed=0, stream=0, member=0, generation=0),
    dict(seed=2**64 - 1, stream=2**32 - 1, member=2**32 - 1, generation=2**32 - 1),
    dict(seed=123456789012345, stream="fc2.bias", member=5, generation=77),
]
SIZES = [0, 1, 3, 4, 5, 4 * _cpu.CHUNK_BLOCKS - 1, 4 * _cpu.CHUNK_BLOCKS + 6, 3 * 4 * _cpu.CHUNK_BLOCKS + 1]


@pytest.mark.parametrize("address", ADDRESSES)
@pytest.mark.parametrize("n", SIZES)
def test_words_bitwise_equal_across_implementations(xp, address, n):
    expected = rng.random_bits(n, **address, impl="numba")
    got = rng.random_bits(n, **address, xp=xp)
    assert got.dtype == xp.uint32
    np.testing.assert_array_equal(to_numpy(got), expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("address", ADDRESSES)
def test_normals_agree_within_documented_tolerance(xp, dtype, address):
    n = 4 * _cpu.CHUNK_BLOCKS + 7
    oracle = to_numpy(rng.normal(n, **address, dtype="float64", xp="array_api_strict"))
    got = rng.normal(n, **address, dtype=dtype, xp=xp)
    assert got.dtype == getattr(xp, dtype)
    err = np.max(np.abs(to_numpy(got).astype(np.float64) - oracle))
    assert err <= rng.NORMAL_ATOL[dtype]


def test_float32_normals_within_tolerance_over_a_million_draws():
    n = 10**6
    oracle = rng.normal(n, seed=5, stream=9, dtype="float64", impl="numba")
    fast = rng.normal(n, seed=5, stream=9, dtype="float32")
    assert np.max(np.abs(fast.astype(np.float64) - oracle)) <= rng.NORMAL_ATOL["float32"]


def test_uniform_is_24_bit_and_exact_in_both_dtypes(xp):
    u32 = to_numpy(rng.uniform(1000, seed=3, dtype="float32", xp=xp))
    u64 = to_numpy(rng.uniform(1000, seed=3, dtype="float64", xp=xp))
    words = rng.random_bits(1000, seed=3)
    np.testing.assert_array_equal(u64, (words >> 8) * 2.0**-24)
    np.testing.assert_array_equal(u32.astype(np.float64), u64)
    assert u64.min() >= 0.0 and u64.max() < 1.0


def test_prefix_stability_and_shape_independence():
    big = rng.normal(100_003, seed=11, stream="w", member=2, generation=1)
    small = rng.normal(4097, seed=11, stream="w", member=2, generation=1)
    np.testing.assert_array_equal(big[:4097], small)
    shaped = rng.normal((7, 13, 11), seed=11, stream="w", member=2, generation=1)
    np.testing.assert_array_equal(shaped.reshape(-1), big[: 7 * 13 * 11])
    bits_big = rng.random_bits(50_001, seed=1)
    np.testing.assert_array_equal(rng.random_bits(9, seed=1), bits_big[:9])


def test_thread_count_does_not_change_results():
    import numba

    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = rng.normal(200_001, seed=8, stream=1)
        one_sum = rng.weighted_noise_sum([0.5, -1.0, 2.0], 30_001, seed=8, stream=1)
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = rng.normal(200_001, seed=8, stream=1)
        many_sum = rng.weighted_noise_sum([0.5, -1.0, 2.0], 30_001, seed=8, stream=1)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
    np.testing.assert_array_equal(one_sum, many_sum)


def _box_muller_edge_words(n_random):
    """Word pairs covering the Box-Muller edge cases, then random pairs (uint32, shape (n,) each)."""
    top = np.array([0, 1, 2**23 - 1, 2**23, 2**24 - 2, 2**24 - 1, 0xB504F3, 0xB504F4, 0x5A827A, 0x5A8279], np.uint32)
    quarter = np.array([0, 1, 2**21 - 1, 2**21, 2**21 + 1, 2**22 - 1, 2**22, 3 * 2**21, 2**24 - 2**21, 2**24 - 1], np.uint32)
    r = np.random.default_rng(0)
    wa = np.concatenate([top << np.uint32(8), (top << np.uint32(8)) | np.uint32(255), r.integers(0, 2**32, n_random, dtype=np.uint32)])
    wb = np.concatenate([quarter << np.uint32(8), (quarter << np.uint32(8)) | np.uint32(255), r.integers(0, 2**32, n_random, dtype=np.uint32)])
    return wa, wb


@pytest.mark.parametrize("n_random", [0, 5, 1003])
def test_float32_box_muller_paths_are_bitwise_equal(n_random):
    # normal() writes whole float32 blocks through the hand-vectorised, interleaving
    # kernel; the EGD/EGGROLL kernels and array tails use the Numba loop: same bits
    wa, wb = _box_muller_edge_words(n_random)
    n = wa.shape[0]
    zc = np.empty(n, np.float32)
    zs = np.empty(n, np.float32)
    _cpu._box_muller_f32(wa, wb, n, np.empty(1, np.float32), np.empty(1, np.int32), zc, zs)
    out = np.full(4 * n + 3, np.nan, np.float32)
    _cpu._box_muller_store4_f32(wa, wb, wb[::-1].copy(), wa[::-1].copy(), n, out, 3)
    zc2 = np.empty(n, np.float32)
    zs2 = np.empty(n, np.float32)
    _cpu._box_muller_f32(wb[::-1].copy(), wa[::-1].copy(), n, np.empty(1, np.float32), np.empty(1, np.int32), zc2, zs2)
    expected = np.stack([zc, zs, zc2, zs2], axis=1).reshape(-1)
    np.testing.assert_array_equal(out[3:].view(np.uint32), expected.view(np.uint32))
    assert np.isnan(out[:3]).all()  # nothing written before j0
    # and both are the spec within tolerance (float64 evaluation of the formula)
    r = np.sqrt(-2.0 * np.log(((wa >> np.uint32(8)) + 1.0) * 2.0**-24))
    theta = 2.0 * np.pi * ((wb >> np.uint32(8)) * 2.0**-24)
    assert np.max(np.abs(zc - r * np.cos(theta))) <= rng.NORMAL_ATOL["float32"]
    assert np.max(np.abs(zs - r * np.sin(theta))) <= rng.NORMAL_ATOL["float32"]


@pytest.mark.parametrize("n", [4, 37, 4 * _cpu.CHUNK_BLOCKS + 11, 2 * 4 * _cpu.CHUNK_BLOCKS + 33])
def test_float32_normal_equals_word_by_word_box_muller(n):
    words = rng.random_bits(4 * ((n + 3) // 4), seed=21, stream="layer.weight", member=3, generation=9)
    w = words.reshape(-1, 4)
    nb = w.shape[0]
    z = [np.empty(nb, np.float32) for _ in range(4)]
    scratch = (np.empty(1, np.float32), np.empty(1, np.int32))
    _cpu._box_muller_f32(w[:, 0].copy(), w[:, 1].copy(), nb, *scratch, z[0], z[1])
    _cpu._box_muller_f32(w[:, 2].copy(), w[:, 3].copy(), nb, *scratch, z[2], z[3])
    expected = np.stack(z, axis=1).reshape(-1)[:n]
    got = rng.normal(n, seed=21, stream="layer.weight", member=3, generation=9)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_addresses_give_independent_streams():
    base = dict(seed=1, stream="a", member=0, generation=0)
    z = rng.normal(50_000, **base, dtype="float64")
    for change in (dict(seed=2), dict(stream="b"), dict(member=1), dict(generation=1)):
        other = rng.normal(50_000, **{**base, **change}, dtype="float64")
        assert abs(np.corrcoef(z, other)[0, 1]) < 0.02


def test_statistics_of_a_million_normals():
    from scipy import stats

    z = rng.normal(10**6, seed=2024, stream="stats", dtype="float64")
    n = z.size
    assert abs(z.mean()) < 5.0 / np.sqrt(n)
    assert abs(z.var() - 1.0) < 5.0 * np.sqrt(2.0 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    z32 = rng.normal(10**6, seed=2025, stream="stats").astype(np.float64)
    assert stats.kstest(z32, "norm").pvalue > 1e-3
    # Skewness and kurtosis close to the normal's 0 and 3.
    assert abs(stats.skew(z)) < 0.02 and abs(stats.kurtosis(z, fisher=False) - 3.0) < 0.03
    u = rng.uniform(10**6, seed=2026, dtype="float64")
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_zero_size_shapes(xp):
    for shape in (0, (0,), (3, 0, 2)):
        z = rng.normal(shape, seed=1, xp=xp)
        assert tuple(z.shape) == (shape,) if isinstance(shape, int) else tuple(z.shape) == shape
    assert tuple(rng.weighted_noise_sum([1.0], (2, 0), seed=1, xp=xp).shape) == (2, 0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(seed=-1), ValueError, "seed=-1"),
        (dict(seed=2**64), ValueError, "seed="),
        (dict(seed=1.5), TypeError, "seed=1.5"),
        (dict(seed=True), TypeError, "seed=True"),
        (dict(seed=1, member=-1), ValueError, "member=-1"),
        (dict(seed=1, generation=2**32), ValueError, "generation="),
        (dict(seed=1, stream=2**32), ValueError, "stream="),
        (dict(seed=1, stream=1.0), TypeError, "stream=1.0"),
        (dict(seed=1, dtype="int32"), TypeError, "dtype="),
        (dict(seed=1, dtype="float16"), TypeError, "dtype="),
        (dict(seed=1, impl="fortran"), ValueError, "impl="),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        rng.normal((3,), **kwargs)


@pytest.mark.parametrize("shape,exc", [((-1,), ValueError), ((2.5,), TypeError), ("ab", TypeError), (2**35, ValueError)])
def test_bad_shapes_raise(shape, exc):
    with pytest.raises(exc, match="shape"):
        rng.normal(shape, seed=1)


def test_forcing_an_implementation_on_the_wrong_namespace_raises():
    with pytest.raises(ValueError, match="impl='numba'"):
        rng.normal(3, seed=1, xp="array_api_strict", impl="numba")


# ----------------------------------------------------------------------------
# fused weighted noise sum
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weighted_noise_sum_equals_explicit_sum(xp, dtype):
    weights = [0.7, -1.3, 0.0, 2.5, -0.25]
    members = [3, 0, 11, 7, 2**32 - 1]
    shape = (37, 29)
    got = to_numpy(rng.weighted_noise_sum(weights, shape, seed=99, stream="fc1.weight", members=members, generation=6, dtype=dtype, xp=xp))
    expected = sum(
        w * rng.normal(shape, seed=99, stream="fc1.weight", member=m, generation=6, dtype="float64") for w, m in zip(weights, members)
    )
    atol = 1e-12 if dtype == "float64" else sum(abs(w) for w in weights) * rng.NORMAL_ATOL["float32"] + 1e-5
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == "float32" else 1e-12, atol=atol)
    assert got.dtype == np.dtype(dtype)


def test_weighted_noise_sum_defaults_to_members_0_to_pop(xp):
    w = xp.asarray([1.0, -2.0, 0.5], dtype=xp.float64)
    got = to_numpy(rng.weighted_noise_sum(w, 100, seed=4, stream=2, generation=1, dtype="float64", xp=xp))
    expected = rng.weighted_noise_sum([1.0, -2.0, 0.5], 100, seed=4, stream=2, members=[0, 1, 2], generation=1, dtype="float64")
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_weighted_noise_sum_bad_input():
    with pytest.raises(ValueError, match="members has shape"):
        rng.weighted_noise_sum([1.0, 2.0], 4, seed=1, members=[0])
    with pytest.raises(ValueError, match="one-dimensional"):
        rng.weighted_noise_sum([[1.0]], 4, seed=1)
    with pytest.raises(ValueError, match="non-finite"):
        rng.weighted_noise_sum([np.nan], 4, seed=1)
    with pytest.raises(ValueError, match="members"):
        rng.weighted_noise_sum([1.0], 4, seed=1, members=[-1])


# ----------------------------------------------------------------------------
# centered ranks
# ----------------------------------------------------------------------------
def test_centered_ranks_known_answer_with_ties(xp):
    f = xp.asarray([3.0, 1.0, 1.0, 2.0, 5.0], dtype=xp.float64)
    np.testing.assert_allclose(to_numpy(rng.centered_ranks(f)), [0.25, -0.375, -0.375, 0.0, 0.5])
    one = rng.centered_ranks(xp.asarray([4.0], dtype=xp.float32))
    assert to_numpy(one).tolist() == [0.0] and one.dtype == xp.float32


def test_centered_ranks_numba_matches_oracle_on_random_ties():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.integers(-5, 5), min_size=1, max_size=40))
    def check(values):
        f = np.asarray(values, dtype=np.float64)
        fast = rng.centered_ranks(f)
        oracle = to_numpy(rng.centered_ranks(f, xp="array_api_strict"))
        np.testing.assert_allclose(fast, oracle, atol=1e-15)
        assert abs(fast.sum()) < 1e-12
        assert fast.min() >= -0.5 and fast.max() <= 0.5

    check()


def test_centered_ranks_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        rng.centered_ranks(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="one-dimensional"):
        rng.centered_ranks(np.ones((2, 2)))
    with pytest.raises(ValueError, match="empty"):
        rng.centered_ranks(np.ones(0))


# ----------------------------------------------------------------------------
# the CUDA source, checked without a GPU
# ----------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: the CUDA kernel source is not compiled here")
def test_cuda_kernel_source_compiles_and_its_philox_matches_on_the_host(tmp_path):
    """nvcc compiles the whole GPU module (device code included); the shared
    __host__ __device__ Philox function, run on the host, gives the KATs and
    the same words as Numba."""
    from egdnp.rng._gpu import KERNEL_SOURCE

    harness = KERNEL_SOURCE + r"""
template __global__ void egdnp_normal<float>(float*, long long, u32, u32, u32, u32, u32);
template __global__ void egdnp_normal<double>(double*, long long, u32, u32, u32, u32, u32);
template __global__ void egdnp_weighted_sum<float>(float*, long long, const double*, const u32*, int, u32, u32, u32, u32);
template __global__ void egdnp_weighted_sum<double>(double*, long long, const double*, const u32*, int, u32, u32, u32, u32);
#include <cstdio>
int main() {
    u32 o[4];
    egdnp_philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, o);
    printf("%u %u %u %u\n", o[0], o[1], o[2], o[3]);
    for (u32 b = 0; b < 3; ++b) {
        egdnp_philox4x32_10(b, 980894944u, 17u, 3u, 42u, 0u, o);
        printf("%u %u %u %u\n", o[0], o[1], o[2], o[3]);
    }
    return 0;
}
"""
    src = tmp_path / "kernel.cu"
    src.write_text(harness)
    exe = tmp_path / "kernel"
    subprocess.run(["nvcc", "--fmad=false", "-std=c++14", "-o", str(exe), str(src)], check=True, capture_output=True, timeout=300)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    assert [int(v) for v in lines[0].split()] == list(KAT[2][2])
    words = rng.random_bits(12, seed=DOC_SEED, stream=DOC_NAME, member=DOC_MEMBER, generation=DOC_GEN)
    assert [int(v) for line in lines[1:4] for v in line.split()] == words.tolist()


def test_oracle_stays_on_a_non_default_device(strict_devices):
    """array-api-strict refuses device mixing: the oracle must create nothing on the default device."""
    import array_api_strict as xs

    _, other = strict_devices
    for fn in (rng.normal, rng.random_bits, rng.uniform):
        out = fn((5, 7), seed=3, stream="w", member=1, generation=2, xp=xs, device=other)
        assert out.device == other
    np.testing.assert_array_equal(
        to_numpy(rng.random_bits(35, seed=3, xp=xs, device=other)), rng.random_bits(35, seed=3)
    )
    g = rng.weighted_noise_sum([1.0, -1.0], (4, 3), seed=3, xp=xs, device=other)
    assert g.device == other
