"""Models: naming, initialisers, population axis, state, validation errors, model-level gradient checks."""

from __future__ import annotations

import numpy as np
import pytest

from egdnp import _backend, rng
from egdnp import nn
from egdnp.nn import init as initialisers
from egdnp.nn import layers as L

R = np.random.default_rng(11)


def _host(a):
    return _backend.to_host(a)


def _params_to(xp, params):
    return {k: xp.asarray(_host(v)) for k, v in params.items()}


# ----------------------------------------------------------------------------
def test_mlp_and_cnn_names_and_shapes():
    m = nn.mlp()
    assert m.names == ("fc1", "tanh1", "fc2")
    assert m.param_shapes() == {"fc1.weight": (256, 784), "fc1.bias": (256,), "fc2.weight": (10, 256), "fc2.bias": (10,)}
    c = nn.cnn()
    assert c.param_shapes() == {
        "conv1.weight": (16, 1, 3, 3), "conv1.bias": (16,),
        "conv2.weight": (32, 16, 3, 3), "conv2.bias": (32,),
        "fc.weight": (10, 32 * 7 * 7), "fc.bias": (10,),
    }
    assert c.init_state() == {}
    assert nn.mlp((3, 4, 5, 2), activation="relu", bias=False).param_shapes() == {
        "fc1.weight": (4, 3), "fc2.weight": (5, 4), "fc3.weight": (2, 5)
    }


def test_serial_auto_names_and_errors():
    m = nn.serial(L.Linear(3, 4), L.ReLU(), L.Linear(4, 2), L.ReLU())
    assert m.names == ("fc1", "relu1", "fc2", "relu2")
    with pytest.raises(ValueError, match="more than once"):
        nn.serial(("a", L.ReLU()), ("a", L.Tanh()))
    with pytest.raises(TypeError, match="not a Layer"):
        nn.serial(lambda x: x)
    with pytest.raises(ValueError, match="activation"):
        L.Activation("swish")


def test_init_is_the_same_on_every_backend(xp):
    ref = nn.cnn().init(3)
    got = nn.cnn().init(3, xp=xp)
    for k in ref:  # normals agree to the rng's tolerance (scaled by std < 1), uniforms bit for bit
        np.testing.assert_allclose(_host(got[k]), ref[k], rtol=0, atol=rng.NORMAL_ATOL["float32"])
    assert nn.cnn().init(3, xp=xp, dtype="float64")["fc.weight"].dtype == xp.float64


@pytest.mark.parametrize("name", sorted(initialisers.INITIALISERS))
def test_every_initialiser_is_the_same_on_every_backend(xp, name):
    fn = initialisers.get(name)
    for dtype in ("float32", "float64"):
        ref = _host(fn((5, 3, 2, 2), seed=7, name="conv1.weight", dtype=dtype))
        got = fn((5, 3, 2, 2), seed=7, name="conv1.weight", xp=xp, dtype=dtype)
        assert got.dtype == getattr(xp, dtype)
        np.testing.assert_allclose(_host(got), ref, rtol=0, atol=rng.NORMAL_ATOL[dtype])


def test_init_uses_documented_addresses():
    p = nn.mlp((6, 5, 3), activation="relu").init(9, dtype="float64")
    z = _host(rng.normal((5, 6), seed=9, stream="init/fc1.weight", dtype="float64"))
    np.testing.assert_allclose(p["fc1.weight"], z * np.sqrt(2.0 / 6), rtol=1e-13)
    np.testing.assert_array_equal(p["fc1.bias"], np.zeros(5))


@pytest.mark.parametrize("name,std,bound", [
    ("he_normal", lambda fi, fo: np.sqrt(2 / fi), None),
    ("glorot_normal", lambda fi, fo: np.sqrt(2 / (fi + fo)), None),
    ("lecun_normal", lambda fi, fo: np.sqrt(1 / fi), None),
    ("he_uniform", None, lambda fi, fo: np.sqrt(6 / fi)),
    ("glorot_uniform", None, lambda fi, fo: np.sqrt(6 / (fi + fo))),
    ("lecun_uniform", None, lambda fi, fo: np.sqrt(3 / fi)),
])
def test_initialiser_statistics(name, std, bound):
    shape = (64, 32, 3, 3)
    fi, fo = initialisers.fans(shape)
    assert (fi, fo) == (32 * 9, 64 * 9)
    w = _host(initialisers.get(name)(shape, seed=1, name="conv.weight", dtype="float64"))
    if std is not None:
        assert abs(w.std() / std(fi, fo) - 1) < 0.03
    else:
        b = bound(fi, fo)
        assert np.abs(w).max() <= b and np.abs(w).max() > 0.95 * b
    assert np.all(_host(initialisers.zeros(shape)) == 0)
    with pytest.raises(ValueError, match="initialiser"):
        initialisers.get("orthogonal")


