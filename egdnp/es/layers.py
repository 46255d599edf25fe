"""Perturbed layers that never form ``W + A_i B_i^T``.

Member ``i`` of the population evaluates the layer at ``W_i = W + A_i B_i^T``
(``A_i = s_i A_{p_i}``, ``B_i = B_{p_i}``, see :mod:`egdnp.es.perturbations`)
and ``b_i = b + s_i eps_{p_i}``.  Because

    x_i W_i^T + b_i = x_i W^T + b + s_i eps_{p_i} + (x_i B_i) A_i^T

the base product ``x W^T`` runs as ONE matrix product over all ``N * batch``
rows (or once for an input shared by all members), and the low-rank term costs
``O(N batch r (m + n))`` -- time and memory grow with ``r``, never with ``m n``
per member.  A conv layer is the same product on im2col patches:
``patches W2^T + (patches B_i) A_i^T`` with ``W2`` the (C_out, C_in*kh*kw)
flattening of the filter bank.

Shapes
------
An input is either *per member* ``(N, batch, ...)`` or *shared* ``(batch,
...)`` (the data batch, identical for every member).  A perturbed layer always
returns per-member output ``(N, batch, ...)``; a layer with nothing perturbed
keeps a shared input shared, so a model's input is broadcast only at its first
perturbed layer.

``members=(start, stop)`` evaluates a slice of the population (population
chunking: memory ``O(chunk * batch * width)``).

Functions
---------
perturbed_matmul(x, w2, bias, perts, weight_key, bias_key, members)
perturbed_linear(x, weight, bias, perts, *, weight_key, bias_key, members)
perturbed_conv2d(x, weight, bias, perts, *, weight_key, bias_key, stride, padding, dilation, members)
perturbed_batch_norm(x, gamma, beta, running_mean, running_var, perts, *, ...)   (eval statistics)
perturbed_layer_norm(x, gamma, beta, perts, *, gamma_key, beta_key, eps, members)
perturbed_model_forward(model, params, x, perts, *, members, state, impl, cache, prefix, layer_fn)
population_fitness(model, params, x, perts, fitness_fn, *, chunk_size, state, impl, threaded)
register_perturbed_forward(layer_cls, fn, *, shared_ndim, replace)
dense_perturbed_params(params, perts, member)   (explicit W + A B^T, for tests)

Which layers are perturbable
----------------------------
:data:`PERTURBED_FORWARDS` maps a layer class to its perturbed forward;
:func:`perturbed_model_forward` looks every layer up there (a subclass uses
its nearest registered base).  Make your own :class:`egdnp.nn.Layer`
perturbable with :func:`register_perturbed_forward`, without editing egdnp.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple

from .. import _backend
from ..nn import functional as F
from ..nn import layers as L
from .perturbations import FullNoise, LowRankNoise, Perturbations, SparseNoise, StackedLowRankNoise, _one_hot, dense_noise

__all__ = [
    "PERTURBED_FORWARDS",
    "PerturbedForward",
    "register_perturbed_forward",
    "member_range",
    "perturbed_matmul",
    "perturbed_linear",
    "perturbed_conv2d",
    "perturbed_batch_norm",
    "perturbed_layer_norm",
    "perturbed_model_forward",
    "dense_perturbed_params",
    "population_fitness",
]


def _as_list(seq) -> list:
    """Host-side member table (a NumPy array, or a tuple of a hand-built Perturbations) as Python numbers."""
    return seq.tolist() if hasattr(seq, "tolist") else list(seq)



def member_range(perts: Perturbations, members) -> tuple[int, int]:
    """Validate ``members`` (None, or ``(start, stop)``) against the population.

    Parameters
    ----------
    perts : Perturbations
    members : None or (int, int)

    Returns
    -------
    (int, int)
        ``(start, stop)``; ``(0, pop_size)`` for None.
    """
    n = perts.pop_size
    if members is None:
        return 0, n
    try:
        start, stop = (int(v) for v in members)
    except (TypeError, ValueError):
        raise TypeError(f"members={members!r} must be None or a (start, stop) pair of ints") from None
    if not 0 <= start < stop <= n:
        raise ValueError(f"members={members!r} must satisfy 0 <= start < stop <= pop_size={n}")
    return start, stop


def _noise(perts, key, kind):
    if perts is None or key is None:
        return None
    item = perts.noise.get(key)
    if item is not None and not isinstance(item, kind):
        raise TypeError(f"perts.noise[{key!r}] is a {type(item).__name__}; this layer needs {kind.__name__} for it")
    return item


def perturbed_matmul(x, w2, bias, perts: Perturbations | None, weight_key=None, bias_key=None, members=None, *,
                     impl: str = "auto", cache: dict | None = None, activation: str | None = None):
    """``y_i = x_i W2^T + b + s_i eps_{p_i} + s_i (x_i B_{p_i}) A_{p_i}^T`` for every member.

    Parameters
    ----------
    x : array, shape (N, rows, n) per member, or (rows, n) shared
        ``N = stop - start`` of ``members``.
    w2 : array, shape (m, n)
        The weight as a matrix.
    bias : array, shape (m,), or None
    perts : Perturbations or None
    weight_key, bias_key : str or None
        Keys of ``perts.noise``; a key that is absent (or None) is not perturbed.
    members : (start, stop), optional
    impl : {"auto", "numba", "array_api"}
        ``"auto"`` uses the NumPy/BLAS fast path for NumPy arrays.
    cache : dict, optional
        Scratch space shared by the population chunks of one evaluation
        (:func:`population_fitness` passes one): for a shared x the products
        with ``W2`` and with every pair's ``B`` are computed once.  The result
        does not depend on it.
    activation : {None, "relu"}
        Applied to the result (``egdnp.nn.functional.relu``, bitwise); the
        NumPy fast path fuses it into the pass that writes the output.

    Returns
    -------
    array, shape (N, rows, m); or (rows, m) when x is shared and nothing is perturbed
    """
    if activation not in (None, "relu"):
        raise ValueError(f"activation={activation!r} must be None or 'relu'")
    xp = _backend.array_namespace(x, w2)
    use = _backend.resolve_impl(xp, impl)  # "numba": the NumPy/BLAS fast path of es._cpu
    if activation is not None and use != "numba":
        return F.relu(perturbed_matmul(x, w2, bias, perts, weight_key, bias_key, members, impl=impl, cache=cache))
    other = None if (perts is None or weight_key is None) else perts.noise.get(weight_key)
    if isinstance(other, StackedLowRankNoise):
        raise TypeError(f"perts.noise[{weight_key!r}] is stacked (shape {other.shape}); run one slice at a time with "
                        f"es.slice_perturbations(perts, {{{weight_key!r}: l}}) and the weight's slice l")
    if isinstance(other, (FullNoise, SparseNoise)):
        # Full-rank (OpenAI-ES) or sparse weight noise: the unperturbed-weight product plus s_i x_i E_{p_i}^T.
        base = perturbed_matmul(x, w2, bias, perts, None, bias_key, members, impl=impl, cache=cache)
        out = base + _weight_noise_term(xp, x, other, perts, members, int(w2.shape[0]), int(w2.shape[1]))
        return F.relu(out) if activation == "relu" else out
    wn = _noise(perts, weight_key, LowRankNoise)
    bn = _noise(perts, bias_key, FullNoise)
    m, n = int(w2.shape[0]), int(w2.shape[1])
    if len(x.shape) not in (2, 3) or int(x.shape[-1]) != n:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, rows, {n}) or shared (rows, {n}) for weight matrix ({m}, {n})")
    if wn is not None and tuple(wn.A.shape[1:2]) != (m,):
        raise ValueError(f"perts.noise[{weight_key!r}].A has shape {tuple(wn.A.shape)} but the weight matrix is ({m}, {n})")
    if wn is not None and int(wn.B.shape[1]) != n:
        raise ValueError(f"perts.noise[{weight_key!r}].B has shape {tuple(wn.B.shape)} but the weight matrix is ({m}, {n})")
    shared = len(x.shape) == 2
    if wn is None and bn is None:
        out = xp.matmul(x, w2.T) if shared else xp.reshape(
            xp.matmul(xp.reshape(x, (-1, n)), w2.T), (int(x.shape[0]), int(x.shape[1]), m)
        )
        out = out if bias is None else out + bias
        return out if activation is None else F.relu(out)
    start, stop = member_range(perts, members)
    n_members = stop - start
    if not shared and int(x.shape[0]) != n_members:
        raise ValueError(f"x has {int(x.shape[0])} members (axis 0) but members={start, stop} selects {n_members}")
    pair_host = perts.pair[start:stop]
    sign_host = perts.sign[start:stop]
    beps = None if bn is None else xp.reshape(bn.eps, (int(bn.eps.shape[0]), m))
    if use == "numba":
        import numpy as np  # host-side index tables for the NumPy fast path

        from . import _cpu  # lazily: it imports Numba

        return _cpu.perturbed_matmul(
            x, w2, bias, None if wn is None else wn.A, None if wn is None else wn.B, beps,
            np.asarray(pair_host, dtype=np.int64), np.asarray(sign_host, dtype=x.dtype),
            cache=cache, cache_key=("shared-products", weight_key), activation=activation,
        )
    device = _backend.device_of(x)
    pair_host, sign_host = _as_list(pair_host), _as_list(sign_host)
    pair_idx = xp.asarray(pair_host, dtype=xp.int64, device=device)
    sign = xp.reshape(xp.asarray(sign_host, dtype=x.dtype, device=device), (n_members, 1, 1))
    if shared:
        rows = int(x.shape[0])
        base = xp.matmul(x, w2.T)  # (rows, m), once for every member
        out = xp.broadcast_to(base, (n_members, rows, m))
    else:
        rows = int(x.shape[1])
        out = xp.reshape(xp.matmul(xp.reshape(x, (n_members * rows, n)), w2.T), (n_members, rows, m))
    if wn is not None:
        r = int(wn.A.shape[2])
        if shared:
            # Only the pairs this slice of members uses: a chunked population does no redundant work.
            p_lo, p_hi = min(pair_host), max(pair_host) + 1
            n_pairs = p_hi - p_lo
            b_cat = xp.reshape(xp.permute_dims(wn.B[p_lo:p_hi, ...], (1, 0, 2)), (n, n_pairs * r))
            xb_pairs = xp.permute_dims(xp.reshape(xp.matmul(x, b_cat), (rows, n_pairs, r)), (1, 0, 2))
            local_idx = xp.asarray([p - p_lo for p in pair_host], dtype=xp.int64, device=device)
            xb = xp.take(xb_pairs, local_idx, axis=0)
        else:
            xb = xp.matmul(x, xp.take(wn.B, pair_idx, axis=0))  # (N, rows, r)
        a_members = xp.take(wn.A, pair_idx, axis=0)  # (N, m, r)
        out = out + xp.matmul(xb * sign, xp.permute_dims(a_members, (0, 2, 1)))
    if bias is not None:
        out = out + bias
    if beps is not None:
        out = out + xp.take(beps, pair_idx, axis=0)[:, None, :] * sign
    return out


def _weight_noise_term(xp, x, item, perts, members, m, n):
    """``s_i x_i E_{p_i}^T`` of full-rank or sparse weight noise, shape (N, rows, m).

    Full rank: one batched product with the members' (m, n) noise matrices
    (memory ``O(N m n)``, what full-rank ES costs).  Sparse: ``x_i`` times the
    one-hot columns, scaled by the values, times the one-hot rows (memory
    ``O(N k (m + n))``; a gather/scatter-add written as array-API products).
    """
    start, stop = member_range(perts, members)
    n_members = stop - start
    if len(x.shape) == 3 and int(x.shape[0]) != n_members:
        raise ValueError(f"x has {int(x.shape[0])} members (axis 0) but members={start, stop} selects {n_members}")
    device = _backend.device_of(x)
    pair_idx = xp.asarray(list(perts.pair[start:stop]), dtype=xp.int64, device=device)
    sign = xp.reshape(xp.asarray(list(perts.sign[start:stop]), dtype=x.dtype, device=device), (n_members, 1, 1))
    if isinstance(item, FullNoise):
        eps = xp.take(xp.reshape(item.eps, (int(item.eps.shape[0]), m, n)), pair_idx, axis=0)  # (N, m, n)
        return xp.matmul(x, xp.permute_dims(eps, (0, 2, 1))) * sign
    k = int(item.values.shape[1])
    cols = _one_hot(xp, xp.take(item.cols, pair_idx, axis=0), n, x.dtype)  # (N, k, n)
    rows = _one_hot(xp, xp.take(item.rows, pair_idx, axis=0), m, x.dtype)  # (N, k, m)
    vals = xp.reshape(xp.take(item.values, pair_idx, axis=0), (n_members, 1, k)) * sign
    return xp.matmul(xp.matmul(x, xp.permute_dims(cols, (0, 2, 1))) * vals, rows)


def perturbed_linear(x, weight, bias=None, perts: Perturbations | None = None, *, weight_key=None, bias_key=None,
                     members=None, impl: str = "auto", cache: dict | None = None):
    """Perturbed fully connected layer, ``x_i W_i^T + b_i`` without forming ``W_i``.

    Parameters
    ----------
    x : array, shape (N, batch, n_in) or shared (batch, n_in)
    weight : array, shape (n_out, n_in)
    bias : array, shape (n_out,), or None
    perts : Perturbations or None
    weight_key, bias_key : str, optional
        Keys in ``perts.noise`` (``"fc1.weight"``, ``"fc1.bias"``).
    members : (start, stop), optional

    Returns
    -------
    array, shape (N, batch, n_out) (or (batch, n_out) when x is shared and nothing is perturbed)
    """
    return perturbed_matmul(x, weight, bias, perts, weight_key, bias_key, members, impl=impl, cache=cache)


def perturbed_conv2d(x, weight, bias=None, perts: Perturbations | None = None, *, weight_key=None, bias_key=None,
                     stride=1, padding=0, dilation=1, members=None, impl: str = "auto", cache: dict | None = None):
    """Perturbed 2-D cross-correlation on im2col patches.

    ``y_i = patches_i W2^T + b_i + s_i (patches_i B_{p_i}) A_{p_i}^T`` with
    ``W2 = weight.reshape(C_out, C_in*kh*kw)`` (row-major over (C_in, kh, kw)).

    Parameters
    ----------
    x : array, shape (N, batch, C_in, H, W) or shared (batch, C_in, H, W)
    weight : array, shape (C_out, C_in, kh, kw)
    bias : array, shape (C_out,), or None
    perts, weight_key, bias_key, members, impl :
        As for :func:`perturbed_linear`.
    stride, padding, dilation : int or (int, int)

    Returns
    -------
    array, shape (N, batch, C_out, H', W') (or (batch, C_out, H', W') when nothing is perturbed and x is shared)
    """
    xp = _backend.array_namespace(x, weight)
    if len(weight.shape) != 4:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (C_out, C_in, kh, kw)")
    c_out, c_in, kh, kw = (int(s) for s in weight.shape)
    if len(x.shape) not in (4, 5) or int(x.shape[-3]) != c_in:
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, batch, {c_in}, H, W) or shared (batch, {c_in}, H, W)")
    lead = tuple(int(s) for s in x.shape[:-3])
    images = 1
    for s in lead:
        images *= s
    # A shared input is unfolded once for all population chunks: one cache entry
    # per layer, valid for the very same input and weight objects (held, so ids stay unique).
    patch_key = ("im2col", weight_key)
    held = cache.get(patch_key) if (cache is not None and len(lead) == 1) else None
    if held is not None and held[0] is x and held[1] is weight:
        rows_x, w2, (oh, ow) = held[2]
    else:
        patches, (oh, ow) = F.im2col(xp.reshape(x, (images,) + tuple(int(s) for s in x.shape[-3:])), kh, kw,
                                     stride=stride, padding=padding, dilation=dilation)
        rows_x, w2 = None, xp.reshape(weight, (c_out, c_in * kh * kw))
        if cache is not None and len(lead) == 1:
            rows_x = xp.reshape(patches, (lead[-1] * oh * ow, c_in * kh * kw))
            cache[patch_key] = (x, weight, (rows_x, w2, (oh, ow)))
    k = c_in * kh * kw
    n_pix = oh * ow
    if rows_x is None:
        rows_shape = (lead[-1] * n_pix, k) if len(lead) == 1 else (lead[0], lead[1] * n_pix, k)
        rows_x = xp.reshape(patches, rows_shape)
    y = perturbed_matmul(rows_x, w2, bias, perts, weight_key, bias_key, members, impl=impl, cache=cache)
    out_lead = tuple(int(s) for s in y.shape[:-2]) + (lead[-1],)
    y = xp.reshape(y, out_lead + (n_pix, c_out))
    nd = len(y.shape)
    y = xp.permute_dims(y, tuple(range(nd - 2)) + (nd - 1, nd - 2))
    return xp.reshape(y, out_lead + (c_out, oh, ow))


def perturbed_batch_norm(x, gamma, beta, running_mean, running_var, perts: Perturbations | None = None, *,
                         gamma_key=None, beta_key=None, feature_axis: int = -1, eps: float = 1e-5, members=None):
    """Batch norm with running (eval) statistics and perturbed scale/shift.

    ``y_i = (x_i - running_mean) / sqrt(running_var + eps) * (gamma + s_i e^g_{p_i}) + (beta + s_i e^b_{p_i})``.
    ES evaluates members with frozen statistics, so the running buffers are
    neither used from the batch nor updated.

    Parameters
    ----------
    x : array, shape (N, batch, F) / (N, batch, C, H, W), or shared without N
    gamma, beta, running_mean, running_var : array, shape (F,)
    feature_axis : int
        -1 for BatchNorm1d, -3 for BatchNorm2d.

    Returns
    -------
    array, shape (N, ...) when anything is perturbed, else shape of x
    """
    xp = _backend.array_namespace(x, gamma)
    nd = len(x.shape)
    fa = feature_axis % nd
    features = int(x.shape[fa])
    bshape = tuple(features if a == fa else 1 for a in range(nd))
    xhat = (x - xp.reshape(running_mean, bshape)) / xp.sqrt(xp.reshape(running_var, bshape) + float(eps))
    gn = _noise(perts, gamma_key, FullNoise)
    bn = _noise(perts, beta_key, FullNoise)
    if gn is None and bn is None:
        return xhat * xp.reshape(gamma, bshape) + xp.reshape(beta, bshape)
    start, stop = member_range(perts, members)
    n_members = stop - start
    shared = nd == (2 if feature_axis == -1 else 4)
    if shared:
        xhat = xp.broadcast_to(xhat[None, ...], (n_members,) + tuple(int(s) for s in x.shape))
        nd += 1
        fa += 1
    elif int(x.shape[0]) != n_members:
        raise ValueError(f"x has {int(x.shape[0])} members (axis 0) but members={start, stop} selects {n_members}")
    device = _backend.device_of(x)
    pair_idx = xp.asarray(_as_list(perts.pair[start:stop]), dtype=xp.int64, device=device)
    mshape = (n_members,) + tuple(features if a == fa else 1 for a in range(1, nd))
    sign = xp.reshape(xp.asarray(_as_list(perts.sign[start:stop]), dtype=x.dtype, device=device), (n_members,) + (1,) * (nd - 1))

    def member_vec(base, noise):
        v = xp.reshape(base, (1,) + mshape[1:])
        if noise is None:
            return v
        return v + xp.reshape(xp.take(noise.eps, pair_idx, axis=0), mshape) * sign

    return xhat * member_vec(gamma, gn) + member_vec(beta, bn)


def _member_vectors(xp, perts, members, base, noise, n_lead, x_dtype, device):
    """``base + s_i eps_{p_i}`` for the members, shaped (N, 1, ..., 1, F) with ``n_lead`` unit axes."""
    start, stop = member_range(perts, members)
    n_members = stop - start
    features = int(base.shape[0])
    v = xp.reshape(base, (1,) * (n_lead + 1) + (features,))
    if noise is None:
        return v
    pair_idx = xp.asarray(list(perts.pair[start:stop]), dtype=xp.int64, device=device)
    sign = xp.reshape(xp.asarray(list(perts.sign[start:stop]), dtype=x_dtype, device=device), (n_members,) + (1,) * (n_lead + 1))
    return v + xp.reshape(xp.take(noise.eps, pair_idx, axis=0), (n_members,) + (1,) * n_lead + (features,)) * sign


def perturbed_layer_norm(x, gamma, beta, perts: Perturbations | None = None, *, gamma_key=None, beta_key=None,
                         eps: float = 1e-5, members=None):
    """Layer norm over the last axis with perturbed scale/shift.

    ``y_i = (x_i - mean) / sqrt(var + eps) * (gamma + s_i e^g_{p_i}) + (beta + s_i e^b_{p_i})``
    (row statistics of each member's own input; nothing is stored).

    Parameters
    ----------
    x : array, shape (N, batch, F) per member, or shared (batch, F)
    gamma, beta : array, shape (F,), or None (LayerNorm without affine)
    perts : Perturbations or None
    gamma_key, beta_key : str, optional
        Keys of ``perts.noise`` (``"ln1.weight"``, ``"ln1.bias"``).
    eps : float > 0
    members : (start, stop), optional

    Returns
    -------
    array, shape (N, batch, F) when anything is perturbed, else shape of x
    """
    xp = _backend.array_namespace(x)
    gn = _noise(perts, gamma_key, FullNoise) if gamma is not None else None
    bn = _noise(perts, beta_key, FullNoise) if beta is not None else None
    if gn is None and bn is None:
        return F.layer_norm(x, gamma, beta, eps)
    start, stop = member_range(perts, members)
    n_members = stop - start
    if len(x.shape) == 3 and int(x.shape[0]) != n_members:
        raise ValueError(f"x has {int(x.shape[0])} members (axis 0) but members={start, stop} selects {n_members}")
    if len(x.shape) not in (2, 3):
        raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, batch, F) or shared (batch, F)")
    xhat = F.layer_norm(x, None, None, eps)
    if len(x.shape) == 2:
        xhat = xp.broadcast_to(xhat[None, ...], (n_members,) + tuple(int(s) for s in x.shape))
    device = _backend.device_of(x)
    out = xhat if gamma is None else xhat * _member_vectors(xp, perts, members, gamma, gn, 1, x.dtype, device)
    if beta is not None:
        out = out + _member_vectors(xp, perts, members, beta, bn, 1, x.dtype, device)
    return out


class PerturbedForward(NamedTuple):
    """A layer class's entry in :data:`PERTURBED_FORWARDS`.

    Attributes
    ----------
    fn : callable
        ``fn(layer, params, h, perts, *, key, members, state, impl, cache) -> out or None``
        (see :func:`register_perturbed_forward`).
    shared_ndim : int
        Number of axes of a *shared* input of the layer (2 for ``(batch, F)``,
        4 for images ``(batch, C, H, W)``); one more axis means per member.
    """

    fn: Callable
    shared_ndim: int


#: layer class -> :class:`PerturbedForward`; the built-in layers first.  A layer
#: is looked up by its class, then its base classes (``type(layer).__mro__``).
PERTURBED_FORWARDS: dict = {}
_BUILT_IN: set = set()


def register_perturbed_forward(layer_cls: type, fn: Callable, *, shared_ndim: int = 2, replace: bool = False) -> Callable:
    """Make the layers of class ``layer_cls`` perturbable in :func:`perturbed_model_forward`.

    Parameters
    ----------
    layer_cls : type
        A subclass of :class:`egdnp.nn.Layer` (its subclasses use ``fn`` too,
        unless they register their own).
    fn : callable
        ``fn(layer, params, h, perts, *, key, members, state, impl, cache) -> out``:
        ``layer`` the layer object, ``params`` its own parameters
        (``{"weight": ...}``), ``h`` its input, shared ``(batch, ...)`` or per
        member ``(N, batch, ...)``; ``perts`` the :class:`Perturbations` (or
        None); ``key`` the layer's full name, so that ``perts.noise.get(key +
        ".weight")`` is the noise of its weight (absent: not perturbed);
        ``members``, ``impl``, ``cache`` as for :func:`perturbed_model_forward`;
        ``state`` its own buffers (``{"running_mean": ...}``, empty without).
        It returns the output for every member, shape ``(N, batch, ...)``
        (``N`` the members of ``members``; shared ``(batch, ...)`` when nothing
        of it is perturbed and ``h`` is shared), or None for the layer's plain
        forward.  Build it from :func:`perturbed_matmul` (matrices) and
        ``v + s_i eps_{p_i}`` per member (vectors, see :func:`perturbed_layer_norm`).
    shared_ndim : int
        Axes of a shared input of the layer: 2 for ``(batch, F)``, 4 for ``(batch, C, H, W)``.
    replace : bool
        Allow replacing a forward you registered before (the built-in ones stay).

    Returns
    -------
    callable
        ``fn``.

    Raises
    ------
    TypeError
        ``layer_cls`` is not a Layer subclass, or ``fn`` is not callable.
    ValueError
        ``layer_cls`` is built in, or registered already and ``replace`` is False;
        ``shared_ndim`` is not an int >= 1.
    """
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, L.Layer)):
        raise TypeError(f"layer_cls={layer_cls!r} must be a subclass of egdnp.nn.Layer")
    if not callable(fn):
        raise TypeError(f"fn={fn!r} must be callable fn(layer, params, h, perts, *, key, members, state, impl, cache)")
    if isinstance(shared_ndim, bool) or not isinstance(shared_ndim, numbers.Integral) or shared_ndim < 1:
        raise ValueError(f"shared_ndim={shared_ndim!r} must be an int >= 1 (2 for (batch, F), 4 for (batch, C, H, W))")
    if layer_cls in _BUILT_IN:
        raise ValueError(f"{layer_cls.__name__} has a built-in perturbed forward, which cannot be replaced; "
                         f"subclass it and register the subclass")
    if layer_cls in PERTURBED_FORWARDS and not replace:
        raise ValueError(f"{layer_cls.__name__} already has a perturbed forward ({PERTURBED_FORWARDS[layer_cls].fn!r}); "
                         "pass replace=True to replace it")
    PERTURBED_FORWARDS[layer_cls] = PerturbedForward(fn, int(shared_ndim))
    return fn


def _perturbed_forward_of(layer) -> PerturbedForward | None:
    """The registered entry of ``layer``'s class or nearest base class (None: not perturbable)."""
    for cls in type(layer).__mro__:
        entry = PERTURBED_FORWARDS.get(cls)
        if entry is not None:
            return entry
    return None


