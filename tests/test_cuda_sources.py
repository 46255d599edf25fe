"""egdnp's CUDA sources on every CPU run (issue 16, part A).

1. Every CUDA source egdnp hands to CuPy compiles with nvcc for sm_80 and
   sm_90, with the options NVRTC receives from CuPy (egdnp's ``--fmad=false
   -std=c++14``, CuPy's ``-ftz=true``, ``-arch``) and the templates of
   ``name_expressions`` instantiated; any error or warning fails.
2. The same source text, compiled as host code (g++ with a shim header, no FMA
   contraction, flush-to-zero on), runs through ``egdnp.rng._gpu``'s own
   Python code (a stand-in CuPy launches the host-compiled kernels) over more
   than 10**6 addresses: words bitwise equal to the Numba kernels and the
   array-API oracle, normals within ``NORMAL_ATOL`` of the float64 reference.

What this proves and what only a GPU can prove: docs/gpu.md.  Skipped, with
the reason, only where nvcc or g++ is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import _cuda_host as ch
from egdnp import _backend, rng
from egdnp.rng import _array_api, _cpu, _gpu
from egdnp.rng._spec import NORMAL_ATOL, philox4x32_10

EGDNP = Path(__file__).resolve().parents[1] / "egdnp"
ARCHS = ("80", "90")
N = 2**20 + 3  # values per address: > 10**6, and a partial last Philox block

needs_nvcc = pytest.mark.skipif(ch.which("nvcc") is None, reason="nvcc (CUDA toolkit) is not on the PATH")
needs_gxx = pytest.mark.skipif(ch.which("g++") is None, reason="g++ is not on the PATH (host build of the CUDA source)")


# ----------------------------------------------------------------------------
# the sources and their name expressions
# ----------------------------------------------------------------------------
def test_every_cuda_source_is_registered():
    """A RawModule/RawKernel/ElementwiseKernel/ReductionKernel anywhere in egdnp must be in CUDA_SOURCES."""
    found = {}
    for path in EGDNP.rglob("*.py"):
        text = path.read_text()
        n = len(re.findall(r"\b(?:RawModule|RawKernel|ElementwiseKernel|ReductionKernel)\s*\(", text))
        n += len(re.findall(r"\bcupy\.fuse\b", text))
        if n:
            found[str(path.relative_to(EGDNP))] = n
    assert found == {"rng/_gpu.py": len(_gpu.CUDA_SOURCES)}, (
        f"CUDA kernels are built in {found}; register every source in egdnp.rng._gpu.CUDA_SOURCES "
        "so that tests/test_cuda_sources.py compiles and runs it")


@pytest.mark.parametrize("src", _gpu.CUDA_SOURCES, ids=lambda s: s.name)
def test_name_expressions_name_every_kernel(src):
    templates = ch.kernel_templates(src.code)
    used = {ch.resolve(src.code, e)[0] for e in src.name_expressions}
    assert used == set(templates), f"kernels never fetched: {set(templates) - used}"
    assert len(set(src.name_expressions)) == len(src.name_expressions)
    # the module CuPy builds is given exactly the registered source, options and names
    assert src.options == ("--fmad=false", "-std=c++14")


def test_instantiation_lines_follow_the_signatures():
    src = _gpu.CUDA_SOURCES[0]
    lines = ch.instantiation_lines(src.code, src.name_expressions).splitlines()
    assert len(lines) == 6  # egdnp_bits is extern "C", not a template
    assert "template __global__ void egdnp_normal<float>(float* out, long long n, u32 k0" in lines[0]
    assert "const double* w" in lines[2] and "double* out" in lines[3]
    assert "egdnp_normal_members<float>(float* out, long long n, long long rows, u32 k0" in lines[4]
    assert "egdnp_normal_members<double>(double* out" in lines[5]
    with pytest.raises(ValueError, match="no __global__"):
        ch.resolve(src.code, "egdnp_missing<float>")


# ----------------------------------------------------------------------------
# 1. device compile with nvcc
# ----------------------------------------------------------------------------
@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", _gpu.CUDA_SOURCES, ids=lambda s: s.name)
def test_cuda_source_compiles_for(src, arch, tmp_path):
    cubin, text, log = ch.nvcc_compile(src, arch, "cubin", tmp_path)
    assert text.startswith(src.code)  # the very text CuPy gets, then the instantiations
    assert cubin.stat().st_size > 0
    # ptxas -v: one report per kernel, no register spills (a spill would cost bandwidth)
    compiled = re.findall(r"Compiling entry function '(\w+)' for 'sm_(\d+)'", log)
    assert len(compiled) == len(src.name_expressions) and {a for _, a in compiled} == {arch}, log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert spills and all(s == ("0", "0") for s in spills), log


@needs_nvcc
@pytest.mark.parametrize("src", _gpu.CUDA_SOURCES, ids=lambda s: s.name)
def test_ptx_has_one_entry_per_name_expression(src, tmp_path):
    ptx, _, _ = ch.nvcc_compile(src, "90", "ptx", tmp_path)
    entries = re.findall(r"\.entry\s+(\w+)\s*\(", ptx.read_text())
    assert len(entries) == len(src.name_expressions), entries
    for expr in src.name_expressions:
        name, targ, _ = ch.resolve(src.code, expr)
        if targ is None:
            assert name in entries  # extern "C": unmangled
        else:
            mangled = f"{len(name)}{name}I{dict(float='f', double='d')[targ]}E"
            assert any(mangled in e for e in entries), (expr, entries)


def test_nvcc_options_are_cupys():
    src = _gpu.CUDA_SOURCES[0]
    assert ch.cupy_options(src, "90") == ("--fmad=false", "-std=c++14", "-ftz=true", "-arch=sm_90")


# ----------------------------------------------------------------------------
# 2. the same source as host code, driven by egdnp.rng._gpu
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def host(tmp_path_factory):
    if ch.which("g++") is None:
        pytest.skip("g++ is not on the PATH (host build of the CUDA source)")
    return ch.build_host_library(_gpu.CUDA_SOURCES[0], tmp_path_factory.mktemp("cuda_host"))


@pytest.fixture
def fake_cupy(host, monkeypatch):
    """egdnp.rng._gpu with a CuPy stand-in whose RawModule runs the host-compiled kernels."""
    fake = ch.FakeCupy(host)
    monkeypatch.setattr(_backend, "import_cupy", lambda: fake)
    _gpu._module.cache_clear()
    yield fake
    _gpu._module.cache_clear()


ADDRESSES = [  # (seed, stream, member, generation)
    (42, rng.stream_id("fc1.weight"), 17, 3),
    (2**64 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1),
    (0x0123456789ABCDEF, 0, 0, 0),
]


def test_host_build_is_the_registered_text(host):
    assert host.kernel_text == _gpu.KERNEL_SOURCE


def test_philox_known_answers_and_random_counters(host):
    kat = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for counter, key, want in kat:
        assert tuple(host.philox([counter], key)[0].tolist()) == want
    # 2**18 random full counters (all four words vary): the Python reference on a sample, Numba on all
    r = np.random.default_rng(16)
    counters = r.integers(0, 2**32, size=(2**18, 4), dtype=np.uint64).astype(np.uint32)
    key = (0x9E3779B9, 0x7F4A7C15)
    got = host.philox(counters, key)
    for i in range(0, len(counters), 4099):
        assert tuple(got[i].tolist()) == philox4x32_10(tuple(counters[i].tolist()), key)
    seed = key[0] | (key[1] << 32)
    for c1 in np.unique(counters[:64, 1]):  # Numba's kernel shares c1..c3 per call: group by them
        rows = counters[:, 1] == c1
        sub = counters[rows]
        for row, c in zip(np.nonzero(rows)[0], sub):
            np.testing.assert_array_equal(got[row], _cpu.philox_blocks([c[0]], c[1], c[2], c[3], seed)[0])


@pytest.mark.parametrize("address", ADDRESSES)
def test_words_bitwise_equal_to_numba_and_oracle(fake_cupy, address):
    seed, stream, member, generation = address
    got = _gpu.random_bits(N, seed, stream, member, generation)
    assert got.dtype == np.uint32 and got.shape == (N,)
    np.testing.assert_array_equal(got, _cpu.random_bits(N, seed, stream, member, generation))
    oracle = _backend.to_host(rng.random_bits(N, seed=seed, stream=stream, member=member, generation=generation,
                                              impl="array_api"))
    np.testing.assert_array_equal(got, oracle)
    # launched with _gpu's own launch shape
    assert fake_cupy.launches == [("egdnp_bits", *_gpu._grid(N))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("address", ADDRESSES[:2])
def test_normals_within_the_documented_tolerance(fake_cupy, address, dtype):
    seed, stream, member, generation = address
    got = _gpu.normal(N, seed, stream, member, generation, dtype)
    assert got.dtype == np.dtype(dtype) and got.shape == (N,)
    ref64 = _backend.to_host(rng.normal(N, seed=seed, stream=stream, member=member, generation=generation,
                                        dtype="float64", impl="array_api"))
    numba = _cpu.normal(N, seed, stream, member, generation, dtype)
    atol = NORMAL_ATOL[dtype]
    err_ref = float(np.max(np.abs(got.astype(np.float64) - ref64)))
    err_numba = float(np.max(np.abs(got.astype(np.float64) - numba.astype(np.float64))))
    assert err_ref <= atol, f"{dtype}: max |host CUDA - float64 reference| = {err_ref:.3g} > {atol}"
    assert err_numba <= 2 * atol, f"{dtype}: max |host CUDA - Numba| = {err_numba:.3g}"
    assert np.all(np.isfinite(got)) and float(np.max(np.abs(got))) < 5.78


def test_grid_stride_loop_and_tails(host, fake_cupy):
    """A small grid (every thread loops) gives bitwise what _gpu's launch shape gives; all tails."""
    seed, stream, member, generation = ADDRESSES[0]
    k0, k1 = _gpu._key(seed)
    n = 4 * 3 * 32 * 5 + 3
    for dtype, expr in (("float32", "egdnp_normal<float>"), ("float64", "egdnp_normal<double>")):
        want = _gpu.normal(n, seed, stream, member, generation, dtype)
        out = np.full(n + 5, 7.0, dtype=dtype)  # guard cells past n must stay untouched
        host.launch(expr, 3, 32, (out[:n], np.int64(n), k0, k1, np.uint32(stream), np.uint32(member),
                                  np.uint32(generation)))
        np.testing.assert_array_equal(out[:n], want)
        assert np.all(out[n:] == 7.0)
    bits = np.zeros(n + 5, dtype=np.uint32)
    host.launch("egdnp_bits", 3, 32, (bits[:n], np.int64(n), k0, k1, np.uint32(stream), np.uint32(member),
                                      np.uint32(generation)))
    np.testing.assert_array_equal(bits[:n], _gpu.random_bits(n, seed, stream, member, generation))
    assert np.all(bits[n:] == 0)
    w, m = np.array([0.5, -1.25, 2.0]), np.array([3, 9, 4], dtype=np.uint32)
    for dtype, expr in (("float32", "egdnp_weighted_sum<float>"), ("float64", "egdnp_weighted_sum<double>")):
        want = _gpu.weighted_noise_sum(w, m, n, seed, stream, generation, dtype)
        out = np.full(n + 5, 7.0, dtype=dtype)
        host.launch(expr, 3, 32, (out[:n], np.int64(n), w, m, np.int32(3), k0, k1, np.uint32(stream),
                                  np.uint32(generation)))
        np.testing.assert_array_equal(out[:n], want)
        assert np.all(out[n:] == 7.0)
    for n in (1, 2, 3, 4, 5, 7, 9):
        np.testing.assert_array_equal(_gpu.random_bits(n, seed, stream, member, generation),
                                      _cpu.random_bits(n, seed, stream, member, generation))
        for dtype in ("float32", "float64"):
            np.testing.assert_allclose(_gpu.normal(n, seed, stream, member, generation, dtype),
                                       _cpu.normal(n, seed, stream, member, generation, dtype),
                                       rtol=0, atol=2 * NORMAL_ATOL[dtype])
    fake_cupy.launches.clear()
    assert _gpu.random_bits(0, seed, stream, member, generation).shape == (0,)
    assert _gpu.normal(0, seed, stream, member, generation, "float32").shape == (0,)
    assert fake_cupy.launches == []  # an empty array launches nothing


