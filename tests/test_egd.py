"""EGD knobs against hand-computed expectations, storage modes, errors, reports, state files."""

from __future__ import annotations

import math

import numpy as np
import pytest

from egdnp import _backend, optim, rng
from egdnp.optim import egd as egd_mod
from egdnp.optim.egd import EGD, EGDState, egd
from conftest import to_numpy


def _vec(xp, values, device=None):
    kw = {} if device is None else {"device": device}
    return xp.asarray(values, dtype=xp.float64, **kw)


def _sq_closure(xp, target):
    def closure(p):
        r = p["w"] - target
        return xp.sum(r * r)
    return closure


def _noise(name, shape, member, cycle, seed=0, dtype="float64"):
    return rng.normal(shape, seed=seed, stream=name, member=member, generation=cycle, dtype=dtype)


# ----------------------------------------------------------------------------
# hand-computed cycles
# ----------------------------------------------------------------------------
def test_pop2_keeps_the_better_of_base_and_mutant(xp):
    w0 = np.array([1.0, -2.0, 0.5])
    target = np.array([0.0, 0.0, 0.0])
    opt = egd(lr=0.1, evo_interval=1, pop_size=2, elite_frac=0.5, sigma=0.5, sigma_decay=0.5, seed=3)
    params = {"w": _vec(xp, w0)}
    state = opt.init(params)
    closure = _sq_closure(xp, _vec(xp, target))
    for cycle in range(4):
        w = to_numpy(params["w"])
        scale = 0.5 * 0.5**cycle * math.sqrt(np.mean(w * w))
        mutant = w + scale * _noise("w", (3,), 1, cycle, seed=3)
        base_loss, mut_loss = float(np.sum(w * w)), float(np.sum(mutant * mutant))
        expected = mutant if mut_loss < base_loss else w
        params, state, report = opt.evolve(state, params, closure)
        np.testing.assert_allclose(to_numpy(params["w"]), expected, rtol=0, atol=1e-15)
        assert report.elite_indices == ((1,) if mut_loss < base_loss else (0,))
        assert report.member_losses == pytest.approx((base_loss, mut_loss), rel=1e-14)
        assert report.loss == pytest.approx(min(base_loss, mut_loss), rel=1e-14)
        assert report.sigma == 0.5 * 0.5**cycle
        assert report.scales["w"] == pytest.approx(scale, rel=1e-14)
    assert state.cycle == 4 and state.step == 0 and state.sigma == 0.5 * 0.5**4


@pytest.mark.parametrize("recombine,temperature", [("mean", 1.0), ("softmax", 1.0), ("softmax", 0.25)])
def test_streaming_topk_and_recombination_by_hand(xp, recombine, temperature):
    w0 = np.array([[0.3, -0.7], [1.1, 0.2]])
    pop, frac = 7, 0.4  # k = ceil(2.8) = 3
    opt = egd(lr=0.1, evo_interval=1, pop_size=pop, elite_frac=frac, sigma=0.3, seed=5, recombine=recombine,
              temperature=temperature)
    params = {"w": _vec(xp, w0)}
    closure = _sq_closure(xp, _vec(xp, np.ones((2, 2))))
    params2, _, report = opt.evolve(opt.init(params), params, closure)
    scale = 0.3 * math.sqrt(np.mean(w0 * w0))
    members = [w0] + [w0 + scale * _noise("w", (2, 2), m, 0, seed=5) for m in range(1, pop)]
    losses = [float(np.sum((c - 1.0) ** 2)) for c in members]
    # the spec's streaming rule: fill k, then replace the (first) worst when strictly better
    elites = [(losses[0], 0)]
    for m in range(1, pop):
        if len(elites) < 3:
            elites.append((losses[m], m))
        else:
            worst = max(range(3), key=lambda i: elites[i][0])
            if losses[m] < elites[worst][0]:
                elites[worst] = (losses[m], m)
    elites.sort()
    idx = [m for _, m in elites]
    assert report.elite_indices == tuple(idx)
    if recombine == "mean":
        w = np.full(3, 1.0 / 3)
    else:
        e = np.exp(-np.array([l for l, _ in elites]) / temperature)
        w = e / e.sum()
    np.testing.assert_allclose(report.elite_weights, w, rtol=1e-14)
    expected = sum(wi * members[m] for wi, m in zip(w, idx))
    np.testing.assert_allclose(to_numpy(params2["w"]), expected, rtol=1e-14, atol=1e-15)
    assert report.recombined_loss == pytest.approx(float(np.sum((expected - 1.0) ** 2)), rel=1e-12)
    assert report.closure_calls == pop + 1


