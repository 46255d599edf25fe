"""Stateless layer math: every forward with its backward right beside it.

Contract
--------
For every operation ``op`` this module offers up to three functions:

* ``op(x, ...) -> out``                 evaluation only (no cache kept);
* ``op_forward(x, ...) -> (out, cache)`` forward that keeps what backward needs;
* ``op_backward(dout, cache) -> grads``  gradients of a scalar loss ``L``:
  ``dout = dL/dout`` in, ``dL/dx`` (and ``dL/dw``, ``dL/db`` where the op has
  parameters) out.

A cache is an opaque tuple: pass it unchanged from ``op_forward`` to
``op_backward``.  Nothing here mutates its arguments.

Shapes and batch axes
---------------------
Leading axes are batch axes.  ``linear`` takes ``x`` of shape ``(..., n_in)``
(for example ``(batch, n_in)`` or ``(pop, batch, n_in)``); image operations take
``(..., C, H, W)`` (``(N, C, H, W)`` or ``(pop, batch, C, H, W)``) and fold the
leading axes into one before computing, so a population of inputs needs no
Python loop.  Convolution is cross-correlation (like ``torch.nn.functional.conv2d``)
with weights of shape ``(C_out, C_in, kh, kw)``.

Backends
--------
All math goes through the array-API namespace of the inputs.  The hot spots
have Numba kernels for NumPy inputs in :mod:`egdnp.nn._cpu` (``im2col``,
``col2im``, the stride-1 convolution, max pooling, the conv -> ReLU -> max-pool
block, the ReLU and tanh backward passes; GELU's normal CDF comes from SciPy);
each sits behind one dispatch function here (``impl="auto"|"numba"|"array_api"``,
resolved by :func:`egdnp._backend.resolve_impl`) and the array-API code path
is the oracle the tests compare them with.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from .. import _backend, rng

__all__ = [
    "im2col",
    "col2im",
    "linear",
    "linear_forward",
    "linear_backward",
    "conv2d",
    "conv2d_forward",
    "conv2d_backward",
    "conv_output_size",
    "conv2d_relu_max_pool2d_forward",
    "conv2d_relu_max_pool2d_backward",
    "max_pool2d",
    "max_pool2d_forward",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_forward",
    "avg_pool2d_backward",
    "relu",
    "relu_forward",
    "relu_backward",
    "tanh",
    "tanh_forward",
    "tanh_backward",
    "sigmoid",
    "sigmoid_forward",
    "sigmoid_backward",
    "gelu",
    "gelu_forward",
    "gelu_backward",
    "silu",
    "silu_forward",
    "silu_backward",
    "layer_norm",
    "layer_norm_forward",
    "layer_norm_backward",
    "flatten",
    "flatten_forward",
    "flatten_backward",
    "dropout_forward",
    "dropout_backward",
    "batch_norm_forward",
    "batch_norm_backward",
    "ACTIVATIONS",
]

#: The ``impl=`` values nn's ops accept (resolved by :func:`egdnp._backend.resolve_impl`).
IMPLS = ("auto", "numba", "array_api")

# The namespace of some arrays (memoised in _backend on their types); the short
# name is what every layer here calls.
_namespace = _backend.array_namespace


_KERNELS = None


def _kernels():
    """:mod:`egdnp.nn._cpu` (the Numba kernels), imported on first use.

    Lazy so that ``import egdnp`` does not load Numba; kept in a global because
    ``from . import _cpu`` inside a hot function costs ~2 us per call.
    """
    global _KERNELS
    if _KERNELS is None:
        from . import _cpu

        _KERNELS = _cpu
    return _KERNELS


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------
def _pair(value: Any, name: str, *, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints -> (int, int), checked against ``minimum``."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        pair = (int(value), int(value))
    else:
        try:
            a, b = value
        except (TypeError, ValueError):
            raise TypeError(f"{name}={value!r} must be an int or a pair of ints") from None
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (a, b)):
            raise TypeError(f"{name}={value!r} must be an int or a pair of ints")
        pair = (int(a), int(b))
    if min(pair) < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return pair


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def _use_numba(xp, impl: str, *, usable: bool = True, needs: str = "") -> bool:
    """True when an op's Numba kernel runs (the choice of :func:`egdnp._backend.resolve_impl`).

    ``impl`` is one of :data:`IMPLS`; ``usable``/``needs``: whether the kernel
    takes these arguments, and what it needs when it does not.
    """
    return _backend.resolve_impl(xp, impl, usable=usable, needs=needs) == "numba"


def _check_image(x, name: str = "x") -> tuple[int, int, int]:
    if len(x.shape) < 4:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)}; expected (N, C, H, W) or (pop, N, C, H, W) "
            "(add a batch axis with x[None] for a single image)"
        )
    return tuple(int(s) for s in x.shape[-3:])


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution/pooling window along one axis (floor mode, like torch).

    Parameters
    ----------
    size, kernel, stride, padding, dilation : int
        Input length, kernel length, step, zero padding on each side, tap spacing.

    Returns
    -------
    int
        ``(size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1``, one entry
        of the output shape (out_h or out_w); below 1 when the window does not fit.
    """
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_out_hw(hw, k, s, p, d, what):
    oh = conv_output_size(hw[0], k[0], s[0], p[0], d[0])
    ow = conv_output_size(hw[1], k[1], s[1], p[1], d[1])
    if oh < 1 or ow < 1:
        raise ValueError(
            f"{what}: input of height/width {tuple(hw)} is too small for kernel {k}, stride {s}, "
            f"padding {p}, dilation {d} (output would be {oh}x{ow}); pad the input or use a smaller kernel"
        )
    return oh, ow


def _pad_hw(x, ph: int, pw: int, value: float = 0.0):
    """Pad the last two axes of ``x`` with a constant (array-API: allocate + slice assign)."""
    if ph == 0 and pw == 0:
        return x
    xp = _namespace(x)
    shape = tuple(x.shape[:-2]) + (x.shape[-2] + 2 * ph, x.shape[-1] + 2 * pw)
    out = xp.full(shape, value, dtype=x.dtype, device=_backend.device_of(x))
    out[..., ph : ph + x.shape[-2], pw : pw + x.shape[-1]] = x
    return out


