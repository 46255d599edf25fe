"""Weight initialisers drawing from :mod:`egdnp.rng`.

Every initialiser is ``fn(shape, *, seed, name, xp=None, dtype="float32") -> array``.
The noise address is ``(seed, stream="init/" + name, member=0, generation=0)``,
so a model initialised with seed 0 has the same weights on NumPy, CuPy,
array-api-strict and in a port that regenerates the same Philox words.

Fans follow torch: for a weight of shape ``(n_out, n_in)`` ``fan_in = n_in``
and ``fan_out = n_out``; for ``(C_out, C_in, kh, kw)`` ``fan_in = C_in*kh*kw``
and ``fan_out = C_out*kh*kw``.

=================  =====================================================
he_normal          N(0, 2 / fan_in)                (Kaiming, for ReLU)
he_uniform         U(-a, a), a = sqrt(6 / fan_in)
glorot_normal      N(0, 2 / (fan_in + fan_out))    (Xavier, for tanh)
glorot_uniform     U(-a, a), a = sqrt(6 / (fan_in + fan_out))
lecun_normal       N(0, 1 / fan_in)
lecun_uniform      U(-a, a), a = sqrt(3 / fan_in)
torch_uniform      U(-a, a), a = 1 / sqrt(fan_in)  (PyTorch's default for
                   Linear/Conv2d weights -- kaiming_uniform with
                   a = sqrt(5) -- and for their biases, with the
                   weight's fan_in)
zeros, ones        constants (no noise drawn)
=================  =====================================================
"""

from __future__ import annotations

import math

from .. import _backend, rng

__all__ = [
    "fans",
    "he_normal",
    "he_uniform",
    "glorot_normal",
    "glorot_uniform",
    "lecun_normal",
    "lecun_uniform",
    "torch_uniform",
    "zeros",
    "ones",
    "INITIALISERS",
    "get",
]


def fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight shape (see module docstring).

    Parameters
    ----------
    shape : tuple of int
        (n_out, n_in), (C_out, C_in, kh, kw), or 1-D (n,) (both fans n).

    Returns
    -------
    (int, int)
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        n = shape[0] if shape else 1
        return n, n
    receptive = 1
    for s in shape[2:]:
        receptive *= s
    return shape[1] * receptive, shape[0] * receptive


def _normal(shape, std, seed, name, xp, dtype):
    xp = _backend.get_namespace("numpy" if xp is None else xp)
    z = rng.normal(tuple(shape), seed=seed, stream="init/" + name, dtype=dtype, xp=xp)
    return z * xp.asarray(std, dtype=z.dtype)


def _uniform(shape, bound, seed, name, xp, dtype):
    xp = _backend.get_namespace("numpy" if xp is None else xp)
    u = rng.uniform(tuple(shape), seed=seed, stream="init/" + name, dtype=dtype, xp=xp)
    return (u * 2.0 - 1.0) * xp.asarray(bound, dtype=u.dtype)


def he_normal(shape, *, seed, name, xp=None, dtype="float32"):
    """N(0, 2/fan_in) weights of ``shape``; see the module docstring for the address.

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    return _normal(shape, math.sqrt(2.0 / fans(shape)[0]), seed, name, xp, dtype)


def he_uniform(shape, *, seed, name, xp=None, dtype="float32"):
    """U(-sqrt(6/fan_in), sqrt(6/fan_in)) weights of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    return _uniform(shape, math.sqrt(6.0 / fans(shape)[0]), seed, name, xp, dtype)


def glorot_normal(shape, *, seed, name, xp=None, dtype="float32"):
    """N(0, 2/(fan_in+fan_out)) weights of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    fi, fo = fans(shape)
    return _normal(shape, math.sqrt(2.0 / (fi + fo)), seed, name, xp, dtype)


def glorot_uniform(shape, *, seed, name, xp=None, dtype="float32"):
    """U(-a, a), a = sqrt(6/(fan_in+fan_out)), weights of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    fi, fo = fans(shape)
    return _uniform(shape, math.sqrt(6.0 / (fi + fo)), seed, name, xp, dtype)


def lecun_normal(shape, *, seed, name, xp=None, dtype="float32"):
    """N(0, 1/fan_in) weights of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    return _normal(shape, math.sqrt(1.0 / fans(shape)[0]), seed, name, xp, dtype)


def lecun_uniform(shape, *, seed, name, xp=None, dtype="float32"):
    """U(-sqrt(3/fan_in), sqrt(3/fan_in)) weights of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    return _uniform(shape, math.sqrt(3.0 / fans(shape)[0]), seed, name, xp, dtype)


def torch_uniform(shape, *, seed, name, xp=None, dtype="float32", fan_in: int | None = None):
    """PyTorch's default Linear/Conv2d initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    For weights this is ``torch.nn.init.kaiming_uniform_(w, a=sqrt(5))``
    (gain ``sqrt(2 / (1 + 5))``, bound ``gain * sqrt(3 / fan_in) = 1/sqrt(fan_in)``);
    for biases torch uses the same bound with the *weight's* fan_in, which a
    1-D bias shape cannot tell: layers pass it as ``fan_in``.

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in), (C_out, C_in, kh, kw) or a bias (n_out,).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}
    fan_in : int, optional
        Default: :func:`fans` of ``shape`` (right for weights; pass the
        weight's fan_in for a bias).

    Returns
    -------
    array, shape ``shape``
    """
    fi = fans(shape)[0] if fan_in is None else int(fan_in)
    if fi < 1:
        raise ValueError(f"fan_in={fan_in!r} must be a positive int (the weight's C_in*kh*kw or n_in)")
    return _uniform(shape, 1.0 / math.sqrt(fi), seed, name, xp, dtype)


def _const(shape, value, xp, dtype):
    xp = _backend.get_namespace("numpy" if xp is None else xp)
    dt = xp.float64 if dtype in ("float64", getattr(xp, "float64", None)) else xp.float32
    return xp.full(tuple(int(s) for s in shape), float(value), dtype=dt)


def zeros(shape, *, seed=0, name="", xp=None, dtype="float32"):
    """All zeros (``seed`` and ``name`` accepted for a uniform signature, unused).

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    return _const(shape, 0.0, xp, dtype)


def ones(shape, *, seed=0, name="", xp=None, dtype="float32"):
    """All ones (BatchNorm scale). (``seed`` and ``name`` are unused).

    Parameters
    ----------
    shape : tuple of int
        E.g. (n_out, n_in) or (C_out, C_in, kh, kw).
    seed : int
    name : str
        Parameter key; the noise stream is ``"init/" + name``.
    xp : namespace or name, default NumPy
    dtype : {"float32", "float64"}

    Returns
    -------
    array, shape ``shape``
    """
    return _const(shape, 1.0, xp, dtype)


INITIALISERS = {
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "glorot_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "kaiming_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "lecun_normal": lecun_normal,
    "lecun_uniform": lecun_uniform,
    "torch_uniform": torch_uniform,
    "zeros": zeros,
    "ones": ones,
}


def get(initialiser):
    """An initialiser by name (see :data:`INITIALISERS`) or a callable with the same signature.

    Parameters
    ----------
    initialiser : str or callable
        ``fn(shape, *, seed, name, xp=None, dtype="float32")``, returning an array of shape ``shape``.

    Returns
    -------
    callable
    """
    if callable(initialiser):
        return initialiser
    try:
        return INITIALISERS[initialiser]
    except (KeyError, TypeError):
        raise ValueError(f"initialiser={initialiser!r} is not one of {sorted(INITIALISERS)} or a callable") from None
