"""Fitness shaping: raw scores (higher is better) to the weights of the ES gradient.

Every function takes ``f`` of shape (N,) (finite floats, one per member) and
returns shaped fitness ``f_hat`` of shape (N,) in the same namespace and dtype.

=================  ============================================================
method             formula
=================  ============================================================
``zscore``         ``f_hat = (f - mean(f)) / (std(f, ddof) + eps)``
``zscore_ddof1``   ``zscore`` with ``ddof=1, eps=1e-8`` (hyperscalees-torch)
``zscore_var_eps`` ``f_hat = (f - mean(f)) / sqrt(var(f, ddof=0) + eps)``,
                   ``eps=1e-5`` (hyperscalees-jax); with ``group_size=G > 0``:
                   ``f_hat[g] = (f[g] - mean(f[g])) / sqrt(var(f) + eps)`` --
                   group mean subtracted, GLOBAL variance (the JAX noiser)
``group_zscore``   per group of ``G`` consecutive members:
                   ``f_hat[g] = (f[g] - mean(f[g])) / (std(f[g], ddof) + eps)``
``centered_ranks`` ``f_hat_i = rank_i / (N - 1) - 0.5`` (ties averaged; ``[0.]``
                   for N = 1), via :func:`egdnp.rng.centered_ranks`
``none``           ``f_hat = f``
=================  ============================================================

:data:`FITNESS_SHAPINGS` maps these names (and those added with
:func:`register_fitness_shaping`) to their functions; wherever a shaping is
chosen (``Eggroll(fitness=...)``, :func:`shape_fitness`) a callable
``fn(f) -> f_hat`` may also stand in for the name, as in evosax.
"""

from __future__ import annotations

import math

from .. import _backend
from .. import rng as _rng
from ..nn import softmax_cross_entropy

__all__ = [
    "METHODS",
    "FITNESS_SHAPINGS",
    "register_fitness_shaping",
    "shaping_function",
    "shaping_name",
    "check_fitness",
    "zscore",
    "zscore_var_eps",
    "group_zscore",
    "centered_ranks",
    "shape_fitness",
    "shape_checked",
    "classification_fitness",
]

METHODS = ("zscore", "zscore_ddof1", "zscore_var_eps", "group_zscore", "centered_ranks", "none")


def check_fitness(f, pop_size: int | None = None, *, integers: bool = False):
    """Raise unless ``f`` is a 1-D array of finite floats (of length ``pop_size``).

    Parameters
    ----------
    f : array, shape (N,)
    pop_size : int, optional
        The expected length N.
    integers : bool
        Also accept an integer dtype (ranks of integer scores are well defined).

    Returns
    -------
    module
        The array namespace of ``f``.

    Raises
    ------
    TypeError
        Not an array, or not real floats.
    ValueError
        Not 1-D, of another length, or holding NaN/inf.
    """
    if not hasattr(f, "shape") or not hasattr(f, "dtype"):
        raise TypeError(f"fitness must be an array of shape (pop,), got {type(f).__name__}")
    xp = _backend.array_namespace(f)
    if len(f.shape) != 1:
        raise ValueError(f"fitness has shape {tuple(f.shape)}; expected (pop,) -- one scalar per member")
    if pop_size is not None and int(f.shape[0]) != pop_size:
        raise ValueError(f"fitness has {int(f.shape[0])} entries but the population has {pop_size} members")
    if integers and xp.isdtype(f.dtype, "integral"):
        return xp
    if not xp.isdtype(f.dtype, "real floating"):
        raise TypeError(f"fitness has dtype {f.dtype}; pass floats (xp.astype(f, xp.float32))")
    if not bool(xp.all(xp.isfinite(f))):
        bad = int(xp.sum(xp.astype(~xp.isfinite(f), xp.int32)))
        raise ValueError(
            f"fitness has {bad} non-finite value(s) (nan or inf); fix the evaluation (diverged member?) "
            "or replace them, e.g. with the worst finite fitness, before shaping"
        )
    return xp


def _check_eps(eps) -> float:
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0.0:
        raise ValueError(f"eps={eps!r} must be a finite float >= 0")
    return eps