def test_population_axis_matches_member_loop(xp):
    model = nn.cnn(channels=(4, 6))
    params = model.init(0, xp=xp, dtype="float64")
    x = xp.asarray(R.standard_normal((3, 2, 1, 28, 28)))
    out = _host(model.apply(params, x))
    assert out.shape == (3, 2, 10)
    for m in range(3):
        np.testing.assert_allclose(out[m], _host(model.apply(params, x[m, ...])), rtol=1e-12, atol=1e-12)
    labels = xp.asarray(np.array([1, 7]))
    per = _host(nn.softmax_cross_entropy(model.apply(params, x), labels, reduction="none"))
    assert per.shape == (3, 2)


def test_apply_equals_forward_eval_and_layer_fn(xp):
    model = nn.mlp((5, 4, 3))
    params = model.init(1, xp=xp, dtype="float64")
    x = xp.asarray(R.standard_normal((6, 5)))
    out, cache = model.forward(params, x)
    np.testing.assert_array_equal(_host(out), _host(model.apply(params, x)))
    assert cache.state == {}

    def double_fc2(name, layer, p, h):
        return None if name != "fc2" else 2.0 * nn.functional.linear(h, p["weight"], p["bias"])

    np.testing.assert_allclose(_host(model.apply(params, x, layer_fn=double_fc2)), 2.0 * _host(out), rtol=1e-12)


def _model_grad_check(xp, model, x, y, *, train, state=None, seed=None):
    params = model.init(2, xp=xp, dtype="float64")
    params = {k: xp.asarray(_host(v) + 0.1 * R.standard_normal(tuple(v.shape))) for k, v in params.items()}
    loss, grads = model.loss_and_grad(params, x, y, train=train, state=state, seed=seed, step=3)
    assert set(grads) == set(params)
    h = 1e-6
    for key, value in params.items():
        base = _host(value)
        num = np.zeros_like(base)
        flat, nflat = base.reshape(-1), num.reshape(-1)
        # every entry for small tensors, a fixed random subset for large ones
        idx = np.arange(flat.size) if flat.size <= 40 else np.random.default_rng(0).choice(flat.size, 40, replace=False)
        for i in idx:
            vals = []
            for sgn in (1, -1):
                pert = flat.copy()
                pert[i] += sgn * h
                p2 = dict(params)
                p2[key] = xp.asarray(pert.reshape(base.shape))
                vals.append(float(model.loss_and_grad(p2, x, y, train=train, state=state, seed=seed, step=3)[0]))
            nflat[i] = (vals[0] - vals[1]) / (2 * h)
        ana = _host(grads[key]).reshape(-1)[idx]
        # floor: a bias right before BatchNorm has an exactly zero gradient in train mode
        rel = np.linalg.norm(ana - nflat[idx]) / max(np.linalg.norm(ana) + np.linalg.norm(nflat[idx]), 1e-3)
        assert rel < 1e-6, f"{key}: relative error {rel:.2e}"


@pytest.mark.parametrize("train", [True, False])
def test_mlp_with_batchnorm_and_dropout_grad(xp, train):
    model = nn.mlp((5, 6, 3), activation="gelu", dropout=0.2, batch_norm=True)
    assert model.names == ("fc1", "bn1", "gelu1", "dropout1", "fc2")
    state = model.init_state(xp=xp, dtype="float64")
    x = xp.asarray(R.standard_normal((7, 5)))
    y = xp.asarray(np.array([0, 1, 2, 0, 1, 2, 1]))
    _model_grad_check(xp, model, x, y, train=train, state=state, seed=4)


