"""SiLU, LayerNorm (with and without affine), the Residual combinator and PyTorch's default init.

Gradient checks against central differences (float64, every backend) and
against torch autograd (float64, 1e-10) on a pre-norm residual MLP whose
parameters are copied into an equivalent torch module.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from egdnp import _backend, nn
from egdnp.nn import functional as F
from egdnp.nn import init as initialisers
from test_nn_gradients import check_op
from test_nn_model import _model_grad_check

R = np.random.default_rng(20)


def _host(a):
    return _backend.to_host(a)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("lead", [(4,), (2, 3)])
def test_layer_norm_grad(xp, affine, lead):
    x = R.standard_normal(lead + (5,)) * 2.0 + 0.5
    if affine:
        check_op(xp, lambda x, g, b: F.layer_norm_forward(x, g, b, 1e-5), F.layer_norm_backward,
                 [x, R.standard_normal(5), R.standard_normal(5)], names=["x", "gamma", "beta"])
    else:
        check_op(xp, lambda x: F.layer_norm_forward(x, None, None, 1e-5), lambda d, c: F.layer_norm_backward(d, c)[0],
                 [x], names=["x"])


@pytest.mark.parametrize("train", [True, False])
def test_residual_model_grad(xp, train):
    model = nn.serial(
        ("fc_in", nn.Linear(4, 6)),
        ("block1", nn.Residual(("ln", nn.LayerNorm(6)), ("fc1", nn.Linear(6, 7)), ("silu", nn.SiLU()),
                               ("fc2", nn.Linear(7, 6)))),
        ("block2", nn.Residual(("ln", nn.LayerNorm(6, affine=False)), ("fc1", nn.Linear(6, 6)), ("bn", nn.BatchNorm1d(6)),
                               ("act", nn.Tanh()))),
        ("fc_out", nn.Linear(6, 3)),
    )
    assert "block2.bn.running_mean" in model.state_shapes()
    state = model.init_state(xp=xp, dtype="float64")
    x = xp.asarray(R.standard_normal((5, 4)))
    y = xp.asarray(np.array([0, 1, 2, 0, 1]))
    _model_grad_check(xp, model, x, y, train=train, state=state)
    # the input gradient too (the skip path adds dout to the body's dx)
    params = model.init(1, xp=xp, dtype="float64")
    out, cache = model.forward(params, x, state=state, train=train)
    dout = nn.softmax_cross_entropy_grad(out, y)
    dx, _ = model.backward(params, cache, dout)
    xh, i, h = _host(x), (2, 1), 1e-6
    vals = []
    for sgn in (1, -1):
        xs = xh.copy()
        xs[i] += sgn * h
        o, _ = model.forward(params, xp.asarray(xs), state=state, train=train)
        vals.append(float(nn.softmax_cross_entropy(o, y)))
    num = (vals[0] - vals[1]) / (2 * h)
    assert abs(float(_host(dx)[i]) - num) <= 1e-6 * max(abs(num), 1e-3)


def test_residual_names_init_streams_and_errors():
    model = nn.residual_mlp(3, 2, width=4, depth=2, hidden=5)
    assert model.names == ("fc_in", "block1", "block2", "ln_out", "fc_out")
    shapes = model.param_shapes()
    assert shapes["block2.fc1.weight"] == (5, 4) and shapes["block1.ln.weight"] == (4,)
    p = model.init(7, dtype="float64")
    # the body's parameters are initialised from their full key's stream
    ref = nn.Linear(4, 5).init(7, "block2.fc1", dtype="float64")
    np.testing.assert_array_equal(p["block2.fc1.weight"], ref["weight"])
    assert not np.array_equal(p["block1.fc1.weight"], p["block2.fc1.weight"])
    with pytest.raises(ValueError, match="keep the shape"):
        bad = nn.serial(("b", nn.Residual(nn.Linear(3, 4))))
        bad.forward(bad.init(0), np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"layer 'b\.fc1' \(Linear 3->3\)"):
        ok = nn.serial(("b", nn.Residual(nn.Linear(3, 3))))
        ok.forward(ok.init(0), np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="at least one layer"):
        nn.Residual()
    with pytest.raises(ValueError, match="num_features"):
        nn.LayerNorm(0)
    with pytest.raises(ValueError, match="init='kaiming'"):
        nn.Linear(2, 3, init="kaiming")
    assert nn.LayerNorm(4, affine=False).param_shapes() == {}


def _torch_resmlp(torch, params, depth):
    import torch.nn as tnn

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln, self.fc1, self.fc2 = tnn.LayerNorm(6), tnn.Linear(6, 9), tnn.Linear(9, 6)

        def forward(self, x):
            return x + self.fc2(tnn.functional.silu(self.fc1(self.ln(x))))

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fc_in = tnn.Linear(5, 6)
            self.blocks = tnn.ModuleList([Block() for _ in range(depth)])
            self.ln_out, self.fc_out = tnn.LayerNorm(6), tnn.Linear(6, 3)

        def forward(self, x):
            h = self.fc_in(x)
            for b in self.blocks:
                h = b(h)
            return self.fc_out(self.ln_out(h))

    net = Net().double()
    names = {}
    for k in params:
        tk = k
        if k.startswith("block"):
            i = int(k[5:k.index(".")]) - 1
            tk = f"blocks.{i}." + k[k.index(".") + 1:]
        names[k] = tk
    with torch.no_grad():
        for k, tk in names.items():
            net.get_parameter(tk).copy_(torch.from_numpy(np.asarray(params[k])))
    return net, names


def test_residual_mlp_matches_torch_float64():
    torch = pytest.importorskip("torch")
    model = nn.residual_mlp(5, 3, width=6, depth=2, hidden=9, init="torch")
    params = model.init(3, dtype="float64")
    params = {k: v + 0.1 * R.standard_normal(v.shape) for k, v in params.items()}  # non-trivial LayerNorm affine
    x = R.standard_normal((2, 7, 5))  # a population axis too
    y = np.array([0, 1, 2, 0, 1, 2, 2])
    loss, grads = model.loss_and_grad(params, x, y)
    net, names = _torch_resmlp(torch, params, 2)
    xt = torch.from_numpy(x)
    out = net(xt)
    np.testing.assert_allclose(model.apply(params, x), out.detach().numpy(), rtol=0, atol=1e-12)
    t_loss = torch.nn.functional.cross_entropy(out.reshape(-1, 3), torch.from_numpy(np.tile(y, 2)))
    t_loss.backward()
    assert abs(float(loss) - float(t_loss.detach())) < 1e-12
    for k, tk in names.items():
        np.testing.assert_allclose(grads[k], net.get_parameter(tk).grad.numpy(), rtol=0, atol=1e-10, err_msg=k)


def test_torch_init_matches_torch_defaults():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lin = torch.nn.Linear(300, 200)
    conv = torch.nn.Conv2d(8, 16, 3)
    m = nn.serial(("fc", nn.Linear(300, 200, init="torch")))
    c = nn.serial(("conv", nn.Conv2d(8, 16, 3, init="torch")))
    p, q = m.init(0, dtype="float64"), c.init(0, dtype="float64")
    for ours, theirs, fan_in in ((p["fc.weight"], lin.weight, 300), (p["fc.bias"], lin.bias, 300),
                                 (q["conv.weight"], conv.weight, 72), (q["conv.bias"], conv.bias, 72)):
        bound = 1.0 / math.sqrt(fan_in)
        theirs = theirs.detach().numpy().astype(np.float64)
        assert ours.shape == theirs.shape
        for w in (ours, theirs):  # both U(-bound, bound)
            assert np.abs(w).max() <= bound and np.abs(w).max() > (0.9 if w.size < 100 else 0.99) * bound
        if ours.size > 10000:  # the Linear weight (60000 draws: the std to well within 3 %)
            assert abs(ours.std() / (bound / math.sqrt(3.0)) - 1.0) < 0.03
            assert abs(ours.std() / theirs.std() - 1.0) < 0.05
    # model-wide switches
    for model in (nn.mlp((6, 5, 3), init="torch"), nn.cnn(1, 8, 4, channels=(2, 3), init="torch"),
                  nn.residual_mlp(4, 2, width=3, depth=1, init="torch")):
        for _, layer in model.layers:
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                assert layer.weight_init == layer.bias_init == "torch_uniform"
    pb = nn.mlp((6, 5, 3), init="torch").init(1, dtype="float64")["fc1.bias"]
    assert np.abs(pb).max() <= 1 / math.sqrt(6) and np.any(pb != 0)
    # the bias stream is the bias key's, the bound the weight's fan_in
    u = _host(initialisers.torch_uniform((5,), seed=1, name="fc1.bias", dtype="float64", fan_in=6))
    np.testing.assert_array_equal(pb, u)