def _window_slices(kh, kw, sh, sw, dh, dw, oh, ow):
    """For each kernel offset (i, j): the strided slices of the padded input it touches."""
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dh, j * dw
            yield (
                slice(r0, r0 + sh * (oh - 1) + 1, sh),
                slice(c0, c0 + sw * (ow - 1) + 1, sw),
            )


# ----------------------------------------------------------------------------
# im2col / col2im (adjoint pair)
# ----------------------------------------------------------------------------
def im2col(x, kh: int, kw: int, *, stride=1, padding=0, dilation=1, transposed: bool = False, impl: str = "auto"):
    """Unfold image patches into rows.

    Parameters
    ----------
    x : array, shape (N, C, H, W)
    kh, kw : int
        Kernel height and width.
    stride, padding, dilation : int or (int, int)
    transposed : bool
        Return the columns layout (N, C * kh * kw, out_h * out_w) instead
        (what :func:`conv2d_forward` uses: ``w2 @ cols`` is then NCHW already).
    impl : {"auto", "numba", "array_api"}
        ``"auto"`` uses the Numba kernel for NumPy inputs, the array-API code otherwise.

    Returns
    -------
    patches : array, shape (N, out_h * out_w, C * kh * kw)
        Row ``l = r * out_w + c`` holds the window of output pixel ``(r, c)``,
        flattened row-major over ``(C, kh, kw)``, so that
        ``patches @ w.reshape(C_out, C * kh * kw).T`` is the cross-correlation.
    out_hw : (int, int)
        ``(out_h, out_w)``.
    """
    xp = _namespace(x)
    if len(x.shape) != 4:
        raise ValueError(f"x has shape {tuple(x.shape)}; im2col expects (N, C, H, W)")
    k = _pair((kh, kw), "kernel size (kh, kw)", minimum=1)
    s = _pair(stride, "stride", minimum=1)
    p = _pair(padding, "padding", minimum=0)
    d = _pair(dilation, "dilation", minimum=1)
    n, c, h, w = (int(v) for v in x.shape)
    oh, ow = _check_out_hw((h, w), k, s, p, d, "im2col")
    if _use_numba(xp, impl):
        _cpu = _kernels()
        return _cpu.im2col(x, k, s, p, d, (oh, ow), transposed), (oh, ow)
    xpad = _pad_hw(x, p[0], p[1])
    # One strided view per kernel offset (kh*kw of them), never a loop over pixels.
    taps = [xpad[:, :, rs, cs] for rs, cs in _window_slices(*k, *s, *d, oh, ow)]
    stacked = xp.stack(taps, axis=2)  # (N, C, kh*kw, oh, ow)
    cols = xp.reshape(stacked, (n, c * k[0] * k[1], oh * ow))
    return (cols if transposed else xp.permute_dims(cols, (0, 2, 1))), (oh, ow)


def col2im(patches, x_shape, kh: int, kw: int, *, stride=1, padding=0, dilation=1, transposed: bool = False, impl: str = "auto"):
    """Adjoint of :func:`im2col`: add every patch row back into image positions.

    Parameters
    ----------
    patches : array, shape (N, out_h * out_w, C * kh * kw)
    x_shape : tuple (N, C, H, W)
        Shape of the image that :func:`im2col` unfolded.
    kh, kw, stride, padding, dilation, transposed, impl :
        As for :func:`im2col` (``transposed``: patches of shape (N, C*kh*kw, out_h*out_w)).

    Returns
    -------
    array, shape (N, C, H, W)
        ``<im2col(x), patches> == <x, col2im(patches)>`` for every ``x``;
        overlapping windows add up, padding positions are dropped.
    """
    xp = _namespace(patches)
    n, c, h, w = (int(v) for v in x_shape)
    k = _pair((kh, kw), "kernel size (kh, kw)", minimum=1)
    s = _pair(stride, "stride", minimum=1)
    p = _pair(padding, "padding", minimum=0)
    d = _pair(dilation, "dilation", minimum=1)
    oh, ow = _check_out_hw((h, w), k, s, p, d, "col2im")
    expected = (n, c * k[0] * k[1], oh * ow) if transposed else (n, oh * ow, c * k[0] * k[1])
    if tuple(patches.shape) != expected:
        raise ValueError(f"patches has shape {tuple(patches.shape)}; expected {expected} for x_shape {tuple(x_shape)}")
    if _use_numba(xp, impl):
        _cpu = _kernels()
        return _cpu.col2im(patches, (n, c, h, w), k, s, p, d, (oh, ow), transposed)
    cols = patches if transposed else xp.permute_dims(patches, (0, 2, 1))
    cols = xp.reshape(cols, (n, c, k[0] * k[1], oh, ow))
    hp, wp = h + 2 * p[0], w + 2 * p[1]
    dxpad = xp.zeros((n, c, hp, wp), dtype=patches.dtype, device=_backend.device_of(patches))
    for t, (rs, cs) in enumerate(_window_slices(*k, *s, *d, oh, ow)):
        dxpad[:, :, rs, cs] = dxpad[:, :, rs, cs] + cols[:, :, t, :, :]
    return dxpad[:, :, p[0] : p[0] + h, p[1] : p[1] + w]


# ----------------------------------------------------------------------------
# linear
# ----------------------------------------------------------------------------
def _matmul_last(xp, x, wt):
    """``x @ wt`` for x (..., k) and a 2-D wt (k, m), as one GEMM over all leading axes."""
    lead = tuple(x.shape[:-1])
    if len(lead) <= 1:
        return xp.matmul(x, wt)
    out = xp.matmul(xp.reshape(x, (_prod(lead), x.shape[-1])), wt)
    return xp.reshape(out, lead + (wt.shape[-1],))


def _x_wT(xp, x, w):
    """``x @ w.T`` for x (..., n_in), w (n_out, n_in), computed as ``(w @ x2.T).T``.

    Same numbers; OpenBLAS ran the MLP's 128x784 @ 784x256 product 2.6x faster
    in this orientation on the 2-core test machine (0.51 ms against 1.34 ms).
    The result is a transposed (Fortran-ordered) view, which every later
    operation accepts.
    """
    lead = tuple(x.shape[:-1])
    x2 = x if len(lead) == 1 else xp.reshape(x, (_prod(lead), x.shape[-1]))
    if len(lead) == 0:
        return xp.matmul(x, w.T)
    out = xp.matmul(w, x2.T).T
    return out if len(lead) == 1 else xp.reshape(out, lead + (w.shape[0],))