def _linear_forward(layer, params, h, perts, *, key, members, state, impl, cache, activation=None):
    return perturbed_matmul(h, params["weight"], params.get("bias"), perts, f"{key}.weight", f"{key}.bias", members,
                            impl=impl, cache=cache, activation=activation)


def _conv2d_forward(layer, params, h, perts, *, key, members, state, impl, cache):
    return perturbed_conv2d(h, params["weight"], params.get("bias"), perts, weight_key=f"{key}.weight",
                            bias_key=f"{key}.bias", stride=layer.stride, padding=layer.padding,
                            dilation=layer.dilation, members=members, impl=impl, cache=cache)


def _batch_norm_forward(layer, params, h, perts, *, key, members, state, impl, cache):
    return perturbed_batch_norm(h, params["weight"], params["bias"], state["running_mean"], state["running_var"],
                                perts, gamma_key=f"{key}.weight", beta_key=f"{key}.bias",
                                feature_axis=-1 if isinstance(layer, L.BatchNorm1d) else -3, eps=layer.eps,
                                members=members)


def _layer_norm_forward(layer, params, h, perts, *, key, members, state, impl, cache):
    return perturbed_layer_norm(h, params.get("weight"), params.get("bias"), perts, gamma_key=f"{key}.weight",
                                beta_key=f"{key}.bias", eps=layer.eps, members=members)


