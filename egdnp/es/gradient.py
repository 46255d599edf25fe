"""The ES gradient of EGGROLL: ``G = sum_i f_hat_i E_i`` without a population of matrices.

For a matrix parameter, ``E_i = s_i A_{p_i} B_{p_i}^T`` and the sum over members
folds antithetic partners into pair weights ``w_k = sum_{i in pair k} s_i f_hat_i``:

    G = sum_k w_k A_k B_k^T = A_cat @ (w * B)_cat^T

with ``A_cat`` (m, P r) and ``B_cat`` (n, P r) the factors of all pairs
concatenated along the rank axis: ONE matrix product with inner dimension
``P r``, never a (P, m, n) tensor.

This is the true sum of the rank-r products.  It is NOT
``(sum_k w_k A_k) (sum_k w_k B_k)^T``, which the EGGROLL algorithm notes call
"equivalent": that product is rank r, has cross terms ``w_k w_l A_k B_l^T``
between unrelated members and scales with ``w^2`` -- a different (wrong)
update; :func:`factorised_shortcut` exists only so tests can show the
difference.

For a full-rank parameter, ``G = sum_k w_k sigma eps_k``: with egdnp's own noise
and at least :data:`FUSED_MIN_SIZE` entries the noise is regenerated inside the
fused :func:`egdnp.rng.weighted_noise_sum` (``O(size)`` memory, float64
accumulation); smaller vectors (biases) and caller-supplied noise are contracted
directly from the stored noise.

The ascent direction returned by :func:`es_gradient` is ``g = c * G`` with the
convention's ``c`` (``1/sqrt(N)`` for the HyperscaleES conventions,
``1/(N sigma)`` for egdnp's); :func:`loss_gradients` returns ``-g`` keyed like
params, ready for any :mod:`egdnp.optim` optimiser (which descends).
"""

from __future__ import annotations

import math

from .. import _backend
from .. import rng as _rng
from .conventions import get_convention
from .fitness import check_fitness
from .perturbations import (FullNoise, LowRankNoise, Perturbations, SparseNoise, StackedLowRankNoise, _one_hot,
                            matrix_shape)

__all__ = ["pair_weights", "lowrank_weighted_sum", "sparse_weighted_sum", "factorised_shortcut", "gradient_scale",
           "sparse_scale", "es_gradient", "loss_gradients", "loss_gradients_checked"]


# Full-rank parameters with at least this many entries are reduced by the fused
# regeneration (egdnp.rng.weighted_noise_sum, O(size) memory); smaller ones (biases)
# contract the stored noise directly, which avoids a kernel launch per vector.
FUSED_MIN_SIZE = 4096


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def pair_weights(f_hat, perts: Perturbations):
    """``w_k = sum_{i in pair k} s_i f_hat_i``; shape (N,) -> (P,).

    Parameters
    ----------
    f_hat : array, shape (N,)
    perts : Perturbations

    Returns
    -------
    array, shape (P,)
        ``f_hat`` itself without antithetic sampling.
    """
    check_fitness(f_hat, perts.pop_size)
    return _pair_weights(f_hat, perts)


def _pair_weights(f_hat, perts):
    if perts.layout == "none":
        return f_hat
    n_pairs = perts.pop_size // 2
    if perts.layout == "halves":
        return f_hat[:n_pairs] - f_hat[n_pairs:]
    if perts.layout == "interleaved":
        return f_hat[0::2] - f_hat[1::2]
    raise ValueError(f"perts.layout={perts.layout!r} is not 'none', 'halves' or 'interleaved'")


