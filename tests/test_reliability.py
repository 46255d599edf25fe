"""Issue 13: the bugs, silent results and guards, one test each (each failed before its fix).

The broad table of bad inputs is tests/test_bad_input.py; this file holds the
cases that need more than "raises": a resumed run that must equal an
uninterrupted one, counts of device syncs, values that must agree.
"""

import array_api_compat.numpy as compat_numpy
import array_api_strict as strict
import numpy as np
import pytest

from egdnp import data, es, nn, optim, rng
from egdnp.optim import egd as egd_mod


def _quadratic_closure(params):
    return float(sum(np.sum(v.astype(np.float64) ** 2) for v in params.values()))


# ----------------------------------------------------------------------------
# EGD resumes with its own seed
# ----------------------------------------------------------------------------
def test_egd_cycle_uses_the_states_seed_not_the_configs():
    params = {"w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)}
    seed5 = egd_mod.egd(lr=0.1, evo_interval=1, pop_size=6, sigma=0.5, seed=5)
    seed0 = egd_mod.egd(lr=0.1, evo_interval=1, pop_size=6, sigma=0.5, seed=0)
    state = seed5.init(params)
    want, _, rep5 = seed5.update(None, state, params, closure=_quadratic_closure)
    got, _, rep0 = seed0.update(None, state, params, closure=_quadratic_closure)
    assert rep0.member_losses == rep5.member_losses
    np.testing.assert_array_equal(got["w"], want["w"])
    # and the state's seed does change the noise: a seed-0 state under the same optimiser differs
    other, _, _ = seed5.update(None, seed0.init(params), params, closure=_quadratic_closure)
    assert not np.array_equal(other["w"], want["w"])


def test_egd_checkpoint_of_a_seed5_run_resumes_with_seed5_noise_in_an_egd_built_with_seed0(tmp_path):
    params = {"w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4), "b": np.ones(3, np.float32)}
    grads = {"w": np.full((3, 4), 0.01, np.float32), "b": np.full(3, 0.02, np.float32)}
    knobs = dict(lr=0.1, momentum=0.9, evo_interval=2, pop_size=6, sigma=0.3)
    run = optim.EGD(params, seed=5, **knobs)
    for _ in range(4):
        run.step(grads, closure=_quadratic_closure)
    run.save(tmp_path / "ck.npz")
    for _ in range(4):
        run.step(grads, closure=_quadratic_closure)
    resumed = optim.EGD(params, seed=0, **knobs)
    resumed.load(tmp_path / "ck.npz")
    assert resumed.state.seed == 5
    for _ in range(4):
        resumed.step(grads, closure=_quadratic_closure)
    for k in params:
        np.testing.assert_array_equal(resumed.params[k], run.params[k])


# ----------------------------------------------------------------------------
# integer fitness
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["auto", "array_api"])
def test_centered_ranks_of_integer_fitness_are_those_of_the_same_floats(impl):
    f = np.array([3, 1, 2, 2, -7], dtype=np.int64)
    want = rng.centered_ranks(f.astype(np.float64), impl=impl)
    got = rng.centered_ranks(f, impl=impl)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(es.centered_ranks(f), want)
    np.testing.assert_array_equal(rng.centered_ranks(np.array([3, 1, 2])), [0.5, -0.5, 0.0])


def test_centered_ranks_of_integer_fitness_on_array_api_strict():
    got = rng.centered_ranks(strict.asarray([3, 1, 2]))
    assert got.dtype == strict.float64
    np.testing.assert_array_equal(np.asarray(got), [0.5, -0.5, 0.0])
    np.testing.assert_array_equal(np.asarray(es.centered_ranks(strict.asarray([3, 1, 2]))), [0.5, -0.5, 0.0])


# ----------------------------------------------------------------------------
# booleans are bool, rates in [0, 1), sizes integral
# ----------------------------------------------------------------------------
def test_truthy_strings_rates_and_float_sizes_are_refused():
    with pytest.raises(TypeError, match="antithetic"):
        es.Eggroll(pop_size=4, antithetic="no")
    with pytest.raises(ValueError, match="dropout"):
        nn.mlp((4, 3, 2), dropout=-0.5)
    x, y = np.zeros((6, 2), np.float32), np.zeros(6, np.int64)
    for bad in (2.5, "4"):
        with pytest.raises(TypeError, match="batch_size"):
            data.iterate_batches(x, y, bad, seed=0)
    with pytest.raises(ValueError, match="epoch=-1"):
        data.iterate_batches(x, y, 2, seed=0, epoch=-1)
    with pytest.raises(TypeError, match="x is a list"):
        data.iterate_batches([1, 2], [0, 1], 1, seed=0)


# ----------------------------------------------------------------------------
# files that are not checkpoints, checkpoints of other models
# ----------------------------------------------------------------------------
def _write_bad_files(tmp_path, good):
    zero = tmp_path / "zero.npz"
    zero.write_bytes(b"")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3))
    text = tmp_path / "notes.npz"
    text.write_text("not a zip file\n")
    return [zero, truncated, foreign, text]


