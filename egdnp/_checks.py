"""Checks of plain Python arguments (sizes, flags, rates) shared by nn and data.

This module sits on the ground floor beside :mod:`egdnp._backend`; it knows
Python numbers, not arrays.  Each check refuses what would otherwise be
silently converted (``int(2.5) == 2``, ``bool("no") is True``,
``float("0.5")``) with a message naming the argument and its value.
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_int", "check_bool", "check_rate"]


def check_int(name: str, value: Any, minimum: int, fix: str = "") -> int:
    """An integer >= ``minimum`` (Python or NumPy); a float or a str is refused, not converted.

    Parameters
    ----------
    name : str
        The argument's name, for the message.
    value : Any
    minimum : int
    fix : str
        Extra advice appended to the message.

    Returns
    -------
    int
    """
    tail = f"; {fix}" if fix else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r} must be an int >= {minimum}{tail}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be an int >= {minimum}{tail}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` itself when it is True or False (a truthy string or 1 is refused).

    Parameters
    ----------
    name : str
    value : Any

    Returns
    -------
    bool
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} must be True or False")
    return value


def check_rate(name: str, value: Any, *, high: float = 1.0, high_open: bool = True) -> float:
    """A real number in ``[0, high)`` (or ``[0, high]``) as a Python float; a str or a bool is refused.

    Parameters
    ----------
    name : str
    value : Any
    high : float
    high_open : bool
        Whether ``high`` itself is excluded.

    Returns
    -------
    float
    """
    span = f"[0, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a float in {span}")
    value = float(value)
    if not (0.0 <= value < high if high_open else 0.0 <= value <= high):
        raise ValueError(f"{name}={value!r} must be in {span}")
    return value
