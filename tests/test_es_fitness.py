"""Fitness shaping formulas against plain NumPy, and bad fitness."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import to_numpy
from egdnp import es

F = np.array([3.0, -1.0, 2.5, 7.0, 0.0, 2.5, -4.0, 1.0])


def test_zscore_variants(xp):
    f = xp.asarray(F)
    np.testing.assert_allclose(to_numpy(es.zscore(f)), (F - F.mean()) / (F.std() + 1e-8), atol=1e-14)
    np.testing.assert_allclose(to_numpy(es.shape_fitness(f, "zscore_ddof1")), (F - F.mean()) / (F.std(ddof=1) + 1e-8), atol=1e-14)
    np.testing.assert_allclose(to_numpy(es.zscore_var_eps(f)), (F - F.mean()) / np.sqrt(F.var() + 1e-5), atol=1e-14)


def test_jax_group_variant_uses_global_variance(xp):
    f = xp.asarray(F)
    g = F.reshape(2, 4)
    ref = ((g - g.mean(axis=1, keepdims=True)) / np.sqrt(F.var() + 1e-5)).ravel()
    np.testing.assert_allclose(to_numpy(es.zscore_var_eps(f, group_size=4)), ref, atol=1e-14)


def test_group_zscore(xp):
    f = xp.asarray(F)
    g = F.reshape(4, 2)
    ref = ((g - g.mean(axis=1, keepdims=True)) / (g.std(axis=1, keepdims=True) + 1e-8)).ravel()
    np.testing.assert_allclose(to_numpy(es.group_zscore(f, 2)), ref, atol=1e-12)
    np.testing.assert_allclose(to_numpy(es.shape_fitness(f, "zscore", group_size=2)), ref, atol=1e-12)


def test_centered_ranks(xp):
    out = to_numpy(es.centered_ranks(xp.asarray(F)))
    order = np.argsort(np.argsort(F, kind="stable"), kind="stable").astype(float)
    order[[2, 5]] = order[[2, 5]].mean()  # the tie 2.5, 2.5 shares its ranks
    np.testing.assert_allclose(out, order / 7 - 0.5, atol=1e-14)
    assert abs(out.sum()) < 1e-12


def test_classification_fitness(xp):
    logits = xp.asarray(np.random.default_rng(0).standard_normal((3, 4, 5)))
    labels = xp.asarray(np.array([0, 4, 2, 2]))
    z = to_numpy(logits)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ref = np.array([np.mean([logp[i, b, int(to_numpy(labels)[b])] for b in range(4)]) for i in range(3)])
    np.testing.assert_allclose(to_numpy(es.classification_fitness(logits, labels)), ref, atol=1e-12)


def test_bad_fitness():
    with pytest.raises(ValueError, match="non-finite"):
        es.shape_fitness(np.array([1.0, np.nan, 2.0]), "zscore")
    with pytest.raises(ValueError, match="non-finite"):
        es.centered_ranks(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match=r"\(pop,\)"):
        es.zscore(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="dtype"):
        es.zscore(np.arange(4))
    with pytest.raises(ValueError, match="divide"):
        es.group_zscore(np.zeros(6), 4)
    with pytest.raises(ValueError, match="method"):
        es.shape_fitness(np.zeros(4), "softmax")


# -- the shaping registry (issue 14: registries where people extend) -------------------------------------


def _signs(f):
    return np.sign(f - np.median(f))


def test_builtin_shapings_are_registered_and_shape_by_name_is_unchanged():
    assert tuple(es.FITNESS_SHAPINGS) == es.fitness.METHODS
    f = np.random.default_rng(3).standard_normal(12).astype(np.float32)
    np.testing.assert_array_equal(es.shape_fitness(f, "zscore"), es.zscore(f))
    np.testing.assert_array_equal(es.shape_fitness(f, "zscore_ddof1"), es.zscore(f, ddof=1))
    np.testing.assert_array_equal(es.shape_fitness(f, "zscore", group_size=4), es.group_zscore(f, 4))
    np.testing.assert_array_equal(es.shape_fitness(f, "zscore_var_eps", group_size=3), es.zscore_var_eps(f, group_size=3))
    np.testing.assert_array_equal(es.shape_fitness(f, "centered_ranks"), es.centered_ranks(f))
    assert es.shape_fitness(f, "none") is f


def test_register_a_shaping_and_shape_by_name_or_callable(es_registries):
    fn = es.register_fitness_shaping("signs", _signs)
    assert fn is _signs and es.FITNESS_SHAPINGS["signs"] is _signs
    f = np.array([3.0, -1.0, 2.0, 0.5])
    np.testing.assert_array_equal(es.shape_fitness(f, "signs"), _signs(f))
    np.testing.assert_array_equal(es.shape_fitness(f, _signs), _signs(f))
    assert es.fitness.shaping_name(_signs) == "signs" and es.fitness.shaping_name(lambda f: f) is None
    # ddof / eps / group_size reach a function only when given
    seen = {}
    es.shape_fitness(f, lambda f, **kw: seen.update(kw) or f, group_size=2, eps=0.5)
    assert seen == {"group_size": 2, "eps": 0.5}


def test_bad_registrations_and_shapings_are_clear_errors(es_registries):
    with pytest.raises(TypeError, match="fn=3 .*must be callable"):
        es.register_fitness_shaping("three", 3)
    with pytest.raises(TypeError, match="name=.*non-empty str"):
        es.register_fitness_shaping("", _signs)
    with pytest.raises(ValueError, match="'zscore' is built in"):
        es.register_fitness_shaping("zscore", _signs)
    es.register_fitness_shaping("signs", _signs)
    with pytest.raises(ValueError, match="'signs' is already registered.*replace=True"):
        es.register_fitness_shaping("signs", np.sign)
    assert es.FITNESS_SHAPINGS["signs"] is _signs  # nothing half-updated
    es.register_fitness_shaping("signs", np.sign, replace=True)
    assert es.FITNESS_SHAPINGS["signs"] is np.sign
    with pytest.raises(ValueError, match="method='nope' is not one of .*register_fitness_shaping"):
        es.shape_fitness(np.zeros(4), "nope")
    with pytest.raises(TypeError, match="method=3 must be a fitness shaping name"):
        es.shape_fitness(np.zeros(4), 3)
    with pytest.raises(ValueError, match="'sum' returned \\(\\); it must return one shaped fitness per member.*\\(4,\\)"):
        es.shape_fitness(np.ones(4), np.sum)
