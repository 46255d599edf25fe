"""Forward oracles for egdnp.nn.functional: scipy.signal.correlate, naive loops, Numba vs array API."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal

from egdnp import _backend
from egdnp.nn import functional as F

R = np.random.default_rng(7)
CONFIGS = [
    # (C_in, H, W, C_out, kh, kw, stride, padding, dilation)
    (1, 28, 28, 4, 3, 3, 1, 1, 1),
    (3, 9, 8, 2, 3, 3, 2, 0, 1),
    (2, 10, 9, 3, 3, 2, (2, 1), (1, 2), 1),
    (2, 11, 11, 3, 3, 3, 1, 2, 2),
    (2, 7, 9, 2, 1, 1, 1, 0, 1),
    (2, 12, 10, 3, 3, 3, (1, 2), 1, (2, 1)),
]


def _host(a):
    return _backend.to_host(a)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def scipy_conv2d(x, w, b, stride, padding, dilation):
    """Independent oracle: scipy.signal.correlate on the zero-padded input, then striding."""
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    # dilation: spread the kernel taps apart with zeros
    wdil = np.zeros((c_out, c, d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1))
    wdil[:, :, :: d[0], :: d[1]] = w
    oh = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (wd + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    out = np.zeros((n, c_out, oh, ow))
    for i in range(n):
        for o in range(c_out):
            full = signal.correlate(xp_[i], wdil[o], mode="valid")[0]  # sums over channels
            out[i, o] = full[:: s[0], :: s[1]][:oh, :ow] + (0.0 if b is None else b[o])
    return out


def naive_im2col(x, kh, kw, stride, padding, dilation):
    s, p, d = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, w = x.shape
    oh = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
    out = np.zeros((n, oh * ow, c * kh * kw))
    for i in range(n):
        for r in range(oh):
            for q in range(ow):
                col = 0
                for ch in range(c):
                    for a in range(kh):
                        for bb in range(kw):
                            hi, wj = r * s[0] - p[0] + a * d[0], q * s[1] - p[1] + bb * d[1]
                            if 0 <= hi < h and 0 <= wj < w:
                                out[i, r * ow + q, col] = x[i, ch, hi, wj]
                            col += 1
    return out, (oh, ow)


def naive_pool(x, kernel, stride, padding, op):
    k, p = _pair(kernel), _pair(padding)
    s = k if stride is None else _pair(stride)
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(n):
        for ch in range(c):
            for r in range(oh):
                for q in range(ow):
                    vals = []
                    for a in range(k[0]):
                        for bb in range(k[1]):
                            hi, wj = r * s[0] - p[0] + a, q * s[1] - p[1] + bb
                            inside = 0 <= hi < h and 0 <= wj < w
                            vals.append(x[i, ch, hi, wj] if inside else (-math.inf if op == "max" else 0.0))
                    out[i, ch, r, q] = max(vals) if op == "max" else sum(vals) / len(vals)
    return out


# ----------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS)
def test_conv2d_matches_scipy_correlate(xp, cfg):
    c, h, wd, c_out, kh, kw, s, p, d = cfg
    x, w, b = R.standard_normal((2, c, h, wd)), R.standard_normal((c_out, c, kh, kw)), R.standard_normal(c_out)
    expected = scipy_conv2d(x, w, b, s, p, d)
    got = F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), s, p, d)
    np.testing.assert_allclose(_host(got), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_conv2d_numba_matches_array_api(cfg):
    """The Numba paths (wide rows for stride 1, column kernels otherwise) against the oracle path."""
    xp = _backend.get_namespace("numpy")
    c, h, wd, c_out, kh, kw, s, p, d = cfg
    x, w, b = (R.standard_normal((2, 3, c, h, wd)), R.standard_normal((c_out, c, kh, kw)), R.standard_normal(c_out))
    out_n, cache_n = F.conv2d_forward(x, w, b, s, p, d, impl="numba")
    out_a, cache_a = F.conv2d_forward(x, w, b, s, p, d, impl="array_api")
    np.testing.assert_allclose(out_n, out_a, rtol=1e-12, atol=1e-12)
    dout = R.standard_normal(out_a.shape)
    for gn, ga in zip(F.conv2d_backward(dout, cache_n), F.conv2d_backward(dout, cache_a)):
        np.testing.assert_allclose(gn, ga, rtol=1e-11, atol=1e-11)
    assert xp is not None


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("impl", ["numba", "array_api"])
def test_im2col_matches_naive_loop(cfg, impl):
    c, h, wd, _, kh, kw, s, p, d = cfg
    x = R.standard_normal((2, c, h, wd))
    expected, hw = naive_im2col(x, kh, kw, s, p, d)
    got, got_hw = F.im2col(x, kh, kw, stride=s, padding=p, dilation=d, impl=impl)
    assert got_hw == hw
    np.testing.assert_array_equal(got, expected)
    got_t, _ = F.im2col(x, kh, kw, stride=s, padding=p, dilation=d, transposed=True, impl=impl)
    np.testing.assert_array_equal(got_t, expected.transpose(0, 2, 1))


def test_im2col_strict_matches_numpy():
    import array_api_strict as strict

    x = R.standard_normal((2, 2, 7, 6))
    got, _ = F.im2col(strict.asarray(x), 3, 2, stride=(2, 1), padding=1, dilation=(1, 2))
    np.testing.assert_array_equal(_host(got), naive_im2col(x, 3, 2, (2, 1), 1, (1, 2))[0])


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("transposed", [False, True])
def test_col2im_is_adjoint_of_im2col(xp, cfg, transposed):
    c, h, wd, _, kh, kw, s, p, d = cfg
    x = R.standard_normal((2, c, h, wd))
    cols, _ = F.im2col(xp.asarray(x), kh, kw, stride=s, padding=p, dilation=d, transposed=transposed)
    y = R.standard_normal(tuple(cols.shape))
    back = F.col2im(xp.asarray(y), x.shape, kh, kw, stride=s, padding=p, dilation=d, transposed=transposed)
    lhs = float(np.sum(_host(cols) * y))
    rhs = float(np.sum(x * _host(back)))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, abs(lhs))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_col2im_numba_matches_array_api(cfg):
    c, h, wd, _, kh, kw, s, p, d = cfg
    shape = (3, c, h, wd)
    _, (oh, ow) = F.im2col(np.zeros(shape), kh, kw, stride=s, padding=p, dilation=d)
    for transposed in (False, True):
        pshape = (3, c * kh * kw, oh * ow) if transposed else (3, oh * ow, c * kh * kw)
        y = R.standard_normal(pshape)
        a = F.col2im(y, shape, kh, kw, stride=s, padding=p, dilation=d, transposed=transposed, impl="numba")
        b = F.col2im(y, shape, kh, kw, stride=s, padding=p, dilation=d, transposed=transposed, impl="array_api")
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


POOLS = [(2, None, 0), (3, 2, 1), ((2, 3), (1, 2), (1, 1)), (3, 1, 0)]


@pytest.mark.parametrize("kernel,stride,padding", POOLS)
def test_max_pool_matches_naive_loop(xp, kernel, stride, padding):
    x = R.standard_normal((2, 3, 7, 8))
    got = F.max_pool2d(xp.asarray(x), kernel, stride, padding)
    np.testing.assert_array_equal(_host(got), naive_pool(x, kernel, stride, padding, "max"))


@pytest.mark.parametrize("kernel,stride,padding", POOLS)
def test_avg_pool_matches_naive_loop(xp, kernel, stride, padding):
    x = R.standard_normal((2, 3, 7, 8))
    got = F.avg_pool2d(xp.asarray(x), kernel, stride, padding)
    np.testing.assert_allclose(_host(got), naive_pool(x, kernel, stride, padding, "avg"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", POOLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_pool_numba_matches_array_api(kernel, stride, padding, dtype):
    x = R.standard_normal((2, 2, 3, 9, 8)).astype(dtype)
    x[..., 0, 0] = x[..., 0, 1]  # ties: both must pick the first maximum
    out_n, cache_n = F.max_pool2d_forward(x, kernel, stride, padding, impl="numba")
    out_a, cache_a = F.max_pool2d_forward(x, kernel, stride, padding, impl="array_api")
    np.testing.assert_array_equal(out_n, out_a)
    dout = R.standard_normal(out_a.shape).astype(dtype)
    # overlapping windows add in a different order: equal up to rounding
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(F.max_pool2d_backward(dout, cache_n), F.max_pool2d_backward(dout, cache_a), rtol=tol, atol=tol)


def test_max_pool_ties_go_to_first_maximum(xp):
    x = xp.asarray(np.ones((1, 1, 2, 2)))
    out, cache = F.max_pool2d_forward(x, 2)
    dx = _host(F.max_pool2d_backward(xp.asarray(np.ones((1, 1, 1, 1))), cache))
    np.testing.assert_array_equal(dx[0, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_relu_backward_numba_matches_array_api():
    x = R.standard_normal((4, 5, 6)).astype(np.float32)
    d = R.standard_normal(x.shape).astype(np.float32)
    out = F.relu(x)
    np.testing.assert_array_equal(F.relu_backward(d, out), d * (out > 0))


def test_linear_population_axis_equals_loop(xp):
    x, w, b = R.standard_normal((3, 4, 5)), R.standard_normal((2, 5)), R.standard_normal(2)
    got = _host(F.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b)))
    for m in range(3):
        np.testing.assert_allclose(got[m], x[m] @ w.T + b, rtol=1e-12)


def test_conv_population_axis_equals_loop(xp):
    x, w = R.standard_normal((2, 3, 1, 6, 6)), R.standard_normal((4, 1, 3, 3))
    got = _host(F.conv2d(xp.asarray(x), xp.asarray(w), None, 1, 1))
    for m in range(2):
        np.testing.assert_allclose(got[m], scipy_conv2d(x[m], w, None, 1, 1, 1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["relu", "tanh", "sigmoid", "gelu"])
def test_activation_values(xp, kind):
    torch = pytest.importorskip("torch")
    x = np.linspace(-30, 30, 241)
    got = _host(F.ACTIVATIONS[kind][0](xp.asarray(x))[0])
    ref = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": torch.nn.functional.gelu}[kind](
        torch.from_numpy(x)
    ).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)


def test_conv_and_pool_match_torch():
    torch = pytest.importorskip("torch")
    x, w, b = R.standard_normal((2, 3, 9, 9)), R.standard_normal((4, 3, 3, 3)), R.standard_normal(4)
    for s, p, d in [(1, 1, 1), (2, 1, 1), (1, 2, 2)]:
        ref = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), s, p, d)
        np.testing.assert_allclose(F.conv2d(x, w, b, s, p, d), ref.numpy(), rtol=1e-10, atol=1e-10)
    ref = torch.nn.functional.max_pool2d(torch.from_numpy(x), 3, 2, 1)
    np.testing.assert_array_equal(F.max_pool2d(x, 3, 2, 1), ref.numpy())
    ref = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 3, 2, 1)
    np.testing.assert_allclose(F.avg_pool2d(x, 3, 2, 1), ref.numpy(), rtol=1e-12)


@pytest.mark.parametrize("op", ["conv", "linear", "pool", "gelu"])
def test_float32_matches_float64(op):
    """float32 results agree with float64 to the documented tolerance (rtol 1e-5, atol 1e-5)."""
    x = R.standard_normal((4, 2, 8, 8))
    w = R.standard_normal((3, 2, 3, 3)) * 0.3
    fn = {
        "conv": lambda a, w_: F.conv2d(a, w_, None, 1, 1),
        "linear": lambda a, w_: F.linear(a.reshape(4, -1), w_.reshape(3, -1)[:, :2].repeat(64, axis=1)),
        "pool": lambda a, w_: F.max_pool2d(a, 2),
        "gelu": lambda a, w_: F.gelu(a),
    }[op]
    hi = fn(x, w)
    lo = fn(x.astype(np.float32), w.astype(np.float32))
    assert lo.dtype == np.float32
    np.testing.assert_allclose(lo, hi, rtol=1e-5, atol=1e-5)


def test_bad_arguments_raise():
    x = np.zeros((1, 2, 5, 5))
    with pytest.raises(ValueError, match="stride"):
        F.conv2d(x, np.zeros((1, 2, 3, 3)), None, stride=0)
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(x, np.zeros((1, 3, 3, 3)))
    with pytest.raises(ValueError, match="too small"):
        F.conv2d(x, np.zeros((1, 2, 7, 7)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        F.max_pool2d(np.zeros((5, 5)), 2)
    with pytest.raises(TypeError, match="padding"):
        F.im2col(x, 3, 3, padding="same")
    with pytest.raises(ValueError, match="n_in"):
        F.linear(np.zeros((2, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="rate"):
        F.dropout_forward(np.zeros(3), 1.0, seed=0, stream="x")
    with pytest.raises(ValueError, match="impl"):
        F.im2col(x, 3, 3, impl="cuda")
    with pytest.raises(ValueError, match="padding"):
        F.max_pool2d(x, 2, padding=2)


def test_functions_do_not_mutate_inputs():
    x, w, b = R.standard_normal((2, 2, 6, 6)), R.standard_normal((3, 2, 3, 3)), R.standard_normal(3)
    copies = [a.copy() for a in (x, w, b)]
    out, cache = F.conv2d_forward(x, w, b, 1, 1)
    dout = R.standard_normal(out.shape)
    dcopy = dout.copy()
    F.conv2d_backward(dout, cache)
    o2, c2 = F.max_pool2d_forward(x, 2)
    F.max_pool2d_backward(R.standard_normal(o2.shape), c2)
    for a, c in zip((x, w, b, dout), copies + [dcopy]):
        np.testing.assert_array_equal(a, c)


def test_dropout_mask_is_addressed_and_scaled(xp):
    x = xp.ones((1000,), dtype=xp.float64)
    out1, _ = F.dropout_forward(x, 0.25, seed=3, stream="dropout/fc1", generation=7)
    out2, _ = F.dropout_forward(x, 0.25, seed=3, stream="dropout/fc1", generation=7)
    out3, _ = F.dropout_forward(x, 0.25, seed=3, stream="dropout/fc1", generation=8)
    a, b, c = _host(out1), _host(out2), _host(out3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, 1.0 / 0.75}
    assert 0.18 < np.mean(a == 0) < 0.32
    same, _ = F.dropout_forward(x, 0.25, seed=3, stream="dropout/fc1", train=False)
    np.testing.assert_array_equal(_host(same), np.ones(1000))


def test_parallel_numba_drivers_match_array_api(monkeypatch):
    """Force the threaded kernels (normally only for big batches) and compare with the oracle."""
    from egdnp import _threads

    monkeypatch.setattr(_threads, "NN_SPLIT_FROM", 0)
    r = np.random.default_rng(3)
    x = r.standard_normal((5, 3, 9, 9))
    w, b = r.standard_normal((4, 3, 3, 3)), r.standard_normal(4)
    for s, p, d in [(1, 1, 1), (2, 1, 1), (1, 2, 2)]:
        o1, c1 = F.conv2d_forward(x, w, b, s, p, d, impl="numba")
        o2, c2 = F.conv2d_forward(x, w, b, s, p, d, impl="array_api")
        np.testing.assert_allclose(o1, o2, rtol=1e-12, atol=1e-12)
        dout = r.standard_normal(o1.shape)
        for g1, g2 in zip(F.conv2d_backward(dout, c1), F.conv2d_backward(dout, c2)):
            np.testing.assert_allclose(g1, g2, rtol=1e-11, atol=1e-11)
        for tr in (False, True):
            kw = dict(stride=s, padding=p, dilation=d, transposed=tr)
            p1, _ = F.im2col(x, 3, 3, impl="numba", **kw)
            np.testing.assert_array_equal(p1, F.im2col(x, 3, 3, impl="array_api", **kw)[0])
            np.testing.assert_allclose(
                F.col2im(p1, x.shape, 3, 3, impl="numba", **kw), F.col2im(p1, x.shape, 3, 3, impl="array_api", **kw),
                rtol=1e-12, atol=1e-12,
            )
    for k, s, p in [(2, 2, 0), (3, 2, 1)]:
        o1, c1 = F.max_pool2d_forward(x, k, s, p, impl="numba")
        o2, c2 = F.max_pool2d_forward(x, k, s, p, impl="array_api")
        np.testing.assert_array_equal(o1, o2)
        dout = r.standard_normal(o1.shape)
        np.testing.assert_allclose(F.max_pool2d_backward(dout, c1), F.max_pool2d_backward(dout, c2), rtol=1e-14)
    out = F.relu(x)
    np.testing.assert_array_equal(F.relu_backward(dout := r.standard_normal(x.shape), out), dout * (out > 0))
    w = r.standard_normal((4, 3, 3, 3))
    o1, c1 = F.conv2d_relu_max_pool2d_forward(x, w, b, 1, 1, impl="numba")
    o2, c2 = F.conv2d_relu_max_pool2d_forward(x, w, b, 1, 1, impl="array_api")
    assert c1[0] == "fused"
    np.testing.assert_allclose(o1, o2, rtol=1e-12, atol=1e-12)
    dout = r.standard_normal(o1.shape)
    for g1, g2 in zip(F.conv2d_relu_max_pool2d_backward(dout, c1), F.conv2d_relu_max_pool2d_backward(dout, c2)):
        np.testing.assert_allclose(g1, g2, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_numba_matches_array_api(dtype, reduction):
    from egdnp.nn import losses

    logits = (R.standard_normal((17, 6)) * 5).astype(dtype)
    labels = R.integers(0, 6, 17)
    l1, g1 = losses.softmax_cross_entropy_with_grad(logits, labels, reduction)
    l2, g2 = losses.softmax_cross_entropy_with_grad(logits, labels, reduction, impl="array_api")
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(l1, l2, rtol=tol, atol=tol)
    np.testing.assert_allclose(g1, g2, rtol=tol, atol=tol)
    assert g1.dtype == dtype and np.asarray(l1).dtype == dtype
    with pytest.raises(ValueError, match=r"labels range over \[\d+, 6\]"):
        losses.softmax_cross_entropy_with_grad(logits, np.where(labels == labels[0], 6, labels), reduction)
    # the fast path reduces with the same NumPy sum as the array-API _reduce: equal bits
    per_example = losses.softmax_cross_entropy_with_grad(logits, labels, "none")[0]
    expected = losses._reduce(_backend.get_namespace("numpy"), per_example, reduction)
    assert np.asarray(l1).tobytes() == np.asarray(expected).tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layouts", ["CC", "FF", "CF", "FC", "strided"])
def test_numba_tanh_backward_equals_the_array_api_expression_bitwise(dtype, layouts):
    r = np.random.default_rng(3)
    for shape in [(128, 256), (3, 5, 7), (1000,)]:
        d = r.standard_normal(shape).astype(dtype)
        o = np.tanh(r.standard_normal(shape)).astype(dtype)
        if layouts == "strided":
            d = d[::-1]
        else:
            d = np.asfortranarray(d) if layouts[0] == "F" else d
            o = np.asfortranarray(o) if layouts[1] == "F" else o
        got = F.tanh_backward(d, o)
        expected = d * (1.0 - o * o)  # the array-API branch, in NumPy
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------------------
# conv -> relu -> max-pool block (fused Numba kernels behind one dispatch function)
# ----------------------------------------------------------------------------
BLOCK_CONFIGS = [
    # (C_in, H, W, C_out, kh, kw, padding, dilation, lead): stride-1 convolutions, 2x2 pooling
    (1, 28, 28, 4, 3, 3, 1, 1, (3,)),
    (2, 11, 11, 3, 3, 3, 2, 2, (2, 3)),  # pop axis, dilation
    (2, 7, 9, 2, 1, 1, 0, 1, (2,)),  # odd conv output: the last row/column is in no window
    (3, 8, 6, 5, 2, 3, (1, 0), 1, (2,)),
]


def _composed_block(x, w, b, padding, dilation, impl):
    conv, c1 = F.conv2d_forward(x, w, b, 1, padding, dilation, impl=impl)
    act, c2 = F.relu_forward(conv)
    out, c3 = F.max_pool2d_forward(act, 2, impl=impl)

    def backward(dout):
        return F.conv2d_backward(F.relu_backward(F.max_pool2d_backward(dout, c3), c2), c1)

    return out, backward


@pytest.mark.parametrize("cfg", BLOCK_CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_relu_pool_block_numba_equals_the_three_ops(cfg, dtype, bias):
    """The fused kernels do the same float operations as conv2d, relu and max_pool2d one after another:
    equal outputs and gradients (ties, all-negative windows and the odd last row included)."""
    c, h, wd, c_out, kh, kw, p, d, lead = cfg
    r = np.random.default_rng(11)
    # small integers: many exact ties inside windows and many all-negative windows
    x = r.integers(-2, 3, lead + (c, h, wd)).astype(dtype)
    w = r.integers(-1, 2, (c_out, c, kh, kw)).astype(dtype)
    b = r.integers(-2, 2, c_out).astype(dtype) if bias else None
    out, cache = F.conv2d_relu_max_pool2d_forward(x, w, b, 1, p, d, impl="numba")
    assert cache[0] == "fused"
    ref_out, ref_backward = _composed_block(x, w, b, p, d, "numba")
    np.testing.assert_array_equal(out, ref_out)
    assert out.dtype == dtype and out.shape == ref_out.shape
    dout = r.standard_normal(out.shape).astype(dtype)
    got = F.conv2d_relu_max_pool2d_backward(dout, cache)
    for g, e, name in zip(got, ref_backward(dout), ("dx", "dw", "db")):
        if e is None:
            assert g is None
            continue
        assert g.dtype == dtype and g.shape == e.shape, name
        if dtype == np.float64 or name != "db":
            np.testing.assert_array_equal(g, e, err_msg=name)  # float64 db: summed in the same order
        else:
            np.testing.assert_allclose(g, e, rtol=1e-7, atol=0, err_msg=name)
    assert F.conv2d_relu_max_pool2d_backward(dout, cache, need_dx=False)[0] is None


@pytest.mark.parametrize("cfg", BLOCK_CONFIGS)
def test_conv_relu_pool_block_numba_matches_array_api(cfg):
    c, h, wd, c_out, kh, kw, p, d, lead = cfg
    r = np.random.default_rng(12)
    x, w, b = r.standard_normal(lead + (c, h, wd)), r.standard_normal((c_out, c, kh, kw)), r.standard_normal(c_out)
    out_n, cache_n = F.conv2d_relu_max_pool2d_forward(x, w, b, 1, p, d, impl="numba")
    out_a, cache_a = F.conv2d_relu_max_pool2d_forward(x, w, b, 1, p, d, impl="array_api")
    assert cache_a[0] == "composed"
    np.testing.assert_allclose(out_n, out_a, rtol=1e-12, atol=1e-12)
    dout = r.standard_normal(out_a.shape)
    for gn, ga in zip(F.conv2d_relu_max_pool2d_backward(dout, cache_n), F.conv2d_relu_max_pool2d_backward(dout, cache_a)):
        np.testing.assert_allclose(gn, ga, rtol=1e-11, atol=1e-11)


def test_conv_relu_pool_block_on_other_namespaces_and_settings_is_the_three_ops(xp):
    """array-API namespaces, strided convolutions and other pools take the composed path (same numbers)."""
    r = np.random.default_rng(13)
    x, w, b = r.standard_normal((2, 2, 9, 9)), r.standard_normal((3, 2, 3, 3)), r.standard_normal(3)
    for stride, pool, pool_stride in [(1, 2, None), (2, 2, None), (1, 3, 2), (1, (2, 1), None)]:
        out, cache = F.conv2d_relu_max_pool2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), stride, 1, 1, pool, pool_stride)
        conv = F.relu(F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b), stride, 1, 1))
        np.testing.assert_allclose(_host(out), _host(F.max_pool2d(conv, pool, pool_stride)), rtol=1e-12, atol=1e-12)
        fused = cache[0] == "fused"
        assert fused == (_backend.is_numpy(xp) and stride == 1 and pool == 2 and pool_stride is None)


def test_conv_relu_pool_block_reports_bad_input_like_conv2d():
    x, w = np.zeros((2, 3, 8, 8)), np.zeros((4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"w has shape \(4, 2, 3, 3\) but x has 3 channels"):
        F.conv2d_relu_max_pool2d_forward(x, w, impl="numba")
    with pytest.raises(ValueError, match="x has shape"):
        F.conv2d_relu_max_pool2d_forward(np.zeros((3, 8, 8)), np.zeros((4, 3, 3, 3)))
    with pytest.raises(ValueError, match="max_pool2d: input of height/width"):
        F.conv2d_relu_max_pool2d_forward(np.zeros((1, 1, 3, 1)), np.zeros((1, 1, 3, 1)))
    with pytest.raises(ValueError, match="impl="):
        F.conv2d_relu_max_pool2d_forward(x[:, :2], w, impl="cuda")


# ----------------------------------------------------------------------------
# impl= on the activations (issue 14): the same switch as the other ops
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_impls_agree_with_the_array_api_oracle(dtype):
    r = np.random.default_rng(21)
    x = r.standard_normal((5, 7)).astype(dtype)
    d = r.standard_normal((5, 7)).astype(dtype)
    relu_out, tanh_out = F.relu(x), F.tanh(x)
    for impl in ("auto", "numba"):
        np.testing.assert_array_equal(F.relu_backward(d, relu_out, impl=impl), F.relu_backward(d, relu_out, impl="array_api"))
        np.testing.assert_array_equal(F.tanh_backward(d, tanh_out, impl=impl), F.tanh_backward(d, tanh_out, impl="array_api"))
        tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(F.gelu(x, impl=impl), F.gelu(x, impl="array_api"), **tol)
        out, (xc, cdf) = F.gelu_forward(x, impl=impl)
        np.testing.assert_allclose(cdf, F.gelu_forward(x, impl="array_api")[1][1], **tol)
    # arguments the kernel does not take: "auto" runs the array-API code, "numba" refuses
    wide = r.standard_normal((5, 1)).astype(dtype)
    np.testing.assert_array_equal(F.relu_backward(d, wide), d * (wide > 0))
    with pytest.raises(ValueError, match="impl='numba' needs dout and cache of one shape"):
        F.relu_backward(d, wide, impl="numba")
    with pytest.raises(ValueError, match="impl='numba' needs dout and cache of one shape and dtype"):
        F.tanh_backward(d, tanh_out.astype(np.float16), impl="numba")


def test_activation_impl_is_checked_like_the_other_ops():
    import array_api_strict as xs

    x = np.ones((2, 3))
    for call in (lambda i: F.relu_backward(x, x, impl=i), lambda i: F.tanh_backward(x, x, impl=i),
                 lambda i: F.gelu(x, impl=i), lambda i: F.gelu_forward(x, impl=i)):
        with pytest.raises(ValueError, match=r"impl='cuda' is not one of \('auto', 'numba', 'array_api'\)"):
            call("cuda")
    s = xs.asarray(x)
    for call in (lambda: F.relu_backward(s, s, impl="numba"), lambda: F.tanh_backward(s, s, impl="numba"),
                 lambda: F.gelu(s, impl="numba")):
        with pytest.raises(ValueError, match="impl='numba' computes NumPy arrays"):
            call()
    np.testing.assert_allclose(np.asarray(F.gelu(s)), F.gelu(x), rtol=1e-14)