def test_load_state_names_the_file_for_empty_truncated_and_foreign_files(tmp_path):
    params = {"w": np.ones((3, 4), np.float32)}
    good = tmp_path / "good.npz"
    optim.save_state(good, optim.sgd(0.1, momentum=0.9).init(params))
    for path in _write_bad_files(tmp_path, good):
        before = path.read_bytes()
        with pytest.raises(ValueError, match=path.name):
            optim.load_state(path, optim.SGDState)
        with pytest.raises(ValueError, match=path.name):
            egd_mod.load(path)
        with pytest.raises(ValueError, match=path.name):
            optim.EGD(params).load(path)
        assert path.read_bytes() == before


def test_egd_load_refuses_a_checkpoint_of_another_model(tmp_path):
    small = {"w": np.ones((3, 4), np.float32)}
    big = {"w": np.ones((5, 4), np.float32)}
    optim.EGD(big, momentum=0.9).save(tmp_path / "big.npz")
    target = optim.EGD(small, momentum=0.9)
    params_before, state_before = dict(target.params), target.state
    with pytest.raises(ValueError, match=r"big\.npz.*shape \(5, 4\)"):
        target.load(tmp_path / "big.npz")
    assert target.params["w"].shape == (3, 4) and target.state is state_before
    np.testing.assert_array_equal(target.params["w"], params_before["w"])
    egd_mod.save(tmp_path / "state.npz", egd_mod.egd(momentum=0.9).init(big))
    with pytest.raises(ValueError, match=r"state\.npz"):
        egd_mod.load(tmp_path / "state.npz", params=small)


# ----------------------------------------------------------------------------
# optimiser inputs
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: optim.sgd(0.1, momentum=0.9), lambda: optim.adam(1e-3)])
def test_integer_and_complex_gradients_are_refused_and_params_keep_their_dtype(make):
    opt = make()
    params = {"w": np.ones(3, np.float32)}
    state = opt.init(params)
    for bad in (np.ones(3, np.int32), np.ones(3, np.complex64), np.ones(3, np.float64)):
        with pytest.raises(TypeError, match=r"grads\['w'\] has dtype"):
            opt.update({"w": bad}, state, params)
    with pytest.raises(TypeError, match=r"grads\['w'\] is a list"):
        opt.update({"w": [1.0, 2.0, 3.0]}, state, params)
    with pytest.raises(TypeError, match=r"params\['w'\] has dtype int32"):
        opt.init({"w": np.ones(3, np.int32)})


def test_momentum_buffers_of_other_shapes_and_missing_adam_steps_are_named():
    params = {"w": np.ones((3, 4), np.float32)}
    sgd = optim.sgd(0.1, momentum=0.9)
    other = sgd.init({"w": np.ones((4, 3), np.float32)})
    with pytest.raises(ValueError, match=r"state\.momentum\['w'\] has shape \(4, 3\)"):
        sgd.update({"w": np.ones((3, 4), np.float32)}, other, params)
    egd = egd_mod.egd(momentum=0.9, evo_interval=0)
    with pytest.raises(ValueError, match=r"state\.momentum\['w'\] has shape \(4, 3\)"):
        egd.update(None, egd.init({"w": np.ones((4, 3), np.float32)}), params)
    adam = optim.adam()
    state = adam.init(params)._replace(steps={})
    with pytest.raises(ValueError, match=r"state\.steps"):
        adam.update({"w": np.ones((3, 4), np.float32)}, state, params)


