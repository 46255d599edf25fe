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
    _cpu._box_muller_f32(wa, wb, n, zc, zs)
    out = np.full(4 * n + 3, np.nan, np.float32)
    _cpu._box_muller_store4_f32(wa, wb, wb[::-1].copy(), wa[::-1].copy(), n, out, 3)
    zc2 = np.empty(n, np.float32)
    zs2 = np.empty(n, np.float32)
    _cpu._box_muller_f32(wb[::-1].copy(), wa[::-1].copy(), n, zc2, zs2)
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
    _cpu._box_muller_f32(w[:, 0].copy(), w[:, 1].copy(), nb, z[0], z[1])
    _cpu._box_muller_f32(w[:, 2].copy(), w[:, 3].copy(), nb, z[2], z[3])
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


def test_split_over_threads_does_not_change_results(monkeypatch):
    """From _threads.RNG_SPLIT_FROM values the draw is cut over pool threads; force it for small arrays."""
    from egdnp import _threads

    n = 3 * 4 * _cpu.CHUNK_BLOCKS + 5
    serial = (rng.normal(n, seed=8, stream=1), rng.normal(n, seed=8, stream=1, dtype="float64"),
              rng.random_bits(n, seed=8, stream=1), rng.weighted_noise_sum([0.5, -1.0, 2.0], n, seed=8, stream=1))
    calls = []
    real = _threads.run_split
    monkeypatch.setattr(_threads, "RNG_SPLIT_FROM", 0)
    monkeypatch.setattr(_threads, "cpu_threads", lambda: 3)
    monkeypatch.setattr(_threads, "run_split", lambda fn, bounds: calls.append(list(bounds)) or real(fn, bounds))
    split = (rng.normal(n, seed=8, stream=1), rng.normal(n, seed=8, stream=1, dtype="float64"),
             rng.random_bits(n, seed=8, stream=1), rng.weighted_noise_sum([0.5, -1.0, 2.0], n, seed=8, stream=1))
    assert len(calls) == 4 and all(len(b) == 3 and b[0][0] == 0 and b[-1][1] == (n + 3) // 4 for b in calls)
    for a, b in zip(serial, split):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


# ----------------------------------------------------------------------------
# normal_members: the noise of consecutive members in one launch
# ----------------------------------------------------------------------------
MEMBER_SIZES = [1, 3, 5, 4 * _cpu.CHUNK_BLOCKS - 1, 4 * _cpu.CHUNK_BLOCKS + 6, 2 * 4 * _cpu.CHUNK_BLOCKS + 3]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size", MEMBER_SIZES)
@pytest.mark.parametrize("first", [0, 9, 2**32 - 3])
def test_normal_members_is_bitwise_normal_per_member(size, dtype, first):
    got = rng.normal_members(3, size, seed=2**64 - 5, stream="fc1.weight", first=first, generation=11, dtype=dtype)
    assert got.shape == (3, size) and got.dtype == np.dtype(dtype)
    want = np.stack([rng.normal(size, seed=2**64 - 5, stream="fc1.weight", member=first + k, generation=11, dtype=dtype)
                     for k in range(3)])
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_members_split_over_threads_is_bitwise_the_same(monkeypatch, dtype):
    from egdnp import _threads

    size = 4 * _cpu.CHUNK_BLOCKS + 6
    serial = rng.normal_members(7, size, seed=4, stream=3, first=2, generation=1, dtype=dtype)
    calls = []
    real = _threads.run_split
    monkeypatch.setattr(_threads, "ES_NOISE_SPLIT_FROM", 0)
    monkeypatch.setattr(_threads, "cpu_threads", lambda: 3)
    monkeypatch.setattr(_threads, "run_split", lambda fn, bounds: calls.append(list(bounds)) or real(fn, bounds))
    split = rng.normal_members(7, size, seed=4, stream=3, first=2, generation=1, dtype=dtype)
    assert calls == [[(0, 2), (2, 4), (4, 7)]]  # contiguous runs of members, one per thread
    np.testing.assert_array_equal(serial.view(np.uint8), split.view(np.uint8))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_members_on_every_namespace_matches_the_oracle(xp, dtype):
    """The array-API oracle on each namespace; the kernels (Numba, CuPy) within NORMAL_ATOL of it."""
    got = rng.normal_members(4, 1001, seed=7, stream="b", first=5, generation=2, dtype=dtype, xp=xp)
    assert tuple(got.shape) == (4, 1001)
    oracle = np.stack([to_numpy(rng.normal(1001, seed=7, stream="b", member=5 + k, generation=2, dtype=dtype, xp=xp,
                                           impl="array_api")) for k in range(4)])
    np.testing.assert_allclose(to_numpy(got), oracle, rtol=0, atol=rng.NORMAL_ATOL[dtype])
    via_oracle = rng.normal_members(4, 1001, seed=7, stream="b", first=5, generation=2, dtype=dtype, xp=xp,
                                    impl="array_api")
    np.testing.assert_array_equal(to_numpy(via_oracle), oracle)


@pytest.mark.parametrize("impl", ["numba", "array_api"])
@pytest.mark.parametrize("n_members,size", [(0, 5), (3, 0), (0, 0)])
def test_normal_members_empty(impl, n_members, size):
    got = rng.normal_members(n_members, size, seed=1, impl=impl)
    assert tuple(got.shape) == (n_members, size) and got.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(n_members=-1), ValueError, "n_members=-1"),
        (dict(n_members=2.0), TypeError, "n_members=2.0"),
        (dict(size=True), TypeError, "size=True"),
        (dict(size=2**34 + 1), ValueError, "size="),
        (dict(first=-1), ValueError, "first=-1"),
        (dict(first=2**32 - 2, n_members=3), ValueError, "first=4294967294 with n_members=3"),
        (dict(seed=-1), ValueError, "seed=-1"),
        (dict(dtype="float16"), TypeError, "dtype="),
        (dict(impl="cupy"), ValueError, "impl='cupy'"),
        (dict(impl="fortran"), ValueError, "impl='fortran'"),
    ],
)
def test_normal_members_bad_arguments(kwargs, exc, match):
    args = dict(n_members=2, size=3, seed=1)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        rng.normal_members(args.pop("n_members"), args.pop("size"), **args)
    # the last member id itself is fine
    assert rng.normal_members(2, 3, seed=1, first=2**32 - 2).shape == (2, 3)


