"""The NumPy fast paths of the EGD cycle (egdnp.optim._egd_cpu) against their array-API oracles, bit for bit.

Each kernel replaces a sequence of array-API operations in the cycle; the
reference bundles pin the cycle's numbers, so every kernel must round exactly
like the operations it replaces, in float32 and float64, serial and parallel.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from egdnp import _backend, _threads, rng
from egdnp.optim import _egd_cpu
from egdnp.optim._egd_mutation import mutant, mutant_plans, param_scale, seed_recombination, weighted_unit_noise
from egdnp.optim.egd import egd, set_parallel_from

NP = _backend.get_namespace("numpy")
SHAPES = [(1,), (7,), (3, 5), (33, 257), (16385,), (2, 3, 4)]


@pytest.fixture(params=["serial", "parallel"])
def threads(request, monkeypatch):
    # the threshold is read at call time from the one threading policy
    monkeypatch.setattr(_threads, "EGD_SPLIT_FROM", 1 if request.param == "parallel" else 1 << 40)
    return request.param


def test_set_parallel_from_is_the_threading_policys_threshold(monkeypatch):
    monkeypatch.setattr(_threads, "EGD_SPLIT_FROM", 1 << 20)
    assert set_parallel_from(8) == 1 << 20 and _threads.EGD_SPLIT_FROM == 8
    base = np.zeros(8, dtype=np.float32)
    assert mutant_plans(NP, {"w": base}, {"w": 0.1}, seed=0, cycle=0, mutation="full", rank=1)["w"].kernel \
        is _egd_cpu._mutant_parallel
    assert set_parallel_from(np.int64(9)) == 8 and type(_threads.EGD_SPLIT_FROM) is int
    assert mutant_plans(NP, {"w": base}, {"w": 0.1}, seed=0, cycle=0, mutation="full", rank=1)["w"].kernel \
        is _egd_cpu._mutant_serial
    for bad in (0, -1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="n_elements"):
            set_parallel_from(bad)
    assert _threads.EGD_SPLIT_FROM == 9


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_mutant_plan_equals_oracle(dtype, shape, threads):
    base = rng.normal(shape, seed=2, stream="base", dtype=dtype)
    oracle = mutant(base, 0.021, seed=5, name="fc.weight", member=3, cycle=4, xp=NP, impl="array_api")
    plan = mutant_plans(NP, {"fc.weight": base}, {"fc.weight": 0.021}, seed=5, cycle=4, mutation="full",
                        rank=1)["fc.weight"]
    assert plan.kernel is (_egd_cpu._mutant_parallel if threads == "parallel" else _egd_cpu._mutant_serial)
    out = np.empty(shape, dtype=dtype)
    plan.write(out, 3)
    np.testing.assert_array_equal(out, oracle)
    np.testing.assert_array_equal(mutant(base, 0.021, seed=5, name="fc.weight", member=3, cycle=4, xp=NP), oracle)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,rank", [((6, 5), 1), ((40, 17), 3), ((256, 96), 4), ((1, 9), 2)])
def test_lowrank_fast_path_equals_oracle(dtype, shape, rank):
    base = rng.normal(shape, seed=2, stream="base", dtype=dtype)
    kw = dict(seed=11, name="fc1.weight", member=6, cycle=2, xp=NP, mutation="lowrank", rank=rank)
    oracle = mutant(base, 0.3, impl="array_api", **kw)
    np.testing.assert_array_equal(mutant(base, 0.3, **kw), oracle)
    out = np.empty(shape, dtype=dtype)
    assert mutant(base, 0.3, out=out, **kw) is out
    np.testing.assert_array_equal(out, oracle)
    plan = _egd_cpu.LowRankPlan(base, 0.3, rank, 11, rng.stream_id("fc1.weight"), 2)
    out2 = np.empty(shape, dtype=dtype)
    plan.write(out2, 6)
    np.testing.assert_array_equal(out2, oracle)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_seed_recombination_equals_weighted_noise_sum_plus_base(dtype, shape, threads):
    base = rng.normal(shape, seed=3, stream="base", dtype=dtype)
    weights, members, scale = [0.5, 0.3125, 0.1875], [2, 7, 4], 0.013
    ref = weighted_unit_noise(weights, members, shape, seed=9, name="p", cycle=5, dtype=dtype, xp=NP, factor=scale)
    ref += base
    np.testing.assert_array_equal(seed_recombination(base, weights, members, scale, seed=9, name="p", cycle=5, xp=NP),
                                  ref)
    out = np.empty(shape, dtype=dtype)
    _egd_cpu.seed_recombine_into(out, base, [w * scale for w in weights], members, 9, rng.stream_id("p"), 5,
                                 parallel=threads == "parallel")
    np.testing.assert_array_equal(out, ref)
    _egd_cpu.seed_recombine_into(out, base, [], [], 9, rng.stream_id("p"), 5, parallel=threads == "parallel")
    np.testing.assert_array_equal(out, base)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_mix_equals_the_oracle_recombination(dtype, k):
    parts = [rng.normal((37, 11), seed=i, stream="part", dtype=dtype) for i in range(k)]
    # the array-API recombination of the cycle: running sum then one division, or weighted sum
    mean = parts[0].copy()
    for x in parts[1:]:
        mean += x
    mean /= float(k)
    out = np.empty_like(parts[0])
    np.testing.assert_array_equal(_egd_cpu.mix_into(out, parts, [1.0 / k] * k, True), mean)
    weights = [float(w) for w in np.exp(-np.arange(k) / 0.7) / np.exp(-np.arange(k) / 0.7).sum()]  # Python floats, as the cycle
    weighted = parts[0] * weights[0]
    for w, x in zip(weights[1:], parts[1:]):
        weighted += x * w
    np.testing.assert_array_equal(_egd_cpu.mix_into(out, parts, weights, False), weighted)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_param_scale_with_scratch_equals_without(dtype):
    for shape in SHAPES:
        p = rng.normal(shape, seed=1, dtype=dtype) * 3.0
        scratch = np.empty(shape, dtype=dtype)
        assert param_scale(NP, p, 0.02, scratch=scratch) == param_scale(NP, p, 0.02)


def _oracle_cycle(params, closure, *, sigma, seed, pop, k, recombine, storage, mutation, rank, temperature=1.0):
    """One cycle rebuilt from the array-API building blocks (no fast path): the recombined params."""
    scales = {n: param_scale(NP, p, sigma) for n, p in params.items()}
    members = [dict(params)]
    for m in range(1, pop):
        members.append({n: mutant(p, scales[n], seed=seed, name=n, member=m, cycle=0, xp=NP, mutation=mutation,
                                  rank=rank, impl="array_api") for n, p in params.items()})
    losses = [float(closure(c)) for c in members]
    elites = [(losses[0], 0)]
    for m in range(1, pop):
        if len(elites) < k:
            elites.append((losses[m], m))
        else:
            worst = max(range(k), key=lambda i: elites[i][0])
            if losses[m] < elites[worst][0]:
                elites[worst] = (losses[m], m)
    elites.sort()
    if recombine == "mean":
        weights = [1.0 / len(elites)] * len(elites)
    else:
        lo = min(e[0] for e in elites)
        ex = [math.exp(-(e[0] - lo) / temperature) for e in elites]
        weights = [e / sum(ex) for e in ex]
    out = {}
    for n, p in params.items():
        if storage == "seed":
            pairs = [(w, m) for w, (_, m) in zip(weights, elites) if m != 0]
            if not pairs:
                out[n] = p
                continue
            g = weighted_unit_noise([w for w, _ in pairs], [m for _, m in pairs], p.shape, seed=seed, name=n, cycle=0,
                                    dtype=p.dtype.name, xp=NP, mutation=mutation, rank=rank, factor=scales[n])
            g += p
            out[n] = g
        elif recombine == "mean":
            mixed = members[elites[0][1]][n].copy()
            for _, m in elites[1:]:
                mixed += members[m][n]
            mixed /= float(len(elites))
            out[n] = mixed
        else:
            mixed = members[elites[0][1]][n] * weights[0]
            for w, (_, m) in zip(weights[1:], elites[1:]):
                mixed += members[m][n] * w
            out[n] = mixed
    return out, [m for _, m in elites]


@pytest.mark.parametrize("storage,offload", [("array", True), ("array", False), ("seed", True)])
@pytest.mark.parametrize("mutation", ["full", "lowrank"])
@pytest.mark.parametrize("recombine", ["mean", "softmax"])
def test_numpy_cycle_equals_array_api_building_blocks_bitwise(storage, offload, mutation, recombine):
    params = {"fc1.weight": rng.normal((24, 30), seed=1, dtype="float32") * 0.2,
              "fc1.bias": rng.normal((24,), seed=2, dtype="float32") * 0.1,
              "fc2.weight": rng.normal((3, 24), seed=3, dtype="float32") * 0.2}
    x = rng.normal((16, 30), seed=4, dtype="float32")

    def closure(p):
        h = np.tanh(x @ p["fc1.weight"].T + p["fc1.bias"])
        return np.mean((h @ p["fc2.weight"].T - 0.5) ** 2)

    opt = egd(lr=0.1, evo_interval=1, pop_size=7, elite_frac=0.5, sigma=0.3, seed=13, recombine=recombine,
              temperature=0.01, population_storage=storage, offload_population_to_cpu=offload, mutation=mutation,
              rank=2)
    state = opt.init(params)
    got, _, report = opt.evolve(state, params, closure)
    expected, elites = _oracle_cycle(params, closure, sigma=0.3, seed=13, pop=7, k=4, recombine=recombine,
                                     storage=storage, mutation=mutation, rank=2, temperature=0.01)
    assert list(report.elite_indices) == elites
    for n in params:
        np.testing.assert_array_equal(got[n], expected[n], err_msg=n)
        assert got[n] is not params[n] or report.elite_indices == (0,)
    # the cycle never writes into the caller's arrays, and a second cycle reuses the buffers
    allocations = opt.workspace.host_allocations
    again, _, _ = opt.evolve(state, params, closure)
    assert opt.workspace.host_allocations == allocations
    for n in params:
        np.testing.assert_array_equal(again[n], got[n])