def test_int_params_are_refused_by_every_optimiser_and_eggroll():
    ints = {"w.weight": np.ones((3, 4), np.int32)}
    for opt in (optim.sgd(0.1), optim.sgd(0.1, momentum=0.9), optim.adam(), optim.adamw(), egd_mod.egd()):
        with pytest.raises(TypeError, match=r"params\['w.weight'\] has dtype int32"):
            opt.init(ints)
    with pytest.raises(TypeError, match=r"params\['w.weight'\] has dtype int32"):
        es.Eggroll(pop_size=4).init(ints)


# ----------------------------------------------------------------------------
# mixed array libraries: one TypeError naming both and the argument
# ----------------------------------------------------------------------------
def test_mixed_array_libraries_get_one_clear_type_error():
    model = nn.mlp((4, 3, 2))
    params = model.init(0)
    x = np.ones((2, 4), np.float32)
    y_strict = strict.asarray([0, 1])
    with pytest.raises(TypeError, match=r"y is an array of array_api_strict but x is of numpy"):
        model.loss_and_grad(params, x, y_strict)
    mixed = dict(params, **{"fc2.bias": strict.asarray(np.asarray(params["fc2.bias"]))})
    with pytest.raises(TypeError, match=r"params\['fc2.bias'\] is an array of array_api_strict.*numpy"):
        model.forward(mixed, x)
    opt = optim.sgd(0.1)
    with pytest.raises(TypeError, match=r"params\['fc2.bias'\] is an array of array_api_strict.*numpy"):
        opt.init(mixed)
    strict_params = model.init(0, xp=strict)
    _, grads = model.loss_and_grad(params, x, np.array([0, 1]))
    with pytest.raises(TypeError, match=r"grads\['fc1.weight'\] is an array of numpy but params\['fc1.weight'\] is of array_api_strict"):
        opt.update(grads, opt.init(strict_params), strict_params)
    strategy = es.Eggroll(pop_size=4)
    state = strategy.init(params, seed=0)
    perts = strategy.ask(state)
    with pytest.raises(TypeError, match=r"fitness is an array of array_api_strict but state.params is of numpy"):
        strategy.tell(state, perts, strict.asarray([0.0, 1.0, 2.0, 3.0]))


# ----------------------------------------------------------------------------
# EGGROLL construction and tell
# ----------------------------------------------------------------------------
def test_eggroll_checks_its_arguments_at_construction():
    with pytest.raises(TypeError, match=r"optimizer='adam'.*optim.adam\(1e-3\)"):
        es.Eggroll(pop_size=4, optimizer="adam")
    with pytest.raises(ValueError, match="noise_reuse=-1"):
        es.Eggroll(pop_size=4, noise_reuse=-1)
    with pytest.raises(ValueError, match="group_size=-1"):
        es.Eggroll(pop_size=4, fitness="group_zscore", group_size=-1)
    with pytest.raises(ValueError, match="pop_size=1"):
        es.Eggroll(pop_size=1, antithetic=False)
    for limit_breaker in (2**34, 2**32):
        with pytest.raises(ValueError, match="pop_size"):
            es.Eggroll(pop_size=limit_breaker)
    with pytest.raises(ValueError, match="pop_size"):
        egd_mod.egd(pop_size=2**32)
    assert es.Eggroll(pop_size=rng.MAX_POP_SIZE - 1).pop_size == 2**32 - 2  # the limit itself is allowed


def test_tell_with_a_params_key_the_perts_do_not_cover_raises_with_sgd_and_adam():
    params = {"w.weight": np.ones((3, 4), np.float32)}
    for opt in (optim.sgd(0.1), optim.adam(1e-3)):
        strategy = es.Eggroll(pop_size=4, optimizer=opt)
        state = strategy.init(params, seed=0)
        perts = strategy.ask(state)
        grown = state._replace(params=dict(state.params, **{"v.weight": np.ones((2, 2), np.float32)}))
        with pytest.raises(ValueError, match=r"v\.weight"):
            strategy.tell(grown, perts, np.arange(4.0))


