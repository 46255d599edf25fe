"""Helpers named like the HyperscaleES PyTorch port, for people who know that API.

The port's training loop maps one to one::

    shapes = get_weight_shapes(params)
    for epoch in range(epochs):
        perts = generate_perturbations(shapes, pop, rank, sigma, seed=seed, generation=epoch)
        h = xp.tanh(perturbed_forward(x, params["layer1.weight"], params["layer1.bias"], perts, "layer1.weight"))
        out = perturbed_forward(h, params["layer2.weight"], params["layer2.bias"], perts, "layer2.weight")
        f = normalize_fitnesses(fitness_of(out))
        grads = compute_gradients(f, perts, pop)
        params = update_params(params, grads, lr)          # egdnp: returns a new dict

Differences from the port, all deliberate:

* noise comes from ``seed`` + ``generation`` (egdnp's addressed noise) instead
  of a ``torch.Generator``; ``factors=`` feeds the port's own raw factors;
* ``update_params`` is pure (returns new params) instead of in-place;
* factors are stored as ``A`` (P, m, r) / ``B`` (P, n, r), the port's
  ``U`` (pop, r, m) / ``V`` (pop, r, n) transposed;
* the default convention here is ``"hyperscalees-torch"`` (the port's formulas);
  pass ``convention="egdnp"`` or ``"hyperscalees-jax"`` for the others.
"""

from __future__ import annotations

from .. import _backend
from . import layers as _layers
from .conventions import get_convention
from .fitness import shape_fitness
from .gradient import es_gradient
from .perturbations import Perturbations, generate, matrix_shape, plan_parameters

__all__ = [
    "get_weight_shapes",
    "generate_perturbations",
    "perturbed_forward",
    "perturbed_conv2d",
    "normalize_fitnesses",
    "compute_gradients",
    "update_params",
]

_DEFAULT = "hyperscalees-torch"


def get_weight_shapes(params: dict, convention=_DEFAULT) -> dict:
    """Shapes of the perturbed parameters: matrices as (m, n) (conv weights flattened
    to (C_out, C_in*kh*kw)), full-rank vectors with their own shape.

    With ``"hyperscalees-torch"`` only ``*weight*`` parameters with 2 or 4 dims appear.

    Parameters
    ----------
    params : dict of str to array
    convention : str or Convention
        Decides which parameters are perturbed.

    Returns
    -------
    dict of str to tuple of int
        (m, n) per low-rank matrix, the parameter's shape per full-rank vector.
    """
    plan = plan_parameters(params, convention=convention)
    out = {}
    for k, how in plan.items():
        shape = tuple(int(s) for s in params[k].shape)
        if how == "lowrank":
            out[k] = matrix_shape(shape)
        elif how == "full":
            out[k] = shape
    return out


def generate_perturbations(shapes: dict, population_size: int, rank: int, sigma: float, seed: int = 0,
                           dtype="float32", *, generation: int = 0, convention=_DEFAULT, antithetic: bool = True,
                           factors: dict | None = None, xp=None) -> Perturbations:
    """Perturbations for ``shapes`` (from :func:`get_weight_shapes`); see :func:`egdnp.es.perturbations.generate`.

    Parameters
    ----------
    shapes : dict of str to tuple of int
        (m, n) per low-rank matrix, the own shape per full-rank vector.
    population_size, rank : int
    sigma : float
    seed : int
    dtype : {"float32", "float64"}
    generation : int
    convention : str or Convention
    antithetic : bool
    factors : dict, optional
        Raw noise to use instead of egdnp's own (see :meth:`Eggroll.ask`).
    xp : namespace, optional

    Returns
    -------
    Perturbations
        Factors ``A`` (P, m, r), ``B`` (P, n, r) or ``eps`` (P, *shape) per key.
    """
    return generate(shapes, pop_size=population_size, rank=rank, sigma=sigma, seed=seed, generation=generation,
                    convention=convention, antithetic=antithetic, factors=factors, xp=xp, dtype=dtype)


def _bias_key(key):
    return key[: -len("weight")] + "bias" if key.endswith("weight") else None