def linear(x, w, b=None):
    """``y = x @ w.T + b``.

    Parameters
    ----------
    x : array, shape (..., n_in)
        Any leading axes, e.g. ``(batch, n_in)`` or ``(pop, batch, n_in)``.
    w : array, shape (n_out, n_in)
    b : array, shape (n_out,), or None

    Returns
    -------
    array, shape (..., n_out)
    """
    xp = _namespace(x, w)
    if x.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but w has shape {tuple(w.shape)}; the last axis of x must be n_in={w.shape[-1]}"
        )
    out = _x_wT(xp, x, w)
    if b is None:
        return out
    if _backend.is_numpy(xp) and b.ndim == 1 and b.dtype == out.dtype:
        out += b  # out is the fresh GEMM result: one pass and no second array
        return out
    return out + b


def linear_forward(x, w, b=None):
    """:func:`linear` keeping ``(x, w, has_bias)`` for :func:`linear_backward`.

    Parameters
    ----------
    x : array, shape (..., n_in)
    w : array, shape (n_out, n_in)
    b : array, shape (n_out,), or None

    Returns
    -------
    out : array, shape (..., n_out)
    cache : tuple
    """
    return linear(x, w, b), (x, w, b is not None)


def linear_backward(dout, cache, *, need_dx: bool = True):
    """Gradients of :func:`linear_forward`.

    Parameters
    ----------
    dout : array, shape (..., n_out)
    cache : tuple from :func:`linear_forward`
    need_dx : bool
        ``False`` skips ``dx`` (the first layer of a model never needs it).

    Returns
    -------
    dx : array, shape (..., n_in), or None when ``need_dx`` is False
    dw : array, shape (n_out, n_in)
        Summed over every leading axis (batch and population alike).
    db : array, shape (n_out,), or None without bias
    """
    x, w, has_bias = cache
    xp = _namespace(dout, w)
    n_out, n_in = int(w.shape[0]), int(w.shape[1])
    if dout.ndim == 2 and x.ndim == 2:
        d2, x2 = dout, x
    else:
        rows = _prod(dout.shape[:-1])
        d2 = xp.reshape(dout, (rows, n_out))
        x2 = xp.reshape(x, (rows, n_in))
    # (x2.T @ d2).T equals d2.T @ x2; OpenBLAS ran it ~12% faster for the MLP shapes
    dw = xp.matmul(x2.T, d2).T
    db = xp.sum(d2, axis=0) if has_bias else None
    if not need_dx:
        return None, dw, db
    if _backend.is_numpy(xp) and x.ndim == 2 and dout.ndim == 2 and x.flags.f_contiguous and not x.flags.c_contiguous:
        # dx in x's (transposed) layout, as (w^T dout^T)^T: the activation backward
        # before this layer then reads its output and dx in one order (a C/F mix
        # of a 128x256 tile costs ~30 us of strided access, the GEMM ~5 us either way)
        return xp.matmul(w.T, dout.T).T, dw, db
    return _matmul_last(xp, dout, w), dw, db


# ----------------------------------------------------------------------------
# conv2d (im2col + one GEMM)
# ----------------------------------------------------------------------------
def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, *, impl: str = "auto"):
    """2-D cross-correlation with ``(out, cache)``.

    Parameters
    ----------
    x : array, shape (N, C_in, H, W) or (pop, N, C_in, H, W)
    w : array, shape (C_out, C_in, kh, kw)
    b : array, shape (C_out,), or None
    stride, padding, dilation : int or (int, int)
    impl : {"auto", "numba", "array_api"}
        ``"auto"``: NumPy inputs use Numba kernels (stride 1: contiguous
        "wide-row" im2col, see :mod:`egdnp.nn._cpu`; other strides: the
        Numba :func:`im2col`), other namespaces the array-API code.

    Returns
    -------
    out : array, shape (..., C_out, out_h, out_w)
        Same leading axes as ``x``.
    cache : tuple for :func:`conv2d_backward` (holds the im2col columns)
    """
    xp = _namespace(x, w)
    c, h, wd = _check_image(x)
    if len(w.shape) != 4 or int(w.shape[1]) != c:
        raise ValueError(
            f"w has shape {tuple(w.shape)} but x has {c} channels (shape {tuple(x.shape)}); "
            f"expected w of shape (C_out, {c}, kh, kw)"
        )
    c_out, _, kh, kw = (int(v) for v in w.shape)
    lead = tuple(x.shape[:-3])
    n = _prod(lead)
    x4 = xp.reshape(x, (n, c, h, wd)) if len(lead) != 1 else x
    s, p, d = (_pair(stride, "stride", minimum=1), _pair(padding, "padding", minimum=0), _pair(dilation, "dilation", minimum=1))
    oh, ow = _check_out_hw((h, wd), (kh, kw), s, p, d, "conv2d")
    if s == (1, 1) and _use_numba(xp, impl):
        _cpu = _kernels()
        out4, cols = _cpu.conv2d_stride1_forward(x4, w, b, p, d)
        cache = ("wide", cols, (n, c, h, wd), tuple(x.shape), w, b is not None, (s, p, d), impl)
        return xp.reshape(out4, lead + (c_out, oh, ow)), cache
    cols, _ = im2col(x4, kh, kw, stride=s, padding=p, dilation=d, transposed=True, impl=impl)
    # (C_out, CK) @ (N, CK, L) -> (N, C_out, L): already NCHW, no transpose copy afterwards
    out = xp.matmul(xp.reshape(w, (c_out, c * kh * kw)), cols)
    if b is not None:
        out = out + xp.reshape(b, (c_out, 1))
    out = xp.reshape(out, lead + (c_out, oh, ow))
    cache = ("cols", cols, (n, c, h, wd), tuple(x.shape), w, b is not None, (s, p, d), impl)
    return out, cache


def conv2d(x, w, b=None, stride=1, padding=0, dilation=1, *, impl: str = "auto"):
    """Evaluation-only :func:`conv2d_forward` (returns ``out`` only).

    Parameters
    ----------
    x : array, shape (N, C_in, H, W) or (pop, N, C_in, H, W)
    w : array, shape (C_out, C_in, kh, kw)
    b : array, shape (C_out,), or None
    stride, padding, dilation : int or (int, int)
    impl : {"auto", "numba", "array_api"}

    Returns
    -------
    array, shape (..., C_out, out_h, out_w)
    """
    return conv2d_forward(x, w, b, stride, padding, dilation, impl=impl)[0]