def _check_ddof(ddof, n) -> int:
    if ddof not in (0, 1):
        raise ValueError(f"ddof={ddof!r} must be 0 (population std) or 1 (sample std)")
    if n - ddof <= 0:
        raise ValueError(f"need more than ddof={ddof} members for a standard deviation, got {n}")
    return int(ddof)


def _groups(xp, f, group_size):
    n = int(f.shape[0])
    if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size={group_size!r} must be an int >= 1 (0 means no groups where allowed)")
    group_size = int(group_size)
    if n % group_size:
        raise ValueError(f"group_size={group_size} does not divide the population of {n}; pick a divisor of {n}")
    return xp.reshape(f, (n // group_size, group_size))


def zscore(f, *, ddof: int = 0, eps: float = 1e-8):
    """``(f - mean(f)) / (std(f, ddof) + eps)``; shape (N,) -> (N,).

    Parameters
    ----------
    f : array, shape (N,)
    ddof : int
        0 (population std) or 1 (sample std, the PyTorch port's).
    eps : float

    Returns
    -------
    array, shape (N,)
    """
    xp = check_fitness(f)
    return _zscore(xp, f, ddof, eps)


def _zscore(xp, f, ddof, eps):
    ddof = _check_ddof(ddof, int(f.shape[0]))
    eps = _check_eps(eps)
    return (f - xp.mean(f)) / (xp.std(f, correction=ddof) + eps)


def zscore_var_eps(f, *, eps: float = 1e-5, group_size: int = 0):
    """The JAX noiser's shaping (shape (N,) -> (N,)).

    ``group_size == 0``: ``(f - mean(f)) / sqrt(var(f) + eps)``.
    ``group_size == G``: ``(f[g] - mean(f[g])) / sqrt(var(f) + eps)`` per group
    of G consecutive members -- the group mean is subtracted but the variance is
    the global one of the raw scores.

    Parameters
    ----------
    f : array, shape (N,)
    eps : float
    group_size : int

    Returns
    -------
    array, shape (N,)
    """
    xp = check_fitness(f)
    return _zscore_var_eps(xp, f, eps, group_size)


def _zscore_var_eps(xp, f, eps, group_size):
    eps = _check_eps(eps)
    denom = xp.sqrt(xp.var(f) + eps)
    if group_size == 0:
        return (f - xp.mean(f)) / denom
    g = _groups(xp, f, group_size)
    return xp.reshape((g - xp.mean(g, axis=1, keepdims=True)) / denom, (int(f.shape[0]),))


def group_zscore(f, group_size: int, *, ddof: int = 0, eps: float = 1e-8):
    """Per-group z-score: ``(f[g] - mean(f[g])) / (std(f[g], ddof) + eps)`` for groups of G consecutive members.

    Parameters
    ----------
    f : array, shape (N,)
    group_size : int
        G; must divide N.
    ddof : int
    eps : float

    Returns
    -------
    array, shape (N,)
    """
    xp = check_fitness(f)
    return _group_zscore(xp, f, group_size, ddof, eps)


def _group_zscore(xp, f, group_size, ddof, eps):
    g = _groups(xp, f, group_size)
    ddof = _check_ddof(ddof, int(g.shape[1]))
    eps = _check_eps(eps)
    shaped = (g - xp.mean(g, axis=1, keepdims=True)) / (xp.std(g, axis=1, correction=ddof, keepdims=True) + eps)
    return xp.reshape(shaped, (int(f.shape[0]),))


def centered_ranks(f):
    """``rank_i / (N - 1) - 0.5`` with ties averaged (:func:`egdnp.rng.centered_ranks`).

    Parameters
    ----------
    f : array, shape (N,)
        Raw fitness: finite floats, or integers (ranked in float64, as
        :func:`egdnp.rng.centered_ranks` does).

    Returns
    -------
    array, shape (N,)
        In [-0.5, 0.5], summing to zero; tied values get equal weights.
    """
    check_fitness(f, integers=True)
    return _rng.centered_ranks(f, check_finite=False)


def _method_name(method) -> str:
    """How error messages name a shaping: the name it was given, or the function's ``__name__``."""
    return method if isinstance(method, str) else getattr(method, "__name__", repr(method))


def shaping_function(method, *, arg: str = "method"):
    """The shaping function of ``method``: a registered name or a callable ``fn(f) -> f_hat``.

    Parameters
    ----------
    method : str or callable
        A key of :data:`FITNESS_SHAPINGS`, or a shaping function.
    arg : str
        The caller's name of the argument, for the error messages.

    Returns
    -------
    callable
        ``fn(f, **options) -> f_hat`` with ``f`` and ``f_hat`` of shape (N,).

    Raises
    ------
    ValueError
        An unknown name.
    TypeError
        Neither a name nor a callable.
    """
    if isinstance(method, str):
        fn = FITNESS_SHAPINGS.get(method)
        if fn is None:
            raise ValueError(f"{arg}={method!r} is not one of {tuple(FITNESS_SHAPINGS)}; pick one, or register "
                             "yours with es.register_fitness_shaping(name, fn), or pass the function itself")
        return fn
    if callable(method):
        return method
    raise TypeError(f"{arg}={method!r} must be a fitness shaping name in {tuple(FITNESS_SHAPINGS)} or a callable "
                    "fn(f) -> shaped f of shape (N,)")


def shaping_name(method) -> str | None:
    """The registered name of ``method`` (a name, or a registered function), None for an unregistered callable.

    Parameters
    ----------
    method : str or callable

    Returns
    -------
    str or None
    """
    if isinstance(method, str):
        return method if method in FITNESS_SHAPINGS else None
    for name, fn in FITNESS_SHAPINGS.items():
        if fn is method:
            return name
    return None


def shape_fitness(f, method="centered_ranks", *, group_size: int = 0, ddof: int | None = None, eps: float | None = None):
    """Shape raw fitness by name (see the module table) or with a shaping function.

    Parameters
    ----------
    f : array, shape (N,)
        Raw fitness, higher is better, all finite.
    method : str or callable
        A key of :data:`FITNESS_SHAPINGS` (the built-in :data:`METHODS` and
        those of :func:`register_fitness_shaping`), or ``fn(f) -> f_hat``.
    group_size : int
        ``zscore_var_eps``: 0 for global, G for the JAX group variant;
        ``group_zscore``: G >= 1; ``zscore`` with G > 0 means ``group_zscore``.
        Passed to a shaping function as ``group_size=`` when > 0.
    ddof, eps : optional
        Override the method's defaults (passed on only when given).

    Returns
    -------
    array, shape (N,)
    """
    xp = check_fitness(f, integers=method == "centered_ranks")
    return shape_checked(xp, f, method, group_size=group_size, ddof=ddof, eps=eps)


def shape_checked(xp, f, method, *, group_size: int = 0, ddof: int | None = None, eps: float | None = None):
    """:func:`shape_fitness` of an ``f`` that :func:`check_fitness` has passed (no second finiteness check).

    Every finiteness check of a fitness vector is a device sync on a GPU; a
    caller that has checked once (``Eggroll.tell``) shapes through this.

    Parameters
    ----------
    xp : module
        The namespace of ``f``.
    f : array, shape (N,)
    method, group_size, ddof, eps :
        As for :func:`shape_fitness`.

    Returns
    -------
    array, shape (N,)

    Raises
    ------
    ValueError
        A shaping function returned another shape than (N,).
    """
    fn = shaping_function(method)
    options = {} if not group_size else {"group_size": group_size}
    if ddof is not None:
        options["ddof"] = ddof
    if eps is not None:
        options["eps"] = eps
    out = fn(f, **options)
    n = int(f.shape[0])
    if getattr(out, "shape", None) is None or tuple(out.shape) != (n,):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"fitness shaping {_method_name(method)!r} returned {got}; it must return one shaped "
                         f"fitness per member, an array of shape ({n},) in the namespace of f")
    return out


# The built-in shapings, as registered functions of an already checked f (shape (N,)).
def _shape_zscore(f, *, group_size=0, ddof=None, eps=None):
    xp = _backend.array_namespace(f)
    if group_size:
        return _group_zscore(xp, f, group_size, 0 if ddof is None else ddof, 1e-8 if eps is None else eps)
    return _zscore(xp, f, 0 if ddof is None else ddof, 1e-8 if eps is None else eps)


def _shape_zscore_ddof1(f, *, group_size=0, ddof=None, eps=None):
    xp = _backend.array_namespace(f)
    if group_size:
        return _group_zscore(xp, f, group_size, 1 if ddof is None else ddof, 1e-8 if eps is None else eps)
    return _zscore(xp, f, 1 if ddof is None else ddof, 1e-8 if eps is None else eps)


def _shape_zscore_var_eps(f, *, group_size=0, ddof=None, eps=None):
    return _zscore_var_eps(_backend.array_namespace(f), f, 1e-5 if eps is None else eps, group_size)


def _shape_group_zscore(f, *, group_size=0, ddof=None, eps=None):
    xp = _backend.array_namespace(f)
    return _group_zscore(xp, f, group_size, 0 if ddof is None else ddof, 1e-8 if eps is None else eps)


def _shape_centered_ranks(f, *, group_size=0, ddof=None, eps=None):
    if group_size:
        raise ValueError("group_size is not used by centered_ranks; pass group_size=0 or method='group_zscore'")
    return _rng.centered_ranks(f, check_finite=False)


def _shape_none(f, *, group_size=0, ddof=None, eps=None):
    return f


#: name -> shaping function ``fn(f, **options) -> f_hat`` (shape (N,) -> (N,)); the built-ins
#: first.  Add to it with :func:`register_fitness_shaping`.
FITNESS_SHAPINGS: dict = {
    "zscore": _shape_zscore,
    "zscore_ddof1": _shape_zscore_ddof1,
    "zscore_var_eps": _shape_zscore_var_eps,
    "group_zscore": _shape_group_zscore,
    "centered_ranks": _shape_centered_ranks,
    "none": _shape_none,
}
assert tuple(FITNESS_SHAPINGS) == METHODS


def register_fitness_shaping(name: str, fn, *, replace: bool = False):
    """Make ``fn`` a fitness shaping that ``Eggroll(fitness=name)`` and :func:`shape_fitness` find by name.

    A registered name also lets a checkpoint record a shaping function
    (:func:`egdnp.es.checkpoint.save`).

    Parameters
    ----------
    name : str
        Not one of the built-in :data:`METHODS`.
    fn : callable
        ``fn(f) -> f_hat``: raw fitness ``f`` of shape (N,) (finite floats,
        checked before the call) to shaped fitness of shape (N,) in the same
        namespace; it is also called with ``group_size=G`` when a strategy has
        ``group_size > 0`` (and ``ddof=`` / ``eps=`` when :func:`shape_fitness`
        is given them).
    replace : bool
        Allow re-registering a name you registered before.

    Returns
    -------
    callable
        ``fn`` (so that this works as a decorator's body).

    Raises
    ------
    TypeError
        ``name`` is not a non-empty string, or ``fn`` is not callable.
    ValueError
        ``name`` is built in, or registered and ``replace`` is False.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name={name!r} must be a non-empty str (the name Eggroll(fitness=...) will use)")
    if not callable(fn):
        raise TypeError(f"fn={fn!r} for fitness shaping {name!r} must be callable fn(f) -> f_hat of shape (N,)")
    if name in METHODS:
        raise ValueError(f"fitness shaping {name!r} is built in and cannot be replaced; register yours under another name")
    if name in FITNESS_SHAPINGS and not replace:
        raise ValueError(f"fitness shaping {name!r} is already registered ({FITNESS_SHAPINGS[name]!r}); pick another "
                         "name, or pass replace=True to re-register it")
    FITNESS_SHAPINGS[name] = fn
    return fn


def classification_fitness(logits, labels):
    """Negative mean cross-entropy of every member: ``f_i = -mean_b CE(logits[i, b], labels[b])``.

    Parameters
    ----------
    logits : array, shape (N, batch, classes)
    labels : integer array, shape (batch,)

    Returns
    -------
    array, shape (N,)
    """
    xp = _backend.array_namespace(logits)
    if len(logits.shape) != 3:
        raise ValueError(f"logits has shape {tuple(logits.shape)}; expected (pop, batch, classes)")
    return -xp.mean(softmax_cross_entropy(logits, labels, reduction="none"), axis=1)