def _residual_forward(layer, params, h, perts, *, key, members, state, impl, cache):
    sub = f"{key}."
    if perts is None or not any(k.startswith(sub) for k in perts.noise):
        return None  # nothing perturbed inside: the plain forward (a shared input stays shared)
    body = perturbed_model_forward(layer.body, params, h, perts, members=members, state=state or None, impl=impl,
                                   cache=cache, prefix=sub)
    return h + body


for _cls, _fn, _ndim in ((L.Linear, _linear_forward, 2), (L.Conv2d, _conv2d_forward, 4),
                         (L.BatchNorm1d, _batch_norm_forward, 2), (L.BatchNorm2d, _batch_norm_forward, 4),
                         (L.LayerNorm, _layer_norm_forward, 2), (L.Residual, _residual_forward, 2)):
    register_perturbed_forward(_cls, _fn, shared_ndim=_ndim)
    _BUILT_IN.add(_cls)
del _cls, _fn, _ndim


def perturbed_model_forward(model, params: dict, x, perts: Perturbations | None, *, members=None, state=None,
                            impl: str = "auto", cache: dict | None = None, prefix: str = "", layer_fn=None):
    """Forward of a whole ``egdnp.nn`` model for every member (or a slice).

    Every layer with an entry in :data:`PERTURBED_FORWARDS` (Linear, Conv2d,
    BatchNorm, LayerNorm, Residual and what :func:`register_perturbed_forward`
    added) runs its perturbed forward; every other layer runs as usual
    (population axes are batch axes to them).  BatchNorm uses its running
    statistics (eval mode).

    Parameters
    ----------
    model : egdnp.nn.Serial
        E.g. ``egdnp.nn.mlp(...)`` (layers ``fc1, tanh1, fc2``) or ``egdnp.nn.cnn()``.
    params : dict[str, array]
    x : array, shape (batch, ...) shared, or (N, batch, ...) per member
    perts : Perturbations or None
    members : (start, stop), optional
        Population slice; ``x`` per member must then have ``stop - start`` members.
    state : dict, optional
        Model buffers (BatchNorm running statistics).
    impl : {"auto", "numba", "array_api"}
        ``"auto"`` uses the NumPy fast paths for NumPy arrays.
    cache : dict, optional
        Scratch space shared by the chunks of one population evaluation (see
        :func:`perturbed_matmul`); create a fresh dict per evaluation.
    prefix : str
        Prepended to this model's parameter keys to find their noise (a
        :class:`~egdnp.nn.Residual` body runs with ``prefix="block1."``);
        noise of keys outside the prefix is ignored here.
    layer_fn : callable, optional
        ``layer_fn(name, layer, layer_params, h) -> out or None``, tried before
        the perturbed layers (a non-None result replaces the layer's output),
        e.g. a faster implementation of the same perturbed layer.

    Returns
    -------
    array, shape (N, batch, n_out)
    """
    xp = _backend.array_namespace(x)
    fast = _backend.resolve_impl(xp, impl) == "numba"
    start, stop = member_range(perts, members) if perts is not None else (0, None)
    layer_list = list(model.layers)
    entries = {name: _perturbed_forward_of(layer) for name, layer in layer_list}  # one registry look-up a layer
    if perts is not None:
        owners = {f"{prefix}{n}.{k}": (n, layer) for n, layer in layer_list for k in layer.param_shapes()}
        for key in perts.noise:
            if not key.startswith(prefix):
                continue
            if key not in owners:
                raise ValueError(f"perts perturbs {key!r}, which is not a parameter of the model; keys are {list(owners)}")
            if entries[owners[key][0]] is None:
                cls = type(owners[key][1]).__name__
                raise ValueError(f"parameter {key!r} belongs to a {cls} layer, which has no perturbed forward; give it "
                                 f"one with es.register_perturbed_forward({cls}, fn), or leave {key!r} unperturbed")
    state = {} if state is None else state
    seen: dict[str, bool] = {}  # whether the model's input was shared, judged by its first perturbable layer
    override = layer_fn
    # A ReLU right after a Linear runs inside the Linear's perturbed product
    # (bitwise the same values; the NumPy path saves a pass over the activations).
    linear = {n for n, entry in entries.items() if entry is not None and entry.fn is _linear_forward}
    relu_after = {n1: n2 for (n1, l1), (n2, l2) in zip(layer_list, layer_list[1:])
                  if n1 in linear and isinstance(l2, L.Activation) and l2.kind == "relu"}
    fused: set[str] = set()

    owned: list = []  # the array the previous perturbed Linear just made (no one else holds it)

    def layer_fn(name, layer, local_params, h):
        if name in fused:
            return h  # this ReLU already ran inside the previous Linear
        if owned and owned.pop() is h and isinstance(layer, L.Activation) and layer.kind == "tanh" and fast:
            from . import _cpu  # lazily: it imports Numba

            # In place, the same ufunc (bitwise): a fresh (chunk, batch, width)
            # array per chunk costs page faults (~390k per pop-16384 generation).
            return _cpu.tanh_in_place(h)
        entry = entries[name] if name in entries else _perturbed_forward_of(layer)
        if entry is not None and "x_shared" not in seen:
            seen["x_shared"] = len(h.shape) == entry.shared_ndim
        if override is not None:
            replaced = override(prefix + name, layer, local_params, h)
            if replaced is not None:
                return replaced
        if entry is None:
            return None
        key = prefix + name
        if name in linear:
            activation = None
            if name in relu_after:
                fused.add(relu_after[name])
                activation = "relu"
            out = _linear_forward(layer, local_params, h, perts, key=key, members=members, state=None, impl=impl,
                                  cache=cache, activation=activation)
            if out is not h and len(out.shape) == 3:
                owned.append(out)
            return out
        sub = f"{name}."
        local_state = {k[len(sub):]: v for k, v in state.items() if k.startswith(sub)} if state else {}
        return entry.fn(layer, local_params, h, perts, key=key, members=members, state=local_state, impl=impl,
                        cache=cache)

    out = model.apply(params, x, state=state if state else None, layer_fn=layer_fn)
    output_shared = seen.get("x_shared", False) and len(out.shape) == 2
    if perts is not None and output_shared:
        # Nothing was perturbed on the way: give every member the shared output.
        out = xp.broadcast_to(out[None, ...], (stop - start,) + tuple(int(s) for s in out.shape))
    return out