def conv2d_backward(dout, cache, *, need_dx: bool = True):
    """Gradients of :func:`conv2d_forward`.

    Parameters
    ----------
    dout : array, shape (..., C_out, out_h, out_w)
    cache : tuple from :func:`conv2d_forward`
    need_dx : bool
        ``False`` skips the col2im of ``dx`` (first layer of a model).

    Returns
    -------
    dx : array, shape of x, or None
    dw : array, shape (C_out, C_in, kh, kw)
    db : array, shape (C_out,), or None without bias
    """
    layout, cols, x4_shape, x_shape, w, has_bias, (stride, padding, dilation), impl = cache
    xp = _namespace(dout, w)
    c_out, c, kh, kw = (int(v) for v in w.shape)
    if layout == "wide":  # Numba stride-1 path of conv2d_forward
        _cpu = _kernels()
        d4 = xp.reshape(dout, (x4_shape[0], c_out) + tuple(dout.shape[-2:]))
        dx4, dw, db = _cpu.conv2d_stride1_backward(d4, cols, x4_shape, w, padding, dilation, has_bias, need_dx)
        return (None if dx4 is None else xp.reshape(dx4, x_shape)), dw, db
    n, ck, length = (int(v) for v in cols.shape)
    d3 = xp.reshape(dout, (n, c_out, length))
    w2 = xp.reshape(w, (c_out, ck))
    # dW = sum_n dout_n @ cols_n^T: batched small GEMMs beat one GEMM over a transposed copy
    dw = xp.reshape(xp.sum(xp.matmul(d3, xp.permute_dims(cols, (0, 2, 1))), axis=0), tuple(w.shape))
    db = xp.sum(d3, axis=(0, 2)) if has_bias else None
    dx = None
    if need_dx:
        dcols = xp.matmul(w2.T, d3)  # (N, CK, L)
        dx4 = col2im(dcols, x4_shape, kh, kw, stride=stride, padding=padding, dilation=dilation, transposed=True, impl=impl)
        dx = xp.reshape(dx4, x_shape)
    return dx, dw, db


# ----------------------------------------------------------------------------
# conv2d -> relu -> max_pool2d as one block
# ----------------------------------------------------------------------------
def conv2d_relu_max_pool2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, pool_size=2, pool_stride=None,
                                   pool_padding=0, *, impl: str = "auto"):
    """``max_pool2d(relu(conv2d(x, w, b, ...)), pool_size, ...)`` with ``(out, cache)``.

    The block a CNN repeats.  With the Numba path (NumPy inputs, stride-1
    convolution, 2x2 pooling of stride 2 without padding) one kernel adds the
    bias, applies ReLU and pools straight from the convolution's GEMM result,
    and the backward writes the GEMM's output gradient straight from the
    pooled gradient: the convolution's output and its gradient are never
    stored in NCHW.  Otherwise (and as the oracle) the three operations run in
    turn.  Both give the same numbers: the fused kernels do the same float
    operations.

    Parameters
    ----------
    x : array, shape (N, C_in, H, W) or (pop, N, C_in, H, W)
    w : array, shape (C_out, C_in, kh, kw)
    b : array, shape (C_out,), or None
    stride, padding, dilation : int or (int, int)
        Of the convolution.
    pool_size, pool_stride, pool_padding : int or (int, int)
        Of the max pooling (``pool_stride`` defaults to ``pool_size``).
    impl : {"auto", "numba", "array_api"}

    Returns
    -------
    out : array, shape (..., C_out, out_h, out_w)
        The pooled maps, same leading axes as ``x``.
    cache : tuple for :func:`conv2d_relu_max_pool2d_backward`
    """
    xp = _namespace(x, w)
    k, ps, pp = _pool_args(pool_size, pool_stride, pool_padding)
    fused = k == (2, 2) and ps == (2, 2) and pp == (0, 0) and _pair(stride, "stride", minimum=1) == (1, 1)
    if not (fused and _use_numba(xp, impl)):
        conv_out, conv_cache = conv2d_forward(x, w, b, stride, padding, dilation, impl=impl)
        act, relu_cache = relu_forward(conv_out)
        out, pool_cache = max_pool2d_forward(act, k, ps, pp, impl=impl)
        return out, ("composed", conv_cache, relu_cache, pool_cache, impl)
    c, h, wd = _check_image(x)
    if len(w.shape) != 4 or int(w.shape[1]) != c:
        raise ValueError(
            f"w has shape {tuple(w.shape)} but x has {c} channels (shape {tuple(x.shape)}); "
            f"expected w of shape (C_out, {c}, kh, kw)"
        )
    p, d = _pair(padding, "padding", minimum=0), _pair(dilation, "dilation", minimum=1)
    oh, ow = _check_out_hw((h, wd), tuple(int(v) for v in w.shape[2:]), (1, 1), p, d, "conv2d")
    _check_out_hw((oh, ow), k, ps, pp, (1, 1), "max_pool2d")
    lead = tuple(x.shape[:-3])
    n = _prod(lead)
    x4 = xp.reshape(x, (n, c, h, wd)) if len(lead) != 1 else x
    pooled, argmax, cols = _kernels().conv2d_relu_pool2x2_forward(x4, w, b, p, d)
    cache = ("fused", argmax, pooled, cols, (n, c, h, wd), tuple(x.shape), w, b is not None, (p, d))
    return xp.reshape(pooled, lead + tuple(pooled.shape[1:])), cache


