"""Strategy variants (OpenES, SparseES, EggrollBaseline) against the official JAX noisers' formulas.

Each official noiser (``OpenES``, ``Sparse``, ``EggRollBS`` of HyperscaleES) is
written out here in float64 NumPy from its update rules -- per-member dense
perturbations, ``convert_fitnesses``, ``_do_update`` (``-sqrt(N) * raw``),
``optax.clip_by_global_norm`` + SGD -- and one generation of egdnp's variant
under ``convention="hyperscalees-jax"`` must agree to 1e-12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from egdnp import data, es, nn, optim

N, SIGMA, LR = 8, 0.2, 0.3
TOL = 1e-12


def _scenario(seed=0):
    g = np.random.default_rng(seed)
    params = {
        "fc1.weight": g.standard_normal((5, 6)) * 0.5,
        "fc1.bias": g.standard_normal(5) * 0.1,
        "fc2.weight": g.standard_normal((3, 5)) * 0.5,
        "fc2.bias": g.standard_normal(3) * 0.1,
    }
    x = g.standard_normal((7, 6))
    y = g.integers(0, 3, 7)
    return params, x, y


def _fitness_dense(p, x, y):
    h = np.tanh(x @ p["fc1.weight"].T + p["fc1.bias"])
    z = h @ p["fc2.weight"].T + p["fc2.bias"]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.mean(logp[np.arange(len(y)), y])


def _official_zscore(f):
    return (f - f.mean()) / np.sqrt(f.var() + 1e-5)


def _run_egdnp(strategy, params, x, y, factors=None):
    model = nn.mlp((6, 5, 3), activation="tanh")
    state = strategy.init(dict(params), seed=11)
    perts = strategy.ask(state, factors=factors)
    f = es.population_fitness(model, state.params, x, perts, lambda out: es.classification_fitness(out, y))
    grads = strategy._transform_grads(es.loss_gradients(strategy.shape(f), perts, state.params,
                                                        convention=strategy.convention))
    new, _ = strategy.tell(state, perts, f)
    return perts, np.asarray(f), grads, new.params


def test_openes_is_the_official_full_rank_noiser():
    params, x, y = _scenario()
    g = np.random.default_rng(5)
    raw = {k: g.standard_normal((N // 2,) + v.shape) for k, v in params.items()}
    strategy = es.OpenES(pop_size=N, sigma=SIGMA, convention="hyperscalees-jax", optimizer=optim.sgd(LR))
    perts, f, grads, new = _run_egdnp(strategy, params, x, y, factors=raw)
    assert all(isinstance(v, es.FullNoise) for v in perts.noise.values())
    # official: thread t uses eps of t // 2 with sign + (even) / - (odd), sigma unscaled by rank
    noise = [{k: (1.0 if t % 2 == 0 else -1.0) * SIGMA * raw[k][t // 2] for k in params} for t in range(N)]
    f_ref = np.array([_fitness_dense({k: params[k] + noise[t][k] for k in params}, x, y) for t in range(N)])
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=TOL)
    fh = _official_zscore(f_ref)
    for k in params:
        official = -(np.mean([fh[t] * noise[t][k] for t in range(N)], axis=0) * math.sqrt(N))  # _do_update
        np.testing.assert_allclose(grads[k], official, rtol=0, atol=TOL)
        np.testing.assert_allclose(new[k], params[k] - LR * official, rtol=0, atol=TOL)  # optax.sgd


def test_sparse_es_is_the_official_sparse_noiser():
    params, x, y = _scenario(1)
    strategy = es.SparseES(pop_size=N, sigma=SIGMA, convention="hyperscalees-jax", optimizer=optim.sgd(LR))
    perts, f, grads, new = _run_egdnp(strategy, params, x, y)
    item = perts.noise["fc1.weight"]
    assert isinstance(item, es.SparseNoise) and tuple(item.values.shape) == (N // 2, 6)  # k = max(m, n)
    assert int(np.max(item.rows)) < 5 and int(np.max(item.cols)) < 6
    # the official do_mm: base.at[idxa].add(x[idxb] * v) per member == a dense scatter-add matrix
    dense = {}
    for t in range(N):
        s, k = (1.0 if t % 2 == 0 else -1.0), t // 2
        member = {}
        for key in params:
            it = perts.noise[key]
            if isinstance(it, es.SparseNoise):
                e = np.zeros(params[key].shape)
                np.add.at(e, (it.rows[k], it.cols[k]), s * it.values[k])
            else:
                e = s * it.eps[k]
            member[key] = e
        dense[t] = member
    f_ref = np.array([_fitness_dense({k: params[k] + dense[t][k] for k in params}, x, y) for t in range(N)])
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=TOL)
    fh = _official_zscore(f_ref)
    for key in params:
        raw = np.mean([fh[t] * dense[t][key] for t in range(N)], axis=0)
        if params[key].ndim == 2:  # _simple_sparse_update's q_normalizer
            raw = raw * (max(params[key].shape) / params[key].size)
        np.testing.assert_allclose(grads[key], -math.sqrt(N) * raw, rtol=0, atol=TOL)
        np.testing.assert_allclose(new[key], params[key] + LR * math.sqrt(N) * raw, rtol=0, atol=TOL)
    # egdnp's convention divides by q instead (the unbiased scale)
    eg = es.SparseES(pop_size=N, sigma=SIGMA, k=4)
    p_eg = eg.ask(eg.init(params, seed=2))
    fh = np.linspace(-1.0, 1.0, N)
    got = es.es_gradient(fh, p_eg)["fc1.weight"]
    it = p_eg.noise["fc1.weight"]
    ref = np.zeros((5, 6))
    for t in range(N):
        np.add.at(ref, (it.rows[p_eg.pair[t]], it.cols[p_eg.pair[t]]), fh[t] * p_eg.sign[t] * it.values[p_eg.pair[t]])
    np.testing.assert_allclose(got, ref / (N * SIGMA) / (4 / 30), rtol=0, atol=TOL)


@pytest.mark.parametrize("clip", [1e3, 0.05])  # not triggered / triggered
def test_baseline_subtraction_is_the_official_eggrollbs(clip):
    params, x, y = _scenario(2)
    r = 2
    g = np.random.default_rng(7)
    raw = {"fc1.weight": (g.standard_normal((N // 2, 5, r)), g.standard_normal((N // 2, 6, r))),
           "fc2.weight": (g.standard_normal((N // 2, 3, r)), g.standard_normal((N // 2, 5, r))),
           "fc1.bias": g.standard_normal((N // 2, 5)), "fc2.bias": g.standard_normal((N // 2, 3))}
    strategy = es.EggrollBaseline(pop_size=N, group_size=N, rank=r, sigma=SIGMA, clip_norm=clip,
                                  convention="hyperscalees-jax", optimizer=optim.sgd(LR))
    perts, f, grads, new = _run_egdnp(strategy, params, x, y, factors=raw)
    assert strategy.baseline_members() == (0, 1)
    noise = []
    for t in range(N):  # official: mask = thread_id % G >= 2 zeroes A, B and eps of the first pair
        s, k, mask = (1.0 if t % 2 == 0 else -1.0), t // 2, float(t % N >= 2)
        member = {}
        for key in ("fc1.weight", "fc2.weight"):
            a, b = raw[key][0][k] * mask, raw[key][1][k] * mask
            member[key] = s * SIGMA / math.sqrt(r) * a @ b.T
        for key in ("fc1.bias", "fc2.bias"):
            member[key] = s * SIGMA * raw[key][k] * mask
        noise.append(member)
    f_ref = np.array([_fitness_dense({k: params[k] + noise[t][k] for k in params}, x, y) for t in range(N)])
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=TOL)
    assert f_ref[0] == f_ref[1] == _fitness_dense(params, x, y)
    S = f_ref.reshape(1, N)  # convert_fitnesses
    Z = (S - S[:, :1]) / (S.std(axis=1, keepdims=True) + 1e-8)
    Z[:, 0] = 0.0
    Z[:, 1] = 0.0
    fh = Z.mean(axis=0)
    np.testing.assert_allclose(strategy.shape(f), fh, rtol=0, atol=TOL)
    official = {k: -(np.sum([fh[t] * noise[t][k] for t in range(N)], axis=0) / N * math.sqrt(N)) for k in params}
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in official.values()))
    scale = 1.0 if norm < clip else clip / norm  # optax.clip_by_global_norm
    assert (scale < 1.0) == (clip < 1.0)
    for k in params:
        np.testing.assert_allclose(grads[k], official[k] * scale, rtol=0, atol=TOL)
        np.testing.assert_allclose(new[k], params[k] - LR * official[k] * scale, rtol=0, atol=TOL)


def test_baseline_groups_shaping_and_errors():
    f = np.array([1.0, 1.0, 3.0, 0.0, 2.0, 2.0, 2.0, 5.0])
    z = es.baseline_zscore(f, 4)
    g = f.reshape(2, 4)
    ref = (g - g[:, :1]) / (g.std(axis=1, keepdims=True) + 1e-8)
    ref[:, :2] = 0.0
    np.testing.assert_allclose(z, ref.ravel(), rtol=0, atol=TOL)
    s = es.EggrollBaseline(pop_size=8, group_size=4)
    assert s.baseline_members() == (0, 1, 4, 5)
    perts = s.ask(s.init({"w.weight": np.ones((3, 4))}, seed=0))
    A = perts.noise["w.weight"].A
    assert np.all(A[0] == 0) and np.all(A[2] == 0) and np.any(A[1] != 0) and np.any(A[3] != 0)
    window = s.ask(s.init({"w.weight": np.ones((3, 4))}, seed=0), pairs=(1, 3))  # global pairs 1, 2
    np.testing.assert_array_equal(window.noise["w.weight"].A[0], A[1])
    assert np.all(window.noise["w.weight"].A[1] == 0)  # pair 2 is group 1's baseline
    with pytest.raises(ValueError, match="divide pop_size"):
        es.EggrollBaseline(pop_size=8, group_size=6)
    with pytest.raises(ValueError, match="interleaved"):
        es.EggrollBaseline(pop_size=8, group_size=4, convention="hyperscalees-torch")
    with pytest.raises(ValueError, match="clip_norm"):
        es.EggrollBaseline(pop_size=8, group_size=4, clip_norm=0.0)
    with pytest.raises(TypeError, match="fitness"):
        es.EggrollBaseline(pop_size=8, group_size=4, fitness="zscore")
    with pytest.raises(ValueError, match="sparse_k"):
        es.generate({"w.weight": np.ones((3, 4))}, pop_size=4, matrix_noise="sparse", sparse_k=0)
    with pytest.raises(ValueError, match="matrix_noise"):
        es.generate({"w.weight": np.ones((3, 4))}, pop_size=4, matrix_noise="dense")
    clipped, norm = es.clip_by_global_norm({"a": np.array([3.0]), "b": np.array([4.0]), "c": None}, 1.0)
    assert norm == 5.0 and clipped["c"] is None
    np.testing.assert_allclose(clipped["a"], [0.6])


@pytest.mark.parametrize("make", [
    lambda: es.OpenES(pop_size=32, sigma=0.05, optimizer=optim.adam(0.03)),
    lambda: es.SparseES(pop_size=32, sigma=0.05, optimizer=optim.adam(0.03)),
    lambda: es.EggrollBaseline(pop_size=32, group_size=8, rank=1, sigma=0.05, optimizer=optim.adam(0.03)),
])
def test_variants_learn_digits(make):
    """Each variant lowers the loss of a small digits MLP within 25 generations (egdnp convention)."""
    digits = data.load_digits(flat=True)
    model = nn.mlp((64, 16, 10), activation="tanh")
    strategy = make()
    state = strategy.init(model.init(seed=0), seed=1)
    xb, yb = digits.x_train[:128], digits.y_train[:128]

    def loss(params):
        return float(nn.softmax_cross_entropy(model.apply(params, xb), yb))

    before = loss(state.params)
    for _ in range(25):
        perts = strategy.ask(state)
        f = es.population_fitness(model, state.params, xb, perts, lambda out: es.classification_fitness(out, yb))
        state, _ = strategy.tell(state, perts, f)
    assert loss(state.params) < before - 0.2, (before, loss(state.params))


@pytest.mark.parametrize("matrix_noise", ["full", "sparse"])
def test_full_and_sparse_noise_forward_equals_dense_members_cnn(xp, matrix_noise):
    """Full-rank and sparse weight noise through every weighted layer of a small CNN (conv weights as their
    row-major (C_out, C_in kh kw) matrices): the perturbed forward equals the explicit dense members."""
    from conftest import to_numpy

    model = nn.cnn(1, 8, 4, channels=(2, 3))
    params = model.init(seed=0, xp=xp, dtype="float64")
    perts = es.generate(params, pop_size=4, sigma=0.3, seed=5, dtype="float64", matrix_noise=matrix_noise, sparse_k=7)
    kinds = {type(v).__name__ for k, v in perts.noise.items() if k.endswith("weight")}
    assert kinds == {"FullNoise" if matrix_noise == "full" else "SparseNoise"}
    x = xp.asarray(np.random.default_rng(0).standard_normal((3, 1, 8, 8)))
    out = es.perturbed_model_forward(model, params, x, perts)
    for i in range(4):
        ref = model.apply(es.dense_perturbed_params(params, perts, i), x)
        np.testing.assert_allclose(to_numpy(out)[i], to_numpy(ref), rtol=0, atol=TOL)
