"""NumPy/Numba fast paths of EGGROLL (CPU only).

Called only from :mod:`egdnp.es`: through :func:`egdnp.es.layers.perturbed_matmul`
and :func:`egdnp.es.gradient.lowrank_weighted_sum`, whose array-API code is
the oracle in the tests, and for the population chunks of
:mod:`egdnp.es.layers` (:func:`map_chunks`, :func:`tanh_in_place`).  The
perturbed product costs little on top of the clean
one: a per-member input runs ONE BLAS GEMM over all ``N * rows`` rows straight
into the output, then one pass (:func:`_postadd_kernel`, memory bound) adds
the low-rank term ``s (x B) A^T`` -- with ``x B`` formed row by row while the
row is in L1 -- the bias and the bias noise; a shared input's ``x W^T`` and
``x B`` are computed once and each member's output written once
(:func:`_fill_kernel`); narrow outputs (classifier heads) use one fused
kernel (:func:`_skinny_kernel`).

Parallelism: Numba kernels release the GIL and are split over members on
the plain Python threads of :mod:`egdnp._threads` (:func:`_run_split`), never
Numba parallel regions: BLAS threads spin after a GEMM and a parallel region
right after it would fight them for the two cores, while idle pool threads block.
"""

from __future__ import annotations

import numba
import numpy as np  # this module is the NumPy backend's fast path

from .. import _threads

__all__ = ["perturbed_matmul", "map_chunks", "tanh_in_place", "concat_factors", "lowrank_weighted_sum",
           "SKINNY_MAX_OUT", "GRAD_BLOCK_PAIRS", "GRAD_BLOCK_MIN_PAIRS"]


@numba.njit(cache=True, nogil=True)
def _fill_kernel_generic(out, xb, xrow, a_t, pair, sign, base, has_base, bias, has_bias, beps, has_beps, relu=False):
    """Any rank: out[i, j, :] = base[j] + bias + s_i beps[p_i] + s_i sum_q xb[xrow_i, j, q] a_t[p_i, q, :].

    ``relu``: then ``max(out, 0)`` (NaN kept, as ``numpy.maximum`` does), fused into the same pass.
    """
    n_members, rows, m = out.shape
    r = a_t.shape[1]
    for i in range(n_members):
        p = pair[i]
        s = sign[i]
        xi = xrow[i]
        for j in range(rows):
            o = out[i, j]
            if has_base:
                for c in range(m):
                    o[c] = base[j, c]
            else:
                for c in range(m):
                    o[c] = 0.0
            if has_bias:
                for c in range(m):
                    o[c] += bias[c]
            if has_beps:
                for c in range(m):
                    o[c] += s * beps[p, c]
            for q in range(r):
                coef = s * xb[xi, j, q]
                aq = a_t[p, q]
                for c in range(m):
                    o[c] += coef * aq[c]
            if relu:
                for c in range(m):
                    if o[c] < 0:
                        o[c] = 0