def test_tell_checks_fitness_for_finite_values_once(monkeypatch):
    params = nn.mlp((4, 3, 2)).init(0)
    strategy = es.Eggroll(pop_size=8)
    state = strategy.init(params, seed=0)
    perts = strategy.ask(state)
    calls = []
    real = compat_numpy.isfinite
    monkeypatch.setattr(compat_numpy, "isfinite", lambda a: calls.append(a.shape) or real(a))
    strategy.tell(state, perts, np.arange(8.0))
    assert calls == [(8,)]


def test_population_fitness_refuses_a_fitness_of_the_wrong_shape():
    model = nn.mlp((4, 3, 2))
    params = model.init(0)
    perts = es.generate(params, pop_size=4, seed=0)
    x = np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"fitness_fn returned \(4, 5\)"):
        es.population_fitness(model, params, x, perts, lambda out: out[..., 0])


# ----------------------------------------------------------------------------
# silent results in nn and rng
# ----------------------------------------------------------------------------
def test_empty_batches_raise_instead_of_a_zero_loss():
    model = nn.mlp((4, 3, 2))
    params = model.init(0)
    with pytest.raises(ValueError, match="empty batch"):
        model.loss_and_grad(params, np.ones((0, 4), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="empty batch"):
        model.loss_and_grad(params, np.ones((0, 4), np.float32), np.zeros((0, 2), np.float32), loss="mse")
    with pytest.raises(ValueError, match="pred holds an empty batch"):
        nn.mse(np.ones((0, 2), np.float32), np.ones((0, 2), np.float32))
    with pytest.raises(ValueError, match="pred holds an empty batch"):
        nn.mse_grad(np.ones((0, 2), np.float32), np.ones((0, 2), np.float32))
    with pytest.raises(ValueError, match="logits holds an empty batch"):
        nn.softmax_cross_entropy(np.ones((0, 2), np.float32), np.zeros(0, np.int64))
    assert float(nn.mse(np.ones((0, 2), np.float32), np.ones((0, 2), np.float32), reduction="sum")) == 0.0


def test_batch_norm_training_on_a_batch_of_one_raises_and_moves_nothing():
    model = nn.mlp((4, 3, 2), batch_norm=True)
    params, state = model.init(0), model.init_state()
    before = {k: v.copy() for k, v in state.items()}
    with pytest.raises(ValueError, match="bn1.*batch of at least 2"):
        model.loss_and_grad(params, np.ones((1, 4), np.float32), np.zeros(1, np.int64), state=state)
    for k in state:
        np.testing.assert_array_equal(state[k], before[k])
    model.forward(params, np.ones((1, 4), np.float32), state=state, train=False)  # eval mode is fine
    cnn = nn.cnn(image_size=8, channels=(2, 2), batch_norm=True)
    cnn.loss_and_grad(cnn.init(0), np.ones((1, 1, 8, 8), np.float32), np.zeros(1, np.int64),
                      state=cnn.init_state())  # one image still has H*W values per channel


def test_empty_stream_name_is_rejected():
    with pytest.raises(ValueError, match="stream=''"):
        rng.normal((3,), seed=0, stream="")
    with pytest.raises(ValueError, match="stream=''"):
        rng.uniform((3,), seed=0, stream="")


# ----------------------------------------------------------------------------
# memory guards
# ----------------------------------------------------------------------------
def test_egd_array_storage_refuses_a_population_that_cannot_fit_before_allocating(monkeypatch):
    from egdnp import _backend

    monkeypatch.setattr(_backend, "host_memory_bytes", lambda: 10**9)
    params = {"w": np.ones((1000, 1000), np.float32)}  # 4 MB a member
    opt = egd_mod.egd(evo_interval=1, pop_size=2**24)
    with pytest.raises(MemoryError, match=r"needs 16,777,228,000,000 bytes .* 1,000,000,000 bytes"):
        opt.init(params)
    assert opt.workspace.host_allocations == 0
    # seed storage keeps no population buffers: the same population is fine
    egd_mod.egd(evo_interval=1, pop_size=2**24, population_storage="seed").init(params)
    # with a mutate_filter the cycle checks (the filter runs once per cycle)
    filtered = egd_mod.egd(evo_interval=1, pop_size=2**24, mutate_filter=lambda n, p: True)
    state = filtered.init(params)
    with pytest.raises(MemoryError, match="population_storage='seed'"):
        filtered.update(None, state, params, closure=_quadratic_closure)
