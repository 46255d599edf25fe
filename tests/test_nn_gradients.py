"""Finite-difference gradient checks (float64) for every layer and loss, on every backend.

Each check draws a random cotangent ``R`` and compares the analytic gradient
of ``L = sum(f(x) * R)`` with central differences of every entry, requiring
``|g_analytic - g_numeric| / (|g_analytic| + |g_numeric|) < 1e-6`` (Euclidean
norms over the whole gradient array).  Layers with randomness (dropout) use a fixed
address; BatchNorm is checked in train and eval mode.
"""

from __future__ import annotations

import numpy as np
import pytest

from egdnp import _backend
from egdnp.nn import functional as F
from egdnp.nn import losses

TOL = 1e-6
H = 1e-6


def _to_xp(xp, a):
    return xp.asarray(np.asarray(a))


def _host(a):
    return _backend.to_host(a)


def numeric_grad(fn, arrays, index, h=H):
    """Central differences of scalar fn(*arrays) w.r.t. arrays[index] (host float64 arrays)."""
    base = [np.array(a, dtype=np.float64, copy=True) for a in arrays]
    target = base[index]
    grad = np.zeros_like(target)
    flat = target.reshape(-1)
    gflat = grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = fn(*base)
        flat[i] = old - h
        minus = fn(*base)
        flat[i] = old
        gflat[i] = (plus - minus) / (2 * h)
    return grad


def assert_close_grad(analytic, numeric, what):
    analytic = np.asarray(analytic, dtype=np.float64)
    assert analytic.shape == numeric.shape, (what, analytic.shape, numeric.shape)
    denom = max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1e-12)
    rel = np.linalg.norm(analytic - numeric) / denom
    assert rel < TOL, f"{what}: relative error {rel:.3e} >= {TOL}"


def check_op(xp, forward, backward, inputs, *, names=None, rng_seed=0):
    """Gradient check of an op: forward(*xp_arrays) -> (out, cache); backward(dout, cache) -> grads tuple."""
    r = np.random.default_rng(rng_seed)
    host_inputs = [np.asarray(a, dtype=np.float64) for a in inputs]
    out, cache = forward(*[_to_xp(xp, a) for a in host_inputs])
    cot = r.standard_normal(tuple(out.shape))
    grads = backward(_to_xp(xp, cot), cache)
    if not isinstance(grads, tuple):
        grads = (grads,)

    def scalar(*arrs):
        o, _ = forward(*[_to_xp(xp, a) for a in arrs])
        return float(np.sum(_host(o) * cot))

    names = names or [f"input{i}" for i in range(len(inputs))]
    for i, g in enumerate(grads):
        if g is None or i >= len(host_inputs):
            continue
        assert_close_grad(_host(g), numeric_grad(scalar, host_inputs, i), names[i])


R = np.random.default_rng(1234)


def _rand(*shape):
    return R.standard_normal(shape)


# ----------------------------------------------------------------------------
def test_linear_grad(xp):
    x, w, b = _rand(2, 3, 5), _rand(4, 5), _rand(4)
    check_op(
        xp,
        lambda x, w, b: F.linear_forward(x, w, b),
        lambda d, c: F.linear_backward(d, c),
        [x, w, b],
        names=["dx", "dw", "db"],
    )


def test_linear_no_bias_grad(xp):
    x, w = _rand(3, 5), _rand(4, 5)
    check_op(
        xp,
        lambda x, w: F.linear_forward(x, w, None),
        lambda d, c: F.linear_backward(d, c)[:2],
        [x, w],
        names=["dx", "dw"],
    )


@pytest.mark.parametrize(
    "stride,padding,dilation,lead",
    [(1, 1, 1, (2,)), (2, 0, 1, (2,)), ((1, 2), (2, 1), 1, (2,)), (1, 1, 2, (2,)), (1, 1, 1, (2, 2))],
)
def test_conv2d_grad(xp, stride, padding, dilation, lead):
    x, w, b = _rand(*lead, 2, 6, 5), _rand(3, 2, 3, 3), _rand(3)
    check_op(
        xp,
        lambda x, w, b: F.conv2d_forward(x, w, b, stride, padding, dilation),
        lambda d, c: F.conv2d_backward(d, c),
        [x, w, b],
        names=["dx", "dw", "db"],
    )


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_no_bias_grad(xp, stride):
    x, w = _rand(2, 2, 6, 5), _rand(3, 2, 3, 3)

    def bwd(d, c):
        dx, dw, db = F.conv2d_backward(d, c)
        assert db is None
        return dx, dw

    check_op(xp, lambda x, w: F.conv2d_forward(x, w, None, stride, 1, 1), bwd, [x, w], names=["dx", "dw"])


@pytest.mark.parametrize("lead", [(2,), (2, 2)])
def test_conv_relu_pool_block_grad(xp, lead):
    x, w, b = _rand(*lead, 2, 6, 7), _rand(3, 2, 3, 3), _rand(3)
    check_op(
        xp,
        lambda x, w, b: F.conv2d_relu_max_pool2d_forward(x, w, b, 1, 1, 1),
        lambda d, c: F.conv2d_relu_max_pool2d_backward(d, c),
        [x, w, b],
        names=["dx", "dw", "db"],
    )


