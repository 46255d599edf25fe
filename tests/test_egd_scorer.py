"""EGD's population scorer: the same cycle as the per-candidate closure, scored in population forwards.

* member losses equal the closure's within float64 rel 1e-12 / float32 rel 1e-5,
  and the elites are the same members, for mean and softmax recombination,
  array and seed storage, rescoring and accept="if_better";
* the Mutations handed to a scorer are the per-candidate path's noise (factors,
  noise and candidates checked against the mutation functions);
* chunking by memory budget changes no loss; a low-rank cycle in seed storage
  never holds a materialised candidate (tracemalloc);
* bad scorers and bad arguments raise clear errors and change nothing.
"""

from __future__ import annotations

import math
import re
import tracemalloc

import numpy as np
import pytest

from egdnp import _backend, rng
from egdnp.es.egd_scorer import ModelScorer, model_scorer
from egdnp.nn import cnn, mlp, mse, softmax_cross_entropy
from egdnp.nn import layers as L
from egdnp.nn.model import Serial
from egdnp.optim.egd import EGD, Mutations, egd
from egdnp.optim._egd_mutation import lowrank_shape, mutant, unit_noise

from conftest import to_numpy

TOL = {"float64": 1e-12, "float32": 1e-5}


def _mlp_problem(xp, dtype, batch=16, sizes=(12, 9, 4)):
    model = mlp(sizes)
    params = model.init(0, xp=xp, dtype=dtype)
    x = rng.normal((batch, sizes[0]), seed=1, stream="test/x", xp=xp, dtype=dtype)
    y = _backend.to_device(np.arange(batch) % sizes[-1], xp)
    return model, params, None, x, y


def _cnn_problem(xp, dtype, batch=5):
    model = cnn(in_channels=2, image_size=8, n_classes=3, channels=(3, 4), batch_norm=True)
    params = model.init(0, xp=xp, dtype=dtype)
    state = model.init_state(xp=xp, dtype=dtype)
    # non-trivial running statistics, so that eval-mode batch norm matters
    state = {k: v * 0.5 + 0.25 for k, v in state.items()}
    x = rng.normal((batch, 2, 8, 8), seed=1, stream="test/x", xp=xp, dtype=dtype)
    y = _backend.to_device(np.arange(batch) % 3, xp)
    return model, params, state, x, y


def _closure(model, state, x, y):
    def closure(p):
        return softmax_cross_entropy(model.apply(p, x, state=state), y)

    return closure


def _assert_same_cycle(ra, rb, dtype):
    tol = TOL[dtype]
    for a, b in zip(ra.member_losses, rb.member_losses):
        assert b == pytest.approx(a, rel=tol)
    assert ra.elite_indices == rb.elite_indices
    np.testing.assert_allclose(rb.elite_weights, ra.elite_weights, rtol=100 * tol)
    assert rb.recombined_loss == pytest.approx(ra.recombined_loss, rel=tol)
    assert ra.accepted == rb.accepted
    if ra.rescore_losses is not None:
        assert set(ra.rescore_losses) == set(rb.rescore_losses)
        for m, v in ra.rescore_losses.items():
            assert rb.rescore_losses[m] == pytest.approx(v, rel=tol)
    assert rb.scored_by == "population" and ra.scored_by == "closure"


CASES = {
    "mean-array-lowrank": dict(recombine="mean", population_storage="array", mutation="lowrank"),
    "mean-array-full": dict(recombine="mean", population_storage="array", mutation="full"),
    "softmax-seed-lowrank": dict(recombine="softmax", temperature=0.05, population_storage="seed", mutation="lowrank"),
    "softmax-seed-full": dict(recombine="softmax", temperature=0.05, population_storage="seed", mutation="full"),
    "rescore-ifbetter-array-lowrank": dict(recombine="softmax", rescore_elites=True, accept="if_better",
                                           mutation="lowrank"),
    "mean-seed-ifbetter-full": dict(recombine="mean", population_storage="seed", accept="if_better", mutation="full"),
    "device-array-lowrank": dict(recombine="mean", offload_population_to_cpu=False, mutation="lowrank"),
}


# array-api-strict runs slowly (its rng and losses are pure array code): it checks a subset, NumPy all
STRICT_SUBSET = {("float64", "mean-array-lowrank"), ("float32", "softmax-seed-lowrank"),
                 ("float64", "rescore-ifbetter-array-lowrank"), ("float32", "mean-seed-ifbetter-full")}


