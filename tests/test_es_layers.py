"""Perturbed layers equal the explicit dense ``x (W + A B^T)^T + b`` (float64, 1e-12)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import to_numpy
from egdnp import _backend, es, nn

TOL = 1e-12


def _randn(xp, shape, seed):
    return xp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _dense_linear(x, w, b, A, B, sign, pair, eps_b=None):
    """Host float64: member i uses W + s_i A_{p_i} B_{p_i}^T and b + s_i eps_{p_i}."""
    outs = []
    for i, (p, s) in enumerate(zip(pair, sign)):
        wi = w + s * A[p] @ B[p].T
        bi = (0 if b is None else b) + (0 if eps_b is None else s * eps_b[p])
        xi = x if x.ndim == 2 else x[i]
        outs.append(xi @ wi.T + bi)
    return np.stack(outs)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("layout", ["egdnp", "hyperscalees-torch"])
def test_perturbed_linear_equals_dense(xp, shared, layout):
    params = {"fc.weight": _randn(xp, (7, 11), 0), "fc.bias": _randn(xp, (7,), 1)}
    perts = es.generate(params, pop_size=6, rank=3, sigma=0.3, seed=5, generation=2, convention=layout, dtype="float64")
    x = _randn(xp, (4, 11), 2) if shared else _randn(xp, (6, 4, 11), 2)
    out = es.perturbed_linear(x, params["fc.weight"], params["fc.bias"], perts, weight_key="fc.weight", bias_key="fc.bias")
    assert tuple(out.shape) == (6, 4, 7)
    wn = perts.noise["fc.weight"]
    bn = perts.noise.get("fc.bias")
    ref = _dense_linear(to_numpy(x), to_numpy(params["fc.weight"]), to_numpy(params["fc.bias"]), to_numpy(wn.A),
                        to_numpy(wn.B), perts.sign, perts.pair, None if bn is None else to_numpy(bn.eps))
    np.testing.assert_allclose(to_numpy(out), ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("n_out", [9, 40])  # fused narrow kernel / wide: shared fill, per-member GEMM + post-add pass
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_numba_path_matches_array_api_oracle(shared, dtype, n_out, rank):
    xp = _backend.get_namespace("numpy")
    rng = np.random.default_rng(3)
    w = rng.standard_normal((n_out, 13)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    perts = es.generate({"l.weight": w, "l.bias": b}, pop_size=8, rank=rank, sigma=0.2, seed=1, dtype=dtype)
    x = rng.standard_normal((5, 13) if shared else (4, 5, 13)).astype(dtype)
    kw = dict(weight_key="l.weight", bias_key="l.bias", members=(2, 6))
    fast = es.perturbed_linear(x, w, b, perts, impl="numba", **kw)
    oracle = es.perturbed_linear(x, w, b, perts, impl="array_api", **kw)
    assert fast.dtype == np.dtype(dtype)
    np.testing.assert_allclose(fast, oracle, rtol=0, atol=1e-12 if dtype == "float64" else 2e-5)
    assert xp is not None
    # weight frozen, bias perturbed; and nothing perturbed
    only_bias = es.generate({"l.bias": b}, pop_size=8, rank=1, sigma=0.2, seed=1, dtype=dtype)
    for perts_ in (only_bias, None):
        fast = es.perturbed_linear(x, w, b, perts_, impl="numba", **kw)
        oracle = es.perturbed_linear(x, w, b, perts_, impl="array_api", **kw)
        np.testing.assert_allclose(fast, oracle, rtol=0, atol=1e-12 if dtype == "float64" else 2e-5)


def test_member_slice_equals_full_population(xp):
    params = {"fc.weight": _randn(xp, (5, 6), 0)}
    perts = es.generate(params, pop_size=8, rank=2, sigma=0.1, seed=2, dtype="float64")
    x = _randn(xp, (3, 6), 1)
    full = to_numpy(es.perturbed_linear(x, params["fc.weight"], None, perts, weight_key="fc.weight"))
    part = to_numpy(es.perturbed_linear(x, params["fc.weight"], None, perts, weight_key="fc.weight", members=(3, 7)))
    np.testing.assert_array_equal(part, full[3:7])


def test_unperturbed_keeps_shared_input_shared(xp):
    w = _randn(xp, (4, 3), 0)
    perts = es.generate({"other.weight": _randn(xp, (2, 2), 1)}, pop_size=2, rank=1, seed=0, dtype="float64")
    x = _randn(xp, (5, 3), 2)
    out = es.perturbed_linear(x, w, None, perts, weight_key="fc.weight")
    assert tuple(out.shape) == (5, 4)
    np.testing.assert_allclose(to_numpy(out), to_numpy(x) @ to_numpy(w).T, atol=TOL)


@pytest.mark.parametrize("shared", [True, False])
def test_perturbed_conv2d_equals_dense(xp, shared):
    w = _randn(xp, (4, 3, 3, 2), 0)
    b = _randn(xp, (4,), 1)
    params = {"conv.weight": w, "conv.bias": b}
    perts = es.generate(params, pop_size=4, rank=2, sigma=0.2, seed=9, dtype="float64")
    x = _randn(xp, (2, 3, 6, 5), 2) if shared else _randn(xp, (4, 2, 3, 6, 5), 2)
    out = es.perturbed_conv2d(x, w, b, perts, weight_key="conv.weight", bias_key="conv.bias", stride=(1, 2), padding=1)
    wn, bn = perts.noise["conv.weight"], perts.noise["conv.bias"]
    for i in range(4):
        p, s = perts.pair[i], perts.sign[i]
        wi = to_numpy(w) + s * (to_numpy(wn.A)[p] @ to_numpy(wn.B)[p].T).reshape(4, 3, 3, 2)
        bi = to_numpy(b) + s * to_numpy(bn.eps)[p]
        xi = to_numpy(x) if shared else to_numpy(x)[i]
        ref = to_numpy(nn.functional.conv2d(xp.asarray(xi), xp.asarray(wi), xp.asarray(bi), stride=(1, 2), padding=1))
        np.testing.assert_allclose(to_numpy(out)[i], ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("builder", ["mlp", "cnn", "mlp_bn", "cnn_bn", "resmlp", "resmlp_plain_ln"])
def test_model_forward_equals_dense_per_member(xp, builder):
    """Every weighted egdnp.nn layer (Linear, Conv2d, BatchNorm1d/2d, LayerNorm, Residual) in the builders."""
    if builder == "mlp":
        model, x_shape = nn.mlp((10, 8, 3)), (5, 10)
    elif builder == "mlp_bn":
        model, x_shape = nn.mlp((10, 8, 3), batch_norm=True), (5, 10)
    elif builder == "resmlp":  # Residual blocks, LayerNorm (affine), SiLU
        model, x_shape = nn.residual_mlp(10, 3, width=6, depth=2, hidden=7), (5, 10)
    elif builder == "resmlp_plain_ln":  # LayerNorm without affine; residual first (a shared input into a block)
        model, x_shape = nn.serial(("block1", nn.Residual(nn.LayerNorm(10, affine=False), nn.Linear(10, 10), nn.SiLU())),
                                   ("ln", nn.LayerNorm(10)), ("fc", nn.Linear(10, 3))), (5, 10)
    elif builder == "cnn_bn":
        model, x_shape = nn.cnn(1, 8, 4, channels=(3, 4), batch_norm=True), (3, 1, 8, 8)
    else:
        model, x_shape = nn.cnn(1, 8, 4, channels=(3, 4)), (3, 1, 8, 8)
    params = model.init(seed=0, xp=xp, dtype="float64")
    state = model.init_state(xp=xp, dtype="float64") or None
    if state is not None:  # non-trivial running statistics, so that they matter
        state = {k: v + xp.asarray(0.25 if k.endswith("var") else -0.1, dtype=xp.float64) for k, v in state.items()}
    perts = es.generate(params, pop_size=4, rank=2, sigma=0.1, seed=3, dtype="float64")
    kinds = {type(layer).__name__ for _, layer in model.layers}
    perturbed = {k.split(".")[0] for k in perts.noise}
    weighted = {name for name, layer in model.layers if layer.param_shapes()}
    assert perturbed == weighted, (kinds, perturbed, weighted)  # every weighted layer is perturbed
    x = _randn(xp, x_shape, 1)
    out = es.perturbed_model_forward(model, params, x, perts, state=state)
    for i in range(4):
        ref = model.apply(es.dense_perturbed_params(params, perts, i), x, state=state)
        np.testing.assert_allclose(to_numpy(out)[i], to_numpy(ref), rtol=0, atol=TOL)


def test_population_fitness_independent_of_chunking():
    model = nn.mlp((6, 5, 3))
    params = model.init(seed=1, dtype="float64")
    perts = es.generate(params, pop_size=10, rank=1, sigma=0.1, seed=0, dtype="float64")
    x = np.random.default_rng(0).standard_normal((7, 6))
    y = np.arange(7) % 3
    fn = lambda out: es.classification_fitness(out, y)  # noqa: E731
    full = es.population_fitness(model, params, x, perts, fn)
    for chunk in (1, 3, 4, 10):
        np.testing.assert_allclose(es.population_fitness(model, params, x, perts, fn, chunk_size=chunk), full, atol=1e-13)


@pytest.mark.parametrize("impl", ["numba", "array_api"])
@pytest.mark.parametrize("shared", [True, False])
def test_perturbed_forward_and_gradient_never_form_dense_matrices(impl, shared):
    """Peak allocation stays far below one dense ``W + A B^T`` (let alone one per member)."""
    import tracemalloc

    m, n, pop = 512, 1024, 16
    g = np.random.default_rng(0)
    w = g.standard_normal((m, n)).astype(np.float32)
    perts = es.generate({"fc.weight": w}, pop_size=pop, rank=2, sigma=0.1, seed=0)
    x = g.standard_normal((3, n) if shared else (pop, 3, n)).astype(np.float32)
    f = g.standard_normal(pop).astype(np.float32)
    es.perturbed_linear(x, w, None, perts, weight_key="fc.weight", impl=impl)  # compile outside the trace
    es.es_gradient(f, perts)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = es.perturbed_linear(x, w, None, perts, weight_key="fc.weight", impl=impl)
        forward_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        grad = es.es_gradient(f, perts)["fc.weight"]
        grad_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (pop, 3, m) and grad.shape == (m, n)
    assert forward_peak < w.nbytes / 4, forward_peak  # not even one dense perturbed matrix
    assert grad_peak < 3 * w.nbytes, grad_peak  # the (m, n) result plus factor copies, never pop * m * n


def test_memory_scales_with_rank_not_matrix():
    """Factors hold P r (m + n) numbers per matrix, never P m n."""
    params = {"w.weight": np.zeros((300, 400), np.float32)}
    perts = es.generate(params, pop_size=64, rank=1, seed=0)
    item = perts.noise["w.weight"]
    assert item.A.size + item.B.size == 32 * 1 * (300 + 400)


def test_layer_errors():
    w = np.zeros((4, 3))
    perts = es.generate({"fc.weight": w}, pop_size=4, rank=1, seed=0, dtype="float64")
    with pytest.raises(ValueError, match="expected"):
        es.perturbed_linear(np.zeros((4, 2, 5)), w, None, perts, weight_key="fc.weight")
    with pytest.raises(ValueError, match="members"):
        es.perturbed_linear(np.zeros((3, 2, 3)), w, None, perts, weight_key="fc.weight")
    with pytest.raises(ValueError, match="members"):
        es.perturbed_linear(np.zeros((2, 3)), w, None, perts, weight_key="fc.weight", members=(3, 9))
    with pytest.raises(ValueError, match="matrix"):
        es.perturbed_linear(np.zeros((2, 3)), np.zeros((5, 3)), None, perts, weight_key="fc.weight")
    model = nn.mlp((3, 2))
    with pytest.raises(ValueError, match="not a parameter"):
        es.perturbed_model_forward(model, model.init(dtype="float64"), np.zeros((2, 3)), perts)


@pytest.mark.parametrize("n_out", [6, 40])
def test_thread_split_is_bitwise_identical(monkeypatch, n_out):
    from egdnp import _threads

    rng = np.random.default_rng(4)
    w = rng.standard_normal((n_out, 12)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    perts = es.generate({"l.weight": w, "l.bias": b}, pop_size=10, rank=3, sigma=0.1, seed=2)
    outs = []
    for threads in (1, 3):
        monkeypatch.setattr(_threads, "cpu_threads", lambda t=threads: t)
        monkeypatch.setattr(_threads, "ES_SPLIT_FROM_WORK", 0)
        for x in (rng.standard_normal((5, 12)).astype(np.float32), rng.standard_normal((10, 5, 12)).astype(np.float32)):
            outs.append(es.perturbed_linear(x, w, b, perts, weight_key="l.weight", bias_key="l.bias"))
        rng = np.random.default_rng(4)
        rng.standard_normal((n_out, 12)), rng.standard_normal(n_out)
    np.testing.assert_array_equal(outs[0], outs[2])
    np.testing.assert_array_equal(outs[1], outs[3])


def test_threaded_population_fitness_is_bitwise_identical():
    model = nn.mlp((12, 40, 3))
    params = model.init(seed=2)
    perts = es.generate(params, pop_size=24, rank=2, sigma=0.1, seed=5)
    x = np.random.default_rng(1).standard_normal((9, 12)).astype(np.float32)
    y = np.arange(9) % 3
    fn = lambda out: es.classification_fitness(out, y)  # noqa: E731
    serial = es.population_fitness(model, params, x, perts, fn, chunk_size=4, threaded=False)
    threaded = es.population_fitness(model, params, x, perts, fn, chunk_size=4, threaded=True)
    whole = es.population_fitness(model, params, x, perts, fn)
    np.testing.assert_array_equal(serial, threaded)
    np.testing.assert_array_equal(serial, whole)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("r", [0, 1, 2, 3, 4])
def test_single_pass_fill_is_bitwise_the_generic_fill(dtype, r):
    """The rank-specialised fill kernel (shared-input layers, ranks <= 4) rounds exactly like the generic one."""
    from egdnp.es import _cpu

    g = np.random.default_rng(r)
    n_members, rows, m, pairs = 6, 5, 37, 9
    xb = g.standard_normal((pairs, rows, max(r, 1))).astype(dtype)[:, :, :r]
    xrow = np.array([0, 0, 4, 4, 8, 8], dtype=np.int64)
    a_t = np.ascontiguousarray(g.standard_normal((3, r, m)).astype(dtype))
    pair = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)
    sign = np.array([1, -1, 1, -1, 1, -1], dtype=dtype)
    base, bias, beps = (g.standard_normal(s).astype(dtype) for s in ((rows, m), (m,), (3, m)))
    for flags in [(True, True, True), (False, True, False), (True, False, True), (False, False, False)]:
        fast, generic = (np.full((n_members, rows, m), np.nan, dtype) for _ in range(2))
        _cpu._fill_kernel(fast, xb, xrow, a_t, pair, sign, base, flags[0], bias, flags[1], beps, flags[2])
        _cpu._fill_kernel_generic(generic, xb, xrow, a_t, pair, sign, base, flags[0], bias, flags[1], beps, flags[2])
        np.testing.assert_array_equal(fast, generic)


@pytest.mark.parametrize("shared, m, r", [(True, 37, 2), (True, 37, 5), (False, 37, 3), (False, 7, 1)])
def test_fused_relu_is_bitwise_relu_of_the_product(shared, m, r):
    """activation="relu" (fused into the NumPy kernels) equals nn.functional.relu of the plain product, NaN and -0.0 included."""
    from egdnp.nn import functional as F

    g = np.random.default_rng(r)
    n, pop, rows = 11, 6, 5
    w = g.standard_normal((m, n)).astype(np.float32)
    w[0] = 0.0  # column 0 of the output: exact zeros of both signs
    bias = g.standard_normal(m).astype(np.float32)
    perts = es.generate({"l.weight": w, "l.bias": bias}, pop_size=pop, rank=r, sigma=0.5, seed=r)
    x = g.standard_normal((rows, n) if shared else (pop, rows, n)).astype(np.float32)
    x[..., 1, 2] = np.nan
    for impl in ("auto", "array_api"):
        fused = es.perturbed_matmul(x, w, bias, perts, "l.weight", "l.bias", impl=impl, activation="relu")
        plain = F.relu(es.perturbed_matmul(x, w, bias, perts, "l.weight", "l.bias", impl=impl))
        np.testing.assert_array_equal(fused, plain)
        assert np.array_equal(np.signbit(fused), np.signbit(plain))
    with pytest.raises(ValueError, match="activation"):
        es.perturbed_matmul(x, w, bias, perts, "l.weight", "l.bias", activation="tanh")


def test_blocked_shared_products_match_the_oracle(monkeypatch):
    """Many pairs: the shared input's x B is formed over blocks of pairs; within float rounding of the array-API path."""
    from egdnp.es import _cpu

    monkeypatch.setattr(_cpu, "GRAD_BLOCK_PAIRS", 8)  # 40 pairs: 5 blocks
    monkeypatch.setattr(_cpu, "GRAD_BLOCK_MIN_PAIRS", 8)
    g = np.random.default_rng(3)
    x = g.standard_normal((9, 23)).astype(np.float32)
    w = g.standard_normal((17, 23)).astype(np.float32)
    perts = es.generate({"l.weight": w}, pop_size=80, rank=3, sigma=0.1, seed=2)
    fast = es.perturbed_matmul(x, w, None, perts, "l.weight", cache={})
    oracle = es.perturbed_matmul(x, w, None, perts, "l.weight", impl="array_api")
    np.testing.assert_allclose(fast, oracle, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_model_forward_activation_shortcuts_are_bitwise_the_layer_by_layer_forward(activation):
    """The fused ReLU and the in-place tanh of perturbed_model_forward give the layer-by-layer values exactly."""
    from egdnp.nn import functional as F

    model = nn.mlp((13, 29, 31, 5), activation=activation)
    params = model.init(seed=1)
    perts = es.generate(params, pop_size=6, rank=2, sigma=0.3, seed=4)
    x = np.random.default_rng(2).standard_normal((7, 13)).astype(np.float32)
    act = F.relu if activation == "relu" else F.tanh
    h = x
    for i in (1, 2, 3):
        h = es.perturbed_linear(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"], perts,
                                weight_key=f"fc{i}.weight", bias_key=f"fc{i}.bias")
        h = act(h) if i < 3 else h
    got = es.perturbed_model_forward(model, params, x, perts)
    np.testing.assert_array_equal(got, h)


# -- the perturbable-layer registry (issue 14: registries where people extend) ---------------------------


class Gained(nn.Layer):
    """A layer egdnp does not know: ``y = (x @ weight.T) * gain`` (a matrix and a vector parameter)."""

    prefix = "gained"

    def __init__(self, n_in, n_out):
        self.n_in, self.n_out = n_in, n_out

    def param_shapes(self):
        return {"weight": (self.n_out, self.n_in), "gain": (self.n_out,)}

    def init(self, seed, name, *, xp=None, dtype="float32"):
        params = nn.Linear(self.n_in, self.n_out, bias=False).init(seed, name, xp=xp, dtype=dtype)
        return {"weight": params["weight"], "gain": 1.5 + nn.init.zeros((self.n_out,), xp=xp, dtype=dtype)}

    def forward(self, params, state, x, ctx):
        return (x @ params["weight"].T) * params["gain"], None, state


def gained_forward(layer, params, h, perts, *, key, members, state, impl, cache):
    """What a user writes: the matrix through es.perturbed_matmul, the vector as gain + s_i eps_{p_i} per member."""
    xp = _backend.array_namespace(h)
    out = es.perturbed_matmul(h, params["weight"], None, perts, f"{key}.weight", None, members, impl=impl, cache=cache)
    noise = None if perts is None else perts.noise.get(f"{key}.gain")
    if noise is None:
        return out * params["gain"]
    start, stop = es.layers.member_range(perts, members)
    pair = xp.asarray(list(perts.pair[start:stop]), dtype=xp.int64)
    sign = xp.reshape(xp.asarray(list(perts.sign[start:stop]), dtype=h.dtype), (stop - start, 1, 1))
    gain = params["gain"] + xp.take(noise.eps, pair, axis=0)[:, None, :] * sign  # (N, 1, n_out)
    return out * gain


def test_a_user_layer_becomes_perturbable_without_editing_egdnp(xp, es_registries):
    model = nn.serial(nn.Linear(10, 8), nn.Tanh(), ("g", Gained(8, 6)), nn.ReLU(), ("head", Gained(6, 3)))
    params = model.init(seed=0, xp=xp, dtype="float64")
    perts = es.generate(params, pop_size=4, rank=2, sigma=0.1, seed=3, dtype="float64")
    assert {"g.weight", "g.gain", "head.weight", "head.gain"} <= set(perts.noise)
    x = _randn(xp, (5, 10), 1)
    with pytest.raises(ValueError, match="'g.weight' belongs to a Gained layer, which has no perturbed forward; "
                                         r"give it one with es.register_perturbed_forward\(Gained, fn\)"):
        es.perturbed_model_forward(model, params, x, perts)
    assert es.register_perturbed_forward(Gained, gained_forward) is gained_forward
    assert es.PERTURBED_FORWARDS[Gained] == es.PerturbedForward(gained_forward, 2)
    out = es.perturbed_model_forward(model, params, x, perts)
    for i in range(4):
        ref = model.apply(es.dense_perturbed_params(params, perts, i), x)
        np.testing.assert_allclose(to_numpy(out)[i], to_numpy(ref), rtol=0, atol=TOL)
    # a model that starts with it: a shared input, and nothing perturbed keeps the output shared per member
    first = nn.serial(("g", Gained(10, 3)))
    p0 = first.init(seed=1, xp=xp, dtype="float64")
    out = es.perturbed_model_forward(first, p0, x, es.generate(p0, pop_size=4, rank=1, seed=0, dtype="float64",
                                                               noise_map={"*": "frozen"}))
    assert tuple(out.shape) == (4, 5, 3)
    np.testing.assert_array_equal(to_numpy(out)[2], to_numpy(first.apply(p0, x)))


def test_a_linear_subclass_keeps_the_fused_fast_path_and_can_have_its_own_forward(es_registries, monkeypatch):
    class MyLinear(nn.Linear):
        pass

    activations = []
    matmul = es.layers.perturbed_matmul

    def recording(*args, **kw):
        activations.append(kw.get("activation"))
        return matmul(*args, **kw)

    monkeypatch.setattr(es.layers, "perturbed_matmul", recording)

    layers = lambda cls: nn.serial(("fc1", cls(12, 40)), nn.ReLU(), ("fc2", cls(40, 3)))  # noqa: E731
    params = layers(nn.Linear).init(seed=2)
    perts = es.generate(params, pop_size=6, rank=2, sigma=0.1, seed=5)
    x = np.random.default_rng(1).standard_normal((9, 12)).astype(np.float32)
    ref = es.perturbed_model_forward(layers(nn.Linear), params, x, perts)
    activations.clear()
    np.testing.assert_array_equal(es.perturbed_model_forward(layers(MyLinear), params, x, perts), ref)
    assert activations == ["relu", None]  # the ReLU after fc1 ran inside its product, as for nn.Linear
    calls = []

    def logged(layer, params, h, perts, **kw):
        calls.append(kw["key"])
        return es.perturbed_linear(h, params["weight"], params["bias"], perts, weight_key=kw["key"] + ".weight",
                                   bias_key=kw["key"] + ".bias", members=kw["members"])

    es.register_perturbed_forward(MyLinear, logged)
    np.testing.assert_array_equal(es.perturbed_model_forward(layers(MyLinear), params, x, perts), ref)
    assert calls == ["fc1", "fc2"]


def test_bad_perturbed_forward_registrations_are_clear_errors(es_registries):
    before = dict(es.PERTURBED_FORWARDS)
    with pytest.raises(TypeError, match="layer_cls=<class 'int'> must be a subclass of egdnp.nn.Layer"):
        es.register_perturbed_forward(int, gained_forward)
    with pytest.raises(TypeError, match="fn=None must be callable"):
        es.register_perturbed_forward(Gained, None)
    with pytest.raises(ValueError, match="shared_ndim=0 must be an int >= 1"):
        es.register_perturbed_forward(Gained, gained_forward, shared_ndim=0)
    with pytest.raises(ValueError, match="Linear has a built-in perturbed forward, which cannot be replaced"):
        es.register_perturbed_forward(nn.Linear, gained_forward, replace=True)
    assert es.PERTURBED_FORWARDS == before  # nothing half-registered
    es.register_perturbed_forward(Gained, gained_forward)
    with pytest.raises(ValueError, match="Gained already has a perturbed forward .*replace=True"):
        es.register_perturbed_forward(Gained, print)
    es.register_perturbed_forward(Gained, print, replace=True, shared_ndim=3)
    assert es.PERTURBED_FORWARDS[Gained] == es.PerturbedForward(print, 3)