def conv2d_relu_max_pool2d_backward(dout, cache, *, need_dx: bool = True):
    """Gradients of :func:`conv2d_relu_max_pool2d_forward`.

    Parameters
    ----------
    dout : array, shape (..., C_out, out_h, out_w)
        ``dL/dout`` of the pooled maps.
    cache : tuple from :func:`conv2d_relu_max_pool2d_forward`
    need_dx : bool
        ``False`` skips ``dx`` (first layer of a model).

    Returns
    -------
    dx : array, shape of x, or None
    dw : array, shape (C_out, C_in, kh, kw)
    db : array, shape (C_out,), or None without bias
    """
    if cache[0] == "composed":
        _, conv_cache, relu_cache, pool_cache, impl = cache
        d = relu_backward(max_pool2d_backward(dout, pool_cache), relu_cache, impl=impl)
        return conv2d_backward(d, conv_cache, need_dx=need_dx)
    _, argmax, pooled, cols, x4_shape, x_shape, w, has_bias, (p, d) = cache
    xp = _namespace(dout, w)
    d4 = xp.reshape(dout, tuple(pooled.shape))
    dx4, dw, db = _kernels().conv2d_relu_pool2x2_backward(d4, argmax, pooled, cols, x4_shape, w, p, d, has_bias, need_dx)
    return (None if dx4 is None else xp.reshape(dx4, x_shape)), dw, db


# ----------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------
def _pool_args(kernel_size, stride, padding):
    k = _pair(kernel_size, "kernel_size", minimum=1)
    s = k if stride is None else _pair(stride, "stride", minimum=1)
    p = _pair(padding, "padding", minimum=0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding={padding!r} must be at most half of kernel_size={kernel_size!r} (as in torch)")
    return k, s, p


def _pool_windows(xp, x4, k, s, p, oh, ow, pad_value):
    """Stack the kh*kw strided views of the padded input: (N, C, kh*kw, oh, ow)."""
    xpad = _pad_hw(x4, p[0], p[1], pad_value)
    taps = [xpad[:, :, rs, cs] for rs, cs in _window_slices(*k, *s, 1, 1, oh, ow)]
    return xp.stack(taps, axis=2)


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, *, impl: str = "auto"):
    """Max pooling (floor mode, ``-inf`` padding, like torch) with ``(out, cache)``.

    Parameters
    ----------
    x : array, shape (..., C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), default ``kernel_size``
    padding : int or (int, int)
    impl : {"auto", "numba", "array_api"}

    Returns
    -------
    out : array, shape (..., C, out_h, out_w)
    cache : tuple; the gradient goes to the first maximum of each window
    """
    xp = _namespace(x)
    c, h, w = _check_image(x)
    k, s, p = _pool_args(kernel_size, stride, padding)
    oh, ow = _check_out_hw((h, w), k, s, p, (1, 1), "max_pool2d")
    lead = tuple(x.shape[:-3])
    n = _prod(lead)
    x4 = xp.reshape(x, (n, c, h, w))
    if _use_numba(xp, impl):
        _cpu = _kernels()
        out4, argmax = _cpu.max_pool2d(x4, k, s, p, (oh, ow))
    else:
        windows = _pool_windows(xp, x4, k, s, p, oh, ow, -math.inf)
        out4 = xp.max(windows, axis=2)
        argmax = xp.argmax(windows, axis=2)  # first maximum, like torch
    out = xp.reshape(out4, lead + (c, oh, ow))
    return out, (argmax, (n, c, h, w), tuple(x.shape), k, s, p, impl)


def max_pool2d(x, kernel_size, stride=None, padding=0, *, impl: str = "auto"):
    """Evaluation-only :func:`max_pool2d_forward`.

    Parameters
    ----------
    x : array, shape (..., C, H, W)
    kernel_size, stride, padding : int or (int, int)
        ``stride`` defaults to ``kernel_size``; ``padding`` at most half the kernel.
    impl : {"auto", "numba", "array_api"}

    Returns
    -------
    array, shape (..., C, out_h, out_w)
    """
    return max_pool2d_forward(x, kernel_size, stride, padding, impl=impl)[0]