@numba.njit(cache=True, nogil=True)
def _fill_kernel(out, xb, xrow, a_t, pair, sign, base, has_base, bias, has_bias, beps, has_beps, relu=False):
    """out[i, j, :] = base[j] + bias + s_i beps[p_i] + s_i sum_q xb[xrow_i, j, q] a_t[p_i, q, :].

    Ranks 0..4 only (the usual EGGROLL settings; :func:`_fill` sends larger
    ranks to :func:`_fill_kernel_generic`, so a run compiles just the kernel
    it uses): every output entry is written once from one vectorised loop;
    the additions run in the same order and precision as in
    :func:`_fill_kernel_generic` (no fastmath), so the result is bitwise the
    same (tested) at ~1.6x the speed.  ``relu`` applies ``max(v, 0)`` to each
    entry before its single store (NaN kept, ``-0.0`` kept, exactly as
    ``numpy.maximum(v, 0)``): the activation costs no pass of its own.
    """
    n_members, rows, m = out.shape
    r = a_t.shape[1]
    sb = np.empty(m, dtype=out.dtype)
    zero = np.zeros(1, dtype=out.dtype)[0]
    zrow = np.zeros(m, dtype=out.dtype)
    for i in range(n_members):
        p = pair[i]
        s = sign[i]
        xi = xrow[i]
        if has_beps:
            for c in range(m):
                sb[c] = s * beps[p, c]
        a0 = a_t[p, 0] if r > 0 else zrow
        a1 = a_t[p, 1] if r > 1 else zrow
        a2 = a_t[p, 2] if r > 2 else zrow
        a3 = a_t[p, 3] if r > 3 else zrow
        for j in range(rows):
            o = out[i, j]
            t0 = s * xb[xi, j, 0] if r > 0 else zero
            t1 = s * xb[xi, j, 1] if r > 1 else zero
            t2 = s * xb[xi, j, 2] if r > 2 else zero
            t3 = s * xb[xi, j, 3] if r > 3 else zero
            bj = base[j] if has_base else zrow
            if r == 4:
                for c in range(m):
                    v = bj[c]
                    if has_bias:
                        v += bias[c]
                    if has_beps:
                        v += sb[c]
                    v += t0 * a0[c]
                    v += t1 * a1[c]
                    v += t2 * a2[c]
                    v += t3 * a3[c]
                    o[c] = zero if relu and v < zero else v
            elif r == 3:
                for c in range(m):
                    v = bj[c]
                    if has_bias:
                        v += bias[c]
                    if has_beps:
                        v += sb[c]
                    v += t0 * a0[c]
                    v += t1 * a1[c]
                    v += t2 * a2[c]
                    o[c] = zero if relu and v < zero else v
            elif r == 2:
                for c in range(m):
                    v = bj[c]
                    if has_bias:
                        v += bias[c]
                    if has_beps:
                        v += sb[c]
                    v += t0 * a0[c]
                    v += t1 * a1[c]
                    o[c] = zero if relu and v < zero else v
            elif r == 1:
                for c in range(m):
                    v = bj[c]
                    if has_bias:
                        v += bias[c]
                    if has_beps:
                        v += sb[c]
                    v += t0 * a0[c]
                    o[c] = zero if relu and v < zero else v
            else:
                for c in range(m):
                    v = bj[c]
                    if has_bias:
                        v += bias[c]
                    if has_beps:
                        v += sb[c]
                    o[c] = zero if relu and v < zero else v


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _postadd_kernel(out, x, b_t, a_t, pair, sign, bias, has_bias, beps, has_beps):
    """out[i, j, :] += s_i sum_q (x_ij . b_t[p_i, q]) a_t[p_i, q, :] + bias + s_i beps[p_i].

    Everything of the perturbed product but ``x W^T`` (already in ``out``), in
    ONE pass over x and the output: the rank-r products ``x_ij . B`` are formed
    while the row sits in L1, and each output entry is read and written once --
    no (N, rows, r) temporary, no second sweep.  Additions in the order of the
    array-API oracle: base, low-rank term, bias, bias noise.
    """
    n_members, rows, m = out.shape
    n = x.shape[2]
    r = b_t.shape[1]
    t = np.empty(max(r, 1), dtype=out.dtype)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for i in range(n_members):
        p = pair[i]
        s = sign[i]
        a_p = a_t[p]
        for j in range(rows):
            xr = x[i, j]
            for q in range(r):
                bq = b_t[p, q]
                acc = zero
                for k in range(n):
                    acc += xr[k] * bq[k]
                t[q] = s * acc
            o = out[i, j]
            if r == 1:
                t0 = t[0]
                a0 = a_p[0]
                for c in range(m):
                    v = o[c] + t0 * a0[c]
                    if has_bias:
                        v += bias[c]
                    if has_beps:
                        v += s * beps[p, c]
                    o[c] = v
            else:
                for c in range(m):
                    v = o[c]
                    for q in range(r):
                        v += t[q] * a_p[q, c]
                    if has_bias:
                        v += bias[c]
                    if has_beps:
                        v += s * beps[p, c]
                    o[c] = v


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _skinny_kernel(out, x, w, b_t, a_t, pair, sign, bias, has_bias, beps, has_beps):
    """Fused narrow layer: out[i, j, c] = x_ij . w_c + bias_c + s_i beps[p_i, c] + s_i sum_q (x_ij . b_t[p_i, q]) a_t[p_i, q, c].

    For outputs of a few columns (a classifier head) BLAS GEMMs run far below
    peak; here every row of x is read once, from L1, for all m + r dot products.
    ``fastmath`` is limited to reassociation/contraction: it lets LLVM vectorise
    the dot-product reductions and keeps nan/inf semantics.
    """
    n_members, rows, n = x.shape
    m = w.shape[0]
    r = b_t.shape[1]
    t = np.empty(max(r, 1), dtype=out.dtype)
    zero = np.zeros(1, dtype=out.dtype)[0]
    for i in range(n_members):
        p = pair[i]
        s = sign[i]
        for j in range(rows):
            xr = x[i, j]
            for q in range(r):
                bq = b_t[p, q]
                acc = zero
                for k in range(n):
                    acc += xr[k] * bq[k]
                t[q] = s * acc
            o = out[i, j]
            for c in range(m):
                wc = w[c]
                acc = zero
                for k in range(n):
                    acc += xr[k] * wc[k]
                for q in range(r):
                    acc += t[q] * a_t[p, q, c]
                if has_bias:
                    acc += bias[c]
                if has_beps:
                    acc += s * beps[p, c]
                o[c] = acc


