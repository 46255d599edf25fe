"""The ES gradient is the true sum of the low-rank products, computed as one product."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import to_numpy
from egdnp import es, optim


def _randn(xp, shape, seed):
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape))


def test_lowrank_weighted_sum_is_the_explicit_sum(xp):
    w, A, B = _randn(xp, (6,), 0), _randn(xp, (6, 5, 3), 1), _randn(xp, (6, 4, 3), 2)
    got = to_numpy(es.lowrank_weighted_sum(w, A, B))
    wn, An, Bn = to_numpy(w), to_numpy(A), to_numpy(B)
    ref = sum(wn[k] * An[k] @ Bn[k].T for k in range(6))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)
    # ... and NOT the factorised shortcut the algorithm notes call equivalent
    shortcut = to_numpy(es.factorised_shortcut(w, A, B))
    np.testing.assert_allclose(shortcut, (wn @ An.reshape(6, -1)).reshape(5, 3) @ (wn @ Bn.reshape(6, -1)).reshape(4, 3).T, atol=1e-12)
    assert np.abs(got - shortcut).max() > 0.1 * np.abs(ref).max()
    assert np.linalg.matrix_rank(got) == 4 and np.linalg.matrix_rank(shortcut) == 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_concatenation_is_bitwise_the_array_api_one(dtype):
    g = np.random.default_rng(5)
    w = g.standard_normal(37).astype(dtype)
    A, B = g.standard_normal((37, 6, 3)).astype(dtype), g.standard_normal((37, 9, 3)).astype(dtype)
    fast = es.lowrank_weighted_sum(w, A, B, impl="numba")
    oracle = es.lowrank_weighted_sum(w, A, B, impl="array_api")
    assert fast.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fast, oracle)
    from egdnp.es import _cpu

    np.testing.assert_array_equal(_cpu.concat_factors(B, w), np.transpose(B * w[:, None, None], (1, 0, 2)).reshape(9, 111))


def test_lowrank_weighted_sum_impl_choice():
    """impl goes through _backend.resolve_impl: its accepted values, clear errors, mixed dtypes on the oracle."""
    import array_api_strict as xps

    g = np.random.default_rng(6)
    w, A, B = g.standard_normal(4), g.standard_normal((4, 5, 2)), g.standard_normal((4, 3, 2))
    with pytest.raises(ValueError, match="impl='cupy' is not one of"):
        es.lowrank_weighted_sum(w, A, B, impl="cupy")
    with pytest.raises(ValueError, match="impl='numba' computes NumPy arrays.*use impl='auto' or impl='array_api'"):
        es.lowrank_weighted_sum(xps.asarray(w), xps.asarray(A), xps.asarray(B), impl="numba")
    mixed = es.lowrank_weighted_sum(w.astype(np.float32), A, B, impl="numba")  # the kernel needs one dtype
    np.testing.assert_array_equal(mixed, es.lowrank_weighted_sum(w.astype(np.float32), A, B, impl="array_api"))


@pytest.mark.parametrize("convention", ["egdnp", "hyperscalees-torch", "hyperscalees-jax"])
@pytest.mark.parametrize("antithetic", [True, False])
def test_es_gradient_equals_member_sum(xp, convention, antithetic):
    params = {"fc.weight": _randn(xp, (5, 4), 0), "fc.bias": _randn(xp, (5,), 1), "conv.weight": _randn(xp, (3, 2, 2, 2), 2)}
    n = 8
    perts = es.generate(params, pop_size=n, rank=2, sigma=0.2, seed=4, convention=convention, antithetic=antithetic,
                        dtype="float64")
    f = _randn(xp, (n,), 3)
    grads = es.es_gradient(f, perts)
    c = 1 / math.sqrt(n) if convention != "egdnp" else 1 / (n * 0.2)
    fn = to_numpy(f)
    host = {k: to_numpy(v) for k, v in params.items()}
    for key in perts.noise:
        ref = sum(fn[i] * (to_numpy(es.dense_perturbed_params(params, perts, i)[key]) - host[key]) for i in range(n))
        np.testing.assert_allclose(to_numpy(grads[key]), c * ref, rtol=0, atol=1e-12)
    assert set(grads) == set(perts.noise)


def test_full_rank_fused_regeneration_equals_stored_noise():
    params = {"b": np.zeros(37), "w.weight": np.zeros((3, 3))}  # small: stored-noise contraction
    perts = es.generate(params, pop_size=10, rank=1, sigma=0.3, seed=8, generation=2, dtype="float64")
    f = np.random.default_rng(0).standard_normal(10)
    fused = es.es_gradient(f, perts)["b"]  # egdnp noise: rng.weighted_noise_sum
    w = es.pair_weights(f, perts)
    stored = np.tensordot(w, perts.noise["b"].eps, axes=1) / (10 * 0.3)
    np.testing.assert_allclose(fused, stored, atol=1e-12)


def test_loss_gradients_feed_optimisers():
    params = {"fc.weight": np.ones((3, 4)), "fc.bias": np.zeros(3)}
    perts = es.generate(params, pop_size=6, rank=1, sigma=0.1, seed=0, convention="hyperscalees-torch", dtype="float64")
    f = np.arange(6.0)
    grads = es.loss_gradients(f, perts, params)
    assert grads["fc.bias"] is None  # frozen under the torch convention
    g = es.es_gradient(f, perts)["fc.weight"]
    np.testing.assert_array_equal(grads["fc.weight"], -g)
    for opt in (optim.sgd(0.5), optim.adam(0.01)):
        new, _ = opt.update(grads, opt.init(params), params)
        np.testing.assert_array_equal(new["fc.bias"], params["fc.bias"])
        assert np.sum((new["fc.weight"] - params["fc.weight"]) * g) > 0  # moved up the fitness
    new, _ = optim.sgd(0.5).update(grads, optim.sgd(0.5).init(params), params)
    np.testing.assert_allclose(new["fc.weight"], params["fc.weight"] + 0.5 * g, atol=1e-15)


def test_gradient_errors():
    params = {"w.weight": np.zeros((3, 4))}
    perts = es.generate(params, pop_size=4, rank=1, seed=0, dtype="float64")
    with pytest.raises(ValueError, match="non-finite"):
        es.es_gradient(np.array([0.0, 1.0, np.nan, 2.0]), perts)
    with pytest.raises(ValueError, match="4 members"):
        es.es_gradient(np.zeros(6), perts)
    with pytest.raises(ValueError, match="agree"):
        es.lowrank_weighted_sum(np.zeros(2), np.zeros((2, 3, 1)), np.zeros((2, 4, 2)))
    with pytest.raises(ValueError, match="weights"):
        es.lowrank_weighted_sum(np.zeros(3), np.zeros((2, 3, 1)), np.zeros((2, 4, 1)))
    with pytest.raises(ValueError, match="shape"):
        es.loss_gradients(np.zeros(4), perts, {"w.weight": np.zeros((4, 3))})


def test_fused_path_for_large_vectors_equals_stored_contraction():
    from egdnp.es import gradient as G

    size = G.FUSED_MIN_SIZE + 3
    params = {"big": np.zeros(size, np.float32)}
    perts = es.generate(params, pop_size=6, rank=1, sigma=0.2, seed=1, generation=1)
    f = np.random.default_rng(0).standard_normal(6).astype(np.float32)
    fused = es.es_gradient(f, perts)["big"]
    stored = np.tensordot(es.pair_weights(f, perts), perts.noise["big"].eps, axes=1) / (6 * 0.2)
    np.testing.assert_allclose(fused, stored, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_blocked_gradient_product_is_the_oracle_within_rounding(dtype, rtol, monkeypatch):
    """Many pairs: the NumPy path sums blocks of pairs (its own GEMM each); close to the one-GEMM oracle."""
    from egdnp.es import _cpu

    monkeypatch.setattr(_cpu, "GRAD_BLOCK_PAIRS", 16)  # 70 pairs: 5 blocks, the last one partial
    monkeypatch.setattr(_cpu, "GRAD_BLOCK_MIN_PAIRS", 16)
    g = np.random.default_rng(8)
    w = g.standard_normal(70).astype(dtype)
    A, B = g.standard_normal((70, 12, 3)).astype(dtype), g.standard_normal((70, 17, 3)).astype(dtype)
    blocked = es.lowrank_weighted_sum(w, A, B, impl="numba")
    oracle = es.lowrank_weighted_sum(w, A, B, impl="array_api")
    assert blocked.dtype == np.dtype(dtype) and blocked.shape == (12, 17)
    scale = np.abs(A).max() * np.abs(B).max() * np.abs(w).sum() * 3
    np.testing.assert_allclose(blocked, oracle, rtol=0, atol=rtol * scale)