def test_seed_storage_equals_array_storage(xp):
    params = {"a": _vec(xp, rng.normal((5, 4), seed=1, dtype="float64")), "b": _vec(xp, [0.1, -0.2, 0.3])}

    def closure(p):
        return xp.sum(p["a"] * p["a"]) * 0.1 + xp.sum(xp.abs(p["b"] - 1.0))

    results = {}
    for storage in ("array", "seed"):
        for recombine in ("mean", "softmax"):
            opt = egd(lr=0.1, evo_interval=1, pop_size=9, elite_frac=0.5, sigma=0.2, seed=9,
                      population_storage=storage, recombine=recombine)
            s = opt.init(params)
            p = params
            for _ in range(3):
                p, s, rep = opt.evolve(s, p, closure)
            results[storage, recombine] = (p, rep)
    for recombine in ("mean", "softmax"):
        pa, ra = results["array", recombine]
        ps, rs = results["seed", recombine]
        assert ra.elite_indices == rs.elite_indices
        for k in params:
            np.testing.assert_allclose(to_numpy(pa[k]), to_numpy(ps[k]), rtol=1e-12, atol=1e-14)
        assert rs.bytes_moved == 0 and rs.host_buffer_bytes == 0


# ----------------------------------------------------------------------------
# low-rank mutations
# ----------------------------------------------------------------------------
def test_lowrank_mutation_has_rank_r_and_unit_rms(xp):
    from egdnp.optim._egd_mutation import unit_noise

    z = to_numpy(unit_noise((300, 200), seed=1, name="fc.weight", member=2, cycle=3, dtype="float64", xp=xp,
                            mutation="lowrank", rank=3))
    assert np.linalg.matrix_rank(z) == 3
    # unit variance in expectation (like a full-rank mutation): average over members
    ms = [np.mean(to_numpy(unit_noise((300, 200), seed=1, name="fc.weight", member=m, cycle=3, dtype="float64", xp=xp,
                                      mutation="lowrank", rank=3)) ** 2) for m in range(40)]
    assert np.mean(ms) == pytest.approx(1.0, abs=0.06)
    f = _noise("fc.weight", (500 * 3,), 2, 3, seed=1)
    a, b = f[:900].reshape(300, 3), f[900:].reshape(200, 3)
    np.testing.assert_allclose(z, a @ b.T / math.sqrt(3), rtol=1e-12, atol=1e-13)
    # vectors stay full rank
    v = to_numpy(unit_noise((7,), seed=1, name="fc.bias", member=2, cycle=3, dtype="float64", xp=xp,
                            mutation="lowrank", rank=3))
    np.testing.assert_array_equal(v, _noise("fc.bias", (7,), 2, 3, seed=1))