def perturbed_forward(x, W, b, perts: Perturbations, key: str, *, members=None):
    """Perturbed linear layer: x (pop, batch, in) or shared (batch, in) -> (pop, batch, out).

    ``key`` is the weight's key in ``perts``; the bias is perturbed only when
    ``perts`` holds full-rank noise for the matching ``*bias`` key.

    Parameters
    ----------
    x : array, shape (pop, batch, n_in) or (batch, n_in)
    W : array, shape (n_out, n_in)
    b : array, shape (n_out,), or None
    perts : Perturbations
    key : str
    members : (start, stop), optional
        Evaluate only these members.

    Returns
    -------
    array, shape (stop - start, batch, n_out)
    """
    return _layers.perturbed_linear(x, W, b, perts, weight_key=key, bias_key=_bias_key(key), members=members)


def perturbed_conv2d(x, W, perts: Perturbations, key: str, stride=1, padding=0, *, bias=None, dilation=1, members=None):
    """Perturbed conv2d: x (pop, batch, C, H, W) or shared (batch, C, H, W) -> (pop, batch, C_out, H', W').

    Parameters
    ----------
    x : array, shape (pop, batch, C_in, H, W) or (batch, C_in, H, W)
    W : array, shape (C_out, C_in, kh, kw)
    perts : Perturbations
    key : str
        The weight's key in ``perts``.
    stride, padding, dilation : int or pair of int
    bias : array, shape (C_out,), optional
    members : (start, stop), optional
        Evaluate only these members.

    Returns
    -------
    array, shape (stop - start, batch, C_out, H', W')
    """
    return _layers.perturbed_conv2d(x, W, bias, perts, weight_key=key, bias_key=_bias_key(key), stride=stride,
                                    padding=padding, dilation=dilation, members=members)


def normalize_fitnesses(fitnesses, *, convention=_DEFAULT, method=None, group_size: int = 0):
    """Shape raw fitness with the convention's method (or ``method``); (pop,) -> (pop,).

    Parameters
    ----------
    fitnesses : array, shape (pop,)
        Raw fitness (higher is better).
    convention : str or Convention
    method : str or callable, optional
        A name of :data:`egdnp.es.fitness.FITNESS_SHAPINGS` or a shaping
        function ``fn(f) -> f_hat``, overriding the convention's.
    group_size : int
        Members per group for the grouped methods (0: one group).

    Returns
    -------
    array, shape (pop,)
    """
    conv = get_convention(convention)
    return shape_fitness(fitnesses, conv.fitness if method is None else method, group_size=group_size)


def compute_gradients(fitnesses, perts: Perturbations, population_size: int | None = None) -> dict:
    """Ascent directions ``g`` (the port's ``grads``) from shaped fitness; keyed like ``perts.noise``.

    Parameters
    ----------
    fitnesses : array, shape (N,)
        Shaped fitness.
    perts : Perturbations
    population_size : int, optional
        Checked against ``perts.pop_size``.

    Returns
    -------
    dict of str to array
        ``g`` per perturbed key, of the shape the perturbations were drawn for
        (``(m, n)`` for the matrices of :func:`get_weight_shapes`, conv weights
        flattened; a vector's own shape).
    """
    if population_size is not None and int(population_size) != perts.pop_size:
        raise ValueError(f"population_size={population_size} but perts hold {perts.pop_size} members")
    return es_gradient(fitnesses, perts)


def update_params(params: dict, grads: dict, lr: float) -> dict:
    """``p + lr * g`` for every key of ``grads`` (ascent, the port's rule); returns a NEW dict.

    A gradient of the flattened shape of a conv weight is reshaped to the weight.

    Parameters
    ----------
    params : dict of str to array
    grads : dict of str to array
        Ascent directions, keyed like (a subset of) ``params``.
    lr : float

    Returns
    -------
    dict of str to array
        New arrays for the keys of ``grads``; the other params are passed through.
    """
    lr = float(lr)
    out = dict(params)
    for k, g in grads.items():
        if k not in params:
            raise ValueError(f"grads has key {k!r} that is not in params ({list(params)})")
        p = params[k]
        xp = _backend.array_namespace(p)
        size_p, size_g = 1, 1
        for s in p.shape:
            size_p *= int(s)
        for s in g.shape:
            size_g *= int(s)
        if size_p != size_g:
            raise ValueError(f"grads[{k!r}] has shape {tuple(g.shape)}, incompatible with params[{k!r}] {tuple(p.shape)}")
        out[k] = p + lr * xp.reshape(g, tuple(p.shape))
    return out