def lowrank_weighted_sum(weights, A, B, *, impl: str = "auto"):
    """``sum_k weights[k] A[k] @ B[k].T`` as one matrix product over concatenated factors.

    ``A_cat[:, k r + q] = A[k, :, q]`` and ``B_cat[:, k r + q] = weights[k] B[k, :, q]``
    (shapes (m, P r) and (n, P r)); the result is ``A_cat @ B_cat.T``.

    Parameters
    ----------
    weights : array, shape (P,)
    A : array, shape (P, m, r)
    B : array, shape (P, n, r)
    impl : {"auto", "numba", "array_api"}
        ``"auto"`` builds ``A_cat``/``B_cat`` with a Numba kernel for NumPy
        arrays (bitwise the same values, so the same GEMM result); above
        ``egdnp.es._cpu.GRAD_BLOCK_MIN_PAIRS`` pairs it sums the product over
        cache-sized blocks of pairs (same result within float rounding).
        Factors and weights of mixed dtypes run the array-API code.

    Returns
    -------
    array, shape (m, n)
    """
    xp = _backend.array_namespace(weights, A, B)
    if len(A.shape) != 3 or len(B.shape) != 3:
        raise ValueError(f"A and B must be (P, m, r) and (P, n, r); got A {tuple(A.shape)}, B {tuple(B.shape)}")
    p, m, r = (int(s) for s in A.shape)
    if int(B.shape[0]) != p or int(B.shape[2]) != r:
        raise ValueError(f"A has shape {tuple(A.shape)} and B {tuple(B.shape)}; they must agree on P and r (axes 0 and 2)")
    if tuple(weights.shape) != (p,):
        raise ValueError(f"weights has shape {tuple(weights.shape)}; expected ({p},), one per factor pair")
    n = int(B.shape[1])
    # The kernel needs one dtype: a mixed-dtype call runs the array-API code, whatever impl says (as before).
    impl = _backend.resolve_impl(xp, impl)
    if impl == "numba" and A.dtype == B.dtype == weights.dtype:
        from . import _cpu  # loads Numba: imported on first use, so ``import egdnp`` does not

        # The concatenations below in one pass each (no scaled temporary, no
        # slow small-stride transpose copy); many pairs are summed in blocks.
        return _cpu.lowrank_weighted_sum(weights, A, B)
    a_cat = xp.reshape(xp.permute_dims(A, (1, 0, 2)), (m, p * r))
    b_cat = xp.reshape(xp.permute_dims(B * xp.reshape(weights, (p, 1, 1)), (1, 0, 2)), (n, p * r))
    return xp.matmul(a_cat, b_cat.T)