def test_lowrank_cycle_seed_equals_array(xp):
    params = {"fc.weight": _vec(xp, rng.normal((6, 5), seed=2, dtype="float64")), "fc.bias": _vec(xp, [0.5] * 5)}

    def closure(p):
        return xp.sum(xp.matmul(xp.ones((1, 6), dtype=xp.float64), p["fc.weight"]) ** 2) + xp.sum(p["fc.bias"] ** 2)

    out = {}
    for storage in ("array", "seed"):
        opt = egd(lr=0.1, evo_interval=1, pop_size=8, elite_frac=0.5, sigma=0.1, mutation="lowrank", rank=2,
                  population_storage=storage, recombine="softmax")
        p, s, rep = opt.evolve(opt.init(params), params, closure)
        out[storage] = (p, rep)
        delta = to_numpy(p["fc.weight"]) - to_numpy(params["fc.weight"])
        assert np.linalg.matrix_rank(delta, tol=1e-10) <= 2 * len([m for m in rep.elite_indices if m != 0])
    for k in params:
        np.testing.assert_allclose(to_numpy(out["array"][0][k]), to_numpy(out["seed"][0][k]), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------
# accept, rescore, closure keywords, non-finite losses
# ----------------------------------------------------------------------------
class ScriptedClosure:
    """Returns scripted losses by (phase, member) and records every call."""

    def __init__(self, losses):
        self.losses = losses
        self.calls = []

    def __call__(self, params, *, member, cycle, phase):
        self.calls.append((phase, member, cycle))
        return self.losses[phase, member] if (phase, member) in self.losses else self.losses["default"]


def test_accept_if_better_keeps_base_and_momentum(xp):
    losses = {("score", 0): 1.0, ("score", 1): 0.5, ("score", 2): 0.7, ("score", 3): 2.0, ("score", -1): 5.0,
              "default": 3.0}
    params = {"w": _vec(xp, [1.0, 2.0])}
    grads = {"w": _vec(xp, [0.1, 0.1])}
    for accept in ("always", "if_better"):
        closure = ScriptedClosure(losses)
        opt = egd(lr=0.1, momentum=0.9, evo_interval=1, pop_size=4, elite_frac=0.5, sigma=0.1, accept=accept)
        s = opt.init(params)
        p, s, rep = opt.update(grads, s, params, closure=closure)
        after_sgd = np.array([0.99, 1.99])
        assert rep.elite_indices == (1, 2) and rep.recombined_loss == 5.0
        if accept == "if_better":
            assert not rep.accepted and rep.loss == 1.0
            np.testing.assert_allclose(to_numpy(p["w"]), after_sgd, atol=1e-15)
            np.testing.assert_allclose(to_numpy(s.momentum["w"]), [0.1, 0.1], atol=1e-15)
        else:
            assert rep.accepted and rep.loss == 5.0
            assert not np.allclose(to_numpy(p["w"]), after_sgd)
            np.testing.assert_array_equal(to_numpy(s.momentum["w"]), [0.0, 0.0])
        assert s.sigma == pytest.approx(0.1 * 0.98)
        assert [c[:2] for c in closure.calls] == [("score", 0), ("score", 1), ("score", 2), ("score", 3), ("score", -1)]
        assert all(c[2] == 0 for c in closure.calls)


def test_rescore_elites_uses_fresh_batch_losses(xp):
    losses = {("score", 0): 1.0, ("score", 1): 0.1, ("score", 2): 0.2, ("score", 3): 0.9, ("score", 4): 0.95,
              ("rescore", 0): 0.8, ("rescore", 1): 0.9, ("rescore", 2): 0.3, ("rescore", -1): 0.5, "default": 9.0}
    closure = ScriptedClosure(losses)
    params = {"w": _vec(xp, [1.0, 2.0, 3.0])}
    opt = egd(lr=0.1, evo_interval=1, pop_size=5, elite_frac=0.4, sigma=0.1, rescore_elites=True,
              recombine="softmax", temperature=0.5, accept="if_better")
    p, s, rep = opt.evolve(opt.init(params), params, closure)
    # selection batch picks members 1, 2 (k = 2); the fresh batch reorders them and scores the base too
    assert rep.elite_indices == (2, 1)
    assert rep.rescore_losses == {1: 0.9, 2: 0.3, 0: 0.8}
    e = np.exp(-np.array([0.3, 0.9]) / 0.5)
    np.testing.assert_allclose(rep.elite_weights, e / e.sum(), rtol=1e-14)
    assert rep.accepted and rep.loss == 0.5  # compared with the base's fresh-batch loss 0.8
    assert [c[:2] for c in closure.calls][-4:] == [("rescore", 1), ("rescore", 2), ("rescore", 0), ("rescore", -1)]
    assert rep.closure_calls == 5 + 3 + 1


def test_closure_without_keywords_gets_params_only(xp):
    seen = []

    def closure(p):
        seen.append(sorted(p))
        return 1.0

    opt = egd(lr=0.1, evo_interval=1, pop_size=3, elite_frac=0.5)
    opt.evolve(opt.init({"w": _vec(xp, [1.0])}), {"w": _vec(xp, [1.0])}, closure)
    assert seen == [["w"]] * 4

    got = []
    opt.evolve(opt.init({"w": _vec(xp, [1.0])}), {"w": _vec(xp, [1.0])}, lambda p, **kw: got.append(kw) or 1.0)
    assert got[0] == {"member": 0, "cycle": 0, "phase": "score"}


def test_nonfinite_candidates_rank_last(xp):
    losses = {("score", 0): 1.0, ("score", 1): float("nan"), ("score", 2): float("-inf"), ("score", 3): 2.0,
              ("score", -1): 1.5, "default": 1.0}
    params = {"w": _vec(xp, [1.0, 2.0])}
    opt = egd(lr=0.1, evo_interval=1, pop_size=4, elite_frac=0.5, sigma=0.1)
    p, s, rep = opt.evolve(opt.init(params), params, ScriptedClosure(losses))
    assert rep.elite_indices == (0, 3)
    assert math.isnan(rep.member_losses[1]) and rep.member_losses[2] == -math.inf
    # all mutants non-finite: the base alone is recombined
    losses2 = {("score", 0): 1.0, "default": float("inf")}
    p2, _, rep2 = opt.evolve(opt.init(params), params, ScriptedClosure(losses2))
    assert rep2.elite_indices == (0,)
    np.testing.assert_array_equal(to_numpy(p2["w"]), [1.0, 2.0])


def test_nonfinite_base_loss_raises_and_nothing_changes(xp):
    params = {"w": _vec(xp, [1.0, 2.0])}
    grads = {"w": _vec(xp, [1.0, 1.0])}
    wrapper = EGD(params, lr=0.1, momentum=0.9, evo_interval=2, pop_size=4)
    wrapper.step(grads, closure=lambda p: 1.0)
    before_params, before_state = wrapper.params, wrapper.state
    with pytest.raises(RuntimeError, match="cycle 0 .*step 2.*nan"):
        wrapper.step(grads, closure=lambda p: float("nan"))
    assert wrapper.params is before_params and wrapper.state is before_state
    np.testing.assert_allclose(to_numpy(wrapper.params["w"]), [0.9, 1.9])
    assert wrapper.step(grads, closure=lambda p: 1.0) == 1.0  # retry works


def test_missing_closure_on_evolution_step(xp):
    opt = egd(lr=0.1, evo_interval=2, pop_size=2, elite_frac=0.5)
    params = {"w": _vec(xp, [1.0])}
    s = opt.init(params)
    p, s, rep = opt.update({"w": _vec(xp, [1.0])}, s, params)
    assert rep is None
    with pytest.raises(RuntimeError, match="needs a forward-only closure"):
        opt.update({"w": _vec(xp, [1.0])}, s, p)


@pytest.mark.parametrize("kw", [dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                                dict(lr=optim.schedules.step_decay(0.2, 2, 0.5), momentum=0.5)])
def test_without_evolution_egd_is_sgd(xp, kw):
    params = {"w": _vec(xp, rng.normal((3, 2), seed=1, dtype="float64")), "b": _vec(xp, [0.5, -0.5])}
    sgd = optim.sgd(**kw)
    opt = egd(evo_interval=0, **kw)
    ps, ss = params, sgd.init(params)
    pe, se = params, opt.init(params)
    for t in range(6):
        g = {"w": _vec(xp, rng.normal((3, 2), seed=2, generation=t, dtype="float64")), "b": _vec(xp, [0.1 * t, 1.0])}
        ps, ss = sgd.update(g, ss, ps)
        pe, se, rep = opt.update(g, se, pe)
        assert rep is None
        for k in params:
            np.testing.assert_array_equal(to_numpy(pe[k]), to_numpy(ps[k]))


def test_evo_interval_zero_disables_and_grads_none_counts_step(xp):
    opt = egd(lr=0.1, evo_interval=0, pop_size=2, elite_frac=0.5)
    params = {"w": _vec(xp, [1.0])}
    s = opt.init(params)
    for _ in range(3):
        params, s, rep = opt.update(None, s, params, closure=lambda p: 1.0)
        assert rep is None
    assert s.step == 3 and s.cycle == 0
    np.testing.assert_array_equal(to_numpy(params["w"]), [1.0])


# ----------------------------------------------------------------------------
# purity, determinism, callback, buffers, bytes, devices
# ----------------------------------------------------------------------------
def test_update_is_pure_and_deterministic(xp):
    params = {"a": _vec(xp, rng.normal((4, 3), seed=1, dtype="float64")), "b": _vec(xp, [0.0, 1.0, 2.0])}
    grads = {"a": _vec(xp, np.ones((4, 3))), "b": _vec(xp, [1.0, 1.0, 1.0])}
    closure = lambda p: xp.sum(p["a"] ** 2) + xp.sum(p["b"] ** 2)  # noqa: E731
    snap = {k: to_numpy(v).copy() for k, v in params.items()}
    runs = []
    for seed in (4, 4, 5):
        reports = []
        opt = egd(lr=0.01, momentum=0.9, evo_interval=1, pop_size=5, elite_frac=0.4, sigma=0.3, seed=seed,
                  callback=reports.append)
        s = opt.init(params)
        p, s2, rep = opt.update(grads, s, params, closure=closure)
        assert reports == [rep]
        assert s.step == 0 and s.cycle == 0
        runs.append(p)
    for k in params:
        np.testing.assert_array_equal(to_numpy(params[k]), snap[k])
        np.testing.assert_array_equal(to_numpy(runs[0][k]), to_numpy(runs[1][k]))
    assert not np.array_equal(to_numpy(runs[0]["a"]), to_numpy(runs[2]["a"]))


def test_mutate_filter_leaves_other_params_alone(xp):
    params = {"body.weight": _vec(xp, [1.0, 2.0]), "head.weight": _vec(xp, [3.0, 4.0])}
    seen = []
    opt = egd(lr=0.1, evo_interval=1, pop_size=6, elite_frac=0.5, sigma=0.5,
              mutate_filter=lambda name, arr: seen.append(tuple(arr.shape)) or name.startswith("head"))
    p, _, rep = opt.evolve(opt.init(params), params, lambda q: xp.sum(q["head.weight"]))
    assert rep.mutated == ("head.weight",) and seen == [(2,), (2,)]
    assert p["body.weight"] is params["body.weight"]
    assert not np.array_equal(to_numpy(p["head.weight"]), [3.0, 4.0])


def test_host_buffers_are_reused_and_bytes_counted(strict_devices):
    import array_api_strict as xp

    _, dev = strict_devices
    params = {"w": _vec(xp, rng.normal((8, 4), seed=1, dtype="float64"), dev), "b": _vec(xp, [1.0] * 4, dev)}
    closure = lambda p: xp.sum(p["w"] ** 2) + xp.sum(p["b"])  # noqa: E731
    opt = egd(lr=0.1, evo_interval=1, pop_size=6, elite_frac=0.5, sigma=0.1)
    s = opt.init(params)
    p = params
    allocations = []
    for _ in range(3):
        p, s, rep = opt.evolve(s, p, closure)
        allocations.append(opt.workspace.host_allocations)
        assert all(_backend.device_of(v) == dev for v in p.values())
    assert allocations[0] == allocations[1] == allocations[2] == 2 * (1 + (3 + 2) + 1)  # base, k+2 slots, mixed
    param_bytes = 8 * 4 * 8 + 4 * 8
    # base snapshot down; 5 candidates and the recombined parameters up
    assert rep.bytes_to_host == param_bytes and rep.bytes_to_device == 6 * param_bytes
    assert rep.bytes_moved == 7 * param_bytes
    opt_seed = egd(lr=0.1, evo_interval=1, pop_size=6, elite_frac=0.5, sigma=0.1, population_storage="seed")
    p2, _, rep2 = opt_seed.evolve(opt_seed.init(params), params, closure)
    assert rep2.bytes_moved == 0 and opt_seed.workspace.host_allocations == 0
    assert all(_backend.device_of(v) == dev for v in p2.values())


def test_numpy_host_population_moves_no_bytes():
    xp = _backend.get_namespace("numpy")
    params = {"w": _vec(xp, [1.0, 2.0, 3.0])}
    opt = egd(lr=0.1, evo_interval=1, pop_size=4, elite_frac=0.5)
    _, _, rep = opt.evolve(opt.init(params), params, lambda p: float(np.sum(p["w"])))
    assert rep.bytes_moved == 0 and rep.host_buffer_bytes > 0
    assert rep.seconds >= rep.closure_seconds > 0 and rep.overhead >= 1.0


# ----------------------------------------------------------------------------
# state files and the wrapper
# ----------------------------------------------------------------------------
def _train(xp, opt_or_wrapper, params, state, steps, start=0):
    closure = lambda p: xp.sum((p["w"] - 1.0) ** 2) + xp.sum(p["b"] ** 2)  # noqa: E731
    losses = []
    for t in range(start, start + steps):
        g = {"w": 2.0 * (params["w"] - 1.0) + _vec(xp, rng.normal((3, 2), seed=1, generation=t, dtype="float64")),
             "b": 2.0 * params["b"]}
        params, state, rep = opt_or_wrapper.update(g, state, params, closure=closure)
        losses.append(None if rep is None else rep.loss)
    return params, state, losses


@pytest.mark.parametrize("storage", ["array", "seed"])
def test_save_load_resumes_bit_identically(xp, tmp_path, storage):
    knobs = dict(lr=0.05, momentum=0.9, nesterov=True, evo_interval=3, pop_size=5, elite_frac=0.4, sigma=0.2,
                 seed=2**63 + 5, sigma_decay=0.77, population_storage=storage, mutation="lowrank", rank=1)
    params = {"w": _vec(xp, np.arange(6.0).reshape(3, 2) / 7), "b": _vec(xp, [0.5, -0.5])}
    opt = egd(**knobs)
    p_full, s_full, l_full = _train(xp, opt, params, opt.init(params), 10)
    p_half, s_half, l_half = _train(xp, opt, params, opt.init(params), 5)
    egd_mod.save(tmp_path / "egd.npz", s_half)
    opt2 = egd(**knobs)
    loaded = egd_mod.load(tmp_path / "egd.npz", xp=xp)
    assert isinstance(loaded, EGDState) and loaded.sigma == s_half.sigma and loaded.seed == 2**63 + 5
    p_res, s_res, l_res = _train(xp, opt2, dict(p_half), loaded, 5, start=5)
    assert l_half + l_res == l_full
    for k in params:
        np.testing.assert_array_equal(to_numpy(p_res[k]), to_numpy(p_full[k]))
        np.testing.assert_array_equal(to_numpy(s_res.momentum[k]), to_numpy(s_full.momentum[k]))
    assert s_res == s_res._replace() and (s_res.step, s_res.cycle, s_res.sigma) == (s_full.step, s_full.cycle, s_full.sigma)


def test_wrapper_step_returns_spec_value_and_save_load(xp, tmp_path):
    params = {"w": _vec(xp, [[0.5, 1.5]] * 3), "b": _vec(xp, [0.5, -0.5])}
    g = {"w": _vec(xp, [[0.1, 0.2]] * 3), "b": _vec(xp, [0.3, 0.3])}
    closure = lambda p: xp.sum(p["w"] ** 2)  # noqa: E731
    a = EGD(params, lr=0.1, momentum=0.9, evo_interval=2, pop_size=4, elite_frac=0.5, sigma=0.1)
    assert a.step(g, closure) is None
    loss = a.step(g, closure)
    assert loss == a.last_report.loss and isinstance(loss, float)
    a.save(tmp_path / "ck.npz")
    b = EGD({k: v * 0.0 for k, v in params.items()}, lr=0.1, momentum=0.9, evo_interval=2, pop_size=4,
            elite_frac=0.5, sigma=0.1)
    b.load(tmp_path / "ck.npz")
    for _ in range(4):
        assert a.step(g, closure) == b.step(g, closure)
    for k in params:
        np.testing.assert_array_equal(to_numpy(a.params[k]), to_numpy(b.params[k]))
    rep = a.evolve(closure)
    assert rep.step == a.state.step and a.sigma == a.state.sigma


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw,name",
    [
        (dict(lr=0.0), "lr"),
        (dict(lr=-0.1), "lr"),
        (dict(momentum=-0.5), "momentum"),
        (dict(nesterov=True), "nesterov"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(pop_size=1), "pop_size"),
        (dict(elite_frac=0.0), "elite_frac"),
        (dict(elite_frac=0.6), "elite_frac"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-1.0), "sigma"),
        (dict(sigma_decay=0.0), "sigma_decay"),
        (dict(recombine="median"), "recombine"),
        (dict(population_storage="disk"), "population_storage"),
        (dict(mutation="sparse"), "mutation"),
        (dict(rank=0), "rank"),
        (dict(accept="maybe"), "accept"),
        (dict(temperature=0.0), "temperature"),
        (dict(seed=-1), "seed"),
        (dict(seed=2**64), "seed"),
    ],
)
def test_bad_knobs_raise_value_error_naming_them(kw, name):
    with pytest.raises(ValueError, match=name):
        egd(**kw)