# ----------------------------------------------------------------------------
# splitting the members over threads
# ----------------------------------------------------------------------------
# The kernels release the GIL (nogil=True), so the shared pool's plain Python
# threads (egdnp._threads) run them on disjoint member ranges.  Every output
# element is computed the same way whatever the split: results are bitwise
# independent of the thread count.
def map_chunks(fn, items: list) -> list:
    """``[fn(item) for item in items]`` on the calling thread plus pool threads.

    Items are handed out in contiguous blocks, one block per thread, and results
    come back in order; inside ``fn`` the kernels do not split again
    (:func:`egdnp._threads.run_split` runs nested splits inline).  Used for
    population chunks, whose heavy work (Numba kernels, NumPy ufuncs) releases the GIL.
    """
    k = min(_threads.cpu_threads(), len(items))
    blocks = _threads.run_split(lambda lo, hi: [fn(item) for item in items[lo:hi]], _threads.even_ranges(len(items), k))
    return [result for block in blocks for result in block]


def _run_split(fn, n_members: int, work: int) -> None:
    """Call ``fn(lo, hi)`` on disjoint member ranges covering ``[0, n_members)``.

    One range below :data:`egdnp._threads.ES_SPLIT_FROM_WORK` multiply-adds
    (``work``), else one per thread.
    """
    k = max(1, min(_threads.cpu_threads(), n_members)) if work >= _threads.ES_SPLIT_FROM_WORK else 1
    _threads.run_split(fn, _threads.even_ranges(n_members, k))


# Outputs at most this wide use the fused kernel instead of BLAS (measured on
# the 2-core machine: ~2x faster than sgemm + batched x B for a 10-class head).
SKINNY_MAX_OUT = 32