def max_pool2d_backward(dout, cache):
    """Gradient of :func:`max_pool2d_forward`: ``dout`` routed to each window's argmax.

    Parameters
    ----------
    dout : array, shape (..., C, out_h, out_w)
    cache : tuple from :func:`max_pool2d_forward`

    Returns
    -------
    dx : array, shape of x, (..., C, H, W)
    """
    argmax, (n, c, h, w), x_shape, k, s, p, impl = cache
    xp = _namespace(dout)
    oh, ow = int(argmax.shape[-2]), int(argmax.shape[-1])
    d4 = xp.reshape(dout, (n, c, oh, ow))
    if _use_numba(xp, impl):
        _cpu = _kernels()
        return xp.reshape(_cpu.max_pool2d_backward(d4, argmax, (n, c, h, w), k, s, p), x_shape)
    dxpad = xp.zeros((n, c, h + 2 * p[0], w + 2 * p[1]), dtype=dout.dtype, device=_backend.device_of(dout))
    zero = xp.zeros((), dtype=dout.dtype)
    for t, (rs, cs) in enumerate(_window_slices(*k, *s, 1, 1, oh, ow)):
        dxpad[:, :, rs, cs] = dxpad[:, :, rs, cs] + xp.where(argmax == t, d4, zero)
    return xp.reshape(dxpad[:, :, p[0] : p[0] + h, p[1] : p[1] + w], x_shape)


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Average pooling (zero padding counted in the divisor, torch's default) with ``(out, cache)``.

    Parameters
    ----------
    x : array, shape (..., C, H, W)
    kernel_size, stride, padding : int or (int, int)
        ``stride`` defaults to ``kernel_size``; ``padding`` at most half the kernel.

    Returns
    -------
    out : array, shape (..., C, out_h, out_w)
    cache : tuple
    """
    xp = _namespace(x)
    c, h, w = _check_image(x)
    k, s, p = _pool_args(kernel_size, stride, padding)
    oh, ow = _check_out_hw((h, w), k, s, p, (1, 1), "avg_pool2d")
    lead = tuple(x.shape[:-3])
    n = _prod(lead)
    x4 = xp.reshape(x, (n, c, h, w))
    if k == s and p == (0, 0) and h % k[0] == 0 and w % k[1] == 0:
        # Non-overlapping tiles: a reshape and a mean, no window copies.
        out4 = xp.mean(xp.reshape(x4, (n, c, oh, k[0], ow, k[1])), axis=(3, 5))
    else:
        out4 = xp.mean(_pool_windows(xp, x4, k, s, p, oh, ow, 0.0), axis=2)
    return xp.reshape(out4, lead + (c, oh, ow)), ((n, c, h, w), tuple(x.shape), k, s, p)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Evaluation-only :func:`avg_pool2d_forward`.

    Parameters
    ----------
    x : array, shape (..., C, H, W)
    kernel_size, stride, padding : int or (int, int)

    Returns
    -------
    array, shape (..., C, out_h, out_w)
    """
    return avg_pool2d_forward(x, kernel_size, stride, padding)[0]


def avg_pool2d_backward(dout, cache):
    """Gradient of :func:`avg_pool2d_forward`: ``dout / (kh*kw)`` spread over each window.

    Parameters
    ----------
    dout : array, shape (..., C, out_h, out_w)
    cache : tuple from :func:`avg_pool2d_forward`

    Returns
    -------
    dx : array, shape of x, (..., C, H, W)
    """
    (n, c, h, w), x_shape, k, s, p = cache
    xp = _namespace(dout)
    oh, ow = int(dout.shape[-2]), int(dout.shape[-1])
    share = xp.reshape(dout, (n, c, oh, ow)) / float(k[0] * k[1])
    dxpad = xp.zeros((n, c, h + 2 * p[0], w + 2 * p[1]), dtype=dout.dtype, device=_backend.device_of(dout))
    for rs, cs in _window_slices(*k, *s, 1, 1, oh, ow):
        dxpad[:, :, rs, cs] = dxpad[:, :, rs, cs] + share
    return xp.reshape(dxpad[:, :, p[0] : p[0] + h, p[1] : p[1] + w], x_shape)


# ----------------------------------------------------------------------------
# activations (elementwise; any shape)
# ----------------------------------------------------------------------------
def relu(x):
    """``max(x, 0)`` elementwise.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    array, shape of x
    """
    xp = _namespace(x)
    return xp.maximum(x, xp.zeros((), dtype=x.dtype))


def relu_forward(x):
    """:func:`relu` with ``(out, cache)``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    out : array, shape of x
    cache : array, shape of x: the output (its sign is the mask)
    """
    out = relu(x)
    return out, out


def relu_backward(dout, cache, *, impl: str = "auto"):
    """``dout * (x > 0)`` (subgradient 0 at 0, like torch).

    Parameters
    ----------
    dout : array, shape of x
        ``dL/dout``.
    cache : from :func:`relu_forward`
    impl : {"auto", "numba", "array_api"}
        ``"auto"``: one Numba pass for NumPy arrays of one shape, the
        array-API expression otherwise.

    Returns
    -------
    dx : array, shape of x
    """
    xp = _namespace(dout)
    if _use_numba(xp, impl, usable=dout.shape == cache.shape, needs="dout and cache of one shape"):
        return _kernels().relu_backward(dout, cache)
    return dout * xp.astype(cache > 0, dout.dtype)


def tanh(x):
    """Hyperbolic tangent elementwise.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    array, shape of x
    """
    return _namespace(x).tanh(x)


def tanh_forward(x):
    """:func:`tanh` with ``(out, cache)``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    out : array, shape of x
    cache : array, shape of x: the output
    """
    out = tanh(x)
    return out, out


def tanh_backward(dout, cache, *, impl: str = "auto"):
    """``dout * (1 - tanh(x)**2)``.

    Parameters
    ----------
    dout : array, shape of x
        ``dL/dout``.
    cache : from :func:`tanh_forward`
    impl : {"auto", "numba", "array_api"}
        ``"auto"``: one Numba pass (the same float operations) for NumPy arrays
        of one shape and dtype, the array-API expression otherwise.

    Returns
    -------
    dx : array, shape of x
    """
    xp = _namespace(dout)
    usable = dout.dtype == cache.dtype and dout.shape == cache.shape
    if _use_numba(xp, impl, usable=usable, needs="dout and cache of one shape and dtype"):
        return _kernels().tanh_backward(dout, cache)
    return dout * (1.0 - cache * cache)


def sigmoid(x):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, stable for large ``|x|``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    array, shape of x
    """
    xp = _namespace(x)
    # exp of a non-positive number only: no overflow for either sign.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_forward(x):
    """:func:`sigmoid` with ``(out, cache)``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    out : array, shape of x
    cache : array, shape of x: the output
    """
    out = sigmoid(x)
    return out, out


def sigmoid_backward(dout, cache):
    """``dout * s * (1 - s)`` with ``s = sigmoid(x)``.

    Parameters
    ----------
    dout : array, shape of x
        ``dL/dout``.
    cache : from :func:`sigmoid_forward`

    Returns
    -------
    dx : array, shape of x
    """
    return dout * cache * (1.0 - cache)


_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf(xp, x):
    """erf through the namespace when it has one; otherwise a float64-accurate series."""
    fn = getattr(xp, "erf", None)
    if fn is not None:
        return fn(x)
    return _erf_fallback(xp, x)


def _erf_fallback(xp, x):
    """erf(x) to ~1e-15: Taylor series for |x| < 2.5, continued fraction for the tail.

    The array API standard has no ``erf``; NumPy gets SciPy's in :mod:`._cpu`
    through :func:`gelu`, every other namespace uses this.
    """
    a = xp.abs(x)
    small = xp.minimum(a, 2.5)
    # Taylor: erf(z) = 2/sqrt(pi) * sum (-1)^n z^(2n+1) / (n! (2n+1))
    z2 = small * small
    term = xp.asarray(small, copy=True)
    total = xp.asarray(small, copy=True)
    for k in range(1, 60):
        term = -term * z2 / k
        total = total + term / (2 * k + 1)
    series = total * (2.0 / math.sqrt(math.pi))
    # Tail: erfc(z) = exp(-z^2)/sqrt(pi) * 1/(z + 1/2/(z + 1/(z + 3/2/(z + ...)))) (Lentz backwards)
    big = xp.maximum(a, 2.5)
    frac = big
    for k in range(60, 0, -1):
        frac = big + (k / 2.0) / frac
    tail = 1.0 - xp.exp(-big * big) / (math.sqrt(math.pi) * frac)
    value = xp.where(a < 2.5, series, tail)
    return xp.where(x < 0, -value, value)


def gelu(x, *, impl: str = "auto"):
    """Exact GELU ``x * Phi(x)`` with the normal CDF ``Phi`` (torch's default, not the tanh form).

    Parameters
    ----------
    x : array, any shape
    impl : {"auto", "numba", "array_api"}
        See :func:`gelu_forward`.

    Returns
    -------
    array, shape of x
    """
    return gelu_forward(x, impl=impl)[0]


def gelu_forward(x, *, impl: str = "auto"):
    """:func:`gelu` with ``(out, cache)``.

    Parameters
    ----------
    x : array, any shape
    impl : {"auto", "numba", "array_api"}
        ``"auto"``: NumPy arrays take ``Phi`` from the CPU kernel path
        (SciPy's ``ndtr``), other namespaces from ``erf`` (the namespace's own,
        or a series accurate to ~1e-15 where the array API has none).

    Returns
    -------
    out : array, shape of x
    cache : tuple ``(x, Phi(x))``, arrays of the shape of x
    """
    xp = _namespace(x)
    if _use_numba(xp, impl):
        cdf = _kernels().normal_cdf(x)
    else:
        cdf = 0.5 * (1.0 + _erf(xp, x * _SQRT_HALF))
    return x * cdf, (x, cdf)


def gelu_backward(dout, cache):
    """``dout * (Phi(x) + x * phi(x))`` with the normal density ``phi``.

    Parameters
    ----------
    dout : array, shape of x
        ``dL/dout``.
    cache : from :func:`gelu_forward`

    Returns
    -------
    dx : array, shape of x
    """
    x, cdf = cache
    xp = _namespace(dout)
    pdf = xp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return dout * (cdf + x * pdf)


def silu(x):
    """SiLU (swish) ``x * sigmoid(x)`` (``torch.nn.functional.silu``).

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    array, shape of x
    """
    return x * sigmoid(x)


def silu_forward(x):
    """:func:`silu` with ``(out, cache)``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    out : array, shape of x
    cache : tuple ``(x, sigmoid(x))``, arrays of the shape of x
    """
    s = sigmoid(x)
    return x * s, (x, s)


def silu_backward(dout, cache):
    """``dout * s * (1 + x (1 - s))`` with ``s = sigmoid(x)``.

    Parameters
    ----------
    dout : array, shape of x
        ``dL/dout``.
    cache : from :func:`silu_forward`

    Returns
    -------
    dx : array, shape of x
    """
    x, s = cache
    return dout * (s * (1.0 + x * (1.0 - s)))


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "gelu": (gelu_forward, gelu_backward),
    "silu": (silu_forward, silu_backward),
}


# ----------------------------------------------------------------------------
# layer norm
# ----------------------------------------------------------------------------
def layer_norm(x, gamma=None, beta=None, eps: float = 1e-5):
    """Layer normalisation over the last axis (``torch.nn.functional.layer_norm``).

    ``y = (x - mean) / sqrt(var + eps) * gamma + beta`` with the mean and the
    biased variance of each row (the last axis).

    Parameters
    ----------
    x : array, shape (..., F)
    gamma, beta : array, shape (F,), or None
        Elementwise affine scale and shift (None: no affine).
    eps : float > 0

    Returns
    -------
    array, shape of x
    """
    return layer_norm_forward(x, gamma, beta, eps)[0]


def layer_norm_forward(x, gamma=None, beta=None, eps: float = 1e-5):
    """:func:`layer_norm` with ``(out, cache)``.

    Parameters
    ----------
    x : array, shape (..., F)
    gamma, beta : array, shape (F,), or None
    eps : float > 0

    Returns
    -------
    out : array, shape of x
    cache : tuple ``(xhat (..., F), inv_std (..., 1), gamma, has_beta)``
    """
    xp = _namespace(x)
    mean = xp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    inv_std = 1.0 / xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True) + float(eps))
    xhat = centred * inv_std
    out = xhat if gamma is None else xhat * gamma
    if beta is not None:
        out = out + beta
    return out, (xhat, inv_std, gamma, beta is not None)


def layer_norm_backward(dout, cache):
    """Gradients of :func:`layer_norm_forward`.

    With ``g = dout * gamma`` (or ``dout`` without affine) and ``F`` features:
    ``dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))`` (means over the last axis).

    Parameters
    ----------
    dout : array, shape (..., F)
        ``dL/dout``.
    cache : from :func:`layer_norm_forward`

    Returns
    -------
    dx : array, shape (..., F)
    dgamma, dbeta : array, shape (F,), or None
        Summed over every leading axis; None without the corresponding parameter.
    """
    xhat, inv_std, gamma, has_beta = cache
    xp = _namespace(dout)
    lead = tuple(range(len(dout.shape) - 1))
    dgamma = None if gamma is None else xp.sum(dout * xhat, axis=lead)
    dbeta = xp.sum(dout, axis=lead) if has_beta else None
    g = dout if gamma is None else dout * gamma
    dx = inv_std * (g - xp.mean(g, axis=-1, keepdims=True) - xhat * xp.mean(g * xhat, axis=-1, keepdims=True))
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------
# flatten
# ----------------------------------------------------------------------------
def flatten(x, n_feature_axes: int = 3):
    """Merge the last ``n_feature_axes`` axes: (..., C, H, W) -> (..., C*H*W).

    Parameters
    ----------
    x : array, shape (..., d_1, ..., d_k) with ``k = n_feature_axes``
        At least one leading (batch) axis.
    n_feature_axes : int

    Returns
    -------
    array, shape (..., d_1 * ... * d_k)
    """
    return flatten_forward(x, n_feature_axes)[0]


def flatten_forward(x, n_feature_axes: int = 3):
    """:func:`flatten` with ``(out, cache)``.

    Parameters
    ----------
    x : array, shape (..., d_1, ..., d_k) with ``k = n_feature_axes``
    n_feature_axes : int

    Returns
    -------
    out : array, shape (..., d_1 * ... * d_k)
    cache : tuple of int, the shape of x
    """
    xp = _namespace(x)
    if len(x.shape) <= n_feature_axes:
        raise ValueError(
            f"x has shape {tuple(x.shape)}; flatten merges the last {n_feature_axes} axes and needs "
            "at least one leading batch axis"
        )
    lead = tuple(x.shape[: len(x.shape) - n_feature_axes])
    feat = _prod(x.shape[len(x.shape) - n_feature_axes :])
    return xp.reshape(x, lead + (feat,)), tuple(x.shape)


def flatten_backward(dout, cache):
    """Reshape the gradient back to the input shape.

    Parameters
    ----------
    dout : array, shape (..., d_1 * ... * d_k)
    cache : the shape of x from :func:`flatten_forward`

    Returns
    -------
    dx : array, shape of x
    """
    return _namespace(dout).reshape(dout, cache)


# ----------------------------------------------------------------------------
# dropout (inverted; mask from egdnp.rng)
# ----------------------------------------------------------------------------
def dropout_forward(x, rate: float, *, seed: int, stream, generation: int = 0, member: int = 0, train: bool = True):
    """Inverted dropout: keep each entry with probability ``1 - rate`` and scale by ``1/(1-rate)``.

    The mask is ``egdnp.rng.uniform(x.shape, seed=seed, stream=stream,
    member=member, generation=generation) >= rate``: the same on every backend,
    and regenerated from the same numbers in a port.

    Parameters
    ----------
    x : array, any shape
    rate : float in [0, 1)
        Probability of zeroing an entry.
    seed, stream, generation, member :
        The noise address (see :mod:`egdnp.rng`); models use
        ``stream="dropout/" + layer name`` and ``generation=step``.
    train : bool
        ``False`` is the identity (evaluation mode).

    Returns
    -------
    out : array, shape of x
    cache : the scaled mask (``None`` in eval mode)
    """
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"rate={rate} must be in [0, 1)")
    if not train or rate == 0.0:
        return x, None
    xp = _namespace(x)
    dname = "float64" if x.dtype == xp.float64 else "float32"
    u = rng.uniform(tuple(x.shape), seed=seed, stream=stream, member=member, generation=generation, dtype=dname, xp=xp)
    scale = xp.asarray(1.0 / (1.0 - rate), dtype=x.dtype)
    mask = xp.where(u >= rate, scale, xp.zeros((), dtype=x.dtype))
    return x * mask, mask


def dropout_backward(dout, cache):
    """``dout * mask`` (identity in eval mode).

    Parameters
    ----------
    dout : array, shape of x
    cache : the scaled mask from :func:`dropout_forward` (shape of x), or None

    Returns
    -------
    dx : array, shape of x
    """
    return dout if cache is None else dout * cache


# ----------------------------------------------------------------------------
# batch normalisation
# ----------------------------------------------------------------------------
def batch_norm_forward(x, gamma, beta, running_mean, running_var, *, axes, train: bool, momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalisation over ``axes`` with running statistics (torch semantics).

    Parameters
    ----------
    x : array
        Features along one axis; statistics over ``axes``.  BatchNorm1d uses
        ``x`` of shape (..., N, F) and ``axes=(-2,)``; BatchNorm2d uses
        (..., N, C, H, W) and ``axes=(-4, -2, -1)``.  Extra leading axes (a
        population) get their own batch statistics each.
    gamma, beta : array, shape (F,)
        Scale and shift.
    running_mean, running_var : array, shape (F,)
        Used in eval mode; updated (returned, not mutated) in train mode.
    train : bool
    momentum, eps : float
        ``running = (1 - momentum) * running + momentum * batch_stat``; the
        running variance uses the unbiased batch variance, normalisation the biased one.

    Returns
    -------
    out : array, shape of x
    cache : tuple for :func:`batch_norm_backward`
    new_running : (mean, var), arrays of shape (F,); the inputs unchanged in eval mode.
        With a population axis the update averages the members' batch statistics.
    """
    xp = _namespace(x, gamma)
    ndim = len(x.shape)
    axes = tuple(a % ndim for a in axes)
    feat_axis = [a for a in range(ndim) if a not in axes and a > min(axes)]
    if len(feat_axis) != 1:
        raise ValueError(f"axes={axes} leave no single feature axis in x of shape {tuple(x.shape)}")
    f_axis = feat_axis[0]
    bshape = tuple(int(x.shape[a]) if a == f_axis else 1 for a in range(ndim))
    g = xp.reshape(gamma, bshape)
    b = xp.reshape(beta, bshape)
    if not train:
        inv_std = 1.0 / xp.sqrt(xp.reshape(running_var, bshape) + float(eps))
        xhat = (x - xp.reshape(running_mean, bshape)) * inv_std
        return xhat * g + b, (False, xhat, inv_std, g, axes, f_axis), (running_mean, running_var)
    mean = xp.mean(x, axis=axes, keepdims=True)
    centred = x - mean
    var = xp.mean(centred * centred, axis=axes, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + float(eps))
    xhat = centred * inv_std
    count = _prod(x.shape[a] for a in axes)
    unbias = count / max(count - 1, 1)
    lead_axes = tuple(a for a in range(ndim) if a != f_axis)
    new_mean = (1.0 - float(momentum)) * running_mean + float(momentum) * xp.reshape(
        xp.mean(mean, axis=lead_axes), running_mean.shape
    )
    new_var = (1.0 - float(momentum)) * running_var + float(momentum) * unbias * xp.reshape(
        xp.mean(var, axis=lead_axes), running_var.shape
    )
    return xhat * g + b, (True, xhat, inv_std, g, axes, f_axis), (new_mean, new_var)