@pytest.mark.parametrize("train", [True, False])
def test_cnn_with_batchnorm_grad(xp, train):
    model = nn.serial(
        ("conv1", L.Conv2d(1, 2, 3, padding=1)), ("bn1", L.BatchNorm2d(2)), ("relu1", L.ReLU()),
        ("pool1", L.AvgPool2d(2)), ("conv2", L.Conv2d(2, 3, 3, stride=2, padding=1)), ("sig1", L.Sigmoid()),
        ("pool2", L.MaxPool2d(2, stride=1)), ("flatten", L.Flatten()), ("fc", L.Linear(3, 2)),
    )
    state = model.init_state(xp=xp, dtype="float64")
    x = xp.asarray(R.standard_normal((3, 1, 8, 8)))
    y = xp.asarray(np.array([0, 1, 1]))
    _model_grad_check(xp, model, x, y, train=train, state=state)


def test_cnn_builder_grad_and_input_grad():
    xp = _backend.get_namespace("numpy")
    model = nn.cnn(channels=(2, 3))
    x = R.standard_normal((2, 1, 28, 28))
    y = np.array([3, 4])
    _model_grad_check(xp, model, x, y, train=True)
    params = model.init(0, dtype="float64")
    out, cache = model.forward(params, x)
    dout = nn.softmax_cross_entropy_grad(out, y)
    dx, _ = model.backward(params, cache, dout)
    i = (0, 0, 10, 12)
    xp_, xm = x.copy(), x.copy()
    xp_[i] += 1e-6
    xm[i] -= 1e-6
    num = (float(nn.softmax_cross_entropy(model.apply(params, xp_), y)) - float(nn.softmax_cross_entropy(model.apply(params, xm), y))) / 2e-6
    assert abs(dx[i] - num) <= 1e-6 * max(abs(num), 1e-3)
    assert model.backward(params, cache, dout, need_dx=False)[0] is None


def test_batchnorm_state_update_and_eval(xp):
    model = nn.mlp((3, 4, 2), batch_norm=True)
    params = model.init(0, xp=xp, dtype="float64")
    state = model.init_state(xp=xp, dtype="float64")
    x_host = R.standard_normal((50, 3)) * 3 + 1
    x = xp.asarray(x_host)
    out, cache = model.forward(params, x, state=state, train=True)
    new = cache.state
    assert set(new) == {"bn1.running_mean", "bn1.running_var"}
    h = x_host @ _host(params["fc1.weight"]).T + _host(params["fc1.bias"])
    np.testing.assert_allclose(_host(new["bn1.running_mean"]), 0.1 * h.mean(0), rtol=1e-12)
    np.testing.assert_allclose(_host(new["bn1.running_var"]), 0.9 + 0.1 * h.var(0, ddof=1), rtol=1e-12)
    np.testing.assert_array_equal(_host(state["bn1.running_mean"]), np.zeros(4))  # caller's state untouched
    _, cache_eval = model.forward(params, x, state=new, train=False)
    assert cache_eval.state is not None
    np.testing.assert_array_equal(_host(cache_eval.state["bn1.running_mean"]), _host(new["bn1.running_mean"]))
    loss, grads, st = model.loss_and_grad(params, x, xp.asarray(np.zeros(50, dtype=np.int64)), state=state, return_state=True)
    np.testing.assert_allclose(_host(st["bn1.running_mean"]), _host(new["bn1.running_mean"]))
    with pytest.raises(ValueError, match="init_state"):
        model.apply(params, x)


def test_dropout_needs_seed_and_is_deterministic():
    model = nn.mlp((4, 8, 2), dropout=0.5)
    params = model.init(0)
    x = R.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="seed"):
        model.forward(params, x, train=True)
    a, _ = model.forward(params, x, train=True, seed=1, step=2)
    b, _ = model.forward(params, x, train=True, seed=1, step=2)
    c, _ = model.forward(params, x, train=True, seed=1, step=3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(model.apply(params, x), model.forward(params, x)[0])
    # a population of identical inputs gets one mask per member (the mask has the full input shape)
    pop, _ = model.forward(params, np.stack([x, x]), train=True, seed=1, step=2)
    assert not np.array_equal(pop[0], pop[1])


def test_float32_matches_float64_model():
    model = nn.cnn()
    p64 = model.init(0, dtype="float64")
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x = R.random((8, 1, 28, 28))
    y = np.arange(8)
    l64, g64 = model.loss_and_grad(p64, x, y)
    l32, g32 = model.loss_and_grad(p32, x.astype(np.float32), y)
    assert abs(float(l32) - float(l64)) < 1e-5 * max(1.0, abs(float(l64)))
    for k in g64:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-4, atol=1e-5 * np.abs(g64[k]).max())