# ----------------------------------------------------------------------------
# the public front door: rng.kernels
# ----------------------------------------------------------------------------
def test_kernels_are_the_code_rng_runs():
    from egdnp.rng import kernels

    assert kernels.__all__ == ["CHUNK_BLOCKS", "key", "philox_chunk", "normal_chunk", "weighted_chunk", "store4"]
    assert kernels.CHUNK_BLOCKS == _cpu.CHUNK_BLOCKS
    assert (kernels.key, kernels.philox_chunk, kernels.normal_chunk, kernels.weighted_chunk, kernels.store4) == (
        _cpu._key, _cpu._philox_chunk, _cpu._normal_chunk, _cpu._weighted_chunk, _cpu._store4)
    assert kernels.key(2**64 - 1 - 7) == (np.uint32(2**32 - 8), np.uint32(2**32 - 1))


def test_kernels_inlined_elsewhere_give_normal_and_weighted_sum():
    """A caller's own njit kernel built from rng.kernels reproduces rng.normal / weighted_noise_sum bitwise."""
    from numba import njit

    from egdnp.rng import kernels

    @njit
    def draw(out, acc_out, weights, members, k0, k1, c1, c2, c3):
        nb = 37
        o = np.empty((4, nb), np.uint32)
        z = np.empty((4, nb), out.dtype)
        acc = np.empty((4, nb), np.float64)
        nblocks = (out.shape[0] + 3) // 4
        for b0 in range(0, nblocks, nb):
            m = min(nb, nblocks - b0)
            kernels.normal_chunk(b0, m, k0, k1, c1, c2, c3, o[0], o[1], o[2], o[3], z[0], z[1], z[2], z[3])
            kernels.store4(out, b0, m, z[0], z[1], z[2], z[3])
            kernels.weighted_chunk(b0, m, weights, members, k0, k1, c1, c3, o, z, acc)
            kernels.store4(acc_out, b0, m, acc[0], acc[1], acc[2], acc[3])

    n = 1001
    weights, members = np.array([0.5, -2.0]), np.array([4, 9], dtype=np.uint32)
    for dtype in ("float32", "float64"):
        out, acc_out = np.empty(n, dtype), np.empty(n, dtype)
        k0, k1 = kernels.key(77)
        draw(out, acc_out, weights, members, k0, k1, np.uint32(3), np.uint32(6), np.uint32(2))
        np.testing.assert_array_equal(out, rng.normal(n, seed=77, stream=3, member=6, generation=2, dtype=dtype))
        np.testing.assert_array_equal(acc_out, rng.weighted_noise_sum(weights, n, seed=77, stream=3, members=members,
                                                                      generation=2, dtype=dtype))


def test_no_package_outside_rng_imports_its_private_modules():
    """One front door: other packages use rng's public names and rng.kernels, never rng._cpu/_gpu/_array_api/_spec."""
    import pathlib
    import re

    root = pathlib.Path(rng.__file__).resolve().parents[1]
    private = re.compile(r"(?:from\s+(?:egdnp|\.\.?)\.?rng(?:\.|\s+import\s+)_\w+|egdnp\.rng\._\w+|_rng\._\w+)")
    offenders = []
    for path in root.rglob("*.py"):
        if path.parent.name == "rng" and path.parent.parent == root:
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if private.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert offenders == []


def test_import_egdnp_does_not_load_numba():
    """rng.kernels and the Numba kernels load on first use; ``import egdnp`` (rng, es, optim) must not start Numba."""
    import sys

    code = ("import sys, egdnp, egdnp.rng, egdnp.es, egdnp.optim; "
            "assert 'numba' not in sys.modules, 'import egdnp loaded numba'; "
            "assert 'egdnp.rng.kernels' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