def test_conv2d_grad_array_api_impl_on_numpy():
    xp = _backend.get_namespace("numpy")
    x, w, b = _rand(2, 2, 5, 5), _rand(3, 2, 3, 3), _rand(3)
    check_op(
        xp,
        lambda x, w, b: F.conv2d_forward(x, w, b, 1, 1, 1, impl="array_api"),
        lambda d, c: F.conv2d_backward(d, c),
        [x, w, b],
        names=["dx", "dw", "db"],
    )


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1))])
def test_max_pool_grad(xp, kernel, stride, padding):
    x = _rand(2, 2, 6, 7)  # continuous values: no ties within h of each other
    check_op(xp, lambda x: F.max_pool2d_forward(x, kernel, stride, padding), F.max_pool2d_backward, [x])


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1))])
def test_avg_pool_grad(xp, kernel, stride, padding):
    x = _rand(2, 2, 6, 7)
    check_op(xp, lambda x: F.avg_pool2d_forward(x, kernel, stride, padding), F.avg_pool2d_backward, [x])


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid", "gelu", "silu"])
def test_activation_grad(xp, kind):
    fwd, bwd = F.ACTIVATIONS[kind]
    x = _rand(3, 7) * 3.0
    if kind == "relu":  # keep clear of the kink at 0
        x = np.where(np.abs(x) < 1e-3, 0.5, x)
    check_op(xp, fwd, bwd, [x])


@pytest.mark.parametrize("op", ["max", "avg"])
def test_pool_grad_population_axis(xp, op):
    fwd, bwd = {"max": (F.max_pool2d_forward, F.max_pool2d_backward), "avg": (F.avg_pool2d_forward, F.avg_pool2d_backward)}[op]
    check_op(xp, lambda x: fwd(x, 2), bwd, [_rand(2, 2, 1, 4, 6)])


def test_flatten_grad(xp):
    check_op(xp, lambda x: F.flatten_forward(x, 3), F.flatten_backward, [_rand(2, 3, 2, 2)])


@pytest.mark.parametrize("train", [True, False])
def test_dropout_grad(xp, train):
    check_op(
        xp,
        lambda x: F.dropout_forward(x, 0.3, seed=5, stream="dropout/test", generation=2, train=train),
        F.dropout_backward,
        [_rand(4, 6)],
    )


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("kind", ["1d", "1d_pop", "2d", "2d_pop"])
def test_batch_norm_grad(xp, train, kind):
    shape, axes, nf = {
        "1d": ((5, 3), (-2,), 3),
        "1d_pop": ((2, 4, 3), (-2,), 3),
        "2d": ((3, 2, 3, 2), (-4, -2, -1), 2),
        "2d_pop": ((2, 3, 2, 2, 2), (-4, -2, -1), 2),
    }[kind]
    x = _rand(*shape) * 2.0 + 0.5
    gamma, beta = _rand(nf), _rand(nf)
    rmean, rvar = _rand(nf), np.abs(_rand(nf)) + 0.5

    def fwd(x, g, b):
        out, cache, _ = F.batch_norm_forward(
            x, g, b, _to_xp(xp, rmean), _to_xp(xp, rvar), axes=axes, train=train
        )
        return out, cache

    check_op(xp, fwd, F.batch_norm_backward, [x, gamma, beta], names=["dx", "dgamma", "dbeta"])


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("pop", [False, True])
def test_softmax_cross_entropy_grad(xp, reduction, pop):
    logits = _rand(2, 5, 4) * 3 if pop else _rand(5, 4) * 3
    labels = xp.asarray(np.array([0, 3, 1, 1, 2]))

    def fwd(z):
        loss = losses.softmax_cross_entropy(z, labels, reduction)
        return loss, z

    def bwd(d, z):
        # for "none", d has the per-example shape: the gradient of sum(loss * d)
        g = losses.softmax_cross_entropy_grad(z, labels, reduction)
        if reduction == "none":
            return g * xp.expand_dims(d, axis=-1)
        return g * d

    check_op(xp, fwd, bwd, [logits])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_grad(xp, reduction):
    pred, target = _rand(2, 3, 4), _rand(3, 4)
    t = _to_xp(xp, target)

    def fwd(p):
        return losses.mse(p, t, reduction), p

    def bwd(d, p):
        g = losses.mse_grad(p, t, reduction)
        return g * (xp.expand_dims(d, axis=-1) if reduction == "none" else d)

    check_op(xp, fwd, bwd, [pred])


def test_softmax_cross_entropy_known_values(xp):
    logits = xp.asarray(np.array([[0.0, 0.0], [1000.0, 0.0]]))
    labels = xp.asarray(np.array([0, 1]))
    loss = _host(losses.softmax_cross_entropy(logits, labels, "none"))
    np.testing.assert_allclose(loss, [np.log(2.0), 1000.0], rtol=1e-12)
    assert np.isfinite(_host(losses.softmax_cross_entropy_grad(logits, labels))).all()