# ----------------------------------------------------------------------------
def test_validation_errors_name_key_and_shape(xp):
    model = nn.mlp((4, 3, 2))
    params = model.init(0, xp=xp)
    x = xp.asarray(R.standard_normal((5, 4)).astype(np.float32))
    missing = dict(params)
    del missing["fc2.bias"]
    with pytest.raises(ValueError, match=r"missing 'fc2.bias' \(shape \(2,\)\)"):
        model.apply(missing, x)
    extra = dict(params, **{"fc3.weight": params["fc1.weight"]})
    with pytest.raises(ValueError, match="unexpected 'fc3.weight'"):
        model.apply(extra, x)
    wrong = dict(params, **{"fc1.weight": xp.zeros((3, 5), dtype=xp.float32)})
    with pytest.raises(ValueError, match=r"params\['fc1.weight'\] has shape \(3, 5\), expected \(3, 4\)"):
        model.apply(wrong, x)
    with pytest.raises(ValueError, match=r"layer 'fc1'.*expected \(\.\.\., 4\)"):
        model.apply(params, xp.zeros((5, 7), dtype=xp.float32))
    with pytest.raises(TypeError, match="dtype"):
        model.apply(params, xp.zeros((5, 4), dtype=xp.int64))
    with pytest.raises(TypeError, match="float64 but params are float32"):
        model.apply(params, xp.zeros((5, 4), dtype=xp.float64))
    with pytest.raises(ValueError, match=r"labels range over \[0, 7\]"):
        model.loss_and_grad(params, x, xp.asarray(np.array([0, 1, 7, 1, 0])))
    with pytest.raises(TypeError, match="integer"):
        model.loss_and_grad(params, x, xp.zeros((5,), dtype=xp.float32))
    with pytest.raises(ValueError, match="broadcast"):
        model.loss_and_grad(params, x, xp.asarray(np.array([0, 1, 1])))
    with pytest.raises(ValueError, match="loss"):
        model.loss_and_grad(params, x, xp.asarray(np.array([0, 1, 1, 0, 0])), loss="hinge")
    cnn = nn.cnn()
    with pytest.raises(ValueError, match=r"layer 'conv1'.*\(N, 1, H, W\)"):
        cnn.apply(cnn.init(0, xp=xp), xp.zeros((2, 3, 28, 28), dtype=xp.float32))


def test_loss_and_grad_mse_and_callable():
    model = nn.mlp((3, 4, 2))
    params = model.init(0, dtype="float64")
    x, t = R.standard_normal((6, 3)), R.standard_normal((6, 2))
    loss, grads = model.loss_and_grad(params, x, t, loss="mse")
    loss2, grads2 = model.loss_and_grad(params, x, t, loss=lambda o, y: (nn.mse(o, y), nn.mse_grad(o, y)))
    assert float(loss) == float(loss2)
    for k in grads:
        np.testing.assert_array_equal(grads[k], grads2[k])


def test_accuracy_population():
    logits = np.zeros((2, 3, 4))
    logits[0, :, 1] = 1.0
    logits[1, :, 2] = 1.0
    acc = nn.accuracy(logits, np.array([1, 1, 2]))
    np.testing.assert_allclose(acc, [2 / 3, 1 / 3])


