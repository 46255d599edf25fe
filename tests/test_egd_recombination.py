"""EGD's recombination registry, and state files that record the recombination's name.

``tests/egd_state_files`` holds files written by the code before the name was
recorded (main at 20f3120, see the README there): a state,
a torch-style checkpoint, and the parameters that code reached three updates
later (the bit-for-bit resume target).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from egdnp import rng
from egdnp.optim import _egd_recombination
from egdnp.optim import egd as E

FILES = Path(__file__).parent / "egd_state_files"
V1 = dict(lr=0.1, momentum=0.9, evo_interval=2, pop_size=4, sigma=0.05, seed=7, recombine="softmax",
          temperature=0.5)


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch):
    """Every test registers into its own copy of the registry."""
    monkeypatch.setattr(_egd_recombination, "_RULES", dict(_egd_recombination._RULES))


def _closure(p):
    return float(np.sum(p["w"] ** 2) + np.sum(p["b"] ** 2))


def _grads(p):
    return {"w": 2 * p["w"], "b": 2 * p["b"]}


def _v1_params():
    return {"w": rng.normal((3, 2), seed=1, stream="w"), "b": rng.normal((2,), seed=1, stream="b")}


def _run(opt, params, state, n):
    for _ in range(n):
        params, state, _ = opt.update(_grads(params), state, params, _closure)
    return params, state


def _params(seed=3):
    return {"w": rng.normal((6, 5), seed=seed, stream="w"), "b": rng.normal((5,), seed=seed, stream="b")}


# ----------------------------------------------------------------------------
# files written before the name was recorded
# ----------------------------------------------------------------------------
def test_a_state_file_of_the_previous_format_loads_and_resumes_bit_for_bit():
    state = E.load(FILES / "egd_state_v1.npz")
    assert state.recombine is None and (state.step, state.cycle) == (3, 1)
    opt = E.egd(**V1)
    # the params main reached with that state: rerun from init (the state file holds no params)
    params, ref_state = _run(opt, _v1_params(), opt.init(_v1_params()), 3)
    assert ref_state.sigma == state.sigma
    for k in params:
        np.testing.assert_array_equal(ref_state.momentum[k], state.momentum[k])
    params, state = _run(opt, params, state, 3)
    want = np.load(FILES / "egd_v1_next.npz")
    np.testing.assert_array_equal(params["w"], want["w"])
    np.testing.assert_array_equal(params["b"], want["b"])
    assert state.sigma == float(want["sigma"]) and state.cycle == int(want["cycle"])
    assert state.recombine == "softmax"  # recorded from the next update on


def test_a_checkpoint_of_the_previous_format_loads_and_resumes_bit_for_bit():
    run = E.EGD({k: v * 0 for k, v in _v1_params().items()}, **V1)
    run.load(FILES / "egd_checkpoint_v1.npz")
    assert run.state.recombine is None and run.state.step == 3
    for _ in range(3):
        run.step(_grads(run.params), _closure)
    want = np.load(FILES / "egd_v1_next.npz")
    np.testing.assert_array_equal(run.params["w"], want["w"])
    np.testing.assert_array_equal(run.params["b"], want["b"])


# ----------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------
def test_builtin_rules_give_the_spec_weights():
    losses = [0.5, 0.75, 2.0]
    assert _egd_recombination.recombination_weights("mean", losses, 1.0) == [1 / 3] * 3
    ex = [math.exp(-(v - 0.5) / 0.25) for v in losses]
    assert _egd_recombination.recombination_weights("softmax", losses, 0.25) == [e / sum(ex) for e in ex]
    assert E.recombination_names()[:2] == ("mean", "softmax")


@pytest.mark.parametrize("storage", ["array", "seed"])
def test_a_registered_rule_drives_the_cycle(storage):
    seen = []

    def best_two(losses, temperature):
        seen.append((losses.dtype, losses.shape, temperature, bool(np.all(np.diff(losses) >= 0))))
        return [0.5, 0.5] + [0.0] * (losses.shape[0] - 2)

    assert E.register_recombination("best_two", best_two) is best_two
    params = _params()
    opt = E.egd(lr=0.1, evo_interval=1, pop_size=8, elite_frac=0.5, sigma=0.3, seed=5, recombine="best_two",
                temperature=0.7, population_storage=storage)
    _, _, rep = opt.update(None, opt.init(params), params, _closure)
    assert seen == [(np.float64, (4,), 0.7, True)]  # float64 losses, best first
    assert rep.elite_weights == (0.5, 0.5, 0.0, 0.0)


@pytest.mark.parametrize("storage", ["array", "seed"])
def test_a_user_mean_is_bitwise_the_builtin_mean(storage):
    E.register_recombination("my_mean", lambda losses, t: np.full(losses.shape, 1.0 / losses.shape[0]))
    params = _params()
    out = {}
    for name in ("mean", "my_mean"):
        opt = E.egd(lr=0.1, evo_interval=1, pop_size=7, elite_frac=0.5, sigma=0.3, seed=13, recombine=name,
                    population_storage=storage)
        p, state, rep = opt.update(None, opt.init(params), params, _closure)
        out[name] = (p, rep.elite_weights, state.recombine)
    assert out["mean"][1] == out["my_mean"][1]
    assert (out["mean"][2], out["my_mean"][2]) == ("mean", "my_mean")
    for k in params:
        np.testing.assert_array_equal(out["mean"][0][k], out["my_mean"][0][k])


@pytest.mark.parametrize("name,fn,err,match", [
    (3, lambda l, t: l, TypeError, "name=3"),
    ("", lambda l, t: l, ValueError, "name=''"),
    ("x", "not callable", TypeError, "fn='not callable'"),
    ("mean", lambda l, t: l, ValueError, "'mean' is built in"),
])
def test_bad_registrations_are_refused(name, fn, err, match):
    with pytest.raises(err, match=match):
        E.register_recombination(name, fn)


def test_a_name_is_registered_once():
    fn = lambda losses, t: np.full(losses.shape, 1.0 / losses.shape[0])  # noqa: E731
    E.register_recombination("once", fn)
    E.register_recombination("once", fn)  # the same function again: fine
    with pytest.raises(ValueError, match="'once' is already registered"):
        E.register_recombination("once", lambda losses, t: losses)


def test_an_unregistered_name_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"recombine='median'.*register_recombination"):
        E.egd(recombine="median")


@pytest.mark.parametrize("weights,match", [
    ([0.5, 0.5], "shape"),
    ([[0.25] * 4], "shape"),
    ([1.0, 1.0, -1.0, 0.0], "finite and >= 0"),
    ([math.nan, 0.5, 0.5, 0.0], "finite and >= 0"),
    ([0.5, 0.25, 0.125, 0.0], "summing to 0.875"),
])
def test_bad_weights_stop_the_cycle_with_nothing_changed(weights, match):
    E.register_recombination("bad", lambda losses, t: weights)
    params = _params()
    before = {k: v.copy() for k, v in params.items()}
    opt = E.egd(lr=0.1, evo_interval=1, pop_size=8, elite_frac=0.5, sigma=0.3, recombine="bad")
    state = opt.init(params)
    with pytest.raises(ValueError, match=match) as info:
        opt.update(None, state, params, _closure)
    assert "recombination 'bad'" in str(info.value)
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


def test_weights_that_are_not_numbers_are_refused():
    E.register_recombination("words", lambda losses, t: ["a"] * losses.shape[0])
    params = _params()
    opt = E.egd(lr=0.1, evo_interval=1, pop_size=8, elite_frac=0.5, recombine="words")
    with pytest.raises(TypeError, match="recombination 'words'"):
        opt.update(None, opt.init(params), params, _closure)


# ----------------------------------------------------------------------------
# state files record the name
# ----------------------------------------------------------------------------
def test_state_files_record_the_name_and_refuse_an_unregistered_one(tmp_path, monkeypatch):
    E.register_recombination("flat", lambda losses, t: np.full(losses.shape, 1.0 / losses.shape[0]))
    params = _params()
    run = E.EGD(params, lr=0.1, evo_interval=1, pop_size=4, recombine="flat")
    run.step(_grads(run.params), _closure)
    run.save(tmp_path / "ck.npz")
    E.save(tmp_path / "state.npz", run.state)
    assert E.load(tmp_path / "state.npz").recombine == "flat"
    other = E.EGD(params, lr=0.1, evo_interval=1, pop_size=4, recombine="flat")
    other.load(tmp_path / "ck.npz")
    assert other.state == run.state and other.state.recombine == "flat"
    # a process where "flat" was never registered
    monkeypatch.delitem(_egd_recombination._RULES, "flat")
    for load in (lambda p: E.load(p / "state.npz"), lambda p: E.EGD(params).load(p / "ck.npz")):
        with pytest.raises(ValueError, match=r"recombine='flat'.*not registered.*register_recombination"):
            load(tmp_path)
    with pytest.raises(ValueError, match="state.recombine='flat'"):
        E.egd(evo_interval=1).update(None, run.state, params, _closure)
