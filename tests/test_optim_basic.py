"""SGD, Adam and AdamW: torch parity step for step, purity, skipping, validation, state files."""

from __future__ import annotations

import numpy as np
import pytest

from egdnp import optim, rng
from egdnp.optim import schedules

from conftest import to_numpy


def _params(xp, dtype="float64"):
    return {
        "fc1.weight": rng.normal((4, 3), seed=3, stream="init/fc1.weight", dtype=dtype, xp=xp),
        "fc1.bias": rng.normal((4,), seed=3, stream="init/fc1.bias", dtype=dtype, xp=xp),
    }


def _grads(xp, t, dtype="float64"):
    return {
        "fc1.weight": rng.normal((4, 3), seed=5, stream="g/fc1.weight", generation=t, dtype=dtype, xp=xp),
        "fc1.bias": rng.normal((4,), seed=5, stream="g/fc1.bias", generation=t, dtype=dtype, xp=xp),
    }


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.5, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(lr=0.2, weight_decay=0.1),
]


@pytest.mark.parametrize("kw", SGD_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_matches_torch_step_for_step(xp, kw):
    torch = pytest.importorskip("torch")
    params = _params(xp)
    tparams = {k: torch.tensor(to_numpy(v), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.SGD(list(tparams.values()), **kw)
    opt = optim.sgd(**kw)
    state = opt.init(params)
    for t in range(6):
        grads = _grads(xp, t)
        for k, p in tparams.items():
            p.grad = torch.tensor(to_numpy(grads[k]))
        topt.step()
        params, state = opt.update(grads, state, params)
        for k in params:
            np.testing.assert_allclose(to_numpy(params[k]), tparams[k].detach().numpy(), rtol=1e-13, atol=1e-14)
    assert state.count == 6


ADAM_CASES = [
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    ("adam", dict(lr=1e-2, amsgrad=True, weight_decay=0.01)),
    ("adamw", dict(lr=1e-2)),
    ("adamw", dict(lr=3e-2, betas=(0.5, 0.9), weight_decay=0.3)),
    ("adamw", dict(lr=1e-2, amsgrad=True)),
]


@pytest.mark.parametrize("name,kw", ADAM_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ADAM_CASES)])
def test_adam_matches_torch_step_for_step(xp, name, kw):
    torch = pytest.importorskip("torch")
    params = _params(xp)
    tparams = {k: torch.tensor(to_numpy(v), requires_grad=True) for k, v in params.items()}
    tcls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    topt = tcls(list(tparams.values()), foreach=False, **kw)
    opt = getattr(optim, name)(**kw)
    state = opt.init(params)
    for t in range(7):
        grads = _grads(xp, t)
        for k, p in tparams.items():
            p.grad = torch.tensor(to_numpy(grads[k]))
        topt.step()
        params, state = opt.update(grads, state, params)
        for k in params:
            np.testing.assert_allclose(to_numpy(params[k]), tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(to_numpy(state.exp_avg_sq[k]), topt.state[tparams[k]]["exp_avg_sq"].numpy(),
                                       rtol=1e-12, atol=1e-15)


def test_lr_schedule_matches_torch_lambda(xp):
    torch = pytest.importorskip("torch")
    sched = schedules.cosine(0.1, decay_steps=5, alpha=0.1)
    params = _params(xp)
    tparams = {k: torch.tensor(to_numpy(v), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.SGD(list(tparams.values()), lr=1.0, momentum=0.9)
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: sched(s))
    opt = optim.sgd(lr=sched, momentum=0.9)
    state = opt.init(params)
    for t in range(7):
        grads = _grads(xp, t)
        for k, p in tparams.items():
            p.grad = torch.tensor(to_numpy(grads[k]))
        topt.step()
        tsched.step()
        params, state = opt.update(grads, state, params)
    for k in params:
        np.testing.assert_allclose(to_numpy(params[k]), tparams[k].detach().numpy(), rtol=1e-13, atol=1e-14)


def test_sgd_hand_computed(xp):
    p = {"w": xp.asarray([1.0, -2.0], dtype=xp.float64)}
    g = {"w": xp.asarray([0.5, 0.25], dtype=xp.float64)}
    opt = optim.sgd(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.1)
    s = opt.init(p)
    p1, s = opt.update(g, s, p)
    # d_p = g + 0.1 p = [0.6, 0.05]; buf = d_p; d = d_p + 0.5 buf = [0.9, 0.075]
    np.testing.assert_allclose(to_numpy(p1["w"]), [1.0 - 0.09, -2.0 - 0.0075], rtol=0, atol=1e-15)
    p2, s = opt.update(g, s, p1)
    dp = np.array([0.5, 0.25]) + 0.1 * np.array([0.91, -2.0075])
    buf = 0.5 * np.array([0.6, 0.05]) + dp
    np.testing.assert_allclose(to_numpy(p2["w"]), np.array([0.91, -2.0075]) - 0.1 * (dp + 0.5 * buf), atol=1e-15)


def test_adam_first_step_is_lr_sign(xp):
    # With bias correction the first Adam step is lr * g / (|g| + eps') = lr * sign(g).
    p = {"w": xp.asarray([1.0, -2.0, 3.0], dtype=xp.float64)}
    g = {"w": xp.asarray([0.5, -0.25, 4.0], dtype=xp.float64)}
    opt = optim.adam(lr=0.01, eps=0.0)
    p1, _ = opt.update(g, opt.init(p), p)
    np.testing.assert_allclose(to_numpy(p1["w"]), [0.99, -1.99, 2.99], atol=1e-15)


@pytest.mark.parametrize("make", [lambda: optim.sgd(0.1, momentum=0.9), lambda: optim.adam(), lambda: optim.adamw()])
def test_update_is_pure_and_float32_stays_float32(xp, make):
    opt = make()
    params = _params(xp, "float32")
    grads = _grads(xp, 0, "float32")
    before_p = {k: to_numpy(v).copy() for k, v in params.items()}
    before_g = {k: to_numpy(v).copy() for k, v in grads.items()}
    state = opt.init(params)
    state_fields_before = [dict(f) if isinstance(f, dict) else f for f in state]
    new_params, new_state = opt.update(grads, state, params)
    for k in params:
        np.testing.assert_array_equal(to_numpy(params[k]), before_p[k])
        np.testing.assert_array_equal(to_numpy(grads[k]), before_g[k])
        assert new_params[k].dtype == xp.float32
        assert not np.array_equal(to_numpy(new_params[k]), before_p[k])
    for f_before, f_after in zip(state_fields_before, state):
        if isinstance(f_before, dict):
            for k in f_before:
                assert f_after[k] is f_before[k]
    assert new_state is not state and new_params is not params


def test_none_grad_skips_param_like_torch(xp):
    torch = pytest.importorskip("torch")
    params = _params(xp)
    tparams = {k: torch.tensor(to_numpy(v), requires_grad=True) for k, v in params.items()}
    topt = torch.optim.Adam(list(tparams.values()), lr=0.1, foreach=False)
    opt = optim.adam(lr=0.1)
    state = opt.init(params)
    for t in range(4):
        grads = _grads(xp, t)
        if t % 2:
            grads["fc1.bias"] = None
        for k, p in tparams.items():
            p.grad = None if grads[k] is None else torch.tensor(to_numpy(grads[k]))
        topt.step()
        params, state = opt.update(grads, state, params)
    assert state.steps == {"fc1.weight": 4, "fc1.bias": 2}
    for k in params:
        np.testing.assert_allclose(to_numpy(params[k]), tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "factory,kw,name",
    [
        (optim.sgd, dict(lr=0.0), "lr"),
        (optim.sgd, dict(lr=-1.0), "lr"),
        (optim.sgd, dict(lr=0.1, momentum=-0.1), "momentum"),
        (optim.sgd, dict(lr=0.1, nesterov=True), "nesterov"),
        (optim.sgd, dict(lr=0.1, weight_decay=-1.0), "weight_decay"),
        (optim.adam, dict(lr=0.0), "lr"),
        (optim.adam, dict(betas=(1.0, 0.9)), "betas[0]"),
        (optim.adam, dict(betas=(0.9, -0.1)), "betas[1]"),
        (optim.adam, dict(betas=0.9), "betas"),
        (optim.adamw, dict(eps=-1e-8), "eps"),
        (optim.adamw, dict(weight_decay=-1.0), "weight_decay"),
        (optim.sgd, dict(lr=float("nan")), "lr"),
    ],
)
def test_bad_hyperparameters_raise_naming_argument(factory, kw, name):
    with pytest.raises(ValueError, match=name.replace("[", r"\[").replace("]", r"\]")):
        factory(**kw)


def test_bad_grads_raise_and_nothing_changes(xp):
    opt = optim.sgd(0.1, momentum=0.9)
    params = _params(xp)
    state = opt.init(params)
    with pytest.raises(ValueError, match="not in params"):
        opt.update({"nope": params["fc1.bias"]}, state, params)
    bad = _grads(xp, 0)
    bad["fc1.bias"] = xp.zeros((5,), dtype=xp.float64)
    with pytest.raises(ValueError, match=r"grads\['fc1.bias'\] has shape"):
        opt.update(bad, state, params)
    with pytest.raises(ValueError, match="state.momentum"):
        opt.update({"fc1.weight": params["fc1.weight"]}, state, {"fc1.weight": params["fc1.weight"], "x": params["fc1.bias"]})
    with pytest.raises(ValueError, match="lr schedule returned"):
        o = optim.sgd(lambda s: -1.0)
        o.update(_grads(xp, 0), o.init(params), params)
    assert state.count == 0


@pytest.mark.parametrize("make", [lambda: optim.sgd(0.1, momentum=0.9, nesterov=True), lambda: optim.adam(amsgrad=True),
                                  lambda: optim.sgd(0.1)])
def test_state_file_round_trip_resumes_bit_for_bit(xp, tmp_path, make):
    opt = make()
    params = _params(xp, "float32")
    state = opt.init(params)
    for t in range(3):
        params, state = opt.update(_grads(xp, t, "float32"), state, params)
    path = tmp_path / "state.npz"
    optim.save_state(path, state)
    loaded = optim.load_state(path, type(state), xp=xp)
    pa, sa = params, state
    pb, sb = dict(params), loaded
    for t in range(3, 6):
        pa, sa = opt.update(_grads(xp, t, "float32"), sa, pa)
        pb, sb = opt.update(_grads(xp, t, "float32"), sb, pb)
    for k in pa:
        np.testing.assert_array_equal(to_numpy(pa[k]), to_numpy(pb[k]))
    assert sa.count == sb.count == 6
    with pytest.raises(ValueError, match="not a"):
        optim.load_state(path, optim.AdamState if type(state) is optim.SGDState else optim.SGDState, xp=xp)


def test_schedules_values():
    assert schedules.constant(0.3)(10) == 0.3
    sd = schedules.step_decay(1.0, step_size=3, gamma=0.5)
    assert [sd(t) for t in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    ms = schedules.multi_step(1.0, [2, 4], gamma=0.1)
    assert [ms(t) for t in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    ex = schedules.exponential(2.0, 0.5)
    assert ex(3) == 0.25
    cs = schedules.cosine(1.0, 4, alpha=0.0)
    assert [cs(t) for t in (0, 2, 4, 9)] == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-15)
    lw = schedules.linear_warmup(0.0, 1.0, 4)
    assert [lw(t) for t in range(6)] == [0, 0.25, 0.5, 0.75, 1.0, 1.0]
    wc = schedules.warmup_cosine(1.0, 2, 6, end_value=0.1)
    assert wc(1) == 0.5 and wc(2) == 1.0 and wc(6) == pytest.approx(0.1) and wc(4) == pytest.approx(0.55)
    pw = schedules.piecewise([2, 5], [1.0, 0.1, 0.01])
    assert [pw(t) for t in (0, 2, 5)] == [1.0, 0.1, 0.01]
    hook = schedules.sigma_from(schedules.exponential(0.1, 0.5))
    assert hook(2, 123.0) == 0.025
    for bad, name in [(lambda: schedules.step_decay(1.0, 0), "step_size"), (lambda: schedules.cosine(1.0, 5, alpha=2.0), "alpha"),
                      (lambda: schedules.piecewise([1], [1.0]), "values"), (lambda: schedules.exponential(-1.0, 0.5), "init_value")]:
        with pytest.raises(ValueError, match=name):
            bad()


def test_torch_steplr_parity():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    o = torch.optim.SGD([p], lr=0.3)
    s = torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.3)
    ours = schedules.step_decay(0.3, 2, 0.3)
    for t in range(7):
        assert o.param_groups[0]["lr"] == pytest.approx(ours(t), rel=1e-15)
        o.step()
        s.step()