def _subset(xp, key, subset):
    if _backend.backend_name(xp) == "array_api_strict" and key not in subset:
        pytest.skip("NumPy covers this case; array-api-strict runs a subset (time)")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mlp_scorer_matches_closure(xp, dtype, case):
    _subset(xp, (dtype, case), STRICT_SUBSET)
    model, params, state, x, y = _mlp_problem(xp, dtype)
    closure = _closure(model, state, x, y)
    scorer = model_scorer(model, x, y)
    knobs = dict(lr=0.1, evo_interval=1, pop_size=8, elite_frac=0.5, sigma=0.3, seed=5, rank=2, **CASES[case])
    if knobs.get("rescore_elites"):
        # a fresh batch for the rescore phase, chosen from (cycle, phase) on both paths
        x2 = rng.normal(tuple(x.shape), seed=2, stream="test/x2", xp=xp, dtype=dtype)

        def batch(cycle, phase):
            return (x if phase == "score" else x2), y

        def closure(p, *, phase):
            xb, yb = batch(0, phase)
            return softmax_cross_entropy(model.apply(p, xb), yb)

        scorer = model_scorer(model, batch=batch)
    opt_a, opt_b = egd(**knobs), egd(**knobs)
    sa, sb = opt_a.init(params), opt_b.init(params)
    pa = pb = params
    for _ in range(2):  # two cycles: the trajectories stay together
        pa, sa, ra = opt_a.evolve(sa, pa, closure)
        pb, sb, rb = opt_b.evolve(sb, pb, scorer=scorer)
        _assert_same_cycle(ra, rb, dtype)
        assert rb.closure_calls == (3 if knobs.get("rescore_elites") else 2)
        for k in params:
            np.testing.assert_allclose(to_numpy(pb[k]), to_numpy(pa[k]), rtol=100 * TOL[dtype],
                                       atol=100 * TOL[dtype])
        if knobs["recombine"] == "mean" and not knobs.get("rescore_elites"):
            # same elites, same recombination code: the same parameters bit for bit, and the
            # recombined parameters are scored by the closure's own forward
            for k in params:
                np.testing.assert_array_equal(to_numpy(pb[k]), to_numpy(pa[k]))
            assert rb.recombined_loss == ra.recombined_loss


