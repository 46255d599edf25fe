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
