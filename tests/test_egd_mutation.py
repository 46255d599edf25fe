"""The fused Numba mutant kernel against its array-API oracle (bit for bit), and the dispatch."""

from __future__ import annotations

import numpy as np
import pytest

from egdnp import _backend, rng
from egdnp.optim._egd_mutation import mutant, param_scale, unit_noise, weighted_unit_noise
from conftest import to_numpy


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (257, 33), (2, 3, 4), (1,), (0, 4), (40000,)])
def test_fused_kernel_equals_oracle_bitwise(dtype, shape):
    xp = _backend.get_namespace("numpy")
    base = rng.normal(shape, seed=9, stream="base", dtype=dtype)
    kw = dict(seed=2**40 + 3, name="fc1.weight", member=5, cycle=11, xp=xp)
    fused = mutant(base, 0.037, impl="numba", **kw)
    oracle = mutant(base, 0.037, impl="array_api", **kw)
    assert fused.dtype == oracle.dtype == np.dtype(dtype) and fused.shape == shape
    np.testing.assert_array_equal(fused, oracle)
    out = np.empty(shape, dtype=dtype)
    assert mutant(base, 0.037, out=out, **kw) is out
    np.testing.assert_array_equal(out, oracle)
    by_hand = base + np.asarray(0.037, dtype=dtype) * rng.normal(shape, seed=2**40 + 3, stream="fc1.weight",
                                                                 member=5, generation=11, dtype=dtype)
    np.testing.assert_array_equal(oracle, by_hand)


def test_mutant_on_other_namespaces_matches_numpy(xp):
    base_np = rng.normal((4, 6), seed=1, dtype="float64")
    base = _backend.to_device(base_np, xp)
    for mutation in ("full", "lowrank"):
        got = mutant(base, 0.5, seed=3, name="w", member=2, cycle=1, xp=xp, mutation=mutation, rank=2)
        ref = mutant(base_np, 0.5, seed=3, name="w", member=2, cycle=1, xp=_backend.get_namespace("numpy"),
                     mutation=mutation, rank=2)
        np.testing.assert_allclose(to_numpy(got), ref, rtol=1e-13, atol=1e-13)


def test_weighted_unit_noise_is_the_weighted_sum(xp):
    w, m = [0.25, -1.5, 2.0], [1, 4, 9]
    for shape, mutation in [((5, 3), "full"), ((5, 3), "lowrank"), ((6,), "lowrank")]:
        got = to_numpy(weighted_unit_noise(w, m, shape, seed=4, name="p", cycle=2, dtype="float64", xp=xp,
                                           mutation=mutation, rank=2))
        ref = sum(wi * to_numpy(unit_noise(shape, seed=4, name="p", member=mi, cycle=2, dtype="float64", xp=xp,
                                           mutation=mutation, rank=2)) for wi, mi in zip(w, m))
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_param_scale_clamps_and_handles_empty(xp):
    assert param_scale(xp, xp.zeros((3,), dtype=xp.float64), 0.5) == 0.5 * 1e-8
    assert param_scale(xp, xp.zeros((0,), dtype=xp.float64), 0.5) == 0.0
    assert param_scale(xp, xp.asarray([3.0, -4.0], dtype=xp.float64), 2.0) == pytest.approx(2.0 * (12.5**0.5))


def test_bad_impl():
    xp = _backend.get_namespace("numpy")
    with pytest.raises(ValueError, match="impl"):
        mutant(np.zeros(3), 1.0, seed=0, name="w", member=1, cycle=0, xp=xp, impl="cuda")
    with pytest.raises(ValueError, match="impl='numba'"):
        mutant(np.zeros((3, 3)), 1.0, seed=0, name="w", member=1, cycle=0, xp=xp, mutation="lowrank", impl="numba")


def test_numba_stays_lazy():
    """``import egdnp`` and building an EGD optimiser load no Numba: the kernels are imported on first use."""
    import subprocess
    import sys

    code = ("import sys, numpy as np, egdnp; from egdnp.optim import egd as E; "
            "opt = E.egd(recombine='softmax'); opt.init({'w': np.zeros((3, 2), np.float32)}); "
            "assert 'numba' not in sys.modules, 'numba loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)
