"""EGGROLL checkpoints: N generations == N/2 + save + load into a fresh Eggroll + N/2, bit for bit;
nested optimiser states round-trip with their types; mismatched strategies are refused."""

from __future__ import annotations

import numpy as np
import pytest

from egdnp import es, nn, optim

MODEL = nn.mlp((12, 8, 3), activation="tanh")


def _batch(g):
    r = np.random.default_rng(100 + g)
    return r.random((16, 12), dtype=np.float32), r.integers(0, 3, 16)


def _run(strategy, state, generations):
    for _ in range(generations):
        xb, yb = _batch(state.generation)
        perts = strategy.ask(state)
        f = es.population_fitness(MODEL, state.params, xb, perts, lambda out: es.classification_fitness(out, yb))
        state, _ = strategy.tell(state, perts, f)
    return state


def _make(**kw):
    cfg = dict(pop_size=16, rank=2, sigma=0.05, optimizer=optim.adam(0.02))
    cfg.update(kw)
    return es.Eggroll(**cfg)


@pytest.mark.parametrize("kw", [{}, {"optimizer": optim.sgd(0.1, momentum=0.9, nesterov=True)},
                                {"convention": "hyperscalees-jax", "noise_reuse": 2}])
def test_half_save_load_half_equals_whole_bit_for_bit(tmp_path, kw):
    n = 6
    whole = _run(_make(**kw), _make(**kw).init(MODEL.init(seed=0), seed=7), n)
    half = _run(_make(**kw), _make(**kw).init(MODEL.init(seed=0), seed=7), n // 2)
    path = tmp_path / "run.npz"
    _make(**kw).save(path, half)
    fresh = _make(**kw)
    resumed = fresh.load(path, like=MODEL.init(seed=0))
    assert resumed.generation == n // 2 and resumed.seed == 7
    assert type(resumed.opt_state) is type(half.opt_state)
    resumed = _run(fresh, resumed, n - n // 2)
    assert resumed.generation == whole.generation == n
    for k in whole.params:
        np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    for a, b in zip(resumed.opt_state, whole.opt_state):
        if isinstance(a, dict):
            for k in a:
                np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
        else:
            assert a == b


def test_optim_save_state_round_trips_a_nested_state_with_its_type(tmp_path):
    """optim.save_state on an EggrollState: opt_state comes back as an AdamState, and tell works."""
    strategy = _make()
    state = _run(strategy, strategy.init(MODEL.init(seed=0), seed=1), 2)
    path = tmp_path / "state.npz"
    optim.save_state(path, state)
    loaded = optim.load_state(path, es.EggrollState)
    assert type(loaded.opt_state) is optim.AdamState
    a, b = _run(strategy, state, 1), _run(strategy, loaded, 1)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_unknown_nested_type_is_a_clear_error(tmp_path):
    from typing import NamedTuple

    class Inner(NamedTuple):
        x: int

    class Outer(NamedTuple):
        inner: object

    path = tmp_path / "s.npz"
    optim.save_state(path, Outer(Inner(3)))
    with pytest.raises(ValueError, match="register_state_type"):
        optim.load_state(path, Outer)
    optim.register_state_type(Inner)
    assert optim.load_state(path, Outer) == Outer(Inner(3))
    with pytest.raises(TypeError, match="NamedTuple"):
        optim.register_state_type(dict)


@pytest.mark.parametrize("change, name", [
    ({"pop_size": 32}, "pop_size"), ({"rank": 1}, "rank"), ({"sigma": 0.1}, "sigma"),
    ({"antithetic": False}, "antithetic"), ({"convention": "hyperscalees-jax"}, "convention"),
    ({"noise_reuse": 3}, "noise_reuse"), ({"fitness": "zscore_ddof1"}, "fitness"),
])
def test_loading_into_a_strategy_with_other_noise_raises(tmp_path, change, name):
    strategy = _make()
    state = strategy.init(MODEL.init(seed=0), seed=1)
    path = tmp_path / "ck.npz"
    strategy.save(path, state)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"{name}=.*this Eggroll has {name}=") as err:
        _make(**change).load(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == before


def test_loading_other_shapes_optimiser_or_file_raises(tmp_path):
    strategy = _make()
    path = tmp_path / "ck.npz"
    strategy.save(path, strategy.init(MODEL.init(seed=0), seed=1))
    with pytest.raises(ValueError, match="fc1.weight"):
        strategy.load(path, like=nn.mlp((12, 9, 3)).init(seed=0))
    with pytest.raises(ValueError, match="parameters"):
        strategy.load(path, like=nn.mlp((12, 8, 8, 3)).init(seed=0))
    with pytest.raises(ValueError, match="SGDState"):
        _make(optimizer=optim.sgd(0.1)).load(path)
    other = tmp_path / "sgd.npz"
    optim.save_state(other, optim.sgd(0.1).init(MODEL.init(seed=0)))
    with pytest.raises(ValueError, match="not an EGGROLL checkpoint"):
        strategy.load(other)



def test_a_shaping_function_is_saved_by_its_registered_name_or_refused(tmp_path, monkeypatch):
    """A checkpoint records the shaping by name: a registered function resumes under its name or as itself,
    bit for bit; an unregistered one is refused before anything is written."""

    def signs(f):
        return np.sign(f - np.median(f)).astype(f.dtype)

    path = tmp_path / "run.npz"
    bare = _make(fitness=signs)
    with pytest.raises(ValueError, match="fitness=signs is a shaping function without a registered name.*"
                                         "register_fitness_shaping\\('signs', fn\\)"):
        bare.save(path, bare.init(MODEL.init(seed=0), seed=7))
    assert not path.exists()
    monkeypatch.setitem(es.FITNESS_SHAPINGS, "signs", signs)
    assert es.checkpoint.noise_settings(bare)["fitness"] == "signs"
    whole = _run(_make(fitness=signs), _make(fitness=signs).init(MODEL.init(seed=0), seed=7), 4)
    _make(fitness=signs).save(path, _run(_make(fitness=signs), _make(fitness=signs).init(MODEL.init(seed=0), seed=7), 2))
    for fitness in ("signs", signs):
        fresh = _make(fitness=fitness)
        resumed = _run(fresh, fresh.load(path, like=MODEL.init(seed=0)), 2)
        for k in whole.params:
            np.testing.assert_array_equal(resumed.params[k], whole.params[k])
    with pytest.raises(ValueError, match="fitness='signs', but this Eggroll has fitness='zscore'"):
        _make(fitness="zscore").load(path)