def test_launch_shape():
    assert _gpu._grid(1) == (1, 256)
    assert _gpu._grid(4 * 256) == (1, 256)
    assert _gpu._grid(4 * 256 + 1) == (2, 256)
    assert _gpu._grid(N) == ((N + 3) // 4 // 256 + 1, 256)
    assert _gpu._grid(2**34) == (65535, 256)  # capped: the kernels loop grid-stride


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_members_is_one_2d_launch_of_the_normal_kernel(fake_cupy, dtype):
    """rng.normal_members on CuPy: ONE launch whose row p is bitwise the 1-D kernel's normal(member=first + p)."""
    seed, stream, _, generation = ADDRESSES[1]
    n_members, size, first = 5, 4 * 256 * 3 + 7, 2**32 - 5  # several thread blocks per row, a partial last block
    got = _gpu.normal_members(n_members, size, seed, stream, first, generation, dtype)
    assert got.shape == (n_members, size) and got.dtype == np.dtype(dtype)
    name = "egdnp_normal_members<float>" if dtype == "float32" else "egdnp_normal_members<double>"
    assert fake_cupy.launches == [(name, (_gpu._grid(size)[0], n_members), 256)]
    for p in range(n_members):
        np.testing.assert_array_equal(got[p].view(np.uint8),
                                      _gpu.normal(size, seed, stream, first + p, generation, dtype).view(np.uint8))
    numba = _cpu.normal_members(n_members, size, seed, stream, first, generation, dtype)
    np.testing.assert_allclose(got, numba, rtol=0, atol=2 * NORMAL_ATOL[dtype])
    fake_cupy.launches.clear()
    assert _gpu.normal_members(0, size, seed, stream, first, generation, dtype).shape == (0, size)
    assert _gpu.normal_members(3, 0, seed, stream, first, generation, dtype).shape == (3, 0)
    assert fake_cupy.launches == []  # an empty array launches nothing


def test_cupy_namespace_draws_a_population_in_one_launch(fake_cupy, monkeypatch):
    """rng.normal_members and EGGROLL's pair_normals dispatch a CuPy namespace to the one 2-D launch
    (it was one launch per pair); the stand-in module is the namespace (array-api-compat knows it by name)."""
    from egdnp.es.perturbations import pair_normals

    real = _backend.get_namespace
    monkeypatch.setattr(_backend, "get_namespace", lambda b="numpy": fake_cupy if b is fake_cupy else real(b))
    seed, stream, _, generation = ADDRESSES[0]
    got = rng.normal_members(6, 1001, seed=seed, stream=stream, first=2, generation=generation, xp=fake_cupy)
    pairs = pair_normals(6, 1001, seed=seed, stream=stream, generation=generation, dtype="float32", xp=fake_cupy,
                         first=2)
    expr = "egdnp_normal_members<float>"
    assert fake_cupy.launches == [(expr, (_gpu._grid(1001)[0], 6), 256)] * 2
    np.testing.assert_array_equal(got, pairs)
    np.testing.assert_array_equal(got[3], _gpu.normal(1001, seed, stream, 5, generation, "float32"))
    with pytest.raises(ValueError, match="impl='numba'"):
        rng.normal_members(2, 3, seed=1, xp=fake_cupy, impl="numba")


def test_normal_members_grid_strides_over_rows_and_blocks(host, fake_cupy):
    """A grid smaller than the work (rows > grid y, blocks > grid x) loops and gives the same rows; guards untouched."""
    seed, stream, _, generation = ADDRESSES[0]
    k0, k1 = _gpu._key(seed)
    rows, n = 7, 4 * 2 * 32 * 3 + 2
    assert _gpu._grid2(n, rows) == ((_gpu._grid(n)[0], rows), 256)
    assert _gpu._grid2(n, 10**6) == ((_gpu._grid(n)[0], 65535), 256)  # capped: the kernel loops over rows
    for dtype, expr in (("float32", "egdnp_normal_members<float>"), ("float64", "egdnp_normal_members<double>")):
        want = np.stack([_gpu.normal(n, seed, stream, 3 + p, generation, dtype) for p in range(rows)])
        out = np.full(rows * n + 5, 7.0, dtype=dtype)
        host.launch(expr, (2, 3), 32, (out[: rows * n], np.int64(n), np.int64(rows), k0, k1, np.uint32(stream),
                                       np.uint32(3), np.uint32(generation)))
        np.testing.assert_array_equal(out[: rows * n].reshape(rows, n), want)
        assert np.all(out[rows * n :] == 7.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weighted_sum_matches_numba_and_oracle(fake_cupy, dtype):
    seed, stream, _, generation = ADDRESSES[0]
    r = np.random.default_rng(3)
    pop, n = 8, 2**17 + 1  # 8 members x 131073 values: > 10**6 regenerated normals
    weights = r.standard_normal(pop)
    members = r.permutation(1000)[:pop].astype(np.uint32)
    got = _gpu.weighted_noise_sum(weights, members, n, seed, stream, generation, dtype)
    assert got.dtype == np.dtype(dtype)
    numba = _cpu.weighted_noise_sum(weights, members, n, seed, stream, generation, dtype)
    oracle = _backend.to_host(rng.weighted_noise_sum(weights, n, seed=seed, stream=stream, members=members.tolist(),
                                                     generation=generation, dtype="float64", impl="array_api"))
    # each normal is within NORMAL_ATOL of the reference; the sum within sum|w| times that, plus the output rounding
    atol = float(np.sum(np.abs(weights))) * NORMAL_ATOL[dtype] + np.finfo(dtype).eps * float(np.max(np.abs(oracle)))
    assert float(np.max(np.abs(got - oracle))) <= atol
    assert float(np.max(np.abs(got.astype(np.float64) - numba))) <= 2 * atol
    # the fused sum is the sum of the kernel's own normals, accumulated in double
    z = np.stack([_gpu.normal(n, seed, stream, int(m), generation, dtype) for m in members]).astype(np.float64)
    np.testing.assert_allclose(got, (weights @ z).astype(dtype), rtol=0,
                               atol=pop * np.finfo(np.float64).eps * 8 + np.finfo(dtype).eps * float(np.max(np.abs(oracle))))


def test_kernel_arguments_are_checked(host):
    """The stand-in refuses what CuPy would misread (a Python int for a u32, a wrong pointer dtype)."""
    out = np.empty(8, dtype=np.uint32)
    args = [out, np.int64(8), np.uint32(1), np.uint32(0), np.uint32(0), np.uint32(0), np.uint32(0)]
    host.check_args("egdnp_bits", args)
    with pytest.raises(AssertionError, match="parameter k0"):
        host.check_args("egdnp_bits", args[:2] + [1] + args[3:])
    with pytest.raises(AssertionError, match="parameter out"):
        host.check_args("egdnp_bits", [out.astype(np.int32)] + args[1:])
    with pytest.raises(AssertionError, match="parameter n"):
        host.check_args("egdnp_bits", [out, np.int32(8)] + args[2:])


def test_centered_ranks_gpu_code_matches_oracle(monkeypatch):
    """_gpu.centered_ranks is CuPy array code; run it on NumPy standing in for CuPy (stable argsort as CuPy's)."""
    import types

    fake = types.ModuleType("cupy")
    for name in ("asarray", "zeros_like", "concatenate", "ones", "cumsum", "nonzero", "empty", "float64"):
        setattr(fake, name, getattr(np, name))

    def argsort(a, axis=-1, kind=None):
        assert kind in (None, "stable"), "cupy.argsort accepts only kind=None/'stable'"
        return np.argsort(a, axis=axis, kind="stable")

    fake.argsort = argsort
    monkeypatch.setattr(_backend, "import_cupy", lambda: fake)
    xs = _backend.get_namespace("numpy")
    r = np.random.default_rng(5)
    for f in ([3.0], [1.0, 1.0], [2.0, 1.0, 2.0, 0.5, 2.0], r.integers(0, 5, 101).astype(np.float32),
              r.standard_normal(64)):
        f = np.asarray(f)
        got = _gpu.centered_ranks(f)
        want = _backend.to_host(_array_api.centered_ranks(xs, xs.asarray(f)))
        assert got.dtype == f.dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)