@pytest.mark.parametrize(
    "kw,name",
    [(dict(pop_size=2.5), "pop_size"), (dict(sigma_schedule=3), "sigma_schedule"), (dict(loss_reduce="sum"), "loss_reduce"),
     (dict(mutate_filter=1), "mutate_filter"), (dict(rescore_elites=1), "rescore_elites"), (dict(seed=1.0), "seed")],
)
def test_bad_knob_types_raise_type_error(kw, name):
    with pytest.raises(TypeError, match=name):
        egd(**kw)


def test_bad_inputs(xp):
    opt = egd(lr=0.1, evo_interval=1, pop_size=2, elite_frac=0.5, sigma_schedule=lambda t, s: -1.0)
    params = {"w": _vec(xp, [1.0])}
    with pytest.raises(ValueError, match="sigma_schedule returned"):
        opt.update(None, opt.init(params), params, closure=lambda p: 1.0)
    opt = egd(lr=0.1, evo_interval=1, pop_size=2, elite_frac=0.5)
    with pytest.raises(TypeError, match="dtype"):
        opt.init({"w": xp.asarray([1, 2], dtype=xp.int32)})
    with pytest.raises(ValueError, match="scalar loss"):
        opt.evolve(opt.init(params), params, lambda p: xp.asarray([1.0, 2.0], dtype=xp.float64))
    with pytest.raises(ValueError, match="has shape"):
        opt.update({"w": _vec(xp, [1.0, 2.0])}, opt.init(params), params, closure=lambda p: 1.0)


def test_k_follows_the_spec():
    assert egd(pop_size=8, elite_frac=0.25).config.n_elites == 2
    assert egd(pop_size=7, elite_frac=0.25).config.n_elites == 2
    assert egd(pop_size=2, elite_frac=0.01).config.n_elites == 1
    assert egd(pop_size=9, elite_frac=0.5).config.n_elites == 5
    cfg = egd().config
    spec_defaults = dict(lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0, evo_interval=200, pop_size=8,
                         elite_frac=0.25, sigma=0.02, sigma_decay=0.98, recombine="mean", reset_momentum_on_evo=True,
                         loss_reduce=None, sigma_schedule=None, offload_population_to_cpu=True, mutate_filter=None)
    for k, v in spec_defaults.items():
        assert getattr(cfg, k) == v, k
    assert optim.EGD is EGD
