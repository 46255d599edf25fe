"""EGD's recombination weights: a registry of named functions from elite losses to weights.

A cycle recombines its ``k`` elites as ``sum_i w_i * elite_i``.  The weights
come from the function registered under the optimiser's ``recombine`` name::

    fn(losses, temperature) -> weights

* ``losses`` : NumPy float64 array, shape (k,), host memory, finite, sorted
  ascending (the best elite first);
* ``temperature`` : float > 0, the optimiser's ``temperature`` (ignore it if
  the rule has none);
* ``weights`` : array or sequence, shape (k,), real, finite and ``>= 0``,
  summing to 1 within :data:`SUM_TOLERANCE`.

The weights must be a convex combination: ``population_storage="seed"``
recombines ``base + scale * sum_i w_i z_i``, which equals the elites' weighted
sum only when the weights sum to 1, and a negative weight would extrapolate
beyond the elites (a different algorithm).  They are used exactly as returned
(not renormalised), so a rule's own rounding is kept bit for bit.

Built in: ``"mean"`` (``1 / k`` each, the spec's ``stack(...).mean(0)``) and
``"softmax"`` (``softmax(-loss / temperature)``, shifted by the best loss).
Register others with :func:`register_recombination`; EGD state files record
the name and refuse to load one that is not registered.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np  # host-side: k elite losses and weights

__all__ = ["register_recombination", "recombination_names", "check_recombination", "recombination_weights",
           "SUM_TOLERANCE"]

# |sum(weights) - 1| allowed; softmax weights summed in float64 are off by a few ulps.
SUM_TOLERANCE = 1e-9


def _mean(losses, temperature: float) -> list:
    return [1.0 / len(losses)] * len(losses)


def _softmax(losses, temperature: float) -> list:
    # shifted by the best loss so that exp never overflows; Python floats, summed left to right
    m = min(float(v) for v in losses)
    ex = [math.exp(-(float(v) - m) / temperature) for v in losses]
    s = sum(ex)
    return [e / s for e in ex]


_BUILTIN = {"mean": _mean, "softmax": _softmax}
_RULES: dict[str, Callable] = dict(_BUILTIN)


def register_recombination(name: str, fn: Callable) -> Callable:
    """Make ``egd(recombine=name)`` weight the elites with ``fn``.

    Parameters
    ----------
    name : str
        A new name (non-empty); ``"mean"`` and ``"softmax"`` are built in.
    fn : callable(losses, temperature) -> weights
        ``losses`` float64 of shape (k,), best first; ``weights`` of shape (k,),
        finite, ``>= 0``, summing to 1 (see the module docstring).  Called once
        per cycle on the host.

    Returns
    -------
    callable
        ``fn`` itself.

    Raises
    ------
    TypeError
        ``name`` is not a str or ``fn`` is not callable.
    ValueError
        ``name`` is empty, or already registered to another function.
    """
    if not isinstance(name, str):
        raise TypeError(f"name={name!r} must be a str (the value of egd(recombine=...))")
    if not name:
        raise ValueError("name='' is empty; pass the name egd(recombine=...) will use")
    if not callable(fn):
        raise TypeError(f"fn={fn!r} must be callable(losses, temperature) -> weights of shape (k,)")
    known = _RULES.get(name)
    if known is not None and known is not fn:
        what = "built in" if name in _BUILTIN else f"already registered to {known!r}"
        raise ValueError(f"recombination {name!r} is {what}; register fn under another name")
    _RULES[name] = fn
    return fn


def recombination_names() -> tuple:
    """The registered names, built-ins first."""
    return tuple(_RULES)


def check_recombination(name, what: str = "recombine") -> str:
    """``name`` if it is registered, else ValueError naming ``what``, the value and the fix."""
    if not isinstance(name, str) or name not in _RULES:
        raise ValueError(
            f"Invalid {what}={name!r}: use one of {recombination_names()}, or register it first with "
            "egdnp.optim.egd.register_recombination(name, fn)"
        )
    return name


def recombination_weights(name: str, losses, temperature: float) -> list:
    """The weights of the elites, checked: Python floats, shape (k,).

    Parameters
    ----------
    name : str
        A registered recombination.
    losses : sequence of float, shape (k,), k >= 1
        The elites' finite losses, best first.
    temperature : float > 0

    Returns
    -------
    list of float, length k
        Exactly the registered function's values.

    Raises
    ------
    ValueError, TypeError
        The function returned weights of another shape, or that are not
        finite, negative, or do not sum to 1; the message names the rule.
    """
    fn = _RULES[check_recombination(name)]
    host = np.asarray(losses, dtype=np.float64)
    raw = fn(host, float(temperature))
    what = f"recombination {name!r} ({fn!r})"
    try:
        weights = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{what} returned {type(raw).__name__}; return k={host.shape[0]} real weights") from None
    if weights.shape != host.shape:
        raise ValueError(f"{what} returned weights of shape {weights.shape} for {host.shape[0]} elites; "
                         f"return one weight per elite, shape {host.shape}")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0.0):
        raise ValueError(f"{what} returned weights {weights.tolist()}; weights must be finite and >= 0")
    total = math.fsum(weights.tolist())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"{what} returned weights summing to {total!r}; they must sum to 1 "
                         f"(within {SUM_TOLERANCE}): divide by their sum")
    return [float(w) for w in weights]