def batch_norm_backward(dout, cache):
    """Gradients of :func:`batch_norm_forward`.

    In train mode the batch mean and variance depend on ``x`` (three-term
    formula per statistics group); in eval mode the running statistics are
    constants and ``dx = dout * gamma / sqrt(running_var + eps)``.

    Parameters
    ----------
    dout : array, shape of x
    cache : tuple from :func:`batch_norm_forward`

    Returns
    -------
    dx : array, shape of x
    dgamma, dbeta : arrays, shape (F,)
    """
    train, xhat, inv_std, g, axes, f_axis = cache
    xp = _namespace(dout)
    ndim = len(dout.shape)
    sum_axes = tuple(a for a in range(ndim) if a != f_axis)
    dgamma = xp.sum(dout * xhat, axis=sum_axes)
    dbeta = xp.sum(dout, axis=sum_axes)
    dxhat = dout * g
    if not train:
        return dxhat * inv_std, dgamma, dbeta
    # Batch statistics depend on x: the classic three-term formula, per statistics group.
    mean_dxhat = xp.mean(dxhat, axis=axes, keepdims=True)
    mean_dxhat_xhat = xp.mean(dxhat * xhat, axis=axes, keepdims=True)
    dx = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * inv_std
    return dx, dgamma, dbeta