def sparse_weighted_sum(weights, item: SparseNoise, *, max_elements: int = 1 << 22):
    """``sum_p weights[p] E_p`` of sparse perturbations, as matrix products of one-hot factors.

    ``E_p = R_p^T diag(values_p) C_p`` with ``R_p`` (k, m) and ``C_p`` (k, n)
    the one-hot rows and columns of pair ``p``'s entries, so the sum is
    ``R_cat^T diag(w * values)_cat C_cat``: one GEMM with inner dimension
    ``P k`` per block of pairs (blocks keep the one-hot factors under
    ``max_elements`` entries).  Repeated entries add up, as in a scatter-add.

    Parameters
    ----------
    weights : array, shape (P,)
    item : SparseNoise
        ``values`` (P, k), ``rows``/``cols`` (P, k) int.
    max_elements : int
        Size bound of the one-hot blocks (memory ``O(max_elements)``).

    Returns
    -------
    array, shape ``item.shape``
    """
    xp = _backend.array_namespace(weights, item.values)
    m, n = matrix_shape(item.shape)
    p_total, k = (int(s) for s in item.values.shape)
    if tuple(weights.shape) != (p_total,):
        raise ValueError(f"weights has shape {tuple(weights.shape)}; expected ({p_total},), one per pair")
    dt = item.values.dtype
    wv = item.values * xp.reshape(xp.astype(weights, dt), (p_total, 1))
    step = max(1, int(max_elements) // max(1, k * (m + n)))
    out = None
    for lo in range(0, p_total, step):
        hi = min(p_total, lo + step)
        rows = _one_hot(xp, item.rows[lo:hi, ...], m, dt) * wv[lo:hi, :, None]  # (c, k, m)
        cols = _one_hot(xp, item.cols[lo:hi, ...], n, dt)  # (c, k, n)
        part = xp.matmul(xp.reshape(rows, ((hi - lo) * k, m)).T, xp.reshape(cols, ((hi - lo) * k, n)))
        out = part if out is None else out + part
    return xp.reshape(out, tuple(item.shape))


def factorised_shortcut(weights, A, B):
    """``(sum_k w_k A_k) (sum_k w_k B_k)^T`` -- the WRONG "equivalent" of the algorithm notes (tests only).

    Parameters
    ----------
    weights : array, shape (P,)
    A : array, shape (P, m, r)
    B : array, shape (P, n, r)

    Returns
    -------
    array, shape (m, n)
        Not the ES gradient: a rank-r product of the weighted sums, kept to show
        (in the tests) how far it is from :func:`lowrank_weighted_sum`.
    """
    xp = _backend.array_namespace(weights, A, B)
    w = xp.reshape(weights, (int(weights.shape[0]), 1, 1))
    return xp.matmul(xp.sum(w * A, axis=0), xp.sum(w * B, axis=0).T)


def gradient_scale(perts: Perturbations, convention=None) -> float:
    """The convention's ``c`` in ``g = c * sum_i f_hat_i E_i``.

    Parameters
    ----------
    perts : Perturbations
    convention : str or Convention, optional
        Default: the one ``perts`` was drawn in.

    Returns
    -------
    float
        ``1 / sqrt(N)`` (HyperscaleES) or ``1 / (N sigma)`` (egdnp).
    """
    conv = get_convention(perts.convention if convention is None else convention)
    if conv.grad_scale == "sqrt_n":
        return 1.0 / math.sqrt(perts.pop_size)
    if conv.grad_scale == "n_sigma":
        return 1.0 / (perts.pop_size * perts.sigma)
    raise ValueError(f"convention {conv.name!r} has unknown grad_scale {conv.grad_scale!r}")


def sparse_scale(item: SparseNoise, convention) -> float:
    """Extra factor of a sparse matrix's gradient, with ``q = k / (m n)`` its entry density.

    A sparse perturbation has entry covariance ``sigma^2 q`` instead of
    ``sigma^2``.  The official JAX ``Sparse`` noiser multiplies its update by
    ``q`` (its "q_normalizer", marked "to be verified" there); the HyperscaleES
    conventions do the same.  egdnp's convention divides by ``q``, which makes
    the sparse estimate's expectation (to first order) the same gradient as
    the dense and low-rank ones, so one learning rate serves all three.

    Parameters
    ----------
    item : SparseNoise
        ``values`` of shape (P, k) for a parameter of matrix shape (m, n).
    convention : str or Convention

    Returns
    -------
    float
        ``q`` (``grad_scale="sqrt_n"``) or ``1 / q`` (``"n_sigma"``).
    """
    m, n = matrix_shape(item.shape)
    q = int(item.values.shape[1]) / float(m * n)
    return q if get_convention(convention).grad_scale == "sqrt_n" else 1.0 / q


def es_gradient(f_hat, perts: Perturbations, *, convention=None) -> dict:
    """Ascent direction ``g = c * sum_i f_hat_i E_i`` of every perturbed parameter.

    Parameters
    ----------
    f_hat : array, shape (N,)
        Shaped fitness (higher is better).
    perts : Perturbations
        The generation's perturbations (the same that produced ``f_hat``).
    convention : str, optional
        Default: ``perts.convention``.

    Returns
    -------
    dict[str, array]
        One entry per perturbed parameter, each of the parameter's shape.
    """
    if not isinstance(perts, Perturbations):
        raise TypeError(f"perts must be the Perturbations returned by ask/generate, got {type(perts).__name__}")
    xp = check_fitness(f_hat, perts.pop_size)
    return _es_gradient(xp, f_hat, perts, convention)


def _es_gradient(xp, f_hat, perts, convention):
    w = _pair_weights(f_hat, perts)
    c = gradient_scale(perts, convention)
    grads = {}
    for key, item in perts.noise.items():
        if isinstance(item, LowRankNoise):
            w_t = xp.astype(w, item.A.dtype)
            g = lowrank_weighted_sum(w_t, item.A, item.B)
            grads[key] = xp.reshape(g * c, tuple(item.shape))
        elif isinstance(item, StackedLowRankNoise):
            # every slice is its own matrix (the official noiser's scan over stacked layers)
            w_t = xp.astype(w, item.A.dtype)
            g = xp.stack([lowrank_weighted_sum(w_t, item.A[:, sl, ...], item.B[:, sl, ...])
                          for sl in range(int(item.shape[0]))], axis=0)
            grads[key] = g * c
        elif isinstance(item, SparseNoise):
            g = sparse_weighted_sum(w, item)
            grads[key] = g * (c * sparse_scale(item, perts.convention if convention is None else convention))
        elif isinstance(item, FullNoise):
            xq = _backend.array_namespace(item.eps)
            if key in perts.external or perts.seed is None or _size(item.shape) < FUSED_MIN_SIZE:
                w_t = xp.astype(w, item.eps.dtype)
                g = xq.tensordot(w_t, item.eps, axes=1)
            else:
                # Regenerate the noise inside the fused reduction instead of reading the stored copy.
                dname = "float64" if item.eps.dtype == xq.float64 else "float32"
                w_host = [float(v) * perts.sigma for v in _backend.to_host(w).tolist()]
                g = _rng.weighted_noise_sum(w_host, tuple(item.shape), seed=perts.seed, stream=key,
                                            members=None if not perts.first_pair else
                                            range(perts.first_pair, perts.first_pair + len(w_host)),
                                            generation=perts.noise_generation, dtype=dname, xp=xq,
                                            device=_backend.device_of(item.eps))
            grads[key] = g * c
        else:
            raise TypeError(f"perts.noise[{key!r}] is a {type(item).__name__}, not LowRankNoise/FullNoise")
    return grads


def loss_gradients(f_hat, perts: Perturbations, params: dict, *, convention=None) -> dict:
    """``-g`` for every perturbed parameter and ``None`` (or zeros) for frozen ones, keyed like ``params``.

    Frozen parameters get ``None`` (the optimiser skips them) unless the
    convention's ``frozen_grads`` is ``"zeros"`` (``"hyperscalees-jax"``): then
    they get a zero gradient and the optimiser still runs on them, so weight
    decay shrinks them as optax does in the official JAX noiser.

    Feed it to any :mod:`egdnp.optim` optimiser: ``opt.update(grads, state, params)``
    descends the loss, i.e. ascends the fitness.

    Parameters
    ----------
    f_hat : array, shape (N,)
        Shaped fitness.
    perts : Perturbations
    params : dict of str to array
    convention : str or Convention, optional

    Returns
    -------
    dict of str to array or None
        ``-g`` of each perturbed parameter's own shape; None (or zeros, see
        above) for frozen ones.
    """
    if not isinstance(perts, Perturbations):
        raise TypeError(f"perts must be the Perturbations returned by ask/generate, got {type(perts).__name__}")
    xp = check_fitness(f_hat, perts.pop_size)
    return loss_gradients_checked(xp, f_hat, perts, params, convention=convention)


def loss_gradients_checked(xp, f_hat, perts: Perturbations, params: dict, *, convention=None) -> dict:
    """:func:`loss_gradients` of an ``f_hat`` that has passed :func:`~egdnp.es.fitness.check_fitness`.

    Parameters
    ----------
    xp : module
        The namespace of ``f_hat``.
    f_hat : array, shape (N,)
    perts : Perturbations
    params : dict of str to array
    convention : str or Convention, optional

    Returns
    -------
    dict of str to array or None
    """
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict[str, array], got {type(params).__name__}")
    missing = [k for k in perts.noise if k not in params]
    if missing:
        raise ValueError(f"perts perturbs {missing}, which are not keys of params ({list(params)})")
    for k, item in perts.noise.items():
        if tuple(int(s) for s in params[k].shape) != tuple(item.shape):
            raise ValueError(f"params[{k!r}] has shape {tuple(params[k].shape)} but perts were drawn for {tuple(item.shape)}")
    g = _es_gradient(xp, f_hat, perts, convention)
    conv = get_convention(perts.convention if convention is None else convention)
    if conv.frozen_grads == "zeros":
        # The official JAX noiser hands optax a zero gradient for every leaf it does not
        # perturb, and optax still decays it (adamw) -- reproduce that under its convention.
        return {k: (-g[k] if k in g else _backend.array_namespace(v).zeros_like(v)) for k, v in params.items()}
    return {k: (-g[k] if k in g else None) for k in params}
