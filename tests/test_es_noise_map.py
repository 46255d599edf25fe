"""Per-parameter noise map and stacked (L, m, n) layers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import to_numpy
from egdnp import es, nn, rng

TOL = 1e-12


def _params(g):
    return {
        "emb.weight": g.standard_normal((9, 4)),     # an embedding table: excluded
        "head.weight": g.standard_normal((1, 4)),    # a (1, d) matrix: full rank
        "head.bias": g.standard_normal(1),
        "fc1.weight": g.standard_normal((5, 4)),
        "fc1.bias": g.standard_normal(5),
        "fc2.bias": g.standard_normal(3),
        "stack.weight": g.standard_normal((3, 4, 4)),  # three stacked 4x4 layers
        "stack.bias": g.standard_normal((3, 4)),
    }


def test_noise_map_forms_and_precedence():
    p = _params(np.random.default_rng(0))
    default = es.plan_parameters(p)
    assert default["emb.weight"] == default["head.weight"] == default["stack.weight"] == "lowrank"
    assert default["fc1.bias"] == "full"
    assert default["stack.bias"] == "lowrank"  # a stacked bias (L, m) looks like a matrix: map it to "full"
    by_dict = es.plan_parameters(p, noise_map={"emb.weight": "frozen", "head.weight": "full", "*.bias": "frozen",
                                               "fc1.bias": "full"})
    assert by_dict["emb.weight"] == "frozen" and by_dict["head.weight"] == "full"
    assert by_dict["fc1.bias"] == "full"  # an exact key beats a pattern
    assert by_dict["head.bias"] == by_dict["fc2.bias"] == by_dict["stack.bias"] == "frozen"
    assert by_dict["fc1.weight"] == "lowrank"  # not covered: the default
    calls = []

    def fn(name, value):
        calls.append((name, tuple(value.shape)))
        return "full" if value.shape[0] == 1 else None

    by_fn = es.plan_parameters(p, noise_map=fn)
    assert by_fn["head.weight"] == by_fn["head.bias"] == "full" and by_fn["fc1.weight"] == "lowrank"
    assert ("stack.weight", (3, 4, 4)) in calls  # the callable sees (name, array)
    # the map overrides the torch convention's weight-names-only rule too
    torch_plan = es.plan_parameters(p, convention="hyperscalees-torch", noise_map={"fc1.bias": "full"})
    assert torch_plan["fc1.bias"] == "full" and torch_plan["head.bias"] == "frozen"


def test_noise_map_errors():
    p = _params(np.random.default_rng(0))
    with pytest.raises(ValueError, match="'fc9.weight', which is not a parameter"):
        es.plan_parameters(p, noise_map={"fc9.weight": "frozen"})
    with pytest.raises(ValueError, match="must be one of"):
        es.plan_parameters(p, noise_map={"fc1.weight": "lora"})
    with pytest.raises(ValueError, match="returned 'dense'"):
        es.plan_parameters(p, noise_map=lambda name, value: "dense")
    with pytest.raises(ValueError, match="low-rank noise on 'fc1.bias'"):
        es.plan_parameters(p, noise_map={"fc1.bias": "lowrank"})
    with pytest.raises(TypeError, match="noise_map must be"):
        es.plan_parameters(p, noise_map=["fc1.weight"])
    with pytest.raises(TypeError, match="noise_map must be"):
        es.Eggroll(pop_size=4, noise_map="frozen")


def test_full_rank_matrix_and_frozen_embedding_forward_and_gradient(xp):
    """A (1, d) matrix marked full rank gets sigma*eps noise (forward = dense member, gradient = sum of f E);
    an excluded embedding has no noise and no gradient."""
    g = np.random.default_rng(1)
    p = {k: xp.asarray(v) for k, v in _params(g).items()}
    nmap = {"emb.weight": "frozen", "head.weight": "full"}
    perts = es.generate(p, pop_size=6, rank=2, sigma=0.2, seed=4, generation=1, dtype="float64", noise_map=nmap)
    assert "emb.weight" not in perts.noise
    item = perts.noise["head.weight"]
    assert isinstance(item, es.FullNoise) and tuple(item.eps.shape) == (3, 1, 4)
    # addressed like a vector's noise: the stream is the parameter's name
    np.testing.assert_allclose(to_numpy(item.eps[1, ...]).ravel(),
                               0.2 * to_numpy(rng.normal((4,), seed=4, stream="head.weight", member=1, generation=1,
                                                         dtype="float64", xp=xp)), rtol=0, atol=1e-15)
    x = xp.asarray(g.standard_normal((7, 4)))
    out = es.perturbed_linear(x, p["head.weight"], p["head.bias"], perts, weight_key="head.weight", bias_key="head.bias")
    for i in range(6):
        d = es.dense_perturbed_params(p, perts, i)
        ref = to_numpy(x) @ to_numpy(d["head.weight"]).T + to_numpy(d["head.bias"])
        np.testing.assert_allclose(to_numpy(out)[i], ref, rtol=0, atol=TOL)
    f_hat = xp.asarray(np.linspace(-1, 1, 6))
    grads = es.loss_gradients(f_hat, perts, p)
    assert grads["emb.weight"] is None
    ref = sum(float(to_numpy(f_hat)[i]) * perts.sign[i] * to_numpy(item.eps)[perts.pair[i]] for i in range(6))
    np.testing.assert_allclose(-to_numpy(grads["head.weight"]), ref / (6 * 0.2), rtol=0, atol=TOL)


def test_stacked_layers_rank_r_per_slice(xp):
    """(L, m, n): rank-r factors per slice addressed by "name[l]"; the perturbed forward of slice l equals
    the dense W[l] + A_l B_l^T member; the gradient is the per-slice true sum."""
    g = np.random.default_rng(2)
    p = {"stack.weight": xp.asarray(g.standard_normal((3, 4, 5))), "stack.bias": xp.asarray(g.standard_normal((3, 4)))}
    sigma, r, pop = 0.3, 2, 6
    nmap = {"stack.bias": "full"}  # (L, m) biases: full rank per slice row
    perts = es.generate(p, pop_size=pop, rank=r, sigma=sigma, seed=8, generation=2, dtype="float64", noise_map=nmap)
    item = perts.noise["stack.weight"]
    assert isinstance(item, es.StackedLowRankNoise) and tuple(item.A.shape) == (3, 3, 4, r)
    assert tuple(item.B.shape) == (3, 3, 5, r)
    for sl in range(3):  # slice l, pair 1: L = normal((m+n) r, stream="stack.weight[l]"), B first
        L = to_numpy(rng.normal(((4 + 5) * r,), seed=8, stream=es.perturbations.slice_stream("stack.weight", sl),
                                member=1, generation=2, dtype="float64", xp=xp))
        np.testing.assert_allclose(to_numpy(item.B[1, sl, ...]), L[: 5 * r].reshape(5, r), rtol=0, atol=1e-15)
        np.testing.assert_allclose(to_numpy(item.A[1, sl, ...]), sigma / np.sqrt(r) * L[5 * r:].reshape(4, r), rtol=0, atol=1e-15)
    # every slice applied to the same input, each through the ordinary perturbed linear
    x = xp.asarray(g.standard_normal((2, 5)))
    outs = []
    for sl in range(3):
        sliced = es.slice_perturbations(perts, {"stack.weight": sl, "stack.bias": sl})
        outs.append(es.perturbed_linear(x, p["stack.weight"][sl, ...], p["stack.bias"][sl, ...], sliced,
                                        weight_key="stack.weight", bias_key="stack.bias"))
    for i in range(pop):
        d = es.dense_perturbed_params(p, perts, i)
        for sl in range(3):
            ref = to_numpy(x) @ to_numpy(d["stack.weight"])[sl].T + to_numpy(d["stack.bias"])[sl]
            np.testing.assert_allclose(to_numpy(outs[sl])[i], ref, rtol=0, atol=TOL)
    with pytest.raises(TypeError, match="slice_perturbations"):
        es.perturbed_linear(x, p["stack.weight"][0, ...], None, perts, weight_key="stack.weight")
    f_hat = xp.asarray(np.array([0.5, -1.0, 2.0, 0.0, -0.25, 1.5]))
    for conv in ("egdnp", "hyperscalees-jax"):
        pc = es.generate(p, pop_size=pop, rank=r, sigma=sigma, seed=8, generation=2, dtype="float64", convention=conv,
                         noise_map=nmap)
        g_es = es.es_gradient(f_hat, pc)["stack.weight"]
        c = 1 / (pop * sigma) if conv == "egdnp" else 1 / np.sqrt(pop)
        A, B = to_numpy(pc.noise["stack.weight"].A), to_numpy(pc.noise["stack.weight"].B)
        ref = np.zeros((3, 4, 5))
        for i in range(pop):  # the official scan map: every slice's own _simple_lora_update
            k, s = pc.pair[i], pc.sign[i]
            for sl in range(3):
                ref[sl] += to_numpy(f_hat)[i] * s * A[k, sl] @ B[k, sl].T
        np.testing.assert_allclose(to_numpy(g_es), c * ref, rtol=0, atol=TOL)


def test_stacked_factors_from_a_port_and_rank_check():
    g = np.random.default_rng(3)
    p = {"s.weight": g.standard_normal((2, 3, 4))}
    a, b = g.standard_normal((2, 2, 3, 1)), g.standard_normal((2, 2, 4, 1))
    perts = es.generate(p, pop_size=4, rank=1, sigma=0.5, seed=None, factors={"s.weight": (a, b)}, dtype="float64")
    np.testing.assert_allclose(perts.noise["s.weight"].A, 0.5 * a, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"expected A \(2, 2, 3, 1\)"):
        es.generate(p, pop_size=4, rank=1, seed=None, factors={"s.weight": (a[:, :1], b)}, dtype="float64")
    with pytest.raises(ValueError, match="exceeds min"):
        es.generate(p, pop_size=4, rank=4, seed=0)


def test_eggroll_with_noise_map_and_a_residual_model():
    """A residual MLP with the first layer's weight excluded and LayerNorms full rank: the excluded
    weight does not move, the others do (one tell)."""
    model = nn.residual_mlp(4, 2, width=4, depth=1, hidden=6)
    params = model.init(0, dtype="float64")
    strategy = es.Eggroll(pop_size=8, rank=1, sigma=0.1, noise_map={"fc_in.*": "frozen"})
    state = strategy.init(params, seed=1)
    perts = strategy.ask(state)
    assert not any(k.startswith("fc_in.") for k in perts.noise)
    x = np.random.default_rng(0).standard_normal((5, 4))
    y = np.array([0, 1, 0, 1, 1])
    f = es.population_fitness(model, state.params, x, perts, lambda out: es.classification_fitness(out, y))
    new, _ = strategy.tell(state, perts, f)
    assert np.array_equal(new.params["fc_in.weight"], params["fc_in.weight"])
    assert not np.array_equal(new.params["block1.fc1.weight"], params["block1.fc1.weight"])
    assert not np.array_equal(new.params["block1.ln.weight"], params["block1.ln.weight"])


@pytest.mark.parametrize("matrix_noise", ["lowrank", "full", "sparse"])
def test_pair_windows_draw_the_same_noise(matrix_noise):
    """ask/generate(pairs=(lo, hi)) (a distributed worker's share) draws exactly pairs lo..hi-1 of the
    whole population's noise, for stacked, full-rank and sparse matrices too."""
    g = np.random.default_rng(4)
    p = {"a.weight": g.standard_normal((4, 5)), "a.bias": g.standard_normal(4)}
    if matrix_noise == "lowrank":
        p["s.weight"] = g.standard_normal((2, 3, 4))
    kw = dict(pop_size=8, rank=1, sigma=0.3, seed=6, generation=3, dtype="float64", matrix_noise=matrix_noise)
    whole = es.generate(p, **kw)
    part = es.generate(p, pairs=(1, 3), **kw)
    assert part.first_pair == 1 and part.pop_size == 4
    for key, item in whole.noise.items():
        for field, value in item._asdict().items():
            if field != "shape":
                np.testing.assert_array_equal(getattr(part.noise[key], field), value[1:3], err_msg=f"{key}.{field}")


def test_checkpoint_records_noise_map_and_variant(tmp_path):
    """A run saved with a noise map (or by a variant) resumes only with the same map / variant settings."""
    params = {"a.weight": np.ones((3, 4)), "a.bias": np.zeros(3)}
    s = es.Eggroll(pop_size=4, noise_map={"a.bias": "frozen"})
    path = tmp_path / "run.npz"
    s.save(path, s.init(params, seed=1))
    assert es.Eggroll(pop_size=4, noise_map={"a.bias": "frozen"}).load(path).seed == 1
    with pytest.raises(ValueError, match="noise_map=None"):
        es.Eggroll(pop_size=4).load(path)
    b = es.EggrollBaseline(pop_size=4, group_size=4, clip_norm=2.0)
    b.save(path, b.init(params, seed=2))
    assert es.EggrollBaseline(pop_size=4, group_size=4, clip_norm=2.0).load(path).seed == 2
    with pytest.raises(ValueError, match="clip_norm"):
        es.EggrollBaseline(pop_size=4, group_size=4, clip_norm=1.0).load(path)
    with pytest.raises(ValueError, match="strategy="):
        es.SparseES(pop_size=4).load(path)


@pytest.mark.parametrize("kind", ["full", "lowrank"])
def test_relu_after_a_full_rank_or_lowrank_linear_in_the_model_forward(xp, kind):
    """The whole-model forward fuses a ReLU after a Linear into its product; with a full-rank weight
    (noise map) the ReLU must still be applied: every member equals the dense member's forward."""
    model = nn.mlp((6, 5, 3), activation="relu")
    params = model.init(seed=2, dtype="float64", xp=xp)
    perts = es.generate(params, pop_size=4, rank=1, sigma=0.5, seed=3, dtype="float64",
                        noise_map={"fc1.weight": kind})
    x = xp.asarray(np.random.default_rng(0).standard_normal((7, 6)))
    out = to_numpy(es.perturbed_model_forward(model, params, x, perts))
    for i in range(4):
        ref = to_numpy(model.apply(es.dense_perturbed_params(params, perts, i), x))
        np.testing.assert_allclose(out[i], ref, rtol=0, atol=1e-12)