def perturbed_matmul(x, w2, bias, a, b, beps, pair, sign, cache=None, cache_key=None, activation=None):
    """NumPy version of :func:`egdnp.es.layers.perturbed_matmul` (same arguments).

    Parameters
    ----------
    x : ndarray, shape (N, rows, n) per member, or (rows, n) shared
    w2 : ndarray, shape (m, n)
    bias : ndarray, shape (m,), or None
    a : ndarray, shape (P, m, r), or None (weight not perturbed)
    b : ndarray, shape (P, n, r), or None
    beps : ndarray, shape (P, m), or None (bias not perturbed)
    pair : ndarray of int64, shape (N,)
    sign : ndarray, shape (N,), the dtype of x
    cache : dict, optional
        For a shared x: ``x W^T`` and ``x B`` of ALL pairs are computed once
        (one large GEMM) and kept under ``cache_key`` for the other population
        chunks, so the chunk loop runs no small BLAS calls (whose spinning
        threads would compete with the kernels' threads on a 2-core machine).
    activation : {None, "relu"}
        Applied to the result; for a shared x fused into the fill kernel's
        single store (no pass of its own over the (N, rows, m) output),
        otherwise ``numpy.maximum(out, 0, out=out)`` in place.

    Returns
    -------
    ndarray, shape (N, rows, m)
    """
    dtype = x.dtype
    n_members = pair.shape[0]
    m, n = w2.shape
    shared = x.ndim == 2
    rows = x.shape[0] if shared else x.shape[1]
    x_in = x
    x = np.ascontiguousarray(x)
    # Only the pairs this slice of members uses (a contiguous range for the
    # chunks of an interleaved population): a chunked population copies and
    # multiplies no factors of other chunks.
    p_lo, p_hi = int(pair.min()), int(pair.max()) + 1
    n_pairs = p_hi - p_lo
    pair = pair - p_lo
    if beps is not None:
        beps = beps[p_lo:p_hi]
    shared_base = None
    b_full = b
    if a is not None:
        a, b = a[p_lo:p_hi], b[p_lo:p_hi]
        r = a.shape[2]
        a_t = np.ascontiguousarray(np.transpose(a, (0, 2, 1)))
        if shared and cache is not None:
            held = cache.get(cache_key)
            # One entry per weight, valid only for the very same input and weight
            # objects (held here, so their ids cannot be reused meanwhile).
            if held is None or held[0] is not x_in or held[1] is not w2:
                n_all = b_full.shape[0]
                entry = (x @ w2.T, np.transpose(_x_times_factors(x, b_full).reshape(rows, n_all, r), (1, 0, 2)))
                held = (x_in, w2, entry)
                cache[cache_key] = held
            shared_base, xb = held[2]
            xrow = pair + p_lo  # rows of xb are global pair indices
        elif shared:
            b_cat = concat_factors(b)  # (n, pairs r)
            xb = np.transpose((x @ b_cat).reshape(rows, n_pairs, r), (1, 0, 2))
            xrow = pair
        else:
            xb, xrow = None, None  # the fused kernels form x B themselves
    else:
        a_t = np.zeros((1, 0, m), dtype=dtype)
        xb = np.zeros((1, 1, 0), dtype=dtype)
        xrow = np.zeros(n_members, dtype=np.int64)
    dummy_vec = np.zeros(m, dtype=dtype)
    if not shared and m <= SKINNY_MAX_OUT:
        out = np.empty((n_members, rows, m), dtype=dtype)
        b_t = np.zeros((1, 0, n), dtype=dtype) if a is None else np.ascontiguousarray(np.transpose(b, (0, 2, 1)))
        w_c = np.ascontiguousarray(w2)
        bias_arr = dummy_vec if bias is None else bias
        beps_arr = np.zeros((1, m), dtype=dtype) if beps is None else beps

        def skinny(lo, hi):
            _skinny_kernel(out[lo:hi], x[lo:hi], w_c, b_t, a_t, pair[lo:hi], sign[lo:hi],
                           bias_arr, bias is not None, beps_arr, beps is not None)

        _run_split(skinny, n_members, n_members * rows * n * (m + int(b_t.shape[1])))
        return _relu_in_place(out) if activation == "relu" else out
    out = np.empty((n_members, rows, m), dtype=dtype)
    bias_arr = dummy_vec if bias is None else bias
    beps_arr = np.zeros((1, m), dtype=dtype) if beps is None else beps
    if not shared:
        # Per-member input, wide output: ONE GEMM over all N * rows rows straight
        # into the output (NumPy's BLAS, the same thread pool as every other
        # product here: two OpenBLAS pools alternating make each wait for the
        # other's spinning workers), then one serial pass adds the low-rank term
        # (with its x B), bias and bias noise.  Serial on purpose: the pass is
        # bound by reading x (~0.3 ms for 6.4 MB on one core here); splitting it
        # over the two cores, or L2-sized blocks of pass + GEMM, measured slower.
        np.matmul(x.reshape(n_members * rows, n), w2.T, out=out.reshape(n_members * rows, m))
        b_t = np.zeros((1, 0, n), dtype=dtype) if a is None else np.ascontiguousarray(np.transpose(b, (0, 2, 1)))
        _postadd_kernel(out, x, b_t, a_t, pair, sign, bias_arr, bias is not None, beps_arr, beps is not None)
        return _relu_in_place(out) if activation == "relu" else out
    base = x @ w2.T if shared_base is None else shared_base

    kernel = _fill_kernel if a_t.shape[1] <= 4 else _fill_kernel_generic
    relu = activation == "relu"

    def fill(lo, hi):
        kernel(out[lo:hi], xb, xrow[lo:hi], a_t, pair[lo:hi], sign[lo:hi], base, True,
               bias_arr, bias is not None, beps_arr, beps is not None, relu)

    _run_split(fill, n_members, n_members * rows * m * (3 + int(a_t.shape[1])))
    return out


def _x_times_factors(x, b):
    """``x @ concat_factors(b)``, shape (rows, P r): every pair's ``x B`` at once.

    Above :data:`GRAD_BLOCK_MIN_PAIRS` pairs, in blocks of
    :data:`GRAD_BLOCK_PAIRS` pairs concatenated while in cache (all of them
    at once is ~100 MB at pop 16384, rearranged from memory); BLAS then
    partitions each block's product differently, so those entries agree
    with the one product within float rounding (tested), not bitwise.
    """
    n_pairs, _, r = b.shape
    if n_pairs <= max(GRAD_BLOCK_MIN_PAIRS, GRAD_BLOCK_PAIRS):
        return x @ concat_factors(b)  # (n, P r): all pairs' B side by side
    out = np.empty((x.shape[0], n_pairs * r), dtype=x.dtype)
    for lo in range(0, n_pairs, GRAD_BLOCK_PAIRS):
        hi = min(n_pairs, lo + GRAD_BLOCK_PAIRS)
        np.matmul(x, concat_factors(b[lo:hi]), out=out[:, lo * r : hi * r])
    return out