# ----------------------------------------------------------------------------
def test_population_loss_and_grad_is_mean_of_members(xp):
    """x (pop, batch, ...) with shared params: the loss and gradients average the members' own."""
    model = nn.serial(
        ("conv1", L.Conv2d(1, 2, 3, padding=1)), ("tanh1", L.Tanh()), ("pool1", L.MaxPool2d(2)),
        ("flatten", L.Flatten()), ("fc1", L.Linear(2 * 3 * 3, 4, bias=False)), ("relu1", L.ReLU()),
        ("fc2", L.Linear(4, 3)),
    )
    params = model.init(5, xp=xp, dtype="float64")
    x_host = R.standard_normal((3, 4, 1, 6, 6))
    y = xp.asarray(np.array([0, 2, 1, 2]))
    loss, grads = model.loss_and_grad(params, xp.asarray(x_host), y)
    members = [model.loss_and_grad(params, xp.asarray(x_host[m]), y) for m in range(3)]
    np.testing.assert_allclose(float(loss), np.mean([float(lm) for lm, _ in members]), rtol=1e-12)
    for k in params:
        expected = np.mean([_host(g[k]) for _, g in members], axis=0)
        np.testing.assert_allclose(_host(grads[k]), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("pop", [False, True])
def test_batchnorm2d_matches_torch_train_and_eval(pop):
    """BatchNorm2d against torch: train output, running statistics, eval output, input gradient."""
    torch = pytest.importorskip("torch")
    layer = L.BatchNorm2d(3, momentum=0.2)
    x = R.standard_normal((2, 5, 3, 4, 4) if pop else (5, 3, 4, 4)) * 2 + 1
    gamma, beta = R.standard_normal(3), R.standard_normal(3)
    params = {"weight": gamma, "bias": beta}
    state = layer.init_state("bn1", dtype="float64")
    ctx = L.Context("bn1", True)
    out, cache, new_state = layer.forward(params, state, x, ctx)
    dout = R.standard_normal(out.shape)
    dx, grads = layer.backward(params, cache, dout)

    ref = torch.nn.BatchNorm2d(3, momentum=0.2).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(gamma))
        ref.bias.copy_(torch.from_numpy(beta))
    members, douts = (x, dout) if pop else (x[None], dout[None])
    ref_out, ref_dx, ref_dgamma, means, vars_ = [], [], [], [], []
    for xm, dm in zip(members, douts):  # torch has no population axis: one member at a time, same start
        ref.running_mean.zero_()
        ref.running_var.fill_(1.0)
        xt = torch.from_numpy(xm).requires_grad_(True)
        o = ref.train()(xt)
        dxt, dgt = torch.autograd.grad(o, (xt, ref.weight), torch.from_numpy(dm))
        ref_out.append(o.detach().numpy())
        ref_dx.append(dxt.numpy())
        ref_dgamma.append(dgt.numpy())
        means.append(ref.running_mean.numpy().copy())
        vars_.append(ref.running_var.numpy().copy())
    unstack = (lambda a: np.stack(a)) if pop else (lambda a: a[0])
    np.testing.assert_allclose(out, unstack(ref_out), rtol=1e-10, atol=1e-12)
    # each member normalises with its own batch statistics, so its dx is torch's for that member
    np.testing.assert_allclose(dx, unstack(ref_dx), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(grads["weight"], np.sum(ref_dgamma, axis=0), rtol=1e-9)
    # the running update averages the members' statistics (for one member: torch's update)
    np.testing.assert_allclose(new_state["running_mean"], np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(new_state["running_var"], np.mean(vars_, axis=0), rtol=1e-12)
    # eval mode: normalise with the (updated) running statistics, like torch's eval()
    ref.running_mean.copy_(torch.from_numpy(np.asarray(new_state["running_mean"])))
    ref.running_var.copy_(torch.from_numpy(np.asarray(new_state["running_var"])))
    eval_out, _, same = layer.forward(params, new_state, x, L.Context("bn1", False))
    assert same is new_state
    with torch.no_grad():
        ref_eval = np.stack([ref.eval()(torch.from_numpy(xm)).numpy() for xm in members])
    np.testing.assert_allclose(eval_out, ref_eval if pop else ref_eval[0], rtol=1e-10, atol=1e-12)


def test_batchnorm1d_matches_torch():
    torch = pytest.importorskip("torch")
    layer = L.BatchNorm1d(4)
    x = R.standard_normal((6, 4)) * 3 - 1
    params = {"weight": R.standard_normal(4), "bias": R.standard_normal(4)}
    state = layer.init_state("bn1", dtype="float64")
    out, _, new_state = layer.forward(params, state, x, L.Context("bn1", True))
    ref = torch.nn.BatchNorm1d(4).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(params["weight"]))
        ref.bias.copy_(torch.from_numpy(params["bias"]))
        ref_out = ref.train()(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(new_state["running_mean"], ref.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(new_state["running_var"], ref.running_var.numpy(), rtol=1e-12)
        eval_out, _, _ = layer.forward(params, new_state, x, L.Context("bn1", False))
        np.testing.assert_allclose(eval_out, ref.eval()(torch.from_numpy(x)).numpy(), rtol=1e-10, atol=1e-12)


def test_float32_matches_float64_on_every_backend(xp):
    """The documented float32 tolerances hold on every namespace (small CNN with BatchNorm, GELU MLP)."""
    for model, shape, train in [
        (nn.cnn(channels=(3, 4), image_size=8, batch_norm=True), (6, 1, 8, 8), True),
        (nn.mlp((5, 7, 3), activation="gelu", batch_norm=True), (6, 5), False),
    ]:
        p64 = {k: xp.asarray(_host(v) + 0.1 * R.standard_normal(tuple(v.shape))) for k, v in model.init(1, xp=xp, dtype="float64").items()}
        p32 = {k: xp.astype(v, xp.float32) for k, v in p64.items()}
        s64 = model.init_state(xp=xp, dtype="float64")
        s32 = model.init_state(xp=xp, dtype="float32")
        x = R.random(shape)
        y = xp.asarray(np.array([0, 1, 2, 2, 1, 0]))
        l64, g64 = model.loss_and_grad(p64, xp.asarray(x), y, state=s64, train=train)
        l32, g32 = model.loss_and_grad(p32, xp.asarray(x.astype(np.float32)), y, state=s32, train=train)
        assert abs(float(l32) - float(l64)) < 1e-5 * max(1.0, abs(float(l64)))
        # absolute floor on the scale of all gradients: a bias right before BatchNorm has an
        # exactly-zero float64 gradient and float32 rounding noise of ~1e-7 * the others
        scale = max(np.abs(_host(g)).max() for g in g64.values())
        for k in g64:
            assert g32[k].dtype == xp.float32
            np.testing.assert_allclose(_host(g32[k]), _host(g64[k]), rtol=1e-4, atol=1e-5 * scale, err_msg=k)


def test_namespace_and_dtype_errors():
    import array_api_strict as strict

    model = nn.mlp((4, 3, 2))
    params = model.init(0)
    with pytest.raises(TypeError, match="x is an array of array_api_strict but params is of numpy"):
        model.apply(params, strict.zeros((2, 4), dtype=strict.float32))
    with pytest.raises(TypeError, match="x has dtype float16; models run in float32 or float64"):
        model.apply(params, np.zeros((2, 4), dtype=np.float16))
    half = {k: v.astype(np.float16) for k, v in params.items()}
    with pytest.raises(TypeError, match=r"params\['fc1.weight'\] has dtype float16; parameters must be float32 or float64"):
        model.apply(half, np.zeros((2, 4), dtype=np.float16))
    mixed = dict(params, **{"fc2.bias": params["fc2.bias"].astype(np.float64)})
    with pytest.raises(TypeError, match=r"params\['fc2.bias'\] has dtype float64 but other entries are float32"):
        model.apply(mixed, np.zeros((2, 4), dtype=np.float32))
    bn = nn.mlp((4, 3, 2), batch_norm=True)
    bad_state = dict(bn.init_state(), **{"bn1.running_var": np.ones(4, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"state\['bn1.running_var'\] has shape \(4,\), expected \(3,\)"):
        bn.apply(bn.init(0), np.zeros((2, 4), dtype=np.float32), state=bad_state)
    with pytest.raises(ValueError, match=r"labels range over \[-1, 1\]"):
        nn.softmax_cross_entropy(np.zeros((2, 2)), np.array([-1, 1]))
    with pytest.raises(ValueError, match=r"labels range over \[5, 5\]"):
        nn.softmax_cross_entropy(np.zeros(3), np.asarray(5))  # 0-d labels are range-checked too
    with pytest.raises(ValueError, match="target has shape"):
        nn.mse(np.zeros((2, 3)), np.zeros((2, 4)))


def test_nothing_half_updated_on_error():
    """A failing call leaves params and state as they were."""
    model = nn.mlp((4, 3, 2), batch_norm=True)
    params, state = model.init(0), model.init_state()
    before = {k: v.copy() for k, v in {**params, **state}.items()}
    x = R.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="labels"):
        model.loss_and_grad(params, x, np.array([0, 1, 9, 0, 1]), state=state, return_state=True)
    for k, v in {**params, **state}.items():
        np.testing.assert_array_equal(v, before[k])


PUBLIC_MODULES = ["egdnp.nn.functional", "egdnp.nn.losses", "egdnp.nn.init", "egdnp.nn.layers", "egdnp.nn.model", "egdnp.data"]


TAKES_NO_ARRAYS = {"Context"}  # per-call settings (name, train flag, seed, step)


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_public_api_has_numpydoc_docstrings(module_name):
    """Every public function/class documents its parameters or returns, with array shapes where it takes arrays."""
    import importlib
    import inspect

    module = importlib.import_module(module_name)
    problems = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        if not doc:
            problems.append(f"{name}: no docstring")
        elif not any(section in doc for section in ("Parameters\n", "Returns\n", "Attributes\n")):
            problems.append(f"{name}: no Parameters/Returns/Attributes section")
        elif "shape" not in doc.lower() and name not in TAKES_NO_ARRAYS:
            problems.append(f"{name}: no array shapes")
        if inspect.isclass(obj) and issubclass(obj, L.Layer):
            for meth in ("param_shapes", "init", "forward", "backward", "check_input"):
                if not inspect.getdoc(getattr(obj, meth)):
                    problems.append(f"{name}.{meth}: no docstring")
    assert not problems, problems


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lead", [(3,), (2, 3)])
def test_conv_relu_pool_blocks_equal_the_layers_one_by_one(dtype, lead):
    """Serial runs each Conv2d -> ReLU -> MaxPool2d as one block (F.conv2d_relu_max_pool2d_*): the same
    outputs and gradients as calling every layer's own forward and backward in turn."""
    model = nn.serial(
        L.Conv2d(2, 3, 3, padding=1), L.ReLU(), L.MaxPool2d(2),  # a block
        L.Conv2d(3, 4, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Flatten(), L.Linear(4 * 2 * 2, 5),  # a block
    )
    assert model._conv_blocks == {0: 2, 3: 5}
    params = model.init(3, dtype=dtype)
    x = R.standard_normal(lead + (2, 9, 8)).astype(dtype)
    out, cache = model.forward(params, x)
    dout = R.standard_normal(out.shape).astype(dtype)
    dx, grads = model.backward(params, cache, dout)
    h, caches = x, []
    for name, layer in model.layers:
        local = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(name + ".")}
        h, c, _ = layer.forward(local, {}, h, L.Context(name, False, None, 0))
        caches.append(c)
    np.testing.assert_array_equal(out, h)
    d, expected = dout, {}
    for (name, layer), c in zip(model.layers[::-1], caches[::-1]):
        local = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(name + ".")}
        d, g = layer.backward(local, c, d)
        expected.update({f"{name}.{k}": v for k, v in g.items()})
    np.testing.assert_array_equal(dx, d)
    assert list(grads) == list(params)
    for key in params:
        if dtype == "float32" and key.endswith("bias"):  # float64 sums in another order, then rounded
            np.testing.assert_allclose(grads[key], expected[key], rtol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(grads[key], expected[key], err_msg=key)
    assert model.backward(params, cache, dout, need_dx=False)[0] is None


def test_only_exact_conv_relu_maxpool_triples_become_blocks():
    class MyConv(L.Conv2d):
        pass

    assert nn.cnn()._conv_blocks == {0: 2, 3: 5}
    assert nn.cnn(batch_norm=True)._conv_blocks == {}
    assert nn.serial(MyConv(1, 2, 3), L.ReLU(), L.MaxPool2d(2))._conv_blocks == {}
    assert nn.serial(L.Conv2d(1, 2, 3), L.Tanh(), L.MaxPool2d(2))._conv_blocks == {}
    assert nn.serial(L.Conv2d(1, 2, 3), L.ReLU(), L.AvgPool2d(2))._conv_blocks == {}
