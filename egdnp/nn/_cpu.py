"""Numba CPU kernels (kernels only): convolution, pooling, activations' backward, cross-entropy.

Each public function here takes and returns NumPy arrays and has exactly one
caller, a dispatch function in :mod:`egdnp.nn.functional` (or
:mod:`egdnp.nn.losses`) whose array-API branch is the oracle the tests compare
against.  Kernels are compiled once per dtype and cached on disk
(``cache=True``).  Temporaries come from :func:`egdnp.nn._scratch.empty`: the
step scratch inside a training step, ``np.empty`` otherwise.

Threads: every kernel has a serial body (one image range) and a parallel
driver that splits the batch over Numba's threads (images never share output
memory, so there are no races).  The parallel driver is used only for work of
at least ``egdnp._threads.NN_SPLIT_FROM`` output elements (the one threading policy).  On small batches it
loses: Numba's OpenMP workers and OpenBLAS's threads both spin-wait after
their own parallel regions, and on a 2-core machine a parallel kernel right
after a GEMM measured 5-10x slower than the serial one (see docs/nn.md).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import _threads

# kernel temporaries come from the step scratch inside a training step
from ._scratch import empty as _empty, zeros as _zeros

_SERIAL = dict(nopython=True, cache=True, nogil=True)
_PARALLEL = dict(nopython=True, parallel=True, cache=True, nogil=True)

def _parallel(n_elements: int) -> bool:
    """Whether a kernel of ``n_elements`` output elements runs its parallel driver (read at call time)."""
    return n_elements >= _threads.NN_SPLIT_FROM and numba.get_num_threads() > 1


# ----------------------------------------------------------------------------
# im2col, rows layout (N, L, C*kh*kw): the public im2col's layout
# ----------------------------------------------------------------------------
@numba.jit(**_SERIAL)
def _im2col_rows(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, n0, n1):
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    for n in range(n0, n1):
        for r in range(oh):
            for q in range(ow):
                row = r * ow + q
                col = 0
                for ch in range(n_ch):
                    for i in range(kh):
                        hi = r * sh - ph + i * dh
                        inside_h = 0 <= hi < h
                        for j in range(kw):
                            wj = q * sw - pw + j * dw
                            if inside_h and 0 <= wj < w:
                                out[n, row, col] = x[n, ch, hi, wj]
                            else:
                                out[n, row, col] = 0.0
                            col += 1


@numba.jit(**_SERIAL)
def _col2im_rows(patches, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, n0, n1):
    n_ch, h, w = out.shape[1], out.shape[2], out.shape[3]
    for n in range(n0, n1):
        out[n] = 0.0
        for r in range(oh):
            for q in range(ow):
                row = r * ow + q
                col = 0
                for ch in range(n_ch):
                    for i in range(kh):
                        hi = r * sh - ph + i * dh
                        inside_h = 0 <= hi < h
                        for j in range(kw):
                            wj = q * sw - pw + j * dw
                            if inside_h and 0 <= wj < w:
                                out[n, ch, hi, wj] += patches[n, row, col]
                            col += 1


# ----------------------------------------------------------------------------
# im2col, columns layout (N, C*kh*kw, L): what conv2d uses internally, because
# W (C_out, CK) @ cols (CK, L) lands directly in NCHW order and every copy here
# runs along contiguous image rows.
# ----------------------------------------------------------------------------
@numba.jit(**_SERIAL)
def _im2col_cols(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, n0, n1):
    # Flat 1-D indexing on purpose: slicing views inside these loops costs an
    # atomic reference-count update each, which dominated an earlier version.
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    length = oh * ow
    xf = x.reshape(-1)
    of = out.reshape(-1)
    for n in range(n0, n1):
        for ch in range(n_ch):
            x_plane = (n * n_ch + ch) * h * w
            for i in range(kh):
                for j in range(kw):
                    row = (ch * kh + i) * kw + j
                    o_row = (n * n_ch * kh * kw + row) * length
                    # output columns q whose input column c0 + q*sw lies inside [0, w)
                    c0 = j * dw - pw
                    q_lo = 0 if c0 >= 0 else (-c0 + sw - 1) // sw
                    q_hi = min(ow, (w - 1 - c0) // sw + 1) if w - 1 - c0 >= 0 else 0
                    if q_lo > q_hi:
                        q_lo = q_hi
                    for r in range(oh):
                        o = o_row + r * ow
                        hi = r * sh - ph + i * dh
                        if hi < 0 or hi >= h:
                            for q in range(ow):
                                of[o + q] = 0.0
                            continue
                        src = x_plane + hi * w + c0
                        for q in range(q_lo):
                            of[o + q] = 0.0
                        if sw == 1:
                            for q in range(q_lo, q_hi):
                                of[o + q] = xf[src + q]
                        else:
                            for q in range(q_lo, q_hi):
                                of[o + q] = xf[src + q * sw]
                        for q in range(q_hi, ow):
                            of[o + q] = 0.0


@numba.jit(**_SERIAL)
def _col2im_cols(cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, n0, n1):
    n_ch, h, w = out.shape[1], out.shape[2], out.shape[3]
    length = oh * ow
    cf = cols.reshape(-1)
    of = out.reshape(-1)
    for n in range(n0, n1):
        base_n = n * n_ch * h * w
        for t in range(base_n, base_n + n_ch * h * w):
            of[t] = 0.0
        for ch in range(n_ch):
            x_plane = base_n + ch * h * w
            for i in range(kh):
                for j in range(kw):
                    row = (ch * kh + i) * kw + j
                    c_row = (n * n_ch * kh * kw + row) * length
                    c0 = j * dw - pw
                    q_lo = 0 if c0 >= 0 else (-c0 + sw - 1) // sw
                    q_hi = min(ow, (w - 1 - c0) // sw + 1) if w - 1 - c0 >= 0 else 0
                    for r in range(oh):
                        hi = r * sh - ph + i * dh
                        if hi < 0 or hi >= h:
                            continue
                        src = c_row + r * ow
                        dst = x_plane + hi * w + c0
                        if sw == 1:
                            for q in range(q_lo, q_hi):
                                of[dst + q] += cf[src + q]
                        else:
                            for q in range(q_lo, q_hi):
                                of[dst + q * sw] += cf[src + q]


# ----------------------------------------------------------------------------
# stride-1 convolution on "wide" rows, channel-major columns.
#
# Wide rows: with a zero-padded input of row width wp, window offset (i, j) of
# output pixel (r, q) sits at flat position (r * wp + q) + (i * dh * wp + j * dw)
# of the padded plane.  Computing the output on the (oh, wp) grid -- wp - ow
# throw-away columns per row -- turns each im2col row into ONE contiguous copy
# (and each col2im row into one contiguous add) instead of oh short runs with
# bounds checks.
#
# Channel-major columns (CK, N, L'): the whole batch is then ONE GEMM per
# product, (C_out, CK) @ (CK, N*L').  Batched per-image GEMMs were as fast on
# an idle machine but collapsed when other processes shared the cores (OpenBLAS
# hands every small GEMM to its threads).  Two cheap passes move the result
# between (C_out, N, L') and NCHW, dropping the throw-away columns and adding
# the bias on the way.
# ----------------------------------------------------------------------------
@numba.jit(**_SERIAL)
def _im2col_wide(xpad, kh, kw, dh, dw, oh, out, n0, n1):
    n_img, n_ch, hp, wp = xpad.shape
    length = oh * wp
    plane = hp * wp
    xf = xpad.reshape(-1)
    of = out.reshape(-1)
    for n in range(n0, n1):
        for ch in range(n_ch):
            src0 = (n * n_ch + ch) * plane
            for i in range(kh):
                for j in range(kw):
                    row = (ch * kh + i) * kw + j
                    shift = i * dh * wp + j * dw
                    # the last j*dw entries would run past the plane: throw-away columns
                    valid = min(length, plane - shift)
                    # unsigned offsets: signed ones make Numba guard every access against
                    # negative (wrap-around) indices, which blocks vectorisation (3x slower)
                    dst = np.uint64((row * n_img + n) * length)
                    src = np.uint64(src0 + shift)
                    for t in range(valid):
                        of[dst + np.uint64(t)] = xf[src + np.uint64(t)]
                    for t in range(valid, length):
                        of[dst + np.uint64(t)] = 0.0


@numba.jit(**_SERIAL)
def _col2im_wide(cols, kh, kw, dh, dw, oh, out, n0, n1):
    n_img, n_ch, hp, wp = out.shape
    length = oh * wp
    plane = hp * wp
    cf = cols.reshape(-1)
    of = out.reshape(-1)
    for n in range(n0, n1):
        base = np.uint64(n * n_ch * plane)
        for t in range(n_ch * plane):
            of[base + np.uint64(t)] = 0.0
        for ch in range(n_ch):
            dst0 = (n * n_ch + ch) * plane
            for i in range(kh):
                for j in range(kw):
                    row = (ch * kh + i) * kw + j
                    shift = i * dh * wp + j * dw
                    valid = min(length, plane - shift)
                    src = np.uint64((row * n_img + n) * length)
                    dst = np.uint64(dst0 + shift)
                    for t in range(valid):
                        of[dst + np.uint64(t)] += cf[src + np.uint64(t)]


@numba.jit(**_SERIAL)
def _wide_to_nchw(wide, bias, out, n0, n1):
    """out[n, o, r, q] = wide[o, n, r*wp + q] + bias[o] for q < ow."""
    c_out, n_img, length = wide.shape
    oh, ow = out.shape[2], out.shape[3]
    wp = length // oh
    wf = wide.reshape(-1)
    of = out.reshape(-1)
    for n in range(n0, n1):
        for o in range(c_out):
            b = bias[o]
            for r in range(oh):
                src = np.uint64((o * n_img + n) * length + r * wp)
                dst = np.uint64(((n * c_out + o) * oh + r) * ow)
                for q in range(ow):
                    of[dst + np.uint64(q)] = wf[src + np.uint64(q)] + b


@numba.jit(**_SERIAL)
def _nchw_to_wide(dout, wide, sums, in_order, n0, n1):
    """wide[o, n, r*wp + q] = dout[n, o, r, q], zero in the throw-away columns q >= ow.

    Also ``sums[n, o] = sum(dout[n, o])`` in float64 (the bias gradient, in the same pass).
    """
    c_out, n_img, length = wide.shape
    oh, ow = dout.shape[2], dout.shape[3]
    wp = length // oh
    df = dout.reshape(-1)
    wf = wide.reshape(-1)
    # float32: one float64 partial sum per column.  A single accumulator is one
    # chain of dependent adds (no SIMD) and took 3/4 of this kernel's time; the
    # reordered float64 sum differs by ~1e-16 relative, far below float32's ulp.
    # ``in_order`` (float64): one accumulator in row-major order, so float64
    # gradients stay bit for bit what they were (the reference bundles check them).
    part = np.zeros(ow, dtype=np.float64)
    for n in range(n0, n1):
        for o in range(c_out):
            part[:] = 0.0
            for r in range(oh):
                dst = np.uint64((o * n_img + n) * length + r * wp)
                src = np.uint64(((n * c_out + o) * oh + r) * ow)
                for q in range(ow):
                    wf[dst + np.uint64(q)] = df[src + np.uint64(q)]
                if in_order:
                    for q in range(ow):
                        part[0] += df[src + np.uint64(q)]
                else:
                    for q in range(ow):
                        part[q] += df[src + np.uint64(q)]
                for q in range(ow, wp):
                    wf[dst + np.uint64(q)] = 0.0
            sums[n, o] = part.sum()


@numba.jit(**_SERIAL)
def _wide_relu_pool2x2(wide, bias, oh, pooled, argmax, n0, n1):
    """Conv bias, ReLU and 2x2/stride-2 max pooling of a wide GEMM result in one pass.

    ``pooled[n, o, r, q]`` = the largest of ``relu(wide[o, n, (2r+a)*wp + 2q+b] + bias[o])``
    over a, b in {0, 1}; ``argmax`` its first position ``2a + b`` (strict '>', as
    :func:`_max_pool_2x2`).  The same float operations as the three separate steps.
    """
    c_out, n_img, length = wide.shape
    wp = length // oh
    oh2, ow2 = pooled.shape[2], pooled.shape[3]
    wf = wide.reshape(-1)
    pf = pooled.reshape(-1)
    af = argmax.reshape(-1)
    zero = np.zeros(1, dtype=wide.dtype)[0]  # typed 0: a float64 literal would promote float32
    for n in range(n0, n1):
        for o in range(c_out):
            b = bias[o]
            for r in range(oh2):
                top = np.uint64((o * n_img + n) * length + 2 * r * wp)
                bottom = top + np.uint64(wp)
                dst = np.uint64(((n * c_out + o) * oh2 + r) * ow2)
                for q in range(ow2):
                    c = np.uint64(2 * q)
                    # relu as np.maximum(v, 0) has it: NaN and -0.0 pass through
                    best = wf[top + c] + b
                    if best < zero:
                        best = zero
                    t = 0
                    v = wf[top + c + np.uint64(1)] + b
                    if v < zero:
                        v = zero
                    if v > best:
                        best, t = v, 1
                    v = wf[bottom + c] + b
                    if v < zero:
                        v = zero
                    if v > best:
                        best, t = v, 2
                    v = wf[bottom + c + np.uint64(1)] + b
                    if v < zero:
                        v = zero
                    if v > best:
                        best, t = v, 3
                    pf[dst + np.uint64(q)] = best
                    af[dst + np.uint64(q)] = t


@numba.jit(**_SERIAL)
def _pool2x2_relu_to_wide(dpool, argmax, pooled, oh, wide, sums, in_order, n0, n1):
    """Backward of :func:`_wide_relu_pool2x2` straight into the conv's wide gradient.

    ``wide[o, n, .]`` is zero except at each window's argmax, which gets
    ``dpool`` where the pooled value is positive (the ReLU mask there: the
    window's maximum is the ReLU output at its argmax).  ``sums[n, o]`` is the
    float64 sum of what was written (the bias gradient), added up as
    :func:`_nchw_to_wide` adds up the same values.
    """
    c_out, n_img, length = wide.shape
    wp = length // oh
    oh2, ow2 = dpool.shape[2], dpool.shape[3]
    df = dpool.reshape(-1)
    pf = pooled.reshape(-1)
    af = argmax.reshape(-1)
    wf = wide.reshape(-1)
    zero = np.zeros(1, dtype=wide.dtype)[0]
    part = np.zeros(ow2, dtype=np.float64)
    for n in range(n0, n1):
        for o in range(c_out):
            base = (o * n_img + n) * length
            part[:] = 0.0
            for r in range(oh2):
                src = np.uint64(((n * c_out + o) * oh2 + r) * ow2)
                # the bias gradient first, in a loop of its own (inside the scatter below
                # it cost 3x the scatter): float64 in row-major order of the conv
                # output, so the same additions as _nchw_to_wide; float32 per column
                if in_order:
                    for a in range(2):
                        for q in range(ow2):
                            i = src + np.uint64(q)
                            if af[i] // 2 == a and pf[i] > 0:
                                part[0] += df[i]
                else:
                    for q in range(ow2):
                        i = src + np.uint64(q)
                        part[q] += df[i] if pf[i] > 0 else zero
                for a in range(2):  # both rows of the windows, every position written once
                    row = np.uint64(base + (2 * r + a) * wp)
                    for q in range(ow2):
                        i = src + np.uint64(q)
                        # selects, no branches: the argmax and the mask are random, and
                        # branching on them mispredicted often enough to cost 5x
                        g = df[i] if pf[i] > 0 else zero
                        t = af[i]
                        c = row + np.uint64(2 * q)
                        wf[c] = g if t == 2 * a else zero
                        wf[c + np.uint64(1)] = g if t == 2 * a + 1 else zero
                    for q in range(2 * ow2, wp):  # throw-away columns, the odd last column
                        wf[row + np.uint64(q)] = 0.0
            for t in range(2 * oh2 * wp, length):  # the odd last row
                wf[np.uint64(base + t)] = 0.0
            sums[n, o] = part.sum()


@numba.jit(**_PARALLEL)
def _im2col_wide_par(xpad, kh, kw, dh, dw, oh, out, t):
    n = xpad.shape[0]
    for c in prange(t):
        _im2col_wide(xpad, kh, kw, dh, dw, oh, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _col2im_wide_par(cols, kh, kw, dh, dw, oh, out, t):
    n = out.shape[0]
    for c in prange(t):
        _col2im_wide(cols, kh, kw, dh, dw, oh, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _wide_to_nchw_par(wide, bias, out, t):
    n = out.shape[0]
    for c in prange(t):
        _wide_to_nchw(wide, bias, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _nchw_to_wide_par(dout, wide, sums, in_order, t):
    n = dout.shape[0]
    for c in prange(t):
        _nchw_to_wide(dout, wide, sums, in_order, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _wide_relu_pool2x2_par(wide, bias, oh, pooled, argmax, t):
    n = pooled.shape[0]
    for c in prange(t):
        _wide_relu_pool2x2(wide, bias, oh, pooled, argmax, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _pool2x2_relu_to_wide_par(dpool, argmax, pooled, oh, wide, sums, in_order, t):
    n = dpool.shape[0]
    for c in prange(t):
        _pool2x2_relu_to_wide(dpool, argmax, pooled, oh, wide, sums, in_order, c * n // t, (c + 1) * n // t)


def _conv_wide(x, w, p, d):
    """im2col and the GEMM of a stride-1 convolution: (wide (C_out, N, oh*wp), cols (C*kh*kw, N, oh*wp), oh, ow)."""
    n, c, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    hp, wp = h + 2 * p[0], wd + 2 * p[1]
    oh, ow = hp - d[0] * (kh - 1), wp - d[1] * (kw - 1)
    if p == (0, 0):
        xpad = np.ascontiguousarray(x)
    else:
        xpad = _zeros((n, c, hp, wp), x.dtype)
        xpad[:, :, p[0] : p[0] + h, p[1] : p[1] + wd] = x
    ck = c * kh * kw
    cols = _empty((ck, n, oh * wp), x.dtype)
    if _parallel(cols.size):
        _im2col_wide_par(xpad, kh, kw, d[0], d[1], oh, cols, numba.get_num_threads())
    else:
        _im2col_wide(xpad, kh, kw, d[0], d[1], oh, cols, 0, n)
    wide = _empty((c_out, n, oh * wp), x.dtype)
    np.matmul(np.ascontiguousarray(w).reshape(c_out, ck), cols.reshape(ck, n * oh * wp), out=wide.reshape(c_out, n * oh * wp))
    return wide, cols, oh, ow


def _bias_or_zeros(b, c_out, dtype):
    return np.zeros(c_out, dtype=dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)


def conv2d_stride1_forward(x, w, b, p, d):
    """Stride-1 convolution through wide, channel-major im2col columns.

    Parameters
    ----------
    x : ndarray (N, C, H, W); w : ndarray (C_out, C, kh, kw); b : ndarray (C_out,) or None
    p, d : (int, int) padding and dilation

    Returns
    -------
    out : ndarray (N, C_out, oh, ow)
    cols : ndarray (C*kh*kw, N, oh*wp), kept for the backward
    """
    wide, cols, oh, ow = _conv_wide(x, w, p, d)
    n, c_out = x.shape[0], w.shape[0]
    bias = _bias_or_zeros(b, c_out, x.dtype)
    out = _empty((n, c_out, oh, ow), x.dtype)
    if _parallel(cols.size):
        _wide_to_nchw_par(wide, bias, out, numba.get_num_threads())
    else:
        _wide_to_nchw(wide, bias, out, 0, n)
    return out, cols


def _conv_wide_backward(dwide, sums, cols, x_shape, w, p, d, has_bias, need_dx):
    """The convolution's gradients from its wide output gradient ``dwide`` (C_out, N, oh*wp).

    ``sums`` (N, C_out) float64 holds each image's sum of the output gradient (for db).
    Returns (dx (N, C, H, W) or None, dw, db or None).
    """
    n, c, h, wd = x_shape
    c_out, _, kh, kw = w.shape
    ck = c * kh * kw
    hp, wp = h + 2 * p[0], wd + 2 * p[1]
    length = dwide.shape[2]
    oh = length // wp
    d2 = dwide.reshape(c_out, n * length)
    c2 = cols.reshape(ck, n * length)
    # (cols @ d.T).T equals d @ cols.T; OpenBLAS ran it ~30% faster for the CNN's conv2
    dw = (c2 @ d2.T).T.reshape(w.shape)
    db = sums.sum(axis=0).astype(dwide.dtype) if has_bias else None
    if not need_dx:
        return None, dw, db
    dcols = _empty((ck, n * length), dwide.dtype)
    np.matmul(np.ascontiguousarray(w).reshape(c_out, ck).T, d2, out=dcols)
    dxpad = _empty((n, c, hp, wp), dwide.dtype)
    if _parallel(cols.size):
        _col2im_wide_par(dcols, kh, kw, d[0], d[1], oh, dxpad, numba.get_num_threads())
    else:
        _col2im_wide(dcols, kh, kw, d[0], d[1], oh, dxpad, 0, n)
    if p == (0, 0):
        return dxpad, dw, db
    return dxpad[:, :, p[0] : p[0] + h, p[1] : p[1] + wd], dw, db


def conv2d_stride1_backward(dout, cols, x_shape, w, p, d, has_bias, need_dx):
    """Gradients of :func:`conv2d_stride1_forward`: (dx (N, C, H, W) or None, dw, db or None)."""
    n, c_out = x_shape[0], w.shape[0]
    dout = np.ascontiguousarray(dout)
    # zeros in the throw-away columns make them drop out of dW and dx exactly
    dwide = _empty((c_out, n, cols.shape[2]), dout.dtype)
    sums = _empty((n, c_out), np.float64)
    in_order = dout.dtype == np.float64
    if _parallel(cols.size):
        _nchw_to_wide_par(dout, dwide, sums, in_order, numba.get_num_threads())
    else:
        _nchw_to_wide(dout, dwide, sums, in_order, 0, n)
    return _conv_wide_backward(dwide, sums, cols, x_shape, w, p, d, has_bias, need_dx)


def conv2d_relu_pool2x2_forward(x, w, b, p, d):
    """Stride-1 convolution, ReLU and 2x2/stride-2 max pooling; the conv output is never stored.

    Returns
    -------
    pooled : ndarray (N, C_out, oh // 2, ow // 2)
    argmax : ndarray of uint8, shape of pooled: each window's first maximum, ``2a + b``
    cols : ndarray (C*kh*kw, N, oh*wp), kept for the backward
    """
    wide, cols, oh, ow = _conv_wide(x, w, p, d)
    n, c_out = x.shape[0], w.shape[0]
    bias = _bias_or_zeros(b, c_out, x.dtype)
    pooled = _empty((n, c_out, oh // 2, ow // 2), x.dtype)
    argmax = _empty(pooled.shape, np.uint8)
    if _parallel(cols.size):
        _wide_relu_pool2x2_par(wide, bias, oh, pooled, argmax, numba.get_num_threads())
    else:
        _wide_relu_pool2x2(wide, bias, oh, pooled, argmax, 0, n)
    return pooled, argmax, cols


def conv2d_relu_pool2x2_backward(dpool, argmax, pooled, cols, x_shape, w, p, d, has_bias, need_dx):
    """Gradients of :func:`conv2d_relu_pool2x2_forward`: (dx (N, C, H, W) or None, dw, db or None)."""
    n, c_out = x_shape[0], w.shape[0]
    dpool = np.ascontiguousarray(dpool)
    oh = cols.shape[2] // (x_shape[3] + 2 * p[1])
    dwide = _empty((c_out, n, cols.shape[2]), dpool.dtype)
    sums = _empty((n, c_out), np.float64)
    in_order = dpool.dtype == np.float64
    if _parallel(cols.size):
        _pool2x2_relu_to_wide_par(dpool, argmax, pooled, oh, dwide, sums, in_order, numba.get_num_threads())
    else:
        _pool2x2_relu_to_wide(dpool, argmax, pooled, oh, dwide, sums, in_order, 0, n)
    return _conv_wide_backward(dwide, sums, cols, x_shape, w, p, d, has_bias, need_dx)


# ----------------------------------------------------------------------------
# max pooling
# ----------------------------------------------------------------------------
@numba.jit(**_SERIAL)
def _max_pool(x, kh, kw, sh, sw, ph, pw, oh, ow, out, argmax, n0, n1):
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    for n in range(n0, n1):
        for ch in range(n_ch):
            for r in range(oh):
                for q in range(ow):
                    best = x[n, ch, 0, 0]
                    best_t = -1
                    for i in range(kh):
                        hi = r * sh - ph + i
                        if hi < 0 or hi >= h:
                            continue
                        for j in range(kw):
                            wj = q * sw - pw + j
                            if wj < 0 or wj >= w:
                                continue
                            v = x[n, ch, hi, wj]
                            # strict '>' keeps the first maximum, as torch and argmax do
                            if best_t < 0 or v > best:
                                best = v
                                best_t = i * kw + j
                    out[n, ch, r, q] = best
                    argmax[n, ch, r, q] = best_t


@numba.jit(**_SERIAL)
def _max_pool_2x2(x, out, argmax, n0, n1):
    """The common 2x2, stride 2, no-padding case without bounds checks (unsigned flat offsets)."""
    n_ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    oh, ow = out.shape[2], out.shape[3]
    xf = x.reshape(-1)
    of = out.reshape(-1)
    af = argmax.reshape(-1)
    for n in range(n0, n1):
        for ch in range(n_ch):
            for r in range(oh):
                top = np.uint64(((n * n_ch + ch) * h + 2 * r) * w)
                bottom = top + np.uint64(w)
                dst = np.uint64(((n * n_ch + ch) * oh + r) * ow)
                for q in range(ow):
                    c = np.uint64(2 * q)
                    best, t = xf[top + c], 0
                    v = xf[top + c + np.uint64(1)]
                    if v > best:
                        best, t = v, 1
                    v = xf[bottom + c]
                    if v > best:
                        best, t = v, 2
                    v = xf[bottom + c + np.uint64(1)]
                    if v > best:
                        best, t = v, 3
                    of[dst + np.uint64(q)] = best
                    af[dst + np.uint64(q)] = t


@numba.jit(**_SERIAL)
def _max_pool_backward(dout, argmax, kw, sh, sw, ph, pw, out, n0, n1):
    n_ch, h, w = out.shape[1], out.shape[2], out.shape[3]
    oh, ow = dout.shape[2], dout.shape[3]
    for n in range(n0, n1):
        out[n] = 0.0
        for ch in range(n_ch):
            for r in range(oh):
                for q in range(ow):
                    t = argmax[n, ch, r, q]
                    hi = r * sh - ph + t // kw
                    wj = q * sw - pw + t % kw
                    out[n, ch, hi, wj] += dout[n, ch, r, q]


@numba.jit(**_SERIAL)
def _max_pool_2x2_backward(dout, argmax, out, n0, n1):
    """2x2, stride 2, no padding: every input pixel is written once, no zero pass."""
    n_ch, oh, ow = dout.shape[1], dout.shape[2], dout.shape[3]
    h, w = out.shape[2], out.shape[3]
    for n in range(n0, n1):
        for ch in range(n_ch):
            for r in range(oh):
                for q in range(ow):
                    g = dout[n, ch, r, q]
                    t = argmax[n, ch, r, q]
                    out[n, ch, 2 * r, 2 * q] = g if t == 0 else 0.0
                    out[n, ch, 2 * r, 2 * q + 1] = g if t == 1 else 0.0
                    out[n, ch, 2 * r + 1, 2 * q] = g if t == 2 else 0.0
                    out[n, ch, 2 * r + 1, 2 * q + 1] = g if t == 3 else 0.0
            # odd height/width: the last row/column is in no window
            for a in range(2 * oh, h):
                for b in range(w):
                    out[n, ch, a, b] = 0.0
            for a in range(2 * oh):
                for b in range(2 * ow, w):
                    out[n, ch, a, b] = 0.0


@numba.jit(**_SERIAL)
def _relu_backward(dout, out_fwd, result, i0, i1):
    base = np.uint64(i0)  # unsigned: no wrap-around guard, so the loop vectorises
    for k in range(i1 - i0):
        i = base + np.uint64(k)
        # branch-free: a data-dependent branch mispredicts on half of random activations
        result[i] = dout[i] * (out_fwd[i] > 0)


@numba.jit(**_SERIAL)
def _tanh_backward_flat(dout, out_fwd, result):
    one = np.ones(1, dtype=out_fwd.dtype)[0]  # typed 1: a float64 literal would promote float32
    for k in range(result.shape[0]):
        i = np.uint64(k)
        result[i] = dout[i] * (one - out_fwd[i] * out_fwd[i])


@numba.jit(**_SERIAL)
def _tanh_backward_2d(dout, out_fwd, result):
    # dout C-ordered, out_fwd any layout (a Linear output is a transposed view):
    # the strided reads cost less than NumPy's three passes or a layout copy
    one = np.ones(1, dtype=out_fwd.dtype)[0]
    for i in range(result.shape[0]):
        for j in range(result.shape[1]):
            o = out_fwd[i, j]
            result[i, j] = dout[i, j] * (one - o * o)


# ----------------------------------------------------------------------------
# parallel drivers: split [0, n) into one chunk per thread
# ----------------------------------------------------------------------------
@numba.jit(**_PARALLEL)
def _im2col_rows_par(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, t):
    n = x.shape[0]
    for c in prange(t):
        _im2col_rows(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _col2im_rows_par(patches, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, t):
    n = out.shape[0]
    for c in prange(t):
        _col2im_rows(patches, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _im2col_cols_par(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, t):
    n = x.shape[0]
    for c in prange(t):
        _im2col_cols(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _col2im_cols_par(cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, t):
    n = out.shape[0]
    for c in prange(t):
        _col2im_cols(cols, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _max_pool_par(x, kh, kw, sh, sw, ph, pw, oh, ow, out, argmax, t):
    n = x.shape[0]
    for c in prange(t):
        _max_pool(x, kh, kw, sh, sw, ph, pw, oh, ow, out, argmax, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _max_pool_2x2_par(x, out, argmax, t):
    n = x.shape[0]
    for c in prange(t):
        _max_pool_2x2(x, out, argmax, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _max_pool_backward_par(dout, argmax, kw, sh, sw, ph, pw, out, t):
    n = out.shape[0]
    for c in prange(t):
        _max_pool_backward(dout, argmax, kw, sh, sw, ph, pw, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _max_pool_2x2_backward_par(dout, argmax, out, t):
    n = out.shape[0]
    for c in prange(t):
        _max_pool_2x2_backward(dout, argmax, out, c * n // t, (c + 1) * n // t)


@numba.jit(**_PARALLEL)
def _relu_backward_par(dout, out_fwd, result, t):
    n = result.shape[0]
    for c in prange(t):
        _relu_backward(dout, out_fwd, result, c * n // t, (c + 1) * n // t)


# ----------------------------------------------------------------------------
# entry points (called by the dispatch functions in functional.py)
# ----------------------------------------------------------------------------
def im2col(x, k, s, p, d, out_hw, transposed=False):
    """Numba im2col; see :func:`egdnp.nn.functional.im2col`.

    Returns (N, oh*ow, C*kh*kw), or (N, C*kh*kw, oh*ow) with ``transposed``.
    """
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    length, ck = out_hw[0] * out_hw[1], c * k[0] * k[1]
    out = _empty((n, ck, length) if transposed else (n, length, ck), x.dtype)
    args = (x, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], out_hw[0], out_hw[1], out)
    if _parallel(out.size):
        (_im2col_cols_par if transposed else _im2col_rows_par)(*args, numba.get_num_threads())
    else:
        (_im2col_cols if transposed else _im2col_rows)(*args, 0, n)
    return out


def col2im(patches, x_shape, k, s, p, d, out_hw, transposed=False):
    """Numba col2im (adjoint of :func:`im2col`); returns (N, C, H, W)."""
    patches = np.ascontiguousarray(patches)
    out = _empty(x_shape, patches.dtype)
    args = (patches, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], out_hw[0], out_hw[1], out)
    if _parallel(patches.size):
        (_col2im_cols_par if transposed else _col2im_rows_par)(*args, numba.get_num_threads())
    else:
        (_col2im_cols if transposed else _col2im_rows)(*args, 0, x_shape[0])
    return out


def max_pool2d(x, k, s, p, out_hw):
    """Numba max pooling; returns (out (N, C, oh, ow), argmax (N, C, oh, ow) int32 offset i*kw+j)."""
    x = np.ascontiguousarray(x)
    n, c = x.shape[0], x.shape[1]
    out = _empty((n, c, out_hw[0], out_hw[1]), x.dtype)
    argmax = _empty((n, c, out_hw[0], out_hw[1]), np.int32)
    par = _parallel(x.size)
    if k == (2, 2) and s == (2, 2) and p == (0, 0):
        _max_pool_2x2_par(x, out, argmax, numba.get_num_threads()) if par else _max_pool_2x2(x, out, argmax, 0, n)
    else:
        args = (x, k[0], k[1], s[0], s[1], p[0], p[1], out_hw[0], out_hw[1], out, argmax)
        _max_pool_par(*args, numba.get_num_threads()) if par else _max_pool(*args, 0, n)
    return out, argmax


def max_pool2d_backward(dout, argmax, x_shape, k, s, p):
    """Numba max-pool backward; scatters ``dout`` to the recorded argmax positions."""
    dout = np.ascontiguousarray(dout)
    argmax = np.ascontiguousarray(argmax)
    out = _empty(x_shape, dout.dtype)
    if k == (2, 2) and s == (2, 2) and p == (0, 0):
        if _parallel(out.size):
            _max_pool_2x2_backward_par(dout, argmax, out, numba.get_num_threads())
        else:
            _max_pool_2x2_backward(dout, argmax, out, 0, x_shape[0])
        return out
    args = (dout, argmax, k[1], s[0], s[1], p[0], p[1], out)
    _max_pool_backward_par(*args, numba.get_num_threads()) if _parallel(out.size) else _max_pool_backward(*args, 0, x_shape[0])
    return out


def relu_backward(dout, out_fwd):
    """``dout * (out_fwd > 0)`` in one pass (NumPy's where/astype take two or three)."""
    shape = dout.shape
    d = np.ascontiguousarray(dout).reshape(-1)
    o = np.ascontiguousarray(out_fwd).reshape(-1)
    result = _empty(d.shape, d.dtype)
    _relu_backward_par(d, o, result, numba.get_num_threads()) if _parallel(d.size) else _relu_backward(d, o, result, 0, d.size)
    return result.reshape(shape)


def tanh_backward(dout, out_fwd):
    """``dout * (1 - out_fwd**2)`` in one pass, the same float operations as NumPy's expression."""
    if dout.flags.f_contiguous and out_fwd.flags.f_contiguous and not dout.flags.c_contiguous:
        return tanh_backward(dout.T, out_fwd.T).T  # both transposes are C-ordered: the flat pass
    if dout.ndim == 2 and dout.flags.c_contiguous and not out_fwd.flags.c_contiguous:
        result = _empty(dout.shape, dout.dtype)
        _tanh_backward_2d(dout, out_fwd, result)
        return result
    d, o = np.ascontiguousarray(dout), np.ascontiguousarray(out_fwd)
    result = _empty(d.shape, d.dtype)
    _tanh_backward_flat(d.reshape(-1), o.reshape(-1), result.reshape(-1))
    return result


def normal_cdf(x):
    """The standard normal CDF (SciPy's ``ndtr``) of a NumPy array, keeping its dtype."""
    from scipy.special import ndtr

    return ndtr(x)


@numba.jit(**_SERIAL)
def _softmax_xent_kernel(logits, labels, grad_scale, losses, grad):
    """Per-row stable log-sum-exp cross-entropy and its gradient in one pass.

    Returns the number of labels outside [0, C) (the caller raises before use).
    """
    n, c = logits.shape
    bad = 0
    for i in range(n):
        y = labels[i]
        if y < 0 or y >= c:
            bad += 1
            continue
        m = logits[i, 0]
        for j in range(1, c):
            if logits[i, j] > m:
                m = logits[i, j]
        total = 0.0
        for j in range(c):
            e = np.exp(logits[i, j] - m)
            grad[i, j] = e
            total += e
        losses[i] = np.log(total) - (logits[i, y] - m)
        inv = grad_scale / total
        for j in range(c):
            grad[i, j] = grad[i, j] * inv
        grad[i, y] -= grad_scale
    return bad


def softmax_xent(logits, labels, grad_scale):
    """Numba cross-entropy for logits (B, C) and labels (B,); see :mod:`egdnp.nn.losses`.

    Returns (per-example losses (B,) in the logits' dtype, gradient (B, C) scaled
    by ``grad_scale``, number of out-of-range labels).
    """
    logits = np.ascontiguousarray(logits)
    labels = np.ascontiguousarray(labels)
    losses = np.empty(logits.shape[0], dtype=logits.dtype)
    grad = np.empty_like(logits)
    bad = _softmax_xent_kernel(logits, labels, logits.dtype.type(grad_scale), losses, grad)
    return losses, grad, int(bad)