@pytest.mark.parametrize("mutation", ["lowrank", "full"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cnn_scorer_matches_closure(xp, dtype, mutation):
    """Conv (low-rank filter banks), batch norm in eval mode, max pooling; softmax + seed storage and mean + array."""
    _subset(xp, (dtype, mutation), {("float32", "lowrank"), ("float64", "full")})
    model, params, state, x, y = _cnn_problem(xp, dtype)
    closure = _closure(model, state, x, y)
    scorer = model_scorer(model, x, y, state=state, memory_budget=1)  # one member per chunk
    for knobs in (dict(recombine="softmax", population_storage="seed"), dict(recombine="mean", accept="if_better")):
        opt = egd(lr=0.1, evo_interval=1, pop_size=6, elite_frac=0.5, sigma=0.3, seed=3, mutation=mutation, rank=2,
                  **knobs)
        s = opt.init(params)
        _, _, ra = opt.evolve(s, params, closure)
        _, _, rb = opt.evolve(s, params, scorer=scorer)
        _assert_same_cycle(ra, rb, dtype)
    assert scorer.last_chunk == 1


def test_egd_object_and_update_accept_the_scorer():
    """EGD.step / update with scorer= follow the closure's run over SGD steps and cycles (seeded, float64)."""
    model, params, _, x, y = _mlp_problem(_backend.get_namespace("numpy"), "float64")
    closure = _closure(model, None, x, y)
    scorer = model_scorer(model, x, y)
    knobs = dict(lr=0.05, momentum=0.9, evo_interval=2, pop_size=6, elite_frac=0.34, sigma=0.2, seed=11,
                 mutation="lowrank", rank=3, recombine="softmax")
    a, b = EGD(params, **knobs), EGD(params, **knobs)
    for t in range(6):
        _, ga = model.loss_and_grad(a.params, x, y)
        _, gb = model.loss_and_grad(b.params, x, y)
        la = a.step(ga, closure)
        lb = b.step(gb, scorer=scorer)
        assert (la is None) == (lb is None)
        if la is not None:
            assert lb == pytest.approx(la, rel=1e-12)
            assert a.last_report.elite_indices == b.last_report.elite_indices
            assert b.last_report.scored_by == "population"
    for k in params:
        np.testing.assert_allclose(b.params[k], a.params[k], rtol=1e-10, atol=1e-12)
    rep = b.evolve(scorer=scorer)
    assert rep.scored_by == "population" and rep.closure_calls == 2


def test_loss_reduce_and_callable_loss_apply_per_member():
    xp = _backend.get_namespace("numpy")
    model, params, _, x, _ = _mlp_problem(xp, "float64")
    target = rng.normal((16, 4), seed=3, stream="test/t", dtype="float64")

    def closure(p):
        return mse(model.apply(p, x), target)

    knobs = dict(lr=0.1, evo_interval=1, pop_size=5, elite_frac=0.4, sigma=0.2, mutation="lowrank",
                 loss_reduce=lambda v: v * 2.0 + 1.0)
    opt = egd(**knobs)
    s = opt.init(params)
    _, _, ra = opt.evolve(s, params, closure)
    for loss in ("mse", mse, lambda out, t: mse(out, t)):
        _, _, rb = opt.evolve(s, params, scorer=model_scorer(model, x, target, loss=loss))
        _assert_same_cycle(ra, rb, "float64")


# ----------------------------------------------------------------------------
# the Mutations a scorer is handed
# ----------------------------------------------------------------------------
def test_mutations_are_the_per_candidate_noise(xp):
    params = {
        "fc.weight": rng.normal((7, 5), seed=1, stream="p/w", xp=xp, dtype="float64"),
        "conv.weight": rng.normal((4, 3, 3, 3), seed=1, stream="p/c", xp=xp, dtype="float64"),
        "fc.bias": rng.normal((7,), seed=1, stream="p/b", xp=xp, dtype="float64"),
    }
    scales = {"fc.weight": 0.3, "conv.weight": 0.2, "fc.bias": 0.1}
    kw = dict(mutated=tuple(params), scales=scales, seed=9, cycle=4, phase="score", rank=2)
    lr = Mutations(params, (0, 3, -1, 5), mutation="lowrank", **kw)
    for name in ("fc.weight", "conv.weight"):
        assert lr.is_lowrank(name)
        a, b = lr.factors(name)
        rows, cols = lowrank_shape(params[name].shape)
        assert tuple(a.shape) == (4, rows, 2) and tuple(b.shape) == (4, cols, 2)
        for i, m in enumerate(lr.members):
            dense = to_numpy(a[i, ...]) @ to_numpy(b[i, ...]).T
            if m <= 0:
                assert not dense.any()
                continue
            z = unit_noise(tuple(params[name].shape), seed=9, name=name, member=m, cycle=4, dtype="float64", xp=xp,
                           mutation="lowrank", rank=2, factor=scales[name])
            np.testing.assert_allclose(dense.reshape(params[name].shape), to_numpy(z), rtol=1e-12, atol=1e-15)
            # a filter bank mutation has rank 2 as a (C_out, C_in*kh*kw) matrix
            assert np.linalg.matrix_rank(dense) == 2
        cands = lr.candidates(name)
        for i, m in enumerate(lr.members):
            want = params[name] if m <= 0 else mutant(params[name], scales[name], seed=9, name=name, member=m,
                                                      cycle=4, xp=xp, mutation="lowrank", rank=2)
            np.testing.assert_array_equal(to_numpy(cands[i, ...]), to_numpy(want))
    assert not lr.is_lowrank("fc.bias")
    noise = lr.noise("fc.bias")
    for i, m in enumerate(lr.members):
        want = np.zeros(7) if m <= 0 else to_numpy(unit_noise((7,), seed=9, name="fc.bias", member=m, cycle=4,
                                                              dtype="float64", xp=xp, factor=0.1))
        np.testing.assert_array_equal(to_numpy(noise[i, ...]), want)
    with pytest.raises(ValueError, match="low-rank"):
        lr.noise("fc.weight")
    with pytest.raises(ValueError, match="full-rank"):
        lr.factors("fc.bias")
    with pytest.raises(KeyError, match="not mutated"):
        Mutations(params, (1,), mutation="full", **dict(kw, mutated=("fc.bias",))).noise("fc.weight")
    full = Mutations(params, (2,), mutation="full", **kw)
    assert not full.is_lowrank("fc.weight")
    np.testing.assert_array_equal(
        to_numpy(full.candidates("conv.weight")[0, ...]),
        to_numpy(mutant(params["conv.weight"], 0.2, seed=9, name="conv.weight", member=2, cycle=4, xp=xp)))


def test_mutations_follow_the_state_seed_and_cycle():
    """The scorer sees the cycle's noise address: its members' losses are those of the closure's candidates."""
    xp = _backend.get_namespace("numpy")
    model, params, _, x, y = _mlp_problem(xp, "float64")
    seen = []

    def scorer(m):
        seen.append((m.seed, m.cycle, m.phase, m.members))
        return model_scorer(model, x, y)(m)

    opt = egd(lr=0.1, evo_interval=1, pop_size=4, elite_frac=0.5, seed=21, mutation="lowrank")
    s = opt.init(params)
    p, s, _ = opt.evolve(s, params, scorer=scorer)
    opt.evolve(s, p, scorer=scorer)
    assert seen[0] == (21, 0, "score", (0, 1, 2, 3)) and seen[1][:2] == (21, 0) and seen[1][3] == (-1,)
    assert seen[2][:2] == (21, 1)
    # the state's seed, not the optimiser's: a seed-21 state under an optimiser built with seed=0
    seen.clear()
    other = egd(lr=0.1, evo_interval=1, pop_size=4, elite_frac=0.5, seed=0, mutation="lowrank")
    other.evolve(opt.init(params), params, scorer=scorer)
    assert seen[0][:2] == (21, 0)


# ----------------------------------------------------------------------------
# chunks and memory
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("mutation", ["lowrank", "full"])
def test_chunks_follow_the_memory_budget_and_change_no_loss(mutation):
    xp = _backend.get_namespace("numpy")
    model, params, state, x, y = _cnn_problem(xp, "float64")
    whole = model_scorer(model, x, y, state=state)
    per = whole.member_bytes(params, x)
    assert per > int(x.shape[0]) * 2 * 8 * 8 * 8  # at least the input-sized activations
    muts = Mutations(params, tuple(range(7)), mutated=tuple(params), scales={k: 0.1 for k in params}, seed=1,
                     cycle=0, phase="score", mutation=mutation, rank=2)
    ref = to_numpy(whole(muts))
    assert whole.last_chunk == 7
    stacked = () if mutation == "lowrank" else tuple(params)
    budget = 3 * whole.member_bytes(params, x, stacked)
    chunked = model_scorer(model, x, y, state=state, memory_budget=budget)
    np.testing.assert_allclose(to_numpy(chunked(muts)), ref, rtol=1e-13)
    assert chunked.last_chunk == 3
    one = model_scorer(model, x, y, state=state, memory_budget=1)
    np.testing.assert_allclose(to_numpy(one(muts)), ref, rtol=1e-13)
    assert one.last_chunk == 1
    # the NumPy fast paths against the array-API code
    oracle = model_scorer(model, x, y, state=state, impl="array_api", memory_budget=budget)
    np.testing.assert_allclose(to_numpy(oracle(muts)), ref, rtol=1e-12)


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_lowrank_cycle_never_holds_a_materialised_candidate():
    """Seed storage + population scorer: peak memory of a cycle stays below the recombined params + half a copy.

    The recombined parameters (one parameter set) are the cycle's output; a
    materialised candidate would add another parameter set, as the closure's
    cycle does (checked, so the bound can fail).
    """
    model = mlp((600, 400, 3))
    params = model.init(0, dtype="float64")
    x = rng.normal((4, 600), seed=1, stream="test/x", dtype="float64")
    y = np.arange(4) % 3
    nbytes = sum(v.nbytes for v in params.values())
    closure = _closure(model, None, x, y)
    knobs = dict(lr=0.1, evo_interval=1, pop_size=8, sigma=0.1, mutation="lowrank", rank=2,
                 population_storage="seed")
    scorer = model_scorer(model, x, y)
    egd(**knobs).evolve(egd(**knobs).init(params), params, scorer=scorer)  # compile outside the trace
    egd(**knobs).evolve(egd(**knobs).init(params), params, closure)
    opt = egd(**knobs)
    s = opt.init(params)
    peak_scorer = _traced_peak(lambda: opt.evolve(s, params, scorer=scorer))
    opt = egd(**knobs)
    peak_closure = _traced_peak(lambda: opt.evolve(s, params, closure))
    assert peak_scorer < 1.5 * nbytes, (peak_scorer / nbytes)
    assert peak_closure >= 2.0 * nbytes, (peak_closure / nbytes)


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------
def test_bad_scorers_raise_and_change_nothing():
    xp = _backend.get_namespace("numpy")
    model, params, _, x, y = _mlp_problem(xp, "float64")
    good = model_scorer(model, x, y)
    opt = EGD(params, evo_interval=1, pop_size=4, mutation="lowrank")
    before = {k: v.copy() for k, v in params.items()}
    state0 = opt.state
    bad = {
        "shape (3,)": (lambda m: good(m)[:3], ValueError),
        "shape (4, 1)": (lambda m: xp.reshape(good(m), (-1, 1)), ValueError),
        "is a str": (lambda m: ["a"] * len(m.members), TypeError),
        "returned int": (lambda m: 3, TypeError),
    }
    for match, (scorer, exc) in bad.items():
        with pytest.raises(exc, match=re.escape(match)):
            opt.step(None, scorer=scorer)
        assert opt.state is state0 and opt.last_report is None
        for k in params:
            np.testing.assert_array_equal(opt.params[k], before[k])
    with pytest.raises(ValueError, match="not both"):
        opt.step(None, _closure(model, None, x, y), scorer=good)
    with pytest.raises(TypeError, match="scorer=3 must be callable"):
        opt.step(None, scorer=3)
    with pytest.raises(RuntimeError, match="scorer="):
        opt.step(None)

    def nan_base(m):
        out = to_numpy(good(m)).copy()
        if m.members[0] == 0:
            out[0] = math.nan
        return out

    with pytest.raises(RuntimeError, match="base parameters' loss is nan"):
        opt.step(None, scorer=nan_base)
    assert opt.state is state0


def test_non_finite_member_losses_rank_last_as_with_the_closure():
    xp = _backend.get_namespace("numpy")
    model, params, _, x, y = _mlp_problem(xp, "float64")
    good = model_scorer(model, x, y)

    def scorer(m):
        out = to_numpy(good(m)).copy()
        for i, member in enumerate(m.members):
            if member in (1, 2):
                out[i] = -math.inf if member == 1 else math.nan
        return out

    opt = egd(lr=0.1, evo_interval=1, pop_size=6, elite_frac=0.5, sigma=0.2)
    _, _, rep = opt.evolve(opt.init(params), params, scorer=scorer)
    assert 1 not in rep.elite_indices and 2 not in rep.elite_indices
    assert rep.member_losses[1] == -math.inf and math.isnan(rep.member_losses[2])


def test_model_scorer_argument_errors():
    xp = _backend.get_namespace("numpy")
    model, params, _, x, y = _mlp_problem(xp, "float64")
    with pytest.raises(TypeError, match="egdnp.nn.Serial"):
        model_scorer(object(), x, y)
    with pytest.raises(ValueError, match="x=... and y=..."):
        model_scorer(model, x)
    with pytest.raises(ValueError, match="not both"):
        model_scorer(model, x, y, batch=lambda c, p: (x, y))
    with pytest.raises(ValueError, match="loss='hinge'"):
        model_scorer(model, x, y, loss="hinge")
    with pytest.raises(ValueError, match="memory_budget=0"):
        model_scorer(model, x, y, memory_budget=0)
    with pytest.raises(TypeError, match="pair"):
        opt = egd(evo_interval=1, pop_size=3)
        opt.evolve(opt.init(params), params, scorer=model_scorer(model, batch=lambda c, p: x))
    assert isinstance(model_scorer(model, x, y), ModelScorer)


def test_a_mutated_layer_without_population_forward_is_named():
    class Scale(L.Layer):
        prefix = "scale"

        def param_shapes(self):
            return {"weight": (4,)}

        def init(self, seed, name, *, xp=None, dtype="float32"):
            return {"weight": _backend.get_namespace("numpy" if xp is None else xp).ones((4,), dtype=dtype)}

        def check_input(self, x, name):
            pass

        def forward(self, params, state, x, ctx):
            return x * params["weight"], None, state

    model = Serial(L.Linear(3, 4), Scale())
    params = model.init(0, dtype="float64")
    x = rng.normal((5, 3), seed=1, stream="test/x", dtype="float64")
    opt = egd(evo_interval=1, pop_size=3)
    with pytest.raises(ValueError, match="'scale1.weight', a parameter of a Scale layer"):
        opt.evolve(opt.init(params), params, scorer=model_scorer(model, x, np.zeros((5, 4)), loss="mse"))
    # left out by mutate_filter, the layer runs on the population axis as it is
    opt = egd(evo_interval=1, pop_size=3, mutate_filter=lambda n, p: not n.startswith("scale"))
    _, _, rep = opt.evolve(opt.init(params), params, scorer=model_scorer(model, x, np.zeros((5, 4)), loss="mse"))
    assert rep.mutated == ("fc1.weight", "fc1.bias")