def tanh_in_place(h):
    """``numpy.tanh(h, out=h)``: bitwise ``nn.functional.tanh(h)`` without a second array (``h`` must be ours)."""
    return np.tanh(h, out=h)


def _relu_in_place(out):
    """``numpy.maximum(out, 0)`` into ``out`` itself (a fresh array of ours): no second (N, rows, m) array."""
    return np.maximum(out, np.zeros((), dtype=out.dtype), out=out)


# ----------------------------------------------------------------------------
# concatenated factors for the ES gradient
# ----------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _concat_kernel(f, w, has_w, out):
    """out[k, p*r + q] = f[p, k, q] (* w[p]).

    Rows of ``out`` in blocks of 16: each pair's block of f is read
    contiguously and only 16 output rows are written at a time (few write
    streams); ~2x faster than pair-major order at (2048, 784, 4).
    """
    n_pairs, n, r = f.shape
    row_block = 16
    for k0 in range(0, n, row_block):
        k1 = min(n, k0 + row_block)
        for p in range(n_pairs):
            fp = f[p]
            wp = w[p] if has_w else w[0]
            for k in range(k0, k1):
                row = out[k]
                if has_w:
                    for q in range(r):
                        row[p * r + q] = fp[k, q] * wp
                else:
                    for q in range(r):
                        row[p * r + q] = fp[k, q]


def concat_factors(f, w=None):
    """``reshape(transpose(f * w[:, None, None], (1, 0, 2)), (n, P r))`` in one pass.

    f : ndarray (P, n, r); w : ndarray (P,) or None.  Bitwise the same values as
    the NumPy expression (the same single multiply per entry), without its
    scaled temporary and its slow small-stride transpose copy.
    Returns ndarray (n, P r), C-contiguous.
    """
    n_pairs, n, r = f.shape
    out = np.empty((n, n_pairs * r), dtype=f.dtype)
    _concat_kernel(np.ascontiguousarray(f), np.zeros(1, f.dtype) if w is None else np.ascontiguousarray(w, dtype=f.dtype),
                   w is not None, out)
    return out


# Pairs per block of the blocked ES-gradient product: the block's concatenated
# factors (pairs r (m + n) floats: 8.5 MB for 784-256 at rank 4) stay in the
# last-level cache between the concatenation and the GEMM.
GRAD_BLOCK_PAIRS = 512
# Up to this many pairs (pop 4096 with antithetic pairs) the single GEMM is as
# fast (36.9 vs 40.9 ms at 2048 pairs, one BLAS thread) and stays bitwise the oracle.
GRAD_BLOCK_MIN_PAIRS = 2048


def lowrank_weighted_sum(weights, A, B):
    """``sum_k weights[k] A[k] @ B[k].T``, shape (m, n): NumPy fast path of :func:`egdnp.es.gradient.lowrank_weighted_sum`.

    Up to :data:`GRAD_BLOCK_MIN_PAIRS` pairs: ONE GEMM of the concatenated
    factors (bitwise the array-API oracle).  More pairs: the same product
    accumulated over blocks of :data:`GRAD_BLOCK_PAIRS` pairs, each block concatenated just before its GEMM while
    it is in cache -- rearranging all factors first (~100 MB at pop 16384)
    ran from memory and made ``tell`` grow 12x for 4x the members.  The sum
    over blocks adds in a different order than one GEMM: within float
    rounding of the oracle (tested), not bitwise.
    """
    n_pairs = A.shape[0]
    if n_pairs <= max(GRAD_BLOCK_MIN_PAIRS, GRAD_BLOCK_PAIRS):
        return concat_factors(A) @ concat_factors(B, weights).T
    out = None
    for lo in range(0, n_pairs, GRAD_BLOCK_PAIRS):
        hi = min(n_pairs, lo + GRAD_BLOCK_PAIRS)
        part = concat_factors(A[lo:hi]) @ concat_factors(B[lo:hi], weights[lo:hi]).T
        if out is None:
            out = part
        else:
            out += part
    return out