def dense_perturbed_params(params: dict, perts: Perturbations, member: int) -> dict:
    """Explicit ``W + A_i B_i^T`` (reshaped to the parameter) and ``v + s_i eps`` of one member.

    For tests and small models only: it forms the full perturbed matrices.

    Parameters
    ----------
    params : dict of str to array
        The unperturbed parameters.
    perts : Perturbations
        Their perturbations.
    member : int
        Member index in ``0 .. pop_size - 1``.

    Returns
    -------
    dict of str to array
        A new dict: perturbed keys get new arrays of the parameter's shape,
        the others are the given arrays.
    """
    p, s = int(perts.pair[member]), float(perts.sign[member])
    out = dict(params)
    for key, item in perts.noise.items():
        out[key] = params[key] + s * dense_noise(item, p)
    return out


def population_fitness(model, params: dict, x, perts: Perturbations, fitness_fn, *, chunk_size: int | None = None,
                       state=None, impl: str = "auto", threaded: bool = True):
    """Score every member, ``chunk_size`` members at a time.

    Parameters
    ----------
    model, params, x, perts, state :
        As for :func:`perturbed_model_forward`; ``x`` is the shared batch.
    fitness_fn : callable
        ``fitness_fn(out) -> (chunk,)`` with ``out`` of shape (chunk, batch, ...),
        e.g. ``lambda out: classification_fitness(out, y)``.
    chunk_size : int, optional
        Members per forward (default all).  Peak memory is
        ``O(chunk_size * batch * width)`` per thread; the result does not depend on it.
    threaded : bool
        NumPy only: score chunks concurrently on egdnp's CPU threads
        (:mod:`egdnp._threads`; ``fitness_fn`` must then be thread-safe, as
        pure array code is).
        The result is bitwise the same either way.

    Returns
    -------
    array, shape (N,)
    """
    xp = _backend.array_namespace(x)
    if not isinstance(perts, Perturbations):
        raise TypeError(f"perts must be the Perturbations returned by ask/generate, got {type(perts).__name__}")
    if not callable(fitness_fn):
        raise TypeError(f"fitness_fn={fitness_fn!r} must be callable(out) -> fitness of shape (chunk,)")
    n = perts.pop_size
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)):
        raise TypeError(f"chunk_size={chunk_size!r} must be an int >= 1 or None (all members at once)")
    chunk = n if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size={chunk_size!r} must be an int >= 1")
    if perts.layout != "none" and chunk % 2 and chunk < n:
        chunk += 1  # keep antithetic partners of the interleaved layout in one chunk
    cache: dict = {}  # shared-input products computed once for all chunks; dropped on return
    ranges = [(start, min(n, start + chunk)) for start in range(0, n, chunk)]

    def score(members):
        out = perturbed_model_forward(model, params, x, perts, members=members, state=state, impl=impl, cache=cache)
        f = fitness_fn(out)
        want = (members[1] - members[0],)
        if getattr(f, "shape", None) is None or tuple(f.shape) != want:
            got = tuple(f.shape) if hasattr(f, "shape") else type(f).__name__
            raise ValueError(
                f"fitness_fn returned {got} for members {members[0]}..{members[1] - 1}; it must return one "
                f"score per member, shape {want} (e.g. reduce the batch axis: mean over axis 1)"
            )
        return f

    parts = [score(ranges[0])]  # fills the cache before any concurrency
    if len(ranges) > 2 and threaded and _backend.resolve_impl(xp, impl) == "numba":
        from . import _cpu  # lazily: it imports Numba

        # Whole chunks run concurrently on the NumPy path: their kernels and
        # ufuncs release the GIL, and each chunk is computed exactly as it would
        # be alone, so the result is bitwise independent of the thread count.
        parts += _cpu.map_chunks(score, ranges[1:])
    else:
        parts += [score(r) for r in ranges[1:]]
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
