"""Addressed factors, antithetic layouts, noise_reuse, external factors, input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import to_numpy
from egdnp import es, rng
from egdnp.es.perturbations import pair_normals


def test_factors_are_the_addressed_rng_draw_split_b_first(xp):
    params = {"fc1.weight": xp.zeros((5, 7), dtype=xp.float64), "fc1.bias": xp.zeros((5,), dtype=xp.float64)}
    sigma, r = 0.3, 2
    perts = es.generate(params, pop_size=6, rank=r, sigma=sigma, seed=11, generation=4, dtype="float64")
    a, b = to_numpy(perts.noise["fc1.weight"].A), to_numpy(perts.noise["fc1.weight"].B)
    eps = to_numpy(perts.noise["fc1.bias"].eps)
    assert a.shape == (3, 5, r) and b.shape == (3, 7, r) and eps.shape == (3, 5)
    for k in range(3):
        flat = rng.normal(((5 + 7) * r,), seed=11, stream="fc1.weight", member=k, generation=4, dtype="float64")
        np.testing.assert_allclose(b[k], flat[: 7 * r].reshape(7, r), atol=1e-13)
        np.testing.assert_allclose(a[k], sigma / math.sqrt(r) * flat[7 * r :].reshape(5, r), atol=1e-13)
        e = rng.normal((5,), seed=11, stream="fc1.bias", member=k, generation=4, dtype="float64")
        np.testing.assert_allclose(eps[k], sigma * e, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batched_pair_normals_bitwise_equal_to_rng(dtype):
    import egdnp._backend as backend

    fast = pair_normals(4, 4099, seed=3, stream="conv1.weight", generation=7, dtype=dtype, xp=backend.get_namespace("numpy"))
    ref = np.stack([rng.normal((4099,), seed=3, stream="conv1.weight", member=k, generation=7, dtype=dtype) for k in range(4)])
    np.testing.assert_array_equal(fast, ref)


def test_conv_weight_is_flattened_row_major():
    params = {"conv1.weight": np.zeros((4, 3, 2, 2), np.float32)}
    perts = es.generate(params, pop_size=2, rank=1, seed=0)
    item = perts.noise["conv1.weight"]
    assert item.A.shape == (1, 4, 1) and item.B.shape == (1, 12, 1) and item.shape == (4, 3, 2, 2)


def test_layouts():
    pair, sign = es.perturbations.member_layout(6, antithetic=True, layout="halves")
    assert pair.tolist() == [0, 1, 2, 0, 1, 2] and sign.tolist() == [1, 1, 1, -1, -1, -1]
    pair, sign = es.perturbations.member_layout(6, antithetic=True, layout="interleaved")
    assert pair.tolist() == [0, 0, 1, 1, 2, 2] and sign.tolist() == [1, -1, 1, -1, 1, -1]
    pair, sign = es.perturbations.member_layout(3, antithetic=False, layout="interleaved")
    assert pair.tolist() == [0, 1, 2] and sign.tolist() == [1, 1, 1]
    # arrays, not per-member Python objects: a large population costs 9 bytes a member
    pair, sign = es.perturbations.member_layout(2**20, antithetic=True, layout="interleaved")
    assert pair.dtype == np.int64 and sign.dtype == np.int8 and pair.nbytes + sign.nbytes == 9 * 2**20
    assert not pair.flags.writeable and not sign.flags.writeable
    for conv in ("egdnp", "hyperscalees-torch", "hyperscalees-jax"):
        for antithetic in (True, False):
            perts = es.generate({"w.weight": np.zeros((3, 4))}, pop_size=8, seed=0, convention=conv, antithetic=antithetic)
            assert perts.n_pairs == len(set(perts.pair.tolist())) == (4 if antithetic else 8)


def test_antithetic_partners_share_factors_with_opposite_sign():
    params = {"w.weight": np.zeros((3, 4))}
    for conv in ("egdnp", "hyperscalees-torch", "hyperscalees-jax"):
        perts = es.generate(params, pop_size=8, rank=1, seed=1, convention=conv, dtype="float64")
        dense = [es.dense_perturbed_params(params, perts, i)["w.weight"] for i in range(8)]
        for i in range(8):
            partner = [j for j in range(8) if j != i and perts.pair[j] == perts.pair[i]]
            assert len(partner) == 1
            np.testing.assert_allclose(dense[i], -dense[partner[0]], atol=1e-15)


def test_noise_reuse_mapping():
    ng = es.noise_generation
    assert [ng(g, None) for g in range(4)] == [0, 1, 2, 3]
    assert [ng(g, 0) for g in range(4)] == [0, 0, 0, 0]  # the trap: the same noise forever
    assert [ng(g, 1) for g in range(4)] == [0, 1, 2, 3]
    assert [ng(g, 2) for g in range(5)] == [0, 0, 1, 1, 2]
    params = {"w.weight": np.zeros((3, 4), np.float32)}
    p0 = es.generate(params, pop_size=2, seed=0, generation=0, noise_reuse=0)
    p5 = es.generate(params, pop_size=2, seed=0, generation=5, noise_reuse=0)
    np.testing.assert_array_equal(p0.noise["w.weight"].A, p5.noise["w.weight"].A)
    p1 = es.generate(params, pop_size=2, seed=0, generation=1)
    assert not np.array_equal(p0.noise["w.weight"].A, p1.noise["w.weight"].A)
    with pytest.raises(ValueError, match="noise_reuse"):
        ng(3, -1)


def test_plans_per_convention():
    shapes = {"fc1.weight": (4, 3), "fc1.bias": (4,), "conv.weight": (2, 1, 3, 3), "bn.weight": (4,)}
    assert es.plan_parameters(shapes, convention="hyperscalees-torch") == {
        "fc1.weight": "lowrank", "fc1.bias": "frozen", "conv.weight": "lowrank", "bn.weight": "frozen"}
    assert es.plan_parameters(shapes, convention="hyperscalees-jax") == {
        "fc1.weight": "lowrank", "fc1.bias": "full", "conv.weight": "lowrank", "bn.weight": "full"}
    assert es.plan_parameters(shapes, convention="egdnp", vectors="frozen")["fc1.bias"] == "frozen"


def test_external_factors_are_scaled_like_own_noise(xp):
    params = {"fc.weight": xp.zeros((3, 5), dtype=xp.float64), "fc.bias": xp.zeros((3,), dtype=xp.float64)}
    r, sigma = 2, 0.7
    a_raw = xp.asarray(np.random.default_rng(0).standard_normal((2, 3, r)))
    b_raw = xp.asarray(np.random.default_rng(1).standard_normal((2, 5, r)))
    e_raw = xp.asarray(np.random.default_rng(2).standard_normal((2, 3)))
    perts = es.generate(params, pop_size=4, rank=r, sigma=sigma, seed=None, dtype="float64",
                        factors={"fc.weight": (a_raw, b_raw), "fc.bias": e_raw})
    np.testing.assert_allclose(to_numpy(perts.noise["fc.weight"].A), sigma / math.sqrt(r) * to_numpy(a_raw), atol=1e-15)
    np.testing.assert_array_equal(to_numpy(perts.noise["fc.weight"].B), to_numpy(b_raw))
    np.testing.assert_allclose(to_numpy(perts.noise["fc.bias"].eps), sigma * to_numpy(e_raw), atol=1e-15)
    assert perts.seed is None and perts.external == {"fc.weight", "fc.bias"}


def test_input_errors():
    params = {"w.weight": np.zeros((3, 4), np.float32), "w.bias": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="odd"):
        es.generate(params, pop_size=5, seed=0)
    es.generate(params, pop_size=5, seed=0, antithetic=False)  # fine without pairs
    with pytest.raises(ValueError, match="rank=0"):
        es.generate(params, pop_size=4, rank=0, seed=0)
    with pytest.raises(ValueError, match=r"min\(m, n\)=3"):
        es.generate(params, pop_size=4, rank=4, seed=0)
    with pytest.raises(TypeError, match="rank"):
        es.generate(params, pop_size=4, rank=1.5, seed=0)
    with pytest.raises(ValueError, match="sigma"):
        es.generate(params, pop_size=4, sigma=0.0, seed=0)
    with pytest.raises(ValueError, match="expected A"):
        es.generate(params, pop_size=4, rank=1, seed=0, factors={"w.weight": (np.zeros((2, 4, 1)), np.zeros((2, 3, 1)))})
    with pytest.raises(ValueError, match="expected"):
        es.generate(params, pop_size=4, rank=1, seed=0, factors={"w.bias": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="not perturbed"):
        es.generate(params, pop_size=4, rank=1, seed=0, convention="hyperscalees-torch", factors={"w.bias": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="convention"):
        es.generate(params, pop_size=4, seed=0, convention="torch")
    with pytest.raises(ValueError, match="seed"):
        es.generate(params, pop_size=4, seed=None)
